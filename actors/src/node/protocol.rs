//! The AIWM node protocol (seeds/aiwm-api.md, "WebSocket Integration", and
//! DIALECTS.md): the envelope and the payloads Warden reads, shared by the
//! server's gateway and the `warden node` daemon.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// Every frame: `{type, messageId, timestamp, data?, resource?, metadata?}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "messageId", default)]
    pub message_id: String,
    #[serde(default)]
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Top-level fields some messages carry (`connection.ack`'s `status`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

pub fn iso_now() -> String {
    warden_storage::iso_millis(warden_storage::now_millis())
}

impl Envelope {
    /// A new message with a fresh `messageId` and the current time.
    pub fn new(kind: &str, data: Value) -> Envelope {
        Envelope {
            kind: kind.to_owned(),
            message_id: uuid::Uuid::new_v4().to_string(),
            timestamp: iso_now(),
            data: Some(data),
            ..Default::default()
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an envelope always serialises")
    }

    /// The payload as a typed value.
    pub fn payload<T: for<'de> Deserialize<'de> + Default>(&self) -> Result<T, String> {
        match &self.data {
            None | Some(Value::Null) => Ok(T::default()),
            Some(v) => T::deserialize(v).map_err(|e| format!("{}: invalid data: {e}", self.kind)),
        }
    }
}

/// A `telemetry.heartbeat` frame read straight into its payload: `None`
/// when the text is not a heartbeat (or not an envelope at all; the full
/// parse then says why). Heartbeats are most of a fleet's traffic, and the
/// general envelope parse builds a JSON tree (twice, for the flattened
/// extra fields) that a heartbeat never needs.
pub fn heartbeat_frame(text: &str) -> Option<Result<Heartbeat, String>> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    #[derive(Deserialize)]
    struct Frame {
        #[serde(default)]
        data: Option<Heartbeat>,
    }
    let head: Head<'_> = serde_json::from_str(text).ok()?;
    if head.kind != kinds::HEARTBEAT {
        return None;
    }
    Some(
        serde_json::from_str::<Frame>(text)
            .map(|f| f.data.unwrap_or_default())
            .map_err(|e| format!("{}: invalid data: {e}", kinds::HEARTBEAT)),
    )
}

/// Message types, as constants so the two ends cannot drift.
pub mod kinds {
    pub const CONNECTION_ACK: &str = "connection.ack";
    pub const REGISTER: &str = "node.register";
    pub const REGISTER_ACK: &str = "register.ack";
    pub const HEARTBEAT: &str = "telemetry.heartbeat";
    pub const METRICS: &str = "telemetry.metrics";
    pub const COMMAND_ACK: &str = "command.ack";
    pub const COMMAND_RESULT: &str = "command.result";
    pub const DEPLOYMENT_STATUS: &str = "deployment.status";
    pub const DEPLOYMENT_LOGS: &str = "deployment.logs";
    pub const ERROR: &str = "error";
    pub const HEALTH_CHECK: &str = "system.healthCheck";
}

fn de_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Option::<f64>::deserialize(d)?;
    Ok(v.filter(|f| *f >= 0.0 && f.is_finite()).map(|f| f as u64))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GpuReport {
    pub device_id: String,
    pub model: String,
    #[serde(deserialize_with = "de_u64")]
    pub memory_total: Option<u64>,
    #[serde(deserialize_with = "de_u64")]
    pub memory_free: Option<u64>,
    #[serde(deserialize_with = "de_u64")]
    pub memory_used: Option<u64>,
    pub utilization: Option<f64>,
    pub temperature: Option<f64>,
}

/// `node.register` data. `os` and `containerRuntime` may be strings or objects.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Registration {
    pub node_id: Option<String>,
    pub name: Option<String>,
    pub hostname: Option<String>,
    pub ip_address: Option<String>,
    pub public_ip_address: Option<String>,
    pub os: Option<Value>,
    #[serde(deserialize_with = "de_u64")]
    pub cpu_cores: Option<u64>,
    pub cpu_model: Option<String>,
    #[serde(deserialize_with = "de_u64")]
    pub ram_total: Option<u64>,
    #[serde(deserialize_with = "de_u64")]
    pub ram_free: Option<u64>,
    #[serde(deserialize_with = "de_u64")]
    pub disk_total: Option<u64>,
    pub gpu_devices: Vec<GpuReport>,
    pub daemon_version: Option<String>,
    #[serde(deserialize_with = "de_u64")]
    pub uptime_seconds: Option<u64>,
    pub container_runtime: Option<Value>,
    pub node_status: Option<String>,
}

/// `telemetry.heartbeat` data. `status` is the daemon's health;
/// `ramUsage` a percent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Heartbeat {
    pub status: Option<String>,
    #[serde(deserialize_with = "de_u64")]
    pub uptime_seconds: Option<u64>,
    pub cpu_usage: Option<f64>,
    pub ram_usage: Option<f64>,
    #[serde(deserialize_with = "de_u64")]
    pub active_deployments: Option<u64>,
    pub gpu_status: Vec<GpuReport>,
}

/// `command.ack` and `command.result` data.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CommandReply {
    pub original_message_id: String,
    pub status: String,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub progress: Option<f64>,
}

/// What the server writes to a node's connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// Boxed: each connection's queue allocates its slots up front, and a
    /// slot is as large as the largest variant.
    Event(Box<Envelope>),
    /// Close the transport (never a Socket.IO disconnect: AIWM's daemon
    /// would then give up for good).
    Close(String),
}

/// A node's live connection, as its actor holds it.
#[derive(Debug, Clone)]
pub struct Connection {
    pub id: u64,
    pub tx: mpsc::Sender<Outbound>,
}

impl Connection {
    /// Queues a frame; false when the connection is gone or stalled.
    pub fn send(&self, out: Outbound) -> bool {
        self.tx.try_send(out).is_ok()
    }
}

#[cfg(test)]
mod frame_tests {
    use super::*;

    #[test]
    fn heartbeats_are_read_straight_into_their_payload() {
        let hb = heartbeat_frame(
            r#"{"type":"telemetry.heartbeat","messageId":"m1","data":{"status":"healthy","cpuUsage":12.5,"uptimeSeconds":30}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(hb.status.as_deref(), Some("healthy"));
        assert_eq!(hb.cpu_usage, Some(12.5));
        assert_eq!(hb.uptime_seconds, Some(30));
        // An escaped type is still a heartbeat; no data is an empty beat.
        let empty = heartbeat_frame(r#"{"type":"telemetry\u002eheartbeat"}"#);
        assert_eq!(empty, Some(Ok(Heartbeat::default())));
        assert_eq!(
            heartbeat_frame(r#"{"type":"telemetry.heartbeat","data":null}"#),
            Some(Ok(Heartbeat::default()))
        );
        // Other frames and non-envelopes go to the full parse.
        assert_eq!(
            heartbeat_frame(r#"{"type":"node.register","data":{}}"#),
            None
        );
        assert_eq!(heartbeat_frame("not json"), None);
        // A heartbeat with bad data is refused with the general wording.
        let bad = heartbeat_frame(r#"{"type":"telemetry.heartbeat","data":{"cpuUsage":"high"}}"#)
            .unwrap()
            .unwrap_err();
        assert!(
            bad.starts_with("telemetry.heartbeat: invalid data:"),
            "{bad}"
        );
    }
}
