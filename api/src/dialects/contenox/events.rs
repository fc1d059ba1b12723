//! Contenox's event store and bridge (WORKFLOWS.md §1, §4 E-G): `/events`
//! (append, indexed range queries, range delete, the live SSE tail),
//! `/ingest` and `/raw-events` (payloads kept before mapping), `/replay`,
//! `/mappings` and `/mapping`, and the `/sync` barrier. Every read and
//! write is the caller's organisation's; the log itself is
//! `warden_domain::event`.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use warden_domain::event::{self, Append, Event, EventLog, Mapping, RawEvent};
use warden_storage::{Millis, Record, Write, now_millis};

use super::{Contenox, ContenoxResult, unprocessable, writer};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;
use crate::sse;

type Caller = CurrentUser<Contenox>;
type JsonIn = JsonBody<Contenox>;

/// How far back a query looks when it names no `from` (§4 E).
const DEFAULT_WINDOW: Millis = 24 * 3600 * 1000;
/// Request headers never kept with a raw event: credentials.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "x-api-key",
    "cookie",
    "proxy-authorization",
];

pub(crate) fn view(e: &Event) -> Value {
    json!({
        "id": e.id,
        "nid": e.nid,
        "event_type": e.event_type,
        "event_source": e.event_source,
        "aggregate_id": e.aggregate_id,
        "aggregate_type": e.aggregate_type,
        "version": e.version,
        "data": e.data_json(),
        "metadata": e.metadata_json(),
        "created_at": iso(e.created_at),
    })
}

fn raw_view(r: &RawEvent) -> Value {
    json!({
        "id": r.id,
        "nid": r.nid,
        "path": r.path,
        "headers": r.headers_json(),
        "payload": r.payload_json(),
        "received_at": iso(r.received_at),
    })
}

fn mapping_view(m: &Mapping) -> Value {
    json!({
        "path": m.path,
        "eventType": m.event_type,
        "eventSource": m.event_source,
        "aggregateType": m.aggregate_type,
        "eventTypeField": m.event_type_field,
        "eventSourceField": m.event_source_field,
        "aggregateIDField": m.aggregate_id_field,
        "aggregateTypeField": m.aggregate_type_field,
        "eventIDField": m.event_id_field,
        "metadataMapping": m.metadata_json(),
        "version": m.version,
    })
}

fn log(state: &AppState) -> &EventLog {
    &state.runtime.events
}

/// The query parameters of the event routes.
#[derive(serde::Deserialize, Default)]
pub(super) struct EventQuery {
    event_type: Option<String>,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    event_source: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
}

fn time(name: &str, v: Option<&str>) -> ContenoxResult<Option<Millis>> {
    match v.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => warden_domain::dataset::parse_time(s)
            .map(Some)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{name} must be an RFC 3339 time"),
                )
            }),
    }
}

impl EventQuery {
    /// `from`/`to` (default the last 24 hours) and `limit` (default 100,
    /// 1..=1000); anything else is a 422.
    fn window(&self) -> ContenoxResult<((Millis, Millis), usize)> {
        let to = time("to", self.to.as_deref())?.unwrap_or_else(now_millis);
        let from = time("from", self.from.as_deref())?.unwrap_or(to - DEFAULT_WINDOW);
        let limit = match self.limit.as_deref().filter(|s| !s.is_empty()) {
            None => 100,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "limit must be an integer from 1 to 1000",
                    )
                })?,
        };
        Ok(((from, to), limit))
    }

    /// The named parameters, each required (422 naming those missing).
    fn required<const N: usize>(&self, names: [&str; N]) -> ContenoxResult<[&str; N]> {
        let get = |n: &str| match n {
            "event_type" => self.event_type.as_deref(),
            "aggregate_type" => self.aggregate_type.as_deref(),
            "aggregate_id" => self.aggregate_id.as_deref(),
            "event_source" => self.event_source.as_deref(),
            _ => None,
        };
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| get(n).is_none_or(str::is_empty))
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{} is required", missing.join(", ")),
            ));
        }
        Ok(names.map(|n| get(n).unwrap_or_default()))
    }
}

fn views(events: &[Event]) -> Json<Vec<Value>> {
    Json(events.iter().map(view).collect())
}

async fn append(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonIn,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let e = Event::from_body(&body, &p.org_id, now_millis()).map_err(unprocessable)?;
    let (stored, _) = log(&state)
        .append(Append {
            events: vec![e],
            ..Default::default()
        })
        .await?;
    Ok((StatusCode::CREATED, Json(view(&stored[0]))))
}

