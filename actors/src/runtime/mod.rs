//! Neuronest runtimes (VAREON-NEURONEST.md §2, §3B): a runtime is a core
//! deployment of type `runtime` (AIWM's `/api/deployments` lists it) whose
//! program is a project's entry point run by a local, confined process
//! instead of a model served on a node. Its definition (project,
//! language, entry point, variables, timeout) and neuronest's status are
//! the deployment's extra fields; its process is a [`ProcessRecord`] of
//! kind `runtime`, run by a `RuntimeActor`.

mod actor;

pub use actor::{RtHandle, RtMsg, RuntimeActor, RuntimeArgs};

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::{Value, json};

use crate::deployment::{DeployStatus, Deployment};

/// The kind of the process records of runtimes, and their deployments'
/// `deploymentType`.
pub const KIND: &str = "runtime";

/// The languages neuronest documents.
pub const LANGUAGES: [&str; 13] = [
    "python",
    "javascript",
    "typescript",
    "ruby",
    "go",
    "rust",
    "java",
    "csharp",
    "php",
    "swift",
    "kotlin",
    "r",
    "julia",
];

/// Neuronest's statuses of a runtime.
pub const STATUSES: [&str; 6] = [
    "created", "starting", "running", "stopping", "stopped", "failed",
];

/// How runtimes run: commands per language, ports, limits, places.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuntimePolicy {
    /// argv per language; `{entry}` is the entry point's path.
    pub languages: BTreeMap<String, Vec<String>>,
    /// Ports handed out, `PORT` in the process's environment.
    pub ports: (u16, u16),
    /// The longest `timeout` a runtime may ask for (seconds).
    pub max_timeout: u64,
    /// `url`'s base instead of `http://127.0.0.1:<port>` (a proxy).
    pub public_base: Option<String>,
    /// Projects' files: `<projects_dir>/<org>/<project_id>/`.
    pub projects_dir: PathBuf,
    /// Runs' copies: `<runtimes_dir>/<id>/work/`.
    pub runtimes_dir: PathBuf,
}

impl RuntimePolicy {
    pub fn new(data_dir: &Path) -> RuntimePolicy {
        let table: [(&str, &[&str]); 13] = [
            ("python", &["python3", "{entry}"]),
            ("javascript", &["node", "{entry}"]),
            ("typescript", &["ts-node", "{entry}"]),
            ("ruby", &["ruby", "{entry}"]),
            ("go", &["go", "run", "{entry}"]),
            ("rust", &["rust-script", "{entry}"]),
            ("java", &["java", "{entry}"]),
            ("csharp", &["dotnet-script", "{entry}"]),
            ("php", &["php", "{entry}"]),
            ("swift", &["swift", "{entry}"]),
            ("kotlin", &["kotlinc", "-script", "{entry}"]),
            ("r", &["Rscript", "{entry}"]),
            ("julia", &["julia", "{entry}"]),
        ];
        RuntimePolicy {
            languages: table
                .iter()
                .map(|(l, argv)| (l.to_string(), argv.iter().map(|a| a.to_string()).collect()))
                .collect(),
            ports: (20000, 20999),
            max_timeout: 86_400,
            public_base: None,
            projects_dir: data_dir.join("projects"),
            runtimes_dir: data_dir.join("runtimes"),
        }
    }

    /// A project's directory in an organisation.
    pub fn project_dir(&self, org: &str, project: &str) -> PathBuf {
        self.projects_dir.join(org).join(project)
    }

    /// The argv that runs `entry` in `language`.
    pub fn argv(&self, language: &str, entry: &Path) -> Option<Vec<String>> {
        let argv = self.languages.get(language)?;
        Some(
            argv.iter()
                .map(|a| a.replace("{entry}", &entry.display().to_string()))
                .collect(),
        )
    }
}

impl Default for RuntimePolicy {
    fn default() -> Self {
        RuntimePolicy::new(Path::new("."))
    }
}

/// A runtime's definition, as neuronest sends it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuntimeDef {
    pub project_id: String,
    pub language: String,
    pub entry_point: String,
    pub environment_vars: BTreeMap<String, String>,
    /// The longest a run may last, seconds.
    pub timeout: u64,
}

/// A project id or a project file's path component: letters, digits,
/// `.`, `_`, `-`, 1 to 128, never `.` or `..`.
pub fn is_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
}

/// A relative path that stays inside its directory: each component a
/// name (no `..`, no absolute path).
pub fn inside(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && path.len() <= 1024
        && !p.is_absolute()
        && p.components().all(|c| match c {
            Component::Normal(n) => n.to_str().is_some_and(is_name),
            _ => false,
        })
}

/// Environment variables a runtime may not set (the loader's, Warden's).
pub fn env_key_allowed(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && k.len() <= 128
        && !k.starts_with("LD_")
        && !k.starts_with("WARDEN_")
        && k != "PORT"
}

