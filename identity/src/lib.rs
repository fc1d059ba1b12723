//! One user store and one credential scheme behind every dialect.
//!
//! Passwords are argon2id PHC strings, hashed and checked on a bounded
//! pool (`passwords.rs`); access tokens are HS256 JWTs with a `jti` and a
//! `kid`, signed with rotating keys under `<data-dir>/secrets/jwt-keys/`
//! (`keys.rs`). A token is only as good as its user: every verification
//! reloads the user, so a deleted user's tokens stop working at once and
//! roles are always current. Node tokens are recorded and revocable.

use std::path::Path;

use jsonwebtoken::{Algorithm, Header, Validation};
use thiserror::Error;
mod account;
mod cache;
mod credentials;
mod keys;
mod mail;
mod mfa;
pub mod model;
mod passwords;

pub use keys::KeyInfo;

pub use passwords::MAX_WAITING as MAX_PASSWORD_CHECKS_WAITING;
use passwords::{Passwords, hash_password};

pub use account::ProfileUpdate;
pub use credentials::{DeviceLogin, DevicePoll, NewApiKey};
pub use mail::{Mailer, SmtpConfig, SmtpSecurity};
pub use mfa::MfaSetup;

use crate::model::{NodeToken, Org, RevokedToken, Role, User};
use warden_storage::Millis;
use warden_storage::{StorageError, Store, Write, new_object_id, now_millis};

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("email address not verified")]
    EmailNotVerified,
    #[error("{field} '{value}' is already taken")]
    Taken { field: String, value: String },
    #[error("secrets: {0}")]
    Secrets(std::io::Error),
    /// Too many password checks are waiting: try again shortly.
    #[error("too many password checks in progress")]
    Busy,
    #[error(transparent)]
    Storage(StorageError),
}

impl From<StorageError> for IdentityError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Conflict { field, value } => IdentityError::Taken { field, value },
            other => IdentityError::Storage(other),
        }
    }
}

/// Who is making a request, as every route sees it.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    pub email: String,
    pub org_id: String,
    pub roles: Vec<Role>,
    /// What the request presented, so logout can revoke exactly it.
    pub presented: Presented,
}

/// The credential behind a principal.
#[derive(Debug, Clone, PartialEq)]
pub enum Presented {
    /// A JWT: its `jti` and expiry (ms).
    Jwt { jti: String, expires_at: Millis },
    /// An opaque session: the SHA-256 of its token.
    Session { id: String },
    /// An API key: its public id.
    ApiKey { key_id: String },
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }

    /// Admins and operators change data; viewers only read.
    pub fn can_write(&self) -> bool {
        self.roles
            .iter()
            .any(|r| matches!(r, Role::Admin | Role::Operator))
    }

    /// Whether this principal may see a record of `org_id`.
    pub fn sees_org(&self, org_id: &str) -> bool {
        self.is_admin() || self.org_id == org_id
    }

    /// The owner of what this principal creates: its organisation and itself.
    pub fn owner(&self) -> warden_domain::Owner {
        warden_domain::Owner {
            org_id: self.org_id.clone(),
            user_id: self.user_id.clone(),
            group_id: String::new(),
        }
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    sub: String,
    username: String,
    org: String,
    roles: Vec<String>,
    jti: String,
    iat: i64,
    exp: i64,
    typ: String,
    /// Issue time in milliseconds: compared with `tokens_valid_after`.
    #[serde(default)]
    iat_ms: i64,
}

/// What a bearer token proves.
#[derive(Debug, Clone)]
pub enum Credential {
    User(Principal),
    Node { node_id: String, org_id: String },
}

/// A freshly issued access token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_in: i64,
}

pub struct NewUser {
    pub username: String,
    pub email: String,
    pub password: String,
    pub roles: Vec<Role>,
    /// `None` creates a new organisation named after the user.
    pub org_id: Option<String>,
    pub email_verified: bool,
    pub full_name: Option<String>,
}

