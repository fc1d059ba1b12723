//! The event log (contenox `/events`, `/ingest`, `/raw-events`,
//! `/mappings`; WORKFLOWS.md §1 and §4 E-G): domain events, the raw
//! payloads some were mapped from, and the mappings that map them.
//!
//! Invariants:
//! - An event's `nid` rises in commit order: [`EventLog`] hands out nids
//!   and queues the commit under one lock, and the committer applies
//!   requests in the order they were queued. A record's id is its nid in
//!   20 digits, so the collection in key order is the log in nid order.
//! - nids are never reused, not even after a range delete removed the
//!   newest events: every append also records the next nid.
//! - The live tail ([`EventLog::subscribe`]) sees each committed event
//!   once, in nid order, after its commit is durable; never a refused one.
//! - An event id is unique in its organisation: a second append of the
//!   same id is refused as a conflict, so a re-run that emits events
//!   under deterministic ids adds none twice.
//! - An event's invocations (one per trigger listening to its type) are
//!   stored in the event's own commit and handed to the dispatcher
//!   ([`EventLog::take_invocations`]) once it is durable: a crash after
//!   the `201` still runs each function once, and the function starts
//!   without waiting for a second flush.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc, oneshot};
use warden_storage::{Millis, Record, StorageError, Store, Write, new_uuid, now_millis};

use crate::DomainError;
use crate::function::{Invocation, Trigger};
use crate::rules::MAX_SHORT;

warden_storage::first_layout!(Event, RawEvent, Mapping);

/// Separates the parts of a scope (organisation, type, ...); control
/// characters are refused in the parts.
const SEP: char = '\u{1f}';

/// How far an event's `created_at` may be from now (§4 E).
pub const CLOCK_WINDOW: Millis = 10 * 60 * 1000;

/// The ordered indexes of the event collection.
pub const BY_TYPE: &str = "type";
pub const BY_AGGREGATE: &str = "aggregate";
pub const BY_SOURCE: &str = "source";
/// The raw-event collection's index: by organisation, received time.
pub const BY_RECEIVED: &str = "received";

fn scope(parts: &[&str]) -> String {
    let mut s = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            s.push(SEP);
        }
        s.push_str(p);
    }
    s
}

/// The scope of an organisation's events of one type.
pub fn type_scope(org: &str, event_type: &str) -> String {
    scope(&[org, event_type])
}

pub fn aggregate_scope(org: &str, event_type: &str, kind: &str, id: &str) -> String {
    scope(&[org, event_type, kind, id])
}

/// An organisation's events from one source, of every type (the source
/// route's type filter is optional).
pub fn source_scope(org: &str, source: &str) -> String {
    scope(&[org, source])
}

/// A sort key of the time indexes: time, then nid (both big-endian).
pub fn time_key(at: Millis, nid: u64) -> Vec<u8> {
    let mut k = warden_storage::time_sort_key(at);
    k.extend_from_slice(&nid.to_be_bytes());
    k
}

fn nid_key(nid: u64) -> String {
    format!("{nid:020}")
}

/// One domain event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// The nid in 20 digits: the record id.
    pub key: String,
    pub nid: u64,
    pub id: String,
    pub org_id: String,
    pub event_type: String,
    pub event_source: String,
    pub aggregate_id: String,
    pub aggregate_type: String,
    pub version: i64,
    /// JSON text.
    pub data: String,
    /// JSON text of an object.
    pub metadata: String,
    pub created_at: Millis,
}

impl Record for Event {
    const COLLECTION: &'static str = "events";
    // The record id is the nid key (log order); `id` is the client's.
    #[allow(clippy::misnamed_getters)]
    fn id(&self) -> &str {
        &self.key
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![("id", scope(&[&self.org_id, &self.id]))]
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        let at = time_key(self.created_at, self.nid);
        vec![
            (
                BY_TYPE,
                type_scope(&self.org_id, &self.event_type),
                at.clone(),
            ),
            (
                BY_AGGREGATE,
                aggregate_scope(
                    &self.org_id,
                    &self.event_type,
                    &self.aggregate_type,
                    &self.aggregate_id,
                ),
                at.clone(),
            ),
            (
                BY_SOURCE,
                source_scope(&self.org_id, &self.event_source),
                at,
            ),
        ]
    }
}

