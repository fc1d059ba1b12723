//! One-thread epoch time of the LSTM autoencoder on the shape of
//! `../shared/bench/training` (2,000 windows × 60 × 8, hidden 64, batch
//! 32, Adam 1e-3, MSE; training part = first 60 % of rows), in CPU
//! seconds, beside PyTorch's figure from the same machine; then detection
//! on the test part against the generator's labels.
//!
//!   cargo bench -p warden-ml --bench epoch [-- EPOCHS [CSV]]
//!
//! CSV defaults to ~/.cache/warden-bench/training/data/sensors_100k.csv
//! (made by that folder's `./run`); without it, synthetic sensors.

use std::sync::atomic::AtomicBool;

use warden_ml::{Architecture, Hyper, Raw, Session};

const FEATURES: [&str; 8] = [
    "supply_air_temp",
    "return_air_temp",
    "return_humidity",
    "fan_speed",
    "compressor_current",
    "static_pressure",
    "power_kw",
    "setpoint",
];

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec the call fills.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn read(csv_path: &str) -> Option<Raw> {
    let mut r = csv::Reader::from_path(csv_path).ok()?;
    let headers = r.headers().ok()?.clone();
    let cols: Vec<usize> = FEATURES
        .iter()
        .map(|f| headers.iter().position(|h| h == *f))
        .collect::<Option<_>>()?;
    let mut values = Vec::new();
    for rec in r.records() {
        let rec = rec.ok()?;
        for &c in &cols {
            values.push(rec[c].parse::<f32>().unwrap_or(f32::NAN));
        }
    }
    let rows = values.len() / FEATURES.len();
    let mut labels = vec![false; rows];
    let labels_path = csv_path.replace(".csv", ".labels.csv");
    if let Ok(mut l) = csv::Reader::from_path(&labels_path) {
        for rec in l.records().flatten() {
            let (a, b): (usize, usize) = (rec[3].parse().ok()?, rec[4].parse().ok()?);
            for x in &mut labels[a..=b.min(rows - 1)] {
                *x = true;
            }
        }
    }
    Some(Raw {
        names: FEATURES.map(String::from).to_vec(),
        values,
        labels: Some(labels),
    })
}

fn synthetic(rows: usize) -> Raw {
    let mut rng = warden_ml::Rng::new(42);
    let mut values = Vec::with_capacity(rows * 8);
    for r in 0..rows {
        let load = (r as f32 * std::f32::consts::TAU / 1440.0).sin();
        for k in 0..8 {
            values.push(load * (k as f32 + 1.0) + 0.1 * rng.normal());
        }
    }
    Raw {
        names: FEATURES.map(String::from).to_vec(),
        values,
        labels: None,
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let epochs: u32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let home = std::env::var("HOME").unwrap_or_default();
    let path = args.get(1).cloned().unwrap_or(format!(
        "{home}/.cache/warden-bench/training/data/sensors_100k.csv"
    ));
    let (raw, source) = match read(&path) {
        Some(raw) => (raw, path),
        None => (synthetic(100_000), "synthetic (100,000 rows)".into()),
    };
    let hyper = Hyper {
        epochs,
        hidden_dim: 64,
        sequence_length: 60,
        batch_size: 32,
        learning_rate: 1e-3,
        validation_split: 0.4,
        max_windows: 2000,
        ..Hyper::default()
    };
    let mut s = Session::new(Architecture::LstmAutoencoder, hyper, raw).expect("a session");
    println!("data: {source}; parameters: {}", s.parameter_count());
    let stop = AtomicBool::new(false);
    let mut cpus = Vec::new();
    while !s.done() {
        let c0 = cpu_seconds();
        let e = s.epoch(&stop).expect("an epoch").expect("not stopped");
        let cpu = cpu_seconds() - c0;
        cpus.push(cpu);
        println!(
            "epoch {}: {:.3} CPU-s, {:.3} s wall, train_loss {:.5}, val_loss {:.5}",
            e.epoch, cpu, e.seconds, e.train_loss, e.val_loss
        );
    }
    let best = cpus.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = cpus.iter().sum::<f64>() / cpus.len() as f64;
    println!(
        "CPU-s per epoch: mean {mean:.3}, best {best:.3} (PyTorch, 1 thread, this machine: 0.83)"
    );
    let (_, ev) = s.finish();
    println!(
        "detection ({}, {} windows, {} positive): f1 {:.3} precision {:.3} recall {:.3} auc {:.3}",
        ev.method,
        ev.windows,
        ev.positives,
        ev.metrics.f1,
        ev.metrics.precision,
        ev.metrics.recall,
        ev.metrics.auc_roc
    );
}
