//! Starting, watching and stopping one user process.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::landlock::Ruleset;
use super::{Exit, signal_session, wait_exit};

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The longest output line kept (longer ones are cut).
pub const MAX_LINE: usize = 8 * 1024;

/// Resource limits (`setrlimit`), each for the process and its children.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU seconds.
    pub cpu_secs: Option<u64>,
    /// The largest file it may write.
    pub file_bytes: Option<u64>,
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_secs: None,
            file_bytes: Some(1 << 30),
            open_files: 1024,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub argv: Vec<String>,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// `None`: unconfined (only when an admin allows it).
    pub confine: Option<Arc<Ruleset>>,
    /// Control groups capping its processes and memory, where the host
    /// allows them.
    pub groups: Option<Arc<super::cgroup::Groups>>,
}

/// A running process: its session is killed when this goes (a stop, or
/// an actor that failed), and only then is it reaped, so its pid (the
/// session's id) is never a recycled one when it is signalled.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    started: u64,
    child: Option<Child>,
    groups: Option<Arc<super::cgroup::Groups>>,
}

/// A line handler: which stream, the line.
pub type OnLine = Arc<dyn Fn(Stream, String) + Send + Sync>;

fn rlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let l = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads a valid struct.
    if unsafe { libc::setrlimit(resource, &l) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads `from` line by line (cut at [`MAX_LINE`]) until it closes.
fn lines(mut from: impl Read, stream: Stream, on_line: OnLine) {
    let mut buf = [0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                on_line(stream, String::from_utf8_lossy(&line).into_owned());
                line.clear();
                cut = false;
            } else if line.len() < MAX_LINE {
                line.push(b);
            } else if !cut {
                cut = true;
            }
        }
    }
    if !line.is_empty() {
        on_line(stream, String::from_utf8_lossy(&line).into_owned());
    }
}

