//! Landlock (Linux 5.13+, unprivileged) over raw system calls: a process
//! may write only beneath its work dir (and to `/dev/null`), and read
//! and run only what a list of paths allows. Landlock rules only allow,
//! so "everything but Warden's data dir" is built as: every entry of
//! each directory on the way to the data dir, but the next one on that
//! way (entries made later in those directories are not readable).
//!
//! The ruleset is prepared before the fork (opening paths allocates);
//! the child only calls `prctl(PR_SET_NO_NEW_PRIVS)` and
//! `landlock_restrict_self`, both async-signal-safe.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: libc::c_int = 1;

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
/// Every right of ABI 1 (execute .. make_sym).
const ABI1: u64 = (1 << 13) - 1;
const REFER: u64 = 1 << 13;
const TRUNCATE: u64 = 1 << 14;

const READ: u64 = EXECUTE | READ_FILE | READ_DIR;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI version this kernel offers (0: none).
pub fn abi() -> u32 {
    // SAFETY: the version query takes no attribute.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(v).unwrap_or(0)
}

/// A prepared ruleset, applied in the child before `exec`.
#[derive(Debug)]
pub struct Ruleset {
    fd: OwnedFd,
}

impl Ruleset {
    /// Writes beneath `work` only; reads and runs beneath `work` and every
    /// readable path except `hidden` (Warden's data dir).
    pub fn confine(work: &Path, hidden: &Path) -> io::Result<Ruleset> {
        let abi = abi();
        if abi == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel offers no Landlock",
            ));
        }
        let mut handled = ABI1;
        if abi >= 2 {
            handled |= REFER;
        }
        if abi >= 3 {
            handled |= TRUNCATE;
        }
        let attr = RulesetAttr {
            handled_access_fs: handled,
        };
        // SAFETY: a valid attribute of its own size.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                std::mem::size_of::<RulesetAttr>(),
                0u32,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we own.
        let ruleset = Ruleset {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        };
        // Everything readable but the data dir; files may not be made or
        // changed there (only a directory's own rights are beneath it).
        let mut secrets: Vec<PathBuf> = HOST_SECRETS.iter().map(PathBuf::from).collect();
        secrets.push(hidden.to_path_buf());
        // Warden's own process: its environment and memory.
        secrets.push(PathBuf::from(format!("/proc/{}", std::process::id())));
        for path in readable_around(&secrets)? {
            ruleset.allow(&path, READ)?;
        }
        ruleset.allow(Path::new("/dev/null"), READ_FILE | WRITE_FILE)?;
        ruleset.allow(work, handled)?;
        Ok(ruleset)
    }

    fn allow(&self, path: &Path, access: u64) -> io::Result<()> {
        let file = match std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            // Gone meanwhile, or unreadable to us: nothing to allow.
            Err(_) => return Ok(()),
        };
        // A rule on a file may only carry file rights.
        let access = if file.metadata()?.is_dir() {
            access
        } else {
            access & (EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE)
        };
        let rule = PathBeneathAttr {
            allowed_access: access,
            parent_fd: file.as_raw_fd(),
        };
        // SAFETY: a valid rule for a descriptor that lives for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                self.fd.as_raw_fd(),
                RULE_PATH_BENEATH,
                &rule as *const PathBeneathAttr,
                0u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Restricts the calling process (in the child, before `exec`).
    ///
    /// # Safety
    /// Only async-signal-safe calls: for `pre_exec`.
    pub unsafe fn restrict_self(&self) -> io::Result<()> {
        // SAFETY: prctl and a raw system call, no allocation.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::syscall(libc::SYS_landlock_restrict_self, self.fd.as_raw_fd(), 0u32) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// Host files a confined process never reads: password hashes, sudo
/// rules, SSH keys.
pub const HOST_SECRETS: [&str; 7] = [
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssh",
    "/root/.ssh",
    "/etc/ssl/private",
];

/// Every path whose hierarchy is readable when everything but the
/// `hidden` paths is: each entry of each directory on the way to a
/// hidden path, but the hidden paths and the ways to them (which are
/// walked into instead).
fn readable_around(hidden: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    let hidden: Vec<PathBuf> = hidden
        .iter()
        .filter_map(|h| h.canonicalize().ok())
        .collect();
    let on_the_way = |p: &Path| hidden.iter().any(|h| h.starts_with(p) && h != p);
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::from("/")];
    while let Some(at) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            // A link is allowed where it leads, if anywhere: a rule on
            // `/proc/self` would be a rule on Warden's own /proc entry.
            if hidden.contains(&path) || entry.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            if on_the_way(&path) {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_around_a_path_but_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/hidden")).unwrap();
        std::fs::create_dir_all(root.join("a/open")).unwrap();
        std::fs::write(root.join("b"), "x").unwrap();
        let around = readable_around(&[root.join("a/hidden"), root.join("b")]).unwrap();
        assert!(around.contains(&root.join("a/open")));
        assert!(!around.contains(&root.join("b")), "hidden too");
        assert!(!around.iter().any(|p| p.starts_with(root.join("a/hidden"))));
        assert!(!around.contains(&root), "an ancestor would open it all");
        assert!(around.contains(&PathBuf::from("/usr")) || !Path::new("/usr").exists());
    }
}