/// How an account comes to be: the sign-up policy every dialect shares.
/// It decides the organisation, the roles and whether the address counts
/// as verified; dialects only say which way their route works.
#[derive(Debug, Clone)]
pub enum Enrolment {
    /// A stranger signs up and must prove the address (Vareon's mailed
    /// link, Forge's code): an organisation of their own, operator,
    /// unverified until proven.
    SelfServiceVerified,
    /// A stranger signs up on a dialect that has no verification step
    /// (NeuroNest, Contenox): an organisation of their own, operator.
    SelfService,
    /// An admin creates the account: in the given organisation (a new one
    /// when none), with the given roles (operator when none); it can log
    /// in at once.
    ByAdmin {
        org_id: Option<String>,
        roles: Vec<Role>,
    },
}

/// What a sign-up says of the new user; the username is derived from the
/// email when a dialect has none.
#[derive(Debug, Clone)]
pub struct SignUp {
    pub username: Option<String>,
    pub email: String,
    pub password: String,
    pub full_name: Option<String>,
}

#[derive(Clone)]
pub struct Identity {
    store: Store,
    keys: std::sync::Arc<std::sync::RwLock<keys::KeyRing>>,
    token_ttl_secs: i64,
    node_tokens: NodeTokenPolicy,
    dummy_hash: String,
    passwords: Passwords,
    /// The last creation time given to a user: each gets a distinct
    /// millisecond, so a timestamp cursor (Contenox) never splits a tie.
    last_created: std::sync::Arc<std::sync::atomic::AtomicI64>,
    mailer: Mailer,
    verified: std::sync::Arc<cache::CredentialCache>,
}

pub const MIN_PASSWORD_LEN: usize = 8;

/// How long node tokens live: `default_secs` when the request names no
/// lifetime, never more than `max_secs` (which also bounds how long a
/// rotated signing key is kept).
#[derive(Debug, Clone, Copy)]
pub struct NodeTokenPolicy {
    pub default_secs: i64,
    pub max_secs: i64,
}

impl Default for NodeTokenPolicy {
    fn default() -> Self {
        NodeTokenPolicy {
            default_secs: 30 * 86400,
            max_secs: 365 * 86400,
        }
    }
}

impl Identity {
    /// Loads the signing keys from `secrets_dir`, creating the first on first boot.
    pub fn open(
        store: Store,
        secrets_dir: &Path,
        token_ttl_secs: i64,
        node_tokens: NodeTokenPolicy,
        smtp: Option<SmtpConfig>,
    ) -> Result<Identity, IdentityError> {
        let longest = token_ttl_secs
            .max(node_tokens.max_secs)
            .saturating_mul(1000);
        let keys = keys::KeyRing::load(secrets_dir, longest).map_err(IdentityError::Secrets)?;
        let store_for_mail = store.clone();
        let verified = std::sync::Arc::new(cache::CredentialCache::new(&store));
        Ok(Identity {
            verified,
            store,
            keys: std::sync::Arc::new(std::sync::RwLock::new(keys)),
            token_ttl_secs,
            node_tokens,
            dummy_hash: hash_password("not a real password, only for timing")?,
            passwords: Passwords::new(),
            last_created: Default::default(),
            mailer: Mailer::new(store_for_mail, smtp)?,
        })
    }

    /// Creates the first admin when no user exists. Returns the generated
    /// password when none was given, so the caller can print it once.
    pub async fn bootstrap_admin(
        &self,
        username: Option<String>,
        password: Option<String>,
        email: Option<String>,
    ) -> Result<Option<(String, Option<String>)>, IdentityError> {
        if self.store.count::<User>() > 0 {
            return Ok(None);
        }
        let username = username.unwrap_or_else(|| "admin".into());
        let generated = password.is_none();
        let password = password.unwrap_or_else(|| hex::encode(rand::random::<[u8; 12]>()));
        let email = email.unwrap_or_else(|| format!("{username}@localhost"));
        let user = self
            .create_user(NewUser {
                username: username.clone(),
                email,
                password: password.clone(),
                roles: vec![Role::Admin],
                org_id: None,
                email_verified: true,
                full_name: None,
            })
            .await?;
        tracing::info!(user = %user.id, username = %user.username, "created the first admin");
        Ok(Some((username, generated.then_some(password))))
    }

