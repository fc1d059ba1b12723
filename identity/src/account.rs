//! Account flows every dialect shares: verification by code or link,
//! password reset, password change, profile updates, deletion.

use crate::model::{ApiKey, Challenge, ChallengeKind, PushToken, Session, User};
use warden_storage::{Millis, now_millis};

use crate::credentials::sha256_hex;
use crate::{Identity, IdentityError, validate_email, validate_password, validate_username};

/// Email codes live 15 minutes (Forge); reset links 30 minutes.
pub const VERIFY_CODE_MS: Millis = 15 * 60 * 1000;
pub const RESET_TOKEN_MS: Millis = 30 * 60 * 1000;
/// Wrong guesses before a verification code is void.
const MAX_ATTEMPTS: u32 = 5;

/// A profile change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProfileUpdate {
    pub username: Option<String>,
    pub email: Option<String>,
    pub full_name: Option<String>,
    pub password: Option<String>,
    /// JSON object text, merged into the stored preferences.
    pub preferences: Option<String>,
    pub roles: Option<Vec<crate::model::Role>>,
}

fn code_id(kind: ChallengeKind, user_id: &str) -> String {
    format!("{kind:?}:{user_id}")
}

impl Identity {
    /// A user by username or email, case-insensitively.
    pub fn find_login(&self, login: &str) -> Result<Option<User>, IdentityError> {
        let key = login.trim().to_lowercase();
        Ok(
            match self.store().get_by_unique::<User>("username", &key)? {
                Some(u) => Some(u),
                None => self.store().get_by_unique::<User>("email", &key)?,
            },
        )
    }

