//! Configuration: flags, then environment, then an optional TOML file,
//! then the embedded defaults, in that order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use std::time::Duration;

use warden_actors::node::NodeTiming;
use warden_storage::Durability;
use warden_supervisors::RestartPolicy;

/// The page-cache sizes `store_cache_mib` may name (MiB): 8 MiB to 1 TiB.
pub const STORE_CACHE_MIB: std::ops::RangeInclusive<u64> = 8..=1_048_576;

/// The TOML file's shape; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub enable_fault_injection: Option<bool>,
    pub durability: Option<Durability>,
    /// sled's page cache, MiB.
    pub store_cache_mib: Option<u64>,
    pub token_ttl_secs: Option<i64>,
    pub max_body_bytes: Option<usize>,
    pub log: Option<String>,
    pub log_json: Option<bool>,
    #[serde(default)]
    pub supervision: SupervisionFile,
    #[serde(default)]
    pub nodes: NodesFile,
    #[serde(default)]
    pub rate_limits: RateLimitsFile,
    #[serde(default)]
    pub llm: LlmFile,
    #[serde(default)]
    pub conversations: ConversationsFile,
    #[serde(default)]
    pub telegram: TelegramFile,
    #[serde(default)]
    pub training: TrainingFile,
    #[serde(default)]
    pub datasets: DatasetsFile,
    #[serde(default)]
    pub functions: FunctionsFile,
    #[serde(default)]
    pub hooks: HooksFile,
    #[serde(default)]
    pub shell: ShellFile,
    #[serde(default)]
    pub exec: ExecFile,
    #[serde(default)]
    pub runtimes: RuntimesFile,
    /// Reverse proxies whose X-Forwarded-For names the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub smtp: Option<SmtpFile>,
}

/// `[smtp]`: where mail goes. Without it, mail stays in the outbox.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpFile {
    pub host: String,
    pub port: Option<u16>,
    pub security: Option<warden_identity::SmtpSecurity>,
    pub username: Option<String>,
    /// Better set through WARDEN_SMTP_PASSWORD.
    pub password: Option<String>,
    pub from: String,
}

/// `[llm]`: the LLM gateway.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmFile {
    /// How often each backend is asked what it serves (default 15).
    pub probe_interval_secs: Option<u64>,
    /// The embedding model declared at boot (`/embed` uses it).
    pub embed_model: Option<String>,
    /// The task model declared at boot (`/execute`, `/defaultmodel`).
    pub task_model: Option<String>,
}

/// `[conversations]`: the conversation actors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationsFile {
    /// A conversation's actor stops after this long without use (default
    /// 300); the next message starts it again from the stored history.
    pub idle_passivate_secs: Option<u64>,
}

/// `[telegram]`: the bots of contenox's telegram frontends.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramFile {
    /// The Bot API's base URL (default https://api.telegram.org): a
    /// local Bot API server, or a test double.
    pub api_base: Option<String>,
}

/// `[training]`: the training runs' queue.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingFile {
    /// Runs that train at once (default 2, one CPU thread each); the
    /// rest wait in the queue, oldest first.
    pub max_concurrent: Option<usize>,
}

/// `[datasets]`: imports from outside sources (`/datasets/connect`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetsFile {
    /// How long one import may take, connect to last row (default 120).
    pub import_timeout_secs: Option<u64>,
    /// Directories SQLite files may be imported from (default
    /// `<data_dir>/imports`); a path elsewhere is refused.
    pub import_dirs: Option<Vec<PathBuf>>,
}

/// `[functions]`: the JavaScript functions event triggers run.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionsFile {
    /// Engine threads (default 2): functions that run at once.
    pub workers: Option<usize>,
    /// Wall-clock limit of one run, in ms (default 5000).
    pub deadline_ms: Option<u64>,
    /// Heap cap of one engine, in MiB (default 32).
    pub heap_mib: Option<usize>,
}

/// `[hooks]`: where contenox's remote hooks may reach.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksFile {
    /// Let hooks call link-local and cloud metadata addresses
    /// (169.254.0.0/16, fe80::/10, fd00:ec2::254); default false.
    pub allow_internal_addresses: Option<bool>,
}

