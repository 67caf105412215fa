//! The GitHub App broker: clients present a gateway client key; ghgate finds the app's
//! installation for the owner they address, mints (or reuses) one installation token per
//! (app, installation, permission set), and sends their request with it.
//!
//! Lesson two of the design brief is why this is careful: one token per call caused
//! transient 403s, wasted quota and thundering herds. Here look-ups and mints are cached and
//! coalesced, tokens are used until shortly before they expire, a token GitHub has not
//! replicated yet is retried rather than shown to the client, and a token GitHub rejects is
//! replaced once — with re-mints per installation rate-limited.

mod jwt;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

pub use jwt::AppSigner;

use crate::coalesce::Coalescer;
use crate::config::{BrokerSettings, FreshTokenStrategy, Settings};
use crate::negative::NegativeCache;
use crate::store::{self, Sealer, Store};
use crate::telemetry::Metrics;
use crate::upstream::{Upstream, UpstreamError};

/// Client keys start with this, so they can be told apart from GitHub tokens.
pub const CLIENT_KEY_PREFIX: &str = "ghgate_";

/// Names the installation of a request whose path names no owner: an owner or an id.
pub const INSTALLATION_HEADER: HeaderName = HeaderName::from_static("x-ghgate-installation");

/// A refusal the broker gives before anything goes upstream.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// HTTP status for the client.
    pub status: StatusCode,
    /// GitHub-shaped message.
    pub message: String,
}

impl Rejection {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Rejection { status, message: message.into() }
    }
}

/// One configured app.
#[derive(Debug)]
pub struct App {
    /// Signs the app's JWTs.
    pub signer: AppSigner,
}

impl App {
    /// The configured name.
    pub fn name(&self) -> &str {
        &self.signer.name
    }
}

/// Down-scoped permissions, kept sorted so equal sets hash equally.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Permissions {
    map: BTreeMap<String, String>,
    /// Short stable id of the set, for keys and partitions.
    pub id: String,
}

impl Permissions {
    fn new(map: BTreeMap<String, String>) -> Option<Arc<Permissions>> {
        if map.is_empty() {
            return None;
        }
        let text = serde_json::to_string(&map).unwrap_or_default();
        let id = hex::encode(&Sha256::digest(text.as_bytes())[..4]);
        Some(Arc::new(Permissions { map, id }))
    }
}

struct Client {
    name: String,
    key_hash: [u8; 32],
    app: Arc<App>,
    owners: Vec<String>,
    permissions: Option<Arc<Permissions>>,
}

/// Which installation a request means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/repos/{owner}/{repo}/...`
    Repo(String, String),
    /// `/orgs/{org}/...`
    Org(String),
    /// `/users/{user}/...`
    User(String),
    /// `x-ghgate-installation: <owner>`
    Owner(String),
    /// `x-ghgate-installation: <id>`
    Id(u64),
}

impl Target {
    fn owner(&self) -> Option<&str> {
        match self {
            Target::Repo(o, _) | Target::Org(o) | Target::User(o) | Target::Owner(o) => Some(o),
            Target::Id(_) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Repo(o, r) => format!("{o}/{r}"),
            Target::Org(o) | Target::User(o) | Target::Owner(o) => o.clone(),
            Target::Id(id) => format!("installation {id}"),
        }
    }
}

/// Who a request acts as.
#[derive(Debug, Clone)]
pub enum Identity {
    /// Its own credential (or none): forwarded as it is.
    PassThrough,
    /// A broker client: acts as an app installation.
    App(AppRequest),
}

/// A broker client's request, before its installation is known.
#[derive(Debug, Clone)]
pub struct AppRequest {
    /// The app it uses.
    pub app: Arc<App>,
    /// The client's configured name (for logs).
    pub client: String,
    /// The installation it addresses.
    pub target: Target,
    /// Down-scoped permissions, if the client has them.
    pub permissions: Option<Arc<Permissions>>,
}

/// A resolved app identity: what the request's token is minted for.
#[derive(Debug, Clone)]
pub struct AppAuth {
    /// The app.
    pub app: Arc<App>,
    /// The installation id.
    pub installation: u64,
    /// Down-scoped permissions, if any.
    pub permissions: Option<Arc<Permissions>>,
}

impl AppAuth {
    fn token_key(&self) -> TokenKey {
        TokenKey {
            app: self.app.name().to_string(),
            installation: self.installation,
            permissions: self.permissions.as_ref().map(|p| p.id.clone()).unwrap_or_default(),
        }
    }

