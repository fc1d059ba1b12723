//! Deployments: the kind definition for the supervisor and the service
//! the API calls. Starts and stops run as executions ([`Executions`] as
//! the actors' [`Launcher`]); their ends and the nodes' status reports
//! come back to the deployment's actor.

use std::sync::{Arc, OnceLock};

use ractor::ActorRef;
use serde_json::Value;
use warden_actors::DomainError;
use warden_actors::deployment::{
    self, DeployArgs, DeployHandle, DeployMsg, DeployStatus, Deployment, DeploymentActor,
    DeploymentInput, Launcher, Report, logs_series,
};
use warden_actors::execution::{BoxFuture, ExecStatus, Execution, ExecutionListener, NewExecution};
use warden_domain::Owner;
use warden_storage::{Record, Store};

use crate::kind::WeakKindRef;
use crate::{Executions, Kind, KindRef};

pub struct DeploymentKind {
    store: Store,
    launcher: Arc<dyn Launcher>,
}

impl DeploymentKind {
    pub(crate) fn new(store: Store, launcher: Arc<dyn Launcher>) -> Self {
        DeploymentKind { store, launcher }
    }
}

impl Kind for DeploymentKind {
    type Actor = DeploymentActor;
    type Msg = DeployMsg;
    type Args = DeployArgs;
    const KIND: &'static str = "deployment";
    const SUPERVISOR: &'static str = "deployments";

    fn actor(&self) -> DeploymentActor {
        DeploymentActor
    }

    fn args(&self, id: &str) -> DeployArgs {
        DeployArgs {
            store: self.store.clone(),
            id: id.to_owned(),
            launcher: self.launcher.clone(),
        }
    }

    /// A runtime (deployment type `runtime`) is run by its own actor kind.
    fn exists(&self, id: &str) -> Result<bool, DomainError> {
        Ok(self
            .store
            .get::<Deployment>(id)?
            .is_some_and(|d| !d.is_deleted() && d.deployment_type != warden_actors::runtime::KIND))
    }

    /// Deployments are activated on use: their starts and stops are
    /// executions, which resume by themselves and report back.
    fn boot_ids(&self) -> Vec<String> {
        Vec::new()
    }

    fn failed(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    async fn mark_failed(&self, id: &str, reason: &str) {
        let now = warden_storage::now_millis();
        let result = self
            .store
            .update::<Deployment, DomainError>(id, |d| {
                d.status = DeployStatus::Failed;
                d.log(
                    now,
                    "actor_failed",
                    format!("the deployment's actor failed too often: {reason}"),
                    "error",
                );
                Ok(Some(()))
            })
            .await;
        if let Err(e) = result {
            tracing::error!(deployment = id, error = %e, "could not record the deployment's failure");
        }
    }

    async fn clear_failed(&self, _id: &str) {}

    fn crash(actor: &ActorRef<DeployMsg>) {
        DeployHandle(actor.clone()).crash();
    }
}

/// Starts and stops are executions: created once per key, then started.
impl Launcher for Executions {
    fn launch(
        &self,
        owner: Owner,
        by: String,
        new: NewExecution,
    ) -> BoxFuture<Result<Execution, DomainError>> {
        let executions = self.clone();
        Box::pin(async move {
            let key = new.execution_id.clone().unwrap_or_default();
            let org = owner.org_id.clone();
            let x = match executions.create(new, owner, &by).await {
                Ok(x) => x,
                // A relaunch after a crash: the key names the first one.
                Err(DomainError::Conflict { .. }) => executions
                    .resolve(&org, &key)?
                    .ok_or_else(|| DomainError::Unavailable("the execution vanished".into()))?,
                Err(e) => return Err(e),
            };
            if x.status == ExecStatus::Pending {
                executions.start(&x.id, false).await
            } else {
                Ok(x)
            }
        })
    }
}

/// Where ended executions go once the deployments kind exists.
pub(crate) type EndRoute = Arc<OnceLock<WeakKindRef<DeploymentKind>>>;

/// Tells a deployment that its start or stop execution ended.
pub(crate) fn route_end(route: EndRoute) -> ExecutionListener {
    Arc::new(move |x: &Execution| {
        if x.resource_type.as_deref() != Some("deployment") {
            return;
        }
        let (Some(kind), Some(id)) = (
            route.get().and_then(WeakKindRef::upgrade),
            x.resource_id.clone(),
        ) else {
            return;
        };
        let report = Report::Execution(Box::new(x.clone()));
        tokio::spawn(async move { deliver(&kind, &id, report).await });
    })
}

async fn deliver(kind: &KindRef<DeploymentKind>, id: &str, report: Report) {
    let delivered = kind
        .with_actor(id, |a| {
            let report = report.clone();
            async move {
                if DeployHandle(a).report(report) {
                    Ok(())
                } else {
                    Err(DomainError::Unavailable(
                        "the deployment's actor stopped".into(),
                    ))
                }
            }
        })
        .await;
    if let Err(e) = delivered {
        tracing::debug!(deployment = %id, error = %e, "a report found no deployment");
    }
}

/// Deployment requests. Reads go straight to the store.
#[derive(Clone)]
pub struct Deployments {
    kind: KindRef<DeploymentKind>,
    store: Store,
}

impl Deployments {
    pub(crate) fn new(kind: KindRef<DeploymentKind>, store: Store) -> Self {
        Deployments { kind, store }
    }

