//! A training session: epochs over shuffled batches, validation after
//! each, the best weights kept, a checkpoint that resumes exactly, and at
//! the end the model with its threshold and its evaluation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::{Raw, Series, gather};
use crate::eval::{INJECTED, Metrics, inject, metrics, percentile};
use crate::hyper::{Architecture, Hyper};
use crate::model::Model;
use crate::net::{Network, Trainer};
use crate::optim::Optimizer;
use crate::rng::Rng;
use crate::sentinel::Sentinel;

/// Held-out windows scored at most.
pub const MAX_HELD_OUT: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochLoss {
    pub epoch: u32,
    pub train_loss: f64,
    pub val_loss: f64,
    pub seconds: f64,
}

/// Where a session stands: enough to resume it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub epochs_done: u32,
    pub params: Vec<f32>,
    pub best_params: Vec<f32>,
    pub best_val_loss: f64,
    pub optimizer: Option<Optimizer>,
    pub history: Vec<EpochLoss>,
}

/// How a model did on held-out data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// `labels` (the dataset's label column) or `injected` (see [`crate::eval`]).
    pub method: String,
    pub metrics: Metrics,
    pub threshold: f32,
    pub windows: usize,
    pub positives: usize,
}

pub struct Session {
    pub architecture: Architecture,
    pub hyper: Hyper,
    pub series: Series,
    train: Vec<usize>,
    val: Vec<usize>,
    trainer: Option<Trainer>,
    sentinel: Option<Sentinel>,
    pub epochs_done: u32,
    pub best_val_loss: f64,
    best_params: Vec<f32>,
    pub history: Vec<EpochLoss>,
    batch: Vec<f32>,
}

impl Session {
    pub fn new(architecture: Architecture, hyper: Hyper, raw: Raw) -> Result<Session, String> {
        let problems = hyper.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let t = hyper.sequence_length as usize;
        let series = Series::prepare(raw, hyper.validation_split, t)?;
        let train = series.train_starts(t, hyper.max_windows as usize);
        let val = series.val_starts(t, MAX_HELD_OUT);
        let mut rng = Rng::new(hyper.seed);
        let trainer = Network::new(architecture, &hyper, series.features, &mut rng)
            .map(|(net, params)| Trainer::new(net, params, &hyper));
        Ok(Session {
            architecture,
            best_params: trainer
                .as_ref()
                .map(|t| t.params.clone())
                .unwrap_or_default(),
            hyper,
            series,
            train,
            val,
            trainer,
            sentinel: None,
            epochs_done: 0,
            best_val_loss: f64::INFINITY,
            history: Vec::new(),
            batch: Vec::new(),
        })
    }

    /// Epochs the session runs (the sentinel fits in one).
    pub fn total_epochs(&self) -> u32 {
        match self.architecture {
            Architecture::Sentinel => 1,
            _ => self.hyper.epochs,
        }
    }

    pub fn done(&self) -> bool {
        self.epochs_done >= self.total_epochs()
    }

