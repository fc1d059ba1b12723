//! A shell on a pseudo-terminal: `openpty`, a child in its own session
//! with the PTY as its controlling terminal, a parent-death signal, and
//! optionally another user's identity. Linux only, over `libc`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use tokio::io::unix::AsyncFd;

pub use crate::process::Exit;
use crate::process::{signal_session, wait_exit};

/// A user to run as.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// The user's login shell.
    pub shell: String,
}

impl RunAs {
    /// Looks a user up by name (`getpwnam_r`).
    pub fn lookup(name: &str) -> io::Result<RunAs> {
        let c = CString::new(name).map_err(|_| io::Error::other("a user name has no NUL"))?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` outlives the
        // reads of the strings it holds below.
        let rc = unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc != 0 || found.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no user {name} on this host"),
            ));
        }
        // SAFETY: getpwnam_r filled `pw` with C strings inside `buf`.
        let shell = unsafe { std::ffi::CStr::from_ptr(pw.pw_shell) }
            .to_string_lossy()
            .into_owned();
        Ok(RunAs {
            name: name.to_owned(),
            uid: pw.pw_uid,
            gid: pw.pw_gid,
            shell,
        })
    }
}

/// What to start on the terminal.
#[derive(Debug, Clone)]
pub struct Spawn {
    pub program: String,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub run_as: Option<RunAs>,
    pub cols: u16,
    pub rows: u16,
    /// Control groups capping the session's processes and memory.
    pub groups: Option<Arc<crate::process::cgroup::Groups>>,
}

fn winsize(cols: u16, rows: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The server's side of a running shell. The shell is reaped only when
/// this is torn down, after its group was killed: until then its pid
/// (its group's id) stays taken, so a signal to the group can never
/// reach a process that got a recycled id. Dropping it kills the group
/// (a session actor that failed leaves no orphan).
pub struct Pty {
    master: Arc<AsyncFd<OwnedFd>>,
    pid: u32,
    child: Option<Child>,
    /// Dropped after the child: removed once the session is gone.
    _groups: Option<Arc<crate::process::cgroup::Groups>>,
}

/// The reading half, for the task that moves output.
#[derive(Clone)]
pub struct PtyReader(Arc<AsyncFd<OwnedFd>>);

impl PtyReader {
    /// Reads output; `Ok(0)` once the shell's side is closed.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| {
                // SAFETY: `buf` is valid for `buf.len()` bytes.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => return Ok(n),
                // Linux answers EIO once every slave descriptor is closed.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

impl Pty {
    /// Opens a PTY and starts `spawn.program` on it, from the spawner
    /// thread. `on_exit` is called from a waiting thread with the exit
    /// status once the shell has ended.
    pub async fn start(
        spawn: Spawn,
        on_exit: impl FnOnce(io::Result<Exit>) + Send + 'static,
    ) -> io::Result<Pty> {
        let (mut master, mut slave): (RawFd, RawFd) = (-1, -1);
        let ws = winsize(spawn.cols, spawn.rows);
        // SAFETY: out-pointers are valid; name and termios may be null.
        check(unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        })?;
        // SAFETY: openpty returned two fresh descriptors we now own.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
            // SAFETY: fcntl on descriptors we own.
            unsafe {
                let flags = check(libc::fcntl(fd, libc::F_GETFD))?;
                check(libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC))?;
            }
        }
        // SAFETY: as above.
        unsafe {
            let fd = master.as_raw_fd();
            let flags = check(libc::fcntl(fd, libc::F_GETFL))?;
            check(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
        }
        let mut command = Command::new(&spawn.program);
        command
            .env_clear()
            .envs(spawn.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        let workdir = CString::new(spawn.workdir.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::other("the work directory has a NUL"))?;
        let run_as = spawn.run_as.clone();
        let groups = spawn.groups.clone();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                check(libc::setsid())?;
                if let Some(g) = &groups {
                    g.join_self()?;
                }
                check(libc::ioctl(0, libc::TIOCSCTTY as _, 0))?;
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                // The directory is entered before the identity changes, so
                // the user needs no way through the server's data dir.
                check(libc::chdir(workdir.as_ptr()))?;
                if let Some(u) = &run_as {
                    check(libc::setgroups(0, std::ptr::null()))?;
                    check(libc::setgid(u.gid))?;
                    check(libc::setuid(u.uid))?;
                }
                Ok(())
            });
        }
        let child: Child = crate::spawner::spawn(command).await?;
        let pid = child.id();
        std::thread::Builder::new()
            .name(format!("shell-wait-{pid}"))
            .spawn(move || on_exit(wait_exit(pid)))?;
        // SAFETY: the OwnedFd is open and moves into the AsyncFd, which
        // alone closes it.
        let master = unsafe { AsyncFd::register(master) }.map_err(io::Error::from)?;
        Ok(Pty {
            master: Arc::new(master),
            pid,
            child: Some(child),
            _groups: spawn.groups,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn reader(&self) -> PtyReader {
        PtyReader(self.master.clone())
    }

    /// Tells the shell its window size.
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        let ws = winsize(cols, rows);
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
        check(unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ as _, &ws) })?;
        Ok(())
    }

    /// Whether the terminal echoes input (off while a program reads a
    /// password).
    pub fn echoes(&self) -> bool {
        // SAFETY: tcgetattr fills a termios from a valid descriptor.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            libc::tcgetattr(self.master.as_raw_fd(), &mut t) == 0 && t.c_lflag & libc::ECHO != 0
        }
    }

    /// Writes input to the shell.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|fd| {
                // SAFETY: `bytes` is valid for its length.
                let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sends `signal` to every process of the shell's session: the shell
    /// and each job it started (a job-control shell puts each job in a
    /// process group of its own). The shell is not reaped before this
    /// object goes, so its id, the session's, is never someone else's.
    pub fn signal(&self, signal: libc::c_int) {
        if self.child.is_some() {
            signal_session(self.pid, signal);
        }
    }

    /// Hangs the shell's session up, then after `grace` kills what is
    /// left of it and reaps the shell.
    pub fn terminate(self, grace: std::time::Duration) {
        self.signal(libc::SIGHUP);
        self.signal(libc::SIGCONT);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            drop(self);
        });
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            // Dead or about to be: reaped off the caller's thread.
            let _ = std::thread::Builder::new()
                .name("shell-reap".into())
                .spawn(move || child.wait());
        }
    }
}
