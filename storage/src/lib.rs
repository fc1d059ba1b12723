//! Warden's embedded store: sled underneath, typed collections on top.
//!
//! Storage knows bytes, keys, indexes and versions; the entity kinds own
//! their record types (identity's users, the node actor's nodes, ...) and
//! declare each type's stored layout ([`Versioned`]).
//!
//! Invariants:
//! - The store runs on an [`Engine`] (sled today); no crate outside this one
//!   names the engine.
//! - Every write goes through one committer ([`Store::commit`]), which
//!   checks constraints, applies each request atomically and flushes once
//!   per group of requests before any caller is answered. A caller that got
//!   `Ok` has its write on disk (process-crash durable; with
//!   [`Durability::Fsync`] also power-loss durable), and no reader sees a
//!   write before it is durable. A failed flush poisons the store.
//! - A record and its index and unique entries change in the same batch.
//! - Key layouts live in [`keys`], with the schema version; store-level
//!   migrations in `migrations.rs`.

mod blobs;
pub mod engine;
mod error;
pub mod keys;
mod migrations;
mod record;
pub mod series;
mod sled_engine;
mod store;
mod versioned;

pub use blobs::{BlobRef, BlobStore, BlobWriter};
pub use engine::{Changes, CommitStats, Engine};
pub use error::StorageError;
pub use keys::time_sort_key;
pub use record::{Record, Write};
pub use store::{
    DEFAULT_CACHE_BYTES, Durability, ListQuery, Listed, PageQuery, Paged, Scope, Store,
    StoreConfig, past,
};
pub use versioned::{Initial, Versioned};

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
/// A random (v4) UUID from the thread's generator: `Uuid::new_v4` asks the
/// kernel for every id, a system call each time (correlation ids, ids of
/// points that came without one).
pub fn new_uuid() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

pub fn new_object_id() -> String {
    let secs = (now_millis() / 1000) as u32;
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    rand::Rng::fill(&mut rand::rng(), &mut bytes[4..]);
    hex::encode(bytes)
}
