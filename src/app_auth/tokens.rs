//! Installation tokens: minted once per (app, installation, permission set), kept until
//! `expires_at` minus the refresh buffer, shared (sealed) through the store so replicas mint
//! once between them, and replaced — at most once per `remint_min_interval` — when GitHub
//! rejects one.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use http::{HeaderValue, Method, StatusCode};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::{AppAuth, Rejection, jwt_headers, upstream_failure};
use crate::coalesce::Coalescer;
use crate::config::Settings;
use crate::store::{ReplicaLock, ReplicaWork, Sealer, Store};
use crate::telemetry::Metrics;
use crate::upstream::Upstream;

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

/// What a token is minted for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct TokenKey {
    app: String,
    installation: u64,
    permissions: String,
}

impl TokenKey {
    /// The key of `auth`'s token.
    pub(super) fn of(auth: &AppAuth) -> TokenKey {
        TokenKey {
            app: auth.app.name().to_string(),
            installation: auth.installation,
            permissions: auth.permissions.as_ref().map(|p| p.id.clone()).unwrap_or_default(),
        }
    }

    /// The store key of the token.
    fn store_key(&self) -> String {
        format!("t:{}:{}:{}", self.app, self.installation, self.permissions)
    }
}

type MintResult = Result<Arc<InstallationToken>, Arc<Rejection>>;

/// The token cache: in memory, in the store (sealed), and the mints in flight.
pub(super) struct Tokens {
    cache: moka::sync::Cache<TokenKey, Arc<InstallationToken>>,
    mints: Coalescer<TokenKey, MintResult>,
    /// When a token was last replaced because GitHub rejected it, per installation.
    forced_remints: moka::sync::Cache<TokenKey, Instant>,
    upstream: Upstream,
    /// Tokens persist here (sealed) and, on Redis, are shared by every replica.
    backend: Option<Arc<dyn Store>>,
    sealer: Arc<Sealer>,
    buffer: Duration,
    hold: Duration,
    wait: Duration,
    metrics: Arc<Metrics>,
}

impl Tokens {
    /// An empty token cache over `backend`.
    pub(super) fn new(
        settings: &Settings,
        upstream: Upstream,
        backend: Option<Arc<dyn Store>>,
        sealer: Sealer,
        metrics: Arc<Metrics>,
    ) -> Tokens {
        let (hold, wait) = super::replica_lock_times(settings);
        let b = &settings.broker;
        Tokens {
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .expire_after(TokenExpiry { buffer: b.token_refresh_buffer })
                .support_invalidation_closures()
                .build(),
            mints: Coalescer::default(),
            forced_remints: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(b.remint_min_interval.max(Duration::from_millis(1)))
                .build(),
            upstream,
            backend,
            sealer: Arc::new(sealer),
            buffer: b.token_refresh_buffer,
            hold,
            wait,
            metrics,
        }
    }

    /// The token for `auth`: cached, else one another replica stored, else minted (one mint
    /// per key at a time, here and across replicas).
    pub(super) async fn get(&self, auth: &AppAuth) -> Result<Arc<InstallationToken>, Rejection> {
        let key = TokenKey::of(auth);
        if let Some(token) = self.cache.get(&key) {
            self.metrics.app.token_hits.increment(1);
            return Ok(token);
        }
        // The job is built only by the request that starts the mint.
        let (flight, _) = self.mints.join(key.clone(), || {
            let job = MintJob {
                store: self.stored(&key),
                upstream: self.upstream.clone(),
                auth: auth.clone(),
                metrics: Arc::clone(&self.metrics),
            };
            let lock = ReplicaLock {
                backend: self.backend.clone(),
                key: format!("lock:{}", job.store.key),
                hold: self.hold,
                wait: self.wait,
            };
            let cache = self.cache.clone();
            async move {
                // A token another replica (or an earlier run) minted, first.
                if let Some(token) = job.store.load().await {
                    job.metrics.app.token_hits.increment(1);
                    cache.insert(key, Arc::clone(&token));
                    return Ok(token);
                }
                let metrics = Arc::clone(&job.metrics);
                let minted = lock.run(job, &metrics).await;
                if let Ok(token) = &minted {
                    cache.insert(key, Arc::clone(token));
                }
                minted
            }
            .boxed()
        });
        flight
            .await
            .map_err(|_| Rejection::new(StatusCode::BAD_GATEWAY, "token mint failed"))?
            .map_err(|r| (*r).clone())
    }

