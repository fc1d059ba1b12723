//! The engine's own checks: gradients against finite differences, loss
//! that falls, detection well above chance, exact resume, the file.

use std::sync::atomic::AtomicBool;

use crate::data::{Raw, gather};
use crate::hyper::{Architecture, Hyper};
use crate::model::Model;
use crate::net::{Network, Trainer};
use crate::rng::Rng;
use crate::train::Session;

/// Four noisy sensors with a daily-like cycle.
fn sensors(rows: usize) -> Raw {
    let mut rng = Rng::new(7);
    let mut values = Vec::with_capacity(rows * 4);
    for r in 0..rows {
        let phase = r as f32 * std::f32::consts::TAU / 48.0;
        let load = phase.sin();
        values.extend_from_slice(&[
            55.0 + 3.0 * load + 0.1 * rng.normal(),
            35.0 + 40.0 * load.max(0.0) + 0.5 * rng.normal(),
            0.4 + 2.0 * (load * 0.5 + 0.5).powi(3) + 0.02 * rng.normal(),
            if r % 97 == 0 {
                f32::NAN
            } else {
                50.0 - 5.0 * load + 0.3 * rng.normal()
            },
        ]);
    }
    Raw {
        names: ["supply", "fan", "power", "humidity"]
            .map(String::from)
            .to_vec(),
        values,
        labels: None,
    }
}

fn check_gradient(arch: Architecture, hyper: Hyper) {
    let mut rng = Rng::new(3);
    let f = 3;
    let (net, params) = Network::new(arch, &hyper, f, &mut rng).expect("a network");
    let mut tr = Trainer::new(net, params, &hyper);
    let (t, b) = (hyper.sequence_length as usize, 3);
    let x: Vec<f32> = (0..t * b * f).map(|_| rng.normal()).collect();
    tr.grads.fill(0.0);
    tr.gradient(&x, b, &mut rng);
    let analytic = tr.grads.clone();
    let mut worst = 0f32;
    for k in (0..tr.params.len()).step_by(7) {
        let eps = 1e-2f32;
        let keep = tr.params[k];
        tr.params[k] = keep + eps;
        let up = tr.evaluate(&x, b) as f64;
        tr.params[k] = keep - eps;
        let down = tr.evaluate(&x, b) as f64;
        tr.params[k] = keep;
        let numeric = ((up - down) / (2.0 * eps as f64)) as f32;
        let err = (numeric - analytic[k]).abs() / (numeric.abs() + analytic[k].abs()).max(1e-2);
        worst = worst.max(err);
    }
    assert!(
        worst < 2e-2,
        "{arch:?}: worst relative gradient error {worst}"
    );
}

#[test]
fn lstm_autoencoder_gradients_match_finite_differences() {
    let h = Hyper {
        hidden_dim: 5,
        num_layers: 2,
        sequence_length: 6,
        bottleneck_dim: Some(3),
        ..Hyper::default()
    };
    check_gradient(Architecture::LstmAutoencoder, h.clone());
    check_gradient(
        Architecture::LstmAutoencoder,
        Hyper {
            num_layers: 1,
            bottleneck_dim: None,
            loss: "huber".into(),
            ..h
        },
    );
}

#[test]
fn gru_predictor_gradients_match_finite_differences() {
    let h = Hyper {
        hidden_dim: 6,
        num_layers: 2,
        sequence_length: 7,
        ..Hyper::default()
    };
    check_gradient(Architecture::GruPredictor, h);
}

fn session(arch: Architecture, epochs: u32) -> Session {
    let hyper = Hyper {
        epochs,
        hidden_dim: 16,
        sequence_length: 24,
        batch_size: 16,
        max_windows: 256,
        learning_rate: 5e-3,
        ..Hyper::default()
    };
    Session::new(arch, hyper, sensors(4000)).expect("a session")
}

