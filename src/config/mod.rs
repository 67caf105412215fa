//! Typed settings: defaults, then a TOML file, then `GHGATE_<SECTION>__<KEY>` environment
//! variables, then command-line flags — each layer wins over the one before.
//!
//! Every failure names the key that is wrong and where its value came from, because an
//! operator staring at a crash-looping pod has nothing else to go on.
//!
//! This module is data at the bottom of the house: the settings (here), their layering
//! (`load`), the relations between keys (`validate`) and value formats (`formats`). Checks
//! that need another module's code — an app's private key, a negative rule — belong to that
//! module and are gathered by `server::check_settings`.

mod formats;
mod graphql;
mod load;
mod reload;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

pub use formats::{human_size, parse_duration, parse_size};
pub use graphql::{GraphqlRule, GraphqlSettings};
pub use load::Overrides;
pub use reload::{Changes, RELOADABLE_KEYS, SettingsSource};

use crate::path_pattern::PathPattern;
use formats::{de_opt_string, de_opt_url, de_string, duration, opt_duration, ser_redacted, size};

/// Everything ghgate can be told, grouped the way the TOML file is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Listeners and request-level identity settings.
    pub server: ServerSettings,
    /// Where GitHub is and how patiently to talk to it.
    pub upstream: UpstreamSettings,
    /// What is cached and for how long.
    pub cache: CacheSettings,
    /// Where state lives.
    pub store: StoreSettings,
    /// How logs look.
    pub log: LogSettings,
    /// How the GitHub App broker mints and shares installation tokens.
    pub broker: BrokerSettings,
    /// Futile-request protection: answers remembered so they are not bought twice.
    pub negative: NegativeSettings,
    /// Rate-limit governance.
    pub limits: LimitsSettings,
    /// The inbound limiter.
    pub inbound: InboundSettings,
    /// CORS for browser clients.
    pub cors: CorsSettings,
    /// The webhook receiver.
    pub webhooks: WebhookSettings,
    /// `POST /graphql`: the points ledger, coalescing, opt-in caching.
    pub graphql: GraphqlSettings,
    /// GitHub Apps whose installation tokens the gateway mints (`[[apps]]`).
    pub apps: Vec<AppSettings>,
    /// Gateway clients that use those apps through a client key (`[[clients]]`).
    pub clients: Vec<ClientSettings>,
}

/// `[limits]`: rate-limit governance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// Save the budget: below the reserve serve stale reads, at zero answer locally.
    pub protect_budget: bool,
    /// Share of an identity's limit kept in reserve, in percent.
    pub reserve_percent: f64,
    /// Hold an identity back after a secondary limit until GitHub says it may come back.
    pub honor_secondary_limits: bool,
    /// How long to hold back when GitHub gave no `retry-after` (GitHub asks for at least 60 s).
    #[serde(with = "duration")]
    pub secondary_limit_wait: Duration,
    /// At most this many requests of one identity upstream at once (GitHub allows 100); 0 = off.
    pub max_concurrent_per_identity: usize,
    /// Requests of one identity waiting for a slot beyond this many get a 503.
    pub max_queued_per_identity: usize,
    /// Space one identity's mutating requests at least this far apart (GitHub asks for about
    /// 1 s); 0 = off.
    #[serde(with = "duration")]
    pub write_spacing: Duration,
}

/// `[inbound]`: the limiter in front of everything.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundSettings {
    /// Whether clients are rate-limited at all.
    pub limit_enabled: bool,
    /// Sustained requests per second per client (its credential, else its address).
    pub requests_per_second: u32,
    /// Requests a client may send at once above the sustained rate.
    pub burst: u32,
    /// Believe `CF-Connecting-IP` from trusted proxies (behind Cloudflare).
    pub cf_connecting_ip: bool,
    /// After GitHub refuses a client's credential with 401, further requests with it are
    /// answered 401 here for this long (per replica). 0 (default) turns it off: a token GitHub
    /// has not replicated yet is refused for a moment (lesson two of the design brief), and a
    /// valid token must never be refused by the gateway for longer than GitHub refuses it.
    #[serde(with = "duration")]
    pub refused_credential_ttl: Duration,
}

impl Default for InboundSettings {
    fn default() -> Self {
        Self {
            limit_enabled: true,
            requests_per_second: 500,
            burst: 1000,
            cf_connecting_ip: false,
            refused_credential_ttl: Duration::ZERO,
        }
    }
}