impl Event {
    /// `data` as JSON (null when unreadable).
    pub fn data_json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }

    pub fn metadata_json(&self) -> Value {
        serde_json::from_str(&self.metadata).unwrap_or_else(|_| Value::Object(Map::new()))
    }

    /// Reads a client's event (§4 E): `event_type`, `aggregate_type` and
    /// `aggregate_id` required, `version` above 0, `created_at` (default
    /// now) within ten minutes of `now`; `id` defaults to a new UUID.
    pub fn from_body(
        body: &Map<String, Value>,
        org: &str,
        now: Millis,
    ) -> Result<Event, DomainError> {
        let mut problems = Vec::new();
        let mut text = |k: &str, required: bool| match body.get(k) {
            Some(Value::String(s)) if !s.is_empty() => {
                if s.chars().any(char::is_control) || s.chars().count() > MAX_SHORT {
                    problems.push(format!(
                        "{k} must be at most {MAX_SHORT} characters, without control characters"
                    ));
                }
                s.clone()
            }
            None | Some(Value::Null) | Some(Value::String(_)) => {
                if required {
                    problems.push(format!("{k} is required"));
                }
                String::new()
            }
            Some(_) => {
                problems.push(format!("{k} must be a string"));
                String::new()
            }
        };
        let event_type = text("event_type", true);
        let aggregate_type = text("aggregate_type", true);
        let aggregate_id = text("aggregate_id", true);
        let event_source = text("event_source", false);
        let id = text("id", false);
        let version = match body.get("version") {
            Some(v) => v.as_i64().unwrap_or(0),
            None => 0,
        };
        if version <= 0 {
            problems.push("version must be greater than 0".into());
        }
        let created_at = match body.get("created_at") {
            None | Some(Value::Null) => now,
            Some(Value::String(s)) if s.is_empty() => now,
            Some(Value::String(s)) => match crate::dataset::parse_time(s) {
                Some(t) => t,
                None => {
                    problems.push("created_at must be an RFC 3339 time".into());
                    now
                }
            },
            Some(_) => {
                problems.push("created_at must be an RFC 3339 time".into());
                now
            }
        };
        if created_at < now - CLOCK_WINDOW {
            problems.push(
                "created_at: event is too old (more than 10 minutes before the server's time)"
                    .into(),
            );
        } else if created_at > now + CLOCK_WINDOW {
            problems.push(
                "created_at: event is too new (more than 10 minutes after the server's time)"
                    .into(),
            );
        }
        let data = match body.get("data") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v) => v.clone(),
        };
        let metadata = match body.get("metadata") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                problems.push("metadata must be an object".into());
                Value::Null
            }
        };
        if !problems.is_empty() {
            return Err(DomainError::Invalid(problems));
        }
        Ok(Event {
            key: String::new(),
            nid: 0,
            id: if id.is_empty() { new_uuid() } else { id },
            org_id: org.to_owned(),
            event_type,
            event_source,
            aggregate_id,
            aggregate_type,
            version,
            data: data.to_string(),
            metadata: metadata.to_string(),
            created_at,
        })
    }
}

/// A payload as it reached `/ingest` (or `/raw-events`), kept before
/// mapping so it can be replayed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RawEvent {
    pub key: String,
    pub nid: u64,
    pub id: String,
    pub org_id: String,
    pub path: String,
    /// JSON text of an object of header names to values (credentials left out).
    pub headers: String,
    /// The payload, verbatim (JSON text).
    pub payload: String,
    pub received_at: Millis,
}

