//! Opaque credentials: Forge's bearer sessions and Contenox's API keys.
//! Both are random secrets of which only the SHA-256 is stored; neither
//! ever looks like a JWT (no dots), so a verifier can tell them apart.

use crate::model::{ApiKey, EXPIRES, RevokedToken, Session, User};
use sha2::{Digest, Sha256};
use warden_storage::{Millis, now_millis};

use crate::{Identity, IdentityError, IssuedToken, Presented, Principal, principal_of};

/// Opaque session tokens carry this prefix; API keys `wk_`.
const SESSION_PREFIX: &str = "wst_";
const API_KEY_PREFIX: &str = "wk_";
/// A session that waits for its MFA code lives this long.
const MFA_PENDING_MS: Millis = 5 * 60 * 1000;

pub(crate) fn looks_like_jwt(token: &str) -> bool {
    token.matches('.').count() == 2
}

pub(crate) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn secret() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// An API key as it is shown once, at creation.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub key_id: String,
    pub key: String,
    pub record: ApiKey,
}

impl Identity {
    /// A new opaque session for `user`. With `mfa_pending` it is refused
    /// everywhere until the user validates a TOTP code.
    pub async fn issue_session(
        &self,
        user: &User,
        mfa_pending: bool,
    ) -> Result<IssuedToken, IdentityError> {
        let token = format!("{SESSION_PREFIX}{}", secret());
        let now = now_millis();
        let ttl_ms = if mfa_pending {
            MFA_PENDING_MS
        } else {
            self.token_ttl_secs() * 1000
        };
        let session = Session {
            id: sha256_hex(&token),
            user_id: user.id.clone(),
            created_at: now,
            expires_at: now + ttl_ms,
            mfa_pending,
        };
        self.store().insert(session).await?;
        Ok(IssuedToken {
            token,
            expires_in: ttl_ms / 1000,
        })
    }

    /// Checks an opaque session token or API key.
    /// A session or API key's principal, and until when it holds.
    pub(crate) fn verify_opaque(&self, token: &str) -> Result<(Principal, Millis), IdentityError> {
        let hash = sha256_hex(token);
        if token.starts_with(API_KEY_PREFIX) {
            let key = self
                .store()
                .get::<ApiKey>(&hash)?
                .ok_or(IdentityError::InvalidToken)?;
            let user = self.live_user(&key.user_id, key.created_at)?;
            let principal = principal_of(user, Presented::ApiKey { key_id: key.key_id });
            return Ok((principal, Millis::MAX));
        }
        let session = self
            .store()
            .get::<Session>(&hash)?
            .ok_or(IdentityError::InvalidToken)?;
        if session.mfa_pending || session.expires_at <= now_millis() {
            return Err(IdentityError::InvalidToken);
        }
        let user = self.live_user(&session.user_id, session.created_at)?;
        let until = session.expires_at;
        Ok((
            principal_of(user, Presented::Session { id: session.id }),
            until,
        ))
    }

    /// Ends the credential a request presented: a JWT is revoked until it
    /// expires, a session deleted. API keys are deleted by their own route.
    pub async fn logout(&self, presented: &Presented) -> Result<(), IdentityError> {
        match presented {
            Presented::Jwt { jti, expires_at } => {
                self.store()
                    .put(&RevokedToken {
                        id: jti.clone(),
                        expires_at: *expires_at,
                    })
                    .await?;
            }
            Presented::Session { id } => self.store().remove::<Session>(id).await?,
            Presented::ApiKey { .. } => {}
        }
        Ok(())
    }

    /// Ends every credential of a user issued before now (password
    /// change or reset), sessions included.
    pub(crate) async fn revoke_all(&self, user_id: &str) -> Result<(), IdentityError> {
        for id in self.store().ids_by_index::<Session>("user", user_id)? {
            self.store().remove::<Session>(&id).await?;
        }
        Ok(())
    }

    /// Makes the user's MFA-pending sessions usable.
    pub(crate) async fn activate_pending_sessions(
        &self,
        user_id: &str,
    ) -> Result<(), IdentityError> {
        for id in self.store().ids_by_index::<Session>("user", user_id)? {
            self.store()
                .update::<Session, IdentityError>(&id, |s| {
                    if !s.mfa_pending {
                        return Ok(None);
                    }
                    s.mfa_pending = false;
                    s.expires_at = now_millis() + self.token_ttl_secs() * 1000;
                    Ok(Some(()))
                })
                .await?;
        }
        Ok(())
    }

    /// Creates an API key for a user; the key itself is returned once.
    pub async fn create_api_key(
        &self,
        user_id: &str,
        name: &str,
    ) -> Result<NewApiKey, IdentityError> {
        if name.trim().is_empty() || name.chars().count() > 128 {
            return Err(IdentityError::Invalid(
                "name must be 1 to 128 characters".into(),
            ));
        }
        let key = format!("{API_KEY_PREFIX}{}", secret());
        let record = ApiKey {
            id: sha256_hex(&key),
            key_id: uuid::Uuid::new_v4().to_string(),
            user_id: user_id.to_owned(),
            name: name.to_owned(),
            prefix: key.chars().take(10).collect(),
            created_at: now_millis(),
        };
        let record = self.store().insert(record).await?;
        Ok(NewApiKey {
            key_id: record.key_id.clone(),
            key,
            record,
        })
    }