/// `[shell]`: vareon's interactive shells (`/ws/shell/{id}`). Off by
/// default: a shell is remote code execution by design, and a shell that
/// runs as Warden's own user can read Warden's data.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellFile {
    pub enabled: Option<bool>,
    /// The roles that may open one (default `["admin"]`).
    pub roles: Option<Vec<String>>,
    /// The user shells run as; required when Warden runs as root.
    pub run_as: Option<String>,
    /// The program started (default: the run-as user's login shell, else
    /// `/bin/sh`).
    pub program: Option<String>,
    pub idle_timeout_secs: Option<u64>,
    pub detach_grace_secs: Option<u64>,
    pub max_lifetime_secs: Option<u64>,
    pub max_per_user: Option<usize>,
    pub max_sessions: Option<usize>,
    /// Browser origins allowed besides the server's own
    /// (`https://console.example.com`).
    pub origins: Option<Vec<String>>,
    /// Processes one session may have at once, where control groups can
    /// be made (default 256).
    pub max_pids: Option<u64>,
    /// Memory one session may use, MiB (default 1024).
    pub memory_mib: Option<u64>,
}

impl ShellFile {
    /// The policy for a data directory, its user looked up.
    pub fn policy(&self, data_dir: &Path) -> anyhow::Result<warden_actors::terminal::ShellPolicy> {
        use warden_actors::terminal::{ShellPolicy, pty::RunAs};
        let mut p = ShellPolicy::new(data_dir.join("shell"));
        p.enabled = self.enabled.unwrap_or(false);
        if let Some(roles) = &self.roles {
            for r in roles {
                anyhow::ensure!(
                    ["admin", "operator", "viewer"].contains(&r.as_str()),
                    "[shell] roles: unknown role {r} (admin, operator, viewer)"
                );
            }
            p.roles = roles.clone();
        }
        if let Some(name) = &self.run_as {
            let user = RunAs::lookup(name).with_context(|| format!("[shell] run_as = {name:?}"))?;
            if let Some(shell) = ShellPolicy::login_shell(&user.shell) {
                p.program = shell;
            }
            p.run_as = Some(user);
        } else if let Ok(shell) = std::env::var("SHELL")
            && let Some(shell) = ShellPolicy::login_shell(&shell)
        {
            p.program = shell;
        }
        if let Some(program) = &self.program {
            p.program = program.clone();
        }
        let secs = |v: Option<u64>, d: u64| v.unwrap_or(d).max(1);
        p.idle_timeout_secs = secs(self.idle_timeout_secs, p.idle_timeout_secs);
        p.detach_grace_secs = secs(self.detach_grace_secs, p.detach_grace_secs);
        p.max_lifetime_secs = secs(self.max_lifetime_secs, p.max_lifetime_secs);
        p.max_per_user = self.max_per_user.unwrap_or(p.max_per_user).max(1);
        p.max_sessions = self.max_sessions.unwrap_or(p.max_sessions).max(1);
        p.origins = self.origins.clone().unwrap_or_default();
        if let Some(n) = self.max_pids {
            p.groups.max_pids = n.clamp(8, 1_000_000);
        }
        if let Some(mib) = self.memory_mib {
            p.groups.memory_bytes = mib.clamp(16, 1 << 20) << 20;
        }
        Ok(p)
    }
}

/// `[exec]`: user processes (myntrix process agents).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecFile {
    /// Run processes unconfined when no confinement (Landlock) is
    /// available; default false (their start fails saying why).
    pub allow_unconfined: Option<bool>,
    /// Seconds a stopped process has between SIGTERM and SIGKILL (default 5).
    pub stop_grace_secs: Option<u64>,
    /// CPU seconds a process may use (default unlimited).
    pub cpu_secs: Option<u64>,
    /// The largest file a process may write, MiB (default 1024).
    pub file_mib: Option<u64>,
    /// The output lines a process's log keeps (default 10000).
    pub log_lines: Option<usize>,
    /// The processes a process and its children may have at once, where
    /// control groups can be made (default 256).
    pub max_pids: Option<u64>,
    /// The memory a process and its children may use, MiB (default 1024).
    pub memory_mib: Option<u64>,
}

impl ExecFile {
    pub fn policy(&self, data_dir: &Path) -> warden_actors::process::ExecPolicy {
        let mut p = warden_actors::process::ExecPolicy::new(data_dir.to_path_buf());
        p.allow_unconfined = self.allow_unconfined.unwrap_or(false);
        if let Some(s) = self.stop_grace_secs {
            p.stop_grace_ms = s.clamp(1, 600) * 1000;
        }
        p.limits.cpu_secs = self.cpu_secs.map(|s| s.max(1));
        if let Some(mib) = self.file_mib {
            p.limits.file_bytes = Some(mib.max(1) << 20);
        }
        if let Some(n) = self.log_lines {
            p.log_lines = n.clamp(100, 1_000_000);
        }
        if let Some(n) = self.max_pids {
            p.groups.max_pids = n.clamp(8, 1_000_000);
        }
        if let Some(mib) = self.memory_mib {
            p.groups.memory_bytes = mib.clamp(16, 1 << 20) << 20;
        }
        p
    }
}