    /// A live deployment by `_id`, or by `deploymentId` within `org`.
    pub fn resolve(&self, org: &str, id: &str) -> Result<Option<Deployment>, DomainError> {
        warden_domain::resolve(&self.store, "deploymentId", org, id)
    }

    /// Writes the first version (`pending`, not running).
    pub async fn create(
        &self,
        input: DeploymentInput,
        owner: Owner,
        by: &str,
    ) -> Result<Deployment, DomainError> {
        let d = deployment::create(input, owner, by)?;
        Ok(self.store.insert(d).await?)
    }

    async fn call<T, F, Fut>(&self, id: &str, f: F) -> Result<T, DomainError>
    where
        F: Fn(DeployHandle) -> Fut,
        Fut: std::future::Future<Output = Result<T, DomainError>>,
    {
        self.kind.with_actor(id, |a| f(DeployHandle(a))).await
    }

    pub async fn update(
        &self,
        id: &str,
        input: DeploymentInput,
        by: &str,
    ) -> Result<Deployment, DomainError> {
        self.call(id, |h| {
            let input = input.clone();
            async move { h.update(input, by).await }
        })
        .await
    }

    pub async fn start(&self, id: &str, by: &str) -> Result<Deployment, DomainError> {
        self.call(id, |h| async move { h.start(by).await }).await
    }

    pub async fn stop(&self, id: &str, by: &str) -> Result<Deployment, DomainError> {
        self.call(id, |h| async move { h.stop(by).await }).await
    }

    pub async fn delete(&self, id: &str, by: &str) -> Result<Deployment, DomainError> {
        self.call(id, |h| async move { h.delete(by).await }).await
    }

    /// The deployment a node's report names (`deploymentId`), in the
    /// node's organisation and placed on that node: a node speaks only
    /// for its own deployments.
    fn named_by(&self, node: &str, data: &Value) -> Option<Deployment> {
        let name = data["deploymentId"].as_str()?;
        let n = self
            .store
            .get::<warden_actors::node::Node>(node)
            .ok()
            .flatten()?;
        let d = self.resolve(&n.owner.org_id, name).ok().flatten()?;
        (d.node_id == n.id || d.node_id == n.node_id).then_some(d)
    }

    /// A node's `deployment.status` (its `data`) for one of its deployments.
    pub async fn node_report(&self, node: &str, data: Value) {
        if let Some(d) = self.named_by(node, &data) {
            deliver(&self.kind, &d.id, Report::Status(data)).await;
        }
    }

    /// A node's `deployment.logs`: each line a point of the deployment's
    /// log series (kept as long as telemetry is).
    pub fn node_logs(&self, node: &str, data: &Value) -> Result<(), DomainError> {
        let Some(d) = self.named_by(node, data) else {
            return Ok(());
        };
        let series = logs_series(&d.id);
        for (i, line) in data["logs"].as_array().into_iter().flatten().enumerate() {
            let at = line["timestamp"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis())
                .unwrap_or_else(warden_storage::now_millis);
            let id = format!("{at}-{i}-{}", &warden_storage::new_uuid()[..8]);
            self.store
                .append_point_nowait(&series, at, &id, line.to_string().into_bytes())?;
        }
        Ok(())
    }
}
