//! A Telegram frontend's stored shape: contenox's fields (`userId`,
//! `chatChain`, `description`, `botToken`, `syncInterval`, `status`,
//! `lastOffset`, `lastHeartbeat`, `lastError`). The bot token is a
//! secret: stored, used, never shown.

use warden_domain::rules::{Checks, MAX_SHORT};
use warden_domain::{Audit, Owned, Owner, set};
use warden_storage::{Millis, Record, new_uuid};

use crate::DomainError;

warden_storage::first_layout!(TelegramFrontend);

/// `active`: the bot polls; `inactive`: it does not.
pub const FRONTEND_STATUSES: [&str; 2] = ["active", "inactive"];

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TelegramFrontend {
    pub id: String,
    pub chat_chain: String,
    pub description: String,
    pub bot_token: String,
    /// Seconds a poll waits for updates (Telegram's long-poll `timeout`).
    pub sync_interval: u32,
    pub status: String,
    /// The next update the bot asks for (Telegram's `offset`).
    pub last_offset: i64,
    pub last_heartbeat: Option<Millis>,
    pub last_error: String,
    /// Updates answered.
    pub handled: u64,
    pub owner: Owner,
    pub audit: Audit,
}

/// What a client may set; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct FrontendInput {
    pub chat_chain: Option<String>,
    pub description: Option<String>,
    pub bot_token: Option<String>,
    pub sync_interval: Option<u64>,
    pub status: Option<String>,
}

/// Telegram's tokens: `<digits>:<letters, digits, - and _>`.
fn is_token(t: &str) -> bool {
    let Some((bot, secret)) = t.split_once(':') else {
        return false;
    };
    !bot.is_empty()
        && bot.chars().all(|c| c.is_ascii_digit())
        && secret.len() >= 8
        && secret.len() <= 128
        && secret
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl TelegramFrontend {
    pub fn new(owner: Owner, by: &str) -> TelegramFrontend {
        TelegramFrontend {
            id: new_uuid(),
            chat_chain: String::new(),
            description: String::new(),
            bot_token: String::new(),
            sync_interval: 25,
            status: "active".into(),
            last_offset: 0,
            last_heartbeat: None,
            last_error: String::new(),
            handled: 0,
            owner,
            audit: Audit::new(by),
        }
    }

    /// Applies a checked input; `create` makes the bot token required.
    pub fn apply(&mut self, input: FrontendInput, create: bool) -> Result<(), DomainError> {
        let mut c = Checks::new();
        c.text("chatChain", &input.chat_chain, false, MAX_SHORT);
        c.text("description", &input.description, false, 4096);
        match &input.bot_token {
            None if create => c.fail("botToken must be a string".into()),
            Some(t) if !is_token(t) => {
                c.fail("botToken must be a Telegram bot token (<bot id>:<secret>)".into())
            }
            _ => {}
        }
        if input.sync_interval.is_some_and(|s| s > 50) {
            c.fail("syncInterval must be between 0 and 50 seconds".into());
        }
        c.one_of("status", &input.status, &FRONTEND_STATUSES, false);
        c.finish()?;
        set(&mut self.chat_chain, input.chat_chain);
        set(&mut self.description, input.description);
        if let Some(t) = input.bot_token
            && t != self.bot_token
        {
            // Another bot: its updates start from its own beginning.
            self.bot_token = t;
            self.last_offset = 0;
        }
        set(
            &mut self.sync_interval,
            input.sync_interval.map(|s| s as u32),
        );
        set(&mut self.status, input.status);
        Ok(())
    }

    /// The conversation key of one of the bot's Telegram chats.
    pub fn conversation_key(&self, chat_id: i64) -> String {
        format!("telegram-{}-{chat_id}", self.id)
    }

    pub fn user_scope(org: &str, user: &str) -> String {
        format!("{org}/{user}")
    }
}

impl Record for TelegramFrontend {
    const COLLECTION: &'static str = "telegram_frontends";
    fn id(&self) -> &str {
        &self.id
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        let mut out = warden_domain::created_order(&self.owner.org_id, self.audit.created_at);
        out.push((
            "user",
            TelegramFrontend::user_scope(&self.owner.org_id, &self.owner.user_id),
            warden_storage::time_sort_key(self.audit.created_at),
        ));
        out
    }
    const INDEX_VERSION: u32 = 1;
}

impl Owned for TelegramFrontend {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_intervals_are_checked() {
        let mut f = TelegramFrontend::new(Owner::default(), "u");
        let bad = FrontendInput {
            bot_token: Some("not a token".into()),
            ..Default::default()
        };
        assert!(f.apply(bad, true).is_err());
        assert!(f.apply(FrontendInput::default(), true).is_err());
        let ok = FrontendInput {
            bot_token: Some("123456:ABC-def_ghi".into()),
            sync_interval: Some(1),
            ..Default::default()
        };
        f.apply(ok, true).unwrap();
        f.last_offset = 40;
        let slow = FrontendInput {
            sync_interval: Some(51),
            ..Default::default()
        };
        assert!(f.apply(slow, false).is_err());
        // Another bot starts from its first update.
        let other = FrontendInput {
            bot_token: Some("987654:ZYXwvu12".into()),
            ..Default::default()
        };
        f.apply(other, false).unwrap();
        assert_eq!(f.last_offset, 0);
    }
}