    /// Creates an account by the sign-up policy (`Enrolment`).
    pub async fn enrol(&self, signup: SignUp, how: Enrolment) -> Result<User, IdentityError> {
        let username = match signup.username {
            Some(u) => u,
            None => self.username_for(&signup.email)?,
        };
        let (org_id, roles, email_verified) = match how {
            Enrolment::SelfServiceVerified => (None, vec![Role::Operator], false),
            Enrolment::SelfService => (None, vec![Role::Operator], true),
            Enrolment::ByAdmin { org_id, roles } => (org_id, roles, true),
        };
        self.create_user(NewUser {
            username,
            email: signup.email,
            password: signup.password,
            roles,
            org_id,
            email_verified,
            full_name: signup.full_name,
        })
        .await
    }

    pub async fn create_user(&self, new: NewUser) -> Result<User, IdentityError> {
        validate_username(&new.username)?;
        validate_email(&new.email)?;
        validate_password(&new.password)?;
        let now = {
            use std::sync::atomic::Ordering;
            let now = now_millis();
            let last = self.last_created.fetch_max(now, Ordering::AcqRel);
            if last >= now {
                self.last_created.fetch_add(1, Ordering::AcqRel) + 1
            } else {
                now
            }
        };
        let mut writes = Vec::new();
        let org_id = match new.org_id {
            Some(id) => {
                if self.store.get::<Org>(&id)?.is_none() {
                    return Err(IdentityError::Invalid(format!(
                        "organisation {id} does not exist"
                    )));
                }
                id
            }
            None => {
                let org = Org {
                    id: new_object_id(),
                    name: format!("{}'s organisation", new.username),
                    created_at: now,
                };
                writes.push(Write::insert(&org)?);
                org.id
            }
        };
        let user = User {
            id: new_object_id(),
            username: new.username,
            email: new.email,
            password_hash: self.passwords.hash(&new.password).await?,
            roles: if new.roles.is_empty() {
                vec![Role::Operator]
            } else {
                new.roles
            },
            org_id,
            email_verified: new.email_verified,
            full_name: new.full_name,
            is_active: true,
            mfa_secret: None,
            mfa_enabled: false,
            mfa_last_step: 0,
            tokens_valid_after: 0,
            preferences: String::new(),
            created_at: now,
            updated_at: now,
        };
        writes.push(Write::insert(&user)?);
        self.store.commit(writes).await?;
        Ok(user)
    }

    pub fn user(&self, id: &str) -> Result<Option<User>, IdentityError> {
        Ok(self.store.get::<User>(id)?)
    }

    /// Finds a user by username or email (case-insensitive) and checks the
    /// password. Unknown users cost as much time as wrong passwords.
    /// Runs on the bounded password pool (`passwords.rs`).
    pub async fn authenticate(&self, login: &str, password: &str) -> Result<User, IdentityError> {
        match self.find_login(login)? {
            Some(user) => {
                let matches = self.passwords.verify(&user.password_hash, password).await?;
                if matches && user.is_active {
                    Ok(user)
                } else {
                    Err(IdentityError::InvalidCredentials)
                }
            }
            None => {
                self.passwords.verify(&self.dummy_hash, password).await?;
                Err(IdentityError::InvalidCredentials)
            }
        }
    }

    pub fn issue_token(&self, user: &User) -> Result<IssuedToken, IdentityError> {
        let iat = now_millis() / 1000;
        let claims = Claims {
            sub: user.id.clone(),
            username: user.username.clone(),
            org: user.org_id.clone(),
            roles: user.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            jti: uuid::Uuid::new_v4().to_string(),
            iat,
            exp: iat + self.token_ttl_secs,
            typ: "user".into(),
            iat_ms: now_millis(),
        };
        Ok(IssuedToken {
            token: self.sign(&claims)?,
            expires_in: self.token_ttl_secs,
        })
    }

    /// Signs with the current key, naming it in the header (`kid`).
    fn sign(&self, claims: &Claims) -> Result<String, IdentityError> {
        let keys = self
            .keys
            .read()
            .expect("the key ring lock is never poisoned");
        let (kid, key) = keys.signing();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid;
        jsonwebtoken::encode(&header, claims, key)
            .map_err(|e| IdentityError::Invalid(e.to_string()))
    }