impl RuntimeDef {
    /// What is wrong with it, each in FastAPI's `field: message` form.
    pub fn problems(&self, max_timeout: u64) -> Vec<String> {
        let mut out = Vec::new();
        if !is_name(&self.project_id) {
            out.push("project_id must be 1 to 128 letters, digits, '.', '_' or '-'".into());
        }
        if !LANGUAGES.contains(&self.language.as_str()) {
            out.push(format!("language must be one of: {}", LANGUAGES.join(", ")));
        }
        if !inside(&self.entry_point) {
            out.push(
                "entry_point must be a relative path inside the project (no '..', not absolute)"
                    .into(),
            );
        }
        for (k, v) in &self.environment_vars {
            if !env_key_allowed(k) {
                out.push(format!(
                    "environment_vars: {k:?} is not allowed (names are [A-Za-z_][A-Za-z0-9_]*; LD_*, WARDEN_* and PORT are the server's)"
                ));
            }
            if v.len() > 32 * 1024 || v.contains('\0') {
                out.push(format!(
                    "environment_vars: the value of {k} is too long or has a NUL"
                ));
            }
        }
        if self.environment_vars.len() > 256 {
            out.push("environment_vars: at most 256".into());
        }
        if self.timeout == 0 || self.timeout > max_timeout {
            out.push(format!(
                "timeout must be between 1 and {max_timeout} seconds"
            ));
        }
        out
    }

    /// The definition stored on a runtime's deployment.
    pub fn of(d: &Deployment) -> Option<RuntimeDef> {
        if d.deployment_type != KIND {
            return None;
        }
        let extra: Value = serde_json::from_str(&d.extra).ok()?;
        Some(RuntimeDef {
            project_id: extra["projectId"].as_str()?.to_owned(),
            language: extra["language"].as_str()?.to_owned(),
            entry_point: extra["entryPoint"].as_str()?.to_owned(),
            environment_vars: extra["environmentVars"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default(),
            timeout: extra["timeout"].as_u64().unwrap_or(300),
        })
    }

    /// Writes the definition into a deployment's extra fields.
    pub fn store_in(&self, d: &mut Deployment) {
        let mut extra: serde_json::Map<String, Value> =
            serde_json::from_str(&d.extra).unwrap_or_default();
        extra.insert("projectId".into(), json!(self.project_id));
        extra.insert("language".into(), json!(self.language));
        extra.insert("entryPoint".into(), json!(self.entry_point));
        extra.insert("environmentVars".into(), json!(self.environment_vars));
        extra.insert("timeout".into(), json!(self.timeout));
        d.extra = Value::Object(extra).to_string();
        d.deployment_type = KIND.into();
    }
}

/// Neuronest's status of a runtime's deployment.
pub fn status_of(d: &Deployment) -> String {
    serde_json::from_str::<Value>(&d.extra)
        .ok()
        .and_then(|e| e["runtimeStatus"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "created".into())
}

/// Sets neuronest's status and the core status it maps to (created and
/// starting are pending; running and stopping are running).
pub fn set_status(d: &mut Deployment, status: &str) {
    let mut extra: serde_json::Map<String, Value> =
        serde_json::from_str(&d.extra).unwrap_or_default();
    extra.insert("runtimeStatus".into(), json!(status));
    d.extra = Value::Object(extra).to_string();
    d.status = match status {
        "created" | "starting" => DeployStatus::Pending,
        "running" | "stopping" => DeployStatus::Running,
        "failed" => DeployStatus::Failed,
        _ => DeployStatus::Stopped,
    };
    d.is_running = matches!(status, "running" | "stopping");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_checked_as_neuronest_documents() {
        let ok = RuntimeDef {
            project_id: "p1".into(),
            language: "python".into(),
            entry_point: "src/main.py".into(),
            environment_vars: [("API_KEY".to_string(), "x".to_string())].into(),
            timeout: 300,
        };
        assert!(ok.problems(3600).is_empty());
        for entry in ["../../etc/passwd", "/bin/sh", "a/../../x", ""] {
            let bad = RuntimeDef {
                entry_point: entry.into(),
                ..ok.clone()
            };
            assert_eq!(bad.problems(3600).len(), 1, "{entry}");
        }
        for key in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "1ABC",
            "A-B",
            "WARDEN_X",
            "PORT",
        ] {
            let bad = RuntimeDef {
                environment_vars: [(key.to_string(), "v".to_string())].into(),
                ..ok.clone()
            };
            assert_eq!(bad.problems(3600).len(), 1, "{key}");
        }
        for t in [0, 3601] {
            assert_eq!(
                RuntimeDef {
                    timeout: t,
                    ..ok.clone()
                }
                .problems(3600)
                .len(),
                1
            );
        }
        assert_eq!(
            RuntimeDef {
                language: "cobol".into(),
                ..ok.clone()
            }
            .problems(3600)
            .len(),
            1
        );
        assert_eq!(LANGUAGES.len(), 13);
    }
}
