/// One actor in the supervision tree, as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActorInfo {
    pub name: String,
    pub kind: String,
    pub entity_id: Option<String>,
    /// `running`, `restarting` or `failed`.
    pub status: String,
    pub started_at: Option<String>,
    pub restart_count: u32,
    pub last_failure: Option<FailureInfo>,
    /// Set on supervisors: the restart policy they apply to their children.
    pub policy: Option<crate::RestartPolicy>,
    /// Set on supervisors whose kind has typed configuration of its own
    /// (the shells' policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// Set on entity actors whose kind says more of them (a process's
    /// pid and state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    pub children: Vec<ActorInfo>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FailureInfo {
    pub reason: String,
    pub at: String,
}
