//! The writes of plain records (instructions, tools: records without an
//! actor): creation with the unique key checked, optimistic updates that
//! refuse deleted records and stamp the audit, and soft deletion. Every
//! dialect writes these records only through here.

use warden_storage::{Record, Store};

use crate::{Audit, DomainError, Owned};

/// A record without behaviour, owned by an organisation and audited.
pub trait Plain: Record + Owned {
    /// As in messages: "Instruction with ID ... not found".
    const KIND: &'static str;
    fn audit(&self) -> &Audit;
    fn audit_mut(&mut self) -> &mut Audit;
}

fn not_found<T: Plain>(id: &str) -> DomainError {
    DomainError::NotFound {
        kind: T::KIND,
        id: id.to_owned(),
    }
}

/// Stores a new record; its key must be free in its organisation.
pub async fn create<T: Plain>(store: &Store, record: T) -> Result<T, DomainError> {
    Ok(store.insert(record).await?)
}

/// Changes a live record (`change` may refuse with its own error) and
/// stamps who changed it. Retries on a lost race; never touches a deleted
/// record.
pub async fn update<T: Plain>(
    store: &Store,
    id: &str,
    by: &str,
    mut change: impl FnMut(&mut T) -> Result<(), DomainError>,
) -> Result<T, DomainError> {
    store
        .update::<T, DomainError>(id, |r| {
            if r.is_deleted() {
                return Err(not_found::<T>(id));
            }
            change(r)?;
            r.audit_mut().touch(by);
            Ok(Some(()))
        })
        .await?
        .ok_or_else(|| not_found::<T>(id))
}

/// Marks a live record deleted: hidden from lists, its key free again.
pub async fn soft_delete<T: Plain>(store: &Store, id: &str, by: &str) -> Result<T, DomainError> {
    store
        .update::<T, DomainError>(id, |r| {
            if r.is_deleted() {
                return Err(not_found::<T>(id));
            }
            r.audit_mut().delete(by);
            Ok(Some(()))
        })
        .await?
        .ok_or_else(|| not_found::<T>(id))
}
