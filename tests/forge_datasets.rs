//! Forge datasets (CSV uploads streamed to a blob and profiled in one
//! pass) and the agent's analyst over them: recommendations that follow
//! the data, an answer without any LLM backend, and the facts in the
//! model's context when there is one.

mod common;

use std::time::Duration;

use common::TestServer;
use common::fake_llm::{Fake, serve};
use serde_json::{Value, json};

const BOUNDARY: &str = "warden-test-boundary-7MA4YWxkTrZu0gW";

/// A multipart/form-data body, as browsers and curl send it.
fn form(fields: &[(&str, &str)], file: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some(bytes) = file {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data.csv\"\r\nContent-Type: text/csv\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Posts a multipart form to `path`.
async fn post_form(s: &TestServer, token: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    let r = s
        .http
        .post(format!("{}{path}", s.base))
        .bearer_auth(token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn upload(s: &TestServer, token: &str, body: Vec<u8>) -> (u16, Value) {
    post_form(s, token, "/api/v1/datasets", body).await
}

/// Sensor readings with a daily cycle (`period` rows) and `spikes` anomalies.
fn sensor_csv(rows: usize, period: usize, spikes: usize) -> Vec<u8> {
    let mut s = String::from("timestamp,supply_temp,return_temp,fan_speed\n");
    for i in 0..rows {
        let phase = (i % period) as f64 / period as f64 * std::f64::consts::TAU;
        let supply = if i % (rows / spikes.max(1)).max(1) == 7 && spikes > 0 {
            400.0
        } else {
            60.0 + 8.0 * phase.sin()
        };
        s.push_str(&format!(
            "{},{supply:.2},{:.2},{}\n",
            chrono_like(i),
            72.0 + 3.0 * phase.cos(),
            40 + (i * 7) % 13
        ));
    }
    s.into_bytes()
}

/// Minutes after 2026-01-01T00:00:00Z, in RFC 3339.
fn chrono_like(minute: usize) -> String {
    let (d, rest) = (minute / 1440, minute % 1440);
    format!(
        "2026-01-{:02}T{:02}:{:02}:00Z",
        1 + d % 28,
        rest / 60,
        rest % 60
    )
}

fn blobs_in(s: &TestServer) -> usize {
    fn count(p: &std::path::Path) -> usize {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        let p = e.path();
                        if p.is_dir() { count(&p) } else { 1 }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    count(&s.data_dir.join("blobs"))
}

fn blobs_size(s: &TestServer) -> u64 {
    fn size(p: &std::path::Path) -> u64 {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        let p = e.path();
                        if p.is_dir() {
                            size(&p)
                        } else {
                            e.metadata().map_or(0, |m| m.len())
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    size(&s.data_dir.join("blobs"))
}

#[tokio::test]
async fn upload_profile_preview_recommend_and_delete() {
    let s = TestServer::start().await;
    let (t, _) = s.user("dsuser", &["operator"], None).await;
    let (stranger, _) = s.user("dsstranger", &["operator"], None).await;
    // 60,000 rows (~2.5 MB): well past the 1 MiB JSON body limit.
    let csv = sensor_csv(60_000, 1440, 20);
    assert!(csv.len() > 2 * 1024 * 1024);
    let fields = [
        ("name", "Warren AHU-1 Sensors"),
        ("equipment_type", "air_handler"),
        ("location", "Warren"),
        ("unit", "AHU-1"),
    ];
    let (status, d) = upload(&s, &t, form(&fields, Some(&csv))).await;
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ds_"));
    assert_eq!(d["row_count"], 60_000);
    assert_eq!(
        d["columns"],
        json!(["timestamp", "supply_temp", "return_temp", "fan_speed"])
    );
    assert_eq!(d["file_size_bytes"], csv.len());
    assert_eq!(d["source"], "csv_upload");
    let rt = &d["column_stats"]["return_temp"];
    assert!((rt["mean"].as_f64().unwrap() - 72.0).abs() < 0.1, "{rt}");
    assert!((rt["max"].as_f64().unwrap() - 75.0).abs() < 0.01);
    assert_eq!(d["time_range"]["start"], "2026-01-01T00:00:00.000Z");
    assert!(d["column_stats"]["timestamp"]["mean"].is_null());

    let list = s.get("/api/v1/datasets", &t).await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    assert_eq!(list.body[0]["unit"], "AHU-1");
    assert_eq!(
        s.get(&format!("/api/v1/datasets/{id}"), &t).await.body["row_count"],
        60_000
    );
    let p = s
        .get(
            &format!("/api/v1/datasets/{id}/preview?page=2&page_size=3"),
            &t,
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.body["rows"].as_array().unwrap().len(), 3);
    assert_eq!(p.body["rows"][0][0], "2026-01-01T00:03:00Z");
    assert_eq!(p.body["total_rows"], 60_000);
    assert_eq!(p.body["total_pages"], 20_000);
    assert_eq!(p.body["headers"][1], "supply_temp");
    // Sorted by a column: the spikes first, descending.
    let top = s
        .get(
            &format!(
                "/api/v1/datasets/{id}/preview?page_size=20&sort_col=supply_temp&sort_dir=desc"
            ),
            &t,
        )
        .await;
    let rows = top.body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|r| r[1] == "400.00"), "{}", top.body);
    let r = s
        .get(&format!("/api/v1/datasets/{id}/preview?sort_col=nope"), &t)
        .await;
    assert_eq!(r.status, 400);

    // Validation: clean, so locked and compressed; the bytes come back
    // the same; a locked dataset cannot be changed until unlocked.
    let before = blobs_size(&s);
    let v = s
        .post(&format!("/api/v1/datasets/{id}/validate"), &t, json!({}))
        .await;
    assert_eq!(v.status, 200, "{}", v.body);
    assert_eq!(v.body["valid"], true, "{}", v.body);
    assert_eq!(
        (v.body["locked"].clone(), v.body["rows_checked"].clone()),
        (json!(true), json!(60_000))
    );
    assert!(blobs_size(&s) * 3 < before, "the file is kept compressed");
    let bare = id.strip_prefix("ds_").unwrap();
    let download = |s: &TestServer| {
        let req = s
            .http
            .get(format!("{}/api/neosyntis/datasets/{bare}/download", s.base))
            .bearer_auth(&t);
        async move { req.send().await.unwrap().bytes().await.unwrap() }
    };
    assert_eq!(download(&s).await.as_ref(), csv.as_slice());
    let r = s
        .put(
            &format!("/api/neosyntis/datasets/{bare}"),
            &t,
            json!({"name": "renamed"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let p2 = s
        .get(
            &format!("/api/v1/datasets/{id}/preview?page=2&page_size=3"),
            &t,
        )
        .await;
    assert_eq!(
        p2.body["rows"], p.body["rows"],
        "previews read through the compression"
    );
    assert_eq!(
        s.get(&format!("/api/v1/datasets/{id}"), &t).await.body["file_size_bytes"],
        csv.len()
    );
    let u = s
        .post(&format!("/api/v1/datasets/{id}/unlock"), &t, json!({}))
        .await;
    assert_eq!(
        u.body,
        json!({"message": "Dataset unlocked", "is_validated": false, "locked": false})
    );
    assert_eq!(download(&s).await.as_ref(), csv.as_slice());
    assert_eq!(blobs_size(&s), before);

    // The daily cycle makes the LSTM autoencoder the first choice.
    let r = s.get(&format!("/api/v1/datasets/{id}/recommend"), &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let recs = r.body["recommendations"].as_array().unwrap();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0]["architecture"], "lstm_autoencoder");
    assert!(recs[0]["match_score"].as_f64() > recs[1]["match_score"].as_f64());
    // The day (1,440 minutes), read from the first 4,096 values.
    let reason = recs[0]["reasons"][1].as_str().unwrap();
    let lag: i64 = reason
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{reason}"));
    assert!((lag - 1440).abs() <= 30, "{reason}");

    for path in ["", "/preview", "/recommend"] {
        assert_eq!(
            s.get(&format!("/api/v1/datasets/{id}{path}"), &stranger)
                .await
                .status,
            404
        );
    }
    assert_eq!(s.get("/api/v1/datasets", &stranger).await.body, json!([]));
    assert_eq!(
        s.delete(&format!("/api/v1/datasets/{id}"), &stranger)
            .await
            .status,
        404
    );
    let blobs = blobs_in(&s);
    let r = s.delete(&format!("/api/v1/datasets/{id}"), &t).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        s.get(&format!("/api/v1/datasets/{id}"), &t).await.status,
        404
    );
    assert_eq!(blobs_in(&s), blobs - 1, "the file went with it");
}

#[tokio::test]
async fn bad_uploads_are_refused_and_leave_nothing_behind() {
    let s = TestServer::start().await;
    let (t, _) = s.user("dsbad", &["operator"], None).await;
    let (viewer, me) = s.user("dsviewer", &["viewer"], None).await;
    let _ = me;
    let ok = [("name", "x"), ("equipment_type", "boiler")];
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (form(&ok, Some(b"a,b\n1,2\n3\n")), "row 3 has 1 fields"),
        (form(&ok, Some(b"a,b\n1,\xff\xfe\n")), "not UTF-8"),
        (form(&ok, Some(b"")), "CSV"),
        (form(&ok, Some(b"a,b\n")), "no rows"),
        (form(&ok, Some(b"name,kind\nx,y\n")), "no numeric column"),
        (form(&ok, None), "file is required"),
        (
            form(&[("equipment_type", "boiler")], Some(b"a\n1\n")),
            "name",
        ),
        (
            form(
                &[("name", "x"), ("equipment_type", "toaster")],
                Some(b"a\n1\n"),
            ),
            "equipment_type",
        ),
    ];
    for (body, why) in cases {
        let (status, v) = upload(&s, &t, body).await;
        assert_eq!(status, 400, "{why}: {v}");
        assert!(v.to_string().contains(why), "{why}: {v}");
        assert_eq!(v["code"], "VALIDATION_ERROR", "{v}");
    }
    let r = s
        .http
        .post(format!("{}/api/v1/datasets", s.base))
        .bearer_auth(&t)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Over 100 MB: 413, and the partial file is gone.
    let mut huge = b"a,b\n".to_vec();
    huge.resize(101 * 1024 * 1024, b'1');
    let (status, v) = upload(&s, &t, form(&ok, Some(&huge))).await;
    assert_eq!(status, 413, "{v}");
    let (status, _) = upload(&s, &viewer, form(&ok, Some(b"a\n1\n"))).await;
    assert_eq!(status, 403);
    assert_eq!(blobs_in(&s), 0, "no blob and no temporary file left");
    assert_eq!(s.get("/api/v1/datasets", &t).await.body, json!([]));
}

#[tokio::test]
async fn the_agent_analyses_datasets_with_or_without_a_model() {
    let s = TestServer::start_with(|c| c.llm_probe_interval = Duration::from_millis(200)).await;
    let (admin, me) = s.user("anadmin", &["admin"], None).await;
    let org = me["orgId"].as_str().unwrap().to_owned();
    let (t, _) = s.user("anuser", &["operator"], Some(&org)).await;

    // No dataset, no backend: the analyst says what to do.
    let r = s
        .post(
            "/api/v1/agent/chat",
            &t,
            json!({"message": "What should I train?"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body["response"]
            .as_str()
            .unwrap()
            .contains("no datasets yet"),
        "{}",
        r.body
    );

    let fields = [("name", "Boiler 3"), ("equipment_type", "boiler")];
    let (status, d) = upload(&s, &t, form(&fields, Some(&sensor_csv(3000, 96, 5)))).await;
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_str().unwrap().to_owned();
    let gappy = b"t,a,b\n1,2,x\n2,,3\n3,4,5\n";
    let (_, g) = upload(
        &s,
        &t,
        form(
            &[("name", "gappy"), ("equipment_type", "pump")],
            Some(gappy),
        ),
    )
    .await;
    let v = s
        .post(
            &format!("/api/v1/datasets/{}/validate", g["id"].as_str().unwrap()),
            &t,
            json!({}),
        )
        .await;
    assert_eq!(v.body["valid"], false, "{}", v.body);
    assert_eq!(v.body["locked"], false);
    assert_eq!(
        v.body["issues"],
        json!([
            "Column 'a': 1 missing values (33.33%)",
            "Column 'b': mixed types detected (numeric: 2, string: 1)"
        ])
    );

    // Still no backend: the built-in analyst answers, and the turn is kept.
    let r = s
        .post(
            "/api/v1/agent/chat",
            &t,
            json!({"message": "Which model suits Boiler 3?"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.body["response"].as_str().unwrap();
    assert!(
        answer.contains("Boiler 3") && answer.contains("LSTM autoencoder"),
        "{answer}"
    );
    assert!(answer.contains("built-in analyst"), "{answer}");
    let h = s.get("/api/v1/agent/history", &t).await;
    assert_eq!(h.body.as_array().unwrap().len(), 4, "{}", h.body);
    let a = s
        .post(
            "/api/v1/agent/analyze",
            &t,
            json!({"dataset_id": id, "question": "Is it healthy?"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body["analysis"]["recommended_architecture"],
        "lstm_autoencoder"
    );
    assert_eq!(a.body["analysis"]["seasonality"], true);
    assert_eq!(a.body["analysis"]["anomalies_detected"], 5);
    assert_eq!(a.body["analysis"]["data_quality"], "good");
    assert_eq!(a.body["training_plan"]["dataset_id"], id.as_str());
    assert_eq!(
        a.body["training_plan"]["hyperparameters"]["sequence_length"],
        96
    );
    let confidence = a.body["confidence"].as_f64().unwrap();
    assert!(confidence > 0.0 && confidence < 1.0);
    assert!(
        a.body["response"]
            .as_str()
            .unwrap()
            .contains("LSTM autoencoder")
    );
    let r = s
        .post(
            "/api/v1/agent/analyze",
            &t,
            json!({"dataset_id": "ds_nope"}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = s.post("/api/v1/agent/analyze", &t, json!({})).await;
    assert_eq!(r.status, 400);

    // With a backend, the model answers with the dataset's facts in its context.
    let fake = Fake::new("forgellm", &["phi3:3.8b"]);
    let url = serve(fake.clone()).await;
    let b = s
        .post(
            "/backends",
            &admin,
            json!({"name": "llm", "type": "openai", "baseUrl": url}),
        )
        .await;
    let bid = b.body["id"].as_str().unwrap().to_owned();
    s.post(
        &format!("/backend-affinity/internal_chat_group/backends/{bid}"),
        &admin,
        json!({}),
    )
    .await;
    common::eventually(10, "the backend's first probe", || async {
        (s.get(&format!("/backends/{bid}"), &admin).await.body["healthy"] == true).then_some(())
    })
    .await;
    let r = s
        .post(
            "/api/v1/agent/chat",
            &t,
            json!({"message": "And now, for Boiler 3?"}),
        )
        .await;
    assert_eq!(r.body["response"], "hello from forgellm");
    let body = fake.bodies.lock().unwrap().last().unwrap().clone();
    let system = body["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("Boiler 3") && system.contains("supply_temp: min"),
        "{system}"
    );
    let a = s
        .post("/api/v1/agent/analyze", &t, json!({"dataset_id": id}))
        .await;
    assert_eq!(a.body["response"], "hello from forgellm");
    assert_eq!(
        a.body["analysis"]["recommended_architecture"],
        "lstm_autoencoder"
    );
}

async fn vareon_upload(s: &TestServer, token: &str, query: &str, body: Vec<u8>) -> (u16, Value) {
    post_form(
        s,
        token,
        &format!("/api/neosyntis/datasets/upload?{query}"),
        body,
    )
    .await
}

#[tokio::test]
async fn vareon_datasets_are_the_forge_datasets() {
    let s = TestServer::start().await;
    let (t, _) = s.user("vdsuser", &["operator"], None).await;
    let (stranger, _) = s.user("vdsstranger", &["operator"], None).await;
    let csv = sensor_csv(500, 48, 0);
    let (status, d) = vareon_upload(
        &s,
        &t,
        "name=Pump%202&format=csv&description=pump",
        form(&[], Some(&csv)),
    )
    .await;
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_str().unwrap().to_owned();
    assert_eq!(d["size_bytes"], csv.len());
    assert_eq!(d["file_path"], format!("datasets/{id}.csv"));
    assert_eq!(d["format"], "csv");
    // The same dataset through forge, with its statistics.
    let f = s.get(&format!("/api/v1/datasets/ds_{id}"), &t).await;
    assert_eq!(f.status, 200, "{}", f.body);
    assert_eq!(f.body["row_count"], 500);
    assert!(f.body["column_stats"]["supply_temp"]["mean"].is_number());

    // PUT cannot move the file: download still gives the uploaded bytes.
    let r = s
        .put(
            &format!("/api/neosyntis/datasets/{id}"),
            &t,
            json!({"name": "Pump 2b", "file_path": "/etc/passwd", "size_bytes": 1}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "Pump 2b");
    assert_eq!(r.body["file_path"], format!("datasets/{id}.csv"));
    let dl = s
        .http
        .get(format!("{}/api/neosyntis/datasets/{id}/download", s.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(dl.status(), 200);
    assert_eq!(
        dl.headers()["content-disposition"],
        format!("attachment; filename=\"{id}.csv\"").as_str()
    );
    assert_eq!(dl.bytes().await.unwrap().as_ref(), csv.as_slice());

    // Any other format is kept as a file: no statistics, nothing to recommend.
    let (status, j) = vareon_upload(
        &s,
        &t,
        "name=events&format=json",
        form(&[], Some(b"{\"a\": 1}")),
    )
    .await;
    assert_eq!(status, 201, "{j}");
    let jid = j["id"].as_str().unwrap();
    let f = s.get(&format!("/api/v1/datasets/ds_{jid}"), &t).await;
    assert_eq!(f.body["row_count"], 0);
    assert_eq!(
        s.get(&format!("/api/v1/datasets/ds_{jid}/recommend"), &t)
            .await
            .status,
        400
    );
    let list = s.get("/api/neosyntis/datasets/?limit=1", &t).await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);

    // Bad input: 422 in vareon's shape; too large: 413; others: 404.
    let (status, v) = vareon_upload(&s, &t, "format=csv", form(&[], Some(&csv))).await;
    assert_eq!(status, 422, "{v}");
    let (status, v) = vareon_upload(&s, &t, "name=x", form(&[], Some(&csv))).await;
    assert_eq!(status, 422, "{v}");
    let (status, v) = vareon_upload(&s, &t, "name=x&format=csv", form(&[], None)).await;
    assert_eq!(status, 422, "{v}");
    let (status, v) =
        vareon_upload(&s, &t, "name=x&format=csv", form(&[], Some(b"a,b\n1\n"))).await;
    assert_eq!(status, 422, "{v}");
    let mut huge = b"a\n".to_vec();
    huge.resize(101 * 1024 * 1024, b'1');
    let (status, _) = vareon_upload(&s, &t, "name=x&format=csv", form(&[], Some(&huge))).await;
    assert_eq!(status, 413);
    for path in ["", "/download"] {
        assert_eq!(
            s.get(&format!("/api/neosyntis/datasets/{id}{path}"), &stranger)
                .await
                .status,
            404
        );
    }
    assert_eq!(
        s.get("/api/neosyntis/datasets/", &stranger).await.body,
        json!([])
    );

    assert_eq!(
        s.delete(&format!("/api/neosyntis/datasets/{id}"), &t)
            .await
            .status,
        204
    );
    assert_eq!(
        s.get(&format!("/api/v1/datasets/ds_{id}"), &t).await.status,
        404
    );
    assert_eq!(
        s.get(&format!("/api/neosyntis/datasets/{id}"), &t)
            .await
            .status,
        404
    );
}
