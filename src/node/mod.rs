//! `warden node`: the node daemon. It connects to the server's node
//! gateway (raw WebSocket, AIWM's envelope), registers with the host's
//! real facts, sends heartbeats and metrics at the intervals the server
//! gives, answers commands, reconnects with exponential backoff and full jitter, and keeps
//! metrics produced while disconnected on disk until they are delivered.

mod commands;
pub mod download;
mod facts;
mod outbox;
pub mod serve;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use warden_actors::node::protocol::{Envelope, kinds};

pub use facts::{Host, parse_nvidia_smi};
use outbox::Outbox;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The server's base URL (`http://host:port`).
    pub server: String,
    pub token: String,
    pub node_id: Option<String>,
    pub data_dir: PathBuf,
    /// Where models are downloaded (default `<data_dir>/models`); no
    /// download may write outside it.
    pub models_dir: Option<PathBuf>,
    /// The model hub for `org/name` sources.
    pub hub_url: String,
    /// `FRAMEWORK=TEMPLATE`: how deployments of each framework are served.
    pub runtimes: Vec<String>,
    /// The address endpoints are advertised with (default: the host's).
    pub advertise_host: Option<String>,
    /// The ONNX Runtime library for deployments of framework `onnx`.
    pub ort_library: Option<PathBuf>,
}

/// The public model hub `org/name` sources resolve against by default.
pub const DEFAULT_HUB: &str = "https://huggingface.co";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Exponential backoff with full jitter (a delay drawn uniformly below a
/// ceiling that doubles up to `max`), so a fleet that lost its controller
/// spreads its reconnects out instead of arriving in step.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    fn delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        ceiling.mul_f64(rand::random::<f64>())
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

fn gateway_url(server: &str, node_id: Option<&str>) -> String {
    let base = server.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    match node_id {
        Some(id) => format!(
            "{ws}/ws/node?nodeId={}",
            form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
        ),
        None => format!("{ws}/ws/node"),
    }
}

async fn connect(config: &DaemonConfig, node_id: Option<&str>) -> anyhow::Result<Socket> {
    let mut request = gateway_url(&config.server, node_id).into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", config.token).parse()?);
    let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(16 * 1024 * 1024));
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true),
    )
    .await
    .context("connecting timed out")??;
    Ok(socket)
}

/// The node id to ask for: the flag, else the one this data dir used
/// before, else the host name (remembered for next time).
fn node_id(config: &DaemonConfig) -> anyhow::Result<String> {
    if let Some(id) = &config.node_id {
        return Ok(id.clone());
    }
    let path = config.data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_owned());
    }
    let id = sysinfo::System::host_name().unwrap_or_else(|_| uuid::Uuid::new_v4().to_string());
    std::fs::create_dir_all(&config.data_dir)?;
    std::fs::write(&path, &id)?;
    Ok(id)
}

fn is_command(env: &Envelope) -> bool {
    env.resource.is_some()
        || matches!(
            env.kind.as_str(),
            "model.download"
                | "file.download"
                | "deployment.create"
                | "deployment.start"
                | "deployment.stop"
                | kinds::HEALTH_CHECK
        )
}

