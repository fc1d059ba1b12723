//! `TerminalActor`: the one owner of a session's PTY and shell, and the
//! one writer of its record. A task moves the shell's output to the
//! attached client through a bounded queue (a slow client pauses the
//! PTY's reads: memory stays flat) and into the scrollback; keystrokes
//! come in as messages. Closing hangs the shell's process group up and
//! kills what is left of it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use warden_storage::{Store, now_millis};

use super::pty::{Exit, Pty, PtyReader, Spawn};
use super::record::{SessionStatus, TerminalSession};
use super::text::{LineAssembler, Ring, Utf8Stream, plain};
use super::{KILL_GRACE, MAX_OUTPUT_FRAME, SCROLLBACK, ShellPolicy};
use crate::DomainError;

/// What a session sends its client.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    Text(String),
    /// Close the connection with this code and reason.
    Close(u16, String),
}

/// Close codes of a shell's socket.
pub mod codes {
    pub const CLOSED: u16 = 1000;
    pub const SHUTDOWN: u16 = 1001;
    pub const REVOKED: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const IDLE: u16 = 4000;
    pub const REPLACED: u16 = 4001;
}

type Reply<T> = RpcReplyPort<Result<T, DomainError>>;

pub enum TermMsg {
    /// A client's connection; replaces any other (which is closed with
    /// 4001). Answers the scrollback to replay first.
    Attach {
        conn: u64,
        tx: mpsc::Sender<Out>,
        reply: Reply<String>,
    },
    /// The connection went away without closing the session.
    Detach {
        conn: u64,
    },
    Input(Vec<u8>),
    Resize {
        cols: u16,
        rows: u16,
    },
    /// The output task ended: the shell's side of the PTY is closed.
    Eof,
    /// The shell ended.
    Exited(String),
    /// Ends the session: the shell is hung up and killed, the client
    /// gets `code`.
    Close {
        reason: String,
        code: u16,
        reply: Option<Reply<TerminalSession>>,
    },
    /// The kind's one-second tick: idle, lifetime and detach limits.
    Tick,
    Crash,
}

pub struct TermArgs {
    pub store: Store,
    pub id: String,
    pub policy: Arc<ShellPolicy>,
}

/// What the output task and the actor share.
struct Shared {
    scrollback: Ring,
    client: Option<(u64, mpsc::Sender<Out>)>,
    /// Output since the last command line, for its history entry.
    excerpt: String,
}

pub struct TermState {
    store: Store,
    policy: Arc<ShellPolicy>,
    session: TerminalSession,
    pty: Option<Pty>,
    shared: Arc<Mutex<Shared>>,
    output: Option<tokio::task::JoinHandle<()>>,
    lines: LineAssembler,
    started: Instant,
    last_input: Instant,
    detached_since: Option<Instant>,
    /// History output not yet written.
    dirty_since: Option<Instant>,
    closing: bool,
}

pub struct TerminalActor;

/// How often a session's unwritten output excerpt is written.
const EXCERPT_WRITE: Duration = Duration::from_secs(5);

fn clamp(cols: u16, rows: u16) -> Option<(u16, u16)> {
    (cols > 0 && rows > 0).then(|| (cols.min(1000), rows.min(500)))
}

impl TermState {
    async fn persist(&mut self) -> Result<(), DomainError> {
        let excerpt = std::mem::take(&mut self.shared.lock().expect("not poisoned").excerpt);
        self.session.add_output(&plain(&excerpt));
        self.store.put(&self.session).await?;
        self.dirty_since = None;
        Ok(())
    }

