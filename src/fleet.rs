//! The fleet view: replicas sharing a store publish their running totals and per-minute counts
//! there, so `/stats`, `/status.json` and the status page of any replica show the whole
//! fleet's traffic beside its own, and name the replicas seen in the last minutes.
//!
//! Each replica writes one small record (`fleet:<replica id>`, a few KB of JSON) every few
//! seconds, with a TTL of [`SEEN_WITHIN`]: a replica that stops drops out of the view by
//! itself. Reading the view lists those records (an admin read, not on the request path).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::activity::{Minute, Totals};
use crate::store::Store;

/// A replica drops out of the view this long after its last report.
pub const SEEN_WITHIN: Duration = Duration::from_secs(180);

/// This process among the replicas: a random id, and a name an operator recognises.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Random per process start (16 hex digits).
    pub id: String,
    /// The host's name (a pod's name on Kubernetes) and the id's first digits.
    pub name: String,
}

impl Replica {
    /// A new identity for this process.
    pub fn new() -> Replica {
        let id = format!("{:016x}", rand::random::<u64>());
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "ghgate".into());
        Replica { name: format!("{host} ({})", &id[..6]), id }
    }
}

impl Default for Replica {
    fn default() -> Self {
        Replica::new()
    }
}

/// What one replica reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    /// The replica's id.
    pub id: String,
    /// The replica's name.
    pub name: String,
    /// When it reported, epoch seconds.
    pub at: u64,
    /// When it started, epoch seconds.
    pub started: u64,
    /// Its running totals since it started.
    pub answers: u64,
    /// Answered without a paid upstream request.
    pub local: u64,
    /// Units spent.
    pub spent: u64,
    /// Units saved.
    pub saved: u64,
    /// Its last hour, per minute.
    pub minutes: Vec<MinuteCounts>,
}

/// One minute of one replica (or the fleet).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MinuteCounts {
    /// Start of the minute, epoch seconds.
    pub start: u64,
    /// Units spent.
    pub spent: u64,
    /// Units saved.
    pub saved: u64,
    /// Answers.
    pub answers: u64,
    /// Answers without a paid upstream request.
    pub local: u64,
}

impl From<Minute> for MinuteCounts {
    fn from(m: Minute) -> MinuteCounts {
        MinuteCounts { start: m.start, spent: m.spent, saved: m.saved, answers: m.answers, local: m.local }
    }
}

/// The fleet as the shared store shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct View {
    /// Every replica seen within [`SEEN_WITHIN`], this one included, by name.
    pub replicas: Vec<Report>,
    /// The sums over those replicas.
    pub answers: u64,
    /// Answered without a paid upstream request, summed.
    pub local: u64,
    /// Units spent, summed.
    pub spent: u64,
    /// Units saved, summed.
    pub saved: u64,
    /// Per minute, summed over the replicas (oldest first).
    pub minutes: Vec<MinuteCounts>,
}

/// Publishes this replica's report and reads the fleet's.
pub struct Fleet {
    replica: Replica,
    /// The store replicas share; `None` on one node (no fleet to show).
    shared: Option<Arc<dyn Store>>,
}

impl Fleet {
    /// The fleet of `replica` in `backend` (only when other replicas share it).
    pub fn new(replica: Replica, backend: Option<Arc<dyn Store>>) -> Fleet {
        Fleet { replica, shared: backend.filter(|b| b.is_shared()) }
    }

    /// This process among the replicas.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Whether there is a fleet to show (a shared store).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Writes this replica's report (called every few seconds by upkeep). A store failure is
    /// counted and logged by the store; the view then misses this replica for a while.
    pub async fn publish(&self, started: Option<SystemTime>, totals: Totals, minutes: Vec<Minute>) {
        let Some(shared) = &self.shared else { return };
        let report = Report {
            id: self.replica.id.clone(),
            name: self.replica.name.clone(),
            at: epoch(SystemTime::now()),
            started: started.map_or(0, epoch),
            answers: totals.answers,
            local: totals.local,
            spent: totals.spent,
            saved: totals.saved,
            minutes: minutes.into_iter().map(MinuteCounts::from).collect(),
        };
        let Ok(json) = serde_json::to_vec(&report) else { return };
        let _ = shared.put_expiring(&format!("fleet:{}", self.replica.id), &json, SEEN_WITHIN).await;
    }

    /// The fleet's reports and their sums; `None` on one node, or when the store fails.
    pub async fn view(&self) -> Option<View> {
        let shared = self.shared.as_ref()?;
        let keys = shared.keys_with_prefix("fleet:").await.ok()?;
        let mut replicas = Vec::new();
        for key in keys {
            if let Ok(Some(live)) = shared.get_live(&key).await {
                if let Ok(report) = serde_json::from_slice::<Report>(&live.payload) {
                    replicas.push(report);
                }
            }
        }
        Some(View::of(replicas))
    }
}

impl View {
    /// Sums `replicas`' reports.
    pub fn of(mut replicas: Vec<Report>) -> View {
        replicas.sort_by(|a, b| a.name.cmp(&b.name));
        let mut minutes: BTreeMap<u64, MinuteCounts> = BTreeMap::new();
        for report in &replicas {
            for m in &report.minutes {
                let sum =
                    minutes.entry(m.start).or_insert(MinuteCounts { start: m.start, ..Default::default() });
                sum.spent += m.spent;
                sum.saved += m.saved;
                sum.answers += m.answers;
                sum.local += m.local;
            }
        }
        View {
            answers: replicas.iter().map(|r| r.answers).sum(),
            local: replicas.iter().map(|r| r.local).sum(),
            spent: replicas.iter().map(|r| r.spent).sum(),
            saved: replicas.iter().map(|r| r.saved).sum(),
            minutes: minutes.into_values().collect(),
            replicas,
        }
    }
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, answers: u64, minutes: &[(u64, u64)]) -> Report {
        Report {
            id: name.into(),
            name: name.into(),
            at: 0,
            started: 0,
            answers,
            local: answers / 2,
            spent: 1,
            saved: 2,
            minutes: minutes
                .iter()
                .map(|&(start, answers)| MinuteCounts { start, answers, ..Default::default() })
                .collect(),
        }
    }

    #[test]
    fn the_view_sums_replicas_and_their_minutes() {
        let view = View::of(vec![report("b", 10, &[(60, 4), (120, 6)]), report("a", 5, &[(120, 5)])]);
        assert_eq!(view.replicas.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!((view.answers, view.local, view.spent, view.saved), (15, 7, 2, 4));
        assert_eq!(
            view.minutes.iter().map(|m| (m.start, m.answers)).collect::<Vec<_>>(),
            [(60, 4), (120, 11)]
        );
    }
}