    pub fn parameter_count(&self) -> usize {
        match &self.trainer {
            Some(t) => t.params.len(),
            None => 4 * self.series.features,
        }
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            epochs_done: self.epochs_done,
            params: self
                .trainer
                .as_ref()
                .map(|t| t.params.clone())
                .unwrap_or_default(),
            best_params: self.best_params.clone(),
            best_val_loss: self.best_val_loss,
            optimizer: self.trainer.as_ref().map(|t| t.opt.clone()),
            history: self.history.clone(),
        }
    }

    /// Continues from a checkpoint of the same run.
    pub fn resume(&mut self, cp: Checkpoint) -> Result<(), String> {
        if let Some(trainer) = &mut self.trainer {
            let (Some(opt), true) = (cp.optimizer, cp.params.len() == trainer.params.len()) else {
                return Err("the checkpoint does not fit this network".into());
            };
            trainer.params = cp.params;
            trainer.opt = opt;
        } else if cp.epochs_done > 0 {
            self.sentinel = Some(Sentinel::fit(&self.series));
        }
        self.best_params = cp.best_params;
        self.best_val_loss = cp.best_val_loss;
        self.epochs_done = cp.epochs_done;
        self.history = cp.history;
        Ok(())
    }

    /// One epoch; `None` when `stop` was raised meanwhile (checked between
    /// batches: a batch takes milliseconds).
    pub fn epoch(&mut self, stop: &AtomicBool) -> Result<Option<EpochLoss>, String> {
        let started = Instant::now();
        let epoch = self.epochs_done + 1;
        let (t, f) = (self.hyper.sequence_length as usize, self.series.features);
        let (train_loss, val_loss) = match &mut self.trainer {
            None => {
                let s = Sentinel::fit(&self.series);
                let k = self.hyper.threshold_mads as f32;
                let series = &self.series;
                let train = s.flagged(self.train.iter().map(|&i| series.window(i, t)), k);
                let val = s.flagged(self.val.iter().map(|&i| series.window(i, t)), k);
                self.sentinel = Some(s);
                (train as f64, val as f64)
            }
            Some(trainer) => {
                let mut rng =
                    Rng::new(self.hyper.seed ^ (epoch as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
                let mut order = self.train.clone();
                rng.shuffle(&mut order);
                let series = &self.series;
                let mut total = 0f64;
                for chunk in order.chunks(self.hyper.batch_size as usize) {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    gather(|s| series.window(s, t), chunk, t, f, &mut self.batch);
                    let loss = trainer.step(&self.batch, chunk.len(), &mut rng);
                    if !loss.is_finite() {
                        return Err(format!(
                            "the loss diverged in epoch {epoch} (learning_rate {} is too high for this data)",
                            self.hyper.learning_rate
                        ));
                    }
                    total += loss as f64 * chunk.len() as f64;
                }
                let mut val = 0f64;
                for chunk in self.val.chunks(256) {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    gather(|s| series.window(s, t), chunk, t, f, &mut self.batch);
                    val += trainer.evaluate(&self.batch, chunk.len()) as f64 * chunk.len() as f64;
                }
                (
                    total / order.len() as f64,
                    val / self.val.len().max(1) as f64,
                )
            }
        };
        if val_loss < self.best_val_loss || self.history.is_empty() {
            self.best_val_loss = val_loss;
            if let Some(trainer) = &self.trainer {
                self.best_params.clone_from(&trainer.params);
            }
        }
        let e = EpochLoss {
            epoch,
            train_loss,
            val_loss,
            seconds: started.elapsed().as_secs_f64(),
        };
        self.history.push(e);
        self.epochs_done = epoch;
        Ok(Some(e))
    }

    /// The model (best weights), its threshold and its evaluation.
    pub fn finish(&mut self) -> (Model, Evaluation) {
        if self.trainer.is_none() && self.sentinel.is_none() {
            self.sentinel = Some(Sentinel::fit(&self.series));
        }
        let mut model = Model {
            architecture: self.architecture,
            hyper: self.hyper.clone(),
            features: self.series.names.clone(),
            mean: self.series.mean.clone(),
            sd: self.series.sd.clone(),
            threshold: 0.0,
            network: self.trainer.as_ref().map(|t| t.net.clone()),
            params: self.best_params.clone(),
            sentinel: self.sentinel.clone(),
        };
        let held = held_out(&self.series, model.sequence_length(), self.hyper.seed);
        let scores = model.score(&held.windows);
        // Every architecture: the chosen percentile of held-out normal
        // windows' scores; the sentinel's band is its floor.
        let normal: Vec<f32> = scores
            .iter()
            .zip(&held.labels)
            .filter(|(_, y)| !**y)
            .map(|(s, _)| *s)
            .collect();
        let mut threshold = percentile(&normal, self.hyper.threshold_percentile);
        if self.architecture == Architecture::Sentinel {
            threshold = threshold.max(self.hyper.threshold_mads as f32);
        }
        model.threshold = threshold;
        let evaluation = held.evaluate(&scores, model.threshold);
        (model, evaluation)
    }
}

/// Held-out windows with their labels.
pub struct HeldOut {
    pub method: &'static str,
    pub windows: Vec<f32>,
    pub labels: Vec<bool>,
}

impl HeldOut {
    pub fn evaluate(&self, scores: &[f32], threshold: f32) -> Evaluation {
        Evaluation {
            method: self.method.into(),
            metrics: metrics(scores, &self.labels, threshold),
            threshold,
            windows: self.labels.len(),
            positives: self.labels.iter().filter(|&&y| y).count(),
        }
    }
}

/// The validation part's windows: labelled by the dataset when it has a
/// label column (and both classes occur), else each window clean and once
/// with an injected anomaly.
pub fn held_out(series: &Series, t: usize, seed: u64) -> HeldOut {
    let starts = series.val_starts(t, MAX_HELD_OUT);
    let mut windows = Vec::with_capacity(2 * starts.len() * t * series.features);
    for &s in &starts {
        windows.extend_from_slice(series.window(s, t));
    }
    if series.labels.is_some() {
        let labels: Vec<bool> = starts
            .iter()
            .map(|&s| series.labelled(s, t) == Some(true))
            .collect();
        if labels.iter().any(|&y| y) && labels.iter().any(|&y| !y) {
            return HeldOut {
                method: "labels",
                windows,
                labels,
            };
        }
    }
    let mut rng = Rng::new(seed ^ 0xA5A5_5A5A);
    let f = series.features;
    for (k, &s) in starts.iter().enumerate() {
        let mut w = series.window(s, t).to_vec();
        inject(&mut w, t, f, k % INJECTED.len(), &mut rng);
        windows.extend_from_slice(&w);
    }
    let mut labels = vec![false; starts.len()];
    labels.resize(2 * starts.len(), true);
    HeldOut {
        method: "injected",
        windows,
        labels,
    }
}
