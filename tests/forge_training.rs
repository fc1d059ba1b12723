//! Forge training, models and evaluations over the real server: each
//! architecture trains on a sensor CSV (loss falls), epochs arrive over
//! `/ws/training/{id}`, the model detects the injected anomalies well
//! above chance, downloads (its ONNX export scores as it does), evaluates
//! again identically, compares; the
//! queue keeps to `max_concurrent`; stop is immediate; bad requests are
//! refused with nothing left behind.

mod common;

use std::time::{Duration, Instant};

use common::training::{fetch, rows_of, sensor_csv, small, upload};
use common::{TestServer, eventually};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The model's ONNX export, run by ONNX Runtime on raw rows, scores as
/// its downloaded Warden file does natively (within 1e-4 relative: see
/// tests/onnx_export.rs), and the detail's quantized size is the int8
/// export's.
async fn onnx_export_matches(s: &TestServer, token: &str, model_id: &str, csv: &[u8]) {
    let (status, file) = fetch(
        s,
        token,
        &format!("/api/v1/models/{model_id}/download?format=wardenml"),
    )
    .await;
    assert_eq!(status, 200);
    let native = warden_ml::Model::from_bytes(&file).unwrap();
    let (status, onnx) = fetch(
        s,
        token,
        &format!("/api/v1/models/{model_id}/download?format=onnx"),
    )
    .await;
    assert_eq!(status, 200);
    let (t, f) = (native.sequence_length(), native.features.len());
    let rows = rows_of(csv, 90);
    let n = (90 - t) / 5;
    let mut raw = Vec::new();
    for w in 0..n {
        raw.extend_from_slice(&rows[w * 5 * f..(w * 5 + t) * f]);
    }
    let expected = native.score(&native.standardise(&raw));
    let env = common::ort_env();
    let (scores, anomaly) = common::onnx_scores(env, &onnx, [n, t, f], raw);
    for (i, (a, b)) in scores.iter().zip(&expected).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 + 1e-4 * b.abs(),
            "{model_id} window {i}: ONNX {a} vs native {b}"
        );
        assert_eq!(anomaly[i] == 1.0, *a > native.threshold);
    }
    let (status, int8) = fetch(
        s,
        token,
        &format!("/api/v1/models/{model_id}/download?format=onnx-int8"),
    )
    .await;
    assert_eq!(status, 200);
    let detail = s
        .get(&format!("/api/v1/models/{model_id}"), token)
        .await
        .body;
    assert_eq!(detail["quantized"], true);
    assert_eq!(detail["quantized_size_bytes"], int8.len());
    let (status, _) = fetch(
        s,
        token,
        &format!("/api/v1/models/{model_id}/download?format=pt"),
    )
    .await;
    assert_eq!(status, 400);
}