impl Record for RawEvent {
    const COLLECTION: &'static str = "raw_events";
    // The record id is the nid key (log order); `id` is the client's.
    #[allow(clippy::misnamed_getters)]
    fn id(&self) -> &str {
        &self.key
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        vec![(
            BY_RECEIVED,
            self.org_id.clone(),
            time_key(self.received_at, self.nid),
        )]
    }
}

impl RawEvent {
    pub fn new(org: &str, path: &str, headers: &[(String, String)], payload: String) -> RawEvent {
        let headers: Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        RawEvent {
            key: String::new(),
            nid: 0,
            id: new_uuid(),
            org_id: org.to_owned(),
            path: path.to_owned(),
            headers: Value::Object(headers).to_string(),
            payload,
            received_at: now_millis(),
        }
    }

    pub fn payload_json(&self) -> Value {
        serde_json::from_str(&self.payload).unwrap_or(Value::Null)
    }

    pub fn headers_json(&self) -> Value {
        serde_json::from_str(&self.headers).unwrap_or_else(|_| Value::Object(Map::new()))
    }

    fn header_pairs(&self) -> Vec<(String, String)> {
        match self.headers_json() {
            Value::Object(m) => m
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned())))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// How a raw payload at one path becomes an event (§4 F-G).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Mapping {
    pub id: String,
    pub org_id: String,
    pub path: String,
    pub event_type: String,
    pub event_source: String,
    pub aggregate_type: String,
    pub event_type_field: String,
    pub event_source_field: String,
    pub aggregate_id_field: String,
    pub aggregate_type_field: String,
    pub event_id_field: String,
    /// JSON text of an object: metadata key → field path.
    pub metadata_mapping: String,
    pub version: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Record for Mapping {
    const COLLECTION: &'static str = "event_mappings";
    fn id(&self) -> &str {
        &self.id
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![("path", scope(&[&self.org_id, &self.path]))]
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        vec![("path", self.org_id.clone(), self.path.as_bytes().to_vec())]
    }
}

