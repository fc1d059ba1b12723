//! `DeploymentActor`: the one writer of a deployment's record. A start
//! or stop is an execution whose key is recorded before it is launched
//! (so a restarted actor launches the same one, never a second); the
//! execution's end and the node's `deployment.status` reports move the
//! record.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{Value, json};
use warden_domain::{Model, Owner, ServedFile};
use warden_storage::{Store, Write, now_millis};

use super::record::{DeployStatus, Deployment};
use super::{DeploymentInput, apply};
use crate::DomainError;
use crate::execution::{BoxFuture, ExecStatus, Execution, NewExecution, NewStep, StepCommand};
use crate::node::Node;

/// How a deployment runs executions: the executions service behind a
/// trait, so that this crate does not know the supervisors.
pub trait Launcher: Send + Sync + 'static {
    /// Creates the execution (or finds the one its `executionId` already
    /// names) and starts it if it is still pending.
    fn launch(
        &self,
        owner: Owner,
        by: String,
        new: NewExecution,
    ) -> BoxFuture<Result<Execution, DomainError>>;
}

/// What changes a running deployment from outside.
#[derive(Debug, Clone)]
pub enum Report {
    /// A start or stop execution ended.
    Execution(Box<Execution>),
    /// The node's `deployment.status`.
    Status(Value),
}

pub enum DeployMsg {
    Update {
        input: Box<DeploymentInput>,
        by: String,
        reply: RpcReplyPort<Result<Deployment, DomainError>>,
    },
    Start {
        by: String,
        reply: RpcReplyPort<Result<Deployment, DomainError>>,
    },
    Stop {
        by: String,
        reply: RpcReplyPort<Result<Deployment, DomainError>>,
    },
    Delete {
        by: String,
        reply: RpcReplyPort<Result<Deployment, DomainError>>,
    },
    Report(Box<Report>),
    Crash,
}

pub struct DeployArgs {
    pub store: Store,
    pub id: String,
    pub launcher: Arc<dyn Launcher>,
}

pub struct DeployState {
    store: Store,
    d: Deployment,
    version: u64,
    launcher: Arc<dyn Launcher>,
}

#[derive(Default)]
pub struct DeploymentActor;

/// The execution that starts a deployment: download the model on the
/// node unless it is there, then `deployment.create`.
pub fn start_program(d: &Deployment, model: &Model, file: &ServedFile, key: &str) -> NewExecution {
    let on_node = model.is_downloaded && model.node_id == d.node_id && model.trained.is_none();
    let mut steps = Vec::new();
    let model_path = match (&model.download_path, on_node) {
        (Some(path), true) => path.clone(),
        _ => {
            let mut data = json!({
                "source": file.source,
                "targetPath": model.model_id,
            });
            if !file.file_name.is_empty() {
                data["fileName"] = json!(file.file_name);
            }
            if let Some(sum) = &file.sha256 {
                data["sha256"] = json!(sum);
            }
            if file.size > 0 {
                data["fileSize"] = json!(file.size);
            }
            steps.push(NewStep {
                name: Some("Download model files".into()),
                command: Some(StepCommand {
                    kind: "model.download".into(),
                    resource_type: "model".into(),
                    resource_id: model.model_id.clone(),
                    data: data.to_string(),
                }),
                timeout_seconds: Some(3600),
                ..Default::default()
            });
            if file.file_name.is_empty() {
                model.model_id.clone()
            } else {
                format!("{}/{}", model.model_id, file.file_name)
            }
        }
    };
    let mut data = json!({
        "deploymentId": d.deployment_id,
        "modelId": model.model_id,
        "modelPath": model_path,
        "framework": file.framework,
        "deploymentType": d.deployment_type,
        "replicas": d.replicas,
        "hardwareProfile": d.hardware_profile,
        "containerName": d.container_name.clone().unwrap_or_else(|| d.deployment_id.clone()),
    });
    if let Some(port) = d.container_port {
        data["port"] = json!(port);
    }
    let depends_on = if steps.is_empty() { vec![] } else { vec![0] };
    steps.push(NewStep {
        name: Some("Start the model server".into()),
        command: Some(StepCommand {
            kind: "deployment.create".into(),
            resource_type: "deployment".into(),
            resource_id: d.deployment_id.clone(),
            data: data.to_string(),
        }),
        timeout_seconds: Some(300),
        depends_on,
        ..Default::default()
    });
    program(d, key, "deploy-model", format!("Deploy {}", d.name), steps)
}