/// `[webhooks]`: the receiver at `POST /_ghgate/webhook` on the proxy listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// The webhook secrets (several during a rotation); none turns the receiver off.
    #[serde(serialize_with = "ser_redacted_list")]
    pub secrets: Vec<String>,
    /// Deliveries larger than this are refused with 413 (GitHub caps payloads at 25 MB).
    #[serde(with = "size")]
    pub max_body_bytes: u64,
    /// Entries of repositories that sent a delivery within `coverage_window` are fresh for at
    /// least this long (a change would have invalidated them). Zero (default) turns it off.
    #[serde(with = "duration")]
    pub covered_freshness: Duration,
    /// How recently a repository must have sent a delivery to count as covered.
    #[serde(with = "duration")]
    pub coverage_window: Duration,
    /// A delivery's body must arrive within this long of its head (a body trickled slower is
    /// answered 408, its memory freed).
    #[serde(with = "duration")]
    pub read_timeout: Duration,
    /// Deliveries whose bodies are read at once, at most (each may hold up to
    /// `max_body_bytes` until its signature is checked); others wait their turn.
    pub max_concurrent: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            max_body_bytes: 25 * 1024 * 1024,
            covered_freshness: Duration::ZERO,
            coverage_window: Duration::from_secs(24 * 3600),
            read_timeout: Duration::from_secs(30),
            max_concurrent: 4,
        }
    }
}

fn ser_redacted_list<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|_| "<redacted>"))
}

/// `[cors]`: which browser origins may call the gateway.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsSettings {
    /// Allowed origins (`https://app.example.com`, or `*`); empty turns CORS off.
    pub allowed_origins: Vec<String>,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            protect_budget: true,
            reserve_percent: 5.0,
            honor_secondary_limits: true,
            secondary_limit_wait: Duration::from_secs(60),
            max_concurrent_per_identity: 50,
            max_queued_per_identity: 200,
            write_spacing: Duration::ZERO,
        }
    }
}

/// `[negative]`: the negative cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NegativeSettings {
    /// Off turns every rule off.
    pub enabled: bool,
    /// The built-in rule for GitHub's 1000-statuses-per-SHA-and-context limit.
    pub statuses_limit: StatusesLimitSettings,
    /// The built-in rule for GET answers 404 and 410.
    pub not_found: NotFoundSettings,
    /// Operator rules (`[[negative.rules]]`), checked after the built-in ones.
    pub rules: Vec<NegativeRuleSettings>,
}

impl Default for NegativeSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            statuses_limit: StatusesLimitSettings::default(),
            not_found: NotFoundSettings::default(),
            rules: Vec::new(),
        }
    }
}

/// `[negative.statuses_limit]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusesLimitSettings {
    /// Whether the rule is on.
    pub enabled: bool,
    /// How long a SHA and context are remembered as full.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// What later posts get: the recorded 422 (`replay`) or a `success` answer for clients
    /// that treat the limit as done.
    pub answer: NegativeAnswer,
}

impl Default for StatusesLimitSettings {
    fn default() -> Self {
        Self { enabled: true, ttl: Duration::from_secs(24 * 3600), answer: NegativeAnswer::Replay }
    }
}

/// How a remembered answer is given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NegativeAnswer {
    /// Exactly the recorded answer.
    Replay,
    /// A `201 Created` with a body saying the request was not sent.
    Success,
}

/// `[negative.not_found]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotFoundSettings {
    /// Whether the rule is on.
    pub enabled: bool,
    /// How long a 404 / 410 is remembered, per credential partition.
    #[serde(with = "duration")]
    pub ttl: Duration,
}

impl Default for NotFoundSettings {
    fn default() -> Self {
        Self { enabled: true, ttl: Duration::from_secs(30) }
    }
}

