//! Datasets (forge's sensor CSVs; later vareon's neosyntis datasets): the
//! record, the profile read from a CSV in one streaming pass, and the
//! analyst that recommends an architecture from a profile.
//!
//! The profile: the header's columns; per column the values present and
//! missing, and for columns whose every present value is a number the
//! min, max, mean and standard deviation (Welford's running update); the
//! time range of the first column whose values are all RFC 3339 or
//! `YYYY-MM-DD HH:MM:SS` times; and the periodicity of the first numeric
//! column: the lag (in rows, 2 to half the sample) with the highest
//! autocorrelation above 0.3 over its first [`SAMPLE`] values.

use std::io::Read;

use warden_storage::{BlobRef, Millis, Record, new_uuid};

use crate::rules::{Checks, MAX_SHORT};
use crate::{Audit, DomainError, Owned, Owner};

/// Forge's equipment types.
pub const EQUIPMENT_TYPES: [&str; 6] = [
    "air_handler",
    "boiler",
    "pump",
    "chiller",
    "fan_coil",
    "steam",
];
/// The architectures Warden trains (and the analyst recommends).
pub const ARCHITECTURES: [&str; 3] = ["lstm_autoencoder", "gru_predictor", "sentinel"];
/// Values of the first numeric column kept for the periodicity.
pub const SAMPLE: usize = 4096;

/// One column's figures.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct ColumnStats {
    pub name: String,
    pub numeric: bool,
    pub present: u64,
    pub missing: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub std: f64,
}

/// What one pass over a CSV found.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    pub rows: u64,
    pub columns: Vec<ColumnStats>,
    pub time_column: Option<String>,
    pub time_start: Option<Millis>,
    pub time_end: Option<Millis>,
    /// The dominant period, in rows.
    pub periodicity: Option<u64>,
    /// How strongly (the autocorrelation at that lag).
    pub periodicity_strength: f64,
}

impl Profile {
    pub fn numeric(&self) -> impl Iterator<Item = &ColumnStats> {
        self.columns.iter().filter(|c| c.numeric)
    }

    /// Missing values over all cells of numeric columns.
    pub fn missing_rate(&self) -> f64 {
        let (missing, all) = self.numeric().fold((0u64, 0u64), |(m, a), c| {
            (m + c.missing, a + c.missing + c.present)
        });
        if all == 0 {
            0.0
        } else {
            missing as f64 / all as f64
        }
    }
}

/// Parses a time as forge's sensor exports (and PostgreSQL) write them.
pub fn parse_time(s: &str) -> Option<Millis> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    // PostgreSQL's text form of timestamptz: `2026-01-01 00:00:00+00`.
    if let Ok(t) = chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(t.timestamp_millis());
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    None
}

#[derive(Default, Clone)]
struct Running {
    present: u64,
    missing: u64,
    numeric: bool,
    timelike: bool,
    n: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
    first_time: Option<Millis>,
    last_time: Option<Millis>,
}

/// Reads a CSV once, as it streams: refused (with every reason) when it
/// is not UTF-8, has no header or no row, has a row of another width, or
/// has no numeric column.
pub fn profile(input: impl Read) -> Result<Profile, Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let headers = reader.headers().map_err(|e| vec![csv_error(&e)])?.clone();
    if headers.is_empty() || headers.iter().all(|h| h.trim().is_empty()) {
        return Err(vec!["the CSV has no header row".into()]);
    }
    let width = headers.len();
    let mut cols: Vec<Running> = vec![
        Running {
            numeric: true,
            timelike: true,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            ..Running::default()
        };
        width
    ];
    let mut sample: Vec<Vec<f64>> = vec![Vec::new(); width];
    let mut rows = 0u64;
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(vec![csv_error(&e)]),
        }
        rows += 1;
        for (i, cell) in record.iter().enumerate() {
            let c = &mut cols[i];
            let cell = cell.trim();
            if cell.is_empty()
                || cell.eq_ignore_ascii_case("nan")
                || cell.eq_ignore_ascii_case("null")
            {
                c.missing += 1;
                continue;
            }
            c.present += 1;
            if c.numeric {
                match cell.parse::<f64>() {
                    Ok(v) if v.is_finite() => {
                        c.n += 1;
                        let d = v - c.mean;
                        c.mean += d / c.n as f64;
                        c.m2 += d * (v - c.mean);
                        c.min = c.min.min(v);
                        c.max = c.max.max(v);
                        if sample[i].len() < SAMPLE {
                            sample[i].push(v);
                        }
                    }
                    _ => c.numeric = false,
                }
            }
            if c.timelike {
                match parse_time(cell) {
                    Some(t) => {
                        c.first_time.get_or_insert(t);
                        c.last_time = Some(t);
                    }
                    None => c.timelike = false,
                }
            }
        }
    }
    if rows == 0 {
        return Err(vec!["the CSV has a header but no rows".into()]);
    }
    let mut p = Profile {
        rows,
        ..Profile::default()
    };
    let mut first_numeric = None;
    for (i, (name, c)) in headers.iter().zip(&cols).enumerate() {
        let numeric = c.numeric && c.present > 0 && !c.timelike;
        if numeric && first_numeric.is_none() {
            first_numeric = Some(i);
        }
        if c.timelike && c.present > 0 && p.time_column.is_none() {
            p.time_column = Some(name.to_owned());
            p.time_start = c.first_time;
            p.time_end = c.last_time;
        }
        p.columns.push(ColumnStats {
            name: name.to_owned(),
            numeric,
            present: c.present,
            missing: c.missing,
            min: if numeric { c.min } else { 0.0 },
            max: if numeric { c.max } else { 0.0 },
            mean: if numeric { c.mean } else { 0.0 },
            std: if numeric && c.n > 1 {
                (c.m2 / (c.n - 1) as f64).sqrt()
            } else {
                0.0
            },
        });
    }
    let Some(first) = first_numeric else {
        return Err(vec!["the CSV has no numeric column".into()]);
    };
    if let Some((lag, r)) = periodicity(&sample[first]) {
        p.periodicity = Some(lag as u64);
        p.periodicity_strength = r;
    }
    Ok(p)
}

