//! Control groups for a supervised process, where the host lets Warden
//! make them: a cap on its processes (a fork bomb stops at it, Warden
//! stays responsive) and on its memory (a hog is killed at it). cgroup v2
//! (`pids.max`, `memory.max`) when the unified hierarchy has those
//! controllers, else cgroup v1's `pids` and `memory` hierarchies; none
//! writable: no group, and the caller says so in the process's log.
//!
//! The child joins its groups itself, before `exec`, by writing its pid
//! to descriptors opened here (nothing it runs escapes by forking first).

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The limits a group enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GroupLimits {
    pub max_pids: u64,
    pub memory_bytes: u64,
}

impl Default for GroupLimits {
    fn default() -> Self {
        GroupLimits {
            max_pids: 256,
            memory_bytes: 1 << 30,
        }
    }
}

const ROOT: &str = "/sys/fs/cgroup";
const PARENT: &str = "warden";

#[derive(Debug)]
enum Layout {
    /// One unified directory.
    V2(PathBuf),
    /// `pids` and `memory` directories.
    V1 { pids: PathBuf, memory: PathBuf },
}

/// One process's groups; removed when dropped (after the process is gone).
#[derive(Debug)]
pub struct Groups {
    layout: Layout,
    /// `cgroup.procs` of each group, for the child to write its pid to.
    procs: Vec<OwnedFd>,
}

fn has_controllers(dir: &Path, wanted: &[&str]) -> bool {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .is_ok_and(|c| wanted.iter().all(|w| c.split_whitespace().any(|x| x == *w)))
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

fn open_procs(dir: &Path) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?;
    Ok(OwnedFd::from(f))
}

/// Removes the empty groups an earlier run left (its removals had not
/// finished when it ended); groups still holding processes stay.
fn sweep() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        let root = Path::new(ROOT);
        for parent in [
            root.join("unified").join(PARENT),
            root.join(PARENT),
            root.join("pids").join(PARENT),
            root.join("memory").join(PARENT),
        ] {
            for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                // `<warden pid>-<name>`: only a Warden that is gone left it
                // (another Warden on this host may be making its own).
                let name = entry.file_name().to_string_lossy().into_owned();
                let owner = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
                let gone = owner.is_none_or(|pid| {
                    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
                });
                if gone && entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
    });
}

impl Groups {
    /// Makes the groups of `name` with `limits`; `Ok(None)` when this
    /// host lets Warden make none.
    pub fn create(name: &str, limits: GroupLimits) -> io::Result<Option<Groups>> {
        sweep();
        let name = &format!("{}-{name}", std::process::id());
        let unified = Path::new(ROOT);
        let unified = if unified.join("unified").is_dir() {
            unified.join("unified")
        } else {
            unified.to_path_buf()
        };
        if has_controllers(&unified, &["pids", "memory"]) {
            let parent = unified.join(PARENT);
            std::fs::create_dir_all(&parent)?;
            // The controllers reach the parent's children only if enabled.
            let _ = write(&unified.join("cgroup.subtree_control"), "+pids +memory");
            let _ = write(&parent.join("cgroup.subtree_control"), "+pids +memory");
            let dir = parent.join(name);
            std::fs::create_dir_all(&dir)?;
            let made = (|| {
                write(&dir.join("pids.max"), &limits.max_pids.to_string())?;
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                write(&dir.join("memory.swap.max"), "0").or(Ok::<(), io::Error>(()))?;
                open_procs(&dir)
            })();
            return match made {
                Ok(procs) => Ok(Some(Groups {
                    layout: Layout::V2(dir),
                    procs: vec![procs],
                })),
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    Err(e)
                }
            };
        }
        let (pids_root, memory_root) =
            (Path::new(ROOT).join("pids"), Path::new(ROOT).join("memory"));
        if !pids_root.join("cgroup.procs").exists() || !memory_root.join("cgroup.procs").exists() {
            return Ok(None);
        }
        let pids = pids_root.join(PARENT).join(name);
        let memory = memory_root.join(PARENT).join(name);
        if std::fs::create_dir_all(&pids).is_err() || std::fs::create_dir_all(&memory).is_err() {
            let _ = std::fs::remove_dir(&pids);
            return Ok(None);
        }
        // Removed again (by its drop) if anything below fails.
        let mut groups = Groups {
            layout: Layout::V1 {
                pids: pids.clone(),
                memory: memory.clone(),
            },
            procs: Vec::new(),
        };
        write(&pids.join("pids.max"), &limits.max_pids.to_string())?;
        write(
            &memory.join("memory.limit_in_bytes"),
            &limits.memory_bytes.to_string(),
        )?;
        let _ = write(
            &memory.join("memory.memsw.limit_in_bytes"),
            &limits.memory_bytes.to_string(),
        );
        groups.procs = vec![open_procs(&pids)?, open_procs(&memory)?];
        Ok(Some(groups))
    }

    /// Joins the calling process to the groups (in the child, before
    /// `exec`: no allocation).
    ///
    /// # Safety
    /// Async-signal-safe: for `pre_exec`.
    pub unsafe fn join_self(&self) -> io::Result<()> {
        // SAFETY: getpid and write on descriptors we hold.
        let pid = unsafe { libc::getpid() };
        let mut buf = [0u8; 16];
        let mut n = pid as u32;
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for fd in &self.procs {
            let digits = &buf[i..];
            let w = unsafe { libc::write(fd.as_raw_fd(), digits.as_ptr().cast(), digits.len()) };
            if w < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Whether the memory limit killed something in the group.
    pub fn oom_killed(&self) -> bool {
        match &self.layout {
            Layout::V2(dir) => std::fs::read_to_string(dir.join("memory.events"))
                .ok()
                .and_then(|e| {
                    e.lines()
                        .find_map(|l| l.strip_prefix("oom_kill "))
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
                .is_some_and(|n| n > 0),
            Layout::V1 { memory, .. } => {
                std::fs::read_to_string(memory.join("memory.oom_control"))
                    .ok()
                    .and_then(|e| {
                        e.lines()
                            .find_map(|l| l.strip_prefix("oom_kill "))
                            .and_then(|n| n.trim().parse::<u64>().ok())
                    })
                    .is_some_and(|n| n > 0)
                    || std::fs::read_to_string(memory.join("memory.failcnt"))
                        .ok()
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
            }
        }
    }

    /// Whether the process cap refused a fork.
    pub fn pids_refused(&self) -> bool {
        let dir = match &self.layout {
            Layout::V2(dir) => dir,
            Layout::V1 { pids, .. } => pids,
        };
        std::fs::read_to_string(dir.join("pids.events"))
            .ok()
            .and_then(|e| {
                e.lines()
                    .find_map(|l| l.strip_prefix("max "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .is_some_and(|n| n > 0)
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        let dirs: Vec<PathBuf> = match &self.layout {
            Layout::V2(dir) => vec![dir.clone()],
            Layout::V1 { pids, memory } => vec![pids.clone(), memory.clone()],
        };
        // Empty once the process and its children are gone; retried
        // briefly, as the last ones are reaped.
        std::thread::spawn(move || {
            for _ in 0..50 {
                if dirs
                    .iter()
                    .all(|d| std::fs::remove_dir(d).is_ok() || !d.exists())
                {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
    }
}