async fn start(s: &TestServer, token: &str, dataset: &str, arch: &str, hyper: Value) -> Value {
    let r = s
        .post(
            "/api/v1/training/start",
            token,
            json!({"dataset_id": dataset, "architecture": arch, "hyperparameters": hyper}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

async fn finished(s: &TestServer, token: &str, id: &str) -> Value {
    eventually(120, "the run finishes", || async {
        let r = s.get(&format!("/api/v1/training/{id}"), token).await;
        let st = r.body["status"].as_str().unwrap_or("").to_owned();
        (st != "running" && st != "queued").then_some(r.body)
    })
    .await
}

fn ws_url(s: &TestServer, id: &str, token: &str) -> String {
    format!(
        "{}/ws/training/{id}?token={token}",
        s.base.replace("http://", "ws://")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_architecture_trains_streams_registers_and_evaluates() {
    let s = TestServer::start().await;
    let (t, _) = s.user("trainer", &["operator"], None).await;
    let csv = sensor_csv(4000);
    let ds = upload(&s, &t, "ahu-1", csv.clone()).await;

    // The LSTM autoencoder, watched over the WebSocket from the start.
    let run = start(&s, &t, &ds, "lstm_autoencoder", small(5)).await;
    let id = run["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("tr_"));
    assert!(
        ["running", "queued"].contains(&run["status"].as_str().unwrap()),
        "{run}"
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&s, &id, &t))
        .await
        .unwrap();
    let mut epochs = Vec::new();
    let complete = loop {
        let msg = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Text(text) = msg else { continue };
        let v: Value = serde_json::from_str(&text).unwrap();
        match v["type"].as_str().unwrap() {
            "epoch_update" => epochs.push(v),
            "training_complete" => break v,
            other => panic!("unexpected frame {other}"),
        }
    };
    // The close follows the last frame.
    let closed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(
        matches!(closed, Some(Ok(Message::Close(_))) | None),
        "{closed:?}"
    );
    assert!(!epochs.is_empty() && epochs.len() <= 5, "{epochs:?}");
    for w in epochs.windows(2) {
        assert!(w[1]["current_epoch"].as_u64() > w[0]["current_epoch"].as_u64());
    }
    assert_eq!(epochs.last().unwrap()["current_epoch"], 5);
    assert_eq!(epochs[0]["total_epochs"], 5);
    assert_eq!(complete["status"], "completed");
    let curve = complete["final_metrics"].as_array().unwrap();
    assert_eq!(curve.len(), 5);
    assert!(
        curve[4]["train_loss"].as_f64().unwrap() < 0.7 * curve[0]["train_loss"].as_f64().unwrap(),
        "loss falls: {curve:?}"
    );

    let done = s.get(&format!("/api/v1/training/{id}"), &t).await.body;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["current_epoch"], 5);
    let model_id = done["model_id"].as_str().unwrap().to_owned();

    // The same run is a vareon training job (bare ids).
    let bare = id.trim_start_matches("tr_");
    let jobs = s.get("/api/neosyntis/training-jobs/?limit=10", &t).await;
    assert_eq!(jobs.status, 200, "{}", jobs.body);
    assert!(
        jobs.body
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == bare)
    );
    let job = s
        .get(&format!("/api/neosyntis/training-jobs/{bare}"), &t)
        .await;
    assert_eq!(job.status, 200, "{}", job.body);
    assert_eq!(job.body["status"], "completed");
    assert_eq!(job.body["model_id"], model_id.trim_start_matches("mdl_"));
    assert_eq!(job.body["metrics"]["current_epoch"], 5);
    assert_eq!(job.body["logs"].as_str().unwrap().lines().count(), 5);
    assert!(job.body["end_time"].is_string());
    let missing = s.get("/api/neosyntis/training-jobs/nope", &t).await;
    assert_eq!(missing.status, 404);
    assert!(missing.body["detail"].is_string(), "{}", missing.body);
    let anonymous = s.get("/api/neosyntis/training-jobs/", "").await;
    assert_eq!(anonymous.status, 401);
    let bad = s.get("/api/neosyntis/training-jobs/?skip=-1", &t).await;
    assert_eq!(bad.status, 422, "{}", bad.body);

    let model = s.get(&format!("/api/v1/models/{model_id}"), &t).await;
    assert_eq!(model.status, 200);
    // Forge's trained models are vareon's neosyntis models too.
    let neo = s
        .get(
            &format!(
                "/api/neosyntis/models/{}",
                model_id.trim_start_matches("mdl_")
            ),
            &t,
        )
        .await
        .body;
    assert_eq!(neo["status"], "trained", "{neo}");
    assert_eq!(neo["training_dataset_id"], ds.trim_start_matches("ds_"));
    let m = &model.body;
    assert_eq!(m["architecture"], "lstm_autoencoder");
    assert_eq!(m["training_run_id"], id.as_str());
    assert_eq!(m["input_features"], 4);
    assert_eq!(m["hidden_dim"], 16);
    assert!(m["parameters"].as_u64().unwrap() > 1000);
    assert!(
        m["metrics"]["f1"].as_f64().unwrap() > 0.7,
        "F1 well above chance: {m}"
    );
    assert!(
        m["metrics"]["reconstruction_error_threshold"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    // Its evaluation was registered with it; a new one agrees exactly.
    let evals = s.get("/api/v1/evaluations", &t).await.body;
    let first = evals
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["model_id"] == model_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(first["status"], "completed");
    for k in ["precision", "recall", "f1", "auc_roc", "accuracy"] {
        let v = first["metrics"][k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k} = {v}");
    }
    let cm = &first["confusion_matrix"];
    let total: u64 = [
        "true_positive",
        "false_positive",
        "true_negative",
        "false_negative",
    ]
    .iter()
    .map(|k| cm[k].as_u64().unwrap())
    .sum();
    assert_eq!(total, first["windows"].as_u64().unwrap());
    assert_eq!(
        first["training_curves"]["train_loss"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let again = s
        .post(
            "/api/v1/evaluations",
            &t,
            json!({"model_id": model_id, "evaluation_type": "holdout"}),
        )
        .await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.body["metrics"], first["metrics"]);
    assert_eq!(again.body["evaluation_type"], "holdout");
    let eid = again.body["id"].as_str().unwrap();
    assert_eq!(
        s.get(&format!("/api/v1/evaluations/{eid}"), &t).await.body["id"],
        eid
    );

    // The file: WARDENML, a JSON header, the weights.
    let file = s
        .http
        .get(format!("{}/api/v1/models/{model_id}/download", s.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(file.status().as_u16(), 200);
    let bytes = file.bytes().await.unwrap();
    assert_eq!(&bytes[..8], b"WARDENML");
    let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[12..12 + len]).unwrap();
    assert_eq!(
        header["features"],
        json!(["supply_temp", "fan_speed", "power_kw", "humidity"])
    );
    assert_eq!(
        bytes.len() - 12 - len,
        4 * m["parameters"].as_u64().unwrap() as usize
    );
    onnx_export_matches(&s, &t, &model_id, &csv).await;

    // The other two architectures; then the comparison.
    let mut others = Vec::new();
    for arch in ["gru_predictor", "sentinel"] {
        let r = start(&s, &t, &ds, arch, small(4)).await;
        let done = finished(&s, &t, r["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "completed", "{done}");
        if arch == "gru_predictor" {
            let (a, b) = (
                done["current_epoch"].as_u64().unwrap(),
                done["total_epochs"].as_u64().unwrap(),
            );
            assert_eq!((a, b), (4, 4));
        } else {
            assert_eq!(done["total_epochs"], 1, "the sentinel fits in one pass");
        }
        let mid = done["model_id"].as_str().unwrap().to_owned();
        let m = s.get(&format!("/api/v1/models/{mid}"), &t).await.body;
        assert!(m["metrics"]["f1"].as_f64().unwrap() > 0.6, "{arch}: {m}");
        onnx_export_matches(&s, &t, &mid, &csv).await;
        others.push(mid);
    }
    let c = s
        .post(
            &format!("/api/v1/models/{model_id}/compare"),
            &t,
            json!({"compare_with": others[0]}),
        )
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.body["models"].as_array().unwrap().len(), 2);
    let winner = c.body["winner"].as_str().unwrap();
    assert!(winner == model_id || winner == others[0]);
    assert!(c.body["advantage"]["f1"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        s.get("/api/v1/models", &t)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        s.get("/api/v1/training", &t)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // A finished run's socket says so at once.
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&s, &id, &t))
        .await
        .unwrap();
    let Some(Ok(Message::Text(text))) = ws.next().await else {
        panic!("a frame")
    };
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["type"],
        "training_complete"
    );

    // One registry: AIWM's model list shows the trained models.
    let aiwm = s.get("/api/models?limit=100", &t).await;
    assert_eq!(aiwm.status, 200, "{}", aiwm.body);
    let bare = model_id.trim_start_matches("mdl_");
    assert!(aiwm.body.to_string().contains(bare), "{}", aiwm.body);

    // Other organisations see none of it; deletion.
    let (stranger, _) = s.user("trainer-stranger", &["operator"], None).await;
    assert_eq!(
        s.get(&format!("/api/v1/models/{model_id}"), &stranger)
            .await
            .status,
        404
    );
    assert_eq!(
        s.get(&format!("/api/v1/training/{id}"), &stranger)
            .await
            .status,
        404
    );
    assert!(
        s.get("/api/v1/evaluations", &stranger)
            .await
            .body
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.delete(&format!("/api/v1/models/{model_id}"), &t)
            .await
            .status,
        204
    );
    assert_eq!(
        s.get(&format!("/api/v1/models/{model_id}"), &t)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_keeps_to_max_concurrent_and_stop_is_immediate() {
    let s = TestServer::start_with(|c| c.training_max_concurrent = 1).await;
    let (t, _) = s.user("queuer", &["operator"], None).await;
    let ds = upload(&s, &t, "long", sensor_csv(4000)).await;
    let long =
        json!({"epochs": 10000, "hidden_dim": 64, "sequence_length": 48, "max_windows": 2000});
    let a = start(&s, &t, &ds, "lstm_autoencoder", long.clone()).await;
    assert_eq!(a["status"], "running");
    let b = start(&s, &t, &ds, "gru_predictor", long).await;
    assert_eq!(b["status"], "queued", "{b}");
    let q = s.get("/api/v1/training/queue", &t).await.body;
    assert_eq!(
        q,
        json!({"active_trainings": 1, "max_concurrent": 1, "queued": 1, "capacity_available": 0})
    );

    // Mid-epoch of a long run: the answer is immediate, the slot frees.
    let a_id = a["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let stopped = s
        .post(&format!("/api/v1/training/{a_id}/stop"), &t, json!({}))
        .await;
    assert_eq!(stopped.status, 200);
    assert_eq!(stopped.body["status"], "stopped");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let b_id = b["id"].as_str().unwrap().to_owned();
    eventually(10, "the queued run starts", || async {
        (s.get(&format!("/api/v1/training/{b_id}"), &t).await.body["status"] == "running")
            .then_some(())
    })
    .await;
    assert_eq!(
        s.post(&format!("/api/v1/training/{b_id}/stop"), &t, json!({}))
            .await
            .body["status"],
        "stopped"
    );
    // Stopping again answers the run as it stands.
    assert_eq!(
        s.post(&format!("/api/v1/training/{a_id}/stop"), &t, json!({}))
            .await
            .body["status"],
        "stopped"
    );
    let runs = s.get("/api/v1/training", &t).await.body;
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "stopped" && r["model_id"].is_null())
    );
    assert_eq!(
        s.get("/api/v1/training/queue", &t).await.body["active_trainings"],
        0
    );
}

#[tokio::test]
async fn bad_requests_are_refused_and_leave_nothing() {
    let s = TestServer::start().await;
    let (t, _) = s.user("badtrainer", &["operator"], None).await;
    let (viewer, _) = s.user("viewer-trainer", &["viewer"], None).await;
    let ds = upload(&s, &t, "ok", sensor_csv(600)).await;
    let tiny = upload(&s, &t, "tiny", sensor_csv(30)).await;
    let cases = [
        (
            json!({"dataset_id": ds, "architecture": "transformer"}),
            400,
            "architecture",
        ),
        (
            json!({"dataset_id": ds, "architecture": "gru_predictor", "hyperparameters": {"learning_rate": -1}}),
            400,
            "learning_rate",
        ),
        (
            json!({"dataset_id": ds, "architecture": "gru_predictor", "hyperparameters": {"optimizer": "rmsprop"}}),
            400,
            "optimizer",
        ),
        (
            json!({"dataset_id": ds, "architecture": "gru_predictor", "hyperparameters": {"epochz": 3}}),
            400,
            "epochz",
        ),
        (
            json!({"dataset_id": ds, "architecture": "gru_predictor", "hyperparameters": {"epochs": "many"}}),
            400,
            "hyperparameters",
        ),
        (
            json!({"dataset_id": ds, "architecture": "gru_predictor", "hyperparameters": [1]}),
            400,
            "hyperparameters",
        ),
        (
            json!({"dataset_id": tiny, "architecture": "lstm_autoencoder"}),
            400,
            "rows",
        ),
        (
            json!({"dataset_id": "ds_nope", "architecture": "sentinel"}),
            404,
            "not found",
        ),
        (json!({"architecture": "sentinel"}), 400, "dataset_id"),
    ];
    for (body, status, says) in cases {
        let r = s.post("/api/v1/training/start", &t, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(r.body.to_string().contains(says), "{body}: {}", r.body);
        assert!(r.body["code"].is_string(), "forge's error body: {}", r.body);
    }
    let r = s
        .post(
            "/api/v1/training/start",
            &viewer,
            json!({"dataset_id": "ds_nope", "architecture": "sentinel"}),
        )
        .await;
    assert_eq!(r.status, 403, "viewers are refused before any lookup");
    assert!(
        s.get("/api/v1/training", &t)
            .await
            .body
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.get("/api/v1/training/queue", &t).await.body["queued"], 0);

    // The socket: credentials, then the run, before the upgrade.
    let url = format!("{}/ws/training/tr_nope", s.base.replace("http://", "ws://"));
    let err = tokio_tungstenite::connect_async(url.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let err = tokio_tungstenite::connect_async(format!("{url}?token={t}"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    for path in [
        "/api/v1/training/tr_nope",
        "/api/v1/models/mdl_nope",
        "/api/v1/evaluations/eval_nope",
    ] {
        assert_eq!(s.get(path, &t).await.status, 404, "{path}");
    }
    assert_eq!(
        s.post("/api/v1/evaluations", &t, json!({"model_id": "mdl_nope"}))
            .await
            .status,
        404
    );
    assert_eq!(
        s.post("/api/v1/evaluations", &t, json!({})).await.status,
        400
    );
    assert_eq!(s.get("/api/v1/models", "").await.status, 401);
}

/// Vareon's neosyntis models are the registry's ML models: created there,
/// trained into by `train` (a training run, seen as a job and in forge),
/// stopped, retrained, and gone from both dialects when deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vareon_models_are_registry_models_that_train_into_themselves() {
    let s = TestServer::start().await;
    let (t, _) = s.user("neosyntis", &["operator"], None).await;
    let (viewer, _) = s.user("neo-viewer", &["viewer"], None).await;
    let ds = upload(&s, &t, "pumps", sensor_csv(1500)).await;
    let bare_ds = ds.trim_start_matches("ds_");

    let created = s
        .post(
            "/api/neosyntis/models/",
            &t,
            json!({"name": "pump", "version": "1", "training_dataset_id": bare_ds}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let m = created.body.clone();
    assert_eq!(m["status"], "registered");
    assert_eq!(m["training_dataset_id"], bare_ds);
    assert!(m["owner_id"].is_string() && m["deployed_at"].is_null());
    let id = m["id"].as_str().unwrap().to_owned();
    let path = format!("/api/neosyntis/models/{id}");

    for (body, says) in [
        (json!({"version": "1"}), "name"),
        (json!({"name": "x", "training_dataset_id": "nope"}), "nope"),
        (
            json!({"name": "x", "deployed_at": "yesterday"}),
            "deployed_at",
        ),
        (json!({"name": 5}), "name"),
    ] {
        let r = s.post("/api/neosyntis/models/", &t, body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        assert!(r.body.to_string().contains(says), "{body}: {}", r.body);
    }
    let r = s
        .post("/api/neosyntis/models/", &viewer, json!({"name": "v"}))
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(s.get("/api/neosyntis/models/", "").await.status, 401);
    let list = s.get("/api/neosyntis/models/", &t).await.body;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    let put = s
        .put(
            &path,
            &t,
            json!({"status": "staging", "path_to_artifact": "s3://bucket/pump.onnx",
                   "deployed_at": "2026-12-01T10:00:00Z"}),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.body["status"], "staging");
    assert_eq!(put.body["path_to_artifact"], "s3://bucket/pump.onnx");
    assert!(
        put.body["deployed_at"]
            .as_str()
            .unwrap()
            .starts_with("2026-12-01T10:00:00")
    );
    let put = s.put(&path, &t, json!({"deployed_at": null})).await;
    assert!(put.body["deployed_at"].is_null(), "{}", put.body);
    assert_eq!(put.body["name"], "pump");

    // A long run, stopped through forge: the model hears it.
    let train = |body: Value| {
        let (s, t, path) = (&s, &t, &path);
        async move { s.post(&format!("{path}/train"), t, body).await }
    };
    let long = train(json!({"architecture": "lstm_autoencoder",
        "hyperparameters": {"epochs": 10000, "max_windows": 2000}}))
    .await;
    assert_eq!(long.status, 200, "{}", long.body);
    assert_eq!(long.body["model_id"], id.as_str());
    assert_eq!(s.get(&path, &t).await.body["status"], "training");
    let again = train(json!({})).await;
    assert_eq!(again.status, 409, "{}", again.body);
    let job = long.body["id"].as_str().unwrap();
    let stopped = s
        .post(&format!("/api/v1/training/tr_{job}/stop"), &t, json!({}))
        .await;
    assert_eq!(stopped.body["status"], "stopped");
    assert_eq!(s.get(&path, &t).await.body["status"], "stopped");

    // A short one trains the model itself.
    let short = train(json!({"architecture": "gru_predictor", "hyperparameters": small(3)})).await;
    assert_eq!(short.status, 200, "{}", short.body);
    let job = short.body["id"].as_str().unwrap().to_owned();
    let done = eventually(120, "the job completes", || async {
        let j = s
            .get(&format!("/api/neosyntis/training-jobs/{job}"), &t)
            .await
            .body;
        (j["status"] == "completed" || j["status"] == "failed").then_some(j)
    })
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["model_id"], id.as_str());
    let trained = s.get(&path, &t).await.body;
    assert_eq!(trained["status"], "trained");
    assert_eq!(trained["name"], "pump");
    assert_eq!(
        trained["path_to_artifact"],
        format!("/api/v1/models/mdl_{id}/download?format=onnx")
    );
    let forge = s.get(&format!("/api/v1/models/mdl_{id}"), &t).await;
    assert_eq!(forge.status, 200, "{}", forge.body);
    assert_eq!(forge.body["architecture"], "gru_predictor");
    assert_eq!(forge.body["training_run_id"], format!("tr_{job}"));
    let (status, onnx) = fetch(&s, &t, trained["path_to_artifact"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert!(onnx.len() > 1000);

    // What train needs, and what it refuses.
    let bare = s
        .post("/api/neosyntis/models/", &t, json!({"name": "no-data"}))
        .await
        .body;
    let r = s
        .post(
            &format!(
                "/api/neosyntis/models/{}/train",
                bare["id"].as_str().unwrap()
            ),
            &t,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.to_string().contains("training_dataset_id"));
    let r = train(json!({"architecture": "transformer"})).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(train(json!("x")).await.status, 422);
    let r = s
        .post("/api/neosyntis/models/nope/train", &t, json!({}))
        .await;
    assert_eq!(r.status, 404);
    assert!(r.body["detail"].is_string());
    assert_eq!(
        s.post(&format!("{path}/train"), &viewer, json!({}))
            .await
            .status,
        403
    );
    // Both runs are the caller's myntrix jobs, with their epoch logs.
    let jobs = s.get("/api/myntrix/jobs/", &t).await.body;
    let runs: Vec<&Value> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["type"] == "training")
        .collect();
    assert_eq!(runs.len(), 2, "{jobs}");
    assert_eq!(runs[0]["status"], "completed");
    assert_eq!(runs[0]["progress"], 100);
    assert_eq!(runs[0]["logs"].as_str().unwrap().lines().count(), 3);
    assert_eq!(runs[1]["status"], "stopped");
    let page = s
        .get("/api/neosyntis/models/?skip=1&limit=5", &t)
        .await
        .body;
    assert_eq!(page.as_array().unwrap().len(), 1, "{page}");

    assert_eq!(s.delete(&path, &t).await.status, 204);
    assert_eq!(s.get(&path, &t).await.status, 404);
    assert_eq!(
        s.get(&format!("/api/v1/models/mdl_{id}"), &t).await.status,
        404
    );
}

/// The gradient evaluation: 202, then 19 figures on the evaluation; one
/// a stopped server left running is taken up again at boot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradient_evaluations_complete_and_resume_after_a_restart() {
    let s = TestServer::start().await;
    let (t, _) = s.user("gradient", &["operator"], None).await;
    let (viewer, _) = s.user("gradient-viewer", &["viewer"], None).await;
    let ds = upload(&s, &t, "ahu", sensor_csv(1500)).await;
    let run = start(&s, &t, &ds, "lstm_autoencoder", small(3)).await;
    let done = finished(&s, &t, run["id"].as_str().unwrap()).await;
    let model_id = done["model_id"].as_str().unwrap().to_owned();
    let evals = s.get("/api/v1/evaluations", &t).await.body;
    let ev = evals
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["model_id"] == model_id.as_str())
        .unwrap()
        .clone();
    assert!(ev["gradient_evaluation"].is_null());
    let eid = ev["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/evaluations/{eid}");

    assert_eq!(
        s.post(&format!("{path}/gradient"), &viewer, json!({}))
            .await
            .status,
        403
    );
    assert_eq!(
        s.post("/api/v1/evaluations/eval_nope/gradient", &t, json!({}))
            .await
            .status,
        404
    );
    let r = s.post(&format!("{path}/gradient"), &t, json!({})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"status": "running", "message": "Gradient evaluation started"})
    );
    let g = eventually(30, "the gradient evaluation", || async {
        let g = s.get(&path, &t).await.body["gradient_evaluation"].clone();
        (g["status"] == "completed" || g["status"] == "failed").then_some(g)
    })
    .await;
    assert_eq!(g["status"], "completed", "{g}");
    let m = g["metrics"].as_object().unwrap();
    assert_eq!(m.len(), 19, "{g}");
    assert!(
        m.values().all(|v| v.as_f64().is_some_and(f64::is_finite)),
        "{g}"
    );
    assert_eq!(
        m["f1"], ev["metrics"]["f1"],
        "the same windows and threshold"
    );
    assert_eq!(m["auc_roc"], ev["metrics"]["auc_roc"]);
    assert!(m["auc_pr"].as_f64().unwrap() > 0.5, "{g}");
    assert!(m["input_gradient_norm"].as_f64().unwrap() > 0.0, "{g}");
    let first_done = g["completed_at"].clone();

    // A gradient evaluation left running by a stopped server.
    let bare = eid.trim_start_matches("eval_").to_owned();
    let s = s
        .stop_edit_start(|data_dir| async move {
            let store =
                warden_storage::Store::open(&warden_storage::StoreConfig::new(data_dir)).unwrap();
            let mut e: warden_domain::evaluation::Evaluation = store.get(&bare).unwrap().unwrap();
            let g = e.gradient.as_mut().unwrap();
            g.status = "running".into();
            g.metrics = None;
            g.completed_at = None;
            store.put(&e).await.unwrap();
            store.close();
        })
        .await;
    let t = s.login("gradient", "user-password-1").await;
    let g = eventually(30, "the resumed gradient evaluation", || async {
        let g = s.get(&path, &t).await.body["gradient_evaluation"].clone();
        (g["status"] == "completed").then_some(g)
    })
    .await;
    assert_ne!(g["completed_at"], first_done);
    assert_eq!(g["metrics"]["f1"], ev["metrics"]["f1"]);
}
