//! The one mailer: verification codes, reset links and security notices.
//!
//! Every mail is recorded in the outbox (`GET /admin/outbox`) and logged
//! (recipient and subject; bodies hold secrets and stay out of logs).
//! No SMTP transport is built in yet: mail is kept, not sent, and says so
//! in its status (`outbox`).

use warden_storage::model::Mail;
use warden_storage::{Store, new_object_id, now_millis};

use crate::IdentityError;

#[derive(Clone)]
pub struct Mailer {
    store: Store,
}

impl Mailer {
    pub(crate) fn new(store: Store) -> Mailer {
        Mailer { store }
    }

    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<Mail, IdentityError> {
        let mail = Mail {
            id: new_object_id(),
            to: to.to_owned(),
            subject: subject.to_owned(),
            body: body.to_owned(),
            created_at: now_millis(),
            status: "outbox".into(),
        };
        tracing::info!(to = %mail.to, subject = %mail.subject, "mail queued in the outbox");
        Ok(self.store.insert(mail).await?)
    }

    /// The outbox, newest first; optionally only mail to one address.
    pub fn outbox(&self, to: Option<&str>) -> Result<Vec<Mail>, IdentityError> {
        let mut mails = match to {
            Some(addr) => {
                let mut out = Vec::new();
                for id in self
                    .store
                    .ids_by_index::<Mail>("to", &addr.to_lowercase())?
                {
                    out.extend(self.store.get::<Mail>(&id)?);
                }
                out
            }
            None => self.store.all::<Mail>()?,
        };
        mails.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(mails)
    }
}
