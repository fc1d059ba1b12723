//! JavaScript functions on an embedded engine (WORKFLOWS.md §3):
//! QuickJS-ng through rquickjs, sandboxed.
//!
//! Invariants:
//! - A script sees the language and the built-ins its [`Host`] answers
//!   (`sendEvent`, `executeTask`, `executeTaskChain`, `callTaskChain`)
//!   plus `console.log`; no timers, no network, no filesystem, no modules.
//! - Every invocation is bounded: a wall-clock deadline (an interrupt
//!   handler stops even `while(true){}`), a heap cap and a stack cap. A
//!   script that passes one ends with an error; the engine and every
//!   other invocation go on. A runtime that hit a limit is replaced.
//! - Each invocation gets a fresh context: nothing a script leaves in its
//!   globals reaches the next one.
//! - The engine is `!Send`: each worker thread owns one runtime; callers
//!   await a reply from any tokio task ([`Pool::run`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rquickjs::function::Rest;
use rquickjs::{CatchResultExt, Context, Ctx, Function, Object, Runtime, Value};
use serde_json::Value as Json;
use tokio::sync::oneshot;

/// What a script's built-ins reach: the server. Called on the engine's
/// thread, which it may block (each built-in bounds its own wait).
pub trait Host: Send + Sync + 'static {
    /// Answers built-in `name` called with `args`; failures are answers
    /// too (`{success: false, error}`), never exceptions.
    fn call(&self, name: &str, args: Vec<Json>) -> Json;
}

/// The built-ins a [`Host`] answers, as scripts name them.
pub const BUILTINS: [&str; 4] = [
    "sendEvent",
    "executeTask",
    "executeTaskChain",
    "callTaskChain",
];

/// The bounds of one invocation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub deadline: Duration,
    pub heap_bytes: usize,
    pub stack_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_secs(5),
            heap_bytes: 32 << 20,
            stack_bytes: 512 << 10,
        }
    }
}

/// One function run: evaluate `script`, then call its global function
/// named `name` with `event` (or, lacking one, read its global `result`).
pub struct Invocation {
    pub name: String,
    pub script: String,
    pub event: Json,
}

/// How an invocation ended.
#[derive(Debug)]
pub struct Outcome {
    /// The returned object (null for none), or why it failed.
    pub result: Result<Json, String>,
    /// What the script wrote with `console.log`, at most 100 lines.
    pub logs: Vec<String>,
    pub took: Duration,
}

struct Job {
    invocation: Invocation,
    host: Arc<dyn Host>,
    reply: oneshot::Sender<Outcome>,
}

/// Worker threads, each with its own engine, sharing one queue.
pub struct Pool {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    workers: usize,
}

const MAX_LOG_LINES: usize = 100;
const MAX_LOG_LINE: usize = 2000;

impl Pool {
    /// Starts `workers` engine threads (at least one).
    pub fn new(workers: usize, limits: Limits) -> std::io::Result<Pool> {
        let workers = workers.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..workers {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("js-{n}"))
                // Room above the engine's own stack cap.
                .stack_size(limits.stack_bytes + (4 << 20))
                .spawn(move || worker(rx, limits))?;
        }
        Ok(Pool {
            queue: Mutex::new(Some(tx)),
            workers,
        })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Runs one invocation on the next free worker.
    pub async fn run(&self, invocation: Invocation, host: Arc<dyn Host>) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .queue
            .lock()
            .expect("the pool lock is never poisoned")
            .as_ref()
            .map(|q| {
                q.send(Job {
                    invocation,
                    host,
                    reply,
                })
                .is_ok()
            })
            .unwrap_or(false);
        let stopped = || Outcome {
            result: Err("the script engine has stopped".into()),
            logs: Vec::new(),
            took: Duration::ZERO,
        };
        if !sent {
            return stopped();
        }
        answer.await.unwrap_or_else(|_| stopped())
    }

    /// Lets the workers end once the queue is drained.
    pub fn close(&self) {
        self.queue
            .lock()
            .expect("the pool lock is never poisoned")
            .take();
    }
}

/// A runtime with its limits and the deadline its interrupt handler reads.
struct Engine {
    runtime: Runtime,
    /// Milliseconds since `epoch` after which scripts are interrupted.
    deadline: Arc<AtomicU64>,
    epoch: Instant,
}

impl Engine {
    fn new(limits: &Limits) -> Result<Engine, String> {
        let runtime = Runtime::new().map_err(|e| e.to_string())?;
        runtime.set_memory_limit(limits.heap_bytes);
        runtime.set_max_stack_size(limits.stack_bytes);
        let deadline = Arc::new(AtomicU64::new(u64::MAX));
        let epoch = Instant::now();
        let at = deadline.clone();
        runtime.set_interrupt_handler(Some(Box::new(move || {
            epoch.elapsed().as_millis() as u64 > at.load(Ordering::Relaxed)
        })));
        Ok(Engine {
            runtime,
            deadline,
            epoch,
        })
    }

