//! Tables imported from outside Warden for forge's
//! `POST /api/v1/datasets/connect`: a source (checked from the request's
//! fields by [`Source::parse`]) is asked for its rows with its own
//! protocol, within one deadline, and the rows become a [`Table`] that
//! the server writes as the dataset's CSV.
//!
//! Sources: SQLite files under configured directories and PostgreSQL
//! servers (`sql.rs`, real clients), and the HTTP databases of forge's
//! reference (`http.rs`): Aegis-DB on an edge controller, InfluxDB v3,
//! MongoDB's Data API, SpacetimeDB, and REST endpoints answering JSON
//! rows (PostgreSQL's and TiDB's `api_url`).

mod http;
mod sql;
mod table;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

pub use table::Table;

/// `source_type`s, forge's default first.
pub const SOURCE_TYPES: [&str; 7] = [
    "aegis_bridge",
    "influxdb",
    "postgresql",
    "tidb",
    "sqlite",
    "mongodb",
    "spacetimedb",
];

/// What an import may use and how long it may take.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The whole import's deadline (connect, query, transfer).
    pub timeout: Duration,
    /// Directories SQLite files may be read from (a path elsewhere is
    /// refused: the server's other files are not a client's to read).
    pub sqlite_dirs: Vec<PathBuf>,
    /// The most value text an import may bring.
    pub max_bytes: u64,
    pub http: reqwest::Client,
}

impl Settings {
    pub fn new(timeout: Duration, sqlite_dirs: Vec<PathBuf>, max_bytes: u64) -> Settings {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .unwrap_or_default();
        Settings {
            timeout,
            sqlite_dirs,
            max_bytes,
            http,
        }
    }
}

/// Why an import failed, by the status forge answers with.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A field is missing or wrong (400).
    #[error("{}", .0.join("; "))]
    Config(Vec<String>),
    /// The source refused the query itself (400).
    #[error("the query failed: {0}")]
    Query(String),
    /// The source could not be reached, refused the connection or the
    /// credentials, or answered with an error (502).
    #[error("{0}")]
    Unreachable(String),
    /// The deadline passed (504).
    #[error("the source did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// More than the allowed bytes (413).
    #[error("the import is larger than {} MB", .0 / (1024 * 1024))]
    TooLarge(u64),
    /// Nothing came back (400).
    #[error("the source returned no rows")]
    Empty,
}

fn config(m: impl Into<String>) -> ImportError {
    ImportError::Config(vec![m.into()])
}

/// A time filter (`time_range`): RFC 3339 bounds, either open.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimeRange {
    pub start: Option<String>,
    pub end: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    AegisBridge {
        controller_ip: String,
        port: u16,
        collection: String,
        time_range: TimeRange,
        auth_token: Option<String>,
    },
    InfluxDb {
        url: String,
        database: String,
        measurement: String,
        time_range: TimeRange,
        token: Option<String>,
    },
    Postgres {
        connection_string: String,
        query: String,
    },
    /// PostgreSQL's or TiDB's `api_url`: `POST {query}`, JSON rows back.
    RestSql {
        api_url: String,
        query: String,
    },
    Sqlite {
        path: String,
        query: String,
    },
    MongoDb {
        api_url: String,
        api_key: String,
        database: String,
        collection: String,
        filter: Value,
        data_source: String,
    },
    SpacetimeDb {
        api_url: String,
        database: String,
        query: String,
        auth_token: Option<String>,
    },
}

/// Reads the fields of one source from a request body.
struct Reader<'a> {
    map: &'a Map<String, Value>,
    problems: Vec<String>,
}

