//! Forge's `POST /api/v1/datasets/connect` against real sources: a SQLite
//! file, a PostgreSQL server (started by `scripts/postgres`), and local
//! servers speaking the HTTP databases' own request formats (Aegis-DB,
//! InfluxDB v3, MongoDB's Data API, SpacetimeDB, a REST SQL endpoint).
//! Bad configurations are 400s, unreachable sources 502s, slow ones 504s,
//! and a failed import leaves no dataset behind.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::TestServer;
use serde_json::{Value, json};

const ROWS: usize = 300;

fn time(i: usize) -> String {
    format!("2026-01-01T{:02}:{:02}:00Z", i / 60, i % 60)
}

fn temp(i: usize) -> f64 {
    20.0 + (i % 10) as f64 * 0.5
}

/// What the fake sources were asked, by route.
type Seen = Arc<Mutex<Vec<(String, Value, HeaderMap)>>>;

async fn aegis(State(seen): State<Seen>, headers: HeaderMap, Json(b): Json<Value>) -> Json<Value> {
    seen.lock()
        .unwrap()
        .push(("aegis".into(), b.clone(), headers));
    let skip = b["skip"].as_u64().unwrap_or(0) as usize;
    let docs: Vec<Value> = (skip..ROWS)
        .take(b["limit"].as_u64().unwrap_or(10) as usize)
        .map(|i| {
            json!({"id": format!("d{i}"), "collection": "hardware_metrics",
            "data": {"timestamp": time(i), "supply_temp": temp(i), "fan_speed": i % 7}})
        })
        .collect();
    Json(json!({"documents": docs, "total_scanned": ROWS, "execution_time_ms": 1}))
}

async fn influx(State(seen): State<Seen>, headers: HeaderMap, Json(b): Json<Value>) -> Json<Value> {
    seen.lock().unwrap().push(("influx".into(), b, headers));
    Json(json!(
        (0..ROWS)
            .map(|i| json!({"time": time(i), "supply_temp": temp(i), "host": "ahu-1"}))
            .collect::<Vec<_>>()
    ))
}

async fn mongo(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(b): Json<Value>,
) -> Result<Json<Value>, StatusCode> {
    seen.lock()
        .unwrap()
        .push(("mongo".into(), b, headers.clone()));
    if headers.get("api-key").and_then(|v| v.to_str().ok()) != Some("mongo-key") {
        return Err(StatusCode::UNAUTHORIZED);
    }
    Ok(Json(json!({"documents": (0..ROWS).map(|i| json!({
        "_id": {"$oid": format!("{i:024x}")},
        "timestamp": {"$date": time(i)},
        "supply_temp": {"$numberDouble": temp(i).to_string()},
    })).collect::<Vec<_>>()})))
}

async fn spacetime(State(seen): State<Seen>, headers: HeaderMap, body: String) -> Json<Value> {
    seen.lock()
        .unwrap()
        .push(("spacetime".into(), json!(body), headers));
    Json(json!([{
        "schema": {"elements": [
            {"name": {"some": "ts"}, "algebraic_type": {"String": []}},
            {"name": {"some": "supply_temp"}, "algebraic_type": {"F64": []}},
        ]},
        "rows": (0..ROWS).map(|i| json!([time(i), temp(i)])).collect::<Vec<_>>(),
        "total_duration_micros": 10,
    }]))
}

async fn rest_sql(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(b): Json<Value>,
) -> Json<Value> {
    seen.lock().unwrap().push(("sql".into(), b, headers));
    Json(json!({"columns": ["timestamp", "supply_temp"],
        "rows": (0..ROWS).map(|i| json!([time(i), temp(i)])).collect::<Vec<_>>()}))
}

async fn slow() -> Json<Value> {
    tokio::time::sleep(Duration::from_secs(30)).await;
    Json(json!([]))
}

async fn sources() -> (String, u16, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/api/v1/documents/collections/hardware_metrics/query",
            post(aegis),
        )
        .route("/api/v3/query_sql", post(influx))
        .route("/action/find", post(mongo))
        .route("/v1/database/sensors/sql", post(spacetime))
        .route("/sql", post(rest_sql))
        .route("/slow", post(slow))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}"), port, seen)
}

