//! Remote hooks (contenox `/hooks/remote`, WORKFLOWS.md §1 and §4 C-D):
//! tool servers that chain tasks call. A hook is an endpoint whose
//! tools are the operations of its `<endpointUrl>/openapi.json`. A plain
//! record, unique by name in its organisation; creating one never
//! contacts the endpoint.

use serde_json::{Map, Value};
use warden_storage::{Record, new_uuid};

use crate::rules::MAX_SHORT;
use crate::{Audit, DomainError, Owned, Owner};

warden_storage::first_layout!(Hook);

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hook {
    pub id: String,
    pub name: String,
    pub endpoint_url: String,
    pub timeout_ms: u64,
    /// HTTP headers sent with every call, as the client gave them (an
    /// object, or the reference's `K:V,K2:V2` text): JSON text, empty
    /// when none were given.
    pub headers: String,
    /// One more value a call injects `{in, name, value}`: JSON text,
    /// empty when none.
    pub properties: String,
    pub owner: Owner,
    pub audit: Audit,
}

/// What a client sends; `None` leaves a field as it is (an update) or
/// unset (a create).
#[derive(Debug, Clone, Default)]
pub struct HookInput {
    pub name: Option<String>,
    pub endpoint_url: Option<String>,
    pub timeout_ms: Option<i64>,
    pub headers: Option<Value>,
    pub properties: Option<Value>,
}

impl HookInput {
    /// Reads a body; what is of the wrong type is a problem.
    pub fn from_body(body: &Map<String, Value>) -> Result<HookInput, DomainError> {
        let mut problems = Vec::new();
        let text = |k: &str, problems: &mut Vec<String>| match body.get(k) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.trim().to_owned()),
            Some(_) => {
                problems.push(format!("{k} must be a string"));
                None
            }
        };
        let name = text("name", &mut problems);
        let endpoint_url = text("endpointUrl", &mut problems);
        let timeout_ms = match body.get("timeoutMs") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(n) => Some(n),
                None => {
                    problems.push("timeoutMs must be an integer".into());
                    None
                }
            },
        };
        let headers = body.get("headers").filter(|v| !v.is_null()).cloned();
        if headers
            .as_ref()
            .is_some_and(|h| !h.is_object() && !h.is_string())
        {
            problems.push("headers must be an object of strings".into());
        }
        let properties = body.get("properties").filter(|v| !v.is_null()).cloned();
        if let Some(p) = &properties {
            let ok = p.is_object()
                && p["name"].is_string()
                && matches!(p["in"].as_str(), Some("body" | "query" | "path" | "header"));
            if !ok {
                problems
                    .push("properties must be {in: body|query|path|header, name, value}".into());
            }
        }
        if problems.is_empty() {
            Ok(HookInput {
                name,
                endpoint_url,
                timeout_ms,
                headers,
                properties,
            })
        } else {
            Err(DomainError::Invalid(problems))
        }
    }
}

impl Hook {
    /// A new hook; name, endpoint and a positive timeout are required.
    pub fn new(input: HookInput, owner: Owner, by: &str) -> Result<Hook, DomainError> {
        let mut h = Hook {
            id: new_uuid(),
            name: String::new(),
            endpoint_url: String::new(),
            timeout_ms: 0,
            headers: String::new(),
            properties: String::new(),
            owner,
            audit: Audit::new(by),
        };
        h.apply(input, true)?;
        Ok(h)
    }