/// The execution that stops a deployment: `deployment.stop`, graceful.
pub fn stop_program(d: &Deployment, key: &str) -> NewExecution {
    let step = NewStep {
        name: Some("Stop the model server".into()),
        command: Some(StepCommand {
            kind: "deployment.stop".into(),
            resource_type: "deployment".into(),
            resource_id: d.deployment_id.clone(),
            data: json!({"gracefulShutdown": true, "timeoutSeconds": 30}).to_string(),
        }),
        timeout_seconds: Some(120),
        ..Default::default()
    };
    program(
        d,
        key,
        "stop-deployment",
        format!("Stop {}", d.name),
        vec![step],
    )
}

fn program(
    d: &Deployment,
    key: &str,
    kind: &str,
    name: String,
    steps: Vec<NewStep>,
) -> NewExecution {
    NewExecution {
        execution_id: Some(key.to_owned()),
        name: Some(name),
        category: Some("deployment".into()),
        kind: Some(kind.into()),
        steps,
        resource_type: Some("deployment".into()),
        resource_id: Some(d.id.clone()),
        node_id: Some(d.node_id.clone()),
        timeout_seconds: Some(3900),
        max_retries: Some(0),
        ..Default::default()
    }
}

/// Applies an ended start or stop execution.
pub fn execution_ended(d: &mut Deployment, x: &Execution, now: i64) -> bool {
    if d.execution_id.as_deref() != Some(x.execution_id.as_str()) || !x.status.is_terminal() {
        return false;
    }
    let stopping = x.kind == "stop-deployment";
    match (x.status, stopping) {
        (ExecStatus::Completed, false) => {
            let result: Value = x
                .steps
                .iter()
                .find(|s| {
                    s.command
                        .as_ref()
                        .is_some_and(|c| c.kind == "deployment.create")
                })
                .and_then(|s| s.result.as_deref())
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null);
            d.status = DeployStatus::Running;
            d.is_running = true;
            if let Some(e) = result["endpoint"].as_str() {
                d.endpoint = Some(e.to_owned());
            }
            if let Some(p) = result["containerPort"].as_u64() {
                d.container_port = Some(p as u32);
            }
            if let Some(n) = result["containerName"].as_str() {
                d.container_name = Some(n.to_owned());
            }
            d.last_health_check = Some(now);
            let at = d.endpoint.clone().unwrap_or_default();
            d.log(now, "started", format!("serving at {at}"), "info");
        }
        (ExecStatus::Completed, true) => {
            d.status = DeployStatus::Stopped;
            d.is_running = false;
            d.uptime = 0;
            d.log(now, "stopped", "the model server stopped", "info");
        }
        (_, false) => {
            d.status = DeployStatus::Failed;
            d.is_running = false;
            let why = x
                .error
                .as_ref()
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_else(|| x.status.as_str().to_owned());
            d.log(now, "start_failed", why, "error");
        }
        (_, true) => {
            let why = x
                .error
                .as_ref()
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_else(|| x.status.as_str().to_owned());
            d.log(now, "stop_failed", why, "error");
        }
    }
    true
}

/// Applies a node's `deployment.status` report.
pub fn status_reported(d: &mut Deployment, data: &Value, now: i64) -> bool {
    let status = data["status"].as_str().unwrap_or_default();
    let message = data["message"].as_str().map(str::to_owned);
    if let Some(e) = data["endpoint"].as_str() {
        d.endpoint = Some(e.to_owned());
    }
    if let Some(u) = data["uptime"].as_u64() {
        d.uptime = u;
    }
    if let Some(n) = data["totalInferences"].as_u64() {
        d.total_inferences = n;
    }
    if let Some(l) = data["averageLatency"].as_f64() {
        d.average_latency = l;
    }
    if data["healthStatus"].is_string() {
        d.last_health_check = Some(now);
    }
    match status {
        "running" => {
            if d.status != DeployStatus::Running && d.status != DeployStatus::Stopped {
                d.log(
                    now,
                    "running",
                    message.unwrap_or_else(|| "running".into()),
                    "info",
                );
            }
            if d.status != DeployStatus::Stopped {
                d.status = DeployStatus::Running;
                d.is_running = true;
            }
        }
        "restarting" | "crashed" => d.log(
            now,
            "restarted",
            message.unwrap_or_else(|| "the model server exited; restarting".into()),
            "warning",
        ),
        "failed" => {
            d.status = DeployStatus::Failed;
            d.is_running = false;
            d.log(
                now,
                "failed",
                message.unwrap_or_else(|| "the model server failed".into()),
                "error",
            );
        }
        "stopped" => {
            d.status = DeployStatus::Stopped;
            d.is_running = false;
        }
        _ => {}
    }
    true
}