impl Reader<'_> {
    fn text(&mut self, key: &str, required: bool) -> Option<String> {
        match self.map.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.problems.push(format!("{key} is required"));
                }
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() && required => {
                self.problems.push(format!("{key} is required"));
                None
            }
            Some(Value::String(s)) if s.len() > 64 * 1024 => {
                self.problems.push(format!("{key} is too long"));
                None
            }
            Some(Value::String(s)) => Some(s.trim().to_owned()),
            Some(_) => {
                self.problems.push(format!("{key} must be a string"));
                None
            }
        }
    }

    fn url(&mut self, key: &str, required: bool) -> Option<String> {
        let u = self.text(key, required)?;
        match reqwest::Url::parse(&u) {
            Ok(p) if p.scheme() == "http" || p.scheme() == "https" => {
                Some(u.trim_end_matches('/').to_owned())
            }
            _ => {
                self.problems
                    .push(format!("{key} must be an http(s) URL (got {u})"));
                None
            }
        }
    }

    /// A name put into a path or a query: letters, digits, `_-.`.
    fn name(&mut self, key: &str, required: bool) -> Option<String> {
        let n = self.text(key, required)?;
        if n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            Some(n)
        } else {
            self.problems.push(format!(
                "{key} may hold only letters, digits, '_', '-' and '.'"
            ));
            None
        }
    }

    fn time_range(&mut self) -> TimeRange {
        let Some(v) = self.map.get("time_range").filter(|v| !v.is_null()) else {
            return TimeRange::default();
        };
        let Some(obj) = v.as_object() else {
            self.problems.push("time_range must be an object".into());
            return TimeRange::default();
        };
        let mut bound = |key: &str| match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => {
                Some(s.clone())
            }
            Some(other) => {
                self.problems.push(format!(
                    "time_range.{key} must be an RFC 3339 time (got {other})"
                ));
                None
            }
        };
        TimeRange {
            start: bound("start"),
            end: bound("end"),
        }
    }
}

impl Source {
    /// The source a request describes (`source_type`, default
    /// `aegis_bridge`, and its own fields), or every problem with it.
    pub fn parse(source_type: &str, map: &Map<String, Value>) -> Result<Source, ImportError> {
        let mut r = Reader {
            map,
            problems: Vec::new(),
        };
        let source = match source_type {
            "aegis_bridge" => {
                let ip = r.text("controller_ip", true);
                if let Some(ip) = &ip
                    && ip.parse::<std::net::IpAddr>().is_err()
                {
                    r.problems
                        .push(format!("controller_ip must be an IP address (got {ip})"));
                }
                let port = match map.get("aegis_port") {
                    None | Some(Value::Null) => 9090,
                    Some(v) => match v.as_u64().filter(|p| (1..=65535).contains(p)) {
                        Some(p) => p as u16,
                        None => {
                            r.problems
                                .push("aegis_port must be a port number (1 to 65535)".into());
                            0
                        }
                    },
                };
                let collection = r
                    .name("collection", false)
                    .unwrap_or_else(|| "hardware_metrics".into());
                let mut time_range = r.time_range();
                if time_range.start.is_none() && time_range.end.is_none() {
                    let start = chrono::Utc::now() - chrono::Duration::days(30);
                    time_range.start = Some(start.to_rfc3339());
                }
                Source::AegisBridge {
                    controller_ip: ip.unwrap_or_default(),
                    port,
                    collection,
                    time_range,
                    auth_token: r.text("auth_token", false),
                }
            }
            "influxdb" => Source::InfluxDb {
                url: r.url("url", true).unwrap_or_default(),
                database: r.name("database", true).unwrap_or_default(),
                measurement: r.name("measurement", true).unwrap_or_default(),
                time_range: r.time_range(),
                token: r.text("token", false),
            },
            "postgresql" | "tidb" => {
                let query = r.text("query", true).unwrap_or_default();
                let connection = r.text("connection_string", false);
                let api = r.url("api_url", false);
                match (connection, api) {
                    (_, Some(api_url)) => Source::RestSql { api_url, query },
                    (Some(cs), None) if source_type == "postgresql" => {
                        if !(cs.starts_with("postgres://") || cs.starts_with("postgresql://")) {
                            r.problems
                                .push("connection_string must be a postgresql:// URL".into());
                        }
                        Source::Postgres {
                            connection_string: cs,
                            query,
                        }
                    }
                    (Some(_), None) => {
                        r.problems.push(
                            "a TiDB source is read through its api_url (this server has no MySQL client)"
                                .into(),
                        );
                        Source::RestSql {
                            api_url: String::new(),
                            query,
                        }
                    }
                    (None, None) => {
                        r.problems
                            .push("connection_string or api_url is required".into());
                        Source::RestSql {
                            api_url: String::new(),
                            query,
                        }
                    }
                }
            }
            "sqlite" => Source::Sqlite {
                path: r.text("connection_string", true).unwrap_or_default(),
                query: r.text("query", true).unwrap_or_default(),
            },
            "mongodb" => {
                let filter = match map.get("filter") {
                    None | Some(Value::Null) => Value::Object(Map::new()),
                    Some(v @ Value::Object(_)) => v.clone(),
                    Some(_) => {
                        r.problems.push("filter must be an object".into());
                        Value::Null
                    }
                };
                Source::MongoDb {
                    api_url: r.url("api_url", true).unwrap_or_default(),
                    api_key: r.text("api_key", true).unwrap_or_default(),
                    database: r.name("database", true).unwrap_or_default(),
                    collection: r.name("mongodb_collection", true).unwrap_or_default(),
                    filter,
                    data_source: r
                        .name("data_source", false)
                        .unwrap_or_else(|| "mongodb-atlas".into()),
                }
            }
            "spacetimedb" => Source::SpacetimeDb {
                api_url: r.url("api_url", true).unwrap_or_default(),
                database: r.name("database", true).unwrap_or_default(),
                query: r.text("query", true).unwrap_or_default(),
                auth_token: r.text("auth_token", false),
            },
            other => {
                return Err(config(format!(
                    "Unsupported source_type {other:?}: one of {}",
                    SOURCE_TYPES.join(", ")
                )));
            }
        };
        if r.problems.is_empty() {
            Ok(source)
        } else {
            Err(ImportError::Config(r.problems))
        }
    }
}

