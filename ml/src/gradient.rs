//! The gradient evaluation (forge's `/evaluations/{id}/gradient`): 19
//! figures of a trained model on its held-out windows, beyond the
//! standard five. Detection quality at the model's threshold (13), how
//! well its scores separate the classes (2), and how its score moves
//! with its input (4): the norm of the score's input gradient, estimated
//! from central differences along random Gaussian directions
//! (E[(∇s·g)²] = ‖∇s‖² for g ~ N(0, I)), and what Gaussian noise of 0.1
//! SD on every standardised value does to its decisions. Deterministic
//! for a seed.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::eval::{auc, metrics, percentile};
use crate::model::Model;
use crate::rng::Rng;
use crate::train::HeldOut;

/// Directions per window for the gradient estimate.
const DIRECTIONS: usize = 8;
/// Step of the central differences (standardised units).
const EPSILON: f32 = 1e-2;
/// Windows the gradient is estimated on (the first negatives).
const GRADIENT_WINDOWS: usize = 64;
/// The noise added for the stability figures (standardised units).
pub const NOISE_SD: f32 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct GradientMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// F-beta with beta 2 (recall weighs more) and 0.5 (precision does).
    pub f2: f64,
    pub f0_5: f64,
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    pub specificity: f64,
    pub negative_predictive_value: f64,
    /// Matthews' correlation coefficient, in [-1, 1].
    pub matthews_correlation: f64,
    /// Cohen's kappa, agreement beyond chance, in [-1, 1].
    pub cohen_kappa: f64,
    pub auc_roc: f64,
    /// Average precision: the area under the precision-recall curve.
    pub auc_pr: f64,
    /// Cohen's d between the scores of anomalous and normal windows.
    pub score_separation: f64,
    /// (threshold - median normal score) / threshold: the headroom of a
    /// typical normal window below the threshold.
    pub threshold_margin: f64,
    /// Mean ‖∂score/∂x‖ over normal windows (standardised inputs).
    pub input_gradient_norm: f64,
    /// Share of windows whose decision is unchanged under the noise.
    pub noise_stability: f64,
    /// F1 of the decisions on the noisy windows.
    pub noise_f1: f64,
    /// Scoring time per window, in milliseconds (this machine, one thread).
    pub latency_ms_per_window: f64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

fn f_beta(p: f64, r: f64, beta: f64) -> f64 {
    let b2 = beta * beta;
    ratio((1.0 + b2) * p * r, b2 * p + r)
}

/// Average precision, positives ranked by descending score.
pub fn average_precision(scores: &[f32], labels: &[bool]) -> f64 {
    let positives = labels.iter().filter(|&&y| y).count();
    if positives == 0 {
        return 0.0;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut hits, mut sum) = (0usize, 0f64);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] {
            hits += 1;
            sum += hits as f64 / (k + 1) as f64;
        }
    }
    sum / positives as f64
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

pub fn evaluate(model: &Model, held: &HeldOut, seed: u64) -> GradientMetrics {
    let per = model.sequence_length() * model.features.len();
    let n = held.labels.len();
    let threshold = model.threshold;
    let started = Instant::now();
    let scores = model.score(&held.windows);
    let latency = started.elapsed().as_secs_f64() * 1000.0 / n.max(1) as f64;

    let m = metrics(&scores, &held.labels, threshold);
    let (tp, fp, tn, fn_) = (
        m.true_positive as f64,
        m.false_positive as f64,
        m.true_negative as f64,
        m.false_negative as f64,
    );
    let total = tp + fp + tn + fn_;
    let specificity = ratio(tn, tn + fp);
    let mcc = ratio(
        tp * tn - fp * fn_,
        ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt(),
    );
    let chance = ratio(
        (tp + fp) * (tp + fn_) + (fn_ + tn) * (fp + tn),
        total * total,
    );
    let kappa = ratio(m.accuracy - chance, 1.0 - chance);

    let by_class = |positive: bool| -> Vec<f64> {
        scores
            .iter()
            .zip(&held.labels)
            .filter(|(_, y)| **y == positive)
            .map(|(s, _)| *s as f64)
            .collect()
    };
    let (pos, neg) = (by_class(true), by_class(false));
    let ((mp, sp), (mn, sn)) = (mean_sd(&pos), mean_sd(&neg));
    let pooled = ((sp * sp + sn * sn) / 2.0).sqrt();
    let neg32: Vec<f32> = neg.iter().map(|&x| x as f32).collect();
    let margin = ratio(
        threshold as f64 - percentile(&neg32, 50.0) as f64,
        threshold as f64,
    );

    // The input gradient along random directions, on normal windows.
    let mut rng = Rng::new(seed ^ 0x6752_4144);
    let normals: Vec<usize> = (0..n)
        .filter(|&i| !held.labels[i])
        .take(GRADIENT_WINDOWS)
        .collect();
    let mut probes = Vec::with_capacity(normals.len() * DIRECTIONS * 2 * per);
    for &i in &normals {
        let w = &held.windows[i * per..(i + 1) * per];
        for _ in 0..DIRECTIONS {
            let g: Vec<f32> = (0..per).map(|_| rng.normal()).collect();
            probes.extend(w.iter().zip(&g).map(|(x, d)| x + EPSILON * d));
            probes.extend(w.iter().zip(&g).map(|(x, d)| x - EPSILON * d));
        }
    }
    let probed = model.score(&probes);
    let norms: Vec<f64> = probed
        .chunks(2 * DIRECTIONS)
        .map(|c| {
            let sq: f64 = c
                .chunks(2)
                .map(|pm| ((pm[0] - pm[1]) as f64 / (2.0 * EPSILON as f64)).powi(2))
                .sum();
            (sq / DIRECTIONS as f64).sqrt()
        })
        .collect();

    // Decisions under noise.
    let noisy: Vec<f32> = held
        .windows
        .iter()
        .map(|x| x + NOISE_SD * rng.normal())
        .collect();
    let noisy_scores = model.score(&noisy);
    let same = scores
        .iter()
        .zip(&noisy_scores)
        .filter(|(a, b)| (**a > threshold) == (**b > threshold))
        .count();
    let noisy_m = metrics(&noisy_scores, &held.labels, threshold);

    GradientMetrics {
        precision: m.precision,
        recall: m.recall,
        f1: m.f1,
        f2: f_beta(m.precision, m.recall, 2.0),
        f0_5: f_beta(m.precision, m.recall, 0.5),
        accuracy: m.accuracy,
        balanced_accuracy: (m.recall + specificity) / 2.0,
        specificity,
        negative_predictive_value: ratio(tn, tn + fn_),
        matthews_correlation: mcc,
        cohen_kappa: kappa,
        auc_roc: auc(&scores, &held.labels),
        auc_pr: average_precision(&scores, &held.labels),
        score_separation: ratio(mp - mn, pooled),
        threshold_margin: margin,
        input_gradient_norm: mean_sd(&norms).0,
        noise_stability: ratio(same as f64, n as f64),
        noise_f1: noisy_m.f1,
        latency_ms_per_window: latency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_ranks() {
        // Perfect ranking: 1. One negative above both positives: (1/2 + 2/3) / 2.
        assert_eq!(
            average_precision(&[0.9, 0.8, 0.1], &[true, true, false]),
            1.0
        );
        let ap = average_precision(&[0.9, 0.8, 0.7], &[false, true, true]);
        assert!((ap - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(f_beta(0.5, 0.5, 2.0), 0.5);
    }
}
