//! Access control (Contenox's `/access-control`): grants of a permission
//! level on a resource to an identity, with their rules and their writes.
//! Dialects parse and render; everything a grant must be is checked here.

use warden_storage::{Store, new_object_id, now_millis};

use crate::rules::{Checks, MAX_SHORT};
use crate::{AccessEntry, DomainError};

/// The kinds of resource a grant may name in Warden's contenox view
/// (contenox's `/system/resources`).
pub const RESOURCE_TYPES: [&str; 9] = [
    "backends",
    "chats",
    "files",
    "folders",
    "groups",
    "models",
    "providers",
    "system",
    "taskchains",
];

/// The permission levels, lowest first.
pub const PERMISSIONS: [&str; 4] = ["none", "view", "edit", "manage"];

const MAX_RESOURCE: usize = 1024;

/// A grant or a change of one: `None` leaves a field as it is (and is
/// refused on a new grant).
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pub identity: Option<String>,
    pub resource: Option<String>,
    pub resource_type: Option<String>,
    pub permission: Option<String>,
}

/// Who asks: enough of a principal to apply the rules.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub user_id: &'a str,
    pub is_admin: bool,
}

impl Grant {
    /// The grant's own rules; `create` makes every field required, and
    /// no field may be emptied.
    fn check(&self, create: bool) -> Result<(), DomainError> {
        let mut c = Checks::new();
        c.text("identity", &self.identity, create, MAX_SHORT);
        c.text("resource", &self.resource, create, MAX_RESOURCE);
        c.text("resourceType", &self.resource_type, create, MAX_SHORT);
        c.text("permission", &self.permission, create, MAX_SHORT);
        for (name, v) in [
            ("identity", &self.identity),
            ("resource", &self.resource),
            ("resourceType", &self.resource_type),
            ("permission", &self.permission),
        ] {
            if !create {
                c.not_blank(name, v);
            }
        }
        let given = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        c.key("identity", &given(&self.identity), false);
        c.key("resourceType", &given(&self.resource_type), false);
        c.one_of("permission", &given(&self.permission), &PERMISSIONS, false);
        c.finish()
    }

    fn apply(self, entry: &mut AccessEntry) {
        crate::set(&mut entry.identity, self.identity);
        crate::set(&mut entry.resource, self.resource);
        crate::set(&mut entry.resource_type, self.resource_type);
        crate::set(&mut entry.permission, self.permission);
        entry.updated_at = now_millis().max(entry.updated_at);
    }
}

fn not_found(id: &str) -> DomainError {
    DomainError::NotFound {
        kind: "access entry",
        id: id.to_owned(),
    }
}

/// The access-control service over the store.
#[derive(Clone)]
pub struct AccessControl {
    store: Store,
}

impl AccessControl {
    pub fn new(store: Store) -> AccessControl {
        AccessControl { store }
    }

    /// A new grant in the asker's organisation.
    pub async fn grant(&self, org_id: &str, grant: Grant) -> Result<AccessEntry, DomainError> {
        grant.check(true)?;
        let now = now_millis();
        let mut entry = AccessEntry {
            id: new_object_id(),
            identity: String::new(),
            resource: String::new(),
            resource_type: String::new(),
            permission: String::new(),
            org_id: org_id.to_owned(),
            created_at: now,
            updated_at: now,
        };
        grant.apply(&mut entry);
        Ok(self.store.insert(entry).await?)
    }

    /// An entry the asker may see: grants made to them, and every grant
    /// for an admin. Anything else is "not found".
    pub fn visible(&self, asker: Asker<'_>, id: &str) -> Result<AccessEntry, DomainError> {
        self.store
            .get::<AccessEntry>(id)?
            .filter(|e| e.identity == asker.user_id || asker.is_admin)
            .ok_or_else(|| not_found(id))
    }

    pub async fn change(
        &self,
        asker: Asker<'_>,
        id: &str,
        grant: Grant,
    ) -> Result<AccessEntry, DomainError> {
        self.visible(asker, id)?;
        grant.check(false)?;
        self.store
            .update::<AccessEntry, DomainError>(id, |e| {
                grant.clone().apply(e);
                Ok(Some(()))
            })
            .await?
            .ok_or_else(|| not_found(id))
    }

    pub async fn revoke(&self, asker: Asker<'_>, id: &str) -> Result<(), DomainError> {
        self.visible(asker, id)?;
        Ok(self.store.remove::<AccessEntry>(id).await?)
    }

    /// Grants newest first, strictly older than `before`: an asker's own,
    /// or (for admins) `identity`'s or all they may see.
    pub fn list(
        &self,
        asker: Asker<'_>,
        identity: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AccessEntry>, DomainError> {
        let identity = if asker.is_admin {
            identity
        } else {
            Some(asker.user_id)
        };
        let mut entries: Vec<AccessEntry> = match identity {
            Some(id) => self.store.by_index::<AccessEntry>("identity", id)?,
            None => self.store.all::<AccessEntry>()?,
        };
        entries.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(entries
            .into_iter()
            .filter(|e| before.is_none_or(|f| e.created_at < f))
            .take(limit)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(identity: &str, permission: &str) -> Grant {
        Grant {
            identity: Some(identity.into()),
            resource: Some("files/a.pdf".into()),
            resource_type: Some("file".into()),
            permission: Some(permission.into()),
        }
    }

    #[test]
    fn a_grant_must_be_whole_and_well_formed() {
        assert!(grant("u1", "view").check(true).is_ok());
        let Err(DomainError::Invalid(errors)) = grant("u 1", "godmode").check(true) else {
            panic!("expected errors");
        };
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            Grant::default().check(false).is_ok(),
            "a change may name nothing"
        );
        let Err(DomainError::Invalid(errors)) = Grant::default().check(true) else {
            panic!("expected errors");
        };
        assert_eq!(errors.len(), 4);
        let blank = Grant {
            identity: Some(" ".into()),
            ..Default::default()
        };
        assert!(blank.check(false).is_err(), "a field may not be emptied");
    }
}
