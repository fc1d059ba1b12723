//! The root supervisor and [`Runtime`], the handle the server holds.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use warden_actors::DomainError;
use warden_storage::{Millis, Store, now_millis};

use crate::conversations::{
    ConversationKind, Conversations, DEFAULT_CONVERSATION_IDLE, LlmGateway,
};
use crate::deployments::{DeploymentKind, Deployments, EndRoute, route_end};
use crate::executions::{ExecutionKind, Executions, ReplyRoute, Waiters, route_reply};
use crate::kind::KindControl;
use crate::llm::{BackendKind, DEFAULT_PROBE_INTERVAL, Llm, LlmDefaults};
use crate::telegram::{DEFAULT_TELEGRAM_API, Telegram, TelegramKind};
use crate::training::{DEFAULT_MAX_CONCURRENT, Training, TrainingKind};
use crate::{ActorInfo, FailureInfo, KindRef, NodeKind, Nodes, RestartPolicy, rfc3339};

pub(crate) enum RootMsg {
    RestartKind(usize),
    Snapshot(RpcReplyPort<Vec<KindStats>>),
}

#[derive(Clone)]
pub(crate) struct KindStats {
    running: bool,
    started_at: Option<Millis>,
    restarts: u32,
    last_failure: Option<(String, Millis)>,
}

struct Root {
    policy: RestartPolicy,
}

