use std::time::Duration;

/// OTP-style restart intensity: at most `max_restarts` restarts within
/// `within`. The first restart in the window is immediate, as in OTP; the
/// n-th after it waits `backoff * 2^(n-2)`, capped at `max_backoff`, so
/// only repeated failures back off. One more failure and the entity is failed.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    #[serde(with = "millis")]
    pub within: Duration,
    #[serde(with = "millis")]
    pub backoff: Duration,
    #[serde(with = "millis")]
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 3,
            within: Duration::from_secs(60),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RestartPolicy {
    /// The delay before restart number `n` (1-based) within the window.
    pub fn delay(&self, n: u32) -> Duration {
        if n <= 1 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(n - 2).unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = <u64 as serde::Deserialize>::deserialize(d)?;
        Ok(Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RestartPolicy {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            ..Default::default()
        };
        assert_eq!(p.delay(1), Duration::ZERO);
        assert_eq!(p.delay(2), Duration::from_millis(100));
        assert_eq!(p.delay(3), Duration::from_millis(200));
        assert_eq!(p.delay(4), Duration::from_millis(300));
        assert_eq!(p.delay(40), Duration::from_millis(300));
    }
}
