//! The one mailer: verification codes, reset links and security notices.
//!
//! Every mail is recorded in the outbox (`GET /admin/outbox`) and logged
//! (recipient and subject; bodies hold secrets and stay out of logs).
//! With SMTP configured (lettre) it is also sent, and its outbox status
//! says `delivered` or the error; without, the status is `outbox`. A mail
//! that fails to send never fails the request that caused it: the user
//! can ask again (resend, forgot password).

use std::time::Duration;

use crate::model::Mail;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use warden_storage::{Store, new_object_id, now_millis};

use crate::IdentityError;

/// How to reach the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on the same host or network.
    None,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
}

#[derive(Clone)]
pub struct Mailer {
    store: Store,
    smtp: Option<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>,
}

impl Mailer {
    pub(crate) fn new(store: Store, smtp: Option<SmtpConfig>) -> Result<Mailer, IdentityError> {
        let smtp = match smtp {
            None => None,
            Some(c) => {
                let builder = match c.security {
                    SmtpSecurity::Starttls => {
                        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&c.host)
                    }
                    SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&c.host),
                    SmtpSecurity::None => Ok(
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host),
                    ),
                }
                .map_err(|e| IdentityError::Invalid(format!("smtp: {e}")))?;
                let mut builder = builder.port(c.port).timeout(Some(Duration::from_secs(10)));
                if let (Some(u), Some(p)) = (c.username, c.password) {
                    builder = builder.credentials(Credentials::new(u, p));
                }
                let from: Mailbox = c
                    .from
                    .parse()
                    .map_err(|e| IdentityError::Invalid(format!("smtp from address: {e}")))?;
                Some((builder.build(), from))
            }
        };
        Ok(Mailer { store, smtp })
    }

    async fn deliver(&self, to: &str, subject: &str, body: &str) -> String {
        let Some((transport, from)) = &self.smtp else {
            return "outbox".into();
        };
        let message = to
            .parse::<Mailbox>()
            .map_err(|e| e.to_string())
            .and_then(|to| {
                Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(subject)
                    .body(body.to_owned())
                    .map_err(|e| e.to_string())
            });
        match message {
            Err(e) => format!("error: {e}"),
            Ok(m) => match transport.send(m).await {
                Ok(_) => "delivered".into(),
                Err(e) => {
                    tracing::warn!(%to, error = %e, "mail could not be sent");
                    format!("error: {e}")
                }
            },
        }
    }

    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<Mail, IdentityError> {
        let status = self.deliver(to, subject, body).await;
        let mail = Mail {
            id: new_object_id(),
            to: to.to_owned(),
            subject: subject.to_owned(),
            body: body.to_owned(),
            created_at: now_millis(),
            status,
        };
        tracing::info!(to = %mail.to, subject = %mail.subject, status = %mail.status, "mail");
        Ok(self.store.insert(mail).await?)
    }

    /// The outbox, newest first; optionally only mail to one address.
    pub fn outbox(&self, to: Option<&str>) -> Result<Vec<Mail>, IdentityError> {
        let mut mails = match to {
            Some(addr) => self.store.by_index::<Mail>("to", &addr.to_lowercase())?,
            None => self.store.all::<Mail>()?,
        };
        mails.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(mails)
    }
}
