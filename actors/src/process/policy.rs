//! The policy every supervised user process runs under.

use std::path::PathBuf;
use std::sync::Arc;

use super::Limits;
use super::landlock::{self, Ruleset};

/// How user processes (agents, runtimes) run: where, how confined,
/// with what limits.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecPolicy {
    /// Warden's data dir: agents' dirs are `<data_dir>/agents/<id>/`, and
    /// a confined process can read nothing of the rest of it.
    pub data_dir: PathBuf,
    /// Run without confinement when none is available (default no: the
    /// start fails saying why).
    pub allow_unconfined: bool,
    #[serde(skip)]
    pub limits: Limits,
    /// How long a stopped process has between SIGTERM and SIGKILL.
    pub stop_grace_ms: u64,
    /// The lines a process's log keeps (a ring).
    pub log_lines: usize,
    /// The caps of each process's control groups (where the host allows).
    pub groups: super::cgroup::GroupLimits,
}

impl ExecPolicy {
    pub fn new(data_dir: PathBuf) -> ExecPolicy {
        ExecPolicy {
            data_dir,
            allow_unconfined: false,
            limits: Limits::default(),
            stop_grace_ms: 5000,
            log_lines: super::log::KEEP_LINES,
            groups: super::cgroup::GroupLimits::default(),
        }
    }

    /// The confinement a process in `work` gets, or why it cannot start.
    pub fn confinement(&self, work: &std::path::Path) -> Result<Option<Arc<Ruleset>>, String> {
        if landlock::abi() > 0 {
            return Ruleset::confine(work, &self.data_dir)
                .map(|r| Some(Arc::new(r)))
                .map_err(|e| format!("could not confine the process with Landlock: {e}"));
        }
        if self.allow_unconfined {
            return Ok(None);
        }
        Err("no confinement is available on this host (Landlock needs Linux 5.13+); an admin may set [exec] allow_unconfined = true".into())
    }
}

impl ExecPolicy {
    /// The control groups of a process named `name`; `None` (said in its
    /// log) where the host lets Warden make none.
    pub fn groups(
        &self,
        name: &str,
        log: &super::log::ProcessLog,
    ) -> Option<Arc<super::cgroup::Groups>> {
        match super::cgroup::Groups::create(name, self.groups) {
            Ok(Some(g)) => Some(Arc::new(g)),
            Ok(None) => {
                log.line("warning", "no control groups on this host: the process's memory and process count are not capped");
                None
            }
            Err(e) => {
                log.line("warning", &format!("could not make control groups ({e}): the process's memory and process count are not capped"));
                None
            }
        }
    }
}

impl Default for ExecPolicy {
    fn default() -> Self {
        ExecPolicy::new(PathBuf::from("."))
    }
}
