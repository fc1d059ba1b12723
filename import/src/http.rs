//! HTTP sources, each with its own request format:
//! - Aegis-DB (an edge controller's): `POST
//!   http://{ip}:{port}/api/v1/documents/collections/{collection}/query`
//!   `{filter, limit, skip, sort}` (the time range as a `timestamp`
//!   filter), answered `{documents: [{id, collection, data}]}`, paged.
//! - InfluxDB v3: `POST {url}/api/v3/query_sql` `{db, q, format: "json"}`,
//!   answered with an array of row objects.
//! - MongoDB Data API: `POST {api_url}/action/find` with the `api-key`
//!   header and `{dataSource, database, collection, filter, limit}`,
//!   answered `{documents: [...]}` (extended JSON unwrapped).
//! - SpacetimeDB: `POST {api_url}/v1/database/{database}/sql` with the
//!   query as the body, answered `[{schema: {elements}, rows}]`.
//! - REST SQL (`api_url` of PostgreSQL or TiDB): `POST {api_url}`
//!   `{query}`, answered with an array of objects, `{rows|data|results:
//!   [...]}`, or `{columns, rows: [[...]]}`.

use serde_json::{Map, Value, json};

use crate::table::cell;
use crate::{ImportError, Settings, Source, Table};

/// Aegis-DB documents asked for at once.
const AEGIS_PAGE: usize = 10_000;
/// MongoDB Data API's largest `find`.
const MONGO_LIMIT: usize = 50_000;