impl Mapping {
    /// Reads a client's mapping (§4 G): `path`, `eventType`, `eventSource`
    /// and `aggregateType` required, `version` above 0. `path` (from the
    /// query) wins over the body's.
    pub fn from_body(
        body: &Map<String, Value>,
        path: Option<&str>,
        org: &str,
    ) -> Result<Mapping, DomainError> {
        let mut problems = Vec::new();
        let mut text = |k: &str, required: bool| match body.get(k) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None | Some(Value::Null) | Some(Value::String(_)) => {
                if required {
                    problems.push(format!("{k} is required"));
                }
                String::new()
            }
            Some(_) => {
                problems.push(format!("{k} must be a string"));
                String::new()
            }
        };
        let body_path = text("path", path.is_none());
        let event_type = text("eventType", true);
        let event_source = text("eventSource", true);
        let aggregate_type = text("aggregateType", true);
        let event_type_field = text("eventTypeField", false);
        let event_source_field = text("eventSourceField", false);
        let aggregate_id_field = text("aggregateIDField", false);
        let aggregate_type_field = text("aggregateTypeField", false);
        let event_id_field = text("eventIDField", false);
        let path = path.map(str::to_owned).unwrap_or(body_path);
        if path.is_empty() && !problems.iter().any(|p| p.starts_with("path")) {
            problems.push("path is required".into());
        }
        if path.chars().count() > 1024 {
            problems.push("path must be at most 1024 characters".into());
        }
        let version = body.get("version").and_then(Value::as_i64).unwrap_or(0);
        if version <= 0 {
            problems.push("version must be greater than 0".into());
        }
        let metadata_mapping = match body.get("metadataMapping") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) if m.values().all(Value::is_string) => m.clone(),
            Some(_) => {
                problems.push("metadataMapping must be an object of field paths".into());
                Map::new()
            }
        };
        if !problems.is_empty() {
            return Err(DomainError::Invalid(problems));
        }
        let now = now_millis();
        Ok(Mapping {
            id: new_uuid(),
            org_id: org.to_owned(),
            path,
            event_type,
            event_source,
            aggregate_type,
            event_type_field,
            event_source_field,
            aggregate_id_field,
            aggregate_type_field,
            event_id_field,
            metadata_mapping: Value::Object(metadata_mapping).to_string(),
            version,
            created_at: now,
            updated_at: now,
        })
    }

    pub fn metadata_json(&self) -> Map<String, Value> {
        match serde_json::from_str(&self.metadata_mapping) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }

    /// The event a raw payload maps to (§4 F): fixed type and source
    /// unless their fields are present; the aggregate id (and the
    /// aggregate type, when its field is set) must resolve; metadata
    /// fields that do not resolve are left out. A fresh `evt_` id.
    pub fn apply(&self, raw: &RawEvent, now: Millis) -> Result<Event, DomainError> {
        let payload = raw.payload_json();
        let headers = raw.header_pairs();
        let find = |path: &str| -> Option<Value> {
            if path.is_empty() {
                return None;
            }
            match path.strip_prefix("headers.") {
                Some(name) => headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| Value::String(v.clone())),
                None => field(&payload, path).filter(|v| !v.is_null()).cloned(),
            }
        };
        let text = |v: Value| match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let pick = |field: &str, fixed: &str| {
            find(field)
                .map(text)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| fixed.to_owned())
        };
        let aggregate_id = find(&self.aggregate_id_field)
            .map(text)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                DomainError::Invalid(vec![format!(
                    "aggregate ID field '{}' not found in payload",
                    self.aggregate_id_field
                )])
            })?;
        let aggregate_type = if self.aggregate_type_field.is_empty() {
            self.aggregate_type.clone()
        } else {
            find(&self.aggregate_type_field)
                .map(text)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    DomainError::Invalid(vec![format!(
                        "aggregate type field '{}' not found in payload",
                        self.aggregate_type_field
                    )])
                })?
        };
        let metadata: Map<String, Value> = self
            .metadata_json()
            .into_iter()
            .filter_map(|(k, path)| Some((k, find(path.as_str()?)?)))
            .collect();
        Ok(Event {
            key: String::new(),
            nid: 0,
            id: format!("evt_{}", new_uuid()),
            org_id: raw.org_id.clone(),
            event_type: pick(&self.event_type_field, &self.event_type),
            event_source: pick(&self.event_source_field, &self.event_source),
            aggregate_id,
            aggregate_type,
            version: self.version,
            data: if raw.payload.is_empty() {
                "null".into()
            } else {
                raw.payload.clone()
            },
            metadata: Value::Object(metadata).to_string(),
            created_at: now,
        })
    }
}

/// A dotted path into JSON (`order.items.0.sku`; numbers index arrays).
pub fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, part| match v {
        Value::Object(m) => m.get(part),
        Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// The live mapping of `org` at `path`.
pub fn mapping(store: &Store, org: &str, path: &str) -> Result<Option<Mapping>, DomainError> {
    Ok(store.get_by_unique::<Mapping>("path", &scope(&[org, path]))?)
}

/// Where the next nids are kept (see the invariants).
const NEXT_NIDS: &str = "event_log/next_nids";

/// One commit on its way: its outcome, and what to publish once durable.
struct Queued {
    outcome:
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u64>, StorageError>> + Send>>,
    events: Vec<Arc<Event>>,
    /// The function runs the events' triggers call for, stored in the
    /// same commit.
    invocations: Vec<Invocation>,
    reply: oneshot::Sender<Result<(), StorageError>>,
}

struct Order {
    next_event: u64,
    next_raw: u64,
    queue: mpsc::UnboundedSender<Queued>,
}

/// The append side of the event log and its live tail. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    store: Store,
    order: Arc<Mutex<Order>>,
    tail: broadcast::Sender<Arc<Event>>,
    /// The nid of the last event published to the tail.
    published: Arc<AtomicU64>,
    /// Where committed invocations go (taken once by who runs them).
    invocations: Arc<Mutex<Option<mpsc::UnboundedReceiver<Vec<Invocation>>>>>,
}

