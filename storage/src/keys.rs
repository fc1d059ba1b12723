//! The persisted key layout, in one place.
//!
//! All records live in one sled tree (`warden`), so a record, its index
//! entries and its unique entries are written by one atomic batch.
//! Each key is a tag byte followed by escaped components: a component's
//! 0x00 bytes are written as 0x00 0xFF and it ends with 0x00 0x01, so
//! components never run into each other and byte order is string order.
//!
//! | key                                      | value                        |
//! |------------------------------------------|------------------------------|
//! | `r` collection id                        | bincode [`Envelope`](crate::record) |
//! | `i` collection index value id            | empty                        |
//! | `u` collection constraint value          | owning record id             |
//! | `o` collection index scope sortkey id    | empty (ordered index, live records only) |
//! | `c` collection index scope               | u64 BE: entries under that scope |
//! | `m` name                                 | metadata (schema version, commit sequence) |
//!
//! Schema history (migrations in `migrations.rs`):
//! 1. the layout above; envelopes hold version, index and unique keys, body.
//! 2. envelopes also hold the body's layout and the commit group (`seq`);
//!    `m commit_seq` holds the last commit group stamped.
//! 3. every time-series point has a time-index key (see `series.rs`).

/// The schema this build writes. Bump it with a migration in `migrations.rs`.
pub const SCHEMA_VERSION: u32 = 3;

/// Name of the sled tree that holds records, indexes and metadata.
pub const MAIN_TREE: &str = "warden";

/// Name of the sled tree that holds time series points (see `series.rs`):
/// key = escaped series name, 8-byte big-endian time (sign bit flipped),
/// escaped point id; value = the point's JSON.
pub const SERIES_TREE: &str = "series";

pub(crate) const RECORD: u8 = b'r';
pub(crate) const INDEX: u8 = b'i';
pub(crate) const UNIQUE: u8 = b'u';
pub(crate) const META: u8 = b'm';
pub(crate) const ORDERED: u8 = b'o';
pub(crate) const COUNT: u8 = b'c';

pub(crate) const SCHEMA_KEY: &str = "schema_version";
pub(crate) const COMMIT_SEQ_KEY: &str = "commit_seq";

pub(crate) fn push(buf: &mut Vec<u8>, component: &[u8]) {
    for &b in component {
        if b == 0 {
            buf.extend_from_slice(&[0, 0xFF]);
        } else {
            buf.push(b);
        }
    }
    buf.extend_from_slice(&[0, 1]);
}

pub(crate) fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 2).sum::<usize>());
    buf.push(tag);
    for part in parts {
        push(&mut buf, part);
    }
    buf
}

/// Reads one escaped component from the start of `bytes`; returns it and the rest.
pub(crate) fn pop(bytes: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0 {
            match bytes.get(i + 1)? {
                0xFF => out.push(0),
                1 => return Some((out, &bytes[i + 2..])),
                _ => return None,
            }
            i += 2;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    None
}

pub(crate) fn record(collection: &str, id: &str) -> Vec<u8> {
    key(RECORD, &[collection.as_bytes(), id.as_bytes()])
}

pub(crate) fn records(collection: &str) -> Vec<u8> {
    key(RECORD, &[collection.as_bytes()])
}

pub(crate) fn index(collection: &str, index: &str, value: &str, id: &str) -> Vec<u8> {
    key(
        INDEX,
        &[
            collection.as_bytes(),
            index.as_bytes(),
            value.as_bytes(),
            id.as_bytes(),
        ],
    )
}

pub(crate) fn index_prefix(collection: &str, index: &str, value: &str) -> Vec<u8> {
    key(
        INDEX,
        &[collection.as_bytes(), index.as_bytes(), value.as_bytes()],
    )
}

pub(crate) fn unique(collection: &str, constraint: &str, value: &str) -> Vec<u8> {
    key(
        UNIQUE,
        &[
            collection.as_bytes(),
            constraint.as_bytes(),
            value.as_bytes(),
        ],
    )
}

pub(crate) fn ordered(
    collection: &str,
    index: &str,
    scope: &str,
    sort_key: &[u8],
    id: &str,
) -> Vec<u8> {
    key(
        ORDERED,
        &[
            collection.as_bytes(),
            index.as_bytes(),
            scope.as_bytes(),
            sort_key,
            id.as_bytes(),
        ],
    )
}

pub(crate) fn ordered_scope(collection: &str, index: &str, scope: &str) -> Vec<u8> {
    key(
        ORDERED,
        &[collection.as_bytes(), index.as_bytes(), scope.as_bytes()],
    )
}

/// The counter of the scope an ordered key belongs to.
pub(crate) fn count_of(ordered_key: &[u8]) -> Option<Vec<u8>> {
    let (collection, rest) = pop(ordered_key.get(1..)?)?;
    let (index, rest) = pop(rest)?;
    let (scope, _) = pop(rest)?;
    Some(key(COUNT, &[&collection, &index, &scope]))
}

pub(crate) fn count(collection: &str, index: &str, scope: &str) -> Vec<u8> {
    key(
        COUNT,
        &[collection.as_bytes(), index.as_bytes(), scope.as_bytes()],
    )
}

/// The start of every counter of `index` whose scope begins with
/// `scope_prefix` (the prefix unterminated, so longer scopes match).
pub(crate) fn counts_with_prefix(collection: &str, index: &str, scope_prefix: &str) -> Vec<u8> {
    let mut k = key(COUNT, &[collection.as_bytes(), index.as_bytes()]);
    for &b in scope_prefix.as_bytes() {
        if b == 0 {
            k.extend_from_slice(&[0, 0xFF]);
        } else {
            k.push(b);
        }
    }
    k
}

/// A time as a sort key: 8 bytes, big-endian with the sign bit flipped,
/// so byte order is time order (negative times included).
pub fn time_sort_key(millis: i64) -> Vec<u8> {
    ((millis as u64) ^ (1 << 63)).to_be_bytes().to_vec()
}

pub(crate) fn meta(name: &str) -> Vec<u8> {
    key(META, &[name.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_round_trip_and_keep_order() {
        let k = key(RECORD, &[b"a\0b", b"c"]);
        let (first, rest) = pop(&k[1..]).unwrap();
        assert_eq!(first, b"a\0b");
        let (second, rest) = pop(rest).unwrap();
        assert_eq!(second, b"c");
        assert!(rest.is_empty());
        // "ab" sorts before "b" and a prefix scan of "a" does not see "ab".
        assert!(record("c", "ab") < record("c", "b"));
        assert!(!record("c", "ab").starts_with(&record("c", "a")));
    }
}