async fn send(
    req: reqwest::RequestBuilder,
    what: &str,
    s: &Settings,
) -> Result<Value, ImportError> {
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            ImportError::Timeout(s.timeout)
        } else {
            ImportError::Unreachable(format!("could not reach {what}: {e}"))
        }
    })?;
    let status = resp.status();
    if let Some(len) = resp.content_length()
        && len > s.max_bytes
    {
        return Err(ImportError::TooLarge(s.max_bytes));
    }
    let mut body = Vec::new();
    let mut resp = resp;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ImportError::Unreachable(format!("{what}: {e}")))?
    {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > s.max_bytes {
            return Err(ImportError::TooLarge(s.max_bytes));
        }
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.chars().take(300).collect();
        return Err(ImportError::Unreachable(format!(
            "{what} answered {status}: {text}"
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ImportError::Unreachable(format!("{what} did not answer JSON: {e}")))
}

fn objects(v: &[Value]) -> impl Iterator<Item = &Map<String, Value>> {
    v.iter().filter_map(Value::as_object)
}

fn shape(what: &str) -> ImportError {
    ImportError::Unreachable(format!("{what} answered in an unexpected shape"))
}

pub(crate) async fn fetch(
    source: &Source,
    s: &Settings,
    mut t: Table,
) -> Result<Table, ImportError> {
    let http = &s.http;
    match source {
        Source::AegisBridge {
            controller_ip,
            port,
            collection,
            time_range,
            auth_token,
        } => {
            let host = match controller_ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
                _ => controller_ip.clone(),
            };
            let url =
                format!("http://{host}:{port}/api/v1/documents/collections/{collection}/query");
            let mut range = Map::new();
            if let Some(a) = &time_range.start {
                range.insert("$gte".into(), json!(a));
            }
            if let Some(b) = &time_range.end {
                range.insert("$lte".into(), json!(b));
            }
            let filter = if range.is_empty() {
                json!({})
            } else {
                json!({"timestamp": range})
            };
            let mut skip = 0;
            loop {
                let mut req = http.post(&url).json(&json!({
                    "filter": filter, "limit": AEGIS_PAGE, "skip": skip,
                    "sort": {"field": "timestamp", "ascending": true},
                }));
                if let Some(token) = auth_token {
                    req = req.bearer_auth(token);
                }
                let v = send(req, "the Aegis-DB controller", s).await?;
                let docs = v["documents"].as_array().ok_or_else(|| shape("Aegis-DB"))?;
                t.push_objects(docs.iter().filter_map(|d| d["data"].as_object()))?;
                if docs.len() < AEGIS_PAGE {
                    break;
                }
                skip += docs.len();
            }
        }
        Source::InfluxDb {
            url,
            database,
            measurement,
            time_range,
            token,
        } => {
            let mut q = format!("SELECT * FROM \"{measurement}\"");
            let mut conds = Vec::new();
            if let Some(a) = &time_range.start {
                conds.push(format!("time >= '{a}'"));
            }
            if let Some(b) = &time_range.end {
                conds.push(format!("time <= '{b}'"));
            }
            if !conds.is_empty() {
                q.push_str(&format!(" WHERE {}", conds.join(" AND ")));
            }
            q.push_str(" ORDER BY time");
            let mut req = http
                .post(format!("{url}/api/v3/query_sql"))
                .json(&json!({"db": database, "q": q, "format": "json"}));
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            let v = send(req, "InfluxDB", s).await?;
            let rows = v.as_array().ok_or_else(|| shape("InfluxDB"))?;
            t.push_objects(objects(rows))?;
        }
        Source::MongoDb {
            api_url,
            api_key,
            database,
            collection,
            filter,
            data_source,
        } => {
            let req = http
                .post(format!("{api_url}/action/find"))
                .header("api-key", api_key)
                .json(&json!({
                    "dataSource": data_source, "database": database,
                    "collection": collection, "filter": filter, "limit": MONGO_LIMIT,
                }));
            let v = send(req, "the MongoDB Data API", s).await?;
            let docs = v["documents"].as_array().ok_or_else(|| shape("MongoDB"))?;
            t.push_objects(objects(docs))?;
        }
        Source::SpacetimeDb {
            api_url,
            database,
            query,
            auth_token,
        } => {
            let mut req = http
                .post(format!("{api_url}/v1/database/{database}/sql"))
                .header("content-type", "text/plain")
                .body(query.clone());
            if let Some(token) = auth_token {
                req = req.bearer_auth(token);
            }
            let v = send(req, "SpacetimeDB", s).await?;
            // One result per statement; the last one's rows.
            let last = v
                .as_array()
                .and_then(|a| a.last())
                .ok_or_else(|| shape("SpacetimeDB"))?;
            let elements = last["schema"]["elements"]
                .as_array()
                .ok_or_else(|| shape("SpacetimeDB"))?;
            t.columns = elements
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let n = &e["name"];
                    n["some"]
                        .as_str()
                        .or(n.as_str())
                        .map_or_else(|| format!("column_{i}"), str::to_owned)
                })
                .collect();
            for row in last["rows"]
                .as_array()
                .ok_or_else(|| shape("SpacetimeDB"))?
            {
                let cells = row.as_array().ok_or_else(|| shape("SpacetimeDB"))?;
                t.push(cells.iter().map(cell).collect())?;
            }
        }
        Source::RestSql { api_url, query } => {
            let v = send(
                http.post(api_url).json(&json!({"query": query})),
                "the SQL API",
                s,
            )
            .await?;
            match &v {
                Value::Array(rows) => t.push_objects(objects(rows))?,
                Value::Object(o) => {
                    if let (Some(cols), Some(rows)) =
                        (o["columns"].as_array(), o["rows"].as_array())
                        && rows.iter().all(Value::is_array)
                    {
                        t.columns = cols.iter().map(|c| cell(c).unwrap_or_default()).collect();
                        for r in rows {
                            t.push(r.as_array().into_iter().flatten().map(cell).collect())?;
                        }
                    } else {
                        let rows = ["rows", "data", "results"]
                            .iter()
                            .find_map(|k| o.get(*k).and_then(Value::as_array))
                            .ok_or_else(|| shape("the SQL API"))?;
                        t.push_objects(objects(rows))?;
                    }
                }
                _ => return Err(shape("the SQL API")),
            }
        }
        Source::Postgres { .. } | Source::Sqlite { .. } => {
            return Err(crate::config("not an HTTP source"));
        }
    }
    Ok(t)
}