/// `[[negative.rules]]`: an operator rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NegativeRuleSettings {
    /// A name for metrics and clearing: lower-case letters, digits, `-` and `_`.
    #[serde(deserialize_with = "de_string")]
    pub name: String,
    /// Whether the rule is on.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The request method, e.g. `POST`.
    #[serde(deserialize_with = "de_string")]
    pub method: String,
    /// The path pattern, e.g. `/repos/{owner}/{repo}/hooks/{id}/tests`.
    pub path: PathPattern,
    /// The answer statuses that are remembered.
    pub status: Vec<u16>,
    /// A phrase the answer body must contain (case-insensitive), if any.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub phrase: Option<String>,
    /// What identifies one remembered answer: path parameters (`owner`) and JSON body fields
    /// (`body.context`, with an optional default: `body.context=default`).
    pub key: Vec<String>,
    /// How long an answer is remembered.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Remember per credential partition (true) or for everyone (false).
    #[serde(default)]
    pub per_credential: bool,
}

fn default_true() -> bool {
    true
}

/// `[broker]`: installation-token policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    /// Whether requests carrying their own GitHub token (not a client key) are forwarded.
    pub allow_pass_through: bool,
    /// A token is replaced this long before its `expires_at`.
    #[serde(with = "duration")]
    pub token_refresh_buffer: Duration,
    /// How a freshly minted token is first used: `retry` uses it at once and, on a 401 within
    /// `settle_delay`, waits `settle_retry_interval` and tries again; `wait` holds every
    /// request until `settle_delay` has passed since the mint.
    pub fresh_token_strategy: FreshTokenStrategy,
    /// How long GitHub may take to accept a new token everywhere (GitHub Support: about 2 s).
    #[serde(with = "duration")]
    pub settle_delay: Duration,
    /// Pause between tries of a token that is not accepted yet (`retry` strategy).
    #[serde(with = "duration")]
    pub settle_retry_interval: Duration,
    /// How long "app not installed on this owner" is remembered. Zero turns it off.
    #[serde(with = "duration")]
    pub not_installed_ttl: Duration,
    /// How long an owner's installation id is remembered.
    #[serde(with = "duration")]
    pub installation_ttl: Duration,
    /// At most one forced re-mint (after GitHub rejected a cached token) per installation in
    /// this interval, so a revoked app cannot cause a storm of mints.
    #[serde(with = "duration")]
    pub remint_min_interval: Duration,
    /// Request bodies up to this size are buffered so a request can be retried with a fresh
    /// token; larger ones stream and are not retried.
    #[serde(with = "size")]
    pub retry_body_max_bytes: u64,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            allow_pass_through: true,
            token_refresh_buffer: Duration::from_secs(300),
            fresh_token_strategy: FreshTokenStrategy::Retry,
            settle_delay: Duration::from_secs(2),
            settle_retry_interval: Duration::from_millis(250),
            not_installed_ttl: Duration::from_secs(60),
            installation_ttl: Duration::from_secs(3600),
            remint_min_interval: Duration::from_secs(30),
            retry_body_max_bytes: 1 << 20,
        }
    }
}

/// How a freshly minted installation token is first used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FreshTokenStrategy {
    /// Use at once; retry briefly on a 401 inside the settle window.
    Retry,
    /// Hold requests until the settle window has passed.
    Wait,
}

/// `[[apps]]`: one GitHub App.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// The name clients refer to.
    #[serde(deserialize_with = "de_string")]
    pub name: String,
    /// The numeric app id (the JWT `iss`); or use `client_id`.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub app_id: Option<String>,
    /// The app's client id (`Iv1.…`), accepted by GitHub as the JWT `iss` too.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub client_id: Option<String>,
    /// A PEM file with the app's private key (PKCS#1 as GitHub hands it out, or PKCS#8).
    #[serde(default)]
    pub private_key_path: Option<PathBuf>,
    /// The name of an environment variable holding the PEM instead.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub private_key_env: Option<String>,
}

/// `[[clients]]`: one gateway client of the broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// A name for logs and metrics.
    #[serde(deserialize_with = "de_string")]
    pub name: String,
    /// Hex SHA-256 of the client key (`ghgate gen-client-key` prints both).
    #[serde(deserialize_with = "de_string")]
    pub key_sha256: String,
    /// The `[[apps]]` name whose tokens this client uses.
    #[serde(deserialize_with = "de_string")]
    pub app: String,
    /// Owners (users or organisations) it may reach; empty means every installation.
    #[serde(default)]
    pub owners: Vec<String>,
    /// Down-scoped permissions for its tokens, e.g. `{ contents = "read" }`; empty means the
    /// installation's full permissions.
    #[serde(default)]
    pub permissions: std::collections::BTreeMap<String, String>,
}

