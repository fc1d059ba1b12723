//! Interactive shells (vareon `/ws/shell/{id}`, VAREON-NEURONEST.md §3A):
//! a `TerminalActor` per session owns a pseudo-terminal and the shell on
//! it, under the policy an admin configured ([`ShellPolicy`], off by
//! default). A PTY cannot be recovered: a failed session actor is never
//! restarted; its shell is killed with it and its session closed.

mod actor;
pub mod pty;
mod record;
pub mod text;

pub use actor::{Out, TermArgs, TermHandle, TermMsg, TerminalActor, codes};
pub use record::{
    ACTIVE, BY_USER, HistoryEntry, MAX_EXCERPT, MAX_HISTORY, SessionStatus, TerminalSession,
};

use std::path::PathBuf;

/// The variables a shell gets from the server: nothing else of the
/// server's environment (its secrets) reaches it.
pub const ENV_ALLOWLIST: [&str; 7] = ["TERM", "COLORTERM", "LANG", "HOME", "USER", "SHELL", "PATH"];
/// The most input one client frame may carry.
pub const MAX_INPUT_FRAME: usize = 64 * 1024;
/// The most output one frame to the client carries.
pub const MAX_OUTPUT_FRAME: usize = 16 * 1024;
/// Output kept for a client that attaches again.
pub const SCROLLBACK: usize = 64 * 1024;
/// How long a hung-up shell's group has before it is killed.
pub const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Who may have a shell, as whom, where and for how long. Typed
/// configuration (`[shell]`), shown in the actor tree.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShellPolicy {
    /// Off unless an admin turns it on: a shell is remote code execution
    /// by design.
    pub enabled: bool,
    /// The roles that may open one.
    pub roles: Vec<String>,
    /// The user shells run as (required when Warden runs as root).
    pub run_as: Option<pty::RunAs>,
    /// The program started (the run-as user's login shell by default).
    pub program: String,
    /// Each user's shells start in `<workdir_root>/<user_id>/` (0700).
    pub workdir_root: PathBuf,
    pub idle_timeout_secs: u64,
    /// How long a shell waits for its client to come back.
    pub detach_grace_secs: u64,
    pub max_lifetime_secs: u64,
    pub max_per_user: usize,
    pub max_sessions: usize,
    /// Browser origins allowed besides the server's own.
    pub origins: Vec<String>,
    /// Each session's control groups (where the host allows them).
    pub groups: crate::process::cgroup::GroupLimits,
}

impl Default for ShellPolicy {
    fn default() -> Self {
        ShellPolicy::new(PathBuf::from("shell"))
    }
}

impl ShellPolicy {
    /// The policy with its defaults: off, admins only, 15 min idle, 60 s
    /// detach grace, 12 h, 3 per user, 32 in all.
    pub fn new(workdir_root: PathBuf) -> ShellPolicy {
        ShellPolicy {
            enabled: false,
            roles: vec!["admin".into()],
            run_as: None,
            program: "/bin/sh".into(),
            workdir_root,
            idle_timeout_secs: 15 * 60,
            detach_grace_secs: 60,
            max_lifetime_secs: 12 * 3600,
            max_per_user: 3,
            max_sessions: 32,
            origins: Vec::new(),
            groups: crate::process::cgroup::GroupLimits::default(),
        }
    }

    /// The program for a login shell of `shell`, unless it refuses logins.
    pub fn login_shell(shell: &str) -> Option<String> {
        let refuses = shell.is_empty() || shell.ends_with("/nologin") || shell.ends_with("/false");
        (!refuses).then(|| shell.to_owned())
    }

    /// The environment of a shell of `user_id`.
    pub fn env(&self, workdir: &std::path::Path) -> Vec<(String, String)> {
        let user = self.run_as.as_ref().map_or_else(
            || std::env::var("USER").unwrap_or_else(|_| "warden".into()),
            |u| u.name.clone(),
        );
        vec![
            ("TERM".into(), "xterm-256color".into()),
            ("COLORTERM".into(), "truecolor".into()),
            (
                "LANG".into(),
                std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
            ),
            ("HOME".into(), workdir.display().to_string()),
            ("USER".into(), user),
            ("SHELL".into(), self.program.clone()),
            (
                "PATH".into(),
                "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin".into(),
            ),
        ]
    }
}