    fn send(&self, out: Out) {
        let client = self.shared.lock().expect("not poisoned").client.clone();
        if let Some((_, tx)) = client
            && let Err(mpsc::error::TrySendError::Full(out)) = tx.try_send(out)
        {
            // A full queue: the client is slow; a close must still reach it.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), tx.send(out)).await;
            });
        }
    }

    /// Ends the session once: notice, shell hung up, record closed, actor
    /// stopped.
    async fn finish(&mut self, myself: &ActorRef<TermMsg>, reason: &str, code: u16) {
        if self.closing {
            return;
        }
        self.closing = true;
        if let Some(pty) = self.pty.take() {
            pty.terminate(KILL_GRACE);
        }
        if let Some(mut task) = self.output.take() {
            // Output the shell wrote before it ended still reaches the client.
            if tokio::time::timeout(Duration::from_millis(300), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        // Durable first: a client told the session closed finds it closed.
        self.session.close(reason, now_millis());
        if let Err(e) = self.persist().await {
            tracing::warn!(session = %self.session.id, error = %e, "could not store the closed session");
        }
        self.send(Out::Text(format!("\r\n[session closed: {reason}]\r\n")));
        self.send(Out::Close(code, reason.to_owned()));
        tracing::info!(session = %self.session.id, reason, "terminal session closed");
        myself.stop(Some(reason.to_owned()));
    }

    async fn input(&mut self, bytes: Vec<u8>) -> Result<(), DomainError> {
        let Some(pty) = &self.pty else {
            return Ok(());
        };
        self.last_input = Instant::now();
        if let Err(e) = pty.write_all(&bytes).await {
            return Err(DomainError::Unavailable(format!(
                "the shell's terminal: {e}"
            )));
        }
        let echo = pty.echoes();
        let text = String::from_utf8_lossy(&bytes);
        let lines = self.lines.push(&text);
        if !echo {
            // A password prompt: nothing typed now is recorded.
            self.lines.forget();
            return Ok(());
        }
        if lines.is_empty() {
            return Ok(());
        }
        let excerpt = std::mem::take(&mut self.shared.lock().expect("not poisoned").excerpt);
        self.session.add_output(&plain(&excerpt));
        for line in lines {
            self.session.record(line, now_millis());
        }
        self.store.put(&self.session).await?;
        self.dirty_since = None;
        Ok(())
    }
}

/// Moves output from the PTY to the client, the scrollback and the
/// history excerpt, in frames of at most [`MAX_OUTPUT_FRAME`].
async fn move_output(reader: PtyReader, shared: Arc<Mutex<Shared>>, myself: ActorRef<TermMsg>) {
    let mut buf = vec![0u8; MAX_OUTPUT_FRAME];
    let mut utf8 = Utf8Stream::default();
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let text = utf8.push(&buf[..n]);
        if text.is_empty() {
            continue;
        }
        let client = {
            let mut s = shared.lock().expect("not poisoned");
            s.scrollback.push(&text);
            if s.excerpt.len() < super::MAX_EXCERPT * 2 {
                s.excerpt.push_str(&text);
            }
            s.client.clone()
        };
        if let Some((_, tx)) = client {
            // Bounded: a slow client holds the reads back.
            let _ = tx.send(Out::Text(text)).await;
        }
    }
    let rest = utf8.finish();
    if !rest.is_empty() {
        let client = shared.lock().expect("not poisoned").client.clone();
        if let Some((_, tx)) = client {
            let _ = tx.send(Out::Text(rest)).await;
        }
    }
    let _ = myself.cast(TermMsg::Eof);
}