/// Imports the source's rows within the deadline.
pub async fn import(source: &Source, s: &Settings) -> Result<Table, ImportError> {
    let table = Table::new(s.max_bytes);
    let work = async {
        match source {
            Source::Postgres {
                connection_string,
                query,
            } => sql::postgres(connection_string, query, table).await,
            Source::Sqlite { path, query } => sql::sqlite(path, query, s, table).await,
            other => http::fetch(other, s, table).await,
        }
    };
    let table = tokio::time::timeout(s.timeout, work)
        .await
        .map_err(|_| ImportError::Timeout(s.timeout))??;
    if table.rows.is_empty() {
        return Err(ImportError::Empty);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(t: &str, v: Value) -> Result<Source, ImportError> {
        Source::parse(t, v.as_object().unwrap())
    }

    #[test]
    fn configurations_are_checked() {
        let e = parse("oracle", json!({})).unwrap_err();
        assert!(e.to_string().contains("Unsupported source_type"));
        let Err(ImportError::Config(p)) =
            parse("influxdb", json!({"url": "ftp://x", "measurement": "a b"}))
        else {
            panic!()
        };
        assert_eq!(p.len(), 3, "{p:?}");
        let Err(ImportError::Config(p)) = parse(
            "tidb",
            json!({"connection_string": "mysql://x", "query": "q"}),
        ) else {
            panic!()
        };
        assert!(p[0].contains("api_url"));
        assert!(matches!(
            parse(
                "postgresql",
                json!({"api_url": "http://h/q", "query": "select 1"})
            ),
            Ok(Source::RestSql { .. })
        ));
        let Ok(Source::AegisBridge {
            port,
            collection,
            time_range,
            ..
        }) = parse("aegis_bridge", json!({"controller_ip": "10.0.0.2"}))
        else {
            panic!()
        };
        assert_eq!((port, collection.as_str()), (9090, "hardware_metrics"));
        assert!(time_range.start.is_some(), "the last 30 days by default");
        assert!(
            parse(
                "aegis_bridge",
                json!({"controller_ip": "nope", "aegis_port": 70000})
            )
            .is_err()
        );
        assert!(
            parse(
                "mongodb",
                json!({"api_url": "http://m", "api_key": "k", "database": "d",
            "mongodb_collection": "c", "filter": []})
            )
            .is_err()
        );
        assert!(parse("sqlite", json!({"connection_string": "/x.db"})).is_err());
    }
}
