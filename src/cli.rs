//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use warden_storage::Durability;

use crate::config::{self, FileConfig, ServerConfig};

#[derive(Debug, Parser)]
#[command(
    name = "warden",
    version,
    about = "Self-hosted control plane for AI infrastructure: five platform APIs on one port, over one supervised actor runtime."
)]
pub struct Cli {
    /// TOML configuration file (flags and environment take precedence).
    #[arg(long, env = "WARDEN_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `warden=debug,info`.
    #[arg(long, env = "WARDEN_LOG", global = true)]
    pub log: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "WARDEN_LOG_JSON", global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: every dialect's API, the admin API and the actor runtime.
    Serve(ServeArgs),
    /// Print the live actor tree of a running server.
    Actors(ActorsArgs),
    /// Run the node daemon: connect this host to a server as a node.
    Node(NodeArgs),
    /// Serve one ONNX model over HTTP (what the daemon runs for `onnx`
    /// deployments): GET / for its state, POST /v1/infer to run it.
    ServeModel(ServeModelArgs),
    /// JWT signing keys of a running server.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Debug, Args)]
pub struct ServeModelArgs {
    /// The .onnx file.
    #[arg(long)]
    pub model: std::path::PathBuf,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// The ONNX Runtime shared library (scripts/onnxruntime prints it).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_library: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// List the signing keys (ids, ages, retirement; never secrets).
    List(ServerArgs),
    /// Make a new signing key; older tokens stay valid until they expire.
    Rotate(ServerArgs),
}

/// Where a running server is, and an admin's credential for it.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Base URL of the server.
    #[arg(long, env = "WARDEN_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// An admin's access token (from POST /auth/login).
    #[arg(long, env = "WARDEN_TOKEN")]
    pub token: String,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Base URL of the server.
    #[arg(long, env = "WARDEN_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// A node token (POST /api/nodes/{id}/token) or a user's access token.
    #[arg(long, env = "WARDEN_TOKEN")]
    pub token: String,
    /// The node to run as (default: the one this data dir used, else the host name).
    #[arg(long, env = "WARDEN_NODE_ID")]
    pub node_id: Option<String>,
    /// Where the daemon keeps its node id and undelivered telemetry.
    #[arg(long, env = "WARDEN_NODE_DATA_DIR", default_value = "./warden-node")]
    pub data_dir: std::path::PathBuf,
    /// Where model.download puts models (default: <data-dir>/models); no
    /// download writes outside it.
    #[arg(long, env = "WARDEN_MODELS_DIR")]
    pub models_dir: Option<std::path::PathBuf>,
    /// The model hub that `org/name` sources are fetched from.
    #[arg(long, env = "WARDEN_HUB_URL", default_value = crate::node::DEFAULT_HUB)]
    pub hub_url: String,
    /// How deployments of a framework are served: FRAMEWORK=TEMPLATE, with
    /// {modelPath}, {modelDir}, {port} and {host} in the template's words
    /// ("*" for any framework). Repeat for several.
    #[arg(long = "runtime", env = "WARDEN_RUNTIMES", value_delimiter = ';')]
    pub runtimes: Vec<String>,
    /// The address endpoints of served models are advertised with
    /// (default: the host's address).
    #[arg(long, env = "WARDEN_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// The ONNX Runtime library for `onnx` deployments, which this binary
    /// serves itself (scripts/onnxruntime installs it).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_library: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "WARDEN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory: db/ (sled), blobs/, secrets/ [default: ./warden-data].
    #[arg(long, env = "WARDEN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Serve the fault-injection routes: POST /admin/actors/{name}/crash,
    /// /admin/store/fail-next-flush and /admin/store/flush-delay.
    #[arg(long, env = "WARDEN_ENABLE_FAULT_INJECTION")]
    pub enable_fault_injection: bool,
    /// `flush` survives a killed process; `fsync` also survives power loss;
    /// `unflushed` (benchmarks only) acknowledges before the flush and loses
    /// up to 1 s of writes to a killed process [default: flush].
    #[arg(long, env = "WARDEN_DURABILITY", value_parser = parse_durability)]
    pub durability: Option<Durability>,
    /// The most memory the store's page cache may hold, MiB [default: 256].
    #[arg(long, env = "WARDEN_STORE_CACHE_MIB")]
    pub store_cache_mib: Option<u64>,
    /// Reverse proxies whose X-Forwarded-For names the client: addresses
    /// or CIDR ranges, comma-separated [default: none; the header is ignored].
    #[arg(long, env = "WARDEN_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Option<Vec<ipnet::IpNet>>,
}

