//! The sentinel: a robust statistical detector with nothing to descend.
//! Fitting takes, per feature, the median and the MAD (median absolute
//! deviation) of the standardised training values and of their one-step
//! differences. A window's score is its largest robust z-score,
//! |v − median| / (1.4826·MAD), over values and differences. (1.4826·MAD
//! estimates the SD of normal data, and a few outliers in the training
//! rows cannot widen it.) Its threshold is set like the networks': the
//! chosen percentile of held-out normal windows' scores, but never below
//! `threshold_mads` (default 4), since a multi-modal sensor (a fan that
//! is off half the day) puts normal rows many MADs from the median.

use serde::{Deserialize, Serialize};

use crate::data::Series;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sentinel {
    pub median: Vec<f32>,
    pub scale: Vec<f32>,
    pub diff_median: Vec<f32>,
    pub diff_scale: Vec<f32>,
}

fn median(v: &mut [f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f32::total_cmp);
    *m
}

/// Median and 1.4826·MAD (a floor keeps a constant feature finite).
fn robust(mut v: Vec<f32>) -> (f32, f32) {
    let m = median(&mut v);
    for x in &mut v {
        *x = (*x - m).abs();
    }
    (m, (1.4826 * median(&mut v)).max(1e-3))
}

impl Sentinel {
    pub fn fit(series: &Series) -> Sentinel {
        let f = series.features;
        let rows = &series.values[..series.train_rows * f];
        let mut s = Sentinel {
            median: Vec::new(),
            scale: Vec::new(),
            diff_median: Vec::new(),
            diff_scale: Vec::new(),
        };
        for k in 0..f {
            let col: Vec<f32> = rows.iter().skip(k).step_by(f).copied().collect();
            let diffs: Vec<f32> = col.windows(2).map(|w| w[1] - w[0]).collect();
            let (m, sc) = robust(col);
            let (dm, dsc) = robust(diffs);
            s.median.push(m);
            s.scale.push(sc);
            s.diff_median.push(dm);
            s.diff_scale.push(dsc);
        }
        s
    }

    /// A T×F window's score.
    pub fn score(&self, window: &[f32]) -> f32 {
        let f = self.median.len();
        let mut worst = 0f32;
        for (s, row) in window.chunks_exact(f).enumerate() {
            for k in 0..f {
                worst = worst.max((row[k] - self.median[k]).abs() / self.scale[k]);
                if s > 0 {
                    let d = row[k] - window[(s - 1) * f + k];
                    worst = worst.max((d - self.diff_median[k]).abs() / self.diff_scale[k]);
                }
            }
        }
        worst
    }

    /// The share of windows scored beyond `k` (the sentinel's "loss").
    pub fn flagged<'a>(&self, windows: impl Iterator<Item = &'a [f32]>, k: f32) -> f32 {
        let (mut n, mut out) = (0usize, 0usize);
        for w in windows {
            n += 1;
            if self.score(w) > k {
                out += 1;
            }
        }
        if n == 0 { 0.0 } else { out as f32 / n as f32 }
    }
}
