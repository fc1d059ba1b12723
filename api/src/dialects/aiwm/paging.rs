//! `page`, `limit` (≤ 100), `filter[field]` and `sort` (`-` for
//! descending), over any record's AIWM view.

use std::cmp::Ordering;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde_json::{Value, json};

use super::AiwmError;
use crate::error::ApiError;

pub(crate) const MAX_LIMIT: usize = 100;

#[derive(Debug)]
pub(crate) struct AiwmQuery {
    pub page: usize,
    pub limit: usize,
    pub filters: Vec<(String, String)>,
    pub sort: Vec<(String, bool)>,
}

impl<S: Send + Sync> FromRequestParts<S> for AiwmQuery {
    type Rejection = AiwmError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parse(parts.uri.query().unwrap_or(""))
    }
}

fn positive(key: &str, value: &str, errors: &mut Vec<String>) -> Option<usize> {
    match value.trim().parse::<usize>() {
        Ok(v) if v >= 1 => Some(v),
        _ => {
            errors.push(format!("{key} must be a positive integer"));
            None
        }
    }
}

pub(crate) fn parse(query: &str) -> Result<AiwmQuery, AiwmError> {
    let mut q = AiwmQuery {
        page: 1,
        limit: 10,
        filters: Vec::new(),
        sort: Vec::new(),
    };
    let mut errors = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "page" => q.page = positive("page", &value, &mut errors).unwrap_or(1),
            "limit" => match positive("limit", &value, &mut errors) {
                Some(v) if v > MAX_LIMIT => {
                    errors.push(format!("limit must not be greater than {MAX_LIMIT}"))
                }
                Some(v) => q.limit = v,
                None => {}
            },
            "sort" => {
                for field in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    match field.strip_prefix('-') {
                        Some(f) => q.sort.push((f.to_owned(), true)),
                        None => q
                            .sort
                            .push((field.trim_start_matches('+').to_owned(), false)),
                    }
                }
            }
            k => {
                if let Some(field) = k.strip_prefix("filter[").and_then(|f| f.strip_suffix(']')) {
                    if field.is_empty() {
                        errors.push("filter needs a field name: filter[field]=value".into());
                    } else {
                        q.filters.push((field.to_owned(), value.into_owned()));
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(q)
    } else {
        Err(ApiError::validation(errors))
    }
}

fn lookup<'a>(view: &'a Value, field: &str) -> Option<&'a Value> {
    field.split('.').try_fold(view, |v, k| v.get(k))
}

fn scalar_matches(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Bool(b) => want.eq_ignore_ascii_case(if *b { "true" } else { "false" }),
        Value::Number(n) => want.parse::<f64>().ok() == n.as_f64(),
        Value::Null => want == "null",
        _ => false,
    }
}

/// Whether a view's field equals the filter value; on arrays, whether any element does.
fn matches(view: &Value, field: &str, want: &str) -> bool {
    match lookup(view, field) {
        None => want == "null",
        Some(Value::Array(items)) => items.iter().any(|i| scalar_matches(i, want)),
        Some(v) => scalar_matches(v, want),
    }
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            None | Some(Value::Null) => 0,
            Some(Value::Bool(_)) => 1,
            Some(Value::Number(_)) => 2,
            Some(Value::String(_)) => 3,
            Some(_) => 4,
        }
    }
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

impl AiwmQuery {
    /// The engine's window for this page.
    pub fn window(&self) -> crate::paging::Window {
        crate::paging::Window::page(self.page, self.limit)
    }

    /// Filters, sorts (stable, so ties keep storage order) and pages views.
    pub fn page_of(&self, views: Vec<Value>) -> Value {
        let mut views: Vec<Value> = views
            .into_iter()
            .filter(|v| self.filters.iter().all(|(f, want)| matches(v, f, want)))
            .collect();
        if !self.sort.is_empty() {
            views.sort_by(|a, b| {
                self.sort
                    .iter()
                    .map(|(field, desc)| {
                        let o = compare(lookup(a, field), lookup(b, field));
                        if *desc { o.reverse() } else { o }
                    })
                    .find(|o| *o != Ordering::Equal)
                    .unwrap_or(Ordering::Equal)
            });
        }
        let total = views.len();
        let data = self.window().slice(views);
        json!({"data": data, "pagination": {"page": self.page, "limit": self.limit, "total": total}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let q = parse(
            "page=2&limit=20&filter%5Bstatus%5D=online&filter[isLocal]=true&sort=-createdAt,name",
        )
        .unwrap();
        assert_eq!((q.page, q.limit), (2, 20));
        assert_eq!(
            q.filters,
            vec![
                ("status".into(), "online".into()),
                ("isLocal".into(), "true".into())
            ]
        );
        assert_eq!(
            q.sort,
            vec![("createdAt".into(), true), ("name".into(), false)]
        );
        let e = parse("page=0&limit=101").unwrap_err();
        assert_eq!(
            e.errors,
            vec![
                "page must be a positive integer",
                "limit must not be greater than 100"
            ]
        );
        assert!(parse("page=abc").is_err());
        assert!(parse("limit=-1").is_err());
    }

    #[test]
    fn filters_sorts_and_pages() {
        let views = vec![
            json!({"name": "b", "n": 2, "tags": ["x"], "on": true}),
            json!({"name": "a", "n": 10, "tags": ["y"], "on": false}),
            json!({"name": "c", "n": 1, "tags": ["x", "y"], "on": true}),
        ];
        let q = parse("filter[tags]=x&sort=-n").unwrap();
        let out = q.page_of(views.clone());
        assert_eq!(out["data"][0]["name"], "b");
        assert_eq!(out["pagination"]["total"], 2);
        let q = parse("filter[on]=false").unwrap();
        assert_eq!(q.page_of(views.clone())["data"][0]["name"], "a");
        let q = parse("sort=name&page=2&limit=2").unwrap();
        let out = q.page_of(views);
        assert_eq!(out["data"].as_array().unwrap().len(), 1);
        assert_eq!(out["data"][0]["name"], "c");
    }
}