    /// A new JWT signing key; tokens signed with older keys stay valid
    /// until they expire.
    pub fn rotate_signing_key(&self) -> Result<KeyInfo, IdentityError> {
        let info = self
            .keys
            .write()
            .expect("the key ring lock is never poisoned")
            .rotate()
            .map_err(IdentityError::Secrets)?;
        tracing::info!(kid = %info.kid, "JWT signing key rotated");
        Ok(info)
    }

    /// The signing keys: ids, ages and retirement times, never secrets.
    pub fn signing_keys(&self) -> Vec<KeyInfo> {
        self.keys
            .read()
            .expect("the key ring lock is never poisoned")
            .list()
    }

    /// The lifetimes node tokens get and may have.
    pub fn node_token_policy(&self) -> NodeTokenPolicy {
        self.node_tokens
    }

    /// A node credential: `sub` names the node, `typ` marks it as a node's,
    /// so the node gateway accepts it and every user route refuses it.
    /// Recorded (by `jti`, never the token) so it can be listed and revoked.
    pub async fn issue_node_token(
        &self,
        node_id: &str,
        org_id: &str,
        ttl_secs: Option<i64>,
        by: &str,
    ) -> Result<(IssuedToken, NodeToken), IdentityError> {
        let ttl_secs = ttl_secs.unwrap_or(self.node_tokens.default_secs);
        if !(60..=self.node_tokens.max_secs).contains(&ttl_secs) {
            return Err(IdentityError::Invalid(format!(
                "expiresIn must be between 60 seconds and {} days",
                self.node_tokens.max_secs / 86400
            )));
        }
        let now = now_millis();
        let iat = now / 1000;
        let claims = Claims {
            sub: node_id.to_owned(),
            username: String::new(),
            org: org_id.to_owned(),
            roles: Vec::new(),
            jti: uuid::Uuid::new_v4().to_string(),
            iat,
            exp: iat + ttl_secs,
            typ: "node".into(),
            iat_ms: now,
        };
        let record = NodeToken {
            id: claims.jti.clone(),
            node_id: node_id.to_owned(),
            org_id: org_id.to_owned(),
            created_by: by.to_owned(),
            created_at: now,
            expires_at: claims.exp * 1000,
            revoked_at: None,
        };
        let token = self.sign(&claims)?;
        self.store.insert(record.clone()).await?;
        Ok((
            IssuedToken {
                token,
                expires_in: ttl_secs,
            },
            record,
        ))
    }

    /// A node's tokens issued since tokens are recorded, newest first.
    pub fn node_tokens(&self, node_id: &str) -> Result<Vec<NodeToken>, IdentityError> {
        let mut tokens = self.store.by_index::<NodeToken>("node", node_id)?;
        tokens.sort_by_key(|t| std::cmp::Reverse(t.created_at));
        Ok(tokens)
    }

    /// Revokes one of a node's tokens: no new connection with it is
    /// accepted. Returns the token as it is now.
    pub async fn revoke_node_token(
        &self,
        node_id: &str,
        token_id: &str,
    ) -> Result<NodeToken, IdentityError> {
        let not_found = || IdentityError::NotFound(format!("Node token {token_id} not found"));
        let token = self
            .store
            .get::<NodeToken>(token_id)?
            .filter(|t| t.node_id == node_id)
            .ok_or_else(not_found)?;
        if token.revoked_at.is_some() {
            return Ok(token);
        }
        let mut revoked = token.clone();
        revoked.revoked_at = Some(now_millis());
        self.store
            .commit(vec![
                warden_storage::Write::put(&revoked, None)?,
                Write::put(
                    &RevokedToken {
                        id: token.id.clone(),
                        expires_at: token.expires_at,
                    },
                    None,
                )?,
            ])
            .await?;
        Ok(revoked)
    }

