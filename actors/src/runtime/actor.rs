//! `RuntimeActor`: one run of a runtime's project. It copies the project
//! (never following a symlink), starts the entry point with the
//! language's interpreter, confined, on a port of its own, and ends the
//! run by itself: at the process's exit (0: stopped, else failed) or at
//! the runtime's timeout (failed). A stop ends the process's whole
//! session. After a crash of the actor or of Warden, a runtime that
//! should run runs again (a fresh process; a leftover is killed first).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use warden_storage::{Store, now_millis};

use super::{RuntimeDef, RuntimePolicy, set_status};
use crate::DomainError;
use crate::deployment::Deployment;
use crate::process::ExecPolicy;
use crate::process::log::ProcessLog;
use crate::process::record::{ProcState, ProcessRecord};
use crate::process::{Process, Spec, is_alive};

type Reply<T> = RpcReplyPort<Result<T, DomainError>>;

pub enum RtMsg {
    /// The process ended: how, and its exit code when it exited.
    Exited(String, Option<i32>),
    /// The runtime's timeout passed.
    Timeout,
    /// Stop the run; answered once the process's session is gone.
    Stop(Reply<()>),
    Crash,
}

pub struct RuntimeArgs {
    pub store: Store,
    pub id: String,
    pub exec: Arc<ExecPolicy>,
    pub policy: Arc<RuntimePolicy>,
}

pub struct RtState {
    store: Store,
    id: String,
    exec: Arc<ExecPolicy>,
    process: Option<Process>,
    /// Set when the run ends by the actor's own decision.
    ending: bool,
    /// Why the run could not start (the actor stops at once).
    refused: bool,
    log: ProcessLog,
}

pub struct RuntimeActor;

/// A runtime's log: its deployment's log series.
pub(crate) fn log_of(store: &Store, id: &str, keep: usize) -> ProcessLog {
    ProcessLog::new(store.clone(), crate::deployment::logs_series(id), keep)
}

async fn set_deployment(
    store: &Store,
    id: &str,
    mut change: impl FnMut(&mut Deployment),
) -> Result<(), DomainError> {
    store
        .update::<Deployment, DomainError>(id, |d| {
            change(d);
            d.audit.touch("warden");
            Ok(Some(()))
        })
        .await?;
    Ok(())
}

/// Ends a run in the records: the deployment's status, its process gone.
async fn ended(store: &Store, id: &str, status: &'static str) -> Result<(), DomainError> {
    set_deployment(store, id, |d| {
        set_status(d, status);
        d.container_name = None;
        d.container_port = None;
        d.endpoint = None;
    })
    .await?;
    ProcessRecord::change(store, id, |p| {
        p.desired = false;
        p.state = if status == "failed" {
            ProcState::Failed
        } else {
            ProcState::Stopped
        };
        p.pid = None;
        p.started = None;
        p.port = None;
    })
    .await
}