/// `[server]`: listeners, the public address clients use, and the deployment secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// The proxy listener; loopback by default so nothing is exposed by accident.
    pub listen: SocketAddr,
    /// The admin listener (metrics, health); kept apart so it is never exposed with the proxy.
    pub admin_listen: SocketAddr,
    /// The base URL clients reach the gateway at, used to rewrite `Link` and `Location`.
    /// When unset it is derived from each request's `Host` (or a trusted proxy's `Forwarded`).
    #[serde(deserialize_with = "de_opt_url")]
    pub public_url: Option<Url>,
    /// Rewrite upstream URLs at the start of JSON strings in bodies (`url`, `issues_url`, ...)
    /// to the public base too, so clients that follow them stay behind the gateway.
    pub rewrite_body_urls: bool,
    /// Peers whose `Forwarded` / `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Key for the credential partition hash. Generated and kept in `store.data_dir` when unset.
    #[serde(deserialize_with = "de_opt_string", serialize_with = "ser_redacted")]
    pub secret: Option<String>,
    /// Bearer token the admin API requires; mandatory when `admin_listen` is not loopback.
    #[serde(deserialize_with = "de_opt_string", serialize_with = "ser_redacted")]
    pub admin_token: Option<String>,
    /// How long a client may take to send its request headers before the connection is
    /// dropped (slow-header attacks).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Largest request header block accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// Largest request body forwarded upstream; larger ones get 413 (GitHub's own largest,
    /// a 100 MB blob, fits the default).
    #[serde(with = "size")]
    pub max_body_bytes: u64,
    /// After SIGTERM, how long the gateway keeps accepting and serving (with `/readyz` at 503
    /// and `Connection: close` on every answer) so load balancers stop sending before the
    /// listener closes. Ctrl-C (SIGINT) and a second SIGTERM skip it.
    #[serde(with = "duration")]
    pub shutdown_delay: Duration,
    /// How long in-flight requests may run once the listener has closed before they are cut
    /// off.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Threads serving proxy connections, each with its own single-threaded runtime; 0 means
    /// one per CPU.
    pub workers: usize,
    /// Open connections per listener at most; past it, new connections wait in the kernel's
    /// backlog. Keep it under the process's descriptor limit (`ulimit -n`).
    pub max_connections: usize,
    /// How long an idle HTTP/2 connection may go without answering a ping before it is closed.
    #[serde(with = "duration")]
    pub http2_keep_alive: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            public_url: None,
            rewrite_body_urls: true,
            trusted_proxies: Vec::new(),
            secret: None,
            admin_token: None,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_body_bytes: 100 * 1024 * 1024,
            shutdown_delay: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            workers: 0,
            max_connections: 10_000,
            http2_keep_alive: Duration::from_secs(60),
        }
    }
}

impl ServerSettings {
    /// The worker count `server.workers` asks for: 0 means one per CPU.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

/// `[upstream]`: the GitHub API base URL and time limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSettings {
    /// Base URL of the API; for GitHub Enterprise Server it ends in `/api/v3`.
    pub url: Url,
    /// Longest time to wait for an upstream answer's headers and for each body chunk.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Longest time to wait for a TCP + TLS connection.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            url: Url::parse("https://api.github.com").expect("static URL"),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// `[cache]`: the response cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Off turns ghgate into a plain forwarding proxy (every answer is `BYPASS`).
    pub enabled: bool,
    /// Upper bound of the in-memory store, weighted by entry size.
    #[serde(with = "size")]
    pub max_bytes: u64,
    /// Bodies larger than this are streamed through and never cached.
    #[serde(with = "size")]
    pub max_body_bytes: u64,
    /// How long an entry is kept after it went stale, so it can still be revalidated for free.
    #[serde(with = "duration")]
    pub retain_stale: Duration,
    /// RFC 5861 window in which a stale entry is served at once while one background
    /// revalidation runs. Zero turns it off.
    #[serde(with = "duration")]
    pub stale_while_revalidate: Duration,
    /// RFC 5861 window in which a stale entry is served when upstream fails.
    #[serde(with = "duration")]
    pub stale_if_error: Duration,
    /// How long a read with a stale entry servable under `stale_if_error` waits for GitHub
    /// before it gets the stale entry (the revalidation goes on in the background). Zero
    /// waits the whole `upstream.timeout`.
    #[serde(with = "duration")]
    pub stale_if_slow: Duration,
    /// Path prefixes that are never cached (always `BYPASS`).
    pub bypass_paths: Vec<String>,
    /// Per-path freshness overrides; the first matching rule wins.
    pub rules: Vec<FreshnessRule>,
    /// Compute GitHub's ETag for bodies already held (by any credential) and offer them on
    /// misses and revalidations, so one credential's fetch makes the fleet's next reads free
    /// 304s (see `cache::etag`). Off: only an entry's own stored validators are sent.
    pub computed_validators: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 256 * 1024 * 1024,
            max_body_bytes: 8 * 1024 * 1024,
            retain_stale: Duration::from_secs(24 * 3600),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::from_secs(300),
            stale_if_slow: Duration::from_secs(1),
            bypass_paths: vec!["/rate_limit".into(), "/graphql".into()],
            rules: Vec::new(),
            computed_validators: true,
        }
    }
}

