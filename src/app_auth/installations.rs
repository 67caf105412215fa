//! Installation look-ups: which installation of an app covers an owner (or a repository).
//! Found installations are cached per owner (an installation covers its owner, whichever
//! repository was asked about); "not installed" is remembered per repository in the negative
//! cache (rule `app_not_installed`), since an app may be installed on some of an owner's
//! repositories. Look-ups are coalesced per owner here and done once across replicas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use http::{Method, StatusCode};
use tracing::warn;

use super::{GitHubApp, Rejection, Target, jwt_headers, upstream_failure};
use crate::coalesce::Coalescer;
use crate::config::Settings;
use crate::negative::NegativeCache;
use crate::store::{ReplicaLock, ReplicaWork, Store};
use crate::telemetry::Metrics;
use crate::upstream::Upstream;

/// What a look-up found.
#[derive(Debug, Clone, Copy)]
enum Lookup {
    Found(u64),
    NotInstalled,
}

/// A look-up's answer and what it asked about (`repo:o/r` or `owner:o`).
#[derive(Debug, Clone)]
struct LookedUp {
    lookup: Lookup,
    asked: String,
}

type LookupResult = Result<LookedUp, Arc<Rejection>>;

/// The installation look-ups of every app: cached, coalesced, shared through the store.
pub(super) struct Installations {
    /// (app, look-up key) → installation, or "not installed".
    cache: moka::sync::Cache<(String, String), Lookup>,
    flights: Coalescer<(String, String), LookupResult>,
    upstream: Upstream,
    /// Look-ups persist here and, on Redis, are shared by every replica.
    backend: Option<Arc<dyn Store>>,
    /// "Not installed" lives in the negative cache (rule `app_not_installed`), so replicas
    /// share it and operators clear it like any other negative entry.
    negative: Arc<NegativeCache>,
    found_ttl: Duration,
    hold: Duration,
    wait: Duration,
    metrics: Arc<Metrics>,
}

impl Installations {
    /// An empty cache of look-ups over `backend`.
    pub(super) fn new(
        settings: &Settings,
        upstream: Upstream,
        backend: Option<Arc<dyn Store>>,
        negative: Arc<NegativeCache>,
        metrics: Arc<Metrics>,
    ) -> Installations {
        let (hold, wait) = super::replica_lock_times(settings);
        let settings = &settings.broker;
        Installations {
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .expire_after(LookupExpiry {
                    found: settings.installation_ttl,
                    not_installed: settings.not_installed_ttl,
                })
                .support_invalidation_closures()
                .build(),
            flights: Coalescer::default(),
            upstream,
            backend,
            negative,
            found_ttl: settings.installation_ttl,
            hold,
            wait,
            metrics,
        }
    }

    /// The installation of `app` that covers `target`, or a 404 rejection naming it.
    pub(super) async fn installation_of(
        &self,
        app: &Arc<GitHubApp>,
        target: &Target,
    ) -> Result<u64, Rejection> {
        let owner = target.owner().unwrap_or_default().to_ascii_lowercase();
        let owner_key = (app.name().to_string(), format!("owner:{owner}"));
        let lookup_key = (app.name().to_string(), target_key(target));
        for key in [&owner_key, &lookup_key] {
            if let Some(Lookup::Found(id)) = self.cache.get(key) {
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
                    self.cache.insert(lookup_key, Lookup::Found(id));
                }
                // An app's installation covers its owner: other repositories need no look-up.
                self.cache.insert(owner_key, Lookup::Found(id));
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
        app: &Arc<GitHubApp>,
        target: &Target,
        flight: (String, String),
    ) -> Result<LookedUp, Rejection> {
        // The job is built only by the request that starts the flight.
        let (flight, _) = self.flights.join(flight, || {
            let job = LookupJob {
                store: self.stored_lookups(app, &target_key(target)),
                upstream: self.upstream.clone(),
                app: Arc::clone(app),
                paths: lookup_paths(target),
                metrics: Arc::clone(&self.metrics),
            };
            // One look-up per owner across replicas too: the lock is the owner's. A replica
            // waiting on it finds the owner's installation the holder stored; after a
            // repository-specific "not installed" (no owner answer) it looks up itself.
            let lock = ReplicaLock {
                backend: self.backend.clone(),
                key: format!("lock:{}", job.store.owner_key),
                hold: self.hold,
                wait: self.wait,
            };
            async move {
                // What another replica (or an earlier run) found, first.
                if let Some(found) = job.store.load().await {
                    return Ok(found);
                }
                let metrics = Arc::clone(&job.metrics);
                lock.run(job, &metrics).await
            }
            .boxed()
        });
        let result = flight
            .await
            .map_err(|_| Rejection::new(StatusCode::BAD_GATEWAY, "installation look-up failed"))?;
        result.map_err(|rejection| (*rejection).clone())
    }

    /// Where look-ups of `asked` for `app` are kept in the store.
    fn stored_lookups(&self, app: &GitHubApp, asked: &str) -> StoredLookups {
        StoredLookups {
            backend: self.backend.clone(),
            negative: Arc::clone(&self.negative),
            app: app.name().to_string(),
            owner_key: format!("i:{}:{}", app.name(), owner_part(asked)),
            asked_key: format!("i:{}:{asked}", app.name()),
            asked: asked.to_string(),
            found_ttl: self.found_ttl,
        }
    }

    /// Forgets every look-up that found installation `id` (it is gone or changed).
    pub(super) fn forget_found(&self, id: u64) {
        let _ =
            self.cache.invalidate_entries_if(move |_, v| matches!(v, Lookup::Found(found) if *found == id));
    }

    /// Forgets what is known about `account`: its look-ups here and in the store, and what
    /// was remembered as "not installed" for it.
    pub(super) async fn forget_account(&self, account: &str, app_names: &[String]) {
        let account = account.to_ascii_lowercase();
        let owner_key = format!("owner:{account}");
        let repo_prefix = format!("repo:{account}/");
        let _ = self
            .cache
            .invalidate_entries_if(move |key, _| key.1 == owner_key || key.1.starts_with(&repo_prefix));
        let _ = self.negative.clear(Some(crate::negative::APP_NOT_INSTALLED), Some(&account), None).await;
        let Some(backend) = &self.backend else { return };
        for app in app_names {
            let mut keys = vec![format!("i:{app}:owner:{account}")];
            keys.extend(
                backend.keys_with_prefix(&format!("i:{app}:repo:{account}/")).await.unwrap_or_default(),
            );
            for key in keys {
                let _ = backend.remove(&key).await;
            }
        }
    }
}

/// The look-up keys of one question in the store: the owner's answer, and the answer for
/// exactly what was asked (a repository).
struct StoredLookups {
    backend: Option<Arc<dyn Store>>,
    negative: Arc<NegativeCache>,
    app: String,
    owner_key: String,
    asked_key: String,
    asked: String,
    found_ttl: Duration,
}

impl StoredLookups {
    /// A look-up result from the store: the owner's installation, or "not installed" for
    /// exactly what was asked.
    async fn load(&self) -> Option<LookedUp> {
        let backend = self.backend.as_ref()?;
        let found = |text: &[u8]| std::str::from_utf8(text).ok()?.strip_prefix("found:")?.parse().ok();
        let mut keys = vec![&self.owner_key];
        if self.asked_key != self.owner_key {
            keys.push(&self.asked_key);
        }
        for key in keys {
            if let Ok(Some(live)) = backend.get_live(key).await {
                if let Some(id) = found(&live.payload) {
                    return Some(LookedUp { lookup: Lookup::Found(id), asked: self.asked.clone() });
                }
            }
        }
        // "Not installed" is kept by the negative cache.
        let key = self.negative.not_installed_key(&self.app, &self.asked)?;
        if self.negative.is_not_installed(&key, false).await {
            return Some(LookedUp { lookup: Lookup::NotInstalled, asked: self.asked.clone() });
        }
        None
    }

