//! Schedules (vareon myntrix "scheduled tasks"; WORKFLOWS.md §1, §5.10):
//! a cron expression and an action; each fire starts a run.
//!
//! Invariants:
//! - `next_fire` is the occurrence the scheduler fires next, stored: after
//!   a restart the scheduler re-arms from it, and an occurrence missed
//!   while the server was down fires once (later missed ones are skipped).
//! - A fire's run has the `executionId` `sched-<id>-<occurrence>`, so a
//!   fire repeated after a crash finds the run it started: no occurrence
//!   runs twice.
//! - Only enabled, live schedules are in the due index.

use serde_json::{Map, Value};
use warden_storage::{Millis, Record};

use crate::{Audit, DomainError, Owner};

warden_storage::first_layout!(Schedule);

/// The scheduler's index: enabled schedules by their next fire.
pub const DUE: &str = "due";
/// Runs remembered per schedule (its history).
pub const MAX_RUNS: usize = 100;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub id: String,
    pub name: String,
    pub cron: String,
    /// JSON object text: `{type: "workflow", workflow_id}` or
    /// `{type: "event", event_type, data}`.
    pub action: String,
    pub enabled: bool,
    pub next_fire: Option<Millis>,
    pub last_fire: Option<Millis>,
    /// Execution ids of the latest runs, oldest first.
    pub runs: Vec<String>,
    pub owner: Owner,
    pub audit: Audit,
}

impl Record for Schedule {
    const COLLECTION: &'static str = "schedules";
    fn id(&self) -> &str {
        &self.id
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        let mut o = crate::created_order(&self.owner.org_id, self.audit.created_at);
        if self.enabled
            && let Some(at) = self.next_fire
        {
            o.push((DUE, String::new(), warden_storage::time_sort_key(at)));
        }
        o
    }
}

impl crate::catalog::Plain for Schedule {
    const KIND: &'static str = "Scheduled Task";
    fn audit(&self) -> &Audit {
        &self.audit
    }
    fn audit_mut(&mut self) -> &mut Audit {
        &mut self.audit
    }
}

impl crate::Owned for Schedule {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

impl Schedule {
    pub fn action_json(&self) -> Value {
        serde_json::from_str(&self.action).unwrap_or_else(|_| Value::Object(Map::new()))
    }

    /// Sets the cron expression (checked) and re-arms from `now`.
    pub fn set_cron(&mut self, cron: &str, now: Millis) -> Result<(), DomainError> {
        let c =
            Cron::parse(cron).map_err(|e| DomainError::Invalid(vec![format!("schedule: {e}")]))?;
        self.cron = cron.trim().to_owned();
        self.next_fire = c.next_after(now);
        Ok(())
    }

    /// Re-arms after a fire at `now`: the next occurrence after now.
    pub fn rearm(&mut self, now: Millis) {
        self.next_fire = Cron::parse(&self.cron).ok().and_then(|c| c.next_after(now));
    }

    /// The `executionId` of the fire at `occurrence`.
    pub fn run_key(&self, occurrence: Millis) -> String {
        format!("sched-{}-{occurrence}", self.id)
    }

