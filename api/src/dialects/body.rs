//! Request bodies, for every dialect: JSON objects only, size-limited, validated field by
//! field with class-validator's messages ("name must be a string").

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::dialects::aiwm::{Aiwm, AiwmError};
use crate::error::ApiError;

/// Reads a request body as one JSON object (an empty body is `{}`), with
/// the size limit; refusals are written in dialect `D`'s error body.
pub(crate) async fn read_object<D, S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<Map<String, Value>, ApiError<D>> {
    let bytes = Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request body is too large")
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("Could not read the request body: {e}"),
            )
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::validation(vec![
            "body must be a JSON object".into(),
        ])),
        Err(e) if non_finite_at(&bytes, e.line(), e.column()) => Err(ApiError::validation(vec![
            "value must be a finite number (NaN and Infinity are not numbers)".into(),
        ])),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Malformed JSON: {e}"),
        )),
    }
}

/// Whether a JSON syntax error sits on a `NaN` or an `Infinity`, which
/// Python's `json` writes for non-finite floats: a value the client
/// meant, refused as a value (a validation error), not as broken JSON.
fn non_finite_at(bytes: &[u8], line: usize, column: usize) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let Some(row) = text.lines().nth(line.saturating_sub(1)) else {
        return false;
    };
    let at = column.saturating_sub(1).min(row.len());
    let rest = row.get(at..).unwrap_or_default();
    let before = row.get(..at).unwrap_or_default().trim_end();
    ["NaN", "Infinity", "-Infinity"]
        .iter()
        .any(|w| rest.starts_with(w) || (before.ends_with('-') && rest.starts_with("Infinity")))
}

/// A JSON object body, refused in dialect `D`'s error body.
pub(crate) struct JsonBody<D>(pub Map<String, Value>, pub std::marker::PhantomData<D>);

impl<D: crate::dialects::Dialect, S: Send + Sync> FromRequest<S> for JsonBody<D> {
    type Rejection = ApiError<D>;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        read_object::<D, S>(req, state)
            .await
            .map(|m| JsonBody(m, std::marker::PhantomData))
    }
}

/// A JSON object body, or the AIWM error body for anything else.
pub(crate) struct AiwmBody(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for AiwmBody {
    type Rejection = AiwmError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        read_object::<Aiwm, S>(req, state).await.map(AiwmBody)
    }
}

const MAX_SHORT: usize = 256;

/// Reads typed fields out of a body, collecting every error at once.
/// Fields not read become the record's extra fields.
pub(crate) struct Fields {
    map: Map<String, Value>,
    errors: Vec<String>,
}

impl Fields {
    /// Fields no client may set: ids, ownership and audit are the server's.
    const SERVER_OWNED: [&'static str; 10] = [
        "_id",
        "id",
        "owner",
        "createdBy",
        "updatedBy",
        "createdAt",
        "updatedAt",
        "deletedAt",
        "isDeleted",
        "__v",
    ];

    pub fn new(mut map: Map<String, Value>) -> Self {
        for key in Self::SERVER_OWNED {
            map.remove(key);
        }
        Fields {
            map,
            errors: Vec::new(),
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        match self.map.remove(key) {
            Some(Value::Null) | None => None,
            Some(v) => Some(v),
        }
    }

    fn missing(&mut self, key: &str, what: &str, required: bool) {
        if required {
            self.errors.push(format!("{key} must be {what}"));
        }
    }

    pub fn error(&mut self, message: String) {
        self.errors.push(message);
    }

    /// A string up to 256 characters; required ones must not be empty.
    pub fn string(&mut self, key: &str, required: bool) -> Option<String> {
        self.string_max(key, required, MAX_SHORT)
    }

    pub fn string_max(&mut self, key: &str, required: bool, max: usize) -> Option<String> {
        match self.take(key) {
            Some(Value::String(s)) => {
                if required && s.trim().is_empty() {
                    self.errors.push(format!("{key} should not be empty"));
                    None
                } else if s.chars().count() > max {
                    self.errors.push(format!(
                        "{key} must be shorter than or equal to {max} characters"
                    ));
                    None
                } else {
                    Some(s)
                }
            }
            Some(_) => {
                self.errors.push(format!("{key} must be a string"));
                None
            }
            None => {
                self.missing(key, "a string", required);
                None
            }
        }
    }

    /// An identifier: 1 to 128 of letters, digits and `.-_:@`.
    pub fn key(&mut self, key: &str, required: bool) -> Option<String> {
        let value = self.string(key, required)?;
        let ok = value.len() <= 128
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_:@".contains(c));
        if ok {
            Some(value)
        } else {
            self.errors.push(format!(
                "{key} must contain only letters, digits and . - _ : @ (at most 128)"
            ));
            None
        }
    }

    pub fn one_of(&mut self, key: &str, allowed: &[&str], required: bool) -> Option<String> {
        let value = self.string(key, required)?;
        if allowed.contains(&value.as_str()) {
            Some(value)
        } else {
            self.errors.push(format!(
                "{key} must be one of the following values: {}",
                allowed.join(", ")
            ));
            None
        }
    }

    /// A non-negative integer.
    pub fn count(&mut self, key: &str, required: bool) -> Option<u64> {
        match self.take(key) {
            Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
                (Some(v), _) => Some(v),
                (None, Some(f)) if f < 0.0 => {
                    self.errors.push(format!("{key} must not be less than 0"));
                    None
                }
                _ => {
                    self.errors.push(format!("{key} must be an integer number"));
                    None
                }
            },
            Some(_) => {
                self.errors.push(format!("{key} must be a number"));
                None
            }
            None => {
                self.missing(key, "a number", required);
                None
            }
        }
    }