impl DeployState {
    async fn persist(&mut self, next: Deployment) -> Result<Deployment, DomainError> {
        let version = self
            .store
            .commit(vec![Write::put(&next, Some(self.version))?])
            .await?[0];
        self.version = version;
        self.d = next;
        Ok(self.d.clone())
    }

    /// A new execution key for a start or a stop.
    fn key(&self, what: &str) -> String {
        format!(
            "deploy-{}-{what}-{}",
            self.d.deployment_id,
            &warden_storage::new_uuid()[..8]
        )
    }

    /// Launches what `execution_id` names (a start or a stop); the same
    /// key finds the same execution when it was created already.
    async fn launch(&mut self, by: &str) -> Result<(), DomainError> {
        let Some(key) = self.d.execution_id.clone() else {
            return Ok(());
        };
        let org = self.d.owner.org_id.clone();
        let program = if key.contains("-stop-") {
            stop_program(&self.d, &key)
        } else {
            let model: Model =
                warden_domain::resolve(&self.store, "modelId", &org, &self.d.model_id)?
                    .ok_or_else(|| {
                        DomainError::Invalid(vec![format!(
                            "modelId {}: no such model",
                            self.d.model_id
                        )])
                    })?;
            let file = model.served_file(&self.store)?;
            start_program(&self.d, &model, &file, &key)
        };
        let x = self
            .launcher
            .launch(self.d.owner.clone(), by.to_owned(), program)
            .await?;
        if x.status.is_terminal() {
            let mut next = self.d.clone();
            if execution_ended(&mut next, &x, now_millis()) {
                self.persist(next).await?;
            }
        }
        Ok(())
    }

    async fn begin(&mut self, what: &str, by: &str) -> Result<Deployment, DomainError> {
        let org = self.d.owner.org_id.clone();
        if what == "start" {
            if warden_domain::resolve::<Model>(&self.store, "modelId", &org, &self.d.model_id)?
                .is_none()
            {
                return Err(DomainError::Invalid(vec![format!(
                    "modelId {}: no such model",
                    self.d.model_id
                )]));
            }
            if warden_domain::resolve::<Node>(&self.store, "nodeId", &org, &self.d.node_id)?
                .is_none()
            {
                return Err(DomainError::Invalid(vec![format!(
                    "nodeId {}: no such node",
                    self.d.node_id
                )]));
            }
        }
        let mut next = self.d.clone();
        next.execution_id = Some(self.key(what));
        if what == "start" {
            next.status = DeployStatus::Pending;
        }
        let now = now_millis();
        next.log(now, what, format!("{what} requested by {by}"), "info");
        next.audit.touch(by);
        self.persist(next).await?;
        if let Err(e) = self.launch(by).await {
            let mut next = self.d.clone();
            next.log(
                now_millis(),
                &format!("{what}_failed"),
                e.to_string(),
                "error",
            );
            if what == "start" {
                next.status = DeployStatus::Failed;
            }
            self.persist(next).await?;
            return Err(e);
        }
        Ok(self.d.clone())
    }
}