fn csv_error(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { pos, .. } => format!(
            "the CSV is not UTF-8 (row {})",
            pos.as_ref().map_or(0, |p| p.line())
        ),
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => format!(
            "row {} has {len} fields, the header has {expected_len}",
            pos.as_ref().map_or(0, |p| p.line())
        ),
        _ => format!("the CSV could not be read: {e}"),
    }
}

/// The lag with the highest autocorrelation above 0.3, if any. Values
/// are first clipped to the median ± 5 scaled MADs, so that a few
/// anomalies (what the data is studied for) do not hide the cycle.
pub fn periodicity(xs: &[f64]) -> Option<(usize, f64)> {
    let n = xs.len();
    if n < 8 {
        return None;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mid = median(&mut xs.to_vec());
    let mad = median(&mut xs.iter().map(|x| (x - mid).abs()).collect()) * 1.4826;
    let clipped: Vec<f64> = if mad > 0.0 {
        xs.iter()
            .map(|x| x.clamp(mid - 5.0 * mad, mid + 5.0 * mad))
            .collect()
    } else {
        xs.to_vec()
    };
    let xs = clipped.as_slice();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var: f64 = xs.iter().map(|x| (x - mean).powi(2)).sum();
    if var <= f64::EPSILON {
        return None;
    }
    let mut best: Option<(usize, f64)> = None;
    // Past the first dip below zero, so the trivially high short lags of
    // a smooth series do not win.
    let mut dipped = false;
    for lag in 2..=n / 2 {
        let r: f64 = (0..n - lag)
            .map(|i| (xs[i] - mean) * (xs[i + lag] - mean))
            .sum::<f64>()
            / var;
        if r < 0.0 {
            dipped = true;
        }
        if dipped && r > 0.3 && best.is_none_or(|(_, b)| r > b + 1e-9) {
            best = Some((lag, r));
        }
    }
    best
}

/// What the analyst concludes from a dataset's profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Advice {
    pub architecture: &'static str,
    /// In [0, 1]: how clearly the data points at it.
    pub confidence: f64,
    pub reasons: Vec<String>,
    /// "good", "fair" or "poor", from the missing rate.
    pub data_quality: &'static str,
    pub seasonality: bool,
    /// Values more than 4 standard deviations from their column's mean
    /// cannot be counted from a profile; the extremes that reach that far.
    pub outlier_columns: Vec<String>,
    pub sequence_length: u64,
    /// Every architecture's share of the scores, best first.
    pub scores: Vec<(&'static str, f64)>,
}

/// Recommends an architecture from a profile, with its reasons. The
/// scores (documented in `docs/dialects.md`): a strong period favours the
/// LSTM autoencoder (it reconstructs whole cycles); many numeric columns
/// without a period favour the GRU predictor; a short or sparse series
/// favours sentinel (per-column robust bounds, no deep model).
pub fn advise(p: &Profile) -> Advice {
    let numeric: Vec<&ColumnStats> = p.numeric().collect();
    let missing = p.missing_rate();
    let strength = p.periodicity.map_or(0.0, |_| p.periodicity_strength);
    let short = p.rows < 500;
    let mut lstm = 0.2 + strength;
    let mut gru = 0.2 + (numeric.len().min(8) as f64) / 16.0 + (1.0 - strength) * 0.2;
    let mut sentinel = 0.1 + missing * 2.0;
    if short {
        sentinel += 0.6;
        lstm -= 0.2;
        gru -= 0.2;
    }
    let mut reasons = vec![format!(
        "{} rows, {} numeric column(s), {:.1}% missing values",
        p.rows,
        numeric.len(),
        missing * 100.0
    )];
    match p.periodicity {
        Some(lag) => reasons.push(format!(
            "a cycle every {lag} rows (autocorrelation {:.2})",
            p.periodicity_strength
        )),
        None => reasons.push("no clear cycle".into()),
    }
    if short {
        reasons.push("too short for a deep sequence model".into());
    }
    let scores = [
        ("lstm_autoencoder", lstm),
        ("gru_predictor", gru),
        ("sentinel", sentinel),
    ];
    let (architecture, top) = scores
        .iter()
        .copied()
        .fold(("sentinel", f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
    // The winner's share of the (positive) scores.
    let total: f64 = scores.iter().map(|(_, s)| s.max(0.0)).sum();
    let confidence = if total > 0.0 {
        (top.max(0.0) / total).clamp(0.05, 0.99)
    } else {
        0.05
    };
    let mut shares: Vec<(&'static str, f64)> = scores
        .iter()
        .map(|(a, s)| (*a, if total > 0.0 { s.max(0.0) / total } else { 0.0 }))
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    let outlier_columns = numeric
        .iter()
        .filter(|c| {
            c.std > 0.0 && ((c.max - c.mean) / c.std > 4.0 || (c.mean - c.min) / c.std > 4.0)
        })
        .map(|c| c.name.clone())
        .collect();
    let sequence_length = p
        .periodicity
        .unwrap_or(60)
        .clamp(10, 240)
        .min((p.rows / 4).max(2));
    Advice {
        architecture,
        confidence,
        reasons,
        data_quality: if missing < 0.01 {
            "good"
        } else if missing < 0.1 {
            "fair"
        } else {
            "poor"
        },
        seasonality: p.periodicity.is_some(),
        outlier_columns,
        sequence_length,
        scores: shares,
    }
}

warden_storage::first_layout!(Dataset);

/// A dataset: an uploaded CSV (a blob) and its profile.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Dataset {
    pub id: String,
    pub name: String,
    pub equipment_type: String,
    pub location: String,
    pub unit: String,
    pub source: String,
    pub description: String,
    /// `csv`, or what vareon's uploader said (`json`, `parquet`, ...).
    pub format: String,
    pub blob: BlobRef,
    /// Whether the file was read as a CSV (else it is an opaque blob:
    /// no stats, nothing to train on).
    pub profiled: bool,
    pub profile: Profile,
    /// Validated for training (forge's `is_validated`), and frozen.
    pub validated: bool,
    pub locked: bool,
    /// The blob holds the file zstd-compressed (a locked dataset's);
    /// `size` is then the original's.
    pub compressed: bool,
    pub size: u64,
    pub owner: Owner,
    pub audit: Audit,
}

/// What a client says about an upload.
#[derive(Debug, Clone, Default)]
pub struct DatasetInput {
    pub name: Option<String>,
    pub equipment_type: Option<String>,
    pub location: Option<String>,
    pub unit: Option<String>,
    pub description: Option<String>,
    /// Vareon's `format`; forge's uploads are `csv`.
    pub format: Option<String>,
}

/// Where an upload came from: each dialect requires its own fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Forge: `name` and `equipment_type`; always a CSV.
    Forge,
    /// Vareon neosyntis: `name` and `format`; only a CSV is profiled.
    Vareon,
    /// Forge's `connect`: `name` and `equipment_type`; a CSV written from
    /// the rows of the named source type (`sqlite`, `postgresql`, ...).
    Imported(&'static str),
}

/// Checks what a client says about a new dataset before its file is
/// stored (or, for an import, fetched).
pub fn check_new(input: &DatasetInput, origin: Origin) -> Result<(), DomainError> {
    check_input(input, Some(origin))
}

fn check_input(input: &DatasetInput, origin: Option<Origin>) -> Result<(), DomainError> {
    let create = origin.is_some();
    let mut c = Checks::new();
    c.text("name", &input.name, create, MAX_SHORT);
    c.not_blank("name", &input.name);
    c.one_of(
        "equipment_type",
        &input.equipment_type,
        &EQUIPMENT_TYPES,
        matches!(origin, Some(Origin::Forge | Origin::Imported(_))),
    );
    c.text("format", &input.format, origin == Some(Origin::Vareon), 32);
    c.text("location", &input.location, false, MAX_SHORT);
    c.text("unit", &input.unit, false, MAX_SHORT);
    c.text("description", &input.description, false, 4096);
    c.finish()
}

impl Dataset {
    /// Whether an upload of this format is read as a CSV.
    pub fn is_csv(format: Option<&str>) -> bool {
        format.is_none_or(|f| f.eq_ignore_ascii_case("csv"))
    }

    /// A dataset of a blob, profiled when it is a CSV (`profile`).
    pub fn new(
        input: DatasetInput,
        origin: Origin,
        blob: BlobRef,
        profile: Option<Profile>,
        owner: Owner,
        by: &str,
    ) -> Result<Dataset, DomainError> {
        check_input(&input, Some(origin))?;
        Ok(Dataset {
            id: new_uuid().replace('-', "")[..12].to_owned(),
            name: input.name.unwrap_or_default(),
            equipment_type: input.equipment_type.unwrap_or_default(),
            location: input.location.unwrap_or_default(),
            unit: input.unit.unwrap_or_default(),
            source: match origin {
                Origin::Forge => "csv_upload",
                Origin::Vareon => "file_upload",
                Origin::Imported(source_type) => source_type,
            }
            .into(),
            description: input.description.unwrap_or_default(),
            format: input
                .format
                .map(|f| f.to_lowercase())
                .unwrap_or_else(|| "csv".into()),
            size: blob.size,
            blob,
            profiled: profile.is_some(),
            profile: profile.unwrap_or_default(),
            validated: false,
            locked: false,
            compressed: false,
            owner,
            audit: Audit::new(by),
        })
    }

    /// Applies a change of its descriptive fields (the file stays);
    /// refused while the dataset is locked.
    pub fn apply(&mut self, input: DatasetInput, by: &str) -> Result<(), DomainError> {
        if self.locked {
            return Err(DomainError::Conflict {
                field: "dataset".into(),
                value: format!("{} is locked (validated); unlock it first", self.id),
            });
        }
        check_input(&input, None)?;
        crate::set(&mut self.name, input.name);
        crate::set(&mut self.equipment_type, input.equipment_type);
        crate::set(&mut self.location, input.location);
        crate::set(&mut self.unit, input.unit);
        crate::set(&mut self.description, input.description);
        crate::set(&mut self.format, input.format.map(|f| f.to_lowercase()));
        self.audit.touch(by);
        Ok(())
    }

    /// The file's logical name (never a host path).
    pub fn file_name(&self) -> String {
        let ext: String = self
            .format
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect();
        format!(
            "datasets/{}.{}",
            self.id,
            if ext.is_empty() { "bin" } else { &ext }
        )
    }
}

impl Record for Dataset {
    const COLLECTION: &'static str = "datasets";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("blob", self.blob.sha256.clone())]
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        crate::created_order(&self.owner.org_id, self.audit.created_at)
    }
    const INDEX_VERSION: u32 = 1;
}

impl Owned for Dataset {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// A live dataset of `org`, by its id (bare, or forge's `ds_` one).
pub fn find(store: &warden_storage::Store, org: &str, id: &str) -> Result<Dataset, DomainError> {
    crate::find_in_org(store, org, id, "ds_", "Dataset")
}

/// Stores a dataset of a profiled blob.
pub async fn create(store: &warden_storage::Store, d: Dataset) -> Result<Dataset, DomainError> {
    Ok(store.insert(d).await?)
}

/// The dataset's file as it was uploaded (decompressed as it is read
/// when the dataset is locked).
pub fn open(
    store: &warden_storage::Store,
    d: &Dataset,
) -> Result<Box<dyn Read + Send>, DomainError> {
    let file = std::io::BufReader::with_capacity(256 * 1024, store.blobs().reader(&d.blob)?);
    Ok(if d.compressed {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(file)
                .map_err(|e| DomainError::Unavailable(format!("the file cannot be read: {e}")))?,
        )
    } else {
        Box::new(file)
    })
}

/// How a preview is ordered: by a column, ascending or descending.
#[derive(Debug, Clone, Copy)]
pub struct SortBy {
    pub column: usize,
    pub descending: bool,
    pub numeric: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Key {
    /// Missing values sort last either way.
    missing: bool,
    num: f64,
    text: String,
    /// File order breaks ties.
    seq: u64,
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.missing
            .cmp(&other.missing)
            .then(self.num.total_cmp(&other.num))
            .then_with(|| self.text.cmp(&other.text))
            .then(self.seq.cmp(&other.seq))
    }
}

/// One page of a CSV's rows (1-based `page`), in file order or sorted by
/// a column. Sorting keeps only the best `page × size` rows while the
/// file streams by (a bounded heap), never the whole file.
pub fn page_rows(
    input: impl Read,
    page: usize,
    size: usize,
    sort: Option<SortBy>,
) -> Result<Vec<Vec<String>>, String> {
    let mut reader = csv::ReaderBuilder::new().from_reader(input);
    let skip = (page.max(1) - 1) * size;
    let Some(sort) = sort else {
        let mut out = Vec::with_capacity(size.min(1000));
        for rec in reader.records().skip(skip).take(size) {
            out.push(
                rec.map_err(|e| e.to_string())?
                    .iter()
                    .map(str::to_owned)
                    .collect(),
            );
        }
        return Ok(out);
    };
    let keep = skip + size;
    // A max-heap of the `keep` smallest keys (for descending: of the
    // largest, by ordering on the negated key).
    let mut heap: std::collections::BinaryHeap<(Key, Vec<String>)> = Default::default();
    for (seq, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| e.to_string())?;
        let cell = rec.get(sort.column).unwrap_or("").trim();
        let missing = cell.is_empty();
        let value = if sort.numeric {
            cell.parse::<f64>().unwrap_or(f64::NAN)
        } else {
            0.0
        };
        let (num, text) = match (sort.descending, sort.numeric) {
            (false, true) => (value, String::new()),
            (true, true) => (-value, String::new()),
            (false, false) => (0.0, cell.to_owned()),
            // Descending text: invert each character, so that the
            // ordering of the inverted text is the reverse.
            (true, false) => (
                0.0,
                cell.chars()
                    .map(|c| char::from_u32(0x10FFFF - c as u32).unwrap_or(c))
                    .collect(),
            ),
        };
        let key = Key {
            missing: missing || (sort.numeric && value.is_nan()),
            num,
            text,
            seq: seq as u64,
        };
        if heap.len() < keep {
            heap.push((key, rec.iter().map(str::to_owned).collect()));
        } else if heap.peek().is_some_and(|(top, _)| key < *top) {
            heap.pop();
            heap.push((key, rec.iter().map(str::to_owned).collect()));
        }
    }
    let mut all = heap.into_sorted_vec();
    Ok(all.drain(..).skip(skip).map(|(_, row)| row).collect())
}

/// What a validation found (forge's `/validate`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Validation {
    pub issues: Vec<String>,
    pub columns_checked: u64,
    pub rows_checked: u64,
}