    pub fn remember(&mut self, execution: &str) {
        if self.runs.iter().any(|r| r == execution) {
            return;
        }
        self.runs.push(execution.to_owned());
        if self.runs.len() > MAX_RUNS {
            let extra = self.runs.len() - MAX_RUNS;
            self.runs.drain(..extra);
        }
    }
}

/// A five-field cron expression (minute hour day-of-month month
/// day-of-week, UTC) with `*`, lists, ranges, steps and names, or one of
/// `@yearly @monthly @weekly @daily @hourly`; six fields put seconds
/// first (as Quartz and croner do). As in Vixie cron, when both day
/// fields are restricted a day matching either fires.
#[derive(Debug, Clone, PartialEq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    any_day: bool,
    any_weekday: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn field(text: &str, name: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + min);
        }
        s.parse::<u32>()
            .map_err(|_| format!("{name} {s:?} is not a number"))
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{name} step {s:?} must be a positive number"))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{name} {range:?} is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let text = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let (s, [m, h, dom, mon, dow]) = (match parts.len() {
            6 => (parts[0], &parts[1..]),
            _ => ("0", &parts[..]),
        }) else {
            return Err(format!(
                "{text:?} is not a cron expression of five fields (minute hour day month weekday)"
            ));
        };
        let (m, h, dom, mon, dow) = (*m, *h, *dom, *mon, *dow);
        let mut weekdays = field(dow, "day of week", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Cron {
            seconds: field(s, "second", 0, 59, &[])?,
            minutes: field(m, "minute", 0, 59, &[])?,
            hours: field(h, "hour", 0, 23, &[])?,
            days: field(dom, "day of month", 1, 31, &[])?,
            months: field(mon, "month", 1, 12, &MONTHS)?,
            weekdays,
            any_day: dom == "*",
            any_weekday: dow == "*",
        })
    }

    fn day_matches(&self, d: chrono::NaiveDate) -> bool {
        use chrono::Datelike;
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().num_days_from_sunday()) != 0;
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first occurrence strictly after `t` (within five years).
    pub fn next_after(&self, t: Millis) -> Option<Millis> {
        use chrono::Timelike;
        let start = chrono::DateTime::from_timestamp_millis(t)?.naive_utc();
        // The next whole second after t.
        let start = start.with_nanosecond(0)? + chrono::Duration::seconds(1);
        let mut day = start.date();
        for _ in 0..(366 * 5) {
            if self.day_matches(day) {
                let first = day == start.date();
                let (h0, m0, s0) = if first {
                    (start.hour(), start.minute(), start.second())
                } else {
                    (0, 0, 0)
                };
                for h in h0..24 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    let at_start = h == h0 && first;
                    for m in (if at_start { m0 } else { 0 })..60 {
                        if self.minutes & (1 << m) == 0 {
                            continue;
                        }
                        let from = if at_start && m == m0 { s0 } else { 0 };
                        for sec in from..60 {
                            if self.seconds & (1 << sec) != 0 {
                                let at = day.and_hms_opt(h, m, sec)?;
                                return Some(at.and_utc().timestamp_millis());
                            }
                        }
                    }
                }
            }
            day = day.succ_opt()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn cron_expressions_read_and_find_their_next_occurrence() {
        let next = |c: &str, t: &str| {
            warden_storage::iso_millis(Cron::parse(c).unwrap().next_after(at(t)).unwrap())
        };
        assert_eq!(
            next("* * * * *", "2026-01-01T10:00:30Z"),
            "2026-01-01T10:01:00.000Z"
        );
        assert_eq!(
            next("* * * * *", "2026-01-01T10:00:00Z"),
            "2026-01-01T10:01:00.000Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T10:16:00Z"),
            "2026-01-01T10:30:00.000Z"
        );
        assert_eq!(
            next("0 9 * * mon-fri", "2026-01-02T10:00:00Z"),
            "2026-01-05T09:00:00.000Z"
        );
        assert_eq!(
            next("30 2 29 feb *", "2026-03-01T00:00:00Z"),
            "2028-02-29T02:30:00.000Z"
        );
        assert_eq!(
            next("@monthly", "2026-01-15T00:00:00Z"),
            "2026-02-01T00:00:00.000Z"
        );
        assert_eq!(
            next("0 0 * * 7", "2026-01-01T00:00:00Z"),
            "2026-01-04T00:00:00.000Z"
        );
        // Both day fields restricted: either fires.
        assert_eq!(
            next("0 0 13 * 5", "2026-01-01T00:00:00Z"),
            "2026-01-02T00:00:00.000Z"
        );
        assert_eq!(
            next("5,10-12/2 1 * * *", "2026-01-01T01:06:00Z"),
            "2026-01-01T01:10:00.000Z"
        );
        for bad in [
            "61 * * * *",
            "* * * *",
            "* 24 * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "a * * * *",
            "5-1 * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
        assert!(Cron::parse("0 0 31 2 *").unwrap().next_after(0).is_none());
        // Six fields: seconds first.
        assert_eq!(
            next("*/2 * * * * *", "2026-01-01T10:00:00.500Z"),
            "2026-01-01T10:00:02.000Z"
        );
        assert_eq!(
            next("30 * * * * *", "2026-01-01T10:00:31Z"),
            "2026-01-01T10:01:30.000Z"
        );
        assert!(Cron::parse("60 * * * * *").is_err());
    }
}