    /// The cache partition of everything fetched with this identity: shared by every client
    /// of the installation (with the same permissions), never by another installation.
    pub fn partition_id(&self) -> String {
        match &self.permissions {
            None => format!("i-{}-{}", self.app.name(), self.installation),
            Some(p) => format!("i-{}-{}-{}", self.app.name(), self.installation, p.id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    app: String,
    installation: u64,
    permissions: String,
}

impl TokenKey {
    /// The store key of the token.
    fn store_key(&self) -> String {
        format!("t:{}:{}:{}", self.app, self.installation, self.permissions)
    }
}

/// An installation token. `Debug` never shows its value.
pub struct InstallationToken {
    value: String,
    /// When GitHub says it expires.
    pub expires_at: SystemTime,
    /// When it was minted (for the settle window).
    pub minted_at: Instant,
    /// A fingerprint (not the token) telling tokens apart, e.g. which one fetched an entry.
    pub tag: u64,
}

impl fmt::Debug for InstallationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallationToken").field("tag", &format_args!("{:016x}", self.tag)).finish()
    }
}

impl InstallationToken {
    fn new(value: String, expires_at: SystemTime, minted_at: Instant) -> Self {
        let tag = u64::from_be_bytes(Sha256::digest(value.as_bytes())[..8].try_into().expect("8 bytes"));
        InstallationToken { value, expires_at, minted_at, tag }
    }

    /// The `Authorization` value to send upstream.
    pub fn authorization(&self) -> HeaderValue {
        let mut v =
            HeaderValue::from_str(&format!("token {}", self.value)).unwrap_or(HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    }
}

#[derive(Debug, Clone, Copy)]
enum Lookup {
    Found(u64),
    NotInstalled,
}

type LookupResult = Result<LookedUp, Arc<Rejection>>;

/// A look-up's answer and what it asked about (`repo:o/r` or `owner:o`).
#[derive(Debug, Clone)]
struct LookedUp {
    lookup: Lookup,
    asked: String,
}

fn target_key(target: &Target) -> String {
    match target {
        Target::Repo(o, r) => format!("repo:{}/{}", o.to_ascii_lowercase(), r.to_ascii_lowercase()),
        other => format!("owner:{}", other.owner().unwrap_or_default().to_ascii_lowercase()),
    }
}
type MintResult = Result<Arc<InstallationToken>, Arc<Rejection>>;

/// The broker: apps, clients, installation look-ups and the token cache.
pub struct Broker {
    settings: BrokerSettings,
    clients: Vec<Client>,
    has_clients: bool,
    upstream: Upstream,
    /// (app, look-up key) → installation, or "not installed".
    installations: moka::sync::Cache<(String, String), Lookup>,
    lookups: Coalescer<(String, String), LookupResult>,
    tokens: moka::sync::Cache<TokenKey, Arc<InstallationToken>>,
    mints: Coalescer<TokenKey, MintResult>,
    /// When a token was last replaced because GitHub rejected it, per installation.
    forced_remints: moka::sync::Cache<TokenKey, Instant>,
    /// The store backend: tokens (sealed) and look-ups persist there and, on Redis, are
    /// shared by every replica.
    backend: Option<Arc<dyn Store>>,
    /// "Not installed" lives in the negative cache (rule `app_not_installed`), so replicas
    /// share it and operators clear it like any other negative entry.
    negative: Arc<NegativeCache>,
    sealer: Arc<Sealer>,
    hold: Duration,
    settings_wait: Duration,
    /// Every configured app's name (for forgetting an installation in the store).
    app_names: Vec<String>,
    metrics: Arc<Metrics>,
}

/// What the broker's background work needs of the store, cloned into each task.
#[derive(Clone)]
struct SharedState {
    backend: Option<Arc<dyn Store>>,
    sealer: Arc<Sealer>,
    hold: Duration,
    wait: Duration,
    buffer: Duration,
    found_ttl: Duration,
    negative: Arc<NegativeCache>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredToken {
    token: String,
    expires_at_ms: u64,
    minted_at_ms: u64,
}

impl SharedState {
    /// Runs `work` on one replica at a time for `lock` (see [`store::once_across_replicas`]).
    async fn once<T, C, W>(&self, lock: &str, metrics: &Metrics, check: C, work: W) -> T
    where
        C: Fn() -> futures::future::BoxFuture<'static, Option<T>>,
        W: FnOnce() -> futures::future::BoxFuture<'static, T>,
    {
        store::once_across_replicas(self.backend.as_ref(), lock, self.hold, self.wait, metrics, check, work)
            .await
    }

    /// A token from the store, if one is there, opens with our key, and is not due for
    /// replacement.
    async fn load_token(&self, key: &str) -> Option<Arc<InstallationToken>> {
        let backend = self.backend.as_ref()?;
        let framed = backend.get(key).await.ok()??;
        let (_, sealed) = store::unframe(&framed).ok()?;
        let plain = self.sealer.open(key.as_bytes(), sealed)?;
        let stored: StoredToken = serde_json::from_slice(&plain).ok()?;
        let expires_at = UNIX_EPOCH + Duration::from_millis(stored.expires_at_ms);
        if expires_at.checked_sub(self.buffer)? <= SystemTime::now() {
            return None;
        }
        let minted_system = UNIX_EPOCH + Duration::from_millis(stored.minted_at_ms);
        let age = SystemTime::now().duration_since(minted_system).unwrap_or_default();
        let minted_at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        Some(Arc::new(InstallationToken::new(stored.token, expires_at, minted_at)))
    }

