//! Starting and stopping the server: store, identity, runtime, listener.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpSocket;
use warden_api::{ApiConfig, AppState};
use warden_identity::Identity;
use warden_storage::{Store, StoreConfig};
use warden_supervisors::{Runtime, RuntimeConfig};

use crate::config::ServerConfig;

/// A server that is accepting connections.
pub struct Running {
    pub addr: SocketAddr,
    /// The generated first-admin password, when one was generated.
    pub generated_admin: Option<(String, String)>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops accepting, drains, stops the actors and closes the store.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        self.task.await?
    }

    /// Runs until `signal` resolves, then stops gracefully; or until the
    /// server stops by itself (a poisoned store), with its error.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            _ = signal => self.stop().await,
            ended = &mut self.task => ended?,
        }
    }
}

/// Binds with a large backlog: the default 128 stalls connect bursts.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

pub async fn start(config: ServerConfig) -> anyhow::Result<Running> {
    crate::config::check_shell(&config.shell)?;
    // One connection is one fd: lift the soft limit to the hard one.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
    if config.durability == warden_storage::Durability::Unflushed {
        tracing::warn!(
            "durability is `unflushed`: writes are acknowledged before they are flushed, and a killed process loses up to a second of them; use it to measure, never for data"
        );
    }
    let store = Store::open(&StoreConfig {
        data_dir: config.data_dir.clone(),
        durability: config.durability,
        cache_bytes: config.store_cache_bytes,
    })
    .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    // The data dir holds the signing key and every record: its owner's
    // alone (shells and user processes run as other users).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", config.data_dir.display()))?;
    }
    // Collections whose indexes changed since the store was written are
    // re-indexed once, before anything reads them.
    warden_identity::model::ensure_indexes(&store).await?;
    warden_actors::node::ensure_indexes(&store).await?;
    warden_actors::execution::ensure_indexes(&store).await?;
    warden_actors::deployment::ensure_indexes(&store).await?;
    warden_actors::conversation::ensure_indexes(&store).await?;
    warden_actors::telegram::ensure_indexes(&store).await?;
    warden_domain::ensure_indexes(&store).await?;
    let identity = Identity::open(
        store.clone(),
        &config.data_dir.join("secrets"),
        config.token_ttl_secs,
        config.node_tokens,
        config.smtp.clone(),
    )?;
    let generated_admin = identity
        .bootstrap_admin(
            config.admin_username.clone(),
            config.admin_password.clone(),
            config.admin_email.clone(),
        )
        .await?
        .and_then(|(user, password)| password.map(|p| (user, p)));
    let runtime = Runtime::start(
        store.clone(),
        RuntimeConfig {
            root: config.root_policy,
            nodes: config.node_policy,
            executions: config.execution_policy,
            deployments: config.deployment_policy,
            backends: config.backend_policy,
            conversations: config.conversation_policy,
            conversation_idle: Some(config.conversation_idle),
            telegram: config.telegram_policy,
            telegram_api: Some(config.telegram_api.clone()),
            training: config.training_policy,
            training_max_concurrent: Some(config.training_max_concurrent),
            node_timing: config.node_timing,
            llm_probe_interval: Some(config.llm_probe_interval),
            llm_defaults: config.llm_defaults.clone(),
            js_workers: Some(config.js_workers),
            js_limits: Some(config.js_limits),
            hooks_allow_internal: config.hooks_allow_internal,
            shell: config.shell.clone(),
            exec: config.exec.clone(),
            agents: config.agent_policy,
            runtimes: config.runtimes.clone(),
        },
    )
    .await
    .context("starting the supervision tree")?;
    let (lifecycle, mut lifecycle_control) = warden_api::Lifecycle::new();
    let housekeeping_identity = identity.clone();
    let state = AppState::new(
        store.clone(),
        identity,
        runtime.clone(),
        ApiConfig {
            enable_fault_injection: config.enable_fault_injection,
            max_body_bytes: config.max_body_bytes,
            version: env!("CARGO_PKG_VERSION"),
            rate_limits: config.rate_limits,
            trusted_proxies: config.trusted_proxies.clone(),
            import: warden_import::Settings::new(
                config.import_timeout,
                config.import_dirs.clone(),
                warden_api::MAX_UPLOAD,
            ),
            device_command_wait: config.device_command_wait,
        },
        lifecycle,
    );

    // Background work a stopped server left unfinished.
    warden_domain::evaluation::resume_gradients(&store);

    let listener = bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    runtime.egress.set_own_address(addr);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = warden_api::router(state);
    let usage_runtime = runtime.clone();
    let usage_flusher = tokio::spawn(async move {
        let mut every = tokio::time::interval(USAGE_FLUSH);
        loop {
            every.tick().await;
            usage_runtime.llm.flush_usage().await;
        }
    });
    let pruner = tokio::spawn(housekeeping(
        store.clone(),
        housekeeping_identity,
        config.telemetry_retention,
    ));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let poisoned = store.poisoned();
    let poison = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let task = tokio::spawn(async move {
        let cause = poison.clone();
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            // A failed flush means acknowledgements can no longer be
            // trusted: stop, as PostgreSQL does after a failed fsync.
            tokio::select! {
                _ = rx => {}
                reason = poisoned => {
                    tracing::error!(%reason, "the store is poisoned by a failed flush; stopping");
                    let _ = cause.set(reason);
                }
            }
            lifecycle_control.stop();
            // Upgraded connections outlive graceful shutdown: wait for them here.
            if !lifecycle_control
                .wait(std::time::Duration::from_secs(10))
                .await
            {
                tracing::warn!("some node sessions did not close in time");
            }
        })
        .await?;
        pruner.abort();
        let _ = pruner.await;
        usage_flusher.abort();
        let _ = usage_flusher.await;
        runtime.shutdown().await;
        store.close();
        if let Some(reason) = poison.get() {
            anyhow::bail!("stopped because the store is poisoned: {reason}");
        }
        tracing::info!("stopped");
        Ok(())
    });
    tracing::info!(%addr, "listening");
    Ok(Running {
        addr,
        generated_admin,
        shutdown: tx,
        task,
    })
}

/// Every ten minutes: drops telemetry points older than the retention,
/// and credentials and one-time secrets that have expired.
/// How often counted LLM usage is stored: a crash loses at most this
/// much counting (never a request).
const USAGE_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

async fn housekeeping(store: Store, identity: Identity, retention: std::time::Duration) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(600));
    loop {
        every.tick().await;
        let before = warden_storage::now_millis() - retention.as_millis() as i64;
        match store.prune_points(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(points = n, "pruned old telemetry"),
            Err(e) => tracing::warn!(error = %e, "could not prune telemetry"),
        }
        match identity.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "swept expired credentials and codes"),
            Err(e) => tracing::warn!(error = %e, "could not sweep expired credentials"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