    fn expired(&self) -> bool {
        self.epoch.elapsed().as_millis() as u64 > self.deadline.load(Ordering::Relaxed)
    }
}

fn worker(rx: Arc<Mutex<mpsc::Receiver<Job>>>, limits: Limits) {
    let mut engine: Option<Engine> = None;
    loop {
        let job = {
            let rx = rx.lock().expect("the queue lock is never poisoned");
            rx.recv()
        };
        let Ok(job) = job else {
            return;
        };
        let started = Instant::now();
        if engine.is_none() {
            match Engine::new(&limits) {
                Ok(e) => engine = Some(e),
                Err(e) => {
                    let _ = job.reply.send(Outcome {
                        result: Err(format!("the script engine could not start: {e}")),
                        logs: Vec::new(),
                        took: started.elapsed(),
                    });
                    continue;
                }
            }
        }
        let Some(e) = engine.as_ref() else {
            continue;
        };
        e.deadline.store(
            e.epoch.elapsed().as_millis() as u64 + limits.deadline.as_millis() as u64,
            Ordering::Relaxed,
        );
        let (result, logs, spoiled) = invoke(e, &job.invocation, job.host, &limits);
        e.deadline.store(u64::MAX, Ordering::Relaxed);
        if spoiled {
            // Interrupted or out of memory: start the next job afresh.
            engine = None;
        } else {
            e.runtime.run_gc();
        }
        let _ = job.reply.send(Outcome {
            result,
            logs,
            took: started.elapsed(),
        });
    }
}

/// Runs one invocation in a fresh context. Returns the result, the log,
/// and whether the runtime hit a limit.
fn invoke(
    engine: &Engine,
    inv: &Invocation,
    host: Arc<dyn Host>,
    limits: &Limits,
) -> (Result<Json, String>, Vec<String>, bool) {
    let context = match Context::full(&engine.runtime) {
        Ok(c) => c,
        Err(e) => return (Err(format!("no script context: {e}")), Vec::new(), true),
    };
    let logs = Arc::new(Mutex::new(Vec::<String>::new()));
    let result = context.with(|ctx| -> Result<Json, String> {
        install(&ctx, host, logs.clone()).map_err(|e| e.to_string())?;
        ctx.eval::<(), _>(inv.script.as_bytes())
            .catch(&ctx)
            .map_err(|e| format!("script error: {e}"))?;
        let globals = ctx.globals();
        let entry: Value = globals.get(inv.name.as_str()).map_err(|e| e.to_string())?;
        let returned: Value = match entry.as_function() {
            Some(f) => {
                let event = ctx
                    .json_parse(inv.event.to_string())
                    .map_err(|e| e.to_string())?;
                f.call((event,))
                    .catch(&ctx)
                    .map_err(|e| format!("function error: {e}"))?
            }
            None => globals.get("result").map_err(|e| e.to_string())?,
        };
        if returned.is_undefined() || returned.is_null() {
            return Ok(Json::Null);
        }
        if !returned.is_object() || returned.is_function() {
            return Err(format!(
                "the function must return an object (it returned a {})",
                returned.type_name()
            ));
        }
        to_json(&ctx, returned)
    });
    let spoiled = engine.expired() || result.as_ref().is_err_and(|e| e.contains("out of memory"));
    let result = match result {
        Err(_) if engine.expired() => Err(format!(
            "the function ran past its deadline of {} ms and was stopped",
            limits.deadline.as_millis()
        )),
        other => other,
    };
    let logs = std::mem::take(&mut *logs.lock().expect("the log lock is never poisoned"));
    drop(context);
    (result, logs, spoiled)
}

fn to_json<'js>(ctx: &Ctx<'js>, v: Value<'js>) -> Result<Json, String> {
    match ctx.json_stringify(v).map_err(|e| e.to_string())? {
        None => Ok(Json::Null),
        Some(s) => {
            let s = s.to_string().map_err(|e| e.to_string())?;
            serde_json::from_str(&s).map_err(|e| e.to_string())
        }
    }
}

