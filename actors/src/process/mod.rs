//! Supervised user processes (VAREON-NEURONEST.md §3B): argv spawned
//! never through a shell, in a session of its own with a parent-death
//! signal, rlimits, and confinement (Landlock: writes only under the
//! work dir, reads nowhere near Warden's data dir), stdout and stderr
//! captured line by line. Shared with the shells (`terminal::pty`): how
//! a process is waited for without being reaped, and how a whole session
//! is signalled.

use std::io;

pub mod cgroup;
pub mod exec;
pub mod landlock;
pub mod log;
mod policy;
pub mod record;

pub use exec::{Limits, Process, Spec, Stream};
pub use policy::ExecPolicy;

/// How a shell ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// The time a process started, in clock ticks after boot (field 22 of
/// `/proc/<pid>/stat`): with the pid, it names one process for ever (a
/// recycled pid has another start time).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // state is field 3; starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `started` (and
/// has not ended: a zombie has).
pub fn is_alive(pid: u32, started: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let zombie = fields.next() == Some("Z");
    !zombie && fields.nth(18).and_then(|t| t.parse::<u64>().ok()) == Some(started)
}

/// Kills what is left of a process a previous run of Warden started:
/// its session, if `pid` is still the process that started at `started`.
pub fn kill_leftover(pid: u32, started: u64) -> bool {
    if !is_alive(pid, started) {
        return false;
    }
    signal_session(pid, libc::SIGKILL);
    true
}

/// The processes whose session is `sid`, from `/proc` (field 6 of
/// `stat`, after the command name's closing parenthesis).
pub fn session_members(sid: u32) -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: libc::pid_t = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        // state ppid pgrp session
        let session: u32 = rest.split_whitespace().nth(3)?.parse().ok()?;
        (session == sid).then_some(pid)
    })
    .collect()
}

pub(crate) fn signal_session(sid: u32, signal: libc::c_int) {
    // SAFETY: kill with a negative pid signals a process group; with a
    // positive one, a process.
    unsafe {
        libc::kill(-(sid as libc::pid_t), signal);
    }
    for pid in session_members(sid) {
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Waits for `pid` to end without reaping it (`WNOWAIT`).
pub(crate) fn wait_exit(pid: u32) -> io::Result<Exit> {
    loop {
        // SAFETY: waitid fills a siginfo_t from a valid pointer.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: waitid succeeded for WEXITED: these fields are set.
        let (code, status) = unsafe { (info.si_code, info.si_status()) };
        return Ok(if code == libc::CLD_EXITED {
            Exit::Code(status)
        } else {
            Exit::Signal(status)
        });
    }
}