/// `[[cache.rules]]`: freshness bounds for the paths matching a pattern.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshnessRule {
    /// Pattern such as `/repos/{owner}/{repo}/contents/**`; `{x}` and `*` match one
    /// segment, a final `**` matches the rest.
    pub path: PathPattern,
    /// Serve at least this long without revalidating, whatever upstream says
    /// (unless upstream says `no-cache`, `no-store` or the answer is not storable).
    #[serde(default, with = "opt_duration")]
    pub min_fresh: Option<Duration>,
    /// Never serve longer than this without revalidating.
    #[serde(default, with = "opt_duration")]
    pub max_fresh: Option<Duration>,
    /// Overrides `cache.stale_while_revalidate` for these paths.
    #[serde(default, with = "opt_duration")]
    pub stale_while_revalidate: Option<Duration>,
    /// Overrides `cache.stale_if_error` for these paths.
    #[serde(default, with = "opt_duration")]
    pub stale_if_error: Option<Duration>,
}

/// `[store]`: where state lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// Which backend holds state.
    pub backend: StoreBackend,
    /// Directory for state that must survive restarts: the generated secret, and the disk
    /// store under `cache/`.
    pub data_dir: PathBuf,
    /// The in-memory tier in front of the disk or Redis backend.
    #[serde(with = "size")]
    pub hot_max_bytes: u64,
    /// `redis://[user:password@]host[:port][/db]` (or `rediss://`) for `backend = "redis"`;
    /// with `redis_cluster`, one or more seed nodes separated by commas.
    #[serde(deserialize_with = "de_opt_string", serialize_with = "ser_redacted")]
    pub redis_url: Option<String>,
    /// Talk to a Redis Cluster (slots spread over several masters) rather than one server.
    pub redis_cluster: bool,
    /// Namespace of every key ghgate writes, so several deployments can share one Redis.
    #[serde(deserialize_with = "de_string")]
    pub redis_prefix: String,
    /// Longest wait for one Redis command (and for a connection); keep it short: on expiry
    /// the request goes on without Redis.
    #[serde(with = "duration")]
    pub redis_timeout: Duration,
    /// How long a replica waits for another replica's fetch, mint or look-up of the same key
    /// before it goes upstream itself.
    #[serde(with = "duration")]
    pub lock_wait: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Disk,
            data_dir: PathBuf::from("./ghgate-data"),
            hot_max_bytes: 64 * 1024 * 1024,
            redis_url: None,
            redis_prefix: "ghgate:".into(),
            redis_cluster: false,
            redis_timeout: Duration::from_millis(250),
            lock_wait: Duration::from_secs(5),
        }
    }
}

/// The store backends this build knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Bounded in-process memory; lost on restart.
    Memory,
    /// The embedded disk store under `store.data_dir`, with a memory tier: survives restarts.
    Disk,
    /// Redis, shared by every replica, with a memory tier.
    Redis,
}

/// `[log]`: log format and filter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `ghgate=debug,info`; `RUST_LOG` wins when set.
    #[serde(deserialize_with = "de_string")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A settings problem, already phrased for the operator: `key: what is wrong (where from)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, such as `cache.max_bytes`; empty when the problem is not about one key.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// All problems found in one load, so an operator fixes them in one go.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "invalid setting {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