/// The globals a script may call.
fn install<'js>(
    ctx: &Ctx<'js>,
    host: Arc<dyn Host>,
    logs: Arc<Mutex<Vec<String>>>,
) -> rquickjs::Result<()> {
    let globals = ctx.globals();
    for name in BUILTINS {
        let host = host.clone();
        let f = Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, args: Rest<Value<'js>>| -> rquickjs::Result<Value<'js>> {
                let args: Vec<Json> = args
                    .0
                    .into_iter()
                    .map(|a| to_json(&ctx, a).unwrap_or(Json::Null))
                    .collect();
                let answer = host.call(name, args);
                ctx.json_parse(answer.to_string())
            },
        )?;
        globals.set(name, f)?;
    }
    let console = Object::new(ctx.clone())?;
    let log = Function::new(
        ctx.clone(),
        move |ctx: Ctx<'js>, args: Rest<Value<'js>>| -> rquickjs::Result<()> {
            let line: Vec<String> = args
                .0
                .into_iter()
                .map(|a| match a.as_string() {
                    Some(s) => s.to_string().unwrap_or_default(),
                    None => to_json(&ctx, a).map(|j| j.to_string()).unwrap_or_default(),
                })
                .collect();
            let mut line = line.join(" ");
            if line.len() > MAX_LOG_LINE {
                let mut cut = MAX_LOG_LINE;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
            }
            let mut logs = logs.lock().expect("the log lock is never poisoned");
            if logs.len() < MAX_LOG_LINES {
                logs.push(line);
            }
            Ok(())
        },
    )?;
    console.set("log", log)?;
    globals.set("console", console)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Echo;
    impl Host for Echo {
        fn call(&self, name: &str, args: Vec<Json>) -> Json {
            json!({"success": true, "builtin": name, "args": args})
        }
    }

    fn pool() -> Pool {
        Pool::new(
            1,
            Limits {
                deadline: Duration::from_millis(300),
                ..Limits::default()
            },
        )
        .unwrap()
    }

    async fn run(pool: &Pool, name: &str, script: &str) -> Outcome {
        pool.run(
            Invocation {
                name: name.into(),
                script: script.into(),
                event: json!({"eventType": "t", "data": {"n": 2}}),
            },
            Arc::new(Echo),
        )
        .await
    }

    #[tokio::test]
    async fn functions_see_the_event_and_the_builtins() {
        let p = pool();
        let o = run(
            &p,
            "double-it",
            r#"function x() {}
               globalThis["double-it"] = function (event) {
                 console.log("got", event.eventType, {n: event.data.n});
                 const r = sendEvent("t.next", {n: event.data.n * 2});
                 return {n: event.data.n * 2, sent: r};
               };"#,
        )
        .await;
        let v = o.result.unwrap();
        assert_eq!(v["n"], 4);
        assert_eq!(v["sent"]["builtin"], "sendEvent");
        assert_eq!(v["sent"]["args"], json!(["t.next", {"n": 4}]));
        assert_eq!(o.logs, [r#"got t {"n":2}"#]);
        // No global function of the name: the global `result`.
        let o = run(&p, "f", "var result = {ok: true};").await;
        assert_eq!(o.result.unwrap(), json!({"ok": true}));
        let o = run(&p, "f", "function f() { return 3; }").await;
        assert!(o.result.unwrap_err().contains("must return an object"));
        // Nothing leaks from one invocation to the next.
        run(&p, "f", "globalThis.leak = 1; function f() { return {}; }").await;
        let o = run(&p, "f", "function f() { return {leak: typeof leak}; }").await;
        assert_eq!(o.result.unwrap(), json!({"leak": "undefined"}));
        // No timers, no network, no modules.
        let o = run(
            &p,
            "f",
            "function f() { return {t: typeof setTimeout, f: typeof fetch, r: typeof require}; }",
        )
        .await;
        assert_eq!(
            o.result.unwrap(),
            json!({"t": "undefined", "f": "undefined", "r": "undefined"})
        );
    }

    #[tokio::test]
    async fn hostile_scripts_end_with_an_error_and_the_engine_goes_on() {
        let p = pool();
        let started = Instant::now();
        let o = run(&p, "f", "function f() { while (true) {} }").await;
        assert!(
            o.result.unwrap_err().contains("deadline"),
            "an endless loop is stopped"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        let o = run(
            &p,
            "f",
            "function f() { const a = []; while (true) a.push(new Array(100000).fill(1)); }",
        )
        .await;
        assert!(o.result.unwrap_err().contains("out of memory"));
        let o = run(&p, "f", "function f() { return f(); }").await;
        assert!(o.result.unwrap_err().to_lowercase().contains("stack"));
        let o = run(&p, "f", "function f() { throw new Error('boom'); }").await;
        assert!(o.result.unwrap_err().contains("boom"));
        let o = run(&p, "f", "function f( {").await;
        assert!(o.result.unwrap_err().contains("script error"));
        let o = run(&p, "f", "function f() { return {fine: true}; }").await;
        assert_eq!(o.result.unwrap(), json!({"fine": true}));
    }
}