    /// Applies an input (a create when `create`: every required field).
    pub fn apply(&mut self, input: HookInput, create: bool) -> Result<(), DomainError> {
        let mut problems = Vec::new();
        if let Some(n) = &input.name {
            if n.is_empty() {
                problems.push("name must not be empty".into());
            } else if n.chars().count() > MAX_SHORT || n.contains('/') || n.contains('.') {
                problems.push(format!(
                    "name must be at most {MAX_SHORT} characters, without '/' or '.'"
                ));
            }
        } else if create {
            problems.push("name must not be empty".into());
        }
        match &input.endpoint_url {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {}
            Some(u) if u.is_empty() => problems.push("endpointUrl must not be empty".into()),
            Some(u) => problems.push(format!("endpointUrl must be an http(s) URL (got {u})")),
            None if create => problems.push("endpointUrl must not be empty".into()),
            None => {}
        }
        match input.timeout_ms {
            Some(t) if t <= 0 => problems.push("timeoutMs must be greater than 0".into()),
            None if create => problems.push("timeoutMs must be greater than 0".into()),
            _ => {}
        }
        if !problems.is_empty() {
            return Err(DomainError::Invalid(problems));
        }
        crate::set(&mut self.name, input.name);
        crate::set(
            &mut self.endpoint_url,
            input
                .endpoint_url
                .map(|u| u.trim_end_matches('/').to_owned()),
        );
        crate::set(&mut self.timeout_ms, input.timeout_ms.map(|t| t as u64));
        crate::set(&mut self.headers, input.headers.map(|h| h.to_string()));
        crate::set(
            &mut self.properties,
            input.properties.map(|p| p.to_string()),
        );
        Ok(())
    }

    /// The headers as pairs: an object's entries, or `K:V` items of the
    /// reference's comma-separated text.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        let v: Value = serde_json::from_str(&self.headers).unwrap_or(Value::Null);
        match v {
            Value::Object(m) => m
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned())))
                .collect(),
            Value::String(s) => s
                .split(',')
                .filter_map(|kv| kv.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .filter(|(k, _)| !k.is_empty())
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn json(text: &str) -> Option<Value> {
        (!text.is_empty())
            .then(|| serde_json::from_str(text).ok())
            .flatten()
    }
}

impl Record for Hook {
    const COLLECTION: &'static str = "hooks";
    fn id(&self) -> &str {
        &self.id
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![("name", format!("{}/{}", self.owner.org_id, self.name))]
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        crate::created_order(&self.owner.org_id, self.audit.created_at)
    }
}

impl crate::catalog::Plain for Hook {
    const KIND: &'static str = "Remote hook";
    fn audit(&self) -> &Audit {
        &self.audit
    }
    fn audit_mut(&mut self) -> &mut Audit {
        &mut self.audit
    }
}

impl Owned for Hook {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// A live hook of `org` by name.
pub fn by_name(
    store: &warden_storage::Store,
    org: &str,
    name: &str,
) -> Result<Option<Hook>, DomainError> {
    Ok(store
        .get_by_unique::<Hook>("name", &format!("{org}/{name}"))?
        .filter(|h| !h.is_deleted()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hooks_are_checked_and_headers_read_both_ways() {
        let body = json!({"name": "mail", "endpointUrl": "http://h:1/", "timeoutMs": 500,
            "headers": {"Authorization": "Bearer t"}});
        let h = Hook::new(
            HookInput::from_body(body.as_object().unwrap()).unwrap(),
            Owner::default(),
            "u",
        )
        .unwrap();
        assert_eq!(h.endpoint_url, "http://h:1");
        assert_eq!(
            h.header_pairs(),
            [("Authorization".to_owned(), "Bearer t".to_owned())]
        );
        let text = Hook {
            headers: json!("A:1, B:two").to_string(),
            ..h.clone()
        };
        assert_eq!(text.header_pairs().len(), 2);
        for bad in [
            json!({"endpointUrl": "http://h", "timeoutMs": 1}),
            json!({"name": "x", "timeoutMs": 1}),
            json!({"name": "x", "endpointUrl": "http://h", "timeoutMs": 0}),
            json!({"name": "x", "endpointUrl": "ftp://h", "timeoutMs": 1}),
        ] {
            let input = HookInput::from_body(bad.as_object().unwrap()).unwrap();
            assert!(Hook::new(input, Owner::default(), "u").is_err(), "{bad}");
        }
        assert!(
            HookInput::from_body(
                json!({"properties": {"in": "cookie", "name": "x"}})
                    .as_object()
                    .unwrap()
            )
            .is_err()
        );
    }
}
