//! From a table of numbers to windows: standardisation with the training
//! rows' mean and SD (missing values ignored), missing values carried
//! forward (then the mean, 0), the training/validation split, window
//! starts, and batches gathered time-major.

/// A table as read: `values` row-major, NaN where a cell is missing.
#[derive(Debug, Clone, Default)]
pub struct Raw {
    pub names: Vec<String>,
    pub values: Vec<f32>,
    /// Rows flagged anomalous by the table's label column, if it has one.
    pub labels: Option<Vec<bool>>,
}

/// A standardised, gap-free table and where its validation part starts.
#[derive(Debug, Clone)]
pub struct Series {
    pub names: Vec<String>,
    pub rows: usize,
    pub features: usize,
    pub values: Vec<f32>,
    pub mean: Vec<f32>,
    pub sd: Vec<f32>,
    pub labels: Option<Vec<bool>>,
    pub train_rows: usize,
    pub missing: u64,
}

impl Series {
    pub fn prepare(
        raw: Raw,
        validation_split: f64,
        sequence_length: usize,
    ) -> Result<Series, String> {
        let features = raw.names.len();
        if features == 0 {
            return Err("the dataset has no numeric column to train on".into());
        }
        let rows = raw.values.len() / features;
        let train_rows = split_rows(rows, validation_split, sequence_length)?;
        let (mut sum, mut sq, mut n) = (
            vec![0f64; features],
            vec![0f64; features],
            vec![0u64; features],
        );
        let mut missing = 0;
        for row in raw.values.chunks_exact(features).take(train_rows) {
            for (k, v) in row.iter().enumerate() {
                if v.is_finite() {
                    sum[k] += *v as f64;
                    sq[k] += (*v as f64) * (*v as f64);
                    n[k] += 1;
                }
            }
        }
        let mean: Vec<f32> = (0..features)
            .map(|k| {
                if n[k] == 0 {
                    0.0
                } else {
                    (sum[k] / n[k] as f64) as f32
                }
            })
            .collect();
        let sd: Vec<f32> = (0..features)
            .map(|k| {
                if n[k] == 0 {
                    return 1.0;
                }
                let m = sum[k] / n[k] as f64;
                let var = (sq[k] / n[k] as f64 - m * m).max(0.0);
                if var.sqrt() < 1e-12 {
                    1.0
                } else {
                    var.sqrt() as f32
                }
            })
            .collect();
        let mut values = raw.values;
        let mut last = vec![0f32; features];
        for row in values.chunks_exact_mut(features) {
            for (k, v) in row.iter_mut().enumerate() {
                if v.is_finite() {
                    *v = (*v - mean[k]) / sd[k];
                    last[k] = *v;
                } else {
                    missing += 1;
                    *v = last[k];
                }
            }
        }
        Ok(Series {
            names: raw.names,
            rows,
            features,
            values,
            mean,
            sd,
            labels: raw.labels,
            train_rows,
            missing,
        })
    }

    /// Rows `start..start + t`, T×F.
    pub fn window(&self, start: usize, t: usize) -> &[f32] {
        &self.values[start * self.features..(start + t) * self.features]
    }

    /// Whether any row of the window is labelled anomalous.
    pub fn labelled(&self, start: usize, t: usize) -> Option<bool> {
        self.labels
            .as_ref()
            .map(|l| l[start..start + t].iter().any(|&a| a))
    }

    /// Training windows: at most `max`, starts evenly spaced over the
    /// training rows (overlapping when there are fewer rows than that).
    pub fn train_starts(&self, t: usize, max: usize) -> Vec<usize> {
        spaced(0, self.train_rows - t, max)
    }

    /// Held-out windows: non-overlapping over the validation rows (at most
    /// `max`, evenly spaced when there are more).
    pub fn val_starts(&self, t: usize, max: usize) -> Vec<usize> {
        let all: Vec<usize> = (self.train_rows..=self.rows - t).step_by(t).collect();
        if all.len() <= max {
            return all;
        }
        spaced(0, all.len() - 1, max)
            .into_iter()
            .map(|i| all[i])
            .collect()
    }
}

/// The training part's rows, when both parts of `rows` rows hold a
/// window of `sequence_length`: the one rule for whether a table is
/// long enough, checked before a run is queued and when it starts.
pub fn split_rows(
    rows: usize,
    validation_split: f64,
    sequence_length: usize,
) -> Result<usize, String> {
    let train_rows = ((rows as f64) * (1.0 - validation_split)).floor() as usize;
    if train_rows < sequence_length || rows - train_rows < sequence_length {
        return Err(format!(
            "the dataset has {rows} rows: with validation_split {validation_split} and sequence_length \
             {sequence_length} both parts need at least {sequence_length} rows (at least {} rows in all)",
            ((sequence_length as f64) / validation_split.min(1.0 - validation_split)).ceil()
                as usize
        ));
    }
    Ok(train_rows)
}

/// Up to `n` integers from `lo` to `hi` inclusive, evenly spaced
/// (numpy's `round(linspace(lo, hi, n))`, without repeats).
fn spaced(lo: usize, hi: usize, n: usize) -> Vec<usize> {
    let count = n.min(hi - lo + 1);
    if count <= 1 {
        return vec![lo];
    }
    let step = (hi - lo) as f64 / (count - 1) as f64;
    (0..count)
        .map(|i| lo + (i as f64 * step).round() as usize)
        .collect()
}

/// Windows (each T×F) into one time-major batch, T·B×F.
pub fn gather<'a>(
    window: impl Fn(usize) -> &'a [f32],
    ids: &[usize],
    t: usize,
    f: usize,
    out: &mut Vec<f32>,
) {
    let b = ids.len();
    out.clear();
    out.resize(t * b * f, 0.0);
    for (w, &id) in ids.iter().enumerate() {
        let src = window(id);
        for s in 0..t {
            out[(s * b + w) * f..(s * b + w + 1) * f].copy_from_slice(&src[s * f..(s + 1) * f]);
        }
    }
}