impl Actor for DeploymentActor {
    type Msg = DeployMsg;
    type State = DeployState;
    type Arguments = DeployArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<DeployMsg>,
        args: DeployArgs,
    ) -> Result<DeployState, ActorProcessingErr> {
        let (d, version) = args
            .store
            .get_versioned::<Deployment>(&args.id)?
            .filter(|(d, _)| d.audit.deleted_at.is_none())
            .ok_or_else(|| format!("deployment {} does not exist", args.id))?;
        Ok(DeployState {
            store: args.store,
            d,
            version,
            launcher: args.launcher,
        })
    }

    /// After a restart: a start or stop that was recorded but whose
    /// execution may not exist yet is launched (the same key finds it if
    /// it does; one that ended meanwhile is applied).
    async fn post_start(
        &self,
        _myself: ActorRef<DeployMsg>,
        state: &mut DeployState,
    ) -> Result<(), ActorProcessingErr> {
        let in_flight = state.d.execution_id.is_some()
            && (state.d.status == DeployStatus::Pending || state.d.is_running);
        if in_flight {
            let by = state.d.audit.updated_by.clone();
            if let Err(e) = state.launch(&by).await {
                tracing::warn!(deployment = %state.d.id, error = %e, "could not resume a start or stop");
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<DeployMsg>,
        msg: DeployMsg,
        state: &mut DeployState,
    ) -> Result<(), ActorProcessingErr> {
        Box::pin(handle_message(myself, msg, state)).await
    }
}

async fn handle_message(
    myself: ActorRef<DeployMsg>,
    msg: DeployMsg,
    state: &mut DeployState,
) -> Result<(), ActorProcessingErr> {
    match msg {
        DeployMsg::Update { input, by, reply } => {
            let mut next = state.d.clone();
            let result = match apply(&mut next, *input, &by) {
                Ok(()) => state.persist(next).await,
                Err(e) => Err(e),
            };
            let _ = reply.send(result);
        }
        DeployMsg::Start { by, reply } => {
            let result = match state.d.status {
                DeployStatus::Running => Err(DomainError::Invalid(vec![
                    "Deployment is already running".into(),
                ])),
                DeployStatus::Pending if state.d.execution_id.is_some() => {
                    Err(DomainError::Invalid(vec![
                        "Deployment is already starting".into(),
                    ]))
                }
                _ => state.begin("start", &by).await,
            };
            let _ = reply.send(result);
        }
        DeployMsg::Stop { by, reply } => {
            let starting =
                state.d.status == DeployStatus::Pending && state.d.execution_id.is_some();
            let result = if state.d.is_running || starting {
                state.begin("stop", &by).await
            } else {
                Err(DomainError::Invalid(vec![
                    "Deployment is not running".into(),
                ]))
            };
            let _ = reply.send(result);
        }
        DeployMsg::Delete { by, reply } => {
            if state.d.is_running {
                // Best effort: the node is told; the record goes regardless.
                if let Err(e) = state.begin("stop", &by).await {
                    tracing::warn!(deployment = %state.d.id, error = %e, "could not stop a deleted deployment");
                }
            }
            let mut next = state.d.clone();
            next.audit.delete(&by);
            match state.persist(next).await {
                Ok(d) => {
                    let _ = reply.send(Ok(d));
                    myself.stop(Some("deleted".into()));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        DeployMsg::Report(report) => {
            let mut next = state.d.clone();
            let now = now_millis();
            let changed = match *report {
                Report::Execution(x) => execution_ended(&mut next, &x, now),
                Report::Status(data) => status_reported(&mut next, &data, now),
            };
            if changed && next != state.d {
                next.audit.updated_at = now.max(next.audit.updated_at);
                state.persist(next).await?;
            }
        }
        DeployMsg::Crash => panic!(
            "fault injection: deployment {} was told to crash",
            state.d.id
        ),
    }
    Ok(())
}

/// The public API of a running deployment actor.
#[derive(Clone)]
pub struct DeployHandle(pub ActorRef<DeployMsg>);

async fn call<T: Send + 'static>(
    actor: &ActorRef<DeployMsg>,
    msg: impl FnOnce(RpcReplyPort<Result<T, DomainError>>) -> DeployMsg,
) -> Result<T, DomainError> {
    crate::ask(
        actor,
        std::time::Duration::from_secs(30),
        "the deployment's actor",
        msg,
    )
    .await
}

impl DeployHandle {
    pub async fn update(
        &self,
        input: DeploymentInput,
        by: &str,
    ) -> Result<Deployment, DomainError> {
        let by = by.to_owned();
        call(&self.0, |reply| DeployMsg::Update {
            input: Box::new(input),
            by,
            reply,
        })
        .await
    }

    pub async fn start(&self, by: &str) -> Result<Deployment, DomainError> {
        let by = by.to_owned();
        call(&self.0, |reply| DeployMsg::Start { by, reply }).await
    }

    pub async fn stop(&self, by: &str) -> Result<Deployment, DomainError> {
        let by = by.to_owned();
        call(&self.0, |reply| DeployMsg::Stop { by, reply }).await
    }

    pub async fn delete(&self, by: &str) -> Result<Deployment, DomainError> {
        let by = by.to_owned();
        call(&self.0, |reply| DeployMsg::Delete { by, reply }).await
    }

    /// False when the actor is gone (re-resolve it).
    pub fn report(&self, report: Report) -> bool {
        self.0.cast(DeployMsg::Report(Box::new(report))).is_ok()
    }

    pub fn crash(&self) {
        let _ = self.0.cast(DeployMsg::Crash);
    }
}
