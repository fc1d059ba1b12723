//! The records identity owns: users, organisations and every credential.

use warden_storage::{Millis, Record};

warden_storage::first_layout!(
    User,
    Org,
    RevokedToken,
    Session,
    ApiKey,
    Challenge,
    Mail,
    PushToken,
    DeviceCode,
    NodeToken,
);

/// A node token that was issued (its `jti`; the token itself is never
/// stored), so operators can list and revoke a node's tokens.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeToken {
    /// The token's `jti`.
    pub id: String,
    pub node_id: String,
    pub org_id: String,
    pub created_by: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked_at: Option<Millis>,
}

impl Record for NodeToken {
    const COLLECTION: &'static str = "node_tokens";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("node", self.node_id.clone())]
    }
}

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
    /// Display name (NeuroNest's `name`).
    pub full_name: Option<String>,
    pub is_active: bool,
    /// Base32 TOTP secret, set at MFA setup; never shown again.
    pub mfa_secret: Option<String>,
    pub mfa_enabled: bool,
    /// The last TOTP time step accepted, so a code is used once.
    pub mfa_last_step: u64,
    /// Credentials issued before this instant are void (password change).
    pub tokens_valid_after: Millis,
    /// Forge's preferences object, as JSON text.
    pub preferences: String,
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
    /// By creation time within the organisation, and across all.
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        warden_domain::created_order(&self.org_id, self.created_at)
    }
    const INDEX_VERSION: u32 = 1;
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

/// Re-indexes identity's collections whose indexes changed (once).
pub async fn ensure_indexes(
    store: &warden_storage::Store,
) -> Result<(), warden_storage::StorageError> {
    store.ensure_indexes::<User>().await?;
    store.ensure_indexes::<RevokedToken>().await?;
    store.ensure_indexes::<Session>().await?;
    store.ensure_indexes::<Challenge>().await?;
    store.ensure_indexes::<DeviceCode>().await?;
    Ok(())
}

/// The expiry index the housekeeping sweep reads: all records of a kind
/// (one scope), by expiry time.
pub(crate) const EXPIRES: (&str, &str) = ("expires", "*");

fn expiry(expires_at: Millis) -> Vec<(&'static str, String, Vec<u8>)> {
    vec![(
        EXPIRES.0,
        EXPIRES.1.into(),
        warden_storage::time_sort_key(expires_at),
    )]
}

/// A revoked JWT, kept until it would have expired anyway.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RevokedToken {
    /// The token's `jti`.
    pub id: String,
    pub expires_at: Millis,
}

impl Record for RevokedToken {
    const COLLECTION: &'static str = "revoked_tokens";
    fn id(&self) -> &str {
        &self.id
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        expiry(self.expires_at)
    }
    const INDEX_VERSION: u32 = 1;
}

/// An opaque bearer session (Forge's tokens). Only the token's SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    /// Hex SHA-256 of the token.
    pub id: String,
    pub user_id: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    /// Issued to a user with MFA whose code has not been validated yet.
    pub mfa_pending: bool,
}

impl Record for Session {
    const COLLECTION: &'static str = "sessions";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("user", self.user_id.clone())]
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        expiry(self.expires_at)
    }
    const INDEX_VERSION: u32 = 1;
}

/// An API key (Contenox's `X-API-Key`). Only the secret's SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApiKey {
    /// Hex SHA-256 of the key.
    pub id: String,
    /// A public handle to list and delete it by.
    pub key_id: String,
    pub user_id: String,
    pub name: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub created_at: Millis,
}

impl Record for ApiKey {
    const COLLECTION: &'static str = "api_keys";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("user", self.user_id.clone())]
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![("key_id", self.key_id.clone())]
    }
}

/// What a one-time secret proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChallengeKind {
    VerifyEmail,
    ResetPassword,
}

/// A one-time code or token sent by mail. Codes are keyed by user and
/// kind (one live code each) and count failed attempts; link tokens are
/// keyed by their SHA-256.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Challenge {
    pub id: String,
    pub user_id: String,
    pub kind: ChallengeKind,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    pub expires_at: Millis,
    pub attempts: u32,
}

impl Record for Challenge {
    const COLLECTION: &'static str = "challenges";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("user", self.user_id.clone())]
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        expiry(self.expires_at)
    }
    const INDEX_VERSION: u32 = 1;
}

/// A mail Warden sent or would have sent (the outbox).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Mail {
    pub id: String,
    pub to: String,
    pub subject: String,
    pub body: String,
    pub created_at: Millis,
    /// `delivered` by SMTP, `outbox` when no SMTP is configured, or the error.
    pub status: String,
}

impl Record for Mail {
    const COLLECTION: &'static str = "mail";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("to", self.to.to_lowercase())]
    }
}

/// A push-notification token a user registered (Forge).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PushToken {
    /// Hex SHA-256 of the token, so one device registers once.
    pub id: String,
    pub user_id: String,
    pub token: String,
    pub platform: String,
    pub device_name: String,
    pub created_at: Millis,
}

impl Record for PushToken {
    const COLLECTION: &'static str = "push_tokens";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("user", self.user_id.clone())]
    }
}

/// A device-code login in progress (Forge's CLI: init, verify, poll).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceCode {
    /// Hex SHA-256 of the device code the CLI polls with.
    pub id: String,
    /// The short code a signed-in user enters to approve.
    pub user_code: String,
    /// Set when a user approves.
    pub user_id: Option<String>,
    pub expires_at: Millis,
}

impl Record for DeviceCode {
    const COLLECTION: &'static str = "device_codes";
    fn id(&self) -> &str {
        &self.id
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![("user_code", self.user_code.clone())]
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        expiry(self.expires_at)
    }
    const INDEX_VERSION: u32 = 1;
}