    fn decode(&self, token: &str) -> Result<Claims, IdentityError> {
        let kid = jsonwebtoken::decode_header(token)
            .map_err(|_| IdentityError::InvalidToken)?
            .kid;
        let keys = self
            .keys
            .read()
            .expect("the key ring lock is never poisoned");
        let key = keys
            .verifying(kid.as_deref())
            .ok_or(IdentityError::InvalidToken)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|d| d.claims)
            .map_err(|_| IdentityError::InvalidToken)
    }

    /// Checks any bearer credential: a JWT (a user's or a node's), an
    /// opaque session token, or an API key. A token verified before is
    /// answered from the verified-credential cache (`cache.rs`) while
    /// nothing it rests on has changed.
    pub fn verify_credential(&self, token: &str) -> Result<Credential, IdentityError> {
        let epoch = self.verified.epoch();
        if let Some(credential) = self.verified.get(token, epoch) {
            return Ok(credential);
        }
        let (credential, valid_until) = self.verify_uncached(token)?;
        self.verified.put(token, &credential, epoch, valid_until);
        Ok(credential)
    }

    /// The full check, and until when its answer holds.
    fn verify_uncached(&self, token: &str) -> Result<(Credential, Millis), IdentityError> {
        if !credentials::looks_like_jwt(token) {
            return self
                .verify_opaque(token)
                .map(|(p, until)| (Credential::User(p), until));
        }
        let claims = self.decode(token)?;
        let valid_until = claims.exp.saturating_mul(1000);
        let credential = match claims.typ.as_str() {
            "node" if self.store.get::<RevokedToken>(&claims.jti)?.is_some() => {
                Err(IdentityError::InvalidToken)
            }
            "node" => Ok(Credential::Node {
                node_id: claims.sub,
                org_id: claims.org,
            }),
            "user" => self.principal(claims).map(Credential::User),
            _ => Err(IdentityError::InvalidToken),
        }?;
        Ok((credential, valid_until))
    }

    /// Checks a user's credential (JWT, session or API key) and returns the
    /// principal of a still-existing, active user. Node tokens are refused.
    pub fn verify_token(&self, token: &str) -> Result<Principal, IdentityError> {
        match self.verify_credential(token)? {
            Credential::User(p) => Ok(p),
            Credential::Node { .. } => Err(IdentityError::InvalidToken),
        }
    }

    fn principal(&self, claims: Claims) -> Result<Principal, IdentityError> {
        if self.store.get::<RevokedToken>(&claims.jti)?.is_some() {
            return Err(IdentityError::InvalidToken);
        }
        let user = self.live_user(&claims.sub, claims.iat_ms)?;
        Ok(principal_of(
            user,
            Presented::Jwt {
                jti: claims.jti,
                expires_at: claims.exp * 1000,
            },
        ))
    }

    /// A user who exists, is active, and whose credentials issued at
    /// `issued_at` are still valid.
    pub(crate) fn live_user(
        &self,
        user_id: &str,
        issued_at: Millis,
    ) -> Result<User, IdentityError> {
        let user = self
            .store
            .get::<User>(user_id)?
            .ok_or(IdentityError::InvalidToken)?;
        if !user.is_active || issued_at < user.tokens_valid_after {
            return Err(IdentityError::InvalidToken);
        }
        Ok(user)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn mailer(&self) -> &Mailer {
        &self.mailer
    }

    pub fn token_ttl_secs(&self) -> i64 {
        self.token_ttl_secs
    }
}

pub(crate) fn principal_of(user: User, presented: Presented) -> Principal {
    Principal {
        user_id: user.id,
        username: user.username,
        email: user.email,
        org_id: user.org_id,
        roles: user.roles,
        presented,
    }
}

pub(crate) fn validate_username(username: &str) -> Result<(), IdentityError> {
    let ok = (3..=64).contains(&username.chars().count())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Invalid(
            "username must be 3 to 64 characters of letters, digits, '.', '_' or '-'".into(),
        ))
    }
}

pub(crate) fn validate_email(email: &str) -> Result<(), IdentityError> {
    let ok = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !email.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Invalid(
            "email must be an email address".into(),
        ))
    }
}