struct RootState {
    kinds: Vec<Arc<dyn KindControl>>,
    stats: Vec<KindStats>,
    recent: Vec<VecDeque<Instant>>,
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = Vec<Arc<dyn KindControl>>;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        kinds: Self::Arguments,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut stats = Vec::new();
        for kind in &kinds {
            kind.spawn(myself.get_cell()).await?;
            stats.push(KindStats {
                running: true,
                started_at: Some(now_millis()),
                restarts: 0,
                last_failure: None,
            });
        }
        let recent = vec![VecDeque::new(); kinds.len()];
        Ok(RootState {
            kinds,
            stats,
            recent,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::RestartKind(i) => {
                let kind = state.kinds[i].clone();
                match kind.spawn(myself.get_cell()).await {
                    Ok(_) => {
                        let s = &mut state.stats[i];
                        s.running = true;
                        s.started_at = Some(now_millis());
                        s.restarts += 1;
                        tracing::info!(supervisor = kind.name(), "supervisor restarted");
                    }
                    Err(e) => {
                        tracing::error!(supervisor = kind.name(), error = %e, "supervisor could not restart")
                    }
                }
            }
            RootMsg::Snapshot(reply) => {
                let _ = reply.send(state.stats.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        evt: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(i) = state
            .kinds
            .iter()
            .position(|k| k.cell().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            return Ok(());
        };
        let kind = state.kinds[i].clone();
        if reason == SHUTDOWN {
            // Runtime::shutdown stopped it on purpose: nothing to restart.
            tracing::info!(supervisor = kind.name(), "supervisor stopped");
            kind.clear();
            state.stats[i].running = false;
            return Ok(());
        }
        tracing::error!(supervisor = kind.name(), %reason, "supervisor went down");
        // Its children must not outlive it: the restarted supervisor re-activates them.
        cell.stop_children(None);
        kind.clear();
        let stats = &mut state.stats[i];
        stats.running = false;
        stats.last_failure = Some((reason, now_millis()));
        let now = Instant::now();
        let recent = &mut state.recent[i];
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.within)
        {
            recent.pop_front();
        }
        if (recent.len() as u32) < self.policy.max_restarts {
            recent.push_back(now);
            myself.send_after(self.policy.delay(recent.len() as u32), move || {
                RootMsg::RestartKind(i)
            });
        } else {
            tracing::error!(
                supervisor = kind.name(),
                "supervisor restart limit reached; it stays down"
            );
        }
        Ok(())
    }
}

/// The stop reason of a deliberate shutdown (not a failure).
const SHUTDOWN: &str = "shutdown";

/// Policies for each supervisor, from configuration.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    pub root: RestartPolicy,
    pub nodes: RestartPolicy,
    pub executions: RestartPolicy,
    pub deployments: RestartPolicy,
    pub backends: RestartPolicy,
    pub conversations: RestartPolicy,
    pub telegram: RestartPolicy,
    pub training: RestartPolicy,
    /// Training runs that train at once (default 2); the rest queue.
    pub training_max_concurrent: Option<usize>,
    /// The Telegram Bot API's base URL (default `https://api.telegram.org`).
    pub telegram_api: Option<String>,
    /// How long a conversation's actor stays without use (default 5 min).
    pub conversation_idle: Option<std::time::Duration>,
    pub node_timing: warden_actors::node::NodeTiming,
    /// How often each LLM backend is probed (default 15 s).
    pub llm_probe_interval: Option<std::time::Duration>,
    /// The models the server declares at boot.
    pub llm_defaults: LlmDefaults,
    /// Threads that run JavaScript functions (default 2).
    pub js_workers: Option<usize>,
    /// The bounds of one function run (default 5 s, 32 MiB heap).
    pub js_limits: Option<warden_jsrt::Limits>,
    /// Hooks may call link-local and cloud metadata addresses (default no).
    pub hooks_allow_internal: bool,
    /// Who may have an interactive shell (off by default).
    pub shell: warden_actors::terminal::ShellPolicy,
    /// How process agents run.
    pub exec: warden_actors::process::ExecPolicy,
    pub agents: RestartPolicy,
    /// How runtimes run.
    pub runtimes: warden_actors::runtime::RuntimePolicy,
}

/// The running supervision tree and typed access to each kind.
#[derive(Clone)]
pub struct Runtime {
    root: ActorRef<RootMsg>,
    kinds: Vec<Arc<dyn KindControl>>,
    started_at: Millis,
    policy: RestartPolicy,
    pub nodes: Nodes,
    pub executions: Executions,
    pub deployments: Deployments,
    pub llm: Llm,
    pub conversations: Conversations,
    pub telegram: Telegram,
    pub training: Training,
    /// The event log and its live tail (contenox `/events`, `/ingest`).
    pub events: warden_domain::event::EventLog,
    /// Event triggers and the JavaScript functions they run.
    pub automation: crate::Automation,
    /// Where hook calls may go (the server sets its own address once bound).
    pub egress: Arc<warden_actors::egress::Egress>,
    /// Fires the schedules (vareon's scheduled tasks).
    pub scheduler: crate::Scheduler,
    /// Interactive shells (vareon `/ws/shell`).
    pub terminals: crate::Terminals,
    /// Myntrix agents' processes.
    pub agents: crate::Agents,
    /// Neuronest runtimes.
    pub runtimes: crate::Runtimes,
}

impl Runtime {
    pub async fn start(store: Store, config: RuntimeConfig) -> Result<Runtime, ractor::SpawnErr> {
        // Nodes tell executions of answered commands; executions send
        // commands through the nodes service: the route is filled in once
        // both exist.
        let route = ReplyRoute::default();
        let nodes = KindRef::new(
            NodeKind::new(
                store.clone(),
                config.node_timing,
                Some(route_reply(route.clone(), store.clone())),
            ),
            config.nodes,
        );
        let node_service = Nodes::new(nodes.clone(), store.clone());
        let backends = KindRef::new(
            BackendKind::new(
                store.clone(),
                llm_client(),
                config.llm_probe_interval.unwrap_or(DEFAULT_PROBE_INTERVAL),
            ),
            config.backends,
        );
        let llm = Llm::new(backends.clone(), store.clone(), config.llm_defaults.clone());
        let egress = warden_actors::egress::Egress::new(config.hooks_allow_internal);
        let functions = Arc::new(crate::automation::FunctionRoute::default());
        let ends = EndRoute::default();
        let waiters = Waiters::default();
        let executions = KindRef::new(
            ExecutionKind {
                store: store.clone(),
                dispatch: Arc::new(node_service.clone()),
                on_end: Some(waiters.listener(Some(route_end(ends.clone())))),
                gateway: Arc::new(LlmGateway(llm.clone())),
                egress: egress.clone(),
                children: Arc::new(crate::executions::ChildRunner {
                    route: route.clone(),
                    store: store.clone(),
                    nodes: node_service.clone(),
                    waiters: waiters.clone(),
                }),
                functions: functions.clone(),
                parked: crate::parked::ParkedRuns::start(route.clone()),
            },
            config.executions,
        );
        let _ = route.set(executions.downgrade());
        let execution_service = Executions::new(
            executions.clone(),
            store.clone(),
            node_service.clone(),
            waiters,
        );
        let deployments = KindRef::new(
            DeploymentKind::new(store.clone(), Arc::new(execution_service.clone())),
            config.deployments,
        );
        let _ = ends.set(deployments.downgrade());
        let conversations = KindRef::new(
            ConversationKind::new(
                store.clone(),
                Arc::new(LlmGateway(llm.clone())),
                config
                    .conversation_idle
                    .unwrap_or(DEFAULT_CONVERSATION_IDLE),
            ),
            config.conversations,
        );
        let conversation_service =
            Conversations::new(conversations.clone(), store.clone(), llm.clone());
        let telegram = KindRef::new(
            TelegramKind::new(
                store.clone(),
                Arc::new(conversation_service.clone()),
                config
                    .telegram_api
                    .clone()
                    .unwrap_or_else(|| DEFAULT_TELEGRAM_API.to_owned()),
            ),
            config.telegram,
        );
        let max_training = config
            .training_max_concurrent
            .unwrap_or(DEFAULT_MAX_CONCURRENT);
        let training = KindRef::new(
            TrainingKind::new(store.clone(), max_training),
            config.training,
        );
        // A PTY cannot be recovered: a failed session is never restarted.
        let terminals = KindRef::new(
            crate::Terminals::kind(store.clone(), Arc::new(config.shell.clone())),
            RestartPolicy {
                max_restarts: 0,
                ..config.root
            },
        );
        let agents = KindRef::new(
            crate::Agents::kind(store.clone(), Arc::new(config.exec.clone())),
            config.agents,
        );
        let runtimes = KindRef::new(
            crate::Runtimes::kind(
                store.clone(),
                Arc::new(config.exec.clone()),
                Arc::new(config.runtimes.clone()),
            ),
            config.agents,
        );
        let kinds: Vec<Arc<dyn KindControl>> = vec![
            Arc::new(nodes.clone()),
            Arc::new(executions.clone()),
            Arc::new(deployments.clone()),
            Arc::new(backends.clone()),
            Arc::new(conversations.clone()),
            Arc::new(telegram.clone()),
            Arc::new(training.clone()),
            Arc::new(terminals.clone()),
            Arc::new(agents.clone()),
            Arc::new(runtimes.clone()),
        ];
        let (root, _) = Actor::spawn(
            None,
            Root {
                policy: config.root,
            },
            kinds.clone(),
        )
        .await?;
        if let Err(e) = llm.ensure_system_groups().await {
            tracing::error!(error = %e, "could not store the system affinity groups");
        }
        if let Err(e) = llm.ensure_system_models().await {
            tracing::error!(error = %e, "could not declare the boot models");
        }
        let events = warden_domain::event::EventLog::open(store.clone())
            .map_err(|e| ractor::SpawnErr::StartupFailed(format!("the event log: {e}").into()))?;
        let automation = crate::Automation::start(
            store.clone(),
            events.clone(),
            execution_service.clone(),
            config.js_workers.unwrap_or(2),
            config.js_limits.unwrap_or_default(),
        )
        .map_err(|e| ractor::SpawnErr::StartupFailed(e.to_string().into()))?;
        functions.set(&automation);
        let scheduler = crate::Scheduler::start(store.clone(), execution_service.clone());
        let terminals = crate::Terminals::new(terminals, store.clone()).await;
        Ok(Runtime {
            agents: crate::Agents::new(agents, store.clone()),
            runtimes: crate::Runtimes::new(runtimes, store.clone()),
            terminals,
            egress,
            scheduler,
            events,
            automation,
            root,
            kinds,
            started_at: now_millis(),
            policy: config.root,
            executions: execution_service,
            deployments: Deployments::new(deployments, store.clone()),
            conversations: conversation_service,
            telegram: Telegram::new(telegram, store.clone()),
            training: Training::new(training, store, max_training),
            nodes: node_service,
            llm,
        })
    }

