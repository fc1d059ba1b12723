//! Warden's embedded store: sled underneath, typed collections on top.
//!
//! Invariants:
//! - Every write goes through one committer thread ([`Store::commit`]), which
//!   checks constraints, applies each request as one atomic sled batch and
//!   flushes once per group of requests before any caller is answered. A
//!   caller that got `Ok` has its write on disk (process-crash durable; with
//!   [`Durability::Fsync`] also power-loss durable).
//! - A record and its index and unique entries change in the same batch.
//! - Key layouts live in [`keys`], with the schema version.

mod blobs;
mod committer;
mod error;
pub mod keys;
pub mod model;
mod record;
pub mod series;
mod store;

pub use blobs::{BlobRef, BlobStore};
pub use error::StorageError;
pub use record::{Record, Write};
pub use store::{Durability, ListQuery, Listed, Migration, Scope, Store, StoreConfig};

/// Milliseconds since the Unix epoch: the one time representation stored.
pub type Millis = i64;

/// Current wall-clock time in milliseconds.
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// A time as ISO 8601 with milliseconds, UTC (`2025-11-16T10:30:00.000Z`),
/// the one format every view uses.
pub fn iso_millis(millis: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A new time-ordered 24-hex-digit id (the shape of AIWM's ObjectId):
/// 4 bytes of seconds since the epoch, then 8 random bytes.
pub fn new_object_id() -> String {
    let secs = (now_millis() / 1000) as u32;
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    rand::Rng::fill(&mut rand::rng(), &mut bytes[4..]);
    hex::encode(bytes)
}
