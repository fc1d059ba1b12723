//! A deployment: a model served on a node. Its `DeploymentActor` is the
//! only writer of its record; starting and stopping are executions (so
//! they are durable, retried and visible like any other), and the node's
//! reports (`deployment.status`) move the record while it runs.

mod actor;
mod record;

pub use actor::{
    DeployArgs, DeployHandle, DeployMsg, DeploymentActor, Launcher, Report, execution_ended,
    start_program, status_reported, stop_program,
};
pub use record::{DeployEvent, DeployStatus, Deployment, MAX_EVENTS};

use warden_domain::rules::{Checks, MAX_SHORT};
use warden_domain::{Audit, Owner};
use warden_storage::new_object_id;

use crate::DomainError;

pub const ENVIRONMENTS: [&str; 3] = ["development", "staging", "production"];
pub const DEPLOYMENT_TYPES: [&str; 3] = ["api", "batch", "streaming"];
pub const HARDWARE_PROFILES: [&str; 3] = ["cpu", "gpu", "multi-gpu"];

/// What a client may set; `None` leaves a field as it is. Runtime fields
/// (`isRunning`, `endpoint`, usage counters, events) are the node's.
#[derive(Debug, Clone, Default)]
pub struct DeploymentInput {
    pub deployment_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub environment: Option<String>,
    pub model_id: Option<String>,
    pub node_id: Option<String>,
    pub deployment_type: Option<String>,
    pub replicas: Option<u64>,
    pub hardware_profile: Option<String>,
    pub container_name: Option<String>,
    pub container_port: Option<u64>,
    pub extra: String,
}

/// The series of a deployment's log lines (a node's reports, a runtime's
/// output).
pub fn logs_series(deployment: &str) -> String {
    format!("deployment/{deployment}/logs")
}

/// Re-indexes the deployment records once when their indexes changed.
pub async fn ensure_indexes(
    store: &warden_storage::Store,
) -> Result<(), warden_storage::StorageError> {
    store.ensure_indexes::<Deployment>().await?;
    Ok(())
}

fn check(input: &DeploymentInput, create: bool) -> Result<(), DomainError> {
    let mut c = Checks::new();
    c.key("deploymentId", &input.deployment_id, false);
    c.text("name", &input.name, create, MAX_SHORT);
    c.text("description", &input.description, false, 4096);
    c.one_of("environment", &input.environment, &ENVIRONMENTS, false);
    c.text("modelId", &input.model_id, create, MAX_SHORT);
    c.text("nodeId", &input.node_id, create, MAX_SHORT);
    c.one_of(
        "deploymentType",
        &input.deployment_type,
        &DEPLOYMENT_TYPES,
        false,
    );
    c.one_of(
        "hardwareProfile",
        &input.hardware_profile,
        &HARDWARE_PROFILES,
        false,
    );
    c.text("containerName", &input.container_name, false, MAX_SHORT);
    if input.replicas.is_some_and(|r| !(1..=64).contains(&r)) {
        c.fail("replicas must be between 1 and 64".into());
    }
    if input
        .container_port
        .is_some_and(|p| !(1..=65535).contains(&p))
    {
        c.fail("containerPort must be between 1 and 65535".into());
    }
    c.finish()
}

/// The first version of a deployment: `pending`, not running.
pub fn create(input: DeploymentInput, owner: Owner, by: &str) -> Result<Deployment, DomainError> {
    check(&input, true)?;
    let mut d = blank(owner, by);
    apply(&mut d, input, by)?;
    d.log(d.audit.created_at, "created", "deployment created", "info");
    Ok(d)
}

/// A deployment with every default and nothing to run yet (runtimes
/// fill in their own program).
pub fn blank(owner: Owner, by: &str) -> Deployment {
    Deployment {
        id: new_object_id(),
        deployment_id: warden_storage::new_uuid(),
        name: String::new(),
        description: String::new(),
        environment: "development".into(),
        status: DeployStatus::Pending,
        model_id: String::new(),
        node_id: String::new(),
        deployment_type: "api".into(),
        replicas: 1,
        hardware_profile: "cpu".into(),
        is_running: false,
        container_name: None,
        container_port: None,
        endpoint: None,
        total_inferences: 0,
        average_latency: 0.0,
        uptime: 0,
        last_health_check: None,
        events: Vec::new(),
        execution_id: None,
        extra: String::new(),
        owner,
        audit: Audit::new(by),
    }
}

/// A client's update. The model and node of a running deployment stay
/// put: stop it first.
pub fn apply(d: &mut Deployment, input: DeploymentInput, by: &str) -> Result<(), DomainError> {
    check(&input, false)?;
    let moves = input.model_id.as_ref().is_some_and(|m| *m != d.model_id)
        || input.node_id.as_ref().is_some_and(|n| *n != d.node_id);
    if moves && d.is_running {
        return Err(DomainError::Invalid(vec![
            "stop the deployment before changing its model or node".into(),
        ]));
    }
    use warden_domain::set;
    set(&mut d.deployment_id, input.deployment_id);
    set(&mut d.name, input.name);
    set(&mut d.description, input.description);
    set(&mut d.environment, input.environment);
    set(&mut d.model_id, input.model_id);
    set(&mut d.node_id, input.node_id);
    set(&mut d.deployment_type, input.deployment_type);
    set(&mut d.replicas, input.replicas.map(|r| r as u32));
    set(&mut d.hardware_profile, input.hardware_profile);
    set(&mut d.container_name, input.container_name.map(Some));
    set(
        &mut d.container_port,
        input.container_port.map(|p| Some(p as u32)),
    );
    if !input.extra.is_empty() {
        d.extra = crate::merge_extra(&d.extra, &input.extra);
    }
    d.audit.touch(by);
    Ok(())
}