    pub fn number(&mut self, key: &str, required: bool) -> Option<f64> {
        match self.take(key) {
            Some(Value::Number(n)) => n.as_f64(),
            Some(_) => {
                self.errors.push(format!("{key} must be a number"));
                None
            }
            None => {
                self.missing(key, "a number", required);
                None
            }
        }
    }

    pub fn boolean(&mut self, key: &str, required: bool) -> Option<bool> {
        match self.take(key) {
            Some(Value::Bool(b)) => Some(b),
            Some(_) => {
                self.errors.push(format!("{key} must be a boolean value"));
                None
            }
            None => {
                self.missing(key, "a boolean value", required);
                None
            }
        }
    }

    pub fn strings(&mut self, key: &str, required: bool) -> Option<Vec<String>> {
        match self.take(key) {
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) if s.chars().count() <= 4096 => out.push(s),
                        _ => {
                            self.errors
                                .push(format!("each value in {key} must be a string"));
                            return None;
                        }
                    }
                }
                Some(out)
            }
            Some(_) => {
                self.errors.push(format!("{key} must be an array"));
                None
            }
            None => {
                self.missing(key, "an array", required);
                None
            }
        }
    }

    /// Free-form JSON of a given shape, kept as text.
    pub fn json(&mut self, key: &str, object: bool) -> Option<String> {
        match self.take(key) {
            Some(v @ Value::Object(_)) if object => Some(v.to_string()),
            Some(v @ Value::Array(_)) if !object => Some(v.to_string()),
            Some(_) => {
                self.errors.push(format!(
                    "{key} must be {}",
                    if object { "an object" } else { "an array" }
                ));
                None
            }
            None => None,
        }
    }

    /// A JSON object, as a map.
    pub fn objects_one(&mut self, key: &str) -> Option<Map<String, Value>> {
        match self.take(key) {
            Some(Value::Object(m)) => Some(m),
            Some(_) => {
                self.errors.push(format!("{key} must be an object"));
                None
            }
            None => None,
        }
    }

    /// An array of objects, each read by `item`.
    pub fn objects<T>(
        &mut self,
        key: &str,
        mut item: impl FnMut(&mut Fields) -> Option<T>,
    ) -> Option<Vec<T>> {
        let items = match self.take(key) {
            Some(Value::Array(items)) => items,
            Some(_) => {
                self.errors.push(format!("{key} must be an array"));
                return None;
            }
            None => return None,
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, value) in items.into_iter().enumerate() {
            let Value::Object(map) = value else {
                self.errors.push(format!("{key}.{i} must be an object"));
                continue;
            };
            let mut inner = Fields {
                map,
                errors: Vec::new(),
            };
            let parsed = item(&mut inner);
            self.errors
                .extend(inner.errors.into_iter().map(|e| format!("{key}.{i}.{e}")));
            out.extend(parsed);
        }
        Some(out)
    }

    /// Everything valid so far, or the AIWM validation error. On success
    /// returns the fields not read, as JSON object text (may be empty).
    pub fn finish(self) -> Result<String, AiwmError> {
        self.finish_as::<Aiwm>()
    }

    /// [`Fields::finish`] with dialect `D`'s error body.
    pub fn finish_as<D>(self) -> Result<String, ApiError<D>> {
        if !self.errors.is_empty() {
            return Err(ApiError::validation(self.errors));
        }
        Ok(if self.map.is_empty() {
            String::new()
        } else {
            Value::Object(self.map).to_string()
        })
    }

    /// Non-negative integers of an array.
    pub fn counts(&mut self, key: &str) -> Option<Vec<u64>> {
        match self.take(key) {
            Some(Value::Array(items)) => {
                let out: Option<Vec<u64>> = items.iter().map(Value::as_u64).collect();
                if out.is_none() {
                    self.errors.push(format!(
                        "each value in {key} must be a non-negative integer"
                    ));
                }
                out
            }
            Some(_) => {
                self.errors.push(format!("{key} must be an array"));
                None
            }
            None => None,
        }
    }

    /// The fields not read so far, as JSON object text (empty when none),
    /// for a nested object's own extra fields.
    pub fn rest(&mut self) -> String {
        let map = std::mem::take(&mut self.map);
        if map.is_empty() {
            String::new()
        } else {
            Value::Object(map).to_string()
        }
    }

    /// Forgets fields that only the server sets.
    pub fn drop(&mut self, keys: &[&str]) {
        for key in keys {
            self.map.remove(*key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::non_finite_at;

    #[test]
    fn non_finite_numbers_are_told_from_broken_json() {
        for body in [
            r#"{"value": NaN}"#,
            r#"{"value": Infinity}"#,
            r#"{"value": -Infinity}"#,
        ] {
            let e = serde_json::from_str::<serde_json::Value>(body).unwrap_err();
            assert!(
                non_finite_at(body.as_bytes(), e.line(), e.column()),
                "{body}: {e}"
            );
        }
        for body in ["{broken", r#"{"value": nope}"#] {
            let e = serde_json::from_str::<serde_json::Value>(body).unwrap_err();
            assert!(
                !non_finite_at(body.as_bytes(), e.line(), e.column()),
                "{body}"
            );
        }
    }
}