    /// Keeps a token, sealed, until it is due for replacement.
    async fn save_token(&self, key: &str, token: &InstallationToken) {
        let Some(backend) = &self.backend else { return };
        let Some(until) = token.expires_at.checked_sub(self.buffer) else { return };
        let Ok(ttl) = until.duration_since(SystemTime::now()) else { return };
        let millis = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let minted_system = SystemTime::now() - token.minted_at.elapsed();
        let stored = StoredToken {
            token: token.value.clone(),
            expires_at_ms: millis(token.expires_at),
            minted_at_ms: millis(minted_system),
        };
        let plain = serde_json::to_vec(&stored).unwrap_or_default();
        let sealed = self.sealer.seal(key.as_bytes(), &plain);
        let _ = backend.put(key, store::frame(&sealed, until), ttl).await;
    }

    /// A look-up result from the store: the owner's installation, or "not installed" for
    /// exactly what was asked.
    async fn load_lookup(&self, owner_key: &str, asked_key: &str, asked: &str) -> Option<LookedUp> {
        let backend = self.backend.as_ref()?;
        let read = |key: &str| {
            let key = key.to_string();
            async move {
                let framed = backend.get(&key).await.ok()??;
                let (_, payload) = store::unframe(&framed).ok()?;
                let text = std::str::from_utf8(payload).ok()?.to_string();
                Some(text)
            }
        };
        if let Some(text) = read(owner_key).await {
            if let Some(id) = text.strip_prefix("found:").and_then(|id| id.parse().ok()) {
                return Some(LookedUp { lookup: Lookup::Found(id), asked: asked.to_string() });
            }
        }
        if asked_key != owner_key {
            if let Some(text) = read(asked_key).await {
                if let Some(id) = text.strip_prefix("found:").and_then(|id| id.parse().ok()) {
                    return Some(LookedUp { lookup: Lookup::Found(id), asked: asked.to_string() });
                }
            }
        }
        // "Not installed" is kept by the negative cache.
        let app = owner_key.strip_prefix("i:")?.split(':').next()?;
        let key = self.negative.not_installed_key(app, asked)?;
        if self.negative.is_not_installed(&key, false).await {
            return Some(LookedUp { lookup: Lookup::NotInstalled, asked: asked.to_string() });
        }
        None
    }

    async fn save_lookup(&self, owner_key: &str, asked_key: &str, lookup: Lookup) {
        let Some(backend) = &self.backend else { return };
        let now = SystemTime::now();
        match lookup {
            Lookup::Found(id) => {
                let value = store::frame(format!("found:{id}").as_bytes(), now + self.found_ttl);
                let _ = backend.put(owner_key, value.clone(), self.found_ttl).await;
                if asked_key != owner_key {
                    let _ = backend.put(asked_key, value, self.found_ttl).await;
                }
            }
            // Remembered by the negative cache (rule app_not_installed), by the caller.
            Lookup::NotInstalled => {}
        }
    }
}

/// `owner:o` for a look-up key (`repo:o/r` or `owner:o`).
fn owner_part(asked: &str) -> String {
    match asked.strip_prefix("repo:") {
        Some(repo) => format!("owner:{}", repo.split('/').next().unwrap_or_default()),
        None => asked.to_string(),
    }
}

struct LookupExpiry {
    found: Duration,
    not_installed: Duration,
}

impl moka::Expiry<(String, String), Lookup> for LookupExpiry {
    fn expire_after_create(&self, _: &(String, String), value: &Lookup, _: Instant) -> Option<Duration> {
        Some(match value {
            Lookup::Found(_) => self.found,
            Lookup::NotInstalled => self.not_installed,
        })
    }
}

struct TokenExpiry {
    buffer: Duration,
}

impl moka::Expiry<TokenKey, Arc<InstallationToken>> for TokenExpiry {
    fn expire_after_create(&self, _: &TokenKey, t: &Arc<InstallationToken>, _: Instant) -> Option<Duration> {
        let until = t.expires_at.checked_sub(self.buffer).unwrap_or(SystemTime::UNIX_EPOCH);
        Some(until.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
    }
    fn expire_after_update(
        &self,
        key: &TokenKey,
        t: &Arc<InstallationToken>,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, t, at)
    }
}

impl Broker {
    /// Builds the broker from validated settings. Apps whose keys cannot be loaded are an
    /// error naming the app (check-config reports the same).
    pub fn new(
        settings: &Settings,
        upstream: Upstream,
        backend: Option<Arc<dyn Store>>,
        sealer: Sealer,
        negative: Arc<NegativeCache>,
        metrics: Arc<Metrics>,
    ) -> Result<Broker, String> {
        let mut apps = std::collections::HashMap::new();
        for app in &settings.apps {
            apps.insert(app.name.clone(), Arc::new(App { signer: AppSigner::from_settings(app)? }));
        }
        let mut clients = Vec::new();
        for c in &settings.clients {
            let app =
                apps.get(&c.app).ok_or_else(|| format!("client {:?}: unknown app {:?}", c.name, c.app))?;
            let mut key_hash = [0u8; 32];
            hex::decode_to_slice(c.key_sha256.trim(), &mut key_hash)
                .map_err(|e| format!("client {:?}: key_sha256: {e}", c.name))?;
            clients.push(Client {
                name: c.name.clone(),
                key_hash,
                app: Arc::clone(app),
                owners: c.owners.iter().map(|o| o.to_ascii_lowercase()).collect(),
                permissions: Permissions::new(c.permissions.clone()),
            });
        }
        let b = &settings.broker;
        Ok(Broker {
            has_clients: !clients.is_empty(),
            clients,
            upstream,
            installations: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .expire_after(LookupExpiry { found: b.installation_ttl, not_installed: b.not_installed_ttl })
                .support_invalidation_closures()
                .build(),
            lookups: Coalescer::default(),
            tokens: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .expire_after(TokenExpiry { buffer: b.token_refresh_buffer })
                .support_invalidation_closures()
                .build(),
            mints: Coalescer::default(),
            forced_remints: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(b.remint_min_interval.max(Duration::from_millis(1)))
                .build(),
            backend,
            negative,
            app_names: settings.apps.iter().map(|a| a.name.clone()).collect(),
            sealer: Arc::new(sealer),
            hold: settings.upstream.timeout + Duration::from_secs(2),
            settings_wait: settings.store.lock_wait,
            metrics,
            settings: b.clone(),
        })
    }

