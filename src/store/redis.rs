//! The Redis backend, for replicas that share state. One multiplexed connection (redis-rs's
//! connection manager, which reconnects by itself), every command bounded by
//! `store.redis_timeout`, every key under `store.redis_prefix` with a TTL.
//!
//! With `store.redis_cluster`, redis-rs's cluster client routes each command to its key's
//! master (following `MOVED` / `ASK` while slots migrate): every command touches one key (no
//! multi-key commands, no `KEYS`), and the admin scans visit every master.
//!
//! An outage is not an error for clients: commands fail fast, the caller treats the failure as
//! a miss, the health turns `Degraded`, `ghgate_store_errors_total` counts, and a warning is
//! logged at most every 10 s. When Redis answers again, the next command succeeds and health
//! returns to `Ok` — no restart needed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use tracing::info;

use super::failures::Failures;
use super::{Health, Store, StoreError};
use crate::config::StoreSettings;
use crate::telemetry::Metrics;

/// How long commands fail at once after a failure, before one probes Redis again.
const FAIL_FAST: Duration = Duration::from_millis(500);

/// Deletes a lock only if it still holds our fence (another holder's lock is left alone).
/// Adds to a counter and extends its expiry (never shortens it) in one step, so a counter
/// always has one.
const ADD: &str = "local v = redis.call('INCRBY', KEYS[1], ARGV[1]) \
    if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
    return v";

/// Appends an event to the replicas' log (a stream, trimmed to about `ARGV[2]` entries) and
/// keeps the log for `ARGV[3]` ms after its last event. One key: fine for Redis Cluster.
const ANNOUNCE: &str = "redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1]) \
    redis.call('PEXPIRE', KEYS[1], ARGV[3]) return 1";

/// The replicas' event log (staleness marks), under the prefix.
const EVENT_LOG: &str = "events";

/// How long one follow of the event log blocks waiting for an event.
const FOLLOW_WAIT: Duration = Duration::from_secs(1);

