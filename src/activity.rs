//! What the status page shows over time: rate-limit units spent and saved per minute over the
//! last hour, and a short log of recent negative-cache hits and invalidations.
//!
//! Both are bounded (61 minute samples, [`EVENTS_KEPT`] events) and cost the hot path nothing:
//! the upkeep task snapshots the metrics' running totals into per-minute samples, and events —
//! rare next to cache hits — take a short lock with no await inside.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How many recent events the status page keeps.
pub const EVENTS_KEPT: usize = 50;

/// Minutes of history kept (one hour, plus the baseline before it).
const MINUTES_KEPT: usize = 61;

/// Running totals since start; every field only grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Upstream answers that cost a rate-limit unit.
    pub spent: u64,
    /// Answers that cost no unit (served locally, or revalidated with a 304).
    pub saved: u64,
    /// Requests answered.
    pub answers: u64,
    /// Requests answered without a paid upstream request (hit, stale, coalesced, negative,
    /// revalidated).
    pub local: u64,
}

impl Totals {
    fn since(self, earlier: Totals) -> Totals {
        Totals {
            spent: self.spent.saturating_sub(earlier.spent),
            saved: self.saved.saturating_sub(earlier.saved),
            answers: self.answers.saturating_sub(earlier.answers),
            local: self.local.saturating_sub(earlier.local),
        }
    }
}

/// One minute of the chart.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Minute {
    /// Start of the minute, epoch seconds.
    pub start: u64,
    /// Units spent during the minute.
    pub spent: u64,
    /// Units saved during the minute.
    pub saved: u64,
    /// Requests answered during the minute.
    pub answers: u64,
    /// Of those, answered without a paid upstream request.
    pub local: u64,
}

/// A recent event worth showing an operator.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    /// When it last happened, epoch milliseconds.
    pub at: u64,
    /// `negative` (a remembered futile answer was replayed) or `invalidation`.
    pub kind: &'static str,
    /// What: the rule and repository, or the scope and its cause. Never a credential.
    pub what: String,
    /// How many times in a row it happened (repeats fold into one line).
    pub count: u64,
}

/// The history and log behind the status page. The running totals themselves are counted
/// by [`crate::telemetry::Metrics`] (which owns every count); this keeps snapshots of them.
#[derive(Debug, Default)]
pub struct Activity {
    minutes: Mutex<VecDeque<(u64, Totals)>>,
    events: Mutex<VecDeque<Event>>,
    started: std::sync::OnceLock<SystemTime>,
}

impl Activity {
    /// Records `totals` as the latest sample of the current minute (called every few seconds).
    pub fn sample(&self, now: SystemTime, totals: Totals) {
        self.started.get_or_init(|| now);
        let minute = minute_of(now);
        let mut minutes = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        match minutes.back_mut() {
            Some((m, t)) if *m == minute => *t = totals,
            Some((m, _)) if *m > minute => {} // the clock went back: keep what we have
            _ => minutes.push_back((minute, totals)),
        }
        while minutes.len() > MINUTES_KEPT {
            minutes.pop_front();
        }
    }

    /// The last `count` minutes up to and including the current one, oldest first, with the
    /// current minute counted up to `totals` (the running totals now).
    pub fn last_minutes(&self, now: SystemTime, count: usize, totals: Totals) -> Vec<Minute> {
        self.sample(now, totals);
        let current = minute_of(now);
        let minutes = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        let first = current.saturating_sub(count.saturating_sub(1) as u64);
        (first..=current)
            .map(|m| {
                // A minute's counts: its last sample less the sample before it (none: zero).
                let delta = match minutes.iter().position(|(s, _)| *s == m) {
                    Some(i) => {
                        let before = i.checked_sub(1).map(|b| minutes[b].1).unwrap_or_default();
                        minutes[i].1.since(before)
                    }
                    None => Totals::default(),
                };
                Minute {
                    start: m * 60,
                    spent: delta.spent,
                    saved: delta.saved,
                    answers: delta.answers,
                    local: delta.local,
                }
            })
            .collect()
    }

    /// When the first sample was taken (the gateway's start).
    pub fn started(&self) -> Option<SystemTime> {
        self.started.get().copied()
    }

    /// Notes an event; a repeat of the latest one only bumps its count and time.
    pub fn event(&self, kind: &'static str, what: String) {
        let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = events.back_mut().filter(|e| e.kind == kind && e.what == what) {
            last.count += 1;
            last.at = at;
            return;
        }
        events.push_back(Event { at, kind, what, count: 1 });
        while events.len() > EVENTS_KEPT {
            events.pop_front();
        }
    }

    /// Recent events, newest first.
    pub fn recent_events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }
}

fn minute_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at_minute(m: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(m * 60 + 5)
    }

    fn totals(spent: u64, saved: u64) -> Totals {
        Totals { spent, saved, answers: spent + saved, local: saved }
    }

    #[test]
    fn minutes_are_differences_of_the_running_totals() {
        let a = Activity::default();
        a.sample(at_minute(100), totals(0, 0));
        a.sample(at_minute(101), totals(1, 2));
        let m = a.last_minutes(at_minute(103), 4, totals(1, 3));
        assert_eq!(m.iter().map(|m| m.start / 60).collect::<Vec<_>>(), [100, 101, 102, 103]);
        assert_eq!(
            m.iter().map(|m| (m.spent, m.saved)).collect::<Vec<_>>(),
            [(0, 0), (1, 2), (0, 0), (0, 1)]
        );
        assert_eq!(m[1].answers, 3);
    }

    #[test]
    fn history_is_bounded_to_an_hour() {
        let a = Activity::default();
        for m in 0..500 {
            a.sample(at_minute(m), totals(m + 1, 0));
        }
        assert!(a.minutes.lock().unwrap().len() <= MINUTES_KEPT);
        let m = a.last_minutes(at_minute(499), 60, totals(500, 0));
        assert_eq!(m.len(), 60);
        assert!(m.iter().all(|m| m.spent == 1), "{m:?}");
    }

    #[test]
    fn repeated_events_fold_and_the_log_is_bounded() {
        let a = Activity::default();
        a.event("negative", "statuses_limit octo/hello".into());
        a.event("negative", "statuses_limit octo/hello".into());
        assert_eq!(a.recent_events()[0].count, 2);
        for i in 0..200 {
            a.event("invalidation", format!("purge /repos/o/r{i}"));
        }
        let events = a.recent_events();
        assert_eq!(events.len(), EVENTS_KEPT);
        assert_eq!(events[0].what, "purge /repos/o/r199", "newest first");
    }
}
