//! The terminal session record (VAREON-NEURONEST.md §2): keyed by its
//! user and the id the client picked, so a client's id is only ever a
//! name within its user's sessions.

use warden_domain::{Owned, Owner};
use warden_storage::{Millis, Record};

/// How many history entries a session keeps (the newest).
pub const MAX_HISTORY: usize = 500;
/// The most output an entry keeps.
pub const MAX_EXCERPT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SessionStatus {
    Active,
    Closed,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Active => "active",
            SessionStatus::Closed => "closed",
        }
    }
}

/// A command line typed in a session and the output that followed it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    pub id: u64,
    pub command: String,
    pub output: String,
    pub at: Millis,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TerminalSession {
    /// `<user_id>:<client_id>`.
    pub id: String,
    pub client_id: String,
    pub owner: Owner,
    pub status: SessionStatus,
    pub last_command: Option<String>,
    pub started_at: Millis,
    pub ended_at: Option<Millis>,
    pub cols: u16,
    pub rows: u16,
    pub pid: Option<u32>,
    pub close_reason: Option<String>,
    pub history: Vec<HistoryEntry>,
    pub next_history_id: u64,
}

warden_storage::first_layout!(TerminalSession);

/// The ordered index of a user's sessions by start.
pub const BY_USER: &str = "user_started";
/// The ordered index of active sessions: by user, and all (`*`).
pub const ACTIVE: &str = "active";

impl TerminalSession {
    pub fn key(user_id: &str, client_id: &str) -> String {
        format!("{user_id}:{client_id}")
    }

    pub fn new(owner: Owner, client_id: &str, cols: u16, rows: u16) -> TerminalSession {
        TerminalSession {
            id: TerminalSession::key(&owner.user_id, client_id),
            client_id: client_id.to_owned(),
            owner,
            status: SessionStatus::Active,
            last_command: None,
            started_at: warden_storage::now_millis(),
            ended_at: None,
            cols,
            rows,
            pid: None,
            close_reason: None,
            history: Vec::new(),
            next_history_id: 1,
        }
    }

    /// Records a command line.
    pub fn record(&mut self, command: String, at: Millis) {
        self.last_command = Some(command.clone());
        self.history.push(HistoryEntry {
            id: self.next_history_id,
            command,
            output: String::new(),
            at,
        });
        self.next_history_id += 1;
        if self.history.len() > MAX_HISTORY {
            let extra = self.history.len() - MAX_HISTORY;
            self.history.drain(..extra);
        }
    }

    /// Adds output to the last command's excerpt, up to its limit.
    pub fn add_output(&mut self, text: &str) {
        if let Some(last) = self.history.last_mut() {
            for c in text.chars() {
                if last.output.len() + c.len_utf8() > MAX_EXCERPT {
                    break;
                }
                last.output.push(c);
            }
        }
    }

    pub fn close(&mut self, reason: &str, at: Millis) {
        if self.status == SessionStatus::Active {
            self.status = SessionStatus::Closed;
            self.ended_at = Some(at);
            self.close_reason = Some(reason.to_owned());
        }
    }
}

impl Record for TerminalSession {
    const COLLECTION: &'static str = "terminal_sessions";
    fn id(&self) -> &str {
        &self.id
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        let t = warden_storage::time_sort_key(self.started_at);
        let mut out = vec![(BY_USER, self.owner.user_id.clone(), t.clone())];
        if self.status == SessionStatus::Active {
            out.push((ACTIVE, self.owner.user_id.clone(), t.clone()));
            out.push((ACTIVE, "*".into(), t));
        }
        out
    }
    const INDEX_VERSION: u32 = 1;
}

impl Owned for TerminalSession {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}
