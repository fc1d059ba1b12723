//! `warden serve-model`: serves one ONNX model over HTTP with ONNX Runtime
//! (`ort`, the library loaded at run time: `--ort-library` or
//! `ORT_DYLIB_PATH`; `scripts/onnxruntime` installs it). The node daemon
//! runs it for deployments of framework `onnx`.
//!
//! - `GET /` (and `/health`): `{status, model, inputs, outputs,
//!   totalInferences, averageLatency}` (latency in ms).
//! - `POST /v1/infer`: `{"inputs": {"x": [[1, 2, 3]]}}` (or `{"input":
//!   ...}` for a model with one input): float32 tensors as nested arrays;
//!   answers `{"outputs": {"y": [[...]]}, "shapes": {"y": [1, 2]},
//!   "latencyMs"}`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// Largest request body: inputs of this size are plenty for a test or a
/// small model, and a bound for everything else.
const MAX_BODY: usize = 16 * 1024 * 1024;

struct Served {
    session: Mutex<ort::session::Session>,
    _env: ort::environment::Environment,
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    /// Inferences so far and their total latency (ms).
    stats: Mutex<(u64, f64)>,
}

/// The ONNX Runtime library to load: the flag, else `ORT_DYLIB_PATH`.
pub fn ort_library(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = flag
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .context("the ONNX Runtime library is not configured: run scripts/onnxruntime and pass its output as --ort-library or ORT_DYLIB_PATH")?;
    anyhow::ensure!(
        path.is_file(),
        "the ONNX Runtime library {} does not exist (scripts/onnxruntime installs it)",
        path.display()
    );
    Ok(path)
}

fn load(model: &Path, library: &Path) -> anyhow::Result<Served> {
    let env = ort::init_from(library)
        .map_err(|e| anyhow::anyhow!("loading ONNX Runtime from {}: {e}", library.display()))?
        .with_name("warden")
        .build()
        .map_err(|e| anyhow::anyhow!("starting ONNX Runtime: {e}"))?;
    let session = ort::session::Session::builder(&env)
        .and_then(|mut b| b.commit_from_file(model))
        .map_err(|e| anyhow::anyhow!("loading the model {}: {e}", model.display()))?;
    let inputs = session
        .inputs()
        .iter()
        .map(|o| o.name().to_owned())
        .collect();
    let outputs = session
        .outputs()
        .iter()
        .map(|o| o.name().to_owned())
        .collect();
    Ok(Served {
        session: Mutex::new(session),
        _env: env,
        name: model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        inputs,
        outputs,
        stats: Mutex::new((0, 0.0)),
    })
}

/// A nested array of numbers as (shape, values); rectangular only.
pub fn flatten(v: &Value) -> Result<(Vec<i64>, Vec<f32>), String> {
    fn walk(
        v: &Value,
        depth: usize,
        shape: &mut Vec<i64>,
        out: &mut Vec<f32>,
    ) -> Result<(), String> {
        match v {
            Value::Number(n) => {
                if depth != shape.len() {
                    return Err("the array is not rectangular".into());
                }
                out.push(n.as_f64().ok_or("not a number")? as f32);
                Ok(())
            }
            Value::Array(items) => {
                if depth == shape.len() {
                    if !out.is_empty() {
                        return Err("the array is not rectangular".into());
                    }
                    shape.push(items.len() as i64);
                } else if shape.get(depth) != Some(&(items.len() as i64)) {
                    return Err("the array is not rectangular".into());
                }
                items
                    .iter()
                    .try_for_each(|i| walk(i, depth + 1, shape, out))
            }
            _ => Err("inputs must be numbers in nested arrays".into()),
        }
    }
    let (mut shape, mut out) = (Vec::new(), Vec::new());
    walk(v, 0, &mut shape, &mut out)?;
    if out.len() as i64 != shape.iter().product::<i64>() {
        return Err("the array is not rectangular".into());
    }
    Ok((shape, out))
}