pub(crate) fn validate_password(password: &str) -> Result<(), IdentityError> {
    if password.chars().count() < MIN_PASSWORD_LEN || password.len() > 1024 {
        return Err(IdentityError::Invalid(format!(
            "password must be between {MIN_PASSWORD_LEN} and 1024 characters long"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use warden_storage::StoreConfig;

    fn identity(dir: &Path) -> Identity {
        let store = Store::open(&StoreConfig::new(dir.to_path_buf())).unwrap();
        Identity::open(
            store,
            &dir.join("secrets"),
            3600,
            NodeTokenPolicy::default(),
            None,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn bootstrap_login_token_and_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let (name, generated) = id.bootstrap_admin(None, None, None).await.unwrap().unwrap();
        let password = generated.expect("a password is generated when none is given");
        assert!(
            id.bootstrap_admin(None, None, None)
                .await
                .unwrap()
                .is_none(),
            "only on first boot"
        );
        let user = id.authenticate(&name, &password).await.unwrap();
        assert!(user.password_hash.starts_with("$argon2id$"));
        assert!(matches!(
            id.authenticate(&name, "wrong-password").await,
            Err(IdentityError::InvalidCredentials)
        ));
        assert!(matches!(
            id.authenticate("nobody", &password).await,
            Err(IdentityError::InvalidCredentials)
        ));
        let token = id.issue_token(&user).unwrap();
        let p = id.verify_token(&token.token).unwrap();
        assert_eq!(p.user_id, user.id);
        assert!(p.is_admin());
        assert!(id.verify_token(&format!("{}x", token.token)).is_err());
        let kid = id.signing_keys()[0].kid.clone();
        let mode = std::fs::metadata(dir.path().join(format!("secrets/jwt-keys/{kid}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The same key is used after a restart.
        let (node, _) = id
            .issue_node_token("node-1", &user.org_id, Some(60), &user.id)
            .await
            .unwrap();
        assert!(
            id.verify_token(&node.token).is_err(),
            "user routes refuse node tokens"
        );
        match id.verify_credential(&node.token).unwrap() {
            Credential::Node { node_id, org_id } => {
                assert_eq!((node_id.as_str(), org_id), ("node-1", user.org_id.clone()))
            }
            other => panic!("expected a node credential, got {other:?}"),
        }
        assert!(matches!(
            id.verify_credential(&token.token).unwrap(),
            Credential::User(_)
        ));
        let again = Identity::open(
            id.store.clone(),
            &dir.path().join("secrets"),
            3600,
            NodeTokenPolicy::default(),
            None,
        )
        .unwrap();
        assert!(again.verify_token(&token.token).is_ok());
    }

    #[tokio::test]
    async fn sweep_removes_only_what_has_expired() {
        use crate::model::{RevokedToken, Session};
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let now = now_millis();
        let store = id.store.clone();
        store
            .put(&RevokedToken {
                id: "old".into(),
                expires_at: now - 1,
            })
            .await
            .unwrap();
        store
            .put(&RevokedToken {
                id: "live".into(),
                expires_at: now + 60_000,
            })
            .await
            .unwrap();
        let session = |sid: &str, expires_at| Session {
            id: sid.into(),
            user_id: "u".into(),
            created_at: now,
            expires_at,
            mfa_pending: false,
        };
        store.put(&session("gone", now - 1)).await.unwrap();
        store.put(&session("kept", now + 60_000)).await.unwrap();
        assert_eq!(id.sweep().await.unwrap(), 2);
        assert!(store.get::<RevokedToken>("old").unwrap().is_none());
        assert!(store.get::<RevokedToken>("live").unwrap().is_some());
        assert!(store.get::<Session>("gone").unwrap().is_none());
        assert!(store.get::<Session>("kept").unwrap().is_some());
        assert_eq!(id.sweep().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn usernames_and_emails_are_unique_case_insensitively() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let new = |u: &str, e: &str| NewUser {
            username: u.into(),
            email: e.into(),
            password: "long-enough".into(),
            roles: vec![],
            org_id: None,
            email_verified: true,
            full_name: None,
        };
        id.create_user(new("alice", "a@example.com")).await.unwrap();
        assert!(matches!(
            id.create_user(new("ALICE", "b@example.com")).await,
            Err(IdentityError::Taken { .. })
        ));
        assert!(matches!(
            id.create_user(new("bob", "A@example.com")).await,
            Err(IdentityError::Taken { .. })
        ));
        assert!(matches!(
            id.create_user(new("x", "c@example.com")).await,
            Err(IdentityError::Invalid(_))
        ));
        let mut short = new("carol", "c@example.com");
        short.password = "short".into();
        assert!(matches!(
            id.create_user(short).await,
            Err(IdentityError::Invalid(_))
        ));
    }
}
