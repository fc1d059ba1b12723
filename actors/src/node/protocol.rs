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
            Some(v) => T::deserialize(v).map_err(|e| invalid_data(&self.kind, e)),
        }
    }
}

/// A frame read without building a JSON tree: its type, id and time, and
/// the raw text of its data. Heartbeats and telemetry (most of a fleet's
/// traffic) are handled from this; the general envelope parse builds a
/// tree of the whole frame (twice over, for the flattened extra fields)
/// that they never need. `None` when the text is not an envelope with a
/// type: the full parse then says why.
#[derive(Debug, Deserialize)]
pub struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    #[serde(rename = "messageId", default, borrow)]
    pub message_id: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    pub timestamp: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    pub data: Option<&'a serde_json::value::RawValue>,
}

impl<'a> RawFrame<'a> {
    pub fn read(text: &'a str) -> Option<RawFrame<'a>> {
        serde_json::from_str(text).ok()
    }

    /// The data as JSON text (`null` when absent).
    pub fn data_json(&self) -> &str {
        self.data.map_or("null", |d| d.get())
    }

    /// The data as a typed payload (its default when absent or null).
    pub fn payload<T: for<'de> Deserialize<'de> + Default>(&self) -> Result<T, String> {
        serde_json::from_str::<Option<T>>(self.data_json())
            .map(Option::unwrap_or_default)
            .map_err(|e| invalid_data(&self.kind, e))
    }
}

/// How a payload that does not fit its message type is refused.
fn invalid_data(kind: &str, e: impl std::fmt::Display) -> String {
    format!("{kind}: invalid data: {e}")
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
    /// Server → node: stop (or never start) the command `originalMessageId`.
    pub const COMMAND_CANCEL: &str = "command.cancel";
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
    /// The reply's own envelope `messageId` (not part of its data).
    #[serde(skip)]
    pub message_id: String,
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
    fn frames_are_read_without_a_tree_and_payloads_typed() {
        let f = RawFrame::read(
            r#"{"type":"telemetry.heartbeat","messageId":"m1","timestamp":"2026-12-04T10:00:00Z","data":{"status":"healthy","cpuUsage":12.5,"uptimeSeconds":30},"metadata":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(f.kind, kinds::HEARTBEAT);
        assert_eq!(f.message_id, "m1");
        assert_eq!(f.timestamp, "2026-12-04T10:00:00Z");
        let hb: Heartbeat = f.payload().unwrap();
        assert_eq!(hb.status.as_deref(), Some("healthy"));
        assert_eq!(hb.cpu_usage, Some(12.5));
        assert_eq!(hb.uptime_seconds, Some(30));
        // An escaped type is still read; no data or null is the default.
        let f = RawFrame::read(r#"{"type":"telemetry\u002eheartbeat"}"#).unwrap();
        assert_eq!(f.kind, kinds::HEARTBEAT);
        assert_eq!(f.data_json(), "null");
        assert_eq!(f.payload::<Heartbeat>(), Ok(Heartbeat::default()));
        let f = RawFrame::read(r#"{"type":"telemetry.heartbeat","data":null}"#).unwrap();
        assert_eq!(f.payload::<Heartbeat>(), Ok(Heartbeat::default()));
        // The raw data is kept as sent.
        let f =
            RawFrame::read(r#"{"type":"telemetry.metrics","data":{"cpu":{"usage":5}}}"#).unwrap();
        assert_eq!(f.data_json(), r#"{"cpu":{"usage":5}}"#);
        // Not envelopes: left to the full parse.
        assert!(RawFrame::read("not json").is_none());
        assert!(RawFrame::read(r#"{"data":{}}"#).is_none());
        // Bad data is refused with the general wording.
        let f =
            RawFrame::read(r#"{"type":"telemetry.heartbeat","data":{"cpuUsage":"high"}}"#).unwrap();
        let bad = f.payload::<Heartbeat>().unwrap_err();
        assert!(
            bad.starts_with("telemetry.heartbeat: invalid data:"),
            "{bad}"
        );
    }
}
