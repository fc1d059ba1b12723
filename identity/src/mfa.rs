//! TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, one step of drift either
//! way). Each accepted code's step is remembered, so a code works once.

use crate::model::User;
use totp_rs::{Algorithm, Builder, Secret, Totp};
use warden_storage::now_millis;

use crate::{Identity, IdentityError, IssuedToken};

const ISSUER: &str = "Warden";

/// What MFA setup shows the user, once.
#[derive(Debug, Clone)]
pub struct MfaSetup {
    pub secret: String,
    pub provisioning_uri: String,
    /// `data:image/png;base64,...`
    pub qr_code: String,
}

fn totp(secret_b32: &str, account: &str) -> Result<Totp, IdentityError> {
    let secret = Secret::try_from_base32(secret_b32)
        .map_err(|e| IdentityError::Invalid(format!("bad MFA secret: {e:?}")))?;
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(secret)
        .with_account_name(account.replace(':', "_"))
        .with_issuer(Some(ISSUER))
        .build()
        .map_err(|e| IdentityError::Invalid(format!("bad MFA secret: {e:?}")))
}

/// The step a valid code belongs to (now, one before or one after).
fn matching_step(t: &Totp, code: &str) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.check(code, (now_millis() / 1000) as u64)
}

impl Identity {
    /// Starts MFA setup: a new secret, stored but not yet enabled.
    pub async fn mfa_setup(&self, user_id: &str) -> Result<MfaSetup, IdentityError> {
        let secret = Secret::generate().to_base32();
        let user = self
            .store()
            .update::<User, IdentityError>(user_id, |u| {
                if u.mfa_enabled {
                    return Err(IdentityError::Invalid(
                        "MFA is already enabled; disable it first".into(),
                    ));
                }
                u.mfa_secret = Some(secret.clone());
                u.mfa_last_step = 0;
                Ok(Some(()))
            })
            .await?
            .ok_or(IdentityError::InvalidToken)?;
        let t = totp(&secret, &user.email)?;
        let qr = t
            .to_qr_base64()
            .map_err(|e| IdentityError::Invalid(format!("QR code: {e:?}")))?;
        let uri = t
            .to_url()
            .map_err(|e| IdentityError::Invalid(format!("otpauth URI: {e:?}")))?;
        Ok(MfaSetup {
            secret,
            provisioning_uri: uri,
            qr_code: format!("data:image/png;base64,{qr}"),
        })
    }

    /// Checks a code against the user's secret and records its step, so it
    /// cannot be used again. Returns false for wrong, reused or expired codes.
    async fn accept_code(
        &self,
        user_id: &str,
        code: &str,
        require_enabled: Option<bool>,
    ) -> Result<bool, IdentityError> {
        let mut accepted = false;
        self.store()
            .update::<User, IdentityError>(user_id, |u| {
                accepted = false;
                if require_enabled.is_some_and(|e| e != u.mfa_enabled) {
                    return Ok(None);
                }
                let Some(secret) = &u.mfa_secret else {
                    return Ok(None);
                };
                match matching_step(&totp(secret, &u.email)?, code) {
                    Some(step) if step > u.mfa_last_step => {
                        u.mfa_last_step = step;
                        accepted = true;
                        Ok(Some(()))
                    }
                    _ => Ok(None),
                }
            })
            .await?;
        Ok(accepted)
    }

    /// Enables MFA with a first valid code.
    pub async fn mfa_enable(&self, user_id: &str, code: &str) -> Result<(), IdentityError> {
        if !self.accept_code(user_id, code, Some(false)).await? {
            return Err(IdentityError::Invalid("invalid MFA code".into()));
        }
        self.set_mfa(user_id, true).await?;
        if let Some(u) = self.user(user_id)? {
            let _ = self.mailer().send(&u.email, "Two-factor authentication enabled", "Two-factor authentication is now on for your account. If this was not you, reset your password at once.").await;
        }
        Ok(())
    }

    pub async fn mfa_disable(&self, user_id: &str, code: &str) -> Result<(), IdentityError> {
        if !self.accept_code(user_id, code, Some(true)).await? {
            return Err(IdentityError::Invalid("invalid MFA code".into()));
        }
        self.set_mfa(user_id, false).await?;
        if let Some(u) = self.user(user_id)? {
            let _ = self.mailer().send(&u.email, "Two-factor authentication disabled", "Two-factor authentication is now off for your account. If this was not you, reset your password at once.").await;
        }
        Ok(())
    }

    async fn set_mfa(&self, user_id: &str, enabled: bool) -> Result<(), IdentityError> {
        self.store()
            .update::<User, IdentityError>(user_id, |u| {
                u.mfa_enabled = enabled;
                if !enabled {
                    u.mfa_secret = None;
                }
                u.updated_at = now_millis();
                Ok(Some(()))
            })
            .await?;
        Ok(())
    }

    /// The second step of an MFA login: a valid code makes the user's
    /// pending sessions usable and returns a fresh one.
    pub async fn mfa_validate(
        &self,
        login: &str,
        code: &str,
    ) -> Result<IssuedToken, IdentityError> {
        let user = self
            .find_login(login)?
            .filter(|u| u.mfa_enabled)
            .ok_or(IdentityError::InvalidCredentials)?;
        if !self.accept_code(&user.id, code, Some(true)).await? {
            return Err(IdentityError::InvalidCredentials);
        }
        self.activate_pending_sessions(&user.id).await?;
        self.issue_session(&user, false).await
    }
}
