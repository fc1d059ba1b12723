use crate::{Millis, Record};

/// What a user may do. Admins are instance administrators and see every
/// organisation; operators change their organisation's data; viewers read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Role {
    Admin,
    Operator,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Admin, Role::Operator, Role::Viewer]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub email: String,
    /// argon2id PHC string; never leaves the identity crate.
    pub password_hash: String,
    pub roles: Vec<Role>,
    pub org_id: String,
    pub email_verified: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Record for User {
    const COLLECTION: &'static str = "users";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("org", self.org_id.clone())]
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![
            ("username", self.username.to_lowercase()),
            ("email", self.email.to_lowercase()),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Org {
    pub id: String,
    pub name: String,
    pub created_at: Millis,
}

impl Record for Org {
    const COLLECTION: &'static str = "orgs";
    fn id(&self) -> &str {
        &self.id
    }
}
