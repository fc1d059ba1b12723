//! Training fixtures: a generated sensor CSV, its forge upload, and
//! small hyperparameters that train in well under a second.

use serde_json::{Value, json};

use super::TestServer;

const BOUNDARY: &str = "warden-training-boundary-5d1c";

/// Four sensors with a 48-row cycle, and a missing cell now and then.
pub fn sensor_csv(rows: usize) -> Vec<u8> {
    let mut s = String::from("timestamp,supply_temp,fan_speed,power_kw,humidity\n");
    let mut noise = 12345u64;
    let mut rnd = || {
        noise = noise
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((noise >> 33) as f64 / (1u64 << 31) as f64) - 0.5
    };
    for i in 0..rows {
        let load = (i as f64 * std::f64::consts::TAU / 48.0).sin();
        let humidity = if i % 97 == 5 {
            String::new()
        } else {
            format!("{:.2}", 50.0 - 5.0 * load + rnd())
        };
        s.push_str(&format!(
            "2026-01-01T00:{:02}:00Z,{:.3},{:.3},{:.3},{humidity}\n",
            i % 60,
            55.0 + 3.0 * load + 0.2 * rnd(),
            35.0 + 40.0 * load.max(0.0) + rnd(),
            0.4 + 2.0 * (load * 0.5 + 0.5).powi(3) + 0.05 * rnd(),
        ));
    }
    s.into_bytes()
}

/// `n` complete rows of the CSV's numeric columns from row 6 on (the
/// missing cells are in rows 5, 102, 199, ...).
pub fn rows_of(csv: &[u8], n: usize) -> Vec<f32> {
    std::str::from_utf8(csv)
        .unwrap()
        .lines()
        .skip(1 + 6)
        .take(n)
        .flat_map(|l| {
            l.split(',')
                .skip(1)
                .map(|v| v.parse::<f32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

pub async fn upload(s: &TestServer, token: &str, name: &str, csv: Vec<u8>) -> String {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"equipment_type\"\r\n\r\nair_handler\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.csv\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&csv);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let r = s
        .http
        .post(format!("{}/api/v1/datasets", s.base))
        .bearer_auth(token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

pub fn small(epochs: u32) -> Value {
    json!({
        "epochs": epochs, "hidden_dim": 16, "sequence_length": 24, "batch_size": 16,
        "max_windows": 256, "learning_rate": 0.005, "num_layers": 1
    })
}

/// A GET's status and raw body.
pub async fn fetch(s: &TestServer, token: &str, path: &str) -> (u16, Vec<u8>) {
    let r = s
        .http
        .get(format!("{}{path}", s.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}