/// Scans every row: type consistency per column (numbers and text in one
/// column), missing values, and rows of another width than the header.
pub fn validate(input: impl Read) -> Validation {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            return Validation {
                issues: vec![csv_error(&e)],
                ..Validation::default()
            };
        }
    };
    let width = headers.len();
    // Per column: numbers, texts (not times), missing.
    let mut counts = vec![(0u64, 0u64, 0u64); width];
    let mut ragged = Vec::new();
    let mut rows = 0u64;
    let mut issues = Vec::new();
    for rec in reader.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                issues.push(csv_error(&e));
                break;
            }
        };
        rows += 1;
        if rec.len() != width && ragged.len() < 10 {
            ragged.push(format!(
                "Row {}: expected {width} fields, found {}",
                rows + 1,
                rec.len()
            ));
        }
        for (i, cell) in rec.iter().enumerate().take(width) {
            let cell = cell.trim();
            let c = &mut counts[i];
            if cell.is_empty()
                || cell.eq_ignore_ascii_case("nan")
                || cell.eq_ignore_ascii_case("null")
            {
                c.2 += 1;
            } else if cell.parse::<f64>().is_ok_and(f64::is_finite) {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
    }
    for (name, (numeric, text, missing)) in headers.iter().zip(&counts) {
        if *numeric > 0 && *text > 0 {
            issues.push(format!(
                "Column '{name}': mixed types detected (numeric: {numeric}, string: {text})"
            ));
        }
        if *missing > 0 {
            issues.push(format!(
                "Column '{name}': {missing} missing values ({:.2}%)",
                *missing as f64 * 100.0 / rows.max(1) as f64
            ));
        }
    }
    issues.extend(ragged);
    Validation {
        issues,
        columns_checked: width as u64,
        rows_checked: rows,
    }
}