/// `[runtimes]`: neuronest runtimes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimesFile {
    /// argv per language, `{entry}` for the entry point
    /// (`python = ["python3", "-u", "{entry}"]`); merged over the defaults.
    pub languages: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// The ports handed out, `[first, last]` (default 20000-20999).
    pub ports: Option<[u16; 2]>,
    /// The longest timeout a runtime may ask for, seconds (default 86400).
    pub max_timeout_secs: Option<u64>,
    /// `url`'s base instead of `http://127.0.0.1:<port>`.
    pub public_base: Option<String>,
}

impl RuntimesFile {
    pub fn policy(&self, data_dir: &Path) -> anyhow::Result<warden_actors::runtime::RuntimePolicy> {
        use warden_actors::runtime::{LANGUAGES, RuntimePolicy};
        let mut p = RuntimePolicy::new(data_dir);
        if let Some(langs) = &self.languages {
            for (lang, argv) in langs {
                anyhow::ensure!(
                    LANGUAGES.contains(&lang.as_str()),
                    "[runtimes] languages: {lang} is not one of {}",
                    LANGUAGES.join(", ")
                );
                anyhow::ensure!(
                    !argv.is_empty() && argv.iter().any(|a| a.contains("{entry}")),
                    "[runtimes] languages.{lang} must be an argv naming {{entry}}"
                );
                p.languages.insert(lang.clone(), argv.clone());
            }
        }
        if let Some([first, last]) = self.ports {
            anyhow::ensure!(
                first >= 1024 && first <= last,
                "[runtimes] ports must be [first, last] above 1023"
            );
            p.ports = (first, last);
        }
        if let Some(t) = self.max_timeout_secs {
            p.max_timeout = t.max(1);
        }
        p.public_base = self.public_base.clone();
        Ok(p)
    }
}

/// Refuses a shell policy that would hand out root shells.
pub fn check_shell(p: &warden_actors::terminal::ShellPolicy) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    anyhow::ensure!(
        !(p.enabled && root && p.run_as.is_none()),
        "[shell] is enabled and Warden runs as root: set [shell] run_as to the unprivileged user shells run as"
    );
    anyhow::ensure!(
        !p.enabled || Path::new(&p.program).is_absolute(),
        "[shell] program must be an absolute path: {}",
        p.program
    );
    Ok(())
}

/// `[rate_limits]`: per-minute limits; 0 switches one off.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsFile {
    pub login_failures_per_minute: Option<u32>,
    pub api_per_minute: Option<u32>,
    /// Sign-ups, code resends and password-reset requests per client address.
    pub mail_per_minute: Option<u32>,
    /// Forge's agent routes per user.
    pub agent_per_minute: Option<u32>,
}