    /// GitHub rejected `token`: forget it (here and in the shared store) so the next call
    /// mints a fresh one. Returns false (and keeps it) when this installation was re-minted
    /// within `remint_min_interval`.
    pub(super) async fn evict_rejected(&self, auth: &AppAuth, token: &InstallationToken) -> bool {
        let key = TokenKey::of(auth);
        if self.forced_remints.contains_key(&key) {
            warn!(
                app = auth.app.name(),
                installation = auth.installation,
                "token rejected again; not re-minting yet"
            );
            return false;
        }
        self.forced_remints.insert(key.clone(), Instant::now());
        if self.cache.get(&key).is_some_and(|cached| cached.tag == token.tag) {
            self.cache.invalidate(&key);
        }
        let stored = self.stored(&key);
        if stored.load().await.is_some_and(|kept| kept.tag == token.tag) {
            if let Some(backend) = &self.backend {
                let _ = backend.remove(&stored.key).await;
            }
        }
        true
    }

    /// Forgets every token of installation `id`, here and in the store.
    pub(super) async fn forget_installation(&self, id: u64, app_names: &[String]) {
        let _ = self.cache.invalidate_entries_if(move |key, _| key.installation == id);
        let Some(backend) = &self.backend else { return };
        for app in app_names {
            for key in backend.keys_with_prefix(&format!("t:{app}:{id}:")).await.unwrap_or_default() {
                let _ = backend.remove(&key).await;
            }
        }
    }

    /// Metadata of the cached tokens — app, installation, permission set, expiry, age —
    /// never the tokens themselves.
    pub(super) fn metadata(&self) -> Vec<serde_json::Value> {
        let epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut out: Vec<serde_json::Value> = self
            .cache
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

    /// Where the token of `key` is kept in the store.
    fn stored(&self, key: &TokenKey) -> StoredToken {
        StoredToken {
            backend: self.backend.clone(),
            sealer: Arc::clone(&self.sealer),
            key: key.store_key(),
            buffer: self.buffer,
        }
    }
}

/// One token's place in the store.
struct StoredToken {
    backend: Option<Arc<dyn Store>>,
    sealer: Arc<Sealer>,
    key: String,
    buffer: Duration,
}

/// A token as it is sealed into the store.
#[derive(serde::Serialize, serde::Deserialize)]
struct SealedToken {
    token: String,
    expires_at_ms: u64,
    minted_at_ms: u64,
}

impl StoredToken {
    /// The token, if one is there, opens with our key, and is not due for replacement.
    async fn load(&self) -> Option<Arc<InstallationToken>> {
        let backend = self.backend.as_ref()?;
        let live = backend.get_live(&self.key).await.ok()??;
        let plain = self.sealer.open(self.key.as_bytes(), &live.payload)?;
        let stored: SealedToken = serde_json::from_slice(&plain).ok()?;
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
    async fn save(&self, token: &InstallationToken) {
        let Some(backend) = &self.backend else { return };
        let Some(until) = token.expires_at.checked_sub(self.buffer) else { return };
        let Ok(ttl) = until.duration_since(SystemTime::now()) else { return };
        let millis = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let minted_system = SystemTime::now() - token.minted_at.elapsed();
        let stored = SealedToken {
            token: token.value.clone(),
            expires_at_ms: millis(token.expires_at),
            minted_at_ms: millis(minted_system),
        };
        let plain = serde_json::to_vec(&stored).unwrap_or_default();
        let sealed = self.sealer.seal(self.key.as_bytes(), &plain);
        let _ = backend.put_expiring(&self.key, &sealed, ttl).await;
    }
}

/// One mint, done by one replica at a time.
struct MintJob {
    store: StoredToken,
    upstream: Upstream,
    auth: AppAuth,
    metrics: Arc<Metrics>,
}

impl ReplicaWork for MintJob {
    type Output = MintResult;

    async fn check(&self) -> Option<MintResult> {
        self.store.load().await.map(Ok)
    }

    async fn work(self) -> MintResult {
        let minted = mint(&self.upstream, &self.auth, &self.metrics).await;
        if let Ok(token) = &minted {
            self.store.save(token).await;
        }
        minted
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

/// `POST /app/installations/{id}/access_tokens` with the app's JWT.
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
