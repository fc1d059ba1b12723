//! Telegram frontends (contenox `/telegram-frontends`): a bot whose
//! Telegram chats are conversations. Each frontend has a supervised
//! `TelegramActor`, the one writer of its record, which runs the bot's
//! long-polling client of the Telegram Bot API (`getUpdates`,
//! `sendMessage`) against a configurable API base URL. Each Telegram
//! chat maps to one conversation of the frontend's owner; the answer is
//! the conversation's turn ([`Chatter`], behind a trait so that this
//! crate does not know the supervisors).

mod actor;
pub mod bot;
mod record;

pub use actor::{Chatter, TelegramActor, TgArgs, TgHandle, TgMsg};
pub use record::{FRONTEND_STATUSES, FrontendInput, TelegramFrontend};

/// Re-indexes the frontend records once when their indexes changed.
pub async fn ensure_indexes(
    store: &warden_storage::Store,
) -> Result<(), warden_storage::StorageError> {
    store.ensure_indexes::<TelegramFrontend>().await?;
    Ok(())
}
