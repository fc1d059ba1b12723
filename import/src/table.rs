//! An imported table: named columns and rows of text cells (`None` is a
//! missing value), within a byte budget, written out as CSV.

use serde_json::{Map, Value};

use crate::ImportError;

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    bytes: u64,
    max_bytes: u64,
}

/// A JSON value as a cell: scalars as text, `null` missing, an extended
/// JSON wrapper (`{"$date": ...}`, `{"$oid": ...}`, `{"$numberDouble":
/// ...}`) as what it wraps, anything else as its JSON text.
pub(crate) fn cell(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(o) if o.len() == 1 && o.keys().all(|k| k.starts_with('$')) => {
            o.values().next().and_then(|inner| match inner {
                // `{"$date": {"$numberLong": "..."}}`
                Value::Object(_) => cell(inner),
                other => cell(other),
            })
        }
        other => Some(other.to_string()),
    }
}

impl Table {
    pub(crate) fn new(max_bytes: u64) -> Table {
        Table {
            columns: Vec::new(),
            rows: Vec::new(),
            bytes: 0,
            max_bytes,
        }
    }

    pub(crate) fn push(&mut self, row: Vec<Option<String>>) -> Result<(), ImportError> {
        self.bytes += row
            .iter()
            .map(|c| c.as_ref().map_or(1, |s| s.len() as u64 + 1))
            .sum::<u64>();
        if self.bytes > self.max_bytes {
            return Err(ImportError::TooLarge(self.max_bytes));
        }
        self.rows.push(row);
        Ok(())
    }

    /// Rows given as JSON objects: the columns are every key, a time
    /// column (`timestamp`, `time`, `_time`, `date`, `datetime`, `ts`)
    /// first, then the rest in key order; a row without a key misses
    /// that value. A later batch adds only what the first lacked.
    pub(crate) fn push_objects<'a>(
        &mut self,
        objects: impl IntoIterator<Item = &'a Map<String, Value>>,
    ) -> Result<(), ImportError> {
        const TIME: [&str; 6] = ["timestamp", "time", "_time", "date", "datetime", "ts"];
        let objects: Vec<&Map<String, Value>> = objects.into_iter().collect();
        let mut new: Vec<&String> = Vec::new();
        for o in &objects {
            for k in o.keys() {
                if !self.columns.contains(k) && !new.contains(&k) {
                    new.push(k);
                }
            }
        }
        new.sort_by_key(|k| {
            let lower = k.to_ascii_lowercase();
            (
                TIME.iter().position(|t| *t == lower).unwrap_or(TIME.len()),
                k.to_string(),
            )
        });
        self.columns.extend(new.into_iter().cloned());
        for o in objects {
            let row = self
                .columns
                .iter()
                .map(|c| o.get(c).and_then(cell))
                .collect();
            self.push(row)?;
        }
        Ok(())
    }

    /// The table as CSV with a header row; rows shorter than the header
    /// (objects seen before a later key appeared) end in empty cells.
    pub fn to_csv(&self) -> Vec<u8> {
        let mut w = csv::WriterBuilder::new()
            .flexible(false)
            .from_writer(Vec::with_capacity(self.bytes as usize + 1024));
        let _ = w.write_record(&self.columns);
        let width = self.columns.len();
        for row in &self.rows {
            let cells = (0..width).map(|i| row.get(i).cloned().flatten().unwrap_or_default());
            let _ = w.write_record(cells);
        }
        w.into_inner().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_become_a_rectangular_csv() {
        let mut t = Table::new(1 << 20);
        let rows = [
            json!({"time": "2026-01-01T00:00:00Z", "temp": 20.5}),
            json!({"time": "2026-01-01T00:01:00Z", "temp": null, "fan": 3}),
            json!({"time": {"$date": "2026-01-01T00:02:00Z"}, "temp": 21, "fan": true}),
        ];
        t.push_objects(rows.iter().map(|r| r.as_object().unwrap()))
            .unwrap();
        assert_eq!(
            String::from_utf8(t.to_csv()).unwrap(),
            "time,fan,temp\n2026-01-01T00:00:00Z,,20.5\n2026-01-01T00:01:00Z,3,\n2026-01-01T00:02:00Z,true,21\n"
        );
        let mut small = Table::new(10);
        assert!(matches!(
            small.push(vec![Some("0123456789abc".into())]),
            Err(ImportError::TooLarge(10))
        ));
    }
}