/// Validates a dataset; when it passes, locks it and stores its file
/// zstd-compressed (the record and the new blob in place before the old
/// blob goes).
pub async fn validate_and_lock(
    store: &warden_storage::Store,
    d: &Dataset,
    by: &str,
) -> Result<(Dataset, Validation), DomainError> {
    if !d.profiled {
        return Err(DomainError::Invalid(vec![format!(
            "dataset {} is a {} file, not a CSV",
            d.id, d.format
        )]));
    }
    let (s, current) = (store.clone(), d.clone());
    let checked = run_blocking(
        move || -> Result<(Validation, Option<BlobRef>), DomainError> {
            let v = validate(open(&s, &current)?);
            if !v.issues.is_empty() || current.compressed {
                return Ok((v, None));
            }
            let mut w = s.blobs().writer()?;
            zstd::stream::copy_encode(open(&s, &current)?, &mut w, 3)
                .map_err(|e| DomainError::Unavailable(format!("compression failed: {e}")))?;
            Ok((v, Some(w.finish()?)))
        },
    )
    .await?;
    let (v, packed) = checked?;
    let valid = v.issues.is_empty();
    let next = settle(store, d, by, valid, packed.map(|b| (b, true))).await?;
    Ok((next, v))
}

/// Unlocks a dataset: its file decompressed again, validation undone.
pub async fn unlock(
    store: &warden_storage::Store,
    d: &Dataset,
    by: &str,
) -> Result<Dataset, DomainError> {
    let (s, current) = (store.clone(), d.clone());
    let unpacked = run_blocking(move || -> Result<Option<BlobRef>, DomainError> {
        if !current.compressed {
            return Ok(None);
        }
        let mut w = s.blobs().writer()?;
        std::io::copy(&mut open(&s, &current)?, &mut w)
            .map_err(|e| DomainError::Unavailable(format!("decompression failed: {e}")))?;
        Ok(Some(w.finish()?))
    })
    .await??;
    settle(store, d, by, false, unpacked.map(|b| (b, false))).await
}

