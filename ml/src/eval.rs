//! Detection metrics, and the anomalies injected into held-out windows
//! when a dataset has no label column.
//!
//! Injection (deterministic for a seed): every held-out window is scored
//! as it is (a negative) and once more with one anomaly on one feature
//! chosen at random (a positive), the kind taking turns: a **spike** of
//! ±6 SD over 1–3 rows; a **drift**, a ramp from 0 to ±4 SD over the
//! window's second half; a **noise burst**, Gaussian noise of 2 SD over a
//! third of the window. SD is the feature's SD on the training rows (the
//! windows are standardised, so it is 1).

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

pub const INJECTED: [&str; 3] = ["spike", "drift", "noise"];

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub accuracy: f64,
    pub auc_roc: f64,
    pub true_positive: u64,
    pub false_positive: u64,
    pub true_negative: u64,
    pub false_negative: u64,
}

/// The `q`-th percentile (0–100, linear interpolation).
pub fn percentile(xs: &[f32], q: f64) -> f32 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f32> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f32::INFINITY;
    }
    v.sort_by(f32::total_cmp);
    let at = (q / 100.0).clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    let frac = (at - lo as f64) as f32;
    v[lo] + (v[hi] - v[lo]) * frac
}

/// "score > threshold" against the labels.
pub fn metrics(scores: &[f32], labels: &[bool], threshold: f32) -> Metrics {
    let mut m = Metrics::default();
    for (&s, &y) in scores.iter().zip(labels) {
        match (s > threshold, y) {
            (true, true) => m.true_positive += 1,
            (true, false) => m.false_positive += 1,
            (false, false) => m.true_negative += 1,
            (false, true) => m.false_negative += 1,
        }
    }
    let (tp, fp, tn, fn_) = (
        m.true_positive as f64,
        m.false_positive as f64,
        m.true_negative as f64,
        m.false_negative as f64,
    );
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    m.precision = ratio(tp, tp + fp);
    m.recall = ratio(tp, tp + fn_);
    m.f1 = ratio(2.0 * m.precision * m.recall, m.precision + m.recall);
    m.accuracy = ratio(tp + tn, tp + fp + tn + fn_);
    m.auc_roc = auc(scores, labels);
    m
}

/// Area under the ROC curve: the chance that a random positive scores
/// above a random negative (ties count half); 0.5 with one class only.
pub fn auc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0f64; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|&&y| y).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    let sum: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, y)| **y)
        .map(|(r, _)| r)
        .sum();
    ((sum - pos * (pos + 1.0) / 2.0) / (pos * neg)).clamp(0.0, 1.0)
}

/// Puts anomaly `kind` (an index into [`INJECTED`]) into a T×F window.
pub fn inject(window: &mut [f32], t: usize, f: usize, kind: usize, rng: &mut Rng) {
    let feature = rng.below(f);
    let sign = if rng.unit() < 0.5 { -1.0 } else { 1.0 };
    match kind % 3 {
        0 => {
            let len = 1 + rng.below(3.min(t));
            let start = rng.below(t - len + 1);
            for s in start..start + len {
                window[s * f + feature] += sign * 6.0;
            }
        }
        1 => {
            let from = t / 2;
            let span = (t - from).max(1) as f32;
            for s in from..t {
                window[s * f + feature] += sign * 4.0 * (s - from + 1) as f32 / span;
            }
        }
        _ => {
            let len = (t / 3).max(1);
            let start = rng.below(t - len + 1);
            for s in start..start + len {
                window[s * f + feature] += 2.0 * rng.normal();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_and_auc() {
        let scores = [0.1, 0.2, 0.9, 0.8, 0.3, 0.7];
        let labels = [false, false, true, true, false, false];
        let m = metrics(&scores, &labels, 0.5);
        assert_eq!(
            (
                m.true_positive,
                m.false_positive,
                m.true_negative,
                m.false_negative
            ),
            (2, 1, 3, 0)
        );
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.recall, 1.0);
        assert_eq!(m.auc_roc, 1.0);
        assert_eq!(auc(&[0.5, 0.5], &[true, false]), 0.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 50.0), 3.0);
        assert!((percentile(&[0.0, 10.0], 99.0) - 9.9).abs() < 1e-5);
    }
}