    /// The broker settings in force.
    pub fn settings(&self) -> &BrokerSettings {
        &self.settings
    }

    /// Phase "identify": a client key makes the request an app request; anything else passes
    /// through with its own credential (unless pass-through is switched off).
    pub fn identify(&self, headers: &HeaderMap, path: &str) -> Result<Identity, Rejection> {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| strip_scheme(v.trim()))
            .filter(|v| v.starts_with(CLIENT_KEY_PREFIX));
        let Some(key) = presented else {
            if !self.settings.allow_pass_through {
                return Err(Rejection::new(
                    StatusCode::UNAUTHORIZED,
                    "This gateway accepts only ghgate client keys (broker.allow_pass_through is off)",
                ));
            }
            return Ok(Identity::PassThrough);
        };
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Compare against every client, without stopping early, in constant time each.
        let mut found: Option<&Client> = None;
        for client in &self.clients {
            if bool::from(client.key_hash.ct_eq(&digest)) {
                found = Some(client);
            }
        }
        let Some(client) = found else {
            return Err(Rejection::new(
                StatusCode::UNAUTHORIZED,
                "Bad credentials: unknown ghgate client key",
            ));
        };
        let target = target_of(path, headers).ok_or_else(|| {
            Rejection::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "This path names no owner: say which installation you mean with the {} header (an owner or an installation id)",
                    INSTALLATION_HEADER
                ),
            )
        })?;
        if !client.owners.is_empty() {
            let allowed =
                target.owner().is_some_and(|o| client.owners.iter().any(|a| a.eq_ignore_ascii_case(o)));
            if !allowed {
                return Err(Rejection::new(
                    StatusCode::FORBIDDEN,
                    format!("Client {:?} may not act on {}", client.name, target.describe()),
                ));
            }
        }
        Ok(Identity::App(AppRequest {
            app: Arc::clone(&client.app),
            client: client.name.clone(),
            target,
            permissions: client.permissions.clone(),
        }))
    }

    /// Whether any client is configured (when none, no request can be an app request).
    pub fn has_clients(&self) -> bool {
        self.has_clients
    }

    /// Finds the installation a request addresses: cached per owner, coalesced per look-up,
    /// "not installed" remembered for `not_installed_ttl`.
    pub async fn resolve(&self, request: &AppRequest) -> Result<AppAuth, Rejection> {
        let installation = match &request.target {
            Target::Id(id) => *id,
            target => self.installation_of(&request.app, target).await?,
        };
        Ok(AppAuth { app: Arc::clone(&request.app), installation, permissions: request.permissions.clone() })
    }

