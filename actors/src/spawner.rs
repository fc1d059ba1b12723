//! Child processes are forked by one long-lived thread. Linux sends a
//! child's parent-death signal (`PR_SET_PDEATHSIG`) when the *thread*
//! that forked it exits, not the process: a child forked from a tokio
//! blocking-pool thread would be killed when that thread idles out. Every
//! supervised child (shells, user processes) is spawned here, so its
//! parent-death signal means what it says: Warden is gone.

use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock, mpsc};

type Request = (
    Command,
    tokio::sync::oneshot::Sender<std::io::Result<Child>>,
);

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("warden-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("the spawner thread starts");
        Mutex::new(tx)
    })
}

/// Spawns `command` from the spawner thread.
pub async fn spawn(command: Command) -> std::io::Result<Child> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner()
        .lock()
        .map_err(|_| std::io::Error::other("the spawner is poisoned"))?
        .send((command, tx))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    rx.await
        .map_err(|_| std::io::Error::other("the spawner dropped the request"))?
}