/// Values of a shape as nested arrays.
pub fn nest(shape: &[i64], values: &[f32]) -> Value {
    match shape {
        [] => values.first().map_or(Value::Null, |v| json!(v)),
        [_] => json!(values),
        [_, rest @ ..] => {
            let step = rest.iter().product::<i64>().max(0) as usize;
            if step == 0 {
                return json!([]);
            }
            Value::Array(values.chunks(step).map(|c| nest(rest, c)).collect())
        }
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

async fn health(State(s): State<Arc<Served>>) -> Json<Value> {
    let (n, total) = *s.stats.lock().expect("never poisoned");
    Json(json!({
        "status": "ok",
        "model": s.name,
        "inputs": s.inputs,
        "outputs": s.outputs,
        "totalInferences": n,
        "averageLatency": if n == 0 { 0.0 } else { total / n as f64 },
    }))
}

async fn infer(State(s): State<Arc<Served>>, body: axum::body::Bytes) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    };
    let named: Map<String, Value> = match (&body["inputs"], &body["input"]) {
        (Value::Object(m), _) => m.clone(),
        (_, v) if !v.is_null() && s.inputs.len() == 1 => {
            Map::from_iter([(s.inputs[0].clone(), v.clone())])
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "send {{\"inputs\": {{name: array}}}} with the inputs {:?}",
                    s.inputs
                ),
            );
        }
    };
    let mut tensors = Vec::with_capacity(named.len());
    for name in &s.inputs {
        let Some(v) = named.get(name) else {
            return error(StatusCode::BAD_REQUEST, format!("input {name} is missing"));
        };
        match flatten(v) {
            Ok(t) => tensors.push((name.clone(), t)),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("input {name}: {e}")),
        }
    }
    let served = s.clone();
    let run = tokio::task::spawn_blocking(move || -> Result<(Value, Value, f64), String> {
        let started = Instant::now();
        let mut values = Vec::with_capacity(tensors.len());
        for (name, (shape, data)) in tensors {
            let t = ort::value::Tensor::from_array((shape, data)).map_err(|e| e.to_string())?;
            values.push((name, t.into_dyn()));
        }
        let mut session = served.session.lock().expect("never poisoned");
        let outputs = session.run(values).map_err(|e| e.to_string())?;
        let (mut out, mut shapes) = (Map::new(), Map::new());
        for (name, value) in outputs.iter() {
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| format!("output {name}: {e}"))?;
            let dims: Vec<i64> = shape.iter().copied().collect();
            out.insert(name.to_owned(), nest(&dims, data));
            shapes.insert(name.to_owned(), json!(dims));
        }
        Ok((
            Value::Object(out),
            Value::Object(shapes),
            started.elapsed().as_secs_f64() * 1000.0,
        ))
    })
    .await;
    match run {
        Ok(Ok((outputs, shapes, ms))) => {
            let mut stats = s.stats.lock().expect("never poisoned");
            stats.0 += 1;
            stats.1 += ms;
            Json(json!({"outputs": outputs, "shapes": shapes, "latencyMs": ms})).into_response()
        }
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Loads the model and serves it until `shutdown`.
pub async fn run(
    model: &Path,
    listen: std::net::SocketAddr,
    library: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let library = ort_library(library)?;
    let served = Arc::new(load(model, &library)?);
    let app = axum::Router::new()
        .route("/", axum::routing::get(health))
        .route("/health", axum::routing::get(health))
        .route("/v1/infer", axum::routing::post(infer))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(served.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    tracing::info!(model = %model.display(), %listen, inputs = ?served.inputs, "serving the model");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_flatten_and_nest() {
        let (shape, data) = flatten(&json!([[1, 2, 3], [4, 5, 6]])).unwrap();
        assert_eq!(
            (shape.clone(), data.clone()),
            (vec![2, 3], vec![1., 2., 3., 4., 5., 6.])
        );
        assert_eq!(
            nest(&shape, &data),
            json!([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
        );
        assert!(flatten(&json!([[1, 2], [3]])).is_err());
        assert!(flatten(&json!([[1, 2], 3])).is_err());
        assert!(flatten(&json!(["a"])).is_err());
        assert_eq!(flatten(&json!([])).unwrap(), (vec![0], vec![]));
    }
}