    async fn installation_of(&self, app: &Arc<App>, target: &Target) -> Result<u64, Rejection> {
        let owner = target.owner().unwrap_or_default().to_ascii_lowercase();
        let owner_key = (app.name().to_string(), format!("owner:{owner}"));
        let lookup_key = (app.name().to_string(), target_key(target));
        for key in [&owner_key, &lookup_key] {
            if let Some(Lookup::Found(id)) = self.installations.get(key) {
                self.metrics.app.lookup_hits.increment(1);
                return Ok(id);
            }
        }
        let not_installed_key = self.negative.not_installed_key(app.name(), &lookup_key.1);
        if let Some(key) = &not_installed_key {
            if self.negative.is_not_installed(key, true).await {
                self.metrics.app.lookup_hits.increment(1);
                return Err(not_installed(app, target));
            }
        }
        // Concurrent look-ups for one owner share one request, whichever repository they
        // name: an installation covers its owner. Only "not installed" is repository-specific
        // (an app may be installed on some repositories of an owner), so a follower whose
        // repository differs from the one asked about looks up its own.
        let mut result = self.look_up_shared(app, target, owner_key.clone()).await?;
        if matches!(result.lookup, Lookup::NotInstalled) && result.asked != lookup_key.1 {
            result = self.look_up_shared(app, target, lookup_key.clone()).await?;
        }
        match result.lookup {
            Lookup::Found(id) => {
                if lookup_key != owner_key {
                    self.installations.insert(lookup_key, Lookup::Found(id));
                }
                // An app's installation covers its owner: other repositories need no look-up.
                self.installations.insert(owner_key, Lookup::Found(id));
                Ok(id)
            }
            Lookup::NotInstalled => {
                if let Some(key) = &not_installed_key {
                    self.negative.remember_not_installed(key).await;
                }
                Err(not_installed(app, target))
            }
        }
    }

    /// Runs (or joins) the look-up for `target` under the coalescing key `flight`.
    async fn look_up_shared(
        &self,
        app: &Arc<App>,
        target: &Target,
        flight: (String, String),
    ) -> Result<LookedUp, Rejection> {
        let paths: Vec<String> = match target {
            Target::Repo(o, r) => vec![format!("/repos/{o}/{r}/installation")],
            Target::Org(o) => vec![format!("/orgs/{o}/installation")],
            Target::User(u) => vec![format!("/users/{u}/installation")],
            Target::Owner(o) => vec![format!("/orgs/{o}/installation"), format!("/users/{o}/installation")],
            Target::Id(_) => unreachable!("ids need no look-up"),
        };
        let asked = target_key(target);
        let shared = self.shared();
        let (flight, _) = self.lookups.join(flight, || {
            let upstream = self.upstream.clone();
            let app = Arc::clone(app);
            let metrics = Arc::clone(&self.metrics);
            async move {
                // What another replica (or an earlier run) found, first.
                let owner_key = format!("i:{}:{}", app.name(), owner_part(&asked));
                let asked_key = format!("i:{}:{asked}", app.name());
                let stored = shared.load_lookup(&owner_key, &asked_key, &asked).await;
                if let Some(found) = stored {
                    return Ok(found);
                }
                let check = {
                    let shared = shared.clone();
                    let (owner_key, asked_key, asked) = (owner_key.clone(), asked_key.clone(), asked.clone());
                    move || {
                        let shared = shared.clone();
                        let (owner_key, asked_key, asked) =
                            (owner_key.clone(), asked_key.clone(), asked.clone());
                        async move { shared.load_lookup(&owner_key, &asked_key, &asked).await.map(Ok) }
                            .boxed()
                    }
                };
                let lock = format!("lock:{asked_key}");
                let work = {
                    let shared = shared.clone();
                    let metrics = Arc::clone(&metrics);
                    move || {
                        async move {
                            let result = look_up(&upstream, &app, &paths, &metrics).await;
                            if let Ok(lookup) = &result {
                                shared.save_lookup(&owner_key, &asked_key, *lookup).await;
                            }
                            result.map(|lookup| LookedUp { lookup, asked })
                        }
                        .boxed()
                    }
                };
                shared.once(&lock, &metrics, check, work).await
            }
            .boxed()
        });
        let result = flight
            .await
            .map_err(|_| Rejection::new(StatusCode::BAD_GATEWAY, "installation look-up failed"))?;
        result.map_err(|rejection| (*rejection).clone())
    }

