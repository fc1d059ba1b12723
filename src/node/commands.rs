//! The daemon's commands: each long one runs in its own task, so
//! heartbeats and other commands go on meanwhile. Tasks report progress
//! (a `command.ack` with `progress`) and their result through one channel
//! that the connection loop drains; `command.cancel` aborts a task.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use warden_actors::node::protocol::{Envelope, kinds};

use super::download::{self, Settings, failure};
use super::serve::{self, Runtimes, Served};

/// What a command task has to say.
pub enum Out {
    /// Progress: sent when connected, dropped otherwise.
    Progress(Envelope),
    /// A report of a served deployment (status, logs): the same.
    Event(Envelope),
    /// The result: sent, or kept on disk until it can be.
    Done { id: String, envelope: Envelope },
}

pub struct Runner {
    settings: Arc<Settings>,
    runtimes: Arc<Runtimes>,
    served: Served,
    tasks: HashMap<String, tokio::task::AbortHandle>,
    tx: mpsc::UnboundedSender<Out>,
    pub rx: mpsc::UnboundedReceiver<Out>,
}

/// A reply envelope to a command, carrying its metadata back.
pub fn reply(command: &Envelope, kind: &str, data: Value) -> Envelope {
    let mut e = Envelope::new(kind, data);
    e.metadata = command.metadata.clone();
    e
}

/// The `command.result` body for an outcome.
pub fn result_data(id: &str, outcome: Result<Value, Value>) -> Value {
    match outcome {
        Ok(result) => {
            json!({"originalMessageId": id, "status": "success", "progress": 100, "result": result, "error": null})
        }
        Err(error) => {
            json!({"originalMessageId": id, "status": "error", "result": null, "error": error})
        }
    }
}

impl Runner {
    pub fn new(settings: Settings, runtimes: Runtimes) -> Runner {
        let (tx, rx) = mpsc::unbounded_channel();
        Runner {
            settings: Arc::new(settings),
            runtimes: Arc::new(runtimes),
            served: Served::default(),
            tasks: HashMap::new(),
            tx,
            rx,
        }
    }

    /// Whether this command is already running here (a server never sends
    /// one twice; this keeps a mistaken repeat from running twice).
    pub fn is_running(&self, id: &str) -> bool {
        self.tasks.contains_key(id)
    }

    /// Starts a command in its own task.
    pub fn start(&mut self, command: Envelope) {
        let id = command.message_id.clone();
        let (settings, tx) = (self.settings.clone(), self.tx.clone());
        let (runtimes, served) = (self.runtimes.clone(), self.served.clone());
        let task = tokio::spawn(async move {
            let progress_tx = tx.clone();
            let progress_cmd = command.clone();
            let progress = move |pct: f64| {
                let data = json!({
                    "originalMessageId": progress_cmd.message_id,
                    "status": "in_progress",
                    "progress": (pct * 10.0).round() / 10.0,
                });
                let _ = progress_tx.send(Out::Progress(reply(
                    &progress_cmd,
                    kinds::COMMAND_ACK,
                    data,
                )));
            };
            let data = command.data.clone().unwrap_or(Value::Null);
            let resource_id = command
                .resource
                .as_ref()
                .and_then(|r| r["id"].as_str())
                .unwrap_or_default()
                .to_owned();
            let outcome = match command.kind.as_str() {
                "model.download" => download::run(&settings, &data, &resource_id, &progress).await,
                "file.download" => download::run_file(&settings, &data, &progress).await,
                // The reference's name for a start; AIWM's daemon says create.
                "deployment.create" | "deployment.start" => {
                    serve::create(
                        &runtimes,
                        &served,
                        &settings,
                        &data,
                        &resource_id,
                        tx.clone(),
                    )
                    .await
                }
                "deployment.stop" => serve::stop(&served, &data, &resource_id).await,
                other => Err(failure(
                    "UNSUPPORTED",
                    format!("this daemon cannot run {other} yet"),
                )),
            };
            let envelope = reply(
                &command,
                kinds::COMMAND_RESULT,
                result_data(&command.message_id, outcome),
            );
            let _ = tx.send(Out::Done {
                id: command.message_id.clone(),
                envelope,
            });
        });
        self.tasks.insert(id, task.abort_handle());
    }

    /// Stops every served deployment (the daemon is stopping).
    pub fn stop_all(&self) {
        serve::stop_all(&self.served);
    }

    /// A task reported its result: it is over.
    pub fn finished(&mut self, id: &str) {
        self.tasks.remove(id);
    }

    /// `command.cancel`: stops the task (a partial download stays for a
    /// later resume); returns whether one was running.
    pub fn cancel(&mut self, id: &str) -> bool {
        match self.tasks.remove(id) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }
}