impl Actor for TerminalActor {
    type Msg = TermMsg;
    type State = TermState;
    type Arguments = TermArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TermMsg>,
        args: TermArgs,
    ) -> Result<TermState, ActorProcessingErr> {
        let mut session = args
            .store
            .get::<TerminalSession>(&args.id)?
            .filter(|s| s.status == SessionStatus::Active)
            .ok_or_else(|| format!("terminal session {} is not active", args.id))?;
        let policy = args.policy;
        let workdir = policy.workdir_root.join(&session.owner.user_id);
        std::fs::create_dir_all(&workdir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&workdir, std::fs::Permissions::from_mode(0o700))?;
            if let Some(u) = &policy.run_as {
                std::os::unix::fs::chown(&workdir, Some(u.uid), Some(u.gid))?;
            }
        }
        let groups = match crate::process::cgroup::Groups::create(
            &format!(
                "shell-{}-{}",
                session.owner.user_id,
                &warden_storage::new_uuid()[..8]
            ),
            policy.groups,
        ) {
            Ok(g) => g.map(Arc::new),
            Err(e) => {
                tracing::warn!(session = %session.id, error = %e, "no control groups for a shell");
                None
            }
        };
        let spawn = Spawn {
            groups,
            program: policy.program.clone(),
            env: policy.env(&workdir),
            workdir,
            run_as: policy.run_as.clone(),
            cols: session.cols,
            rows: session.rows,
        };
        let me = myself.clone();
        let pty = Pty::start(spawn, move |exit: std::io::Result<Exit>| {
            let why = match exit {
                Ok(e) => format!("the shell exited ({e})"),
                Err(e) => format!("the shell could not be waited for: {e}"),
            };
            let _ = me.cast(TermMsg::Exited(why));
        })
        .await
        .map_err(|e| format!("could not start {}: {e}", policy.program))?;
        session.pid = Some(pty.pid());
        args.store.put(&session).await?;
        tracing::info!(session = %session.id, pid = pty.pid(), "terminal session started");
        let now = Instant::now();
        Ok(TermState {
            store: args.store,
            policy,
            session,
            pty: Some(pty),
            shared: Arc::new(Mutex::new(Shared {
                scrollback: Ring::new(SCROLLBACK),
                client: None,
                excerpt: String::new(),
            })),
            output: None,
            lines: LineAssembler::default(),
            started: now,
            last_input: now,
            detached_since: Some(now),
            dirty_since: None,
            closing: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<TermMsg>,
        state: &mut TermState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(pty) = &state.pty {
            state.output = Some(tokio::spawn(move_output(
                pty.reader(),
                state.shared.clone(),
                myself,
            )));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TermMsg>,
        state: &mut TermState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(task) = state.output.take() {
            task.abort();
        }
        // Dropping the PTY kills the group (a stop that did not close).
        state.pty.take();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<TermMsg>,
        msg: TermMsg,
        state: &mut TermState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TermMsg::Attach { conn, tx, reply } => {
                if state.closing {
                    let _ = reply.send(Err(DomainError::Busy("Terminal session is closed".into())));
                    return Ok(());
                }
                let (replaced, scrollback) = {
                    let mut s = state.shared.lock().expect("not poisoned");
                    (
                        s.client.replace((conn, tx)),
                        s.scrollback.as_str().to_owned(),
                    )
                };
                if let Some((_, old)) = replaced {
                    let _ = old.try_send(Out::Close(
                        codes::REPLACED,
                        "another connection took this session over".into(),
                    ));
                }
                state.detached_since = None;
                let _ = reply.send(Ok(scrollback));
            }
            TermMsg::Detach { conn } => {
                let mut s = state.shared.lock().expect("not poisoned");
                if s.client.as_ref().is_some_and(|(c, _)| *c == conn) {
                    s.client = None;
                    state.detached_since = Some(Instant::now());
                }
            }
            TermMsg::Input(bytes) => {
                if let Err(e) = state.input(bytes).await {
                    tracing::warn!(session = %state.session.id, error = %e, "input not delivered");
                }
            }
            TermMsg::Resize { cols, rows } => {
                if let (Some(pty), Some((cols, rows))) = (&state.pty, clamp(cols, rows))
                    && pty.resize(cols, rows).is_ok()
                {
                    state.session.cols = cols;
                    state.session.rows = rows;
                }
            }
            TermMsg::Eof => {
                state
                    .finish(&myself, "the shell exited", codes::CLOSED)
                    .await
            }
            TermMsg::Exited(why) => state.finish(&myself, &why, codes::CLOSED).await,
            TermMsg::Close {
                reason,
                code,
                reply,
            } => {
                state.finish(&myself, &reason, code).await;
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(state.session.clone()));
                }
            }
            TermMsg::Tick => {
                let p = &state.policy;
                if state
                    .detached_since
                    .is_some_and(|t| t.elapsed() >= Duration::from_secs(p.detach_grace_secs))
                {
                    state.finish(&myself, "detached", codes::CLOSED).await;
                } else if state.last_input.elapsed() >= Duration::from_secs(p.idle_timeout_secs) {
                    state.send(Out::Text(format!(
                        "\r\n[idle for {} s: closing the session]\r\n",
                        p.idle_timeout_secs
                    )));
                    state.finish(&myself, "idle", codes::IDLE).await;
                } else if state.started.elapsed() >= Duration::from_secs(p.max_lifetime_secs) {
                    state
                        .finish(&myself, "lifetime reached", codes::CLOSED)
                        .await;
                } else {
                    let pending = !state
                        .shared
                        .lock()
                        .expect("not poisoned")
                        .excerpt
                        .is_empty();
                    if pending && !state.session.history.is_empty() {
                        let since = *state.dirty_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= EXCERPT_WRITE
                            && let Err(e) = state.persist().await
                        {
                            tracing::warn!(session = %state.session.id, error = %e, "could not store the history");
                        }
                    }
                }
            }
            TermMsg::Crash => panic!(
                "fault injection: terminal session {} was told to crash",
                state.session.id
            ),
        }
        Ok(())
    }
}

/// The public API of a running session actor.
#[derive(Clone)]
pub struct TermHandle(pub ActorRef<TermMsg>);

impl TermHandle {
    pub async fn attach(&self, conn: u64, tx: mpsc::Sender<Out>) -> Result<String, DomainError> {
        crate::ask(
            &self.0,
            Duration::from_secs(10),
            "the terminal session",
            |reply| TermMsg::Attach { conn, tx, reply },
        )
        .await
    }
    pub fn detach(&self, conn: u64) {
        let _ = self.0.cast(TermMsg::Detach { conn });
    }
    pub fn input(&self, bytes: Vec<u8>) {
        let _ = self.0.cast(TermMsg::Input(bytes));
    }
    pub fn resize(&self, cols: u16, rows: u16) {
        let _ = self.0.cast(TermMsg::Resize { cols, rows });
    }
    pub async fn close(&self, reason: &str, code: u16) -> Result<TerminalSession, DomainError> {
        let reason = reason.to_owned();
        crate::ask(
            &self.0,
            Duration::from_secs(10),
            "the terminal session",
            |reply| TermMsg::Close {
                reason,
                code,
                reply: Some(reply),
            },
        )
        .await
    }
    /// Closes without waiting for the answer.
    pub fn close_now(&self, reason: &str, code: u16) {
        let _ = self.0.cast(TermMsg::Close {
            reason: reason.to_owned(),
            code,
            reply: None,
        });
    }
    pub fn crash(&self) {
        let _ = self.0.cast(TermMsg::Crash);
    }
}
