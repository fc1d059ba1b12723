//! Interactive shells: the kind definition for the supervisor (no
//! restarts: a PTY cannot be recovered, so a failed session's actor is
//! given up on and its session closed with the reason) and the service
//! the shell socket and the arcana terminal routes call.

use std::sync::Arc;

use ractor::ActorRef;
use warden_actors::DomainError;
use warden_actors::terminal::{
    ACTIVE, BY_USER, SessionStatus, ShellPolicy, TermArgs, TermHandle, TermMsg, TerminalActor,
    TerminalSession, codes,
};
use warden_domain::Owner;
use warden_storage::{Store, now_millis};

use crate::{Kind, KindRef};

pub struct TerminalKind {
    store: Store,
    policy: Arc<ShellPolicy>,
}

impl Kind for TerminalKind {
    type Actor = TerminalActor;
    type Msg = TermMsg;
    type Args = TermArgs;
    const KIND: &'static str = "terminal";
    const SUPERVISOR: &'static str = "terminals";

    fn actor(&self) -> TerminalActor {
        TerminalActor
    }

    fn args(&self, id: &str) -> TermArgs {
        TermArgs {
            store: self.store.clone(),
            id: id.to_owned(),
            policy: self.policy.clone(),
        }
    }

    fn exists(&self, id: &str) -> Result<bool, DomainError> {
        Ok(self
            .store
            .get::<TerminalSession>(id)?
            .is_some_and(|s| s.status == SessionStatus::Active))
    }

    /// None: sessions left active by an earlier run are closed at start.
    fn boot_ids(&self) -> Vec<String> {
        Vec::new()
    }

    fn failed(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The session ends with the reason; its shell went with its actor
    /// (dropping the PTY kills the shell's process group).
    async fn mark_failed(&self, id: &str, reason: &str) {
        let reason = format!("the session's actor failed: {reason}");
        if let Err(e) = close_record(&self.store, id, &reason).await {
            tracing::error!(session = id, error = %e, "could not close a failed terminal session");
        }
    }

    async fn clear_failed(&self, _id: &str) {}

    fn crash(actor: &ActorRef<TermMsg>) {
        TermHandle(actor.clone()).crash();
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&*self.policy).ok()
    }

    /// Idle, lifetime and detach limits, checked each second.
    fn tick(&self) -> Option<crate::kind::Tick<TermMsg>> {
        Some((std::time::Duration::from_secs(1), || TermMsg::Tick))
    }
}

async fn close_record(store: &Store, id: &str, reason: &str) -> Result<(), DomainError> {
    store
        .update::<TerminalSession, DomainError>(id, |s| {
            if s.status == SessionStatus::Closed {
                return Ok(None);
            }
            s.close(reason, now_millis());
            Ok(Some(()))
        })
        .await?;
    Ok(())
}

/// Why a session cannot be opened.
#[derive(Debug)]
pub enum OpenRefusal {
    /// The id names one of the user's closed sessions.
    Closed,
    /// A cap is reached (per user or in all).
    TooMany(String),
    Failed(DomainError),
}

impl From<DomainError> for OpenRefusal {
    fn from(e: DomainError) -> Self {
        OpenRefusal::Failed(e)
    }
}

impl From<warden_storage::StorageError> for OpenRefusal {
    fn from(e: warden_storage::StorageError) -> Self {
        OpenRefusal::Failed(e.into())
    }
}

/// Terminal sessions.
#[derive(Clone)]
pub struct Terminals {
    kind: KindRef<TerminalKind>,
    store: Store,
}

impl Terminals {
    pub(crate) fn kind(store: Store, policy: Arc<ShellPolicy>) -> TerminalKind {
        TerminalKind { store, policy }
    }

