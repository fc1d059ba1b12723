//! Process agents (vareon myntrix agents whose `configuration.command`
//! is an argv array; VAREON-NEURONEST.md §2, §3B): an `AgentActor` per
//! running agent supervises its process. The agent record stays the core
//! one (AIWM `/api/agents`); what the process needs is an
//! [`ProcessRecord`] beside it: the desired state (so a crash or a
//! reboot re-spawns what should run), the live state, and the (pid,
//! start time) of the process, so a later run kills a leftover and never
//! a recycled pid.

mod actor;

pub use crate::process::ExecPolicy;
pub use crate::process::record::{HEALTH_WINDOW_MS, ProcState, ProcessRecord};
pub use actor::{AgentActor, AgentArgs, AgentHandle, AgentMsg, logs_series};

/// The kind of the process records of agents.
pub const KIND: &str = "agent";

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
        let mut p = ProcessRecord::new(KIND, "a1", warden_domain::Owner::default());
        let now = 100 * HEALTH_WINDOW_MS;
        assert_eq!(p.health(now), 100);
        p.restarts = vec![now - HEALTH_WINDOW_MS - 1, now - 1000];
        assert_eq!(p.health(now), 75);
        p.state = ProcState::Failed;
        assert_eq!(p.health(now), 0);
    }
}
