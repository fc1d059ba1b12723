//! Typed records and the writes the committer understands.

use serde::Serialize;

use crate::{StorageError, Versioned, keys};

/// A value stored in a collection. Values are bincode: no
/// `skip_serializing_if`, `flatten` or untagged enums in record types.
/// Its [`Versioned`] layout is stamped on every body written.
pub trait Record: Versioned + Serialize + Clone + Send + Sync + 'static {
    /// Collection name; part of every key of this type (see [`keys`]).
    const COLLECTION: &'static str;

    fn id(&self) -> &str;

    /// Secondary index entries `(index, value)`, kept in step with the record.
    fn indexes(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Unique constraints `(constraint, value)`; a second record with the
    /// same pair is refused with [`StorageError::Conflict`].
    fn uniques(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Soft-deleted records stay stored but are hidden from lists and
    /// release their unique values.
    fn is_deleted(&self) -> bool {
        false
    }

    /// Ordered indexes `(index, scope, sort key)` of a live record: lists
    /// page through a scope in sort-key order (then id) without loading
    /// the collection, and each scope keeps its count (see
    /// [`Store::page`](crate::Store::page)). Deleted records have none.
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        Vec::new()
    }

    /// Bump when `indexes` or `ordered` change: stores written before are
    /// re-indexed once by [`Store::ensure_indexes`](crate::Store::ensure_indexes).
    const INDEX_VERSION: u32 = 0;
}

/// What is stored under a record key (schema 2): the body, the layout it
/// was written in, the index and unique keys it owns (so the committer can
/// replace them without knowing the type), the record's write count and
/// the commit group that wrote it (readers wait until that group is durable).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Envelope {
    /// Writes of this record so far: the optimistic-concurrency version.
    pub version: u64,
    /// The commit group that wrote it (see `committer.rs`).
    pub seq: u64,
    /// The body's [`Versioned::VERSION`].
    pub layout: u32,
    #[serde(serialize_with = "as_byte_strings")]
    pub index_keys: Vec<Vec<u8>>,
    pub unique_keys: Vec<(String, String, Vec<u8>)>,
    #[serde(serialize_with = "as_byte_string")]
    pub body: Vec<u8>,
}

impl Envelope {
    /// The envelope's bytes, written into one allocation of the right size.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, StorageError> {
        let keys: usize = self.index_keys.iter().map(|k| k.len() + 2).sum::<usize>()
            + self
                .unique_keys
                .iter()
                .map(|(a, b, k)| a.len() + b.len() + k.len() + 6)
                .sum::<usize>();
        let mut out = Vec::with_capacity(self.body.len() + keys + 40);
        bincode::serde::encode_into_std_write(self, &mut out, bincode_config())
            .map_err(|e| StorageError::Encode(e.to_string()))?;
        Ok(out)
    }
}

/// Serde writes a `Vec<u8>` as a sequence, one call per byte; as a byte
/// string it is one copy. bincode encodes both the same way (a length,
/// then the bytes), so stored envelopes are byte-for-byte unchanged.
fn as_byte_string<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

fn as_byte_strings<S: serde::Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(list.len()))?;
    for bytes in list {
        seq.serialize_element(&ByteString(bytes))?;
    }
    seq.end()
}

/// A byte slice that serializes as a byte string.
struct ByteString<'a>(&'a [u8]);

impl Serialize for ByteString<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// An [`Envelope`] read in place: the same bytes, decoded without copying
/// the body or the keys (bincode writes a `Vec<u8>` exactly as it writes a
/// byte string, so either type reads the other's encoding). Every read of
/// a record goes through this; decoding the owned envelope's byte vectors
/// one element at a time was the largest single cost of a record read.
#[derive(serde::Deserialize)]
pub(crate) struct EnvelopeRef<'a> {
    pub version: u64,
    pub seq: u64,
    pub layout: u32,
    #[serde(borrow)]
    pub index_keys: Vec<&'a [u8]>,
    #[serde(borrow)]
    pub unique_keys: Vec<(&'a str, &'a str, &'a [u8])>,
    pub body: &'a [u8],
}

impl EnvelopeRef<'_> {
    /// Reads an envelope from its stored bytes.
    pub(crate) fn read<'a>(
        bytes: &'a [u8],
        collection: &'static str,
        id: &str,
    ) -> Result<EnvelopeRef<'a>, StorageError> {
        decode(bytes, collection, id)
    }
}

/// The envelope of schema 1: no layout (every body was its type's first
/// layout) and no commit group. Read only by the migration to schema 2.
#[derive(serde::Deserialize)]
pub(crate) struct EnvelopeV1 {
    pub version: u64,
    pub index_keys: Vec<Vec<u8>>,
    pub unique_keys: Vec<(String, String, Vec<u8>)>,
    pub body: Vec<u8>,
}

pub(crate) fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    bincode::serde::encode_to_vec(value, bincode_config())
        .map_err(|e| StorageError::Encode(e.to_string()))
}

