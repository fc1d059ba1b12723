//! `AgentActor`: runs one process agent's process for as long as the
//! actor lives. The process ending unasked fails the actor, so the
//! supervisor restarts it (a fresh process, counted against the agent's
//! health) until its restart limit, then marks it failed.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use warden_domain::Agent;
use warden_storage::Store;

use super::{ProcState, ProcessRecord, command_of, cwd_of};
use crate::DomainError;
use crate::process::log::ProcessLog;
use crate::process::{ExecPolicy, Process, Spec};

type Reply<T> = RpcReplyPort<Result<T, DomainError>>;

pub enum AgentMsg {
    /// The process ended (how).
    Exited(String),
    /// Stop the process (SIGTERM, SIGKILL after the grace) and the actor.
    Stop(Reply<()>),
    Crash,
}

pub struct AgentArgs {
    pub store: Store,
    pub id: String,
    pub policy: Arc<ExecPolicy>,
}

pub struct AgentState {
    store: Store,
    id: String,
    policy: Arc<ExecPolicy>,
    process: Option<Process>,
    stopping: bool,
    log: ProcessLog,
}

pub struct AgentActor;

/// The series of an agent's output and lifecycle lines.
pub fn logs_series(id: &str) -> String {
    format!("agent/{id}/logs")
}

/// An agent's log.
fn log_of(store: &Store, id: &str, keep: usize) -> ProcessLog {
    ProcessLog::new(store.clone(), logs_series(id), keep)
}

impl Actor for AgentActor {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AgentMsg>,
        args: AgentArgs,
    ) -> Result<AgentState, ActorProcessingErr> {
        let AgentArgs { store, id, policy } = args;
        let log = log_of(&store, &id, policy.log_lines);
        let agent = store
            .get::<Agent>(&id)?
            .filter(|a| a.audit.deleted_at.is_none())
            .ok_or_else(|| format!("agent {id} does not exist"))?;
        let argv = command_of(&agent.configuration)?
            .ok_or_else(|| format!("agent {id} has no command to run"))?;
        let rec = store
            .get::<ProcessRecord>(&id)?
            .filter(|p| p.desired)
            .ok_or_else(|| format!("agent {id} should not run"))?;
        // What an earlier actor or run left running is killed first.
        if let Some(pid) = rec.kill_leftover() {
            log.line(
                "warning",
                &format!("killed the leftover process {pid} of an earlier run"),
            );
        }
        let restarted = rec.was_running();
        let work = policy.data_dir.join("agents").join(&id);
        std::fs::create_dir_all(&work)?;
        let cwd = match cwd_of(&agent.configuration)? {
            Some(c) => work.join(c),
            None => work.clone(),
        };
        std::fs::create_dir_all(&cwd)?;
        let confine = match policy.confinement(&work) {
            Ok(c) => c,
            Err(why) => {
                log.line("error", &why);
                return Err(why.into());
            }
        };
        let spec = Spec {
            argv: argv.clone(),
            workdir: cwd,
            env: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                ("HOME".into(), work.display().to_string()),
                ("LANG".into(), "C.UTF-8".into()),
                ("WARDEN_AGENT_ID".into(), id.clone()),
            ],
            limits: policy.limits,
            confine,
            groups: policy.groups(
                &format!("agent-{id}-{}", &warden_storage::new_uuid()[..8]),
                &log,
            ),
        };
        let lines = log.clone();
        let me = myself.clone();
        let process = match Process::start(
            spec,
            Arc::new(move |stream, line| lines.output(stream.as_str(), &line)),
            move |exit| {
                let why = match exit {
                    Ok(e) => format!("the process ended ({e})"),
                    Err(e) => format!("the process could not be waited for: {e}"),
                };
                let _ = me.cast(AgentMsg::Exited(why));
            },
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                let why = format!("{} could not start: {e}", argv[0]);
                log.line("error", &why);
                return Err(why.into());
            }
        };
        let pid = process.pid();
        ProcessRecord::record_start(&store, &id, &process, None, restarted).await?;
        log.line(
            "info",
            &if restarted {
                format!("restarted: process {pid} (the previous one ended or Warden restarted)")
            } else {
                format!("started: process {pid}")
            },
        );
        tracing::info!(agent = %id, pid, restarted, "agent process started");
        Ok(AgentState {
            store,
            id,
            policy,
            process: Some(process),
            stopping: false,
            log,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<AgentMsg>,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        // A stop that was not asked for (a failure): the session dies now.
        state.process.take();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<AgentMsg>,
        msg: AgentMsg,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AgentMsg::Exited(why) => {
                let oom = state
                    .process
                    .as_ref()
                    .and_then(|p| p.groups())
                    .is_some_and(|g| g.oom_killed());
                let why = if oom {
                    format!("{why}: its memory limit was reached")
                } else {
                    why
                };
                if !state.stopping {
                    state.log.line("error", &why);
                    ProcessRecord::change(&state.store, &state.id, |p| {
                        p.state = ProcState::Restarting;
                        p.pid = None;
                    })
                    .await?;
                    state.process.take();
                    return Err(why.into());
                }
            }
            AgentMsg::Stop(reply) => {
                state.stopping = true;
                if let Some(p) = state.process.take() {
                    p.stop(Duration::from_millis(state.policy.stop_grace_ms));
                }
                let stored = ProcessRecord::change(&state.store, &state.id, |p| {
                    p.state = ProcState::Stopped;
                    p.pid = None;
                    p.started = None;
                })
                .await
                .map(|_| ());
                state.log.line("info", "stopped");
                let _ = reply.send(stored);
                myself.stop(Some("stopped".into()));
            }
            AgentMsg::Crash => panic!("fault injection: agent {} was told to crash", state.id),
        }
        Ok(())
    }
}

/// The public API of a running agent actor.
#[derive(Clone)]
pub struct AgentHandle(pub ActorRef<AgentMsg>);

impl AgentHandle {
    pub async fn stop(&self) -> Result<(), DomainError> {
        crate::ask(
            &self.0,
            Duration::from_secs(10),
            "the agent's actor",
            AgentMsg::Stop,
        )
        .await
    }
    pub fn crash(&self) {
        let _ = self.0.cast(AgentMsg::Crash);
    }
}