const UNLOCK: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// A connection to one Redis server or to a Redis Cluster: both reconnect by themselves, and
/// a cluster connection routes each command to the master of its key's slot (following
/// `MOVED` / `ASK` during a slot migration).
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Opens the connection `settings` ask for, lazily (a Redis that is down at start-up gives a
/// degraded start), with `response_timeout` for each command.
fn open(settings: &StoreSettings, urls: &str, response_timeout: Duration) -> Result<Connection, String> {
    if settings.redis_cluster {
        let seeds: Vec<&str> = urls.split(',').map(str::trim).collect();
        let client = redis::cluster::ClusterClient::builder(seeds)
            .connection_timeout(settings.redis_timeout)
            .response_timeout(response_timeout)
            .retries(1)
            .build()
            .map_err(|e| format!("not a Redis Cluster seed list ({e})"))?;
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(settings.redis_timeout)
            .set_response_timeout(response_timeout);
        return Ok(Connection::Cluster(client.get_pending_async_connection_with_config(config)));
    }
    let client = redis::Client::open(urls).map_err(|e| format!("not a Redis URL ({e})"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.redis_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config).map(Connection::Single).map_err(|e| e.to_string())
}

/// The Redis backend.
pub(crate) struct RedisStore {
    connection: Connection,
    /// The connection that waits on the event log (a blocked read holds its connection, so
    /// it gets its own).
    follower: Connection,
    prefix: String,
    timeout: Duration,
    url_for_logs: String,
    healthy: AtomicBool,
    /// When a command last failed: while Redis is failing, commands fail at once for
    /// `FAIL_FAST` instead of each waiting out the timeout (one probe gets through per period).
    last_failure: Mutex<Option<Instant>>,
    failures: Failures,
    unlock: redis::Script,
    /// `INCRBY` and `PEXPIRE` of one key, atomically (one key: fine for Redis Cluster).
    add: redis::Script,
    announce: redis::Script,
}

impl RedisStore {
    /// Prepares the connection (made lazily, so a Redis that is down at start-up gives a
    /// degraded start rather than a failed one).
    pub(crate) fn connect(settings: &StoreSettings, metrics: Arc<Metrics>) -> Result<RedisStore, String> {
        let url = settings.redis_url.as_deref().ok_or("is required when store.backend = \"redis\"")?;
        let connection = open(settings, url, settings.redis_timeout)?;
        let follower = open(settings, url, FOLLOW_WAIT + settings.redis_timeout)?;
        Ok(RedisStore {
            connection,
            follower,
            prefix: settings.redis_prefix.clone(),
            timeout: settings.redis_timeout,
            url_for_logs: redact_url(url),
            healthy: AtomicBool::new(true),
            last_failure: Mutex::new(None),
            failures: Failures::new(redact_url(url), metrics),
            unlock: redis::Script::new(UNLOCK),
            add: redis::Script::new(ADD),
            announce: redis::Script::new(ANNOUNCE),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Whether to skip Redis for now (it failed within `FAIL_FAST`); lets one caller per
    /// period through as a probe.
    fn failing_fast(&self) -> bool {
        if self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let mut last = self.last_failure.lock().expect("failure clock poisoned");
        match *last {
            Some(t) if t.elapsed() < FAIL_FAST => true,
            _ => {
                // This caller probes; the others keep failing fast until it reports.
                *last = Some(Instant::now());
                false
            }
        }
    }

    /// Runs one command with the timeout, recording health.
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        if self.failing_fast() {
            return Err(StoreError("Redis is failing; skipped".into()));
        }
        let mut connection = self.connection.clone();
        let result = tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut connection)).await;
        self.settle(result)
    }

    /// Runs one script invocation like [`RedisStore::run`] runs a command.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        if self.failing_fast() {
            return Err(StoreError("Redis is failing; skipped".into()));
        }
        let mut connection = self.connection.clone();
        let result = tokio::time::timeout(self.timeout, invocation.invoke_async::<T>(&mut connection)).await;
        self.settle(result)
    }

    /// A cluster's masters that are not marked failing, as `(host, port)` (from `CLUSTER NODES`).
    async fn masters(&self) -> Result<Vec<(String, u16)>, StoreError> {
        let nodes: String = self.run(redis::cmd("CLUSTER").arg("NODES").to_owned()).await?;
        Ok(nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let flags = fields.get(2)?;
                if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                    return None;
                }
                // `host:port@cport[,hostname]`
                let address = fields.get(1)?.split(['@', ',']).next()?;
                let (host, port) = address.rsplit_once(':')?;
                Some((host.to_string(), port.parse().ok()?))
            })
            .collect())
    }

    /// Runs one command on the cluster node at `address`, with the timeout, recording health.
    async fn run_on<T: redis::FromRedisValue>(
        &self,
        address: &(String, u16),
        cmd: redis::Cmd,
    ) -> Result<T, StoreError> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let Connection::Cluster(connection) = &self.connection else { return self.run(cmd).await };
        let mut connection = connection.clone();
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: address.0.clone(),
            port: address.1,
        });
        let result = tokio::time::timeout(self.timeout, async {
            let value = connection.route_command(cmd, routing).await?;
            redis::from_redis_value::<T>(value).map_err(redis::RedisError::from)
        })
        .await;
        self.settle(result)
    }

    fn settle<T>(
        &self,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        let error = match result {
            Ok(Ok(value)) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    info!(redis = %self.url_for_logs, "Redis answers again; sharing state");
                }
                return Ok(value);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        self.healthy.store(false, Ordering::Relaxed);
        *self.last_failure.lock().expect("failure clock poisoned") = Some(Instant::now());
        Err(self.failures.failed("Redis is failing; serving without shared state", error))
    }
}

/// Escapes Redis glob characters so a prefix matches literally.
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `redis://user:password@host` → `redis://host`: credentials never reach a log (each of a
/// cluster's comma-separated seeds).
fn redact_url(urls: &str) -> String {
    urls.split(',').map(|url| redact_one(url.trim())).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => "<redis url>".into(),
    }
}