    /// The whole tree: root, kind supervisors, entity actors.
    pub async fn snapshot(&self) -> Result<ActorInfo, DomainError> {
        let stats = match self
            .root
            .call(RootMsg::Snapshot, Some(std::time::Duration::from_secs(10)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(s)) => s,
            _ => {
                return Err(DomainError::Unavailable(
                    "the root supervisor did not answer".into(),
                ));
            }
        };
        let mut children = Vec::new();
        for (kind, stat) in self.kinds.iter().zip(stats) {
            let entities = if stat.running {
                kind.children().await.unwrap_or_default()
            } else {
                Vec::new()
            };
            children.push(ActorInfo {
                name: kind.name().into(),
                kind: "supervisor".into(),
                entity_id: None,
                status: if stat.running {
                    "running"
                } else {
                    "restarting"
                }
                .into(),
                started_at: stat.started_at.map(rfc3339),
                restart_count: stat.restarts,
                last_failure: stat.last_failure.map(|(reason, at)| FailureInfo {
                    reason,
                    at: rfc3339(at),
                }),
                policy: Some(kind.policy()),
                config: kind.config(),
                detail: None,
                children: entities,
            });
        }
        Ok(ActorInfo {
            name: "root".into(),
            kind: "supervisor".into(),
            entity_id: None,
            status: "running".into(),
            started_at: Some(rfc3339(self.started_at)),
            restart_count: 0,
            last_failure: None,
            policy: Some(self.policy),
            config: None,
            detail: None,
            children,
        })
    }