    /// Keeps a found installation for the owner (and what was asked).
    async fn save(&self, lookup: Lookup) {
        let Some(backend) = &self.backend else { return };
        match lookup {
            Lookup::Found(id) => {
                let value = format!("found:{id}");
                let _ = backend.put_expiring(&self.owner_key, value.as_bytes(), self.found_ttl).await;
                if self.asked_key != self.owner_key {
                    let _ = backend.put_expiring(&self.asked_key, value.as_bytes(), self.found_ttl).await;
                }
            }
            // Remembered by the negative cache (rule app_not_installed), by the caller.
            Lookup::NotInstalled => {}
        }
    }
}

/// One look-up, done by one replica at a time.
struct LookupJob {
    store: StoredLookups,
    upstream: Upstream,
    app: Arc<GitHubApp>,
    paths: Vec<String>,
    metrics: Arc<Metrics>,
}

impl ReplicaWork for LookupJob {
    type Output = LookupResult;

    async fn check(&self) -> Option<LookupResult> {
        self.store.load().await.map(Ok)
    }

    async fn work(self) -> LookupResult {
        let result = look_up(&self.upstream, &self.app, &self.paths, &self.metrics).await;
        if let Ok(lookup) = &result {
            self.store.save(*lookup).await;
        }
        result.map(|lookup| LookedUp { lookup, asked: self.store.asked })
    }
}

/// The look-up key of a target: `repo:o/r`, or `owner:o`.
fn target_key(target: &Target) -> String {
    match target {
        Target::Repo(o, r) => format!("repo:{}/{}", o.to_ascii_lowercase(), r.to_ascii_lowercase()),
        other => format!("owner:{}", other.owner().unwrap_or_default().to_ascii_lowercase()),
    }
}

/// `owner:o` for a look-up key (`repo:o/r` or `owner:o`).
fn owner_part(asked: &str) -> String {
    match asked.strip_prefix("repo:") {
        Some(repo) => format!("owner:{}", repo.split('/').next().unwrap_or_default()),
        None => asked.to_string(),
    }
}

/// GitHub's look-up endpoints for a target, tried in order until one finds it.
fn lookup_paths(target: &Target) -> Vec<String> {
    match target {
        Target::Repo(o, r) => vec![format!("/repos/{o}/{r}/installation")],
        Target::Org(o) => vec![format!("/orgs/{o}/installation")],
        Target::User(u) => vec![format!("/users/{u}/installation")],
        Target::Owner(o) => vec![format!("/orgs/{o}/installation"), format!("/users/{o}/installation")],
        Target::Id(_) => unreachable!("ids need no look-up"),
    }
}

fn not_installed(app: &GitHubApp, target: &Target) -> Rejection {
    Rejection::new(
        StatusCode::NOT_FOUND,
        format!("GitHub App {:?} is not installed on {}", app.name(), target.describe()),
    )
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

/// Asks GitHub, with the app's JWT, for the installation at each of `paths` in turn.
async fn look_up(
    upstream: &Upstream,
    app: &GitHubApp,
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