impl Store for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        async move {
            let value: Option<Vec<u8>> = self.run(redis::cmd("GET").arg(self.key(key)).to_owned()).await?;
            Ok(value.map(Bytes::from))
        }
        .boxed()
    }

    fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let millis = ttl.as_millis().max(1) as u64;
            let cmd =
                redis::cmd("SET").arg(self.key(key)).arg(value.as_ref()).arg("PX").arg(millis).to_owned();
            self.run::<()>(cmd).await
        }
        .boxed()
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move { self.run::<()>(redis::cmd("DEL").arg(self.key(key)).to_owned()).await }.boxed()
    }

    fn add<'a>(&'a self, key: &'a str, delta: i64, ttl: Duration) -> BoxFuture<'a, Result<i64, StoreError>> {
        async move {
            let mut invocation = self.add.key(self.key(key));
            invocation.arg(delta).arg(ttl.as_millis().max(1) as u64);
            self.invoke(invocation).await
        }
        .boxed()
    }

    fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            // SCAN, never KEYS: it does not block Redis on a large keyspace. A cluster's keys
            // are spread over its masters: each is scanned.
            let nodes = match &self.connection {
                Connection::Single(_) => vec![None],
                Connection::Cluster(_) => self.masters().await?.into_iter().map(Some).collect(),
            };
            let pattern = format!("{}{}*", self.prefix, escape_glob(prefix));
            let mut keys = Vec::new();
            for node in nodes {
                let mut cursor: u64 = 0;
                loop {
                    let cmd = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(500)
                        .to_owned();
                    let (next, batch): (u64, Vec<String>) = match &node {
                        None => self.run(cmd).await?,
                        Some(address) => self.run_on(address, cmd).await?,
                    };
                    keys.extend(
                        batch.into_iter().filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string)),
                    );
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Ok(keys)
        }
        .boxed()
    }

    fn try_lock<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        async move {
            let fence: u64 = rand::random();
            let millis = ttl.as_millis().max(1) as u64;
            let cmd = redis::cmd("SET")
                .arg(self.key(key))
                .arg(fence.to_string())
                .arg("NX")
                .arg("PX")
                .arg(millis)
                .to_owned();
            let taken: Option<String> = self.run(cmd).await?;
            Ok(taken.map(|_| fence))
        }
        .boxed()
    }

    fn unlock<'a>(&'a self, key: &'a str, fence: u64) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut invocation = self.unlock.key(self.key(key));
            invocation.arg(fence.to_string());
            self.invoke::<i64>(invocation).await.map(|_| ())
        }
        .boxed()
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn announce<'a>(&'a self, event: &'a [u8]) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut invocation = self.announce.key(self.key(EVENT_LOG));
            invocation.arg(event).arg(super::EVENT_LOG_LENGTH).arg(super::EVENT_LOG_TTL.as_millis() as u64);
            self.invoke::<i64>(invocation).await.map(|_| ())
        }
        .boxed()
    }

    fn follow<'a>(&'a self, cursor: Option<&'a str>) -> BoxFuture<'a, Result<super::Followed, StoreError>> {
        async move {
            use redis::streams::{StreamReadOptions, StreamReadReply};
            let from = cursor.unwrap_or("0");
            let options = StreamReadOptions::default().count(1000).block(FOLLOW_WAIT.as_millis() as usize);
            let mut connection = self.follower.clone();
            let read = tokio::time::timeout(
                FOLLOW_WAIT + self.timeout,
                redis::AsyncCommands::xread_options::<_, _, Option<StreamReadReply>>(
                    &mut connection,
                    &[self.key(EVENT_LOG)],
                    &[from],
                    &options,
                ),
            )
            .await;
            // Not `settle`: a follower failing is the follower's business (it retries), and the
            // commands on the main connection report Redis's health.
            let reply = match read {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => return Err(StoreError(e.to_string())),
                Err(_) => return Err(StoreError("no answer from the event log".into())),
            };
            let mut followed = super::Followed { events: Vec::new(), cursor: cursor.map(str::to_string) };
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                if let Some(Ok(payload)) = entry.map.get("e").map(redis::from_redis_value_ref::<Vec<u8>>) {
                    followed.events.push(Bytes::from(payload));
                }
                followed.cursor = Some(entry.id);
            }
            Ok(followed)
        }
        .boxed()
    }

    fn health(&self) -> Health {
        if self.healthy.load(Ordering::Relaxed) {
            Health::Ok
        } else {
            Health::Degraded(format!(
                "Redis at {} is failing; serving without shared state",
                self.url_for_logs
            ))
        }
    }

    fn maintain(&self) -> BoxFuture<'_, ()> {
        async move {
            // A cheap probe, so health recovers even when no request touches the store.
            let _ = self.run::<String>(redis::cmd("PING").to_owned()).await;
        }
        .boxed()
    }

    fn size_bytes(&self) -> u64 {
        0
    }

    fn entry_count(&self) -> u64 {
        0
    }

    fn location(&self) -> String {
        format!("redis {} (prefix {:?})", self.url_for_logs, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tls_urls_are_accepted() {
        let settings =
            StoreSettings { redis_url: Some("rediss://cache.example:6380".into()), ..Default::default() };
        assert!(RedisStore::connect(&settings, Metrics::new()).is_ok(), "this build speaks TLS to Redis");
    }

    #[test]
    fn credentials_are_removed_from_urls_for_logs() {
        assert_eq!(redact_url("redis://user:hunter2@cache:6379/0"), "redis://cache:6379/0");
        assert!(!redact_url("rediss://:hunter2@cache").contains("hunter2"));
    }
}