    /// The token for an identity: cached until `expires_at` minus the refresh buffer, one mint
    /// per key at a time. With the `wait` strategy a fresh token is held until it has settled.
    pub async fn token(&self, auth: &AppAuth) -> Result<Arc<InstallationToken>, Rejection> {
        let key = auth.token_key();
        let token = match self.tokens.get(&key) {
            Some(token) => {
                self.metrics.app.token_hits.increment(1);
                token
            }
            None => {
                let shared = self.shared();
                let (flight, _) = self.mints.join(key.clone(), || {
                    let upstream = self.upstream.clone();
                    let auth = auth.clone();
                    let metrics = Arc::clone(&self.metrics);
                    let tokens = self.tokens.clone();
                    let installations = self.installations.clone();
                    async move {
                        let store_key = key.store_key();
                        // A token another replica (or an earlier run) minted, first.
                        if let Some(token) = shared.load_token(&store_key).await {
                            metrics.app.token_hits.increment(1);
                            tokens.insert(key, Arc::clone(&token));
                            return Ok(token);
                        }
                        let check = {
                            let shared = shared.clone();
                            let store_key = store_key.clone();
                            move || {
                                let shared = shared.clone();
                                let store_key = store_key.clone();
                                async move { shared.load_token(&store_key).await.map(Ok) }.boxed()
                            }
                        };
                        let installation = auth.installation;
                        let work = {
                            let shared = shared.clone();
                            let metrics = Arc::clone(&metrics);
                            let store_key = store_key.clone();
                            move || {
                                async move {
                                    let minted = mint(&upstream, &auth, &metrics).await;
                                    if let Ok(token) = &minted {
                                        shared.save_token(&store_key, token).await;
                                    }
                                    minted
                                }
                                .boxed()
                            }
                        };
                        let lock = format!("lock:{store_key}");
                        let minted = shared.once(&lock, &metrics, check, work).await;
                        match &minted {
                            Ok(token) => tokens.insert(key, Arc::clone(token)),
                            Err(r) if r.status == StatusCode::NOT_FOUND => {
                                // The installation is gone: forget every look-up that led to it.
                                let id = installation;
                                let _ = installations.invalidate_entries_if(
                                    move |_, v| matches!(v, Lookup::Found(found) if *found == id),
                                );
                            }
                            Err(_) => {}
                        }
                        minted
                    }
                    .boxed()
                });
                flight
                    .await
                    .map_err(|_| Rejection::new(StatusCode::BAD_GATEWAY, "token mint failed"))?
                    .map_err(|r| (*r).clone())?
            }
        };
        if self.settings.fresh_token_strategy == FreshTokenStrategy::Wait {
            let settled = token.minted_at + self.settings.settle_delay;
            if let Some(wait) = settled.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(token)
    }

    /// GitHub rejected `token`: forget it (here and in the shared store) so the next call
    /// mints a fresh one. Returns false (and keeps it) when this installation was re-minted
    /// within `remint_min_interval`.
    pub async fn evict_rejected(&self, auth: &AppAuth, token: &InstallationToken) -> bool {
        let key = auth.token_key();
        if self.forced_remints.contains_key(&key) {
            warn!(
                app = auth.app.name(),
                installation = auth.installation,
                "token rejected again; not re-minting yet"
            );
            return false;
        }
        self.forced_remints.insert(key.clone(), Instant::now());
        if self.tokens.get(&key).is_some_and(|cached| cached.tag == token.tag) {
            self.tokens.invalidate(&key);
        }
        let shared = self.shared();
        let store_key = key.store_key();
        if shared.load_token(&store_key).await.is_some_and(|stored| stored.tag == token.tag) {
            if let Some(backend) = &shared.backend {
                let _ = backend.remove(&store_key).await;
            }
        }
        true
    }

    fn shared(&self) -> SharedState {
        SharedState {
            backend: self.backend.clone(),
            sealer: Arc::clone(&self.sealer),
            hold: self.hold,
            wait: self.settings_wait,
            buffer: self.settings.token_refresh_buffer,
            found_ttl: self.settings.installation_ttl,
            negative: Arc::clone(&self.negative),
        }
    }

    /// An installation changed (deleted, suspended, repositories added or removed): forget its
    /// tokens and the look-ups that led to it, here and in the store, and what was remembered
    /// as "not installed" for its account.
    pub async fn forget_installation(&self, id: u64, account: Option<&str>) {
        let _ = self.tokens.invalidate_entries_if(move |key, _| key.installation == id);
        let _ = self
            .installations
            .invalidate_entries_if(move |_, v| matches!(v, Lookup::Found(found) if *found == id));
        if let Some(account) = account {
            let account = account.to_ascii_lowercase();
            let owner_key = format!("owner:{account}");
            let repo_prefix = format!("repo:{account}/");
            let _ = self
                .installations
                .invalidate_entries_if(move |key, _| key.1 == owner_key || key.1.starts_with(&repo_prefix));
            let _ = self.negative.clear(Some(crate::negative::APP_NOT_INSTALLED), Some(&account), None).await;
        }
        if let Some(backend) = &self.backend {
            for app in &self.app_names {
                let mut keys = backend.keys_with_prefix(&format!("t:{app}:{id}:")).await.unwrap_or_default();
                if let Some(account) = account {
                    let account = account.to_ascii_lowercase();
                    keys.push(format!("i:{app}:owner:{account}"));
                    keys.extend(
                        backend
                            .keys_with_prefix(&format!("i:{app}:repo:{account}/"))
                            .await
                            .unwrap_or_default(),
                    );
                }
                for key in keys {
                    let _ = backend.remove(&key).await;
                }
            }
        }
        info!(installation = id, "installation changed: its tokens and look-ups are forgotten");
    }

    /// Whether a fresh token is still inside its settle window.
    pub fn settling(&self, token: &InstallationToken) -> bool {
        token.minted_at.elapsed() < self.settings.settle_delay
    }

    /// Metadata of the cached tokens — app, installation, permission set, expiry, age —
    /// never the tokens themselves.
    pub fn token_metadata(&self) -> Vec<serde_json::Value> {
        let epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut out: Vec<serde_json::Value> = self
            .tokens
            .iter()
            .map(|(key, token)| {
                serde_json::json!({
                    "app": key.app,
                    "installation": key.installation,
                    "permissions": if key.permissions.is_empty() { None } else { Some(key.permissions.clone()) },
                    "expires_at": epoch(token.expires_at),
                    "age_secs": token.minted_at.elapsed().as_secs(),
                    "fingerprint": format!("{:016x}", token.tag),
                })
            })
            .collect();
        out.sort_by_key(|v| v["installation"].as_u64());
        out
    }
}

fn not_installed(app: &App, target: &Target) -> Rejection {
    Rejection::new(
        StatusCode::NOT_FOUND,
        format!("GitHub App {:?} is not installed on {}", app.name(), target.describe()),
    )
}

fn strip_scheme(value: &str) -> &str {
    for scheme in ["Bearer ", "bearer ", "token ", "Token "] {
        if let Some(rest) = value.strip_prefix(scheme) {
            return rest.trim();
        }
    }
    value
}

/// The installation a request addresses, from its path or the installation header.
fn target_of(path: &str, headers: &HeaderMap) -> Option<Target> {
    let mut parts = path.trim_start_matches('/').split('/');
    let first = parts.next().unwrap_or("");
    let second = parts.next().filter(|s| !s.is_empty());
    let third = parts.next().filter(|s| !s.is_empty());
    match (first, second, third) {
        ("repos", Some(o), Some(r)) => return Some(Target::Repo(o.to_string(), r.to_string())),
        ("orgs", Some(o), _) => return Some(Target::Org(o.to_string())),
        ("users", Some(u), _) => return Some(Target::User(u.to_string())),
        _ => {}
    }
    let named = headers.get(&INSTALLATION_HEADER)?.to_str().ok()?.trim();
    if named.is_empty() {
        return None;
    }
    Some(match named.parse::<u64>() {
        Ok(id) => Target::Id(id),
        Err(_) => Target::Owner(named.to_string()),
    })
}

fn jwt_headers(app: &App) -> Result<HeaderMap, Arc<Rejection>> {
    let jwt = app.signer.jwt().map_err(|e| Arc::new(Rejection::new(StatusCode::BAD_GATEWAY, e)))?;
    let mut headers = HeaderMap::new();
    let mut auth = HeaderValue::from_str(&format!("Bearer {jwt}"))
        .map_err(|_| Arc::new(Rejection::new(StatusCode::BAD_GATEWAY, "unusable app JWT")))?;
    auth.set_sensitive(true);
    headers.insert(http::header::AUTHORIZATION, auth);
    headers.insert(http::header::ACCEPT, HeaderValue::from_static(crate::github::DEFAULT_MEDIA_TYPE));
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(concat!("ghgate/", env!("CARGO_PKG_VERSION"))),
    );
    Ok(headers)
}

