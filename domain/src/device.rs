//! Vareon's myntrix devices (VAREON-NEURONEST.md §2). A device is either
//! a view of a node (`connection_string` `node://<nodeId>`: every node of
//! an organisation is one, with no record needed) or a plain record whose
//! connection string names something Warden has no driver for (a serial
//! port, a LAN address): stored as given, never connected to.
//!
//! One record type holds both: a plain device, and what vareon adds to a
//! node (its `type`, `configuration`, and whether vareon's control of it
//! is attached), keyed by the node's `_id` and written only once a client
//! changes one of those. The node's own facts stay on the node.

use warden_storage::{Millis, Record};

use crate::rules::{Checks, MAX_SHORT};
use crate::{Audit, DomainError, Owned, Owner, set};

/// The scheme of the devices that are nodes.
pub const NODE_SCHEME: &str = "node://";
/// The statuses of a device as vareon shows them.
pub const DEVICE_STATUSES: [&str; 3] = ["connected", "disconnected", "maintenance"];
/// The `type` a node device has until a client names another.
pub const NODE_DEVICE_TYPE: &str = "node";

const MAX_CONNECTION: usize = 1024;
const MAX_CONFIGURATION: usize = 64 * 1024;

/// What a client may set on a device; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct DeviceInput {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub connection_string: Option<String>,
    pub status: Option<String>,
    pub last_seen: Option<Option<Millis>>,
    pub firmware_version: Option<Option<String>>,
    /// A JSON object text the dialect has checked is an object.
    pub configuration: Option<String>,
}

/// A myntrix device record: a plain device, or vareon's fields of a node.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Device {
    /// A plain device's own id; for a node, the node's `_id`.
    pub id: String,
    /// Whether this record holds vareon's fields of the node `id`.
    pub node: bool,
    /// A plain device's name (a node's name is the node's own).
    pub name: String,
    /// Vareon's `type`.
    pub kind: String,
    /// A plain device's connection string, as given.
    pub connection_string: String,
    /// A plain device's status, as given (a node's is derived).
    pub status: String,
    /// Whether vareon's control of a node is attached (`connect`).
    pub attached: bool,
    pub last_seen: Option<Millis>,
    pub firmware_version: Option<String>,
    /// JSON object text ("" when none).
    pub configuration: String,
    pub owner: Owner,
    pub audit: Audit,
}

warden_storage::first_layout!(Device);

/// What a device's connection string names: a node (by `_id` or
/// `nodeId`), or something with a scheme Warden does not drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Node(String),
    /// `serial` for `/dev/...`, `tcp` for a bare address, else the
    /// string's own scheme.
    Other(String),
}

/// Reads a connection string.
pub fn target(connection_string: &str) -> Target {
    let s = connection_string.trim();
    if let Some(node) = s.strip_prefix(NODE_SCHEME) {
        return Target::Node(node.trim_end_matches('/').to_owned());
    }
    if s.starts_with("/dev/") || s.to_ascii_uppercase().starts_with("COM") {
        return Target::Other("serial".into());
    }
    match s.split_once("://") {
        Some((scheme, _)) if !scheme.is_empty() => Target::Other(scheme.to_ascii_lowercase()),
        _ => Target::Other("tcp".into()),
    }
}

impl Device {
    /// A new plain device: disconnected until its client says otherwise.
    pub fn plain(owner: Owner, by: &str) -> Device {
        Device {
            id: uuid::Uuid::new_v4().to_string(),
            node: false,
            name: String::new(),
            kind: String::new(),
            connection_string: String::new(),
            status: "disconnected".into(),
            attached: false,
            last_seen: None,
            firmware_version: None,
            configuration: String::new(),
            owner,
            audit: Audit::new(by),
        }
    }

    /// Vareon's fields of node `node_id` before any were set: a node is
    /// attached until a client disconnects it.
    pub fn of_node(node_id: &str, owner: Owner, by: &str) -> Device {
        Device {
            id: node_id.to_owned(),
            node: true,
            kind: NODE_DEVICE_TYPE.into(),
            attached: true,
            ..Device::plain(owner, by)
        }
    }

    /// Applies a plain device's input; `create` makes name, type and
    /// connection string required. A plain device's connection string
    /// may not name a node (those are the nodes' own devices).
    pub fn apply(&mut self, input: DeviceInput, create: bool) -> Result<(), DomainError> {
        let mut c = Checks::new();
        c.text("name", &input.name, create, MAX_SHORT);
        c.not_blank("name", &input.name);
        c.text("type", &input.kind, create, MAX_SHORT);
        c.text(
            "connection_string",
            &input.connection_string,
            create,
            MAX_CONNECTION,
        );
        c.not_blank("connection_string", &input.connection_string);
        c.text("status", &input.status, false, MAX_SHORT);
        c.text(
            "firmware_version",
            &input.firmware_version.clone().flatten(),
            false,
            MAX_SHORT,
        );
        if input
            .configuration
            .as_ref()
            .is_some_and(|t| t.len() > MAX_CONFIGURATION)
        {
            c.fail(format!(
                "configuration must be at most {MAX_CONFIGURATION} bytes"
            ));
        }
        if let Some(Target::Node(_)) = input.connection_string.as_deref().map(target) {
            c.fail("connection_string: node:// devices are the organisation's nodes".into());
        }
        c.finish()?;
        set(&mut self.name, input.name);
        set(&mut self.kind, input.kind);
        set(&mut self.connection_string, input.connection_string);
        set(&mut self.status, input.status);
        set(&mut self.last_seen, input.last_seen);
        set(&mut self.firmware_version, input.firmware_version);
        set(&mut self.configuration, input.configuration);
        Ok(())
    }

