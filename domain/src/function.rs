//! JavaScript functions, the event triggers that run them, and each run
//! (contenox `/functions`, `/event-triggers`; WORKFLOWS.md §3 and §4 H).
//!
//! Invariants:
//! - Functions and triggers are unique by name in their organisation (the
//!   record id is organisation and name); a delete removes the record, so
//!   the name is free again at once.
//! - A script is not compiled when stored (the original accepted any
//!   text): a syntax error fails the invocation that runs it.
//! - An invocation is one function run for one event, keyed by (trigger,
//!   event nid): written, with the dispatcher's cursor, before it runs,
//!   and finished in one more write. One that is not finished at boot
//!   runs again under the same key (its emitted events keep their ids).

use serde_json::{Map, Value};
use warden_storage::{Millis, Record, now_millis};

use crate::rules::MAX_SHORT;
use crate::{DomainError, Owner};

warden_storage::first_layout!(Function, Trigger, Invocation);

const SEP: char = '\u{1f}';

fn key(org: &str, name: &str) -> String {
    format!("{org}{SEP}{name}")
}

/// Fields a client sets; the rest of a body is kept as `extras`.
const FUNCTION_FIELDS: [&str; 6] = [
    "name",
    "description",
    "scriptType",
    "script",
    "createdAt",
    "updatedAt",
];
const TRIGGER_FIELDS: [&str; 7] = [
    "name",
    "description",
    "type",
    "listenFor",
    "function",
    "createdAt",
    "updatedAt",
];

fn extras(body: &Map<String, Value>, known: &[&str]) -> String {
    let rest: Map<String, Value> = body
        .iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(rest).to_string()
}

fn text(body: &Map<String, Value>, k: &str, problems: &mut Vec<String>) -> String {
    match body.get(k) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            problems.push(format!("{k} must be a string"));
            String::new()
        }
    }
}

/// The record's name: the path's (a replace) over the body's, checked.
fn name_of(
    body: &Map<String, Value>,
    path: Option<&str>,
    what: &str,
    problems: &mut Vec<String>,
) -> String {
    let body_name = text(body, "name", problems);
    let name = path.map(str::to_owned).unwrap_or(body_name);
    check_name(&name, what, problems);
    name
}

fn check_name(name: &str, what: &str, problems: &mut Vec<String>) {
    if name.trim().is_empty() {
        problems.push(format!("{what} name is required"));
    } else if name.chars().count() > MAX_SHORT || name.chars().any(char::is_control) {
        problems.push(format!(
            "{what} name must be at most {MAX_SHORT} characters, without control characters"
        ));
    }
}