/// What one append stores.
#[derive(Default)]
pub struct Append {
    pub events: Vec<Event>,
    pub raw: Option<RawEvent>,
    /// Events to remove in the same commit (a range delete).
    pub remove: Vec<String>,
}

impl EventLog {
    /// Opens the log over `store`: nids go on after the largest ever
    /// handed out. Must run inside a tokio runtime (it starts the
    /// publisher task).
    pub fn open(store: Store) -> Result<EventLog, DomainError> {
        let next = |last: Option<String>| {
            last.and_then(|k| k.parse::<u64>().ok())
                .map_or(1, |n| n + 1)
        };
        let mut next_event = next(store.last_id::<Event>()?);
        let mut next_raw = next(store.last_id::<RawEvent>()?);
        if let Some(v) = store.meta(NEXT_NIDS)?
            && let Ok(b) = <[u8; 16]>::try_from(v.as_slice())
        {
            let (e, r) = b.split_at(8);
            next_event = next_event.max(u64::from_be_bytes(e.try_into().unwrap_or_default()));
            next_raw = next_raw.max(u64::from_be_bytes(r.try_into().unwrap_or_default()));
        }
        let (queue, mut rx) = mpsc::unbounded_channel::<Queued>();
        let (run, runs) = mpsc::unbounded_channel::<Vec<Invocation>>();
        let (tail, _) = broadcast::channel(4096);
        let publish = tail.clone();
        let published = Arc::new(AtomicU64::new(next_event - 1));
        let mark = published.clone();
        // Commits are answered in the order they were queued; awaiting
        // them in that order publishes in nid order.
        tokio::spawn(async move {
            while let Some(q) = rx.recv().await {
                let outcome = q.outcome.await.map(|_| ());
                if outcome.is_ok() {
                    for e in q.events {
                        mark.store(e.nid, Ordering::Release);
                        let _ = publish.send(e);
                    }
                    if !q.invocations.is_empty() {
                        let _ = run.send(q.invocations);
                    }
                }
                let _ = q.reply.send(outcome);
            }
        });
        Ok(EventLog {
            store,
            order: Arc::new(Mutex::new(Order {
                next_event,
                next_raw,
                queue,
            })),
            tail,
            published,
            invocations: Arc::new(Mutex::new(Some(runs))),
        })
    }

    /// The invocations of every event committed from now on, each batch
    /// once its commit is durable. Taken once, by the dispatcher that
    /// runs them; `None` after that.
    pub fn take_invocations(&self) -> Option<mpsc::UnboundedReceiver<Vec<Invocation>>> {
        self.invocations
            .lock()
            .expect("the event log lock is never poisoned")
            .take()
    }

