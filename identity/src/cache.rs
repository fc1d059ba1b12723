//! The verified-credential cache: a bearer token checked once is trusted
//! again without its signature check and store reads, until anything it
//! was derived from may have changed or it expires.
//!
//! "May have changed" is the store's change counters (see
//! `warden_storage::Changes`) of every collection a verification reads:
//! users (password change, deactivation, deletion, roles, `tokens_valid_after`),
//! revocations (logout), sessions, API keys and node tokens. A cached entry
//! remembers the counters' sum as it was *before* its verification read
//! anything; any later commit to those collections moves the sum, and the
//! counters move before the writer is answered, so a logout, a password
//! change or a deletion that has returned is seen by the very next
//! request. Identity changes are rare next to requests, so one counter for
//! all of them costs little: after a change every token is verified once
//! more.
//!
//! Bounded: at [`MAX_ENTRIES`] the cache is emptied and fills again.

use std::collections::HashMap;
use std::sync::RwLock;

use warden_storage::{Changes, Millis, Record, Store, now_millis};

use crate::Credential;
use crate::model::{ApiKey, NodeToken, RevokedToken, Session, User};

/// Most tokens remembered at once (a few hundred bytes each).
pub(crate) const MAX_ENTRIES: usize = 16_384;

struct Entry {
    credential: Credential,
    seen: u64,
    valid_until: Millis,
}

pub(crate) struct CredentialCache {
    entries: RwLock<HashMap<String, Entry>>,
    watched: Vec<Changes>,
}

impl CredentialCache {
    pub(crate) fn new(store: &Store) -> Self {
        CredentialCache {
            entries: RwLock::new(HashMap::new()),
            watched: [
                User::COLLECTION,
                RevokedToken::COLLECTION,
                Session::COLLECTION,
                ApiKey::COLLECTION,
                NodeToken::COLLECTION,
            ]
            .into_iter()
            .map(|c| store.changes(c))
            .collect(),
        }
    }

    /// The state of everything a verification reads; take it before reading.
    pub(crate) fn epoch(&self) -> u64 {
        self.watched.iter().map(Changes::count).sum()
    }

    /// The credential `token` proved, if nothing it rests on has changed
    /// since (`epoch` as taken now) and it has not expired.
    pub(crate) fn get(&self, token: &str, epoch: u64) -> Option<Credential> {
        let entries = self.entries.read().expect("cache lock is never poisoned");
        let entry = entries.get(token)?;
        (entry.seen == epoch && now_millis() < entry.valid_until).then(|| entry.credential.clone())
    }

    /// Remembers a verification that started at `seen`.
    pub(crate) fn put(&self, token: &str, credential: &Credential, seen: u64, valid_until: Millis) {
        let mut entries = self.entries.write().expect("cache lock is never poisoned");
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(token) {
            entries.clear();
        }
        entries.insert(
            token.to_owned(),
            Entry {
                credential: credential.clone(),
                seen,
                valid_until,
            },
        );
    }
}
