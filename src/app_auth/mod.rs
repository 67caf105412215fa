//! The GitHub App broker: clients present a gateway client key; ghgate finds the app's
//! installation for the owner they address, mints (or reuses) one installation token per
//! (app, installation, permission set), and sends their request with it.
//!
//! Lesson two of the design brief is why this is careful: one token per call caused
//! transient 403s, wasted quota and thundering herds. Here look-ups and mints are cached and
//! coalesced, tokens are used until shortly before they expire, a token GitHub has not
//! replicated yet is retried rather than shown to the client, and a token GitHub rejects is
//! replaced once — with re-mints per installation rate-limited.
//!
//! By concern: [`clients`] (client keys and the installation a request means),
//! [`installations`] (look-ups), [`tokens`] (the token cache and mints), [`retry`] (what to do
//! when GitHub refuses a token), `jwt` (the app's own credential). [`Broker`] puts them together.

mod clients;
mod installations;
mod jwt;
mod retry;
mod tokens;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, StatusCode};
use tracing::info;

pub(crate) use clients::presented_key;
pub use clients::{AppRequest, INSTALLATION_HEADER, Identity, Permissions, Target, generate_client_key};
pub use jwt::AppSigner;
pub use retry::{Next, TokenRetry, validators_for_token};
pub use tokens::InstallationToken;

use crate::config::{BrokerSettings, ConfigError, FreshTokenStrategy, Settings};
use crate::negative::NegativeCache;
use crate::store::{Sealer, Store};
use crate::telemetry::Metrics;
use crate::upstream::{Upstream, UpstreamError};
use clients::ClientKeys;
use installations::Installations;
use tokens::Tokens;

/// A refusal the broker gives before anything goes upstream.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// HTTP status for the client.
    pub status: StatusCode,
    /// GitHub-shaped message.
    pub message: String,
}

impl Rejection {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Rejection { status, message: message.into() }
    }
}

/// One configured GitHub App.
#[derive(Debug)]
pub struct GitHubApp {
    /// Signs the app's JWTs.
    signer: AppSigner,
}

impl GitHubApp {
    /// The configured name.
    pub fn name(&self) -> &str {
        &self.signer.name
    }
}

/// A resolved app identity: what the request's token is minted for.
#[derive(Debug, Clone)]
pub struct AppAuth {
    /// The app.
    pub app: Arc<GitHubApp>,
    /// The installation id.
    pub installation: u64,
    /// Down-scoped permissions, if any.
    pub permissions: Option<Arc<Permissions>>,
}

impl AppAuth {
    /// The cache partition of everything fetched with this identity: shared by every client
    /// of the installation (with the same permissions), never by another installation.
    pub fn partition_id(&self) -> String {
        match &self.permissions {
            None => format!("i-{}-{}", self.app.name(), self.installation),
            Some(p) => format!("i-{}-{}-{}", self.app.name(), self.installation, p.id),
        }
    }
}

/// The settings problems only the broker can see: an app's private key that cannot be read
/// or is not an RSA key. Called by [`crate::server::check_settings`].
pub fn check_settings(settings: &Settings) -> Vec<ConfigError> {
    settings
        .apps
        .iter()
        .enumerate()
        // Apps with no key, or two, are reported by `Settings::validate`.
        .filter(|(_, app)| app.private_key_path.is_some() != app.private_key_env.is_some())
        .filter_map(|(i, app)| {
            AppSigner::from_settings(app)
                .err()
                .map(|message| ConfigError { key: format!("apps[{i}].private_key_path"), message })
        })
        .collect()
}

/// The broker: clients, installation look-ups and the token cache.
pub struct Broker {
    settings: BrokerSettings,
    /// Swapped whole by a reload (new client keys, re-read app keys).
    clients: arc_swap::ArcSwap<ClientKeys>,
    installations: Installations,
    tokens: Tokens,
    /// Every configured app's name (for forgetting an installation in the store).
    app_names: Vec<String>,
    metrics: Arc<Metrics>,
}

impl Broker {
    /// Builds the broker from checked settings. Apps whose keys cannot be loaded are an
    /// error naming the app (check-config reports the same).
    pub fn new(
        settings: &Settings,
        upstream: Upstream,
        backend: Option<Arc<dyn Store>>,
        sealer: Sealer,
        negative: Arc<NegativeCache>,
        metrics: Arc<Metrics>,
    ) -> Result<Broker, String> {
        let clients = client_keys(settings)?;
        let installations =
            Installations::new(settings, upstream.clone(), backend.clone(), negative, Arc::clone(&metrics));
        let tokens = Tokens::new(settings, upstream, backend, sealer, Arc::clone(&metrics));
        Ok(Broker {
            settings: settings.broker.clone(),
            clients: arc_swap::ArcSwap::from_pointee(clients),
            installations,
            tokens,
            app_names: settings.apps.iter().map(|a| a.name.clone()).collect(),
            metrics,
        })
    }

