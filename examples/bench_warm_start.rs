//! How long the disk store takes to open on a data directory of N entries (the index is
//! rebuilt by one scan), against the time to open an empty one in the same run.
//!
//! `cargo run --release --example bench_warm_start -- 100000`

use std::time::{Duration, Instant, SystemTime};

use ghgate::store::{DiskStore, Store, frame};
use ghgate::telemetry::Metrics;

#[tokio::main]
async fn main() {
    let entries: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let body = vec![b'x'; 2000];
    {
        let store = DiskStore::open(dir.path(), 4 << 30, Metrics::new()).unwrap();
        let started = Instant::now();
        for i in 0..entries {
            let value = frame(&body, SystemTime::now() + Duration::from_secs(86_400));
            store.put(&format!("r:{i:032x}"), value, Duration::from_secs(86_400)).await.unwrap();
        }
        println!("wrote {entries} entries of {} bytes in {:?}", body.len(), started.elapsed());
    }
    let started = Instant::now();
    drop(DiskStore::open(empty.path(), 4 << 30, Metrics::new()).unwrap());
    let baseline = started.elapsed();
    let started = Instant::now();
    let store = DiskStore::open(dir.path(), 4 << 30, Metrics::new()).unwrap();
    let warm = started.elapsed();
    store.maintain().await;
    println!("| data directory | open time |");
    println!("|---|---:|");
    println!("| empty (baseline) | {baseline:?} |");
    println!(
        "| {} entries | {warm:?} ({:.0}× baseline) |",
        store.entry_count(),
        warm.as_secs_f64() / baseline.as_secs_f64()
    );
}