impl Process {
    /// Starts `spec` from the spawner thread. Output lines go to
    /// `on_line` (from two reading threads); `on_exit` hears how it ended.
    pub async fn start(
        spec: Spec,
        on_line: OnLine,
        on_exit: impl FnOnce(io::Result<Exit>) + Send + 'static,
    ) -> io::Result<Process> {
        let Some((program, args)) = spec.argv.split_first() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty command",
            ));
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let limits = spec.limits;
        let confine = spec.confine.clone();
        let groups = spec.groups.clone();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(g) = &groups {
                    g.join_self()?;
                }
                rlimit(libc::RLIMIT_CORE, 0)?;
                rlimit(libc::RLIMIT_NOFILE, limits.open_files)?;
                if let Some(cpu) = limits.cpu_secs {
                    rlimit(libc::RLIMIT_CPU, cpu)?;
                }
                if let Some(bytes) = limits.file_bytes {
                    rlimit(libc::RLIMIT_FSIZE, bytes)?;
                }
                if let Some(rules) = &confine {
                    rules.restrict_self()?;
                }
                Ok(())
            });
        }
        let mut child = crate::spawner::spawn(command).await?;
        let pid = child.id();
        let started = super::start_time(pid).unwrap_or(0);
        for (stream, pipe) in [
            (
                Stream::Stdout,
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
            ),
            (
                Stream::Stderr,
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
            ),
        ] {
            if let Some(pipe) = pipe {
                let on_line = on_line.clone();
                std::thread::Builder::new()
                    .name(format!("proc-{pid}-{}", stream.as_str()))
                    .spawn(move || lines(pipe, stream, on_line))?;
            }
        }
        std::thread::Builder::new()
            .name(format!("proc-wait-{pid}"))
            .spawn(move || on_exit(wait_exit(pid)))?;
        Ok(Process {
            pid,
            started,
            child: Some(child),
            groups: spec.groups,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its control groups, if the host gave it any.
    pub fn groups(&self) -> Option<&super::cgroup::Groups> {
        self.groups.as_deref()
    }

    /// Its start time (`/proc/<pid>/stat` field 22): with the pid, what a
    /// later run checks before it kills a leftover.
    pub fn started(&self) -> u64 {
        self.started
    }

    /// Asks the whole session to end (SIGTERM), then kills what is left
    /// after `grace` and reaps the process.
    pub fn stop(self, grace: Duration) {
        signal_session(self.pid, libc::SIGTERM);
        signal_session(self.pid, libc::SIGCONT);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            drop(self);
        });
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_session(self.pid, libc::SIGKILL);
            let _ = std::thread::Builder::new()
                .name("proc-reap".into())
                .spawn(move || child.wait());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    type Seen = Arc<Mutex<Vec<(Stream, String)>>>;

    fn collect() -> (OnLine, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (
            Arc::new(move |stream, line| s.lock().unwrap().push((stream, line))),
            seen,
        )
    }

    #[tokio::test]
    async fn a_confined_process_writes_only_in_its_work_dir_and_never_reads_the_data_dir() {
        if super::super::landlock::abi() == 0 {
            eprintln!("skipped: this kernel has no Landlock");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let work = data.join("agents/a1");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(data.join("secret"), "top-secret").unwrap();
        let rules = Arc::new(Ruleset::confine(&work, &data).unwrap());
        let script = format!(
            "echo hi; echo oops >&2; echo x > {esc} || echo no-escape; echo y > inside.txt && echo inside-ok; cat {secret} || echo no-read; echo z > /tmp/warden-escape-test || echo no-tmp",
            esc = dir.path().join("escape.txt").display(),
            secret = data.join("secret").display(),
        );
        let (on_line, seen) = collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let p = Process::start(
            Spec {
                argv: vec!["/bin/sh".into(), "-c".into(), script],
                workdir: work.clone(),
                env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                limits: Limits::default(),
                confine: Some(rules),
                groups: None,
            },
            on_line,
            move |exit| {
                let _ = tx.send(exit);
            },
        )
        .await
        .unwrap();
        assert!(p.started() > 0);
        let exit = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(exit, Exit::Code(0));
        drop(p);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lines: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect();
        for want in ["hi", "no-escape", "inside-ok", "no-read", "no-tmp"] {
            assert!(lines.iter().any(|l| l == want), "{want} in {lines:?}");
        }
        assert!(
            seen.lock()
                .unwrap()
                .contains(&(Stream::Stderr, "oops".into()))
        );
        assert!(!lines.iter().any(|l| l.contains("top-secret")), "{lines:?}");
        assert!(!dir.path().join("escape.txt").exists());
        assert!(work.join("inside.txt").exists());
    }

    #[tokio::test]
    async fn stopping_ends_the_whole_session_and_long_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (on_line, seen) = collect();
        let p = Process::start(
            Spec {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "head -c 20000 /dev/zero | tr '\\0' a; echo; sleep 1000 & echo child=$!; wait"
                        .into(),
                ],
                workdir: dir.path().to_path_buf(),
                env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                limits: Limits::default(),
                confine: None,
                groups: None,
            },
            on_line,
            |_| {},
        )
        .await
        .unwrap();
        let child: u32 = loop {
            let found = seen
                .lock()
                .unwrap()
                .iter()
                .find_map(|(_, l)| l.strip_prefix("child=").and_then(|c| c.parse().ok()));
            if let Some(c) = found {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(seen.lock().unwrap()[0].1.len(), MAX_LINE, "cut at 8 KiB");
        let (pid, started) = (p.pid(), p.started());
        assert!(super::super::is_alive(pid, started));
        assert!(
            !super::super::is_alive(pid, started + 1),
            "another start time is another process"
        );
        p.stop(Duration::from_millis(200));
        for _ in 0..100 {
            if std::fs::metadata(format!("/proc/{child}")).is_err()
                || std::fs::read_to_string(format!("/proc/{child}/stat"))
                    .is_ok_and(|s| s.contains(") Z"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the grandchild {child} outlived the stop");
    }
}
