//! Routes are declared through [`Api`], which records each one, so the
//! OpenAPI document (`/openapi.json`) and its page (`/api-docs`) always
//! describe exactly the routes served.

use std::sync::Arc;

use axum::Router;
use axum::handler::Handler;
use axum::response::{Html, IntoResponse};
use axum::routing::{MethodFilter, get, on};
use serde_json::{Map, Value, json};

use crate::AppState;

#[derive(Debug, Clone)]
pub(crate) struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: String,
    pub public: bool,
}

/// One builder method per HTTP method, recording the route as it adds it.
macro_rules! route_methods {
    ($($(#[$doc:meta])* $name:ident => $method:ident, $lower:literal, $public:expr;)*) => {$(
        $(#[$doc])*
        pub fn $name<H: Handler<T, AppState>, T: 'static>(
            self,
            path: &'static str,
            tag: &'static str,
            summary: impl Into<String>,
            h: H,
        ) -> Self {
            let doc = RouteDoc { method: $lower, path, tag, summary: summary.into(), public: $public };
            self.add(MethodFilter::$method, doc, h)
        }
    )*};
}

pub(crate) struct Api {
    router: Router<AppState>,
    docs: Vec<RouteDoc>,
}

impl Api {
    pub fn new() -> Self {
        Api {
            router: Router::new(),
            docs: Vec::new(),
        }
    }

    fn add<H, T>(mut self, filter: MethodFilter, doc: RouteDoc, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.router = self.router.route(doc.path, on(filter, handler));
        self.docs.push(doc);
        self
    }

    route_methods! {
        get => GET, "get", false;
        post => POST, "post", false;
        put => PUT, "put", false;
        patch => PATCH, "patch", false;
        delete => DELETE, "delete", false;
        /// A route that needs no credential.
        public_get => GET, "get", true;
        public_post => POST, "post", true;
    }

    pub fn merge(mut self, other: Api) -> Self {
        self.router = self.router.merge(other.router);
        self.docs.extend(other.docs);
        self
    }

    pub fn finish(self) -> (Router<AppState>, Vec<RouteDoc>) {
        (self.router, self.docs)
    }
}

fn document(docs: &[RouteDoc], version: &str) -> Value {
    let mut paths = Map::new();
    let mut all = docs.to_vec();
    all.push(RouteDoc {
        method: "get",
        path: "/openapi.json",
        tag: "docs",
        summary: "This document".into(),
        public: true,
    });
    all.push(RouteDoc {
        method: "get",
        path: "/api-docs",
        tag: "docs",
        summary: "A page listing every route".into(),
        public: true,
    });
    for d in &all {
        let params: Vec<Value> = d
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": d.summary,
            "tags": [d.tag],
            "operationId": format!("{}{}", d.method, d.path.replace(['/', '{', '}', '.', '-'], "_")),
            "responses": {"default": {"description": "See the dialect's reference for the body."}},
        });
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        op["security"] = if d.public {
            json!([])
        } else {
            json!([{"bearer": []}])
        };
        let entry = paths
            .entry(d.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[d.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Warden", "version": version, "description": "All five dialects of Warden on one port."},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    })
}

fn page(docs: &[RouteDoc]) -> String {
    let mut rows = String::new();
    for d in docs {
        rows.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            d.method.to_uppercase(),
            html_escape(d.path),
            d.tag,
            html_escape(&d.summary),
            if d.public { "public" } else { "bearer" }
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Warden API</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}</style></head>\
         <body><h1>Warden API</h1><p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a></p>\
         <table><tr><th>method</th><th>path</th><th>tag</th><th>what</th><th>auth</th></tr>\n{rows}</table></body></html>"
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub(crate) fn routes(docs: Arc<Vec<RouteDoc>>) -> Router<AppState> {
    let for_page = docs.clone();
    Router::new()
        .route(
            "/openapi.json",
            get(
                move |axum::extract::State(state): axum::extract::State<AppState>| {
                    let docs = docs.clone();
                    async move { axum::Json(document(&docs, state.config.version)).into_response() }
                },
            ),
        )
        .route(
            "/api-docs",
            get(move || {
                let docs = for_page.clone();
                async move { Html(page(&docs)) }
            }),
        )
}