    /// The broker settings in force.
    pub fn settings(&self) -> &BrokerSettings {
        &self.settings
    }

    /// Phase "identify": a client key makes the request an app request; anything else passes
    /// through with its own credential (unless pass-through is switched off).
    pub fn identify(&self, headers: &HeaderMap, path: &str) -> Result<Identity, Rejection> {
        self.clients.load().identify(headers, path)
    }

    /// A reload: the `[[clients]]` of `settings`, and every app's private key read again.
    /// Requests already identified keep the key they started with; cached tokens stay (GitHub
    /// does not revoke them when a key is rotated).
    pub fn reload_keys(&self, settings: &Settings) -> Result<(), String> {
        self.clients.store(Arc::new(client_keys(settings)?));
        Ok(())
    }

    /// Finds the installation a request addresses: cached per owner, coalesced per look-up,
    /// "not installed" remembered for `not_installed_ttl`.
    pub async fn resolve(&self, request: &AppRequest) -> Result<AppAuth, Rejection> {
        let installation = match &request.target {
            Target::Id(id) => *id,
            target => self.installations.installation_of(&request.app, target).await?,
        };
        Ok(AppAuth { app: Arc::clone(&request.app), installation, permissions: request.permissions.clone() })
    }

    /// The token for an identity: cached until `expires_at` minus the refresh buffer, one mint
    /// per key at a time. With the `wait` strategy a fresh token is held until it has settled.
    pub async fn token(&self, auth: &AppAuth) -> Result<Arc<InstallationToken>, Rejection> {
        let token = match self.tokens.get(auth).await {
            Ok(token) => token,
            Err(rejection) => {
                if rejection.status == StatusCode::NOT_FOUND {
                    // The installation is gone: forget every look-up that led to it.
                    self.installations.forget_found(auth.installation);
                }
                return Err(rejection);
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

    /// The tries of one request sent as `auth` (see [`TokenRetry`]).
    pub fn retry<'a>(&'a self, auth: &'a AppAuth) -> TokenRetry<'a> {
        TokenRetry::new(self, auth)
    }

    /// GitHub rejected `token`: forget it (here and in the shared store) so the next call
    /// mints a fresh one. Returns false (and keeps it) when this installation was re-minted
    /// within `remint_min_interval`.
    pub async fn evict_rejected(&self, auth: &AppAuth, token: &InstallationToken) -> bool {
        self.tokens.evict_rejected(auth, token).await
    }

    /// An installation changed (deleted, suspended, repositories added or removed): forget its
    /// tokens and the look-ups that led to it, here and in the store, and what was remembered
    /// as "not installed" for its account.
    pub async fn forget_installation(&self, id: u64, account: Option<&str>) {
        self.tokens.forget_installation(id, &self.app_names).await;
        self.installations.forget_found(id);
        if let Some(account) = account {
            self.installations.forget_account(account, &self.app_names).await;
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
        self.tokens.metadata()
    }
}

/// The clients of `settings`, bound to their apps, whose keys are read now.
fn client_keys(settings: &Settings) -> Result<ClientKeys, String> {
    let mut apps = HashMap::new();
    for app in &settings.apps {
        apps.insert(app.name.clone(), Arc::new(GitHubApp { signer: AppSigner::from_settings(app)? }));
    }
    ClientKeys::new(&settings.clients, &apps, settings.broker.allow_pass_through)
}

/// How long a replica holds the lock of a look-up or mint, and how long others wait for it.
fn replica_lock_times(settings: &Settings) -> (Duration, Duration) {
    (settings.upstream.timeout + Duration::from_secs(2), settings.store.lock_wait)
}

/// The headers of a request the app makes as itself (look-ups, mints): its JWT.
fn jwt_headers(app: &GitHubApp) -> Result<HeaderMap, Arc<Rejection>> {
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

/// The rejection for an upstream failure of the broker's own requests.
fn upstream_failure(what: &str, e: UpstreamError) -> Arc<Rejection> {
    let status = if matches!(e, UpstreamError::Timeout(_)) {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    };
    Arc::new(Rejection::new(status, format!("ghgate: {what}: {e}")))
}