    pub fn api_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, IdentityError> {
        let mut keys = self.store().by_index::<ApiKey>("user", user_id)?;
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }

    /// Deletes a user's API key by its public id; false when there is none.
    pub async fn delete_api_key(&self, user_id: &str, key_id: &str) -> Result<bool, IdentityError> {
        match self.store().get_by_unique::<ApiKey>("key_id", key_id)? {
            Some(k) if k.user_id == user_id => {
                self.store().remove::<ApiKey>(&k.id).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// A device-code login as the CLI starts it.
#[derive(Debug, Clone)]
pub struct DeviceLogin {
    pub device_code: String,
    pub user_code: String,
    pub expires_in: i64,
}

/// Where a device-code login stands when the CLI polls.
#[derive(Debug, Clone)]
pub enum DevicePoll {
    Pending,
    /// Approved: a session for the approving user (the code is spent).
    Approved(IssuedToken),
    Expired,
}

const DEVICE_CODE_MS: Millis = 10 * 60 * 1000;

impl Identity {
    /// Starts a device-code login: a secret device code for the CLI and a
    /// short user code (`ABCD-EFGH`) for a person to approve.
    pub async fn device_init(&self) -> Result<DeviceLogin, IdentityError> {
        const LETTERS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
        let device_code = secret();
        let mut code = String::new();
        for i in 0..8 {
            if i == 4 {
                code.push('-');
            }
            code.push(LETTERS[rand::random_range(0..LETTERS.len())] as char);
        }
        let record = crate::model::DeviceCode {
            id: sha256_hex(&device_code),
            user_code: code.clone(),
            user_id: None,
            expires_at: now_millis() + DEVICE_CODE_MS,
        };
        self.store().insert(record).await?;
        Ok(DeviceLogin {
            device_code,
            user_code: code,
            expires_in: DEVICE_CODE_MS / 1000,
        })
    }

    /// A signed-in user approves a device by its user code.
    pub async fn device_approve(
        &self,
        user_code: &str,
        user_id: &str,
    ) -> Result<(), IdentityError> {
        let code = user_code.trim().to_uppercase();
        let record = self
            .store()
            .get_by_unique::<crate::model::DeviceCode>("user_code", &code)?
            .filter(|d| d.expires_at > now_millis() && d.user_id.is_none())
            .ok_or_else(|| IdentityError::Invalid("Invalid or expired code".into()))?;
        self.store()
            .update::<crate::model::DeviceCode, IdentityError>(&record.id, |d| {
                d.user_id = Some(user_id.to_owned());
                Ok(Some(()))
            })
            .await?;
        Ok(())
    }

    /// The CLI's poll: pending, a session once approved (only once), or expired.
    pub async fn device_poll(&self, device_code: &str) -> Result<DevicePoll, IdentityError> {
        let id = sha256_hex(device_code);
        let Some(record) = self.store().get::<crate::model::DeviceCode>(&id)? else {
            return Ok(DevicePoll::Expired);
        };
        if record.expires_at <= now_millis() {
            self.store().remove::<crate::model::DeviceCode>(&id).await?;
            return Ok(DevicePoll::Expired);
        }
        let Some(user_id) = record.user_id else {
            return Ok(DevicePoll::Pending);
        };
        self.store().remove::<crate::model::DeviceCode>(&id).await?;
        let user = self.live_user(&user_id, 0)?;
        Ok(DevicePoll::Approved(
            self.issue_session(&user, false).await?,
        ))
    }
}

impl Identity {
    /// Deletes what can no longer be used: revoked JWTs past their expiry,
    /// expired sessions, verification and reset secrets, device codes.
    /// Returns how many records went.
    pub async fn sweep(&self) -> Result<usize, IdentityError> {
        use crate::model::{Challenge, DeviceCode};
        use warden_storage::Write;
        let until = warden_storage::time_sort_key(now_millis());
        let store = self.store();
        let mut n = 0;
        // Each kind's expiry index, read up to now: the cost is what has
        // expired, never what is still valid.
        async fn sweep_kind<T: warden_storage::Record>(
            store: &warden_storage::Store,
            until: &[u8],
        ) -> Result<usize, IdentityError> {
            let mut n = 0;
            loop {
                let ids = store.ids_up_to::<T>(EXPIRES.0, EXPIRES.1, until, 512)?;
                if ids.is_empty() {
                    return Ok(n);
                }
                n += ids.len();
                store
                    .commit(ids.iter().map(|id| Write::remove::<T>(id)).collect())
                    .await?;
            }
        }
        n += sweep_kind::<RevokedToken>(store, &until).await?;
        n += sweep_kind::<Session>(store, &until).await?;
        n += sweep_kind::<Challenge>(store, &until).await?;
        n += sweep_kind::<DeviceCode>(store, &until).await?;
        Ok(n)
    }
}