async fn by_type(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<EventQuery>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let [t] = q.required(["event_type"])?;
    let (window, limit) = q.window()?;
    let scope = event::type_scope(&p.org_id, t);
    Ok(views(&log(&state).range(
        event::BY_TYPE,
        &scope,
        window,
        limit,
        |_| true,
    )?))
}

async fn by_aggregate(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<EventQuery>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let [t, kind, id] = q.required(["event_type", "aggregate_type", "aggregate_id"])?;
    let (window, limit) = q.window()?;
    let scope = event::aggregate_scope(&p.org_id, t, kind, id);
    Ok(views(&log(&state).range(
        event::BY_AGGREGATE,
        &scope,
        window,
        limit,
        |_| true,
    )?))
}

async fn by_source(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<EventQuery>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let [source] = q.required(["event_source"])?;
    let (window, limit) = q.window()?;
    let t = q.event_type.as_deref().filter(|t| !t.is_empty());
    let scope = event::source_scope(&p.org_id, source);
    Ok(views(&log(&state).range(
        event::BY_SOURCE,
        &scope,
        window,
        limit,
        |e| t.is_none_or(|t| e.event_type == t),
    )?))
}

async fn types(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<EventQuery>,
) -> ContenoxResult<Json<Vec<String>>> {
    let ((from, to), limit) = q.window()?;
    Ok(Json(log(&state).types(&p.org_id, from, to, limit)?))
}

async fn delete_type(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<EventQuery>,
) -> ContenoxResult<Json<Value>> {
    writer(&p)?;
    let [t] = q.required(["event_type"])?;
    let (from, to) = (
        time("from", q.from.as_deref())?,
        time("to", q.to.as_deref())?,
    );
    let (Some(from), Some(to)) = (from, to) else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "from and to are required (RFC 3339 times)",
        ));
    };
    let removed = log(&state).delete_range(&p.org_id, t, from, to).await?;
    tracing::info!(org = %p.org_id, event_type = t, removed, "events deleted");
    Ok(Json(json!("events deleted")))
}

/// What a stream holds between polls.
struct Tail {
    rx: tokio::sync::broadcast::Receiver<Arc<Event>>,
    log: EventLog,
    org: String,
    event_type: String,
    /// The last nid seen (delivered or not): a lagging stream catches up
    /// from the store after it, and never sends an event twice.
    last: u64,
    ready: VecDeque<Bytes>,
}

impl Tail {
    fn wanted(&self, e: &Event) -> bool {
        e.org_id == self.org && e.event_type == self.event_type
    }

