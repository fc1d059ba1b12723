//! Telegram frontends: the kind definition for the supervisor (every
//! active frontend's bot polls from boot), the service the contenox
//! routes call, and the conversation core as the bots' [`Chatter`]: each
//! Telegram chat is one conversation of the frontend's owner.

use std::sync::Arc;

use ractor::ActorRef;
use warden_actors::DomainError;
use warden_actors::conversation::{ConversationInput, Turn};
use warden_actors::execution::BoxFuture;
use warden_actors::telegram::{
    Chatter, FrontendInput, TelegramActor, TelegramFrontend, TgArgs, TgHandle, TgMsg,
};
use warden_domain::Owner;
use warden_storage::{PageQuery, Store};

use crate::{Conversations, Kind, KindRef};

/// Telegram's own Bot API.
pub const DEFAULT_TELEGRAM_API: &str = "https://api.telegram.org";

pub struct TelegramKind {
    store: Store,
    chatter: Arc<dyn Chatter>,
    client: reqwest::Client,
    api_base: String,
}

impl TelegramKind {
    pub(crate) fn new(store: Store, chatter: Arc<dyn Chatter>, api_base: String) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        TelegramKind {
            store,
            chatter,
            client,
            api_base,
        }
    }
}

impl Kind for TelegramKind {
    type Actor = TelegramActor;
    type Msg = TgMsg;
    type Args = TgArgs;
    const KIND: &'static str = "telegram";
    const SUPERVISOR: &'static str = "telegram-frontends";

    fn actor(&self) -> TelegramActor {
        TelegramActor
    }

    fn args(&self, id: &str) -> TgArgs {
        TgArgs {
            store: self.store.clone(),
            id: id.to_owned(),
            chatter: self.chatter.clone(),
            client: self.client.clone(),
            api_base: self.api_base.clone(),
        }
    }

    fn exists(&self, id: &str) -> Result<bool, DomainError> {
        Ok(self.store.get::<TelegramFrontend>(id)?.is_some())
    }

    /// Every active bot polls from boot.
    fn boot_ids(&self) -> Vec<String> {
        match self.store.all::<TelegramFrontend>() {
            Ok(all) => all
                .into_iter()
                .filter(|f| f.status == "active")
                .map(|f| f.id)
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "could not read the telegram frontends at boot");
                Vec::new()
            }
        }
    }

    fn failed(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    async fn mark_failed(&self, id: &str, reason: &str) {
        tracing::error!(frontend = id, %reason, "the telegram frontend's actor failed too often; its bot stops until it is changed or the server restarts");
    }

    async fn clear_failed(&self, _id: &str) {}

    fn crash(actor: &ActorRef<TgMsg>) {
        TgHandle(actor.clone()).crash();
    }
}

/// Each Telegram chat of a bot is a conversation of the bot's owner,
/// keyed by the bot and the chat.
impl Chatter for Conversations {
    fn answer(
        &self,
        f: TelegramFrontend,
        chat_id: i64,
        from: String,
        text: String,
    ) -> BoxFuture<Result<String, DomainError>> {
        let convs = self.clone();
        Box::pin(async move {
            let org = f.owner.org_id.clone();
            let key = f.conversation_key(chat_id);
            let c = match convs.resolve(&org, &key)? {
                Some(c) => c,
                None => {
                    let input = ConversationInput {
                        conversation_id: Some(key.clone()),
                        title: Some(format!("Telegram: {from}")),
                        extra: serde_json::json!({"telegramChatId": chat_id, "telegramFrontendId": f.id})
                            .to_string(),
                        ..Default::default()
                    };
                    let owner = f.owner.clone();
                    match convs
                        .create(input, owner, &f.owner.user_id, "telegram")
                        .await
                    {
                        Ok(c) => c,
                        // Created meanwhile (a concurrent update of the same chat).
                        Err(DomainError::Conflict { .. }) => convs
                            .resolve(&org, &key)?
                            .ok_or_else(|| DomainError::Unavailable("the chat vanished".into()))?,
                        Err(e) => return Err(e),
                    }
                }
            };
            let turn = Turn {
                org,
                user: f.owner.user_id.clone(),
                username: from,
                text,
                ..Default::default()
            };
            Ok(convs.turn(&c.id, turn).await?.answer.content)
        })
    }
}

/// Telegram frontend requests; reads go to the store.
#[derive(Clone)]
pub struct Telegram {
    kind: KindRef<TelegramKind>,
    store: Store,
}

impl Telegram {
    pub(crate) fn new(kind: KindRef<TelegramKind>, store: Store) -> Self {
        Telegram { kind, store }
    }

    /// A frontend of `org`.
    pub fn get(&self, org: &str, id: &str) -> Result<TelegramFrontend, DomainError> {
        self.store
            .get::<TelegramFrontend>(id)?
            .filter(|f| f.owner.org_id == org)
            .ok_or_else(|| DomainError::NotFound {
                kind: "Telegram frontend",
                id: id.to_owned(),
            })
    }

    /// Stores a new frontend and starts its bot.
    pub async fn create(
        &self,
        input: FrontendInput,
        owner: Owner,
        by: &str,
    ) -> Result<TelegramFrontend, DomainError> {
        let mut f = TelegramFrontend::new(owner, by);
        f.apply(input, true)?;
        let f = self.store.insert(f).await?;
        if f.status == "active" {
            self.kind.get_or_activate(&f.id).await?;
        }
        Ok(f)
    }

    /// The frontends of `org`, or of one of its users, oldest first.
    pub fn list(
        &self,
        org: &str,
        user: Option<&str>,
    ) -> Result<Vec<TelegramFrontend>, DomainError> {
        let (index, scope) = match user {
            Some(u) => ("user", TelegramFrontend::user_scope(org, u)),
            None => (warden_domain::CREATED, warden_domain::org_scope(Some(org))),
        };
        let page = self.store.page::<TelegramFrontend>(&PageQuery {
            index,
            scope: &scope,
            descending: false,
            skip: 0,
            after: None,
            limit: usize::MAX,
        })?;
        Ok(page.items.into_iter().map(|(_, f)| f).collect())
    }

    pub async fn update(
        &self,
        id: &str,
        input: FrontendInput,
        by: &str,
    ) -> Result<TelegramFrontend, DomainError> {
        self.kind
            .with_actor(id, |a| {
                let input = input.clone();
                async move { TgHandle(a).update(input, by).await }
            })
            .await
    }

    pub async fn delete(&self, id: &str) -> Result<(), DomainError> {
        self.kind
            .with_actor(id, |a| async move { TgHandle(a).delete().await })
            .await
    }
}