/// Runs until `shutdown` resolves; reconnects for ever until then.
pub async fn run(
    config: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let outbox = Outbox::open(&config.data_dir)
        .with_context(|| format!("opening {}", config.data_dir.display()))?;
    let models_dir = config
        .models_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("models"));
    std::fs::create_dir_all(&models_dir)
        .with_context(|| format!("creating {}", models_dir.display()))?;
    let node_id = node_id(&config)?;
    let mut host = Host::new()?;
    let advertise = config
        .advertise_host
        .clone()
        .or_else(|| host.registration(None).ip_address)
        .unwrap_or_else(|| "127.0.0.1".into());
    let mut runtimes = serve::Runtimes::parse(&config.runtimes, advertise)?;
    runtimes.ort_library = config.ort_library.clone();
    let health_every = runtimes.health_every_ms.clone();
    let mut runner = commands::Runner::new(
        download::Settings::new(models_dir, config.hub_url.clone())?
            .with_uploads(config.data_dir.join("uploads"))
            .with_server(&config.server, &config.token),
        runtimes,
    );
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    let mut socket: Option<Socket> = None;
    let mut registered = false;
    let mut next_attempt = Instant::now();
    let mut heartbeat_every = Duration::from_secs(30);
    let mut metrics_every = Duration::from_secs(60);
    let mut heartbeats = tokio::time::interval(heartbeat_every);
    let mut metrics = tokio::time::interval(metrics_every);
    heartbeats.set_missed_tick_behavior(MissedTickBehavior::Delay);
    metrics.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    // Results sent lately: sent again after a reconnection, since one sent
    // just before the server died may never have been read (the server
    // records an answer once, so a repeat is harmless).
    let mut recent = RecentResults::default();
    tokio::pin!(shutdown);

    loop {
        if socket.is_none() && Instant::now() >= next_attempt {
            match connect(&config, Some(&node_id)).await {
                Ok(s) => {
                    tracing::info!(server = %config.server, node = %node_id, "connected");
                    socket = Some(s);
                    registered = false;
                }
                Err(e) => {
                    let delay = backoff.delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "could not connect");
                    next_attempt = Instant::now() + delay;
                }
            }
        }
        let mut lost = false;
        tokio::select! {
            _ = &mut shutdown => {
                runner.stop_all();
                if let Some(mut s) = socket.take() {
                    let _ = s.close(None).await;
                }
                tracing::info!("node daemon stopped");
                return Ok(());
            }
            _ = tokio::time::sleep_until(next_attempt), if socket.is_none() => {}
            frame = async { socket.as_mut().expect("guarded by the branch condition").next().await }, if socket.is_some() => {
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        let s = socket.as_mut().expect("a frame came from it");
                        match serde_json::from_str::<Envelope>(text.as_str()) {
                            Ok(env) if env.kind == kinds::CONNECTION_ACK => {
                                let reg = host.registration(Some(node_id.clone()));
                                let env = Envelope::new(kinds::REGISTER, serde_json::to_value(reg)?);
                                lost = s.send(Message::text(env.to_json())).await.is_err();
                            }
                            Ok(env) if env.kind == kinds::REGISTER_ACK => {
                                let info = env.data.as_ref().map(|d| d["controllerInfo"].clone()).unwrap_or(Value::Null);
                                let ms = |k: &str, d: Duration| info[k].as_u64().filter(|v| *v > 0).map(Duration::from_millis).unwrap_or(d);
                                let (h, m) = (ms("heartbeatInterval", heartbeat_every), ms("metricsInterval", metrics_every));
                                if h != heartbeat_every {
                                    heartbeat_every = h;
                                    heartbeats = tokio::time::interval(h);
                                    heartbeats.set_missed_tick_behavior(MissedTickBehavior::Delay);
                                }
                                if m != metrics_every {
                                    metrics_every = m;
                                    metrics = tokio::time::interval(m);
                                    metrics.set_missed_tick_behavior(MissedTickBehavior::Delay);
                                }
                                registered = true;
                                backoff.reset();
                                health_every.store((h.as_millis() as u64).min(10_000), std::sync::atomic::Ordering::Relaxed);
                                tracing::info!(heartbeat_ms = h.as_millis() as u64, metrics_ms = m.as_millis() as u64, "registered");
                                // Replay what was kept while disconnected, in order.
                                let pending = outbox.pending()?;
                                let mut all_sent = true;
                                for line in &pending {
                                    if s.send(Message::text(line.clone())).await.is_err() {
                                        all_sent = false;
                                        break;
                                    }
                                }
                                if all_sent {
                                    if !pending.is_empty() {
                                        tracing::info!(points = pending.len(), "sent buffered telemetry");
                                    }
                                    outbox.clear()?;
                                } else {
                                    lost = true;
                                }
                                for line in recent.lines() {
                                    if lost || s.send(Message::text(line)).await.is_err() {
                                        lost = true;
                                        break;
                                    }
                                }
                            }
                            Ok(env) if env.kind == kinds::COMMAND_CANCEL => {
                                let id = env.data.as_ref().and_then(|d| d["originalMessageId"].as_str()).unwrap_or_default().to_owned();
                                if runner.cancel(&id) {
                                    tracing::info!(command = %id, "command cancelled by the server");
                                    let data = commands::result_data(&id, Err(download::failure("CANCELLED", "cancelled by the server")));
                                    lost = s.send(Message::text(Envelope::new(kinds::COMMAND_RESULT, data).to_json())).await.is_err();
                                }
                            }
                            Ok(env) if is_command(&env) => {
                                if runner.is_running(&env.message_id) {
                                    continue;
                                }
                                let ack = commands::reply(&env, kinds::COMMAND_ACK, json!({"originalMessageId": env.message_id, "status": "acknowledged", "receivedAt": warden_actors::node::protocol::iso_now()}));
                                lost = s.send(Message::text(ack.to_json())).await.is_err();
                                if env.kind == kinds::HEALTH_CHECK {
                                    let result = Ok(json!({"healthy": true, "heartbeat": host.heartbeat()}));
                                    let done = commands::reply(&env, kinds::COMMAND_RESULT, commands::result_data(&env.message_id, result));
                                    if !lost {
                                        let line = done.to_json();
                                        lost = s.send(Message::text(line.clone())).await.is_err();
                                        recent.push(line);
                                    }
                                } else {
                                    runner.start(env);
                                }
                            }
                            Ok(env) if env.kind == kinds::ERROR => tracing::warn!(error = ?env.data, "the server refused a message"),
                            Ok(env) => tracing::debug!(kind = %env.kind, "ignored a message"),
                            Err(e) => tracing::warn!(error = %e, "unreadable frame from the server"),
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => lost = true,
                    Some(Ok(_)) => {}
                }
            }
            Some(out) = runner.rx.recv() => {
                let connected = registered && socket.is_some();
                match out {
                    commands::Out::Progress(env) | commands::Out::Event(env) => {
                        if connected && let Some(s) = socket.as_mut() {
                            lost = s.send(Message::text(env.to_json())).await.is_err();
                        }
                    }
                    commands::Out::Done { id, envelope } => {
                        runner.finished(&id);
                        let line = envelope.to_json();
                        let sent = match (connected, socket.as_mut()) {
                            (true, Some(s)) => s.send(Message::text(line.clone())).await.is_ok(),
                            _ => false,
                        };
                        // A result is never lost: kept until the next registration.
                        if sent {
                            recent.push(line);
                        } else {
                            outbox.push(&line)?;
                            lost = connected;
                        }
                    }
                }
            }
            _ = heartbeats.tick() => {
                if registered && let Some(s) = socket.as_mut() {
                    let env = Envelope::new(kinds::HEARTBEAT, host.heartbeat());
                    lost = s.send(Message::text(env.to_json())).await.is_err();
                }
            }
            _ = metrics.tick() => {
                let mut data = host.metrics();
                data["seq"] = json!(seq);
                seq += 1;
                let line = Envelope::new(kinds::METRICS, data).to_json();
                let sent = match (registered, socket.as_mut()) {
                    (true, Some(s)) => s.send(Message::text(line.clone())).await.is_ok(),
                    _ => false,
                };
                if !sent {
                    outbox.push(&line)?;
                    lost = socket.is_some() && registered;
                }
            }
        }
        if lost {
            tracing::warn!("connection lost");
            socket = None;
            registered = false;
            next_attempt = Instant::now() + backoff.delay();
        }
    }
}