    /// The nid of the last event published to the tail (read it before
    /// [`subscribe`](Self::subscribe) to know where a catch-up starts).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Every event committed from now on, in nid order. A subscriber that
    /// falls more than 4,096 events behind hears `Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tail.subscribe()
    }

    /// Stores `append` in one durable commit: nids are handed out here.
    /// Returns the events and raw event as stored.
    pub async fn append(
        &self,
        mut append: Append,
    ) -> Result<(Vec<Event>, Option<RawEvent>), DomainError> {
        // The triggers listening to each event's type: their invocations
        // are stored with the event, so a crash after the commit still
        // runs each function once, and nothing waits for a second flush.
        let mut listening: Vec<Vec<Trigger>> = Vec::with_capacity(append.events.len());
        for (i, e) in append.events.iter().enumerate() {
            let same = append.events[..i]
                .iter()
                .position(|p| p.org_id == e.org_id && p.event_type == e.event_type);
            listening.push(match same {
                Some(j) => listening[j].clone(),
                None => Trigger::listening(&self.store, &e.org_id, &e.event_type)?,
            });
        }
        let (reply, answer) = oneshot::channel();
        {
            let mut order = self
                .order
                .lock()
                .expect("the event log lock is never poisoned");
            let mut writes = Vec::with_capacity(append.events.len() + append.remove.len() + 2);
            for key in &append.remove {
                writes.push(Write::remove::<Event>(key));
            }
            let (mut next_event, mut next_raw) = (order.next_event, order.next_raw);
            if let Some(raw) = &mut append.raw {
                raw.nid = next_raw;
                raw.key = nid_key(next_raw);
                next_raw += 1;
                writes.push(Write::insert(raw)?);
            }
            let mut invocations = Vec::new();
            for (e, triggers) in append.events.iter_mut().zip(&listening) {
                e.nid = next_event;
                e.key = nid_key(next_event);
                next_event += 1;
                writes.push(Write::insert(e)?);
                for t in triggers {
                    let inv = Invocation::new(t, e);
                    writes.push(Write::insert(&inv)?);
                    invocations.push(inv);
                }
            }
            let mut next = next_event.to_be_bytes().to_vec();
            next.extend_from_slice(&next_raw.to_be_bytes());
            writes.push(Write::Meta {
                name: NEXT_NIDS.into(),
                value: next,
            });
            let outcome = Box::pin(self.store.submit(writes)?);
            order.next_event = next_event;
            order.next_raw = next_raw;
            order
                .queue
                .send(Queued {
                    outcome,
                    events: append.events.iter().cloned().map(Arc::new).collect(),
                    invocations,
                    reply,
                })
                .map_err(|_| DomainError::Unavailable("the event log has stopped".into()))?;
        }
        answer
            .await
            .map_err(|_| DomainError::Unavailable("the event log has stopped".into()))??;
        Ok((append.events, append.raw))
    }

    /// Events of one scope of an index with `from <= created_at <= to`
    /// that pass `keep`, newest first, at most `limit`.
    pub fn range(
        &self,
        index: &str,
        scope: &str,
        window: (Millis, Millis),
        limit: usize,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<Vec<Event>, DomainError> {
        newest_in(&self.store, index, scope, window, limit, keep)
    }

    /// The event types of `org` with an event in `[from, to]`, sorted.
    pub fn types(
        &self,
        org: &str,
        from: Millis,
        to: Millis,
        limit: usize,
    ) -> Result<Vec<String>, DomainError> {
        let prefix = format!("{org}{SEP}");
        let mut out = Vec::new();
        for (scope, _) in self.store.scope_counts::<Event>(BY_TYPE, &prefix)? {
            let Some(t) = scope.strip_prefix(&prefix) else {
                continue;
            };
            // Only this organisation's scopes (a longer org id shares the prefix).
            if t.contains(SEP) {
                continue;
            }
            let hit = self.store.ids_between::<Event>(
                BY_TYPE,
                &scope,
                &time_key(from, 0),
                &time_key(to.saturating_add(1), 0),
                false,
                1,
            )?;
            if !hit.is_empty() {
                out.push(t.to_owned());
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Removes `org`'s events of one type in `[from, to]`; how many.
    pub async fn delete_range(
        &self,
        org: &str,
        event_type: &str,
        from: Millis,
        to: Millis,
    ) -> Result<usize, DomainError> {
        let scope = type_scope(org, event_type);
        let mut removed = 0;
        loop {
            let keys: Vec<String> = self
                .store
                .ids_between::<Event>(
                    BY_TYPE,
                    &scope,
                    &time_key(from, 0),
                    &time_key(to.saturating_add(1), 0),
                    false,
                    512,
                )?
                .into_iter()
                .map(|(_, k)| k)
                .collect();
            if keys.is_empty() {
                return Ok(removed);
            }
            removed += keys.len();
            self.append(Append {
                remove: keys,
                ..Default::default()
            })
            .await?;
        }
    }

    /// A raw event of `org` by nid.
    pub fn raw(&self, org: &str, nid: u64) -> Result<Option<RawEvent>, DomainError> {
        Ok(self
            .store
            .get::<RawEvent>(&nid_key(nid))?
            .filter(|r| r.org_id == org))
    }

    /// `org`'s raw events received in `[from, to]`, newest first.
    pub fn raw_range(
        &self,
        org: &str,
        from: Millis,
        to: Millis,
        limit: usize,
    ) -> Result<Vec<RawEvent>, DomainError> {
        newest_in(&self.store, BY_RECEIVED, org, (from, to), limit, |_| true)
    }

    /// Up to `limit` events after nid `after`, every organisation, in nid
    /// order: what a dispatcher tails.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<Event>, DomainError> {
        let mut out = Vec::new();
        for key in self.store.ids_after::<Event>(&nid_key(after), limit)? {
            out.extend(self.store.get::<Event>(&key)?);
        }
        Ok(out)
    }
}

/// Records of one scope of a time+nid index with a time in `[from, to]`
/// that pass `keep`, newest first, at most `limit`: read in batches from
/// the top of the window, so a filter that skips many still ends.
fn newest_in<T: Record>(
    store: &Store,
    index: &str,
    scope: &str,
    (from, to): (Millis, Millis),
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<T>, DomainError> {
    let low = time_key(from, 0);
    let mut high = time_key(to.saturating_add(1), 0);
    let mut out = Vec::with_capacity(limit.min(256));
    while out.len() < limit {
        let ids = store.ids_between::<T>(index, scope, &low, &high, true, 256)?;
        let Some((last, _)) = ids.last() else {
            break;
        };
        // Sort keys end with the nid, so none is shared: the next batch
        // starts below the last one read.
        high = last.clone();
        for (_, key) in &ids {
            if let Some(r) = store.get::<T>(key)?
                && keep(&r)
            {
                out.push(r);
                if out.len() == limit {
                    break;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(payload: Value, headers: &[(&str, &str)]) -> RawEvent {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RawEvent::new("o", "/gh", &headers, payload.to_string())
    }

    fn mapping(body: Value) -> Result<Mapping, DomainError> {
        Mapping::from_body(body.as_object().unwrap(), None, "o")
    }

    #[test]
    fn events_are_checked_as_the_original_checks_them() {
        let now = 1_700_000_000_000;
        let ok = json!({"event_type": "t", "aggregate_type": "a", "aggregate_id": "1", "version": 1,
            "created_at": "2023-11-14T22:13:20.123456+00:00"});
        let e = Event::from_body(ok.as_object().unwrap(), "o", now).unwrap();
        assert_eq!(e.created_at, now + 123);
        assert_eq!(e.data, "{}");
        let bad = |patch: Value| {
            let mut b = ok.as_object().unwrap().clone();
            for (k, v) in patch.as_object().unwrap() {
                b.insert(k.clone(), v.clone());
            }
            match Event::from_body(&b, "o", now) {
                Err(DomainError::Invalid(p)) => p.join("; "),
                other => panic!("{other:?}"),
            }
        };
        assert!(bad(json!({"version": 0})).contains("version"));
        assert!(bad(json!({"event_type": ""})).contains("event_type"));
        assert!(bad(json!({"aggregate_id": null})).contains("aggregate_id"));
        assert!(bad(json!({"created_at": "2023-11-14T21:00:00Z"})).contains("event is too old"));
        assert!(bad(json!({"created_at": "2023-11-14T23:00:00Z"})).contains("event is too new"));
        assert!(bad(json!({"event_type": "a\u{1f}b"})).contains("control"));
    }

    #[test]
    fn mappings_pick_fields_headers_and_fallbacks() {
        let m = mapping(json!({"path": "/gh", "eventType": "push", "eventSource": "gh",
            "aggregateType": "repo", "aggregateIDField": "repo.id", "eventTypeField": "headers.X-Event",
            "metadataMapping": {"who": "sender.login", "gone": "nope", "first": "items.0"},
            "version": 2}))
        .unwrap();
        let r = raw(
            json!({"repo": {"id": 7}, "sender": {"login": "ann"}, "items": ["a"]}),
            &[("x-event", "pull")],
        );
        let e = m.apply(&r, 5).unwrap();
        assert_eq!(
            (
                e.event_type.as_str(),
                e.event_source.as_str(),
                e.aggregate_id.as_str()
            ),
            ("pull", "gh", "7")
        );
        assert_eq!(e.version, 2);
        assert_eq!(e.metadata_json(), json!({"who": "ann", "first": "a"}));
        assert!(e.id.starts_with("evt_"));
        let missing = m.apply(&raw(json!({"x": 1}), &[]), 5).unwrap_err();
        assert!(
            format!("{missing:?}").contains("aggregate ID field 'repo.id' not found in payload")
        );
        for bad in [
            json!({"eventType": "t", "eventSource": "s", "aggregateType": "a", "version": 1}),
            json!({"path": "/p", "eventSource": "s", "aggregateType": "a", "version": 1}),
            json!({"path": "/p", "eventType": "t", "eventSource": "s", "aggregateType": "a", "version": 0}),
        ] {
            assert!(mapping(bad.clone()).is_err(), "{bad}");
        }
        // The query's path wins over the body's.
        let q = Mapping::from_body(
            json!({"path": "/body", "eventType": "t", "eventSource": "s", "aggregateType": "a", "version": 1})
                .as_object()
                .unwrap(),
            Some("/query"),
            "o",
        )
        .unwrap();
        assert_eq!(q.path, "/query");
    }

    #[tokio::test]
    async fn nids_rise_in_commit_order_survive_deletes_and_reach_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let config = warden_storage::StoreConfig::new(dir.path().to_owned());
        let store = Store::open(&config).unwrap();
        let log = EventLog::open(store.clone()).unwrap();
        let mut tail = log.subscribe();
        let event = |id: &str, t: &str| {
            let body = json!({"id": id, "event_type": t, "aggregate_type": "a", "aggregate_id": "1", "version": 1});
            Event::from_body(body.as_object().unwrap(), "o", now_millis()).unwrap()
        };
        let mut appends = Vec::new();
        for i in 0..20 {
            let log = log.clone();
            let e = event(&format!("e{i}"), if i % 2 == 0 { "even" } else { "odd" });
            appends.push(tokio::spawn(async move {
                log.append(Append {
                    events: vec![e],
                    ..Default::default()
                })
                .await
                .unwrap()
            }));
        }
        for a in appends {
            a.await.unwrap();
        }
        let mut seen = Vec::new();
        for _ in 0..20 {
            seen.push(tail.recv().await.unwrap().nid);
        }
        assert_eq!(seen, (1..=20).collect::<Vec<_>>());
        // A duplicate id is refused and never published.
        let dup = log
            .append(Append {
                events: vec![event("e3", "odd")],
                ..Default::default()
            })
            .await;
        assert!(matches!(dup, Err(DomainError::Conflict { .. })));
        let evens = log
            .range(
                BY_TYPE,
                &type_scope("o", "even"),
                (0, now_millis()),
                100,
                |_| true,
            )
            .unwrap();
        assert_eq!(evens.len(), 10);
        assert!(evens.windows(2).all(|w| w[0].nid > w[1].nid));
        assert_eq!(
            log.types("o", 0, now_millis(), 10).unwrap(),
            ["even", "odd"]
        );
        assert_eq!(log.after(18, 10).unwrap().len(), 2);
        // Deleting the newest events never lets their nids come back.
        assert_eq!(
            log.delete_range("o", "odd", 0, now_millis()).await.unwrap(),
            10
        );
        assert_eq!(
            log.delete_range("o", "even", 0, now_millis())
                .await
                .unwrap(),
            10
        );
        assert!(log.types("o", 0, now_millis(), 10).unwrap().is_empty());
        drop(log);
        let log = EventLog::open(store).unwrap();
        let (stored, _) = log
            .append(Append {
                events: vec![event("e3", "odd")],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(stored[0].nid, 22);
    }
}