    /// The service; sessions a previous run left active are closed now
    /// (their shells died with it).
    pub(crate) async fn new(kind: KindRef<TerminalKind>, store: Store) -> Terminals {
        match store.in_scope::<TerminalSession>(ACTIVE, "*") {
            Ok(left) => {
                for s in left {
                    if let Err(e) = close_record(&store, &s.id, "server restarted").await {
                        tracing::warn!(session = %s.id, error = %e, "could not close a session left active");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "could not read the terminal sessions at boot"),
        }
        Terminals { kind, store }
    }

    pub fn policy(&self) -> &ShellPolicy {
        &self.kind.kind().policy
    }

    /// A user's session by the client's id.
    pub fn session(
        &self,
        user_id: &str,
        client_id: &str,
    ) -> Result<Option<TerminalSession>, DomainError> {
        Ok(self
            .store
            .get::<TerminalSession>(&TerminalSession::key(user_id, client_id))?)
    }

    /// A user's sessions, newest first.
    pub fn sessions(&self, user_id: &str) -> Result<Vec<TerminalSession>, DomainError> {
        let mut all = self.store.in_scope::<TerminalSession>(BY_USER, user_id)?;
        all.reverse();
        Ok(all)
    }

    /// The running session `client_id` of the user, started when new.
    pub async fn open(
        &self,
        owner: Owner,
        client_id: &str,
        size: (u16, u16),
    ) -> Result<TermHandle, OpenRefusal> {
        let id = TerminalSession::key(&owner.user_id, client_id);
        match self.store.get::<TerminalSession>(&id)? {
            Some(s) if s.status == SessionStatus::Closed => return Err(OpenRefusal::Closed),
            Some(_) => {}
            None => {
                let policy = self.policy();
                let mine = self
                    .store
                    .scope_count::<TerminalSession>(ACTIVE, &owner.user_id)?;
                if mine as usize >= policy.max_per_user {
                    return Err(OpenRefusal::TooMany(format!(
                        "at most {} terminal sessions per user; close one first",
                        policy.max_per_user
                    )));
                }
                let all = self.store.scope_count::<TerminalSession>(ACTIVE, "*")?;
                if all as usize >= policy.max_sessions {
                    return Err(OpenRefusal::TooMany(format!(
                        "the server runs its maximum of {} terminal sessions",
                        policy.max_sessions
                    )));
                }
                let new = TerminalSession::new(owner, client_id, size.0, size.1);
                match self.store.insert(new).await {
                    Ok(_) | Err(warden_storage::StorageError::Conflict { .. }) => {}
                    Err(e) => return Err(OpenRefusal::Failed(e.into())),
                }
            }
        }
        match self.kind.get_or_activate(&id).await {
            Ok(actor) => Ok(TermHandle(actor)),
            Err(DomainError::NotFound { .. } | DomainError::Failed { .. }) => {
                Err(OpenRefusal::Closed)
            }
            Err(e) => {
                // A shell that could not start: the session ends saying why.
                let _ = close_record(&self.store, &id, &e.to_string()).await;
                Err(OpenRefusal::Failed(e))
            }
        }
    }

    /// Ends a user's session: its shell is hung up and killed, its client
    /// gets `code`. A session already closed is answered as it is.
    pub async fn close(
        &self,
        user_id: &str,
        client_id: &str,
        reason: &str,
        code: u16,
    ) -> Result<Option<TerminalSession>, DomainError> {
        let Some(s) = self.session(user_id, client_id)? else {
            return Ok(None);
        };
        if s.status == SessionStatus::Closed {
            return Ok(Some(s));
        }
        if let Ok(actor) = self.kind.get_or_activate(&s.id).await {
            match TermHandle(actor).close(reason, code).await {
                Ok(s) => return Ok(Some(s)),
                Err(e) => {
                    tracing::debug!(session = %s.id, error = %e, "the session's actor went away while closing")
                }
            }
        }
        close_record(&self.store, &s.id, reason).await?;
        self.session(user_id, client_id)
    }

    /// Ends every active session of a user (a credential revoked).
    pub async fn close_all(&self, user_id: &str, reason: &str) -> Result<(), DomainError> {
        for s in self.store.in_scope::<TerminalSession>(ACTIVE, user_id)? {
            self.close(user_id, &s.client_id, reason, codes::REVOKED)
                .await?;
        }
        Ok(())
    }
}