    fn control(&self, name: &str) -> Result<(&Arc<dyn KindControl>, String), DomainError> {
        let not_found = || DomainError::NotFound {
            kind: "Actor",
            id: name.to_owned(),
        };
        let (kind, id) = name.split_once(':').ok_or_else(not_found)?;
        let control = self
            .kinds
            .iter()
            .find(|k| k.entity_kind() == kind)
            .ok_or_else(not_found)?;
        Ok((control, id.to_owned()))
    }

    /// Fault injection: makes the named entity actor (`node:{id}`) panic.
    pub async fn crash(&self, name: &str) -> Result<(), DomainError> {
        let (control, id) = self.control(name)?;
        if control.crash(id).await? {
            Ok(())
        } else {
            Err(DomainError::NotFound {
                kind: "Actor",
                id: name.to_owned(),
            })
        }
    }

    /// Clears a failed entity so that it can be activated again.
    pub async fn reset(&self, name: &str) -> Result<(), DomainError> {
        let (control, id) = self.control(name)?;
        if control.reset(id).await? {
            Ok(())
        } else {
            Err(DomainError::NotFound {
                kind: "Failed actor",
                id: name.to_owned(),
            })
        }
    }

    /// Counts of entity actors by kind and status, for metrics.
    pub async fn counts(&self) -> Vec<(String, String, usize)> {
        let mut out = Vec::new();
        for kind in &self.kinds {
            let mut by_status: std::collections::BTreeMap<String, usize> = Default::default();
            for child in kind.children().await.unwrap_or_default() {
                *by_status.entry(child.status).or_default() += 1;
            }
            for (status, n) in by_status {
                out.push((kind.entity_kind().to_owned(), status, n));
            }
        }
        out
    }

    /// Total restarts of entity actors since boot, by kind.
    pub async fn restarts(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for kind in &self.kinds {
            let total = kind
                .children()
                .await
                .unwrap_or_default()
                .iter()
                .map(|c| u64::from(c.restart_count))
                .sum();
            out.push((kind.entity_kind().to_owned(), total));
        }
        out
    }

    /// Stops every entity actor (each persists what it holds), then the
    /// kind supervisors, then the root.
    pub async fn shutdown(&self) {
        self.llm.flush_usage().await;
        self.automation.stop().await;
        self.scheduler.stop().await;
        let timeout = Some(std::time::Duration::from_secs(10));
        for kind in &self.kinds {
            if let Some(cell) = kind.cell() {
                cell.stop_children_and_wait(Some(SHUTDOWN.into()), timeout)
                    .await;
                let _ = cell.stop_and_wait(Some(SHUTDOWN.into()), timeout).await;
            }
        }
        let _ = self
            .root
            .stop_and_wait(
                Some(SHUTDOWN.into()),
                Some(std::time::Duration::from_secs(10)),
            )
            .await;
    }
}

/// The HTTP client every backend actor shares (one connection pool).
fn llm_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build()
        .unwrap_or_default()
}