/// Copies a project into a run's work dir: regular files and
/// directories only (a symlink is skipped, never followed).
fn copy_project(from: &Path, to: &Path) -> std::io::Result<u64> {
    std::fs::create_dir_all(to)?;
    let mut copied = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copied += copy_project(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// A program found the way `execvp` would find it.
fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    ["/usr/local/bin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A port of the range nobody listens on now.
fn free_port(range: (u16, u16), taken: &[u16]) -> Option<u16> {
    let span = u32::from(range.1.saturating_sub(range.0)) + 1;
    let offset = (now_millis().unsigned_abs() % u64::from(span)) as u32;
    (0..span)
        .map(|i| range.0 + ((offset + i) % span) as u16)
        .find(|p| !taken.contains(p) && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

/// Why a run cannot start (said in its log; the runtime fails).
struct Refusal(String);

impl RuntimeActor {
    async fn start_run(
        myself: &ActorRef<RtMsg>,
        store: &Store,
        id: &str,
        exec: &ExecPolicy,
        policy: &RuntimePolicy,
        log: &ProcessLog,
    ) -> Result<Result<Process, Refusal>, ActorProcessingErr> {
        let d = store
            .get::<Deployment>(id)?
            .filter(|d| d.audit.deleted_at.is_none())
            .ok_or_else(|| format!("runtime {id} does not exist"))?;
        let def = RuntimeDef::of(&d).ok_or_else(|| format!("deployment {id} is not a runtime"))?;
        let rec = store
            .get::<ProcessRecord>(id)?
            .filter(|p| p.desired)
            .ok_or_else(|| format!("runtime {id} should not run"))?;
        if let Some(pid) = rec.kill_leftover() {
            log.line(
                "warning",
                &format!("killed the leftover process {pid} of an earlier run"),
            );
        }
        let resumed = rec.was_running();
        let project = policy.project_dir(&d.owner.org_id, &def.project_id);
        let run_dir = policy.runtimes_dir.join(id);
        let work = run_dir.join("work");
        if work.exists() {
            std::fs::remove_dir_all(&work)?;
        }
        std::fs::create_dir_all(&work)?;
        if !project.is_dir() {
            return Ok(Err(Refusal(format!(
                "project {} has no files (POST /api/projects/{}/files)",
                def.project_id, def.project_id
            ))));
        }
        copy_project(&project, &work)?;
        let entry = work.join(&def.entry_point);
        if !entry.is_file() {
            return Ok(Err(Refusal(format!(
                "entry point {} is not a file of project {}",
                def.entry_point, def.project_id
            ))));
        }
        let Some(argv) = policy.argv(&def.language, &entry) else {
            return Ok(Err(Refusal(format!(
                "no interpreter is configured for {}",
                def.language
            ))));
        };
        if find_program(&argv[0]).is_none() {
            return Ok(Err(Refusal(format!("{} not found", argv[0]))));
        }
        let confine = match exec.confinement(&work) {
            Ok(c) => c,
            Err(why) => return Ok(Err(Refusal(why))),
        };
        let Some(port) = free_port(policy.ports, &[]) else {
            return Ok(Err(Refusal("no free port in the configured range".into())));
        };
        let mut env = vec![
            (
                "PATH".to_string(),
                "/usr/local/bin:/usr/bin:/bin".to_string(),
            ),
            ("HOME".to_string(), work.display().to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
            ("PORT".to_string(), port.to_string()),
        ];
        env.extend(def.environment_vars.clone());
        let spec = Spec {
            argv: argv.clone(),
            workdir: work.clone(),
            env,
            limits: exec.limits,
            confine,
            groups: exec.groups(
                &format!("runtime-{id}-{}", &warden_storage::new_uuid()[..8]),
                log,
            ),
        };
        let lines = log.clone();
        let me = myself.clone();
        let process = match Process::start(
            spec,
            Arc::new(move |stream, line| lines.output(stream.as_str(), &line)),
            move |exit| {
                let (why, code) = match exit {
                    Ok(crate::process::Exit::Code(c)) => (format!("exit code {c}"), Some(c)),
                    Ok(e) => (e.to_string(), None),
                    Err(e) => (format!("could not be waited for: {e}"), None),
                };
                let _ = me.cast(RtMsg::Exited(why, code));
            },
        )
        .await
        {
            Ok(p) => p,
            Err(e) => return Ok(Err(Refusal(format!("{} could not start: {e}", argv[0])))),
        };
        let pid = process.pid();
        let url = match &policy.public_base {
            Some(base) => format!("{}/{port}", base.trim_end_matches('/')),
            None => format!("http://127.0.0.1:{port}"),
        };
        set_deployment(store, id, |d| {
            set_status(d, "running");
            d.container_name = Some(format!("proc-{pid}"));
            d.container_port = Some(u32::from(port));
            d.endpoint = Some(url.clone());
            d.log(
                now_millis(),
                "started",
                format!("process {pid} on port {port}"),
                "info",
            );
        })
        .await?;
        ProcessRecord::record_start(store, id, &process, Some(port), resumed).await?;
        log.line(
            "info",
            &if resumed {
                format!(
                    "started again after Warden or its actor restarted: process {pid} on port {port}"
                )
            } else {
                format!("started: process {pid} on port {port}")
            },
        );
        myself.send_after(Duration::from_secs(def.timeout), || RtMsg::Timeout);
        Ok(Ok(process))
    }
}

impl Actor for RuntimeActor {
    type Msg = RtMsg;
    type State = RtState;
    type Arguments = RuntimeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RtMsg>,
        args: RuntimeArgs,
    ) -> Result<RtState, ActorProcessingErr> {
        let RuntimeArgs {
            store,
            id,
            exec,
            policy,
        } = args;
        let log = log_of(&store, &id, exec.log_lines);
        let started = RuntimeActor::start_run(&myself, &store, &id, &exec, &policy, &log).await?;
        let (process, refused) = match started {
            Ok(p) => (Some(p), false),
            Err(Refusal(why)) => {
                log.line("error", &why);
                ProcessRecord::change(&store, &id, |p| p.failure = Some(why.clone())).await?;
                ended(&store, &id, "failed").await?;
                (None, true)
            }
        };
        Ok(RtState {
            store,
            id,
            exec,
            process,
            ending: false,
            refused,
            log,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<RtMsg>,
        state: &mut RtState,
    ) -> Result<(), ActorProcessingErr> {
        if state.refused {
            myself.stop(Some("the run could not start".into()));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RtMsg>,
        state: &mut RtState,
    ) -> Result<(), ActorProcessingErr> {
        state.process.take();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RtMsg>,
        msg: RtMsg,
        state: &mut RtState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RtMsg::Exited(why, code) => {
                if state.ending {
                    return Ok(());
                }
                state.ending = true;
                let oom = state
                    .process
                    .take()
                    .and_then(|p| p.groups().map(|g| g.oom_killed()))
                    .unwrap_or(false);
                let why = if oom {
                    format!("{why}: the memory limit was reached")
                } else {
                    why
                };
                let status = if code == Some(0) { "stopped" } else { "failed" };
                let kind = if status == "failed" { "error" } else { "info" };
                state.log.line(kind, &format!("the process ended ({why})"));
                if status == "failed" {
                    ProcessRecord::change(&state.store, &state.id, |p| {
                        p.failure = Some(format!("the process ended ({why})"))
                    })
                    .await?;
                }
                ended(&state.store, &state.id, status).await?;
                myself.stop(Some("the run ended".into()));
            }
            RtMsg::Timeout => {
                if state.ending {
                    return Ok(());
                }
                state.ending = true;
                let why = "the runtime's timeout was reached: the run was stopped".to_owned();
                state.log.line("error", &why);
                if let Some(p) = state.process.take() {
                    p.stop(Duration::from_millis(state.exec.stop_grace_ms));
                }
                ProcessRecord::change(&state.store, &state.id, |p| p.failure = Some(why.clone()))
                    .await?;
                ended(&state.store, &state.id, "failed").await?;
                myself.stop(Some("timeout".into()));
            }
            RtMsg::Stop(reply) => {
                state.ending = true;
                let done = async {
                    set_deployment(&state.store, &state.id, |d| set_status(d, "stopping")).await?;
                    if let Some(p) = state.process.take() {
                        let (pid, started) = (p.pid(), p.started());
                        let grace = Duration::from_millis(state.exec.stop_grace_ms);
                        p.stop(grace);
                        // Answered once the process is gone (SIGKILL after the grace).
                        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(2);
                        while is_alive(pid, started) && tokio::time::Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    state.log.line("info", "stopped");
                    ended(&state.store, &state.id, "stopped").await
                }
                .await;
                let _ = reply.send(done);
                myself.stop(Some("stopped".into()));
            }
            RtMsg::Crash => panic!("fault injection: runtime {} was told to crash", state.id),
        }
        Ok(())
    }
}

/// The public API of a running runtime actor.
#[derive(Clone)]
pub struct RtHandle(pub ActorRef<RtMsg>);

impl RtHandle {
    pub async fn stop(&self) -> Result<(), DomainError> {
        crate::ask(
            &self.0,
            Duration::from_secs(30),
            "the runtime's actor",
            RtMsg::Stop,
        )
        .await
    }
    pub fn crash(&self) {
        let _ = self.0.cast(RtMsg::Crash);
    }
}