fn upstream_failure(what: &str, e: UpstreamError) -> Arc<Rejection> {
    let status = if matches!(e, UpstreamError::Timeout(_)) {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    };
    Arc::new(Rejection::new(status, format!("ghgate: {what}: {e}")))
}

async fn look_up(
    upstream: &Upstream,
    app: &App,
    paths: &[String],
    metrics: &Metrics,
) -> Result<Lookup, Arc<Rejection>> {
    metrics.app.lookup_misses.increment(1);
    for path in paths {
        let url = upstream.url_for(path).map_err(|e| Arc::new(Rejection::new(StatusCode::BAD_GATEWAY, e)))?;
        let (response, took) = upstream
            .send(Method::GET, url, jwt_headers(app)?, None)
            .await
            .map_err(|e| upstream_failure("installation look-up", e))?;
        metrics.upstream_answer(Some(response.status()), took);
        match response.status() {
            StatusCode::OK => {
                let body = response.bytes().await.map_err(|e| {
                    Arc::new(Rejection::new(
                        StatusCode::BAD_GATEWAY,
                        format!("installation look-up broke off: {e}"),
                    ))
                })?;
                let id = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|id| id.as_u64()))
                    .ok_or_else(|| {
                        Arc::new(Rejection::new(
                            StatusCode::BAD_GATEWAY,
                            "installation look-up answer has no id",
                        ))
                    })?;
                return Ok(Lookup::Found(id));
            }
            StatusCode::NOT_FOUND => continue,
            status => {
                warn!(app = app.name(), path = %path, status = status.as_u16(), "installation look-up refused");
                return Err(Arc::new(Rejection::new(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "ghgate: GitHub refused the installation look-up for app {:?} with {status}",
                        app.name()
                    ),
                )));
            }
        }
    }
    metrics.app.not_installed.increment(1);
    Ok(Lookup::NotInstalled)
}