/// Records a dataset's validation (validated and locked together) and,
/// when given, its file in a new form (`(blob, compressed)`): the record
/// points at the new blob before the old one goes.
async fn settle(
    store: &warden_storage::Store,
    d: &Dataset,
    by: &str,
    validated: bool,
    file: Option<(BlobRef, bool)>,
) -> Result<Dataset, DomainError> {
    let next = store
        .update::<Dataset, DomainError>(&d.id, |x| {
            x.validated = validated;
            x.locked = validated;
            if let Some((blob, compressed)) = &file {
                x.blob = blob.clone();
                x.compressed = *compressed;
            }
            x.audit.touch(by);
            Ok(Some(()))
        })
        .await?
        .ok_or_else(|| DomainError::NotFound {
            kind: "Dataset",
            id: d.id.clone(),
        })?;
    if file.is_some() {
        discard_blob(store, &d.blob)?;
    }
    Ok(next)
}

/// Runs file work off the async threads.
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DomainError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DomainError::Unavailable(format!("the file work stopped: {e}")))
}

/// Changes a dataset's descriptive fields.
pub async fn update(
    store: &warden_storage::Store,
    id: &str,
    input: DatasetInput,
    by: &str,
) -> Result<Dataset, DomainError> {
    store
        .update::<Dataset, DomainError>(id, |d| {
            d.apply(input.clone(), by)?;
            Ok(Some(()))
        })
        .await?
        .ok_or_else(|| DomainError::NotFound {
            kind: "Dataset",
            id: id.to_owned(),
        })
}

