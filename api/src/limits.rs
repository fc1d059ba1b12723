//! Rate limits (Forge's table: login 30/min per IP, API 1000/min per
//! user, agent 20/min per user), as fixed one-minute windows per key.
//!
//! Login limits count *failed* attempts, per client address and per
//! account *from that address*: a stranger's failures from elsewhere never
//! lock a user out of their own address, and a busy client that logs in
//! correctly is never locked out. Each attempt reserves its slot before
//! the password is checked and gives it back when the password was right,
//! so a concurrent burst cannot slip more guesses past the limit than it
//! allows. Mail-sending routes (sign-up, resend-code, forgot-password) are
//! limited per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

/// Limits per minute; `None` switches one off.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    pub login_failures_per_minute: Option<u32>,
    pub api_per_minute: Option<u32>,
    /// Sign-ups, code resends and password-reset requests per address.
    pub mail_per_minute: Option<u32>,
    /// Forge's agent routes, per user.
    pub agent_per_minute: Option<u32>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            login_failures_per_minute: Some(30),
            api_per_minute: Some(1000),
            mail_per_minute: Some(10),
            agent_per_minute: Some(20),
        }
    }
}

/// One limit: at most `max` events per key per window.
pub(crate) struct Limiter {
    max: Option<u32>,
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Limiter {
    pub fn new(max: Option<u32>) -> Self {
        Limiter {
            max,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` on the current window of every key, under one lock.
    fn with_windows<T>(
        &self,
        keys: &[&str],
        f: impl FnOnce(&mut [&mut (Instant, u32)], u32) -> T,
    ) -> Option<T> {
        let max = self.max?;
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        for key in keys {
            let entry = windows.entry((*key).to_owned()).or_insert((now, 0));
            if now.duration_since(entry.0) >= WINDOW {
                *entry = (now, 0);
            }
        }
        // Distinct keys, so the borrows are disjoint.
        let mut entries: Vec<&mut (Instant, u32)> = windows
            .iter_mut()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .map(|(_, v)| v)
            .collect();
        Some(f(&mut entries, max))
    }

    /// Counts one event; returns the wait when this one is over the limit.
    pub fn hit(&self, key: &str) -> Option<u64> {
        self.reserve(&[key]).err()
    }

    /// Counts one event against every key, or none of them when any is
    /// at its limit (then the seconds to wait).
    pub fn reserve(&self, keys: &[&str]) -> Result<(), u64> {
        self.with_windows(keys, |entries, max| {
            if let Some(full) = entries.iter().find(|(_, n)| *n >= max) {
                return Err(retry_after(full.0));
            }
            for (_, n) in entries.iter_mut() {
                *n += 1;
            }
            Ok(())
        })
        .unwrap_or(Ok(()))
    }

    /// Gives back events counted by [`reserve`](Self::reserve).
    pub fn release(&self, keys: &[&str]) {
        self.with_windows(keys, |entries, _| {
            for (_, n) in entries.iter_mut() {
                *n = n.saturating_sub(1);
            }
        });
    }
}

fn retry_after(start: Instant) -> u64 {
    WINDOW.saturating_sub(start.elapsed()).as_secs().max(1)
}

/// The server's limiters.
pub(crate) struct Limits {
    login: Limiter,
    pub api: Limiter,
    pub mail: Limiter,
    pub agent: Limiter,
}

/// A login attempt's reserved failure slots: dropped as it is, the attempt
/// counts as failed; [`LoginAttempt::succeeded`] gives the slots back.
pub(crate) struct LoginAttempt<'a> {
    limiter: &'a Limiter,
    keys: [String; 2],
}

impl LoginAttempt<'_> {
    pub fn succeeded(self) {
        let [a, b] = &self.keys;
        self.limiter.release(&[a, b]);
    }
}

impl Limits {
    /// Reserves a failure slot for this address and for this account from
    /// this address, before any password is checked; the seconds to wait
    /// when either is used up.
    pub fn login_attempt(&self, ip: IpAddr, account: &str) -> Result<LoginAttempt<'_>, u64> {
        let account = account.trim().to_lowercase();
        let keys = [format!("ip {ip}"), format!("account {account} {ip}")];
        self.login.reserve(&[&keys[0], &keys[1]])?;
        Ok(LoginAttempt {
            limiter: &self.login,
            keys,
        })
    }

    pub fn new(c: RateLimits) -> Self {
        Limits {
            login: Limiter::new(c.login_failures_per_minute),
            api: Limiter::new(c.api_per_minute),
            mail: Limiter::new(c.mail_per_minute),
            agent: Limiter::new(c.agent_per_minute),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_and_refuse() {
        let l = Limiter::new(Some(2));
        assert_eq!(l.hit("a"), None);
        assert_eq!(l.hit("a"), None);
        assert!(l.hit("a").is_some_and(|s| (1..=60).contains(&s)));
        assert_eq!(l.hit("b"), None, "keys are separate");
        // All or nothing: "a" is full, so "c" is not counted either.
        assert!(l.reserve(&["c", "a"]).is_err());
        l.release(&["a"]);
        assert_eq!(l.reserve(&["c", "a"]), Ok(()));
        assert!(l.hit("a").is_some());
        let off = Limiter::new(None);
        for _ in 0..10 {
            assert_eq!(off.hit("a"), None);
        }
    }
}