    /// A free username made from an email's local part (NeuroNest signs up by email).
    pub fn username_for(&self, email: &str) -> Result<String, IdentityError> {
        let local: String = email
            .split('@')
            .next()
            .unwrap_or("user")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(48)
            .collect();
        let base = if local.len() < 3 {
            format!("user-{local}")
        } else {
            local
        };
        for n in 0..1000 {
            let candidate = if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            if self
                .store()
                .get_by_unique::<User>("username", &candidate.to_lowercase())?
                .is_none()
            {
                return Ok(candidate);
            }
        }
        Ok(format!("user-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Mails a fresh verification secret: a 6-digit code (Forge) or a
    /// link token (Vareon). A new one replaces the previous.
    pub async fn send_verification(
        &self,
        user: &User,
        six_digit_code: bool,
    ) -> Result<(), IdentityError> {
        let secret = if six_digit_code {
            format!("{:06}", rand::random_range(0..1_000_000u32))
        } else {
            uuid::Uuid::new_v4().simple().to_string()
        };
        let challenge = Challenge {
            id: code_id(ChallengeKind::VerifyEmail, &user.id),
            user_id: user.id.clone(),
            kind: ChallengeKind::VerifyEmail,
            secret_hash: sha256_hex(&secret),
            expires_at: now_millis() + VERIFY_CODE_MS,
            attempts: 0,
        };
        self.store().put(&challenge).await?;
        let body = if six_digit_code {
            format!("Your Warden verification code is {secret}. It expires in 15 minutes.")
        } else {
            format!(
                "Verify your Warden account with this token: {secret}\nIt expires in 15 minutes."
            )
        };
        self.mailer()
            .send(&user.email, "Verify your email address", &body)
            .await?;
        Ok(())
    }

    /// Checks a verification secret for the account with `email`.
    pub async fn verify_email(&self, email: &str, secret: &str) -> Result<User, IdentityError> {
        let user = self
            .store()
            .get_by_unique::<User>("email", &email.trim().to_lowercase())?
            .ok_or_else(|| IdentityError::NotFound("User not found".into()))?;
        if user.email_verified {
            return Ok(user);
        }
        let id = code_id(ChallengeKind::VerifyEmail, &user.id);
        let mut ok = false;
        let found = self
            .store()
            .update::<Challenge, IdentityError>(&id, |c| {
                ok = c.attempts < MAX_ATTEMPTS
                    && c.expires_at > now_millis()
                    && c.secret_hash == sha256_hex(secret.trim());
                if ok {
                    return Ok(None);
                }
                c.attempts += 1;
                Ok(Some(()))
            })
            .await?;
        if found.is_none() || !ok {
            return Err(IdentityError::Invalid("Invalid or expired code".into()));
        }
        self.store().remove::<Challenge>(&id).await?;
        let user = self
            .store()
            .update::<User, IdentityError>(&user.id, |u| {
                u.email_verified = true;
                u.updated_at = now_millis();
                Ok(Some(()))
            })
            .await?
            .ok_or_else(|| IdentityError::NotFound("User not found".into()))?;
        Ok(user)
    }

    /// Mails a reset link token when an account has this email; answers the
    /// same either way, so nobody learns which addresses have accounts.
    pub async fn forgot_password(&self, email: &str) -> Result<(), IdentityError> {
        let Some(user) = self
            .store()
            .get_by_unique::<User>("email", &email.trim().to_lowercase())?
        else {
            return Ok(());
        };
        let token = uuid::Uuid::new_v4().to_string();
        let challenge = Challenge {
            id: sha256_hex(&token),
            user_id: user.id.clone(),
            kind: ChallengeKind::ResetPassword,
            secret_hash: sha256_hex(&token),
            expires_at: now_millis() + RESET_TOKEN_MS,
            attempts: 0,
        };
        self.store().insert(challenge).await?;
        let body = format!(
            "Reset your Warden password with this token within 30 minutes: {token}\nIf you did not ask for this, ignore this mail."
        );
        self.mailer()
            .send(&user.email, "Reset your password", &body)
            .await?;
        Ok(())
    }

    /// Sets a new password with a reset token; every older credential ends.
    pub async fn reset_password(
        &self,
        token: &str,
        new_password: &str,
    ) -> Result<(), IdentityError> {
        validate_password(new_password)?;
        let id = sha256_hex(token.trim());
        let challenge = self
            .store()
            .get::<Challenge>(&id)?
            .filter(|c| c.kind == ChallengeKind::ResetPassword && c.expires_at > now_millis())
            .ok_or_else(|| IdentityError::Invalid("Invalid or expired token".into()))?;
        self.store().remove::<Challenge>(&id).await?;
        self.set_password(&challenge.user_id, new_password).await
    }

    /// Changes a password after checking the current one; every older credential ends.
    pub async fn change_password(
        &self,
        user_id: &str,
        current: &str,
        new_password: &str,
    ) -> Result<(), IdentityError> {
        validate_password(new_password)?;
        let user = self.user(user_id)?.ok_or(IdentityError::InvalidToken)?;
        if !self.passwords.verify(&user.password_hash, current).await? {
            return Err(IdentityError::InvalidCredentials);
        }
        self.set_password(user_id, new_password).await
    }

    async fn set_password(&self, user_id: &str, password: &str) -> Result<(), IdentityError> {
        let hash = self.passwords.hash(password).await?;
        let user = self
            .store()
            .update::<User, IdentityError>(user_id, |u| {
                u.password_hash = hash.clone();
                let now = now_millis();
                u.tokens_valid_after = now;
                u.updated_at = now;
                Ok(Some(()))
            })
            .await?
            .ok_or(IdentityError::InvalidToken)?;
        self.revoke_all(user_id).await?;
        let _ = self.mailer().send(&user.email, "Your password was changed", "The password of your Warden account was changed. If this was not you, reset it at once.").await;
        Ok(())
    }

    /// Applies a profile update; a new password ends every older credential.
    pub async fn update_profile(
        &self,
        user_id: &str,
        update: ProfileUpdate,
    ) -> Result<User, IdentityError> {
        if let Some(u) = &update.username {
            validate_username(u)?;
        }
        if let Some(e) = &update.email {
            validate_email(e)?;
        }
        if let Some(n) = &update.full_name
            && n.chars().count() > 256
        {
            return Err(IdentityError::Invalid(
                "name must be at most 256 characters".into(),
            ));
        }
        let password_hash = match &update.password {
            Some(p) => {
                validate_password(p)?;
                Some(self.passwords.hash(p).await?)
            }
            None => None,
        };
        let user = self
            .store()
            .update::<User, IdentityError>(user_id, |u| {
                let now = now_millis();
                if let Some(v) = &update.username {
                    u.username = v.clone();
                }
                if let Some(v) = &update.email
                    && !v.eq_ignore_ascii_case(&u.email)
                {
                    u.email = v.clone();
                }
                if let Some(v) = &update.full_name {
                    u.full_name = Some(v.clone());
                }
                if let Some(v) = &update.preferences {
                    u.preferences = warden_domain::merge_json_objects(&u.preferences, v);
                }
                if let Some(v) = &update.roles {
                    u.roles = v.clone();
                }
                if let Some(h) = &password_hash {
                    u.password_hash = h.clone();
                    u.tokens_valid_after = now;
                }
                u.updated_at = now;
                Ok(Some(()))
            })
            .await?
            .ok_or(IdentityError::InvalidToken)?;
        if password_hash.is_some() {
            self.revoke_all(user_id).await?;
        }
        Ok(user)
    }

    /// Deletes a user and every identity record of theirs: sessions, API
    /// keys, pending codes, push tokens. Their credentials stop at once.
    pub async fn delete_user(&self, user_id: &str) -> Result<bool, IdentityError> {
        if self.user(user_id)?.is_none() {
            return Ok(false);
        }
        let store = self.store();
        let mut writes = Vec::new();
        for id in store.ids_by_index::<Session>("user", user_id)? {
            writes.push(warden_storage::Write::remove::<Session>(&id));
        }
        for id in store.ids_by_index::<ApiKey>("user", user_id)? {
            writes.push(warden_storage::Write::remove::<ApiKey>(&id));
        }
        for id in store.ids_by_index::<Challenge>("user", user_id)? {
            writes.push(warden_storage::Write::remove::<Challenge>(&id));
        }
        for id in store.ids_by_index::<PushToken>("user", user_id)? {
            writes.push(warden_storage::Write::remove::<PushToken>(&id));
        }
        writes.push(warden_storage::Write::remove::<User>(user_id));
        store.commit(writes).await?;
        tracing::info!(
            user = user_id,
            "user deleted with their sessions, keys, codes and push tokens"
        );
        Ok(true)
    }

    /// Registers (or refreshes) a push token for a user.
    pub async fn register_push_token(
        &self,
        user_id: &str,
        token: &str,
        platform: &str,
        device_name: &str,
    ) -> Result<(), IdentityError> {
        if token.trim().is_empty() || token.len() > 512 {
            return Err(IdentityError::Invalid(
                "token must be 1 to 512 characters".into(),
            ));
        }
        let record = PushToken {
            id: sha256_hex(token),
            user_id: user_id.to_owned(),
            token: token.to_owned(),
            platform: platform.to_owned(),
            device_name: device_name.to_owned(),
            created_at: now_millis(),
        };
        self.store().put(&record).await?;
        Ok(())
    }
}
