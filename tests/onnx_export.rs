//! Every architecture's ONNX export, run by ONNX Runtime, scores raw
//! windows as the native Rust scorer does: float32 within 1e-5 absolute
//! plus 1e-4 relative (seen: 1e-7; the two evaluate the same products in
//! different orders); int8 against the native model rounded the same way
//! within 1e-3 relative (seen: 1.4e-4, from ONNX Runtime's fused int8
//! kernels; 0 with its graph optimisations off). The int8 file is under
//! 40% of the float one (a third here, where biases weigh more; nearer a
//! quarter at hidden 64).

mod common;

use common::{onnx_scores, ort_env};
use warden_ml::hyper::{Architecture, Hyper};
use warden_ml::net::Network;
use warden_ml::onnx::{Precision, dequantized, export};
use warden_ml::sentinel::Sentinel;
use warden_ml::{Model, Raw, Rng, Series};

const T: usize = 16;
const F: usize = 3;

/// A sensor table: a daily cycle, a slow drift, a noisy pressure.
fn table(rows: usize) -> Raw {
    let mut rng = Rng::new(7);
    let mut values = Vec::with_capacity(rows * F);
    for i in 0..rows {
        let t = i as f32;
        values.push(20.0 + 5.0 * (t / 10.0).sin() + 0.2 * rng.symmetric(1.0));
        values.push(100.0 + 0.05 * t + rng.symmetric(1.0));
        values.push(3.0 * (t / 7.0).cos() + 0.1 * rng.symmetric(1.0));
    }
    Raw {
        names: vec!["temp".into(), "pressure".into(), "flow".into()],
        values,
        labels: None,
    }
}

fn model(arch: Architecture, series: &Series) -> Model {
    let hyper = Hyper {
        hidden_dim: 24,
        num_layers: 2,
        bottleneck_dim: (arch == Architecture::LstmAutoencoder).then_some(8),
        sequence_length: T as u32,
        ..Hyper::default()
    };
    let (network, params, sentinel) = match Network::new(arch, &hyper, F, &mut Rng::new(3)) {
        Some((n, p)) => (Some(n), p, None),
        None => (None, Vec::new(), Some(Sentinel::fit(series))),
    };
    Model {
        architecture: arch,
        hyper,
        features: series.names.clone(),
        mean: series.mean.clone(),
        sd: series.sd.clone(),
        threshold: 0.0,
        network,
        params,
        sentinel,
    }
}

/// `n` raw windows (N×T×F) from the table, one with a spike.
fn windows(raw: &Raw, n: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for w in 0..n {
        let start = w * 37 % (raw.values.len() / F - T);
        out.extend_from_slice(&raw.values[start * F..(start + T) * F]);
    }
    out[5 * F + 1] += 40.0;
    out
}

fn assert_close(what: &str, onnx: &[f32], native: &[f32], relative: f32) {
    assert_eq!(onnx.len(), native.len(), "{what}");
    for (i, (a, b)) in onnx.iter().zip(native).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 + relative * b.abs(),
            "{what}: window {i}: ONNX {a} vs native {b}"
        );
    }
}

#[test]
fn onnx_exports_score_as_the_native_models_do() {
    let env = ort_env();
    let raw = table(400);
    let series = Series::prepare(raw.clone(), 0.2, T).unwrap();
    let n = 9;
    let x = windows(&raw, n);
    for arch in [
        Architecture::LstmAutoencoder,
        Architecture::GruPredictor,
        Architecture::Sentinel,
    ] {
        let mut m = model(arch, &series);
        let native = m.score(&m.standardise(&x));
        assert!(native.iter().all(|s| s.is_finite() && *s >= 0.0));
        // A threshold between the scores, so both answers occur.
        let mut sorted = native.clone();
        sorted.sort_by(f32::total_cmp);
        m.threshold = (sorted[n / 2] + sorted[n / 2 + 1]) / 2.0;

        let f32_file = export(&m, Precision::F32);
        let (score, anomaly) = onnx_scores(env, &f32_file, [n, T, F], x.clone());
        assert_close(arch.as_str(), &score, &native, 1e-4);
        let expected: Vec<f32> = native
            .iter()
            .map(|s| f32::from(u8::from(*s > m.threshold)))
            .collect();
        assert_eq!(anomaly, expected, "{}", arch.as_str());

        let int8_file = export(&m, Precision::Int8);
        let (score, _) = onnx_scores(env, &int8_file, [n, T, F], x.clone());
        let q = dequantized(&m);
        let q_native = q.score(&q.standardise(&x));
        assert_close(&format!("{} int8", arch.as_str()), &score, &q_native, 1e-3);
        if arch != Architecture::Sentinel {
            // Rounding moves the scores, a little.
            assert_ne!(q_native, native);
            let ratio = int8_file.len() as f64 / f32_file.len() as f64;
            assert!(
                ratio < 0.4,
                "{}: int8 {} B vs float {} B",
                arch.as_str(),
                int8_file.len(),
                f32_file.len()
            );
        }
    }
}