/// The URL of the PostgreSQL server the test script started (started
/// here when the tests run without it).
fn postgres_url() -> String {
    if let Ok(url) = std::env::var("WARDEN_TEST_POSTGRES") {
        return url;
    }
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres"))
        .output()
        .expect("scripts/postgres runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn connect(s: &TestServer, t: &str, body: Value) -> common::Reply {
    s.post("/api/v1/datasets/connect", t, body).await
}

fn assert_imported(r: &common::Reply, source: &str, columns: &[&str]) {
    assert_eq!(r.status, 201, "{source}: {}", r.body);
    assert_eq!(r.body["source"], source);
    assert_eq!(r.body["row_count"], ROWS, "{source}: {}", r.body);
    let cols: Vec<&str> = r.body["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cols, columns, "{source}");
    let mean = r.body["column_stats"]["supply_temp"]["mean"]
        .as_f64()
        .unwrap();
    assert!((mean - 22.25).abs() < 1e-9, "{source}: mean {mean}");
    assert!(
        r.body["time_range"]["start"]
            .as_str()
            .unwrap()
            .starts_with("2026-01-01T00:00:00")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_sources_import_and_refuse_what_they_should() {
    let imports = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let dirs = vec![imports.path().to_owned()];
    let s = TestServer::start_with(move |c| {
        c.import_dirs = dirs;
        c.import_timeout = Duration::from_secs(2);
    })
    .await;
    let (t, _) = s.user("importer", &["operator"], None).await;

    // SQLite: a file under the import directory, read-only.
    let db = imports.path().join("plant.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE readings (timestamp TEXT, supply_temp REAL, fan_speed INTEGER, note BLOB)")
            .unwrap();
        for i in 0..ROWS {
            c.execute(
                "INSERT INTO readings VALUES (?1, ?2, ?3, x'00')",
                rusqlite::params![time(i), temp(i), (i % 7) as i64],
            )
            .unwrap();
        }
    }
    std::fs::copy(&db, elsewhere.path().join("plant.db")).unwrap();
    let sqlite = |path: &std::path::Path, query: &str| {
        json!({"source_type": "sqlite", "connection_string": path.display().to_string(),
               "query": query, "name": "plant", "equipment_type": "pump"})
    };
    let ok = connect(
        &s,
        &t,
        sqlite(
            &db,
            "SELECT timestamp, supply_temp, fan_speed FROM readings ORDER BY timestamp",
        ),
    )
    .await;
    assert_imported(&ok, "sqlite", &["timestamp", "supply_temp", "fan_speed"]);
    assert_eq!(ok.body["equipment_type"], "pump");
    let id = ok.body["id"].as_str().unwrap();
    let preview = s
        .get(&format!("/api/v1/datasets/{id}/preview?page_size=2"), &t)
        .await;
    assert_eq!(preview.status, 200, "{}", preview.body);
    assert!(
        preview.body.to_string().contains("20.5"),
        "{}",
        preview.body
    );

    for (body, says) in [
        (
            sqlite(&elsewhere.path().join("plant.db"), "SELECT 1"),
            "import_dirs",
        ),
        (sqlite(&db, "DELETE FROM readings"), "only read"),
        (sqlite(&db, "SELECT nothing FROM nowhere"), "query failed"),
        (sqlite(&db, "SELECT * FROM readings WHERE 1 = 0"), "no rows"),
        (sqlite(&db, "SELECT note FROM readings"), "binary"),
        (
            sqlite(&imports.path().join("missing.db"), "SELECT 1"),
            "missing.db",
        ),
    ] {
        let r = connect(&s, &t, body).await;
        assert_eq!(r.status, 400, "{says}: {}", r.body);
        assert!(r.body.to_string().contains(says), "{says}: {}", r.body);
    }
    // A long query is interrupted at the deadline.
    let slow = connect(
        &s,
        &t,
        sqlite(
            &db,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
        ),
    )
    .await;
    assert_eq!(slow.status, 504, "{}", slow.body);
    assert_eq!(slow.body["code"], "GATEWAY_TIMEOUT");

    // PostgreSQL: a real server, a password, a read-only session.
    let url = postgres_url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let table = format!("readings_{}", std::process::id());
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (timestamp timestamptz, supply_temp double precision, fan_speed int)"
        ))
        .await
        .unwrap();
    for i in 0..ROWS {
        client
            .execute(
                &format!("INSERT INTO {table} VALUES ($1::text::timestamptz, $2, $3)"),
                &[&time(i), &temp(i), &((i % 7) as i32)],
            )
            .await
            .unwrap();
    }
    let pg = |cs: &str, query: &str| {
        json!({"source_type": "postgresql", "connection_string": cs, "query": query,
               "name": "boiler", "equipment_type": "boiler"})
    };
    let ok = connect(
        &s,
        &t,
        pg(
            &url,
            &format!("SELECT timestamp, supply_temp, fan_speed FROM {table} ORDER BY timestamp"),
        ),
    )
    .await;
    assert_imported(
        &ok,
        "postgresql",
        &["timestamp", "supply_temp", "fan_speed"],
    );
    let write = connect(&s, &t, pg(&url, &format!("DELETE FROM {table}"))).await;
    assert_eq!(write.status, 400, "{}", write.body);
    assert!(
        write.body.to_string().contains("read-only"),
        "{}",
        write.body
    );
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, ROWS as i64, "the import session cannot write");
    let wrong_password = url.replace("warden-import-test", "wrong");
    let r = connect(&s, &t, pg(&wrong_password, "SELECT 1")).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.body["code"], "BAD_GATEWAY");
    let r = connect(
        &s,
        &t,
        pg("postgresql://warden@127.0.0.1:1/postgres", "SELECT 1"),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.body);
    let r = connect(
        &s,
        &t,
        pg("postgresql://warden@127.0.0.1:notaport/x", "SELECT 1"),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = connect(&s, &t, pg(&url, "SELECT pg_sleep(10)")).await;
    assert_eq!(r.status, 504, "{}", r.body);
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();

    let listed = s.get("/api/v1/datasets", &t).await.body;
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "failed imports leave nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sources_are_asked_in_their_own_formats() {
    let (base, port, seen) = sources().await;
    let s = TestServer::start_with(|c| c.import_timeout = Duration::from_secs(2)).await;
    let (t, _) = s.user("http-importer", &["operator"], None).await;
    let (viewer, _) = s.user("import-viewer", &["viewer"], None).await;
    let named = |mut v: Value| {
        v["name"] = json!("ahu");
        v["equipment_type"] = json!("air_handler");
        v
    };

    let r = connect(
        &s,
        &t,
        named(
            json!({"controller_ip": "127.0.0.1", "aegis_port": port, "auth_token": "edge-token",
            "time_range": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-31T23:59:59Z"}}),
        ),
    )
    .await;
    assert_imported(
        &r,
        "aegis_bridge",
        &["timestamp", "fan_speed", "supply_temp"],
    );

    let r = connect(
        &s,
        &t,
        named(
            json!({"source_type": "influxdb", "url": base, "database": "building_sensors",
            "measurement": "ahu_readings", "token": "influx-token",
            "time_range": {"start": "2026-01-01T00:00:00Z"}}),
        ),
    )
    .await;
    assert_imported(&r, "influxdb", &["time", "host", "supply_temp"]);

    let mongo = |key: &str| {
        named(
            json!({"source_type": "mongodb", "api_url": base, "api_key": key,
            "database": "building_data", "mongodb_collection": "sensor_readings",
            "filter": {"location": "Warren"}}),
        )
    };
    let r = connect(&s, &t, mongo("mongo-key")).await;
    assert_imported(&r, "mongodb", &["timestamp", "_id", "supply_temp"]);
    let r = connect(&s, &t, mongo("wrong-key")).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        r.body["error"].as_str().unwrap().contains("401"),
        "{}",
        r.body
    );

    let r = connect(
        &s,
        &t,
        named(
            json!({"source_type": "spacetimedb", "api_url": base, "database": "sensors",
            "query": "SELECT * FROM temperature_readings", "auth_token": "stdb-token"}),
        ),
    )
    .await;
    assert_imported(&r, "spacetimedb", &["ts", "supply_temp"]);

    for kind in ["postgresql", "tidb"] {
        let r = connect(
            &s,
            &t,
            named(
                json!({"source_type": kind, "api_url": format!("{base}/sql"),
                "query": "SELECT * FROM equipment_telemetry"}),
            ),
        )
        .await;
        assert_imported(&r, kind, &["timestamp", "supply_temp"]);
    }

    // Each was asked as its own protocol says.
    let seen = seen.lock().unwrap().clone();
    let of = |name: &str| seen.iter().find(|(n, _, _)| n == name).unwrap().clone();
    let (_, b, h) = of("aegis");
    assert_eq!(b["filter"]["timestamp"]["$gte"], "2026-01-01T00:00:00Z");
    assert_eq!(b["filter"]["timestamp"]["$lte"], "2026-01-31T23:59:59Z");
    assert_eq!(b["sort"]["field"], "timestamp");
    assert_eq!(h["authorization"], "Bearer edge-token");
    let (_, b, h) = of("influx");
    assert_eq!(b["db"], "building_sensors");
    assert_eq!(b["format"], "json");
    assert_eq!(
        b["q"],
        "SELECT * FROM \"ahu_readings\" WHERE time >= '2026-01-01T00:00:00Z' ORDER BY time"
    );
    assert_eq!(h["authorization"], "Bearer influx-token");
    let (_, b, _) = of("mongo");
    assert_eq!(
        (
            b["database"].as_str(),
            b["collection"].as_str(),
            &b["filter"]
        ),
        (
            Some("building_data"),
            Some("sensor_readings"),
            &json!({"location": "Warren"})
        )
    );
    let (_, b, h) = of("spacetime");
    assert_eq!(b, "SELECT * FROM temperature_readings");
    assert_eq!(h["authorization"], "Bearer stdb-token");
    let (_, b, _) = of("sql");
    assert_eq!(b["query"], "SELECT * FROM equipment_telemetry");

    // Timeouts, unreachable sources, bad configurations.
    let r = connect(
        &s,
        &t,
        named(
            json!({"source_type": "postgresql", "api_url": format!("{base}/slow"), "query": "q"}),
        ),
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.body);
    let r = connect(
        &s,
        &t,
        named(json!({"source_type": "influxdb", "url": "http://127.0.0.1:1", "database": "d", "measurement": "m"})),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.body);
    for (body, says) in [
        (json!({"source_type": "oracle"}), "Unsupported source_type"),
        (json!({"source_type": "influxdb", "database": "d"}), "url"),
        (
            json!({"source_type": "tidb", "connection_string": "mysql://h/db", "query": "q"}),
            "api_url",
        ),
        (json!({"controller_ip": "not-an-ip"}), "controller_ip"),
        (
            json!({"source_type": "mongodb", "api_url": base, "api_key": "k", "database": "d",
                "mongodb_collection": "c", "filter": "x"}),
            "filter",
        ),
    ] {
        let r = connect(&s, &t, named(body.clone())).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.body.to_string().contains(says), "{body}: {}", r.body);
    }
    // The dataset's own fields are checked before any source is asked.
    let r = connect(
        &s,
        &t,
        json!({"source_type": "influxdb", "url": "http://127.0.0.1:1", "database": "d",
               "measurement": "m", "name": "x", "equipment_type": "spaceship"}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.to_string().contains("equipment_type"), "{}", r.body);
    assert_eq!(connect(&s, &viewer, json!({})).await.status, 403);
    assert_eq!(connect(&s, "", json!({})).await.status, 401);
    let listed = s.get("/api/v1/datasets", &t).await.body;
    assert_eq!(
        listed.as_array().unwrap().len(),
        6,
        "only the imports that worked"
    );
}