/// Removes a dataset (forge deletes for good), and its blob when no
/// other dataset holds the same content.
pub async fn remove(store: &warden_storage::Store, d: &Dataset) -> Result<(), DomainError> {
    store.remove::<Dataset>(&d.id).await?;
    let shared = store
        .ids_by_index::<Dataset>("blob", &d.blob.sha256)?
        .into_iter()
        .any(|id| id != d.id);
    if !shared {
        store.blobs().delete(&d.blob)?;
    }
    Ok(())
}

/// Drops a blob that no dataset holds (an upload refused after it was
/// written).
pub fn discard_blob(store: &warden_storage::Store, blob: &BlobRef) -> Result<(), DomainError> {
    if store
        .ids_by_index::<Dataset>("blob", &blob.sha256)?
        .is_empty()
        && store
            .ids_by_index::<crate::device::DeviceFile>("blob", &blob.sha256)?
            .is_empty()
    {
        store.blobs().delete(blob)?;
    }
    Ok(())
}

/// The facts of a dataset an LLM gets in its context, one per line.
pub fn facts(d: &Dataset) -> String {
    let p = &d.profile;
    let mut lines = vec![format!(
        "Dataset ds_{} \"{}\" ({}{}): {} rows, columns {}.",
        d.id,
        d.name,
        d.equipment_type,
        if d.unit.is_empty() {
            String::new()
        } else {
            format!(", unit {}", d.unit)
        },
        p.rows,
        p.columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )];
    for c in p.numeric() {
        lines.push(format!(
            "- {}: min {:.3}, max {:.3}, mean {:.3}, std {:.3}, {} missing",
            c.name, c.min, c.max, c.mean, c.std, c.missing
        ));
    }
    match p.periodicity {
        Some(lag) => lines.push(format!(
            "A cycle every {lag} rows (autocorrelation {:.2}).",
            p.periodicity_strength
        )),
        None => lines.push("No clear cycle.".into()),
    }
    let a = advise(p);
    lines.push(format!(
        "Warden's analyst recommends {} (confidence {:.2}).",
        a.architecture, a.confidence
    ));
    lines.join("\n")
}

/// The analyst's answer in words: what the data is and what to train.
pub fn explain(d: &Dataset, a: &Advice) -> String {
    let why = a.reasons.join("; ");
    let name = match a.architecture {
        "lstm_autoencoder" => "an LSTM autoencoder",
        "gru_predictor" => "a GRU predictor",
        _ => "sentinel (robust per-column bounds)",
    };
    let mut text = format!(
        "For \"{}\" ({} rows) I recommend {name}, confidence {:.0}%: {why}. Data quality is {}; use sequences of {} steps.",
        d.name,
        d.profile.rows,
        a.confidence * 100.0,
        a.data_quality,
        a.sequence_length
    );
    if !a.outlier_columns.is_empty() {
        text.push_str(&format!(
            " Columns with readings more than 4 standard deviations from their mean: {}.",
            a.outlier_columns.join(", ")
        ));
    }
    text
}