    /// Applies what a client may change of a node device: its `type` and
    /// `configuration` (name, status and the daemon's facts are the
    /// node's; the caller changes the name on the node).
    pub fn apply_to_node(&mut self, input: &DeviceInput) -> Result<(), DomainError> {
        let mut c = Checks::new();
        c.text("type", &input.kind, false, MAX_SHORT);
        c.not_blank("type", &input.kind);
        if input
            .configuration
            .as_ref()
            .is_some_and(|t| t.len() > MAX_CONFIGURATION)
        {
            c.fail(format!(
                "configuration must be at most {MAX_CONFIGURATION} bytes"
            ));
        }
        c.finish()?;
        set(&mut self.kind, input.kind.clone());
        set(&mut self.configuration, input.configuration.clone());
        Ok(())
    }
}

impl Record for Device {
    const COLLECTION: &'static str = "devices";
    fn id(&self) -> &str {
        &self.id
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        crate::created_order(&self.owner.org_id, self.audit.created_at)
    }
    const INDEX_VERSION: u32 = 1;
}

impl crate::catalog::Plain for Device {
    const KIND: &'static str = "Device";
    fn audit(&self) -> &Audit {
        &self.audit
    }
    fn audit_mut(&mut self) -> &mut Audit {
        &mut self.audit
    }
}

impl Owned for Device {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// A file uploaded for a node device: held as a blob until the node's
/// daemon has fetched it (or the delivery ended), then released.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceFile {
    pub id: String,
    /// The node's `_id`.
    pub device_id: String,
    /// The file's name, made safe by the dialect.
    pub name: String,
    pub sha256: String,
    pub size: u64,
    /// The content, while the daemon may still fetch it.
    pub blob: Option<warden_storage::BlobRef>,
    pub owner: Owner,
    pub audit: Audit,
}

warden_storage::first_layout!(DeviceFile);

impl Record for DeviceFile {
    const COLLECTION: &'static str = "device_files";
    fn id(&self) -> &str {
        &self.id
    }
    /// By the blob it holds: a blob shared with a dataset stays while
    /// either needs it.
    fn indexes(&self) -> Vec<(&'static str, String)> {
        self.blob
            .iter()
            .map(|b| ("blob", b.sha256.clone()))
            .collect()
    }
    const INDEX_VERSION: u32 = 1;
}

impl DeviceFile {
    pub fn new(
        device_id: &str,
        name: String,
        blob: warden_storage::BlobRef,
        owner: Owner,
        by: &str,
    ) -> DeviceFile {
        DeviceFile {
            id: uuid::Uuid::new_v4().to_string(),
            device_id: device_id.to_owned(),
            name,
            sha256: blob.sha256.clone(),
            size: blob.size,
            blob: Some(blob),
            owner,
            audit: Audit::new(by),
        }
    }
}

/// Lets go of a device file's blob once its delivery ended: the record
/// stays (what was sent, when), the content goes unless a dataset or
/// another delivery still holds it.
pub async fn release(store: &warden_storage::Store, id: &str) -> Result<(), DomainError> {
    let mut released = None;
    store
        .update::<DeviceFile, DomainError>(id, |f| {
            released = f.blob.take();
            Ok(released.as_ref().map(|_| ()))
        })
        .await?;
    if let Some(blob) = released {
        crate::dataset::discard_blob(store, &blob)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_name_nodes_or_a_scheme() {
        assert_eq!(target("node://gpu-1"), Target::Node("gpu-1".into()));
        assert_eq!(target("/dev/ttyUSB0"), Target::Other("serial".into()));
        assert_eq!(target("192.168.1.103"), Target::Other("tcp".into()));
        assert_eq!(target("MQTT://broker:1883"), Target::Other("mqtt".into()));
    }

    #[test]
    fn plain_devices_need_their_fields_and_may_not_claim_a_node() {
        let mut d = Device::plain(Owner::default(), "u");
        let Err(DomainError::Invalid(e)) = d.apply(DeviceInput::default(), true) else {
            panic!("name, type and connection_string are required")
        };
        assert_eq!(e.len(), 3, "{e:?}");
        let claim = DeviceInput {
            name: Some("x".into()),
            kind: Some("arm".into()),
            connection_string: Some("node://n1".into()),
            ..Default::default()
        };
        assert!(d.apply(claim, true).is_err());
        let ok = DeviceInput {
            name: Some("x".into()),
            kind: Some("arm".into()),
            connection_string: Some("/dev/ttyUSB0".into()),
            ..Default::default()
        };
        d.apply(ok, true).unwrap();
        assert_eq!((d.status.as_str(), d.node), ("disconnected", false));
    }
}