/// The command results sent in the last ten minutes (at most 256).
#[derive(Default)]
struct RecentResults(std::collections::VecDeque<(Instant, String)>);

impl RecentResults {
    const KEEP: Duration = Duration::from_secs(600);
    const MAX: usize = 256;

    fn push(&mut self, line: String) {
        self.0.push_back((Instant::now(), line));
        while self.0.len() > Self::MAX {
            self.0.pop_front();
        }
    }

    fn lines(&mut self) -> Vec<String> {
        while self
            .0
            .front()
            .is_some_and(|(at, _)| at.elapsed() > Self::KEEP)
        {
            self.0.pop_front();
        }
        self.0.iter().map(|(_, l)| l.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls() {
        assert_eq!(
            gateway_url("http://h:1/", Some("a b")),
            "ws://h:1/ws/node?nodeId=a+b"
        );
        assert_eq!(gateway_url("https://h", None), "wss://h/ws/node");
    }

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<Duration> = (0..5).map(|_| b.delay()).collect();
        assert!(d[0] <= Duration::from_millis(100));
        assert!(d[1] <= Duration::from_millis(200));
        // Capped: never above the maximum, however long it goes on.
        assert!(d.iter().all(|d| *d <= Duration::from_millis(400)));
        // Full jitter: over many draws at the cap, the delays spread over
        // the whole range below it.
        let late: Vec<Duration> = (0..200).map(|_| b.delay()).collect();
        assert!(late.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(late.iter().any(|d| *d > Duration::from_millis(300)));
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }
}