/// An address (`10.0.0.1`) or a CIDR range (`10.0.0.0/8`).
pub fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{s}` is neither an IP address nor a CIDR range"))
}

#[derive(Debug, Args)]
pub struct ActorsArgs {
    /// Base URL of the server.
    #[arg(long, env = "WARDEN_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// An admin's access token (from POST /auth/login).
    #[arg(long, env = "WARDEN_TOKEN")]
    pub token: String,
    /// Print the JSON instead of the indented tree.
    #[arg(long)]
    pub json: bool,
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "flush" => Ok(Durability::Flush),
        "fsync" => Ok(Durability::Fsync),
        "unflushed" => Ok(Durability::Unflushed),
        _ => Err("expected `flush`, `fsync` or (to measure what durability costs, never for data) `unflushed`".into()),
    }
}

impl ServeArgs {
    /// Merges flags/env (already merged by clap) over the file and defaults.
    pub fn resolve(self, file: FileConfig) -> anyhow::Result<ServerConfig> {
        let mut c = ServerConfig::for_data_dir(
            self.data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| config::DEFAULT_DATA_DIR.into()),
        );
        c.listen = match self.listen.or(file.listen) {
            Some(a) => a,
            None => config::DEFAULT_LISTEN.parse()?,
        };
        c.enable_fault_injection =
            self.enable_fault_injection || file.enable_fault_injection.unwrap_or(false);
        c.durability = self.durability.or(file.durability).unwrap_or_default();
        if let Some(mib) = self.store_cache_mib.or(file.store_cache_mib) {
            anyhow::ensure!(
                config::STORE_CACHE_MIB.contains(&mib),
                "store_cache_mib must be between {} and {} MiB (--store-cache-mib, WARDEN_STORE_CACHE_MIB or the file)",
                config::STORE_CACHE_MIB.start(),
                config::STORE_CACHE_MIB.end()
            );
            c.store_cache_bytes = mib << 20;
        }
        c.token_ttl_secs = file
            .token_ttl_secs
            .unwrap_or(config::DEFAULT_TOKEN_TTL_SECS);
        c.max_body_bytes = file
            .max_body_bytes
            .unwrap_or(config::DEFAULT_MAX_BODY_BYTES);
        c.root_policy = file.supervision.root.unwrap_or_default();
        c.node_policy = file.supervision.nodes.unwrap_or_default();
        c.execution_policy = file.supervision.executions.unwrap_or_default();
        c.deployment_policy = file.supervision.deployments.unwrap_or_default();
        c.backend_policy = file.supervision.backends.unwrap_or_default();
        c.conversation_policy = file.supervision.conversations.unwrap_or_default();
        c.telegram_policy = file.supervision.telegram.unwrap_or_default();
        c.training_policy = file.supervision.training.unwrap_or_default();
        if let Some(n) = file.training.max_concurrent {
            c.training_max_concurrent = n.clamp(1, 64);
        }
        if let Some(allow) = file.hooks.allow_internal_addresses {
            c.hooks_allow_internal = allow;
        }
        c.shell = file.shell.policy(&c.data_dir)?;
        c.exec = file.exec.policy(&c.data_dir);
        c.runtimes = file.runtimes.policy(&c.data_dir)?;
        c.agent_policy = file.supervision.agents.unwrap_or_default();
        if let Some(n) = file.functions.workers {
            c.js_workers = n.clamp(1, 64);
        }
        if let Some(ms) = file.functions.deadline_ms {
            c.js_limits.deadline = std::time::Duration::from_millis(ms.clamp(10, 600_000));
        }
        if let Some(mib) = file.functions.heap_mib {
            c.js_limits.heap_bytes = mib.clamp(4, 4096) << 20;
        }
        if let Some(secs) = file.datasets.import_timeout_secs {
            c.import_timeout = std::time::Duration::from_secs(secs.max(1));
        }
        if let Some(dirs) = file.datasets.import_dirs.clone() {
            c.import_dirs = dirs;
        }
        if let Some(base) = file.telegram.api_base.clone() {
            c.telegram_api = base;
        }
        if let Some(secs) = file.conversations.idle_passivate_secs {
            c.conversation_idle = std::time::Duration::from_secs(secs.max(1));
        }
        if let Some(m) = file.llm.embed_model.clone() {
            c.llm_defaults.embed_model = m;
        }
        if let Some(m) = file.llm.task_model.clone() {
            c.llm_defaults.task_model = m;
        }
        if let Some(secs) = file.llm.probe_interval_secs {
            c.llm_probe_interval = std::time::Duration::from_secs(secs.max(1));
        }
        let env_ms = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| *v > 0)
        };
        if let Some(ms) =
            env_ms("WARDEN_NODE_HEARTBEAT_INTERVAL_MS").or(file.nodes.heartbeat_interval_ms)
        {
            c.node_timing.heartbeat = std::time::Duration::from_millis(ms.max(1));
        }
        if let Some(ms) =
            env_ms("WARDEN_NODE_METRICS_INTERVAL_MS").or(file.nodes.metrics_interval_ms)
        {
            c.node_timing.metrics = std::time::Duration::from_millis(ms.max(1));
        }
        if let Some(secs) = file.nodes.heartbeat_write_secs {
            c.node_timing.heartbeat_write = std::time::Duration::from_secs(secs);
        }
        if let Some(secs) = file.nodes.idle_passivate_secs {
            c.node_timing.idle = std::time::Duration::from_secs(secs.max(1));
        }
        if let Some(days) = file.nodes.token_lifetime_days {
            c.node_tokens.default_secs = days.max(1).saturating_mul(86400);
        }
        if let Some(days) = file.nodes.token_max_lifetime_days {
            c.node_tokens.max_secs = days.max(1).saturating_mul(86400);
        }
        if c.node_tokens.default_secs > c.node_tokens.max_secs {
            anyhow::bail!("[nodes] token_lifetime_days must not exceed token_max_lifetime_days");
        }
        if let Some(h) = file.nodes.telemetry_retention_hours {
            c.telemetry_retention = std::time::Duration::from_secs(h * 3600);
        }
        let limit = |v: Option<u32>, default: Option<u32>| match v {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        };
        let d = c.rate_limits;
        c.rate_limits.login_failures_per_minute = limit(
            file.rate_limits.login_failures_per_minute,
            d.login_failures_per_minute,
        );
        c.rate_limits.api_per_minute = limit(file.rate_limits.api_per_minute, d.api_per_minute);
        c.rate_limits.mail_per_minute = limit(file.rate_limits.mail_per_minute, d.mail_per_minute);
        c.rate_limits.agent_per_minute =
            limit(file.rate_limits.agent_per_minute, d.agent_per_minute);
        c.trusted_proxies = match self.trusted_proxies {
            Some(nets) => nets,
            None => file
                .trusted_proxies
                .iter()
                .map(|s| parse_net(s))
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?,
        };
        c.smtp = smtp_config(file.smtp)?;
        c.admin_username = std::env::var("WARDEN_ADMIN_USERNAME")
            .ok()
            .filter(|v| !v.is_empty());
        c.admin_password = std::env::var("WARDEN_ADMIN_PASSWORD")
            .ok()
            .filter(|v| !v.is_empty());
        c.admin_email = std::env::var("WARDEN_ADMIN_EMAIL")
            .ok()
            .filter(|v| !v.is_empty());
        Ok(c)
    }
}

/// Draws the `/admin/actors` JSON as an indented tree, one actor a line.
pub fn render_tree(node: &serde_json::Value, depth: usize, out: &mut String) {
    use std::fmt::Write as _;
    let s = |k: &str| node[k].as_str().unwrap_or("-").to_owned();
    let _ = write!(
        out,
        "{}{}  [{}] {}  restarts={}  started={}",
        "  ".repeat(depth),
        s("name"),
        s("kind"),
        s("status"),
        node["restartCount"].as_u64().unwrap_or(0),
        s("startedAt"),
    );
    if let Some(p) = node["policy"].as_object() {
        let _ = write!(
            out,
            "  policy=max {} in {}ms",
            p["max_restarts"], p["within"]
        );
    }
    if let Some(f) = node["lastFailure"].as_object() {
        let _ = write!(
            out,
            "  last-failure=\"{}\" at {}",
            f["reason"].as_str().unwrap_or(""),
            f["at"].as_str().unwrap_or("")
        );
    }
    out.push('\n');
    for child in node["children"].as_array().into_iter().flatten() {
        render_tree(child, depth + 1, out);
    }
}

/// SMTP from the environment (`WARDEN_SMTP_HOST`, `_PORT`, `_SECURITY`,
/// `_USERNAME`, `_PASSWORD`, `_FROM`) over the file's `[smtp]`.
fn smtp_config(
    file: Option<crate::config::SmtpFile>,
) -> anyhow::Result<Option<warden_identity::SmtpConfig>> {
    use warden_identity::{SmtpConfig, SmtpSecurity};
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let host = env("WARDEN_SMTP_HOST").or_else(|| file.as_ref().map(|f| f.host.clone()));
    let Some(host) = host else { return Ok(None) };
    let security = match env("WARDEN_SMTP_SECURITY").as_deref() {
        Some("starttls") => SmtpSecurity::Starttls,
        Some("tls") => SmtpSecurity::Tls,
        Some("none") => SmtpSecurity::None,
        Some(other) => {
            anyhow::bail!("WARDEN_SMTP_SECURITY must be starttls, tls or none, not {other:?}")
        }
        None => file
            .as_ref()
            .and_then(|f| f.security)
            .unwrap_or(SmtpSecurity::Starttls),
    };
    let default_port = match security {
        SmtpSecurity::Starttls => 587,
        SmtpSecurity::Tls => 465,
        SmtpSecurity::None => 25,
    };
    let port = match env("WARDEN_SMTP_PORT") {
        Some(p) => p.parse()?,
        None => file.as_ref().and_then(|f| f.port).unwrap_or(default_port),
    };
    let from = env("WARDEN_SMTP_FROM").or_else(|| file.as_ref().map(|f| f.from.clone()));
    let from = from.ok_or_else(|| {
        anyhow::anyhow!("SMTP needs a from address (WARDEN_SMTP_FROM or [smtp] from)")
    })?;
    Ok(Some(SmtpConfig {
        host,
        port,
        security,
        username: env("WARDEN_SMTP_USERNAME")
            .or_else(|| file.as_ref().and_then(|f| f.username.clone())),
        password: env("WARDEN_SMTP_PASSWORD")
            .or_else(|| file.as_ref().and_then(|f| f.password.clone())),
        from,
    }))
}