#[test]
fn each_architecture_learns_and_detects_injected_anomalies() {
    let stop = AtomicBool::new(false);
    for arch in [
        Architecture::LstmAutoencoder,
        Architecture::GruPredictor,
        Architecture::Sentinel,
    ] {
        let mut s = session(arch, 6);
        while !s.done() {
            s.epoch(&stop).expect("an epoch").expect("not stopped");
        }
        let h = &s.history;
        if arch != Architecture::Sentinel {
            assert!(
                h.last().unwrap().train_loss < 0.7 * h[0].train_loss,
                "{arch:?}: {h:?}"
            );
        }
        let (model, ev) = s.finish();
        assert_eq!(ev.method, "injected");
        assert!(ev.metrics.f1 > 0.75, "{arch:?}: {:?}", ev.metrics);
        assert!(ev.metrics.auc_roc > 0.8, "{arch:?}: {:?}", ev.metrics);
        let back = Model::from_bytes(&model.to_bytes()).expect("reads back");
        let held = crate::train::held_out(&s.series, 24, 1);
        assert_eq!(model.score(&held.windows), back.score(&held.windows));

        // The gradient evaluation agrees with the standard one where they
        // overlap, and its own figures say what they should.
        let g = crate::gradient::evaluate(&model, &held, 1);
        let standard =
            crate::eval::metrics(&model.score(&held.windows), &held.labels, model.threshold);
        assert_eq!(
            (g.f1, g.auc_roc),
            (standard.f1, standard.auc_roc),
            "{arch:?}"
        );
        assert!(
            g.auc_pr > 0.75 && g.score_separation > 1.0,
            "{arch:?}: {g:?}"
        );
        assert!(
            g.matthews_correlation > 0.5 && g.cohen_kappa > 0.5,
            "{arch:?}: {g:?}"
        );
        assert!(
            g.input_gradient_norm.is_finite() && g.input_gradient_norm > 0.0,
            "{arch:?}: {g:?}"
        );
        // Noise of 0.1 SD moves a predictor's error a lot (the GRU keeps ~half
        // its decisions): a figure to read, not a bound.
        assert!((0.0..=1.0).contains(&g.noise_stability), "{arch:?}: {g:?}");
        assert!(g.latency_ms_per_window > 0.0, "{arch:?}: {g:?}");
        let again = crate::gradient::evaluate(&model, &held, 1);
        assert_eq!(
            (again.input_gradient_norm, again.noise_f1),
            (g.input_gradient_norm, g.noise_f1),
            "deterministic"
        );
    }
}

#[test]
fn a_resumed_session_continues_exactly() {
    let stop = AtomicBool::new(false);
    let mut straight = session(Architecture::LstmAutoencoder, 2);
    straight.epoch(&stop).unwrap();
    straight.epoch(&stop).unwrap();
    let mut first = session(Architecture::LstmAutoencoder, 2);
    first.epoch(&stop).unwrap();
    let cp = first.checkpoint();
    let mut resumed = session(Architecture::LstmAutoencoder, 2);
    resumed.resume(cp).unwrap();
    resumed.epoch(&stop).unwrap();
    assert_eq!(straight.checkpoint().params, resumed.checkpoint().params);
    assert_eq!(
        straight.history[1].train_loss,
        resumed.history[1].train_loss
    );
}

#[test]
fn a_raised_stop_ends_the_epoch_between_batches() {
    let mut s = session(Architecture::GruPredictor, 3);
    let stop = AtomicBool::new(true);
    assert!(s.epoch(&stop).unwrap().is_none());
    assert_eq!(s.epochs_done, 0);
}

#[test]
fn bad_settings_and_short_data_are_refused() {
    let h = Hyper {
        learning_rate: 0.0,
        optimizer: "rmsprop".into(),
        ..Hyper::default()
    };
    let err = Session::new(Architecture::GruPredictor, h, sensors(1000))
        .err()
        .unwrap();
    assert!(
        err.contains("learning_rate") && err.contains("optimizer"),
        "{err}"
    );
    let err = Session::new(Architecture::GruPredictor, Hyper::default(), sensors(100))
        .err()
        .unwrap();
    assert!(err.contains("rows"), "{err}");
    let mut none = sensors(100);
    none.names.clear();
    assert!(Session::new(Architecture::Sentinel, Hyper::default(), none).is_err());
}

#[test]
fn gather_is_time_major() {
    let windows = [vec![1.0, 2.0, 3.0, 4.0], vec![5.0, 6.0, 7.0, 8.0]];
    let mut out = Vec::new();
    gather(|i| &windows[i], &[0, 1], 2, 2, &mut out);
    assert_eq!(out, vec![1.0, 2.0, 5.0, 6.0, 3.0, 4.0, 7.0, 8.0]);
}