/// Values of the numeric columns more than 4 standard deviations from
/// their column's mean: a second streaming pass over the CSV.
pub fn count_outliers(input: impl Read, p: &Profile) -> Result<u64, String> {
    let mut reader = csv::ReaderBuilder::new().from_reader(input);
    let bounds: Vec<Option<(f64, f64)>> = p
        .columns
        .iter()
        .map(|c| (c.numeric && c.std > 0.0).then_some((c.mean - 4.0 * c.std, c.mean + 4.0 * c.std)))
        .collect();
    let mut n = 0;
    for rec in reader.records() {
        let rec = rec.map_err(|e| e.to_string())?;
        for (cell, b) in rec.iter().zip(&bounds) {
            if let (Some((lo, hi)), Ok(v)) = (b, cell.trim().parse::<f64>())
                && (v < *lo || v > *hi)
            {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Column names read as anomaly labels (non-zero = anomalous) rather than
/// as a feature, when the column is numeric.
pub const LABEL_COLUMNS: [&str; 6] = [
    "label",
    "labels",
    "anomaly",
    "is_anomaly",
    "anomalous",
    "is_anomalous",
];

/// Which columns a model trains on (every numeric column but a label
/// column) and which, if any, labels the rows.
pub fn feature_columns(p: &Profile) -> (Vec<usize>, Option<usize>) {
    let is_label = |name: &str| LABEL_COLUMNS.contains(&name.trim().to_ascii_lowercase().as_str());
    let cols = &p.columns;
    let features = (0..cols.len())
        .filter(|&i| cols[i].numeric && !is_label(&cols[i].name))
        .collect();
    let label = (0..cols.len()).find(|&i| cols[i].numeric && is_label(&cols[i].name));
    (features, label)
}

/// The dataset's numeric columns as a table for training: features are
/// the numeric columns but a label column (see [`LABEL_COLUMNS`]), which
/// becomes the rows' labels. Read in one streaming pass.
pub fn read_numeric(
    store: &warden_storage::Store,
    d: &Dataset,
) -> Result<warden_ml::Raw, DomainError> {
    let bad = |m: String| DomainError::Invalid(vec![m]);
    if !d.profiled {
        return Err(bad(format!(
            "dataset {} is a {} file, not a CSV",
            d.id, d.format
        )));
    }
    let (features, label) = feature_columns(&d.profile);
    let cols = &d.profile.columns;
    if features.is_empty() {
        return Err(bad("the dataset has no numeric column to train on".into()));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(open(store, d)?);
    let mut values = Vec::with_capacity(d.profile.rows as usize * features.len());
    let mut labels = label.map(|_| Vec::with_capacity(d.profile.rows as usize));
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(bad(format!("the file cannot be read: {e}"))),
        }
        let num = |i: usize| {
            record
                .get(i)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<f32>().ok())
                .filter(|v| v.is_finite())
        };
        for &i in &features {
            values.push(num(i).unwrap_or(f32::NAN));
        }
        if let (Some(l), Some(i)) = (labels.as_mut(), label) {
            l.push(num(i).is_some_and(|v| v != 0.0));
        }
    }
    Ok(warden_ml::Raw {
        names: features.iter().map(|&i| cols[i].name.clone()).collect(),
        values,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_of(rows: usize, period: usize) -> String {
        let mut s = String::from("timestamp,supply_temp,fan_speed,label\n");
        for i in 0..rows {
            let phase = (i % period) as f64 / period as f64 * std::f64::consts::TAU;
            let fan = if i % 10 == 3 {
                String::new()
            } else {
                format!("{}", 50 + i % 7)
            };
            s.push_str(&format!(
                "2026-01-01T{:02}:{:02}:00Z,{:.3},{fan},ok\n",
                (i / 60) % 24,
                i % 60,
                60.0 + 10.0 * phase.sin()
            ));
        }
        s
    }

    #[test]
    fn a_profile_has_stats_time_range_and_period() {
        let p = profile(csv_of(480, 24).as_bytes()).unwrap();
        assert_eq!(p.rows, 480);
        let names: Vec<&str> = p.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["timestamp", "supply_temp", "fan_speed", "label"]);
        let supply = &p.columns[1];
        assert!(
            supply.numeric && (supply.mean - 60.0).abs() < 0.1,
            "{supply:?}"
        );
        assert!((supply.max - 70.0).abs() < 0.1 && (supply.min - 50.0).abs() < 0.1);
        assert!((supply.std - 7.08).abs() < 0.1, "{supply:?}");
        assert_eq!((p.columns[2].missing, p.columns[2].present), (48, 432));
        assert!(!p.columns[3].numeric && !p.columns[0].numeric);
        assert_eq!(p.time_column.as_deref(), Some("timestamp"));
        assert!(p.time_end > p.time_start);
        assert_eq!(p.periodicity, Some(24));
    }

    #[test]
    fn bad_csvs_are_refused_with_reasons() {
        assert!(profile("".as_bytes()).is_err());
        assert!(profile("a,b\n".as_bytes()).unwrap_err()[0].contains("no rows"));
        assert!(profile("a,b\n1,2\n3\n".as_bytes()).unwrap_err()[0].contains("row 3 has 1 fields"));
        assert!(profile("a,b\nx,y\n".as_bytes()).unwrap_err()[0].contains("no numeric column"));
        assert!(profile(&b"a,b\n1,\xff\n"[..]).unwrap_err()[0].contains("not UTF-8"));
    }

    #[test]
    fn the_advice_follows_the_data() {
        let cyclic = profile(csv_of(2000, 48).as_bytes()).unwrap();
        let a = advise(&cyclic);
        assert_eq!(a.architecture, "lstm_autoencoder");
        assert!(a.seasonality && a.confidence > 0.5, "{a:?}");
        assert!(a.confidence < 1.0);
        let short = profile(csv_of(100, 48).as_bytes()).unwrap();
        assert_eq!(advise(&short).architecture, "sentinel");
        // Noise without a cycle, many columns: the predictor.
        let mut s = String::from("a,b,c,d,e,f\n");
        let mut x: u64 = 7;
        for _ in 0..2000 {
            let mut row = Vec::new();
            for _ in 0..6 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                row.push(format!("{}", (x >> 33) % 1000));
            }
            s.push_str(&row.join(","));
            s.push('\n');
        }
        let noise = profile(s.as_bytes()).unwrap();
        assert_eq!(noise.periodicity, None);
        assert_eq!(advise(&noise).architecture, "gru_predictor");
        assert_ne!(advise(&cyclic).confidence, advise(&noise).confidence);
    }

    #[test]
    fn pages_in_file_order_or_sorted_without_holding_the_file() {
        let csv = "t,v,name\n1,5,e\n2,3,c\n3,,a\n4,9,b\n5,1,d\n";
        let col = |rows: Vec<Vec<String>>, i: usize| -> Vec<String> {
            rows.into_iter().map(|r| r[i].clone()).collect()
        };
        let p = page_rows(csv.as_bytes(), 2, 2, None).unwrap();
        assert_eq!(col(p, 0), ["3", "4"]);
        let by_v = |descending| SortBy {
            column: 1,
            descending,
            numeric: true,
        };
        let p = page_rows(csv.as_bytes(), 1, 3, Some(by_v(false))).unwrap();
        assert_eq!(col(p, 1), ["1", "3", "5"]);
        let p = page_rows(csv.as_bytes(), 2, 3, Some(by_v(false))).unwrap();
        assert_eq!(col(p, 1), ["9", ""], "missing last");
        let p = page_rows(csv.as_bytes(), 1, 2, Some(by_v(true))).unwrap();
        assert_eq!(col(p, 1), ["9", "5"]);
        let by_name = |descending| SortBy {
            column: 2,
            descending,
            numeric: false,
        };
        let p = page_rows(csv.as_bytes(), 1, 5, Some(by_name(true))).unwrap();
        assert_eq!(col(p, 2), ["e", "d", "c", "b", "a"]);
        let p = page_rows(csv.as_bytes(), 1, 2, Some(by_name(false))).unwrap();
        assert_eq!(col(p, 2), ["a", "b"]);
    }

    #[test]
    fn validation_names_mixed_types_missing_values_and_ragged_rows() {
        let v = validate("a,b,c\n1,x,\n2,3,4\n5,6\n".as_bytes());
        assert_eq!((v.rows_checked, v.columns_checked), (3, 3));
        assert_eq!(
            v.issues,
            [
                "Column 'b': mixed types detected (numeric: 2, string: 1)",
                "Column 'c': 1 missing values (33.33%)",
                "Row 4: expected 3 fields, found 2",
            ]
        );
        assert!(validate("a,b\n1,2\n".as_bytes()).issues.is_empty());
    }

    #[test]
    fn outliers_are_counted_and_the_analyst_explains() {
        let mut csv = csv_of(1000, 24);
        csv.push_str("2026-01-02T00:00:00Z,500.0,51,spike\n");
        let p = profile(csv.as_bytes()).unwrap();
        assert_eq!(count_outliers(csv.as_bytes(), &p).unwrap(), 1);
        let d = Dataset::new(
            DatasetInput {
                name: Some("AHU".into()),
                equipment_type: Some("air_handler".into()),
                ..Default::default()
            },
            Origin::Forge,
            BlobRef {
                sha256: "x".into(),
                size: 1,
            },
            Some(p),
            Owner::default(),
            "u",
        )
        .unwrap();
        let a = advise(&d.profile);
        let text = explain(&d, &a);
        assert!(
            text.contains("LSTM autoencoder") && text.contains("supply_temp"),
            "{text}"
        );
        assert!(facts(&d).contains("A cycle every 24 rows"), "{}", facts(&d));
        let blob = BlobRef {
            sha256: "x".into(),
            size: 1,
        };
        let bad = Dataset::new(
            DatasetInput::default(),
            Origin::Forge,
            blob.clone(),
            None,
            Owner::default(),
            "u",
        );
        assert!(bad.is_err());
        // Vareon needs a format, not an equipment type; a non-CSV is opaque.
        let named = DatasetInput {
            name: Some("logs".into()),
            ..Default::default()
        };
        assert!(
            Dataset::new(
                named.clone(),
                Origin::Vareon,
                blob.clone(),
                None,
                Owner::default(),
                "u"
            )
            .is_err()
        );
        let json = DatasetInput {
            format: Some("JSON".into()),
            ..named
        };
        let mut d = Dataset::new(json, Origin::Vareon, blob, None, Owner::default(), "u").unwrap();
        assert!(!d.profiled && d.format == "json");
        assert_eq!(d.file_name(), format!("datasets/{}.json", d.id));
        let rename = DatasetInput {
            name: Some("renamed".into()),
            ..Default::default()
        };
        d.apply(rename, "u").unwrap();
        assert_eq!(d.name, "renamed");
        let blank = DatasetInput {
            name: Some(" ".into()),
            ..Default::default()
        };
        assert!(d.apply(blank, "u").is_err());
    }
}
