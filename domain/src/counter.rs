//! Durable counters of things that leave no record of their own (vareon's
//! `searchQueriesProcessed`: searches are answered, not stored). One
//! record per counter and owner, moved by one optimistic update each.

use warden_storage::{Record, Store};

use crate::DomainError;

/// A named count for one user of an organisation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    /// `<name>/<org_id>/<user_id>`.
    pub id: String,
    pub count: u64,
}

warden_storage::first_layout!(Counter);

impl Record for Counter {
    const COLLECTION: &'static str = "counters";
    fn id(&self) -> &str {
        &self.id
    }
    const INDEX_VERSION: u32 = 1;
}

fn key(name: &str, org_id: &str, user_id: &str) -> String {
    format!("{name}/{org_id}/{user_id}")
}

/// Adds one to a user's counter (made at its first count); durable when
/// this returns.
pub async fn bump(
    store: &Store,
    name: &str,
    org_id: &str,
    user_id: &str,
) -> Result<u64, DomainError> {
    let id = key(name, org_id, user_id);
    loop {
        let bumped = store
            .update::<Counter, DomainError>(&id, |c| {
                c.count += 1;
                Ok(Some(()))
            })
            .await?;
        if let Some(c) = bumped {
            return Ok(c.count);
        }
        match store
            .insert(Counter {
                id: id.clone(),
                count: 1,
            })
            .await
        {
            Ok(_) => return Ok(1),
            // Another request made it first: count on it.
            Err(warden_storage::StorageError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A user's counter (0 before its first count).
pub fn read(store: &Store, name: &str, org_id: &str, user_id: &str) -> Result<u64, DomainError> {
    Ok(store
        .get::<Counter>(&key(name, org_id, user_id))?
        .map_or(0, |c| c.count))
}