    /// After a lag: the events missed, read from the log in nid order.
    fn catch_up(&mut self) -> Result<(), warden_domain::DomainError> {
        loop {
            let batch = self.log.after(self.last, 512)?;
            let Some(last) = batch.last() else {
                return Ok(());
            };
            self.last = last.nid;
            for e in &batch {
                if self.wanted(e) {
                    self.ready.push_back(sse::frame(view(e)));
                }
            }
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Some(b);
            }
            match self.rx.recv().await {
                Ok(e) => {
                    if e.nid <= self.last {
                        continue;
                    }
                    self.last = e.nid;
                    if self.wanted(&e) {
                        return Some(sse::frame(view(&e)));
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    if let Err(err) = self.catch_up() {
                        tracing::warn!(error = %err, "event stream could not catch up; closing it");
                        return None;
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// Every event of one type committed while the client listens, once
/// each, in nid order, as `data: {event}` lines.
async fn stream(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(event_type): Path<String>,
) -> Response {
    let log = log(&state).clone();
    let last = log.published();
    let tail = Tail {
        rx: log.subscribe(),
        log,
        org: p.org_id.clone(),
        event_type,
        last,
        ready: VecDeque::new(),
    };
    let frames = futures_util::stream::unfold(tail, |mut tail| async move {
        tail.next().await.map(|b| (b, tail))
    });
    sse::response(&state.lifecycle, frames)
}

/// The request's headers worth keeping with a raw event (no credentials).
fn kept_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| !SECRET_HEADERS.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

/// A payload must be JSON; it is kept as sent.
fn payload(bytes: &Bytes) -> ContenoxResult<String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the payload must be UTF-8 JSON"))?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("Malformed JSON: {e}")))?;
    Ok(text.to_owned())
}

fn find_mapping(state: &AppState, org: &str, path: &str) -> ContenoxResult<Mapping> {
    event::mapping(&state.store, org, path)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no mapping for path {path}")))
}

#[derive(serde::Deserialize)]
pub(super) struct PathQuery {
    path: Option<String>,
}

impl PathQuery {
    fn path(&self) -> ContenoxResult<&str> {
        self.path
            .as_deref()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "path query parameter is required")
            })
    }
}

/// A raw payload: kept first, then mapped to an event in the same commit;
/// when mapping fails the raw event is still kept (and can be replayed
/// once a mapping fits). Answers with the raw event's fields and the
/// event's (`event_id`, `event_nid` and the rest).
async fn ingest(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let path = q.path()?;
    let raw = RawEvent::new(&p.org_id, path, &kept_headers(&headers), payload(&bytes)?);
    let mapped = match event::mapping(&state.store, &p.org_id, path)? {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no mapping for path {path}"),
        )),
        Some(m) => m.apply(&raw, now_millis()).map_err(unprocessable),
    };
    let e = match mapped {
        Ok(e) => e,
        Err(refusal) => {
            log(&state)
                .append(Append {
                    raw: Some(raw),
                    ..Default::default()
                })
                .await?;
            return Err(refusal);
        }
    };
    let (events, raw) = log(&state)
        .append(Append {
            events: vec![e],
            raw: Some(raw),
            ..Default::default()
        })
        .await?;
    let mut out = raw.as_ref().map(raw_view).unwrap_or_default();
    if let (Value::Object(out), Value::Object(e)) = (&mut out, view(&events[0])) {
        for (k, v) in e {
            match k.as_str() {
                "id" => out.insert("event_id".into(), v),
                "nid" => out.insert("event_nid".into(), v),
                _ => out.insert(k, v),
            };
        }
    }
    Ok((StatusCode::CREATED, Json(out)))
}

/// Stores a raw event as given, without mapping it.
async fn raw_create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonIn,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let path = match body.get("path") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "path is required",
            ));
        }
    };
    let headers: Vec<(String, String)> = match body.get("headers") {
        Some(Value::Object(m)) => m
            .iter()
            .filter(|(k, _)| !SECRET_HEADERS.contains(&k.to_ascii_lowercase().as_str()))
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect(),
        _ => Vec::new(),
    };
    let payload = body.get("payload").cloned().unwrap_or(Value::Null);
    let raw = RawEvent::new(&p.org_id, &path, &headers, payload.to_string());
    let (_, raw) = log(&state)
        .append(Append {
            raw: Some(raw),
            ..Default::default()
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(raw.as_ref().map(raw_view).unwrap_or_default()),
    ))
}

async fn raw_list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<EventQuery>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let ((from, to), limit) = q.window()?;
    let raws = log(&state).raw_range(&p.org_id, from, to, limit)?;
    Ok(Json(raws.iter().map(raw_view).collect()))
}

fn parse_nid(nid: &str) -> ContenoxResult<u64> {
    nid.parse::<u64>().map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "nid must be a non-negative integer",
        )
    })
}

/// A raw event of the caller's organisation, received within the
/// optional window.
fn find_raw(state: &AppState, org: &str, nid: u64, q: &EventQuery) -> ContenoxResult<RawEvent> {
    let from = time("from", q.from.as_deref())?;
    let to = time("to", q.to.as_deref())?;
    log(state)
        .raw(org, nid)?
        .filter(|r| {
            from.is_none_or(|f| r.received_at >= f) && to.is_none_or(|t| r.received_at <= t)
        })
        .ok_or_else(|| ApiError::not_found("Raw event", &nid.to_string()))
}

async fn raw_get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(nid): Path<String>,
    Query(q): Query<EventQuery>,
) -> ContenoxResult<Json<Value>> {
    let nid = parse_nid(&nid)?;
    Ok(Json(raw_view(&find_raw(&state, &p.org_id, nid, &q)?)))
}

#[derive(serde::Deserialize)]
pub(super) struct ReplayQuery {
    nid: Option<String>,
    #[serde(flatten)]
    window: EventQuery,
}

/// Maps a stored raw event again with the path's current mapping and
/// appends the event that results (a new event each time).
async fn replay(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<ReplayQuery>,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let nid =
        q.nid.as_deref().filter(|n| !n.is_empty()).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "nid query parameter is required")
        })?;
    let nid = parse_nid(nid)?;
    let raw = find_raw(&state, &p.org_id, nid, &q.window)?;
    let mapping = find_mapping(&state, &p.org_id, &raw.path)?;
    let e = mapping.apply(&raw, now_millis()).map_err(unprocessable)?;
    log(&state)
        .append(Append {
            events: vec![e],
            ..Default::default()
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!("event replayed"))))
}

