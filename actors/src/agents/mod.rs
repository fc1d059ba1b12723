//! Process agents (vareon myntrix agents whose `configuration.command`
//! is an argv array; VAREON-NEURONEST.md §2, §3B): an `AgentActor` per
//! running agent supervises its process. The agent record stays the core
//! one (AIWM `/api/agents`); what the process needs is an
//! [`AgentProcess`] record beside it: the desired state (so a crash or a
//! reboot re-spawns what should run), the live state, and the (pid,
//! start time) of the process, so a later run kills a leftover and never
//! a recycled pid.

mod actor;

pub use actor::{AgentActor, AgentArgs, AgentHandle, AgentMsg, ExecPolicy, logs_series};

use warden_domain::{Agent, Owned, Owner};
use warden_storage::{Millis, Record};

/// An agent process's state as myntrix shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProcState {
    Stopped,
    Running,
    Restarting,
    Failed,
}

impl ProcState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcState::Stopped => "stopped",
            ProcState::Running => "running",
            ProcState::Restarting => "restarting",
            ProcState::Failed => "failed",
        }
    }
}

/// How long restarts count against an agent's health.
pub const HEALTH_WINDOW_MS: Millis = 10 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentProcess {
    /// The agent's `_id`.
    pub id: String,
    /// Whether it should run.
    pub desired: bool,
    pub state: ProcState,
    pub pid: Option<u32>,
    /// The process's start time (clock ticks after boot).
    pub started: Option<u64>,
    /// When it was restarted after its process ended unasked (newest last).
    pub restarts: Vec<Millis>,
    pub last_run: Option<Millis>,
    pub failure: Option<String>,
    pub owner: Owner,
}

warden_storage::first_layout!(AgentProcess);

impl AgentProcess {
    pub fn new(agent: &Agent) -> AgentProcess {
        AgentProcess {
            id: agent.id.clone(),
            desired: false,
            state: ProcState::Stopped,
            pid: None,
            started: None,
            restarts: Vec::new(),
            last_run: None,
            failure: None,
            owner: agent.owner.clone(),
        }
    }

    /// 0 when failed, else 100 less 25 for each restart in the last 10
    /// minutes.
    pub fn health(&self, now: Millis) -> u32 {
        if self.state == ProcState::Failed {
            return 0;
        }
        let recent = self
            .restarts
            .iter()
            .filter(|t| now - **t <= HEALTH_WINDOW_MS)
            .count() as u32;
        100u32.saturating_sub(25 * recent)
    }
}

/// The ordered index of agent processes that should run (boot).
pub const DESIRED: &str = "desired";

impl Record for AgentProcess {
    const COLLECTION: &'static str = "agent_processes";
    fn id(&self) -> &str {
        &self.id
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        if self.desired {
            vec![(DESIRED, "*".into(), self.id.as_bytes().to_vec())]
        } else {
            Vec::new()
        }
    }
    const INDEX_VERSION: u32 = 1;
}

impl Owned for AgentProcess {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// The argv of a process agent: `configuration.command`, an array of
/// strings. `Ok(None)`: a logical agent (no command).
pub fn command_of(configuration: &str) -> Result<Option<Vec<String>>, String> {
    let config: serde_json::Value = match serde_json::from_str(configuration) {
        Ok(v) => v,
        Err(_) => return Ok(None),
    };
    match config.get("command") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Array(items)) => {
            let argv: Option<Vec<String>> = items
                .iter()
                .map(|i| {
                    i.as_str()
                        .filter(|s| !s.is_empty() && !s.contains('\0'))
                        .map(str::to_owned)
                })
                .collect();
            match argv {
                Some(a) if !a.is_empty() && a.len() <= 256 => Ok(Some(a)),
                _ => Err("configuration.command must be an array of 1 to 256 non-empty strings (an argv; never run through a shell)".into()),
            }
        }
        Some(_) => Err(
            "configuration.command must be an array of strings (an argv), not a shell string"
                .into(),
        ),
    }
}

/// The working directory of a process agent relative to its own dir:
/// `configuration.cwd`, which must stay inside it.
pub fn cwd_of(configuration: &str) -> Result<Option<String>, String> {
    let config: serde_json::Value = serde_json::from_str(configuration).unwrap_or_default();
    match config.get("cwd") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(c)) => {
            let p = std::path::Path::new(c);
            let inside = !p.is_absolute()
                && p.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::Normal(_) | std::path::Component::CurDir
                    )
                });
            if inside {
                Ok(Some(c.clone()))
            } else {
                Err(format!(
                    "configuration.cwd {c:?} must be a relative path inside the agent's directory"
                ))
            }
        }
        Some(_) => Err("configuration.cwd must be a string".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_argv_arrays_and_cwds_stay_inside() {
        assert_eq!(command_of(r#"{"model":"x"}"#), Ok(None));
        assert_eq!(
            command_of(r#"{"command":["python3","bot.py"]}"#),
            Ok(Some(vec!["python3".into(), "bot.py".into()]))
        );
        assert!(command_of(r#"{"command":"python3 bot.py"}"#).is_err());
        assert!(command_of(r#"{"command":[]}"#).is_err());
        assert!(command_of(r#"{"command":["a", 1]}"#).is_err());
        assert_eq!(cwd_of(r#"{"cwd":"sub/dir"}"#), Ok(Some("sub/dir".into())));
        for bad in [
            r#"{"cwd":"../x"}"#,
            r#"{"cwd":"/etc"}"#,
            r#"{"cwd":"a/../../b"}"#,
        ] {
            assert!(cwd_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn health_falls_with_recent_restarts_and_is_zero_when_failed() {
        let mut p = AgentProcess::new(&Agent::new(Owner::default(), "u"));
        let now = 100 * HEALTH_WINDOW_MS;
        assert_eq!(p.health(now), 100);
        p.restarts = vec![now - HEALTH_WINDOW_MS - 1, now - 1000];
        assert_eq!(p.health(now), 75);
        p.state = ProcState::Failed;
        assert_eq!(p.health(now), 0);
    }
}
