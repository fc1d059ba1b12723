use thiserror::Error;

/// What can go wrong below the domain: a broken store, or a constraint.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("storage engine: {0}")]
    Engine(#[from] sled::Error),
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
    #[error("schema version {found} is newer than this build understands ({supported})")]
    SchemaTooNew { found: u32, supported: u32 },
}