/// `[nodes]`: the telemetry the server asks of daemons.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesFile {
    pub heartbeat_interval_ms: Option<u64>,
    pub metrics_interval_ms: Option<u64>,
    /// How long telemetry points are kept.
    pub telemetry_retention_hours: Option<u64>,
    /// An unconnected, idle node's actor stops after this long.
    pub idle_passivate_secs: Option<u64>,
    /// Heartbeats that change only lastHeartbeat and gauges are written at
    /// most this often (default 15).
    pub heartbeat_write_secs: Option<u64>,
    /// Lifetime of a node token whose request names none (default 30).
    pub token_lifetime_days: Option<i64>,
    /// The longest lifetime a node token may have (default 365).
    pub token_max_lifetime_days: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionFile {
    pub root: Option<RestartPolicy>,
    pub nodes: Option<RestartPolicy>,
    pub executions: Option<RestartPolicy>,
    pub deployments: Option<RestartPolicy>,
    pub backends: Option<RestartPolicy>,
    pub conversations: Option<RestartPolicy>,
    pub telegram: Option<RestartPolicy>,
    pub training: Option<RestartPolicy>,
    pub agents: Option<RestartPolicy>,
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Everything `warden serve` needs, resolved.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub enable_fault_injection: bool,
    pub durability: Durability,
    /// The most memory the store's page cache may hold.
    pub store_cache_bytes: u64,
    pub token_ttl_secs: i64,
    pub max_body_bytes: usize,
    pub root_policy: RestartPolicy,
    pub node_policy: RestartPolicy,
    pub execution_policy: RestartPolicy,
    pub deployment_policy: RestartPolicy,
    pub backend_policy: RestartPolicy,
    pub conversation_policy: RestartPolicy,
    /// How long a conversation's actor stays without use.
    pub conversation_idle: Duration,
    pub telegram_policy: RestartPolicy,
    /// The Telegram Bot API's base URL.
    pub telegram_api: String,
    pub training_policy: RestartPolicy,
    /// Training runs that train at once.
    pub training_max_concurrent: usize,
    /// How long one dataset import may take.
    pub import_timeout: Duration,
    /// Directories SQLite files may be imported from.
    pub import_dirs: Vec<PathBuf>,
    pub node_timing: NodeTiming,
    /// How often each LLM backend is probed.
    pub llm_probe_interval: Duration,
    pub llm_defaults: warden_supervisors::LlmDefaults,
    /// Threads that run JavaScript functions, and the bounds of one run.
    pub js_workers: usize,
    pub js_limits: warden_supervisors::ScriptLimits,
    /// Hooks may call link-local and cloud metadata addresses.
    pub hooks_allow_internal: bool,
    /// Who may have an interactive shell.
    pub shell: warden_actors::terminal::ShellPolicy,
    /// How process agents run, and their actors' restart policy.
    pub exec: warden_actors::process::ExecPolicy,
    pub agent_policy: RestartPolicy,
    /// How runtimes run.
    pub runtimes: warden_actors::runtime::RuntimePolicy,
    /// How long a vareon device command waits for its daemon (30 s).
    pub device_command_wait: Duration,
    pub telemetry_retention: Duration,
    pub rate_limits: warden_api::RateLimits,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub node_tokens: warden_identity::NodeTokenPolicy,
    pub smtp: Option<warden_identity::SmtpConfig>,
    pub admin_username: Option<String>,
    pub admin_password: Option<String>,
    pub admin_email: Option<String>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./warden-data";
pub const DEFAULT_TOKEN_TTL_SECS: i64 = 24 * 3600;
pub const DEFAULT_TELEMETRY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_IMPORT_TIMEOUT: Duration = Duration::from_secs(120);
/// SQLite files are imported from here, under the data directory, by default.
pub const IMPORTS_DIR: &str = "imports";

impl ServerConfig {
    /// Defaults for a data directory; used by tests and benches.
    pub fn for_data_dir(data_dir: PathBuf) -> ServerConfig {
        let imports = data_dir.join(IMPORTS_DIR);
        let shell = warden_actors::terminal::ShellPolicy::new(data_dir.join("shell"));
        let exec = warden_actors::process::ExecPolicy::new(data_dir.clone());
        let runtimes = warden_actors::runtime::RuntimePolicy::new(&data_dir);
        ServerConfig {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("the default listen address is valid"),
            data_dir,
            enable_fault_injection: false,
            durability: Durability::Flush,
            store_cache_bytes: warden_storage::DEFAULT_CACHE_BYTES,
            token_ttl_secs: DEFAULT_TOKEN_TTL_SECS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            root_policy: RestartPolicy::default(),
            node_policy: RestartPolicy::default(),
            execution_policy: RestartPolicy::default(),
            deployment_policy: RestartPolicy::default(),
            backend_policy: RestartPolicy::default(),
            conversation_policy: RestartPolicy::default(),
            conversation_idle: warden_supervisors::DEFAULT_CONVERSATION_IDLE,
            telegram_policy: RestartPolicy::default(),
            telegram_api: warden_supervisors::DEFAULT_TELEGRAM_API.to_owned(),
            training_policy: RestartPolicy::default(),
            training_max_concurrent: warden_supervisors::DEFAULT_MAX_CONCURRENT,
            import_timeout: DEFAULT_IMPORT_TIMEOUT,
            import_dirs: vec![imports],
            node_timing: NodeTiming::default(),
            llm_probe_interval: warden_supervisors::DEFAULT_PROBE_INTERVAL,
            llm_defaults: warden_supervisors::LlmDefaults::default(),
            js_workers: 2,
            js_limits: warden_supervisors::ScriptLimits::default(),
            hooks_allow_internal: false,
            shell,
            exec,
            agent_policy: RestartPolicy::default(),
            runtimes,
            device_command_wait: Duration::from_secs(30),
            telemetry_retention: DEFAULT_TELEMETRY_RETENTION,
            rate_limits: warden_api::RateLimits::default(),
            trusted_proxies: Vec::new(),
            node_tokens: warden_identity::NodeTokenPolicy::default(),
            smtp: None,
            admin_username: None,
            admin_password: None,
            admin_email: None,
        }
    }
}