/// Decodes a stored value; borrowed fields (`&[u8]`, `&str`) point into `bytes`.
pub(crate) fn decode<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    collection: &'static str,
    id: &str,
) -> Result<T, StorageError> {
    bincode::serde::borrow_decode_from_slice(bytes, bincode_config())
        .map(|(v, _)| v)
        .map_err(|e| StorageError::Decode {
            collection,
            id: id.to_owned(),
            reason: e.to_string(),
        })
}

/// One change inside an atomic commit.
pub enum Write {
    /// Insert or replace a record. `expect_version`: `Some(0)` means "must
    /// not exist yet", `Some(v)` "must still be at version v", `None` any.
    Put {
        collection: &'static str,
        id: String,
        expect_version: Option<u64>,
        index_keys: Vec<Vec<u8>>,
        unique_keys: Vec<(String, String, Vec<u8>)>,
        layout: u32,
        body: Vec<u8>,
    },
    /// Remove a record and everything it owns (hard delete).
    Remove {
        collection: &'static str,
        id: String,
    },
    /// A metadata value.
    Meta { name: String, value: Vec<u8> },
    /// A point of a time series (see [`crate::series`]); idempotent by key.
    Point { key: Vec<u8>, value: Vec<u8> },
    /// Removes points of a time series.
    RemovePoints { keys: Vec<Vec<u8>> },
}

impl Write {
    /// A put of a typed record; indexes and constraints come from the record.
    pub fn put<T: Record>(record: &T, expect_version: Option<u64>) -> Result<Write, StorageError> {
        let id = record.id();
        let mut index_keys: Vec<Vec<u8>> = record
            .indexes()
            .into_iter()
            .map(|(name, value)| keys::index(T::COLLECTION, name, &value, id))
            .collect();
        if !record.is_deleted() {
            index_keys.extend(
                record.ordered().into_iter().map(|(name, scope, sort)| {
                    keys::ordered(T::COLLECTION, name, &scope, &sort, id)
                }),
            );
        }
        let unique_keys = if record.is_deleted() {
            Vec::new()
        } else {
            record
                .uniques()
                .into_iter()
                .map(|(name, value)| {
                    let key = keys::unique(T::COLLECTION, name, &value);
                    (name.to_owned(), value, key)
                })
                .collect()
        };
        Ok(Write::Put {
            collection: T::COLLECTION,
            id: id.to_owned(),
            expect_version,
            index_keys,
            unique_keys,
            layout: T::VERSION,
            body: encode(record)?,
        })
    }

    /// Insert a record that must not exist yet.
    pub fn insert<T: Record>(record: &T) -> Result<Write, StorageError> {
        Self::put(record, Some(0))
    }

    pub fn remove<T: Record>(id: &str) -> Write {
        Write::Remove {
            collection: T::COLLECTION,
            id: id.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The borrowed reader reads what the owned envelope writes.
    #[test]
    fn envelope_ref_reads_the_owned_encoding() {
        let env = Envelope {
            version: 7,
            seq: 42,
            layout: 2,
            index_keys: vec![vec![1, 2, 3], vec![]],
            unique_keys: vec![("name".into(), "a/x".into(), vec![9, 8])],
            body: (0..=255).collect(),
        };
        let bytes = env.encode().unwrap();
        let r = EnvelopeRef::read(&bytes, "things", "1").unwrap();
        assert_eq!((r.version, r.seq, r.layout), (7, 42, 2));
        assert_eq!(r.index_keys, vec![&[1u8, 2, 3][..], &[][..]]);
        assert_eq!(r.unique_keys, vec![("name", "a/x", &[9u8, 8][..])]);
        assert_eq!(r.body, env.body.as_slice());
        assert!(EnvelopeRef::read(&bytes[..bytes.len() - 1], "things", "1").is_err());
    }

    /// Writing byte strings whole changed no stored byte: the envelope
    /// encodes exactly as the plain derived serializer of the same fields
    /// (stores written before read as they did).
    #[test]
    fn envelope_bytes_are_unchanged_by_the_byte_string_writer() {
        #[derive(serde::Serialize)]
        struct Plain {
            version: u64,
            seq: u64,
            layout: u32,
            index_keys: Vec<Vec<u8>>,
            unique_keys: Vec<(String, String, Vec<u8>)>,
            body: Vec<u8>,
        }
        let body: Vec<u8> = (0..=255).chain(0..=255).collect();
        let keys = vec![vec![0u8, 200, 255], vec![], (0..=255).collect()];
        let uniques = vec![("name".to_owned(), "a/x".to_owned(), vec![9u8, 200])];
        let env = Envelope {
            version: 300,
            seq: 1 << 40,
            layout: 2,
            index_keys: keys.clone(),
            unique_keys: uniques.clone(),
            body: body.clone(),
        };
        let plain = Plain {
            version: 300,
            seq: 1 << 40,
            layout: 2,
            index_keys: keys,
            unique_keys: uniques,
            body,
        };
        assert_eq!(env.encode().unwrap(), encode(&plain).unwrap());
    }
}
