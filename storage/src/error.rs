use thiserror::Error;

/// What can go wrong below the domain: a broken store, or a constraint.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding: {0}")]
    Encode(String),
    #[error("decoding {collection}/{id}: {reason}")]
    Decode {
        collection: &'static str,
        id: String,
        reason: String,
    },
    /// A unique constraint would be broken: `field` already holds `value`.
    #[error("{field} '{value}' already exists")]
    Conflict { field: String, value: String },
    /// An optimistic update lost a race with another writer.
    #[error("{collection}/{id} was changed concurrently")]
    VersionMismatch {
        collection: &'static str,
        id: String,
    },
    #[error("the store is closed")]
    Closed,
    /// A flush failed: nothing more is acknowledged until a restart.
    #[error("the store is poisoned by a failed flush: {0}")]
    Poisoned(String),
    /// The store cannot answer now (a read waited too long for a flush, or
    /// the queue of unacknowledged writes is full); safe to retry.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error(
        "the data directory's schema version {found} is newer than this build understands \
         ({supported}): run the newer Warden that wrote it, or restore a backup"
    )]
    SchemaTooNew { found: u32, supported: u32 },
}
