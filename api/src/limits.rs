//! Rate limits (Forge's table: login 30/min per IP, API 1000/min per
//! user), as fixed one-minute windows per key. Forge's agent limit
//! (20/min per user) arrives with its agent routes.
//!
//! Login limits count *failed* attempts, per IP and per account, so a busy
//! client that logs in correctly is never locked out; a caller over a limit
//! is refused before its password is even checked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

/// Limits per minute; `None` switches one off.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    pub login_failures_per_minute: Option<u32>,
    pub api_per_minute: Option<u32>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            login_failures_per_minute: Some(30),
            api_per_minute: Some(1000),
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

    fn with_window<T>(
        &self,
        key: &str,
        f: impl FnOnce(&mut (Instant, u32), u32) -> T,
    ) -> Option<T> {
        let max = self.max?;
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let entry = windows.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        Some(f(entry, max))
    }

    /// Seconds until `key` may try again, when it is over the limit now.
    pub fn blocked(&self, key: &str) -> Option<u64> {
        self.with_window(key, |(start, n), max| {
            (*n >= max).then(|| retry_after(*start))
        })
        .flatten()
    }

    /// Counts one event; returns the wait when this one is over the limit.
    pub fn hit(&self, key: &str) -> Option<u64> {
        self.with_window(key, |(start, n), max| {
            if *n >= max {
                Some(retry_after(*start))
            } else {
                *n += 1;
                None
            }
        })
        .flatten()
    }

    /// Counts one event without refusing it (a failed login).
    pub fn record(&self, key: &str) {
        self.with_window(key, |(_, n), _| *n = n.saturating_add(1));
    }
}

fn retry_after(start: Instant) -> u64 {
    WINDOW.saturating_sub(start.elapsed()).as_secs().max(1)
}

/// The server's limiters.
pub(crate) struct Limits {
    login_ip: Limiter,
    login_account: Limiter,
    pub api: Limiter,
}

impl Limits {
    /// Seconds to wait when this IP or this account has failed too often.
    pub fn login_blocked(&self, ip: std::net::IpAddr, account: &str) -> Option<u64> {
        let account = account.trim().to_lowercase();
        self.login_ip
            .blocked(&ip.to_string())
            .or_else(|| self.login_account.blocked(&account))
    }

    /// Counts one failed login (password or second factor) against both.
    pub fn login_failed(&self, ip: std::net::IpAddr, account: &str) {
        self.login_ip.record(&ip.to_string());
        self.login_account.record(&account.trim().to_lowercase());
    }

    pub fn new(c: RateLimits) -> Self {
        Limits {
            login_ip: Limiter::new(c.login_failures_per_minute),
            login_account: Limiter::new(c.login_failures_per_minute),
            api: Limiter::new(c.api_per_minute),
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
        l.record("c");
        assert_eq!(l.blocked("c"), None);
        l.record("c");
        assert!(l.blocked("c").is_some());
        let off = Limiter::new(None);
        for _ in 0..10 {
            assert_eq!(off.hit("a"), None);
        }
    }
}