async fn mapping_create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonIn,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let m = Mapping::from_body(&body, None, &p.org_id).map_err(unprocessable)?;
    let m = state.store.insert(m).await?;
    Ok((StatusCode::CREATED, Json(mapping_view(&m))))
}

async fn mapping_list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ContenoxResult<Json<Vec<Value>>> {
    let all = state.store.in_scope::<Mapping>("path", &p.org_id)?;
    Ok(Json(all.iter().map(mapping_view).collect()))
}

async fn mapping_get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<PathQuery>,
) -> ContenoxResult<Json<Value>> {
    Ok(Json(mapping_view(&find_mapping(
        &state,
        &p.org_id,
        q.path()?,
    )?)))
}

/// Replaces a mapping wholesale (the query's path wins over the body's).
async fn mapping_update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<PathQuery>,
    JsonBody(body, _): JsonIn,
) -> ContenoxResult<Json<Value>> {
    writer(&p)?;
    let path = q.path()?;
    let old = find_mapping(&state, &p.org_id, path)?;
    let mut m = Mapping::from_body(&body, Some(path), &p.org_id).map_err(unprocessable)?;
    m.id = old.id.clone();
    m.created_at = old.created_at;
    state.store.put(&m).await?;
    Ok(Json(mapping_view(&m)))
}

async fn mapping_delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<PathQuery>,
) -> ContenoxResult<Json<Value>> {
    writer(&p)?;
    let m = find_mapping(&state, &p.org_id, q.path()?)?;
    state
        .store
        .commit(vec![Write::remove::<Mapping>(m.id())])
        .await?;
    Ok(Json(json!("mapping removed")))
}

/// Warden keeps no mapping cache: a committed mapping is used by the next
/// ingest. The barrier answers as the original's does.
async fn sync(CurrentUser(_p, _): Caller) -> Json<Value> {
    Json(json!("mappings synchronized"))
}

pub(super) fn routes() -> Api {
    let t = "contenox: events";
    Api::new()
        .post(
            "/events",
            t,
            "Append an event {event_type, aggregate_type, aggregate_id, version, data, metadata, event_source?, id?, created_at?}",
            append,
        )
        .get(
            "/events/type",
            t,
            "Events of a type in a time window, newest first (event_type, from, to, limit)",
            by_type,
        )
        .delete(
            "/events/type",
            t,
            "Delete the events of a type in a time window (event_type, from, to)",
            delete_type,
        )
        .get(
            "/events/aggregate",
            t,
            "Events of one aggregate (event_type, aggregate_type, aggregate_id, from, to, limit)",
            by_aggregate,
        )
        .get(
            "/events/source",
            t,
            "Events from one source (event_source, event_type?, from, to, limit)",
            by_source,
        )
        .get(
            "/events/types",
            t,
            "The event types seen in a time window (from, to, limit)",
            types,
        )
        .get(
            "/events/stream/{eventType}",
            t,
            "Events of a type as they are committed (server-sent events)",
            stream,
        )
        .post(
            "/ingest",
            t,
            "Keep a raw payload and map it to an event with the path's mapping (path)",
            ingest,
        )
        .get(
            "/raw-events",
            t,
            "Raw payloads in a time window, newest first (from, to, limit)",
            raw_list,
        )
        .post(
            "/raw-events",
            t,
            "Keep a raw payload without mapping it {path, payload, headers?}",
            raw_create,
        )
        .get(
            "/raw-events/{nid}",
            t,
            "A raw payload by nid (from?, to?)",
            raw_get,
        )
        .post(
            "/replay",
            t,
            "Map a raw payload again with its path's current mapping (nid, from?, to?)",
            replay,
        )
        .post("/mappings", t, "Create a mapping", mapping_create)
        .get("/mappings", t, "Every mapping, by path", mapping_list)
        .get("/mapping", t, "A mapping (path)", mapping_get)
        .put("/mapping", t, "Replace a mapping (path)", mapping_update)
        .delete("/mapping", t, "Delete a mapping (path)", mapping_delete)
        .post(
            "/sync",
            t,
            "Barrier: mappings committed before it are in use",
            sync,
        )
}