async fn mint(upstream: &Upstream, auth: &AppAuth, metrics: &Metrics) -> MintResult {
    let started = Instant::now();
    let path = format!("/app/installations/{}/access_tokens", auth.installation);
    let url = upstream.url_for(&path).map_err(|e| Arc::new(Rejection::new(StatusCode::BAD_GATEWAY, e)))?;
    let mut headers = jwt_headers(&auth.app)?;
    let body = match &auth.permissions {
        Some(p) => {
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Some(reqwest::Body::from(serde_json::json!({ "permissions": p.map }).to_string()))
        }
        None => None,
    };
    let result = upstream.send(Method::POST, url, headers, body).await;
    let (response, took) = match result {
        Ok(r) => r,
        Err(e) => {
            metrics.app.mint_failures.increment(1);
            return Err(upstream_failure("token mint", e));
        }
    };
    metrics.upstream_answer(Some(response.status()), took);
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    if status != StatusCode::CREATED && status != StatusCode::OK {
        metrics.app.mint_failures.increment(1);
        warn!(
            app = auth.app.name(),
            installation = auth.installation,
            status = status.as_u16(),
            "token mint refused"
        );
        let client_status =
            if status == StatusCode::NOT_FOUND { StatusCode::NOT_FOUND } else { StatusCode::BAD_GATEWAY };
        return Err(Arc::new(Rejection::new(
            client_status,
            format!(
                "ghgate: GitHub refused an installation token for app {:?}, installation {} ({status})",
                auth.app.name(),
                auth.installation
            ),
        )));
    }
    #[derive(serde::Deserialize)]
    struct Minted {
        token: String,
        expires_at: String,
    }
    let minted: Minted = serde_json::from_slice(&body).map_err(|e| {
        metrics.app.mint_failures.increment(1);
        Arc::new(Rejection::new(
            StatusCode::BAD_GATEWAY,
            format!("ghgate: malformed token answer from GitHub: {e}"),
        ))
    })?;
    let expires_at = humantime::parse_rfc3339_weak(&minted.expires_at).map_err(|e| {
        Arc::new(Rejection::new(
            StatusCode::BAD_GATEWAY,
            format!("ghgate: malformed expires_at from GitHub: {e}"),
        ))
    })?;
    let token = InstallationToken::new(minted.token, expires_at, Instant::now());
    let tag = token.tag;
    metrics.app.tokens_minted.increment(1);
    metrics.app.mint_duration.record(started.elapsed().as_secs_f64());
    info!(app = auth.app.name(), installation = auth.installation, token = %format_args!("{tag:016x}"), "minted an installation token");
    Ok(Arc::new(token))
}

/// Prints a new client key and the SHA-256 to configure for it.
pub fn generate_client_key() -> (String, String) {
    let key = format!("{CLIENT_KEY_PREFIX}{}", hex::encode(rand::random::<[u8; 24]>()));
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    (key, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn targets_come_from_the_path_or_the_installation_header() {
        let none = HeaderMap::new();
        assert_eq!(
            target_of("/repos/octo/hello/pulls", &none),
            Some(Target::Repo("octo".into(), "hello".into()))
        );
        assert_eq!(target_of("/orgs/acme/members", &none), Some(Target::Org("acme".into())));
        assert_eq!(target_of("/users/mona", &none), Some(Target::User("mona".into())));
        assert_eq!(target_of("/installation/repositories", &none), None);
        assert_eq!(target_of("/repos/octo", &none), None);
        let by_owner = headers(&[("x-ghgate-installation", "acme")]);
        assert_eq!(target_of("/installation/repositories", &by_owner), Some(Target::Owner("acme".into())));
        let by_id = headers(&[("x-ghgate-installation", "123")]);
        assert_eq!(target_of("/graphql", &by_id), Some(Target::Id(123)));
    }

    #[test]
    fn generated_client_keys_hash_to_what_is_printed() {
        let (key, hash) = generate_client_key();
        assert!(key.starts_with(CLIENT_KEY_PREFIX));
        assert_eq!(hex::encode(Sha256::digest(key.as_bytes())), hash);
    }

    #[test]
    fn equal_permission_sets_share_an_id() {
        let a = Permissions::new(BTreeMap::from([
            ("contents".into(), "read".into()),
            ("issues".into(), "write".into()),
        ]));
        let b = Permissions::new(BTreeMap::from([
            ("issues".into(), "write".into()),
            ("contents".into(), "read".into()),
        ]));
        assert_eq!(a.unwrap().id, b.unwrap().id);
        assert!(Permissions::new(BTreeMap::new()).is_none());
    }
}