/// Scripts up to this size (the body limit bounds them too).
pub const MAX_SCRIPT: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Function {
    /// Organisation and name: the record id.
    pub key: String,
    pub name: String,
    pub description: String,
    pub script_type: String,
    pub script: String,
    /// Fields the client sent that are not modelled (JSON object text).
    pub extras: String,
    pub owner: Owner,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Record for Function {
    const COLLECTION: &'static str = "functions";
    fn id(&self) -> &str {
        &self.key
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        vec![(
            crate::CREATED,
            self.owner.org_id.clone(),
            warden_storage::time_sort_key(self.created_at),
        )]
    }
}

impl Function {
    /// Reads a body (a create, or with `name` from the path a replace).
    pub fn from_body(
        body: &Map<String, Value>,
        name: Option<&str>,
        owner: Owner,
    ) -> Result<Function, DomainError> {
        let mut problems = Vec::new();
        let name = name_of(body, name, "function", &mut problems);
        let script = text(body, "script", &mut problems);
        if script.len() > MAX_SCRIPT {
            problems.push(format!("script must be at most {MAX_SCRIPT} bytes"));
        }
        let script_type = match text(body, "scriptType", &mut problems) {
            t if t.is_empty() => "goja".to_owned(),
            t => t,
        };
        let description = text(body, "description", &mut problems);
        if !problems.is_empty() {
            return Err(DomainError::Invalid(problems));
        }
        let now = now_millis();
        Ok(Function {
            key: key(&owner.org_id, &name),
            name,
            description,
            script_type,
            script,
            extras: extras(body, &FUNCTION_FIELDS),
            owner,
            created_at: now,
            updated_at: now,
        })
    }

    pub fn get(
        store: &warden_storage::Store,
        org: &str,
        name: &str,
    ) -> Result<Option<Function>, DomainError> {
        Ok(store.get::<Function>(&key(org, name))?)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Trigger {
    pub key: String,
    pub name: String,
    pub description: String,
    /// Always `function` (the only kind the original runs).
    pub kind: String,
    pub listen_for: String,
    pub function: String,
    pub extras: String,
    pub owner: Owner,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Trigger indexes: by the event type listened for, by function.
pub const LISTENING: &str = "listen";
pub const BY_FUNCTION: &str = "function";

impl Record for Trigger {
    const COLLECTION: &'static str = "event_triggers";
    fn id(&self) -> &str {
        &self.key
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        let org = &self.owner.org_id;
        vec![
            (
                crate::CREATED,
                org.clone(),
                warden_storage::time_sort_key(self.created_at),
            ),
            (
                LISTENING,
                key(org, &self.listen_for),
                self.name.as_bytes().to_vec(),
            ),
            (
                BY_FUNCTION,
                key(org, &self.function),
                self.name.as_bytes().to_vec(),
            ),
        ]
    }
}

impl Trigger {
    /// Reads a body (§4 H): name, `type: "function"`, `listenFor.type`
    /// and `function` required.
    pub fn from_body(
        body: &Map<String, Value>,
        name: Option<&str>,
        owner: Owner,
    ) -> Result<Trigger, DomainError> {
        let mut problems = Vec::new();
        let name = name_of(body, name, "trigger", &mut problems);
        let kind = text(body, "type", &mut problems);
        if kind != "function" {
            problems.push("type must be \"function\"".into());
        }
        let listen_for = match body.get("listenFor") {
            Some(Value::Object(l)) => match l.get("type") {
                Some(Value::String(t)) if !t.is_empty() => t.clone(),
                _ => {
                    problems.push("listenFor.type is required".into());
                    String::new()
                }
            },
            _ => {
                problems.push("listenFor is required: {\"type\": \"<event type>\"}".into());
                String::new()
            }
        };
        let function = text(body, "function", &mut problems);
        if function.is_empty() {
            problems.push("function is required".into());
        }
        let description = text(body, "description", &mut problems);
        if !problems.is_empty() {
            return Err(DomainError::Invalid(problems));
        }
        let now = now_millis();
        Ok(Trigger {
            key: key(&owner.org_id, &name),
            name,
            description,
            kind,
            listen_for,
            function,
            extras: extras(body, &TRIGGER_FIELDS),
            owner,
            created_at: now,
            updated_at: now,
        })
    }

    pub fn get(
        store: &warden_storage::Store,
        org: &str,
        name: &str,
    ) -> Result<Option<Trigger>, DomainError> {
        Ok(store.get::<Trigger>(&key(org, name))?)
    }

    /// The triggers of `org` listening for `event_type`, by name.
    pub fn listening(
        store: &warden_storage::Store,
        org: &str,
        event_type: &str,
    ) -> Result<Vec<Trigger>, DomainError> {
        Ok(store.in_scope::<Trigger>(LISTENING, &key(org, event_type))?)
    }

    pub fn of_function(
        store: &warden_storage::Store,
        org: &str,
        function: &str,
    ) -> Result<Vec<Trigger>, DomainError> {
        Ok(store.in_scope::<Trigger>(BY_FUNCTION, &key(org, function))?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InvocationStatus {
    Pending,
    Completed,
    Failed,
}

impl InvocationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvocationStatus::Pending => "pending",
            InvocationStatus::Completed => "completed",
            InvocationStatus::Failed => "failed",
        }
    }
}

/// One function run for one event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Invocation {
    /// Organisation, trigger and the event's nid.
    pub key: String,
    pub org_id: String,
    pub trigger: String,
    pub function: String,
    pub event_nid: u64,
    pub event_type: String,
    /// How many events caused this one (from the event's metadata).
    pub depth: u32,
    /// Runs started: more than one after a crash.
    pub attempt: u32,
    pub status: InvocationStatus,
    pub error: String,
    /// The returned object (JSON text).
    pub result: String,
    pub logs: Vec<String>,
    /// Ids of the events the run appended.
    pub emitted: Vec<String>,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
    pub duration_ms: u64,
}

/// Invocation indexes: unfinished ones (read at boot), and an
/// organisation's by time.
pub const UNFINISHED: &str = "unfinished";
pub const BY_ORG: &str = "org";

impl Record for Invocation {
    const COLLECTION: &'static str = "invocations";
    fn id(&self) -> &str {
        &self.key
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        let at = warden_storage::time_sort_key(self.created_at);
        let mut o = vec![(BY_ORG, self.org_id.clone(), at.clone())];
        if self.status == InvocationStatus::Pending {
            o.push((UNFINISHED, String::new(), at));
        }
        o
    }
}

impl Invocation {
    pub fn new(trigger: &Trigger, event: &crate::event::Event) -> Invocation {
        let depth = event
            .metadata_json()
            .get("causation_depth")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32;
        Invocation {
            key: format!(
                "{}{SEP}{}{SEP}{:020}",
                trigger.owner.org_id, trigger.name, event.nid
            ),
            org_id: trigger.owner.org_id.clone(),
            trigger: trigger.name.clone(),
            function: trigger.function.clone(),
            event_nid: event.nid,
            event_type: event.event_type.clone(),
            depth,
            attempt: 0,
            status: InvocationStatus::Pending,
            error: String::new(),
            result: String::new(),
            logs: Vec::new(),
            emitted: Vec::new(),
            created_at: now_millis(),
            finished_at: None,
            duration_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn triggers_and_functions_are_checked_and_keep_extras() {
        let owner = Owner {
            org_id: "o".into(),
            ..Default::default()
        };
        let f = Function::from_body(
            json!({"name": "a-b", "script": "function x(", "colour": "red"})
                .as_object()
                .unwrap(),
            None,
            owner.clone(),
        )
        .unwrap();
        assert_eq!(f.script_type, "goja");
        assert_eq!(f.extras, r#"{"colour":"red"}"#);
        assert!(Function::from_body(&Map::new(), None, owner.clone()).is_err());
        let ok =
            json!({"name": "t", "type": "function", "listenFor": {"type": "e"}, "function": "f"});
        assert!(Trigger::from_body(ok.as_object().unwrap(), None, owner.clone()).is_ok());
        for (drop, says) in [
            ("name", "name"),
            ("type", "type"),
            ("listenFor", "listenFor"),
            ("function", "function"),
        ] {
            let mut b = ok.as_object().unwrap().clone();
            b.remove(drop);
            let Err(DomainError::Invalid(p)) = Trigger::from_body(&b, None, owner.clone()) else {
                panic!("{drop}");
            };
            assert!(p.join(";").contains(says), "{p:?}");
        }
        let mut b = ok.as_object().unwrap().clone();
        b.insert("listenFor".into(), json!({}));
        assert!(Trigger::from_body(&b, None, owner.clone()).is_err());
        b.insert("listenFor".into(), json!({"type": "e"}));
        b.insert("type".into(), json!("webhook"));
        assert!(Trigger::from_body(&b, None, owner).is_err());
    }
}
