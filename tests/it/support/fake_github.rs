//! A fake GitHub for the test suite: an axum app on a loopback port that behaves like the
//! GitHub REST API where the gateway's behaviour depends on it, and counts what it charges.
//!
//! It sends GitHub's caching headers (`Cache-Control: private, max-age=N, s-maxage=N` for
//! authenticated requests, two `Vary` lines, weak or strong `ETag` tied to the credential,
//! `Last-Modified`), answers matching conditional requests with a free 304, counts rate-limit
//! units per credential in `x-ratelimit-*`, hides private resources from other tokens, pages
//! lists with absolute `Link` URLs, and can be told to slow down, fail, or change a resource.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use sha2::{Digest, Sha256};

/// One resource the fake serves.
#[derive(Clone, Debug)]
pub struct Resource {
    /// The JSON body.
    pub json: String,
    /// Other representations by media-type fragment (`diff`, `raw`, ...).
    pub variants: HashMap<String, String>,
    /// Bumped on every change.
    pub version: u64,
    /// Tokens that may see it; `None` means everyone, anonymous included.
    pub visible_to: Option<Vec<String>>,
    /// When it last changed; sent as `Last-Modified` when `send_last_modified`.
    pub modified: SystemTime,
    /// Whether to send `Last-Modified`.
    pub send_last_modified: bool,
    /// A `Cache-Control` to send instead of GitHub's usual one.
    pub cache_control: Option<String>,
    /// Strong instead of weak ETag.
    pub strong_etag: bool,
    /// Bodies some tokens get instead of `json` (GitHub's answers can differ per credential).
    pub per_token: HashMap<String, String>,
    /// A list paged like GitHub's: `?page=N` gets the N-th JSON array, with `Link` to the
    /// next and last pages (none past the last).
    pub pages: Option<Vec<String>>,
}

impl Resource {
    /// A public JSON resource with GitHub's usual headers.
    pub fn json(json: impl Into<String>) -> Self {
        Resource {
            json: json.into(),
            variants: HashMap::new(),
            version: 1,
            visible_to: None,
            modified: SystemTime::now() - Duration::from_secs(3600),
            send_last_modified: true,
            cache_control: None,
            strong_etag: false,
            per_token: HashMap::new(),
            pages: None,
        }
    }

    /// A list of `pages` JSON arrays, served a page at a time as GitHub does.
    pub fn pages(pages: Vec<String>) -> Self {
        let mut resource = Resource::json(pages.first().cloned().unwrap_or_else(|| "[]".into()));
        resource.pages = Some(pages);
        resource
    }

    /// `token` gets `json` instead of the resource's usual body.
    pub fn body_for(mut self, token: &str, json: &str) -> Self {
        self.per_token.insert(token.to_string(), json.to_string());
        self
    }

    /// Only these tokens may see it; others get 404, as GitHub answers for private repos.
    pub fn private_to(mut self, tokens: &[&str]) -> Self {
        self.visible_to = Some(tokens.iter().map(|t| t.to_string()).collect());
        self
    }

    /// Adds a representation chosen by an `Accept` containing `fragment`.
    pub fn variant(mut self, fragment: &str, body: &str) -> Self {
        self.variants.insert(fragment.to_string(), body.to_string());
        self
    }

    /// Overrides `Cache-Control`.
    pub fn cache_control(mut self, value: &str) -> Self {
        self.cache_control = Some(value.to_string());
        self
    }
}

/// A fault in the body of an answer whose headers went out fine.
#[derive(Debug, Clone, Copy)]
pub enum BodyFault {
    /// Half the body, then the connection is dropped (a reset mid-body).
    Reset,
    /// Half the body, then nothing for this long, then the rest.
    Stall(Duration),
}

#[derive(Default)]
struct Inner {
    resources: HashMap<String, Resource>,
    /// Units used per credential ("anonymous" for none).
    used: HashMap<String, u64>,
    /// Answers to give instead of the resource, consumed one per request (status codes).
    failures: Vec<u16>,
    /// Fail every request with this status while set.
    fail_always: Option<u16>,
    delay: Duration,
    max_age: u64,
    /// Statuses posted per (owner/repo/sha, context).
    statuses: HashMap<(String, String), u64>,
    /// How many statuses one SHA and context may have (GitHub: 1000).
    statuses_limit: u64,
    /// The 422 body shape past the limit: "string" (today's), "list" (older) or "reworded".
    statuses_shape: String,
    /// Answers to give instead, one per request: (status, body).
    canned: Vec<(u16, String)>,
    /// Faults for the bodies of the next successful resource answers, one per answer.
    body_faults: Vec<BodyFault>,
    /// A smaller rate limit for authenticated credentials than GitHub's 5000.
    limit: Option<u64>,
    /// Secondary limits to answer next: "retry-after:N", "429" or "remaining-0".
    secondary: Vec<String>,
    /// When each credential's requests arrived.
    times: Vec<(String, Instant)>,
    /// Paths that answer with a redirect: (status, target path under the base).
    redirects: HashMap<String, (u16, String)>,
    /// Requests per path.
    per_path: HashMap<String, u64>,
    /// Request log: (method, path and query, headers).
    log: Vec<(Method, String, HeaderMap)>,
    /// The GitHub App side, once enabled.
    app: Option<FakeApp>,
    /// The GraphQL endpoint's settings and serial number.
    graphql: graphql::Endpoint,
    /// ETags that do not follow GitHub's rule (as if GitHub changed it).
    opaque_etags: bool,
}

/// A GitHub App as GitHub sees it: its public key, where it is installed, its tokens.
struct FakeApp {
    id: String,
    public_pem: Vec<u8>,
    /// Owner (lower-case) → installation id.
    installations: HashMap<String, u64>,
    tokens: HashMap<String, FakeToken>,
    lifetime: Duration,
    lag: Duration,
    /// The status a not-yet-replicated token gets (401, or the 403 seen in the wild).
    lag_status: u16,
    next: u64,
}

struct FakeToken {
    installation: u64,
    minted: Instant,
    expires: SystemTime,
    revoked: bool,
    permissions: Option<serde_json::Value>,
}

/// Shared state and counters of a running fake.
pub struct FakeState {
    inner: Mutex<Inner>,
    /// Requests received.
    pub requests: AtomicU64,
    /// Rate-limit units charged (every answer but 304).
    pub charged: AtomicU64,
    /// 304 answers given.
    pub not_modified: AtomicU64,
    /// GraphQL points charged (the `graphql` resource; not in `charged`).
    pub points: AtomicU64,
    /// GraphQL requests answered by the endpoint (valid or not).
    pub graphql_requests: AtomicU64,
    /// Installation tokens minted.
    pub mints: AtomicU64,
    /// Installation look-ups answered (found or not).
    pub lookups: AtomicU64,
    /// App JWTs refused (bad signature, expired, too far in the future, wrong issuer).
    pub jwt_refusals: AtomicU64,
    /// Requests that used an expired installation token.
    pub expired_token_uses: AtomicU64,
    /// Requests refused because their token had not replicated yet.
    pub lagged_token_uses: AtomicU64,
    prefix: String,
    base: Mutex<String>,
}

/// A running fake GitHub.
#[derive(Clone)]
pub struct FakeGitHub {
    /// Shared state and counters.
    pub state: Arc<FakeState>,
    shutdown: Arc<tokio::sync::Notify>,
}

const LIMIT_AUTHENTICATED: u64 = 5000;
/// The request log keeps at most this many entries (benchmarks send millions).
const LOG_LIMIT: usize = 20_000;
const LIMIT_ANONYMOUS: u64 = 60;

impl FakeGitHub {
    /// Starts the fake on a free loopback port, serving at the root like api.github.com.
    pub async fn start() -> FakeGitHub {
        Self::start_with_prefix("").await
    }

    /// Starts the fake on a chosen loopback port (0 for any).
    #[allow(dead_code)] // The benchmark upstream (examples/bench_upstream.rs) listens on a chosen port.
    pub async fn start_on(port: u16) -> FakeGitHub {
        Self::listen(port, "").await
    }

    /// Starts the fake serving under a path prefix, like GitHub Enterprise's `/api/v3`.
    pub async fn start_with_prefix(prefix: &str) -> FakeGitHub {
        Self::listen(0, prefix).await
    }

    async fn listen(port: u16, prefix: &str) -> FakeGitHub {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(FakeState {
            inner: Mutex::new(Inner {
                max_age: 60,
                statuses_limit: 1000,
                statuses_shape: "string".into(),
                ..Inner::default()
            }),
            requests: AtomicU64::new(0),
            charged: AtomicU64::new(0),
            not_modified: AtomicU64::new(0),
            points: AtomicU64::new(0),
            graphql_requests: AtomicU64::new(0),
            mints: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            jwt_refusals: AtomicU64::new(0),
            expired_token_uses: AtomicU64::new(0),
            lagged_token_uses: AtomicU64::new(0),
            prefix: prefix.to_string(),
            base: Mutex::new(format!("http://{addr}{prefix}")),
        });
        let app = Router::new().fallback(handle).with_state(Arc::clone(&state));
        let shutdown = Arc::new(tokio::sync::Notify::new());
        let stop = Arc::clone(&shutdown);
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.notified().await })
                .await
                .unwrap();
        });
        FakeGitHub { state, shutdown }
    }

    /// The base URL to configure as the gateway's upstream.
    pub fn url(&self) -> String {
        self.state.base.lock().unwrap().clone()
    }

    /// Stops accepting connections (the port then refuses).
    pub fn stop(&self) {
        self.shutdown.notify_one();
    }

    /// Adds or replaces a resource.
    pub fn put(&self, path: &str, resource: Resource) {
        self.state.inner.lock().unwrap().resources.insert(path.to_string(), resource);
    }

    /// Makes `path` answer `status` with an absolute `Location` to `target` (as GitHub does
    /// for renamed repositories).
    pub fn redirect(&self, path: &str, status: u16, target: &str) {
        self.state.inner.lock().unwrap().redirects.insert(path.to_string(), (status, target.to_string()));
    }

    /// How many statuses one SHA and context may have, and the shape of the 422 past it
    /// (`string`, `list` or `reworded`).
    pub fn set_statuses_limit(&self, limit: u64, shape: &str) {
        let mut inner = self.state.inner.lock().unwrap();
        inner.statuses_limit = limit;
        inner.statuses_shape = shape.to_string();
    }

    /// Authenticated credentials get this many units per window instead of 5000; past it,
    /// GitHub's 403 "API rate limit exceeded" with `x-ratelimit-remaining: 0`.
    pub fn set_limit(&self, limit: u64) {
        self.state.inner.lock().unwrap().limit = Some(limit);
    }

    /// The next request gets a secondary limit: `retry-after:N` (403 with `retry-after`),
    /// `429` (no `retry-after`) or `remaining-0` (403 with `x-ratelimit-remaining: 0`).
    pub fn secondary_next(&self, kind: &str) {
        self.state.inner.lock().unwrap().secondary.push(kind.to_string());
    }

    /// When a credential's requests arrived.
    pub fn request_times(&self, token: &str) -> Vec<Instant> {
        let inner = self.state.inner.lock().unwrap();
        inner.times.iter().filter(|(c, _)| c == token).map(|(_, t)| *t).collect()
    }

    /// The next request gets this status and body instead of its answer.
    pub fn answer_next(&self, status: u16, body: &str) {
        self.state.inner.lock().unwrap().canned.push((status, body.to_string()));
    }

    /// Turns on the GitHub App endpoints for one app, verifying its JWTs with `public_pem`.
    pub fn enable_app(&self, app_id: &str, public_pem: &[u8]) {
        self.state.inner.lock().unwrap().app = Some(FakeApp {
            id: app_id.to_string(),
            public_pem: public_pem.to_vec(),
            installations: HashMap::new(),
            tokens: HashMap::new(),
            lifetime: Duration::from_secs(3600),
            lag: Duration::ZERO,
            lag_status: 401,
            next: 1,
        });
    }

    /// Installs the app on an owner with an installation id.
    pub fn install(&self, owner: &str, installation: u64) {
        let mut inner = self.state.inner.lock().unwrap();
        inner
            .app
            .as_mut()
            .expect("app enabled")
            .installations
            .insert(owner.to_ascii_lowercase(), installation);
    }

    /// How long new installation tokens live (GitHub: one hour).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state.inner.lock().unwrap().app.as_mut().expect("app enabled").lifetime = lifetime;
    }

    /// How long a new token is refused with 401 before it "replicates".
    pub fn set_replication_lag(&self, lag: Duration) {
        self.state.inner.lock().unwrap().app.as_mut().expect("app enabled").lag = lag;
    }

    /// Answers not-yet-replicated tokens with 403 instead of 401.
    pub fn set_lag_status(&self, status: u16) {
        self.state.inner.lock().unwrap().app.as_mut().expect("app enabled").lag_status = status;
    }

    /// Revokes every token minted so far.
    pub fn revoke_tokens(&self) {
        let mut inner = self.state.inner.lock().unwrap();
        for t in inner.app.as_mut().expect("app enabled").tokens.values_mut() {
            t.revoked = true;
        }
    }

    /// Permissions the last minted token was asked for.
    pub fn last_token_permissions(&self) -> Option<serde_json::Value> {
        let inner = self.state.inner.lock().unwrap();
        let app = inner.app.as_ref()?;
        app.tokens.values().max_by_key(|t| t.minted).and_then(|t| t.permissions.clone())
    }

    /// Tokens minted.
    pub fn mints(&self) -> u64 {
        self.state.mints.load(Ordering::SeqCst)
    }

    /// Installation look-ups answered.
    pub fn lookups(&self) -> u64 {
        self.state.lookups.load(Ordering::SeqCst)
    }

    /// Requests made with an expired installation token.
    pub fn expired_token_uses(&self) -> u64 {
        self.state.expired_token_uses.load(Ordering::SeqCst)
    }

    /// Requests refused because their token had not replicated yet.
    pub fn lagged_token_uses(&self) -> u64 {
        self.state.lagged_token_uses.load(Ordering::SeqCst)
    }

    /// App JWTs refused.
    pub fn jwt_refusals(&self) -> u64 {
        self.state.jwt_refusals.load(Ordering::SeqCst)
    }

    /// Changes a resource's body (new version, new ETag, new Last-Modified).
    pub fn change(&self, path: &str, json: &str) {
        let mut inner = self.state.inner.lock().unwrap();
        let r = inner.resources.get_mut(path).expect("resource exists");
        r.json = json.to_string();
        r.version += 1;
        r.modified = SystemTime::now() + Duration::from_secs(1);
    }

    /// The `max-age` GitHub's usual `Cache-Control` carries (60 on github.com).
    pub fn set_max_age(&self, secs: u64) {
        self.state.inner.lock().unwrap().max_age = secs;
    }

    /// Hands out ETags that do not follow GitHub's known rule (as if GitHub changed it).
    pub fn set_opaque_etags(&self, opaque: bool) {
        self.state.inner.lock().unwrap().opaque_etags = opaque;
    }

    /// Delays every answer.
    pub fn set_delay(&self, delay: Duration) {
        self.state.inner.lock().unwrap().delay = delay;
    }

    /// The next successful resource answer's body gets `fault`.
    pub fn body_fault_next(&self, fault: BodyFault) {
        self.state.inner.lock().unwrap().body_faults.push(fault);
    }

    /// The next `n` requests get `status` (uncharged for 5xx).
    pub fn fail_next(&self, n: usize, status: u16) {
        self.state.inner.lock().unwrap().failures.extend(std::iter::repeat_n(status, n));
    }

    /// Every request gets `status` until cleared with `None`.
    pub fn fail_always(&self, status: Option<u16>) {
        self.state.inner.lock().unwrap().fail_always = status;
    }

    /// Requests received in all.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Rate-limit units charged in all.
    pub fn charged(&self) -> u64 {
        self.state.charged.load(Ordering::SeqCst)
    }

    /// Free 304 answers given.
    pub fn not_modified(&self) -> u64 {
        self.state.not_modified.load(Ordering::SeqCst)
    }

    /// Requests received for one path (without query).
    pub fn requests_for(&self, path: &str) -> u64 {
        self.state.inner.lock().unwrap().per_path.get(path).copied().unwrap_or(0)
    }

    /// Every request received: method, path and query, headers.
    pub fn log(&self) -> Vec<(Method, String, HeaderMap)> {
        self.state.inner.lock().unwrap().log.clone()
    }
}

/// The credential of a request: the token of `token X` / `Bearer X`, or "anonymous".
pub fn credential(headers: &HeaderMap) -> String {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return "anonymous".into();
    };
    let value = value.trim();
    for scheme in ["token ", "bearer ", "Bearer ", "Token "] {
        if let Some(rest) = value.strip_prefix(scheme) {
            return rest.trim().to_string();
        }
    }
    value.to_string()
}

fn json_error(status: StatusCode, message: &str) -> (StatusCode, String) {
    (status, format!(r#"{{"message":"{message}","documentation_url":"https://docs.github.com/rest"}}"#))
}

async fn handle(State(state): State<Arc<FakeState>>, request: Request) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let full_path = parts.uri.path().to_string();
    let path = full_path.strip_prefix(&state.prefix).unwrap_or(&full_path).to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let cred = credential(&parts.headers);
    let resource = if path == "/graphql" { "graphql" } else { "core" };
    let (delay, failure, max_age, canned, secondary, over_limit) = {
        let mut inner = state.inner.lock().unwrap();
        *inner.per_path.entry(path.clone()).or_default() += 1;
        let pq = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
        if inner.log.len() >= LOG_LIMIT {
            inner.log.drain(..LOG_LIMIT / 2);
        }
        inner.log.push((parts.method.clone(), pq, parts.headers.clone()));
        let failure =
            inner.fail_always.or_else(|| (!inner.failures.is_empty()).then(|| inner.failures.remove(0)));
        let canned = (!inner.canned.is_empty()).then(|| inner.canned.remove(0));
        inner.times.push((cred.clone(), Instant::now()));
        let secondary = (!inner.secondary.is_empty()).then(|| inner.secondary.remove(0));
        let over_limit = cred != "anonymous"
            && inner
                .limit
                .is_some_and(|l| inner.used.get(&ledger_key(&cred, resource)).copied().unwrap_or(0) >= l);
        (inner.delay, failure, inner.max_age, canned, secondary, over_limit)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(kind) = secondary {
        let mut headers = HeaderMap::new();
        let message =
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.";
        let status = match kind.strip_prefix("retry-after:") {
            Some(secs) => {
                headers.insert("retry-after", HeaderValue::from_str(secs).unwrap());
                StatusCode::FORBIDDEN
            }
            None if kind == "429" => StatusCode::TOO_MANY_REQUESTS,
            None => StatusCode::FORBIDDEN,
        };
        let (s, b) = json_error(status, message);
        let mut response = respond_as(&state, &cred, resource, s, b, headers, 0);
        if kind == "remaining-0" {
            response.headers_mut().insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        }
        return response;
    }
    if over_limit && !path.ends_with("/access_tokens") && !path.ends_with("/installation") {
        let (s, b) = json_error(StatusCode::FORBIDDEN, "API rate limit exceeded for user.");
        return respond_as(&state, &cred, resource, s, b, HeaderMap::new(), 0);
    }
    if let Some((status, body)) = canned {
        return respond_as(
            &state,
            &cred,
            resource,
            StatusCode::from_u16(status).unwrap(),
            body,
            HeaderMap::new(),
            1,
        );
    }
    if let Some(status) = failure {
        let status = StatusCode::from_u16(status).unwrap();
        let (s, b) = json_error(status, "Server Error");
        let cost = u64::from(!status.is_server_error());
        return respond_as(&state, &cred, resource, s, b, HeaderMap::new(), cost);
    }

    if let Some(answer) = app_endpoint(&state, &parts.method, &path, &parts.headers, &body) {
        return answer;
    }
    // Installation tokens: refused when unknown, revoked, expired or not yet replicated.
    let mut cred = cred;
    if cred.starts_with("ghs_") {
        match check_installation_token(&state, &cred) {
            Ok(installation) => cred = format!("{cred}|installation-{installation}"),
            Err(answer) => return *answer,
        }
    }

    if path == "/graphql" && parts.method == Method::POST {
        return graphql::answer(&state, &body, &cred);
    }
    if parts.method == Method::GET || parts.method == Method::HEAD {
        return get(&state, &parts.headers, &path, &query, &cred, max_age);
    }
    if let Some(answer) = post_status(&state, &parts.method, &path, &body, &cred) {
        return answer;
    }
    // Writes: charged, echo the body, and change the resource at that path if there is one.
    {
        let mut inner = state.inner.lock().unwrap();
        if let Some(r) = inner.resources.get_mut(&path) {
            if parts.method == Method::PATCH || parts.method == Method::PUT {
                r.json = String::from_utf8_lossy(&body).to_string();
            }
            r.version += 1;
            r.modified = SystemTime::now() + Duration::from_secs(1);
        }
    }
    let status = if parts.method == Method::POST { StatusCode::CREATED } else { StatusCode::OK };
    let echo = if body.is_empty() { "{}".to_string() } else { String::from_utf8_lossy(&body).to_string() };
    respond(&state, &cred, status, echo, HeaderMap::new(), true)
}

fn get(state: &FakeState, req: &HeaderMap, path: &str, query: &str, cred: &str, max_age: u64) -> Response {
    let redirect = state.inner.lock().unwrap().redirects.get(path).cloned();
    if let Some((status, target)) = redirect {
        let base = state.base.lock().unwrap().clone();
        let mut headers = HeaderMap::new();
        headers.insert("location", HeaderValue::from_str(&format!("{base}{target}")).unwrap());
        let body = format!(r#"{{"message":"Moved Permanently","url":"{base}{target}"}}"#);
        return respond(state, cred, StatusCode::from_u16(status).unwrap(), body, headers, true);
    }
    let resource = state.inner.lock().unwrap().resources.get(path).cloned();
    let Some(resource) = resource else {
        let (s, b) = json_error(StatusCode::NOT_FOUND, "Not Found");
        return respond(state, cred, s, b, HeaderMap::new(), true);
    };
    if let Some(visible) = &resource.visible_to {
        if !visible.iter().any(|t| cred.split('|').any(|c| c == t)) {
            let (s, b) = json_error(StatusCode::NOT_FOUND, "Not Found");
            return respond(state, cred, s, b, HeaderMap::new(), true);
        }
    }
    let accept = req.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let (body, content_type) = match resource.variants.iter().find(|(frag, _)| accept.contains(frag.as_str()))
    {
        Some((_, body)) => (body.clone(), "text/plain; charset=utf-8"),
        None => {
            let own = resource.per_token.iter().find(|(t, _)| cred.split('|').any(|c| c == t.as_str()));
            (own.map_or(&resource.json, |(_, b)| b).clone(), "application/json; charset=utf-8")
        }
    };
    // Pagination: `?page=N` of a list resource, with absolute Link URLs like GitHub's.
    let page: u64 =
        query.split('&').find_map(|kv| kv.strip_prefix("page=")).and_then(|p| p.parse().ok()).unwrap_or(1);
    let body = if let Some(pages) = &resource.pages {
        pages.get(page.saturating_sub(1) as usize).cloned().unwrap_or_else(|| "[]".into())
    } else if query.contains("page=") || path.ends_with("/issues") {
        format!(r#"{{"page":{page},"items":{body}}}"#)
    } else {
        body
    };

    let tag = if state.inner.lock().unwrap().opaque_etags {
        hex::encode(&Sha256::digest(format!("{path}|{query}|{}|{cred}", resource.version))[..8])
    } else {
        github_etag(req, body.as_bytes())
    };
    let etag = if resource.strong_etag { format!("\"{tag}\"") } else { format!("W/\"{tag}\"") };

    let mut headers = HeaderMap::new();
    let cache_control = resource.cache_control.clone().unwrap_or_else(|| {
        if cred == "anonymous" {
            format!("public, max-age={max_age}, s-maxage={max_age}")
        } else {
            format!("private, max-age={max_age}, s-maxage={max_age}")
        }
    });
    headers.insert("cache-control", HeaderValue::from_str(&cache_control).unwrap());
    headers.append("vary", HeaderValue::from_static("Accept, Authorization, Cookie, X-GitHub-OTP"));
    headers.append("vary", HeaderValue::from_static("Accept-Encoding, Accept, X-Requested-With"));
    headers.insert("etag", HeaderValue::from_str(&etag).unwrap());
    headers.insert("content-type", HeaderValue::from_static(content_type));
    headers.insert("x-github-media-type", HeaderValue::from_static("github.v3; format=json"));
    if resource.send_last_modified {
        headers.insert(
            "last-modified",
            HeaderValue::from_str(&httpdate::fmt_http_date(resource.modified)).unwrap(),
        );
    }
    if let Some(pages) = &resource.pages {
        let base = state.base.lock().unwrap().clone();
        let last = pages.len() as u64;
        let mut links = Vec::new();
        if page < last {
            links.push(format!("<{base}{path}?page={}>; rel=\"next\"", page + 1));
            links.push(format!("<{base}{path}?page={last}>; rel=\"last\""));
        }
        if page > 1 {
            links.push(format!("<{base}{path}?page={}>; rel=\"prev\"", page - 1));
            links.push(format!("<{base}{path}?page=1>; rel=\"first\""));
        }
        if !links.is_empty() {
            headers.insert("link", HeaderValue::from_str(&links.join(", ")).unwrap());
        }
    } else if query.contains("page=") || path.ends_with("/issues") {
        let base = state.base.lock().unwrap().clone();
        let link =
            format!("<{base}{path}?page={}>; rel=\"next\", <{base}{path}?page=5>; rel=\"last\"", page + 1);
        headers.insert("link", HeaderValue::from_str(&link).unwrap());
    }

    // Conditional requests: If-None-Match wins; If-Modified-Since works across tokens.
    let not_modified = if let Some(inm) = req.get("if-none-match").and_then(|v| v.to_str().ok()) {
        inm.split(',').any(|t| t.trim().trim_start_matches("W/") == etag.trim_start_matches("W/"))
    } else if let Some(ims) = req.get("if-modified-since").and_then(|v| v.to_str().ok()) {
        // HTTP dates have whole seconds: compare at that precision.
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        httpdate::parse_http_date(ims).map(|since| secs(resource.modified) <= secs(since)).unwrap_or(false)
            && resource.send_last_modified
    } else {
        false
    };
    if not_modified {
        state.not_modified.fetch_add(1, Ordering::SeqCst);
        return respond(state, cred, StatusCode::NOT_MODIFIED, String::new(), headers, false);
    }
    let fault = {
        let mut inner = state.inner.lock().unwrap();
        (!inner.body_faults.is_empty()).then(|| inner.body_faults.remove(0))
    };
    let full = body.clone();
    let mut response = respond(state, cred, StatusCode::OK, body, headers, true);
    if let Some(fault) = fault {
        response.headers_mut().remove("content-length");
        *response.body_mut() = faulty_body(full.into_bytes(), fault);
    }
    response
}

/// The ETag GitHub gives an answer, as observed by bored-engineer/github-conditional-http-transport:
/// SHA-256 over the request's `Accept`, `Authorization` and `Cookie` values (where present,
/// each followed by `:`), then the body, in hex. So it differs per token, per `token`/`Bearer`
/// spelling and per `Accept` spelling, and is the same for the same bytes and request headers.
pub fn github_etag(request: &HeaderMap, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    for name in ["accept", "authorization", "cookie"] {
        for value in request.get_all(name) {
            hasher.update(value.as_bytes());
            hasher.update(b":");
        }
    }
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// A body that sends its first half, then fails as `fault` says.
fn faulty_body(full: Vec<u8>, fault: BodyFault) -> Body {
    let (first, rest) = full.split_at(full.len() / 2);
    let (first, rest) = (Bytes::copy_from_slice(first), Bytes::copy_from_slice(rest));
    let stream = futures::stream::unfold(0u8, move |step| {
        let (first, rest) = (first.clone(), rest.clone());
        async move {
            match (step, fault) {
                (0, _) => Some((Ok::<_, std::io::Error>(first), 1)),
                (1, BodyFault::Reset) => {
                    Some((Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")), 2))
                }
                (1, BodyFault::Stall(pause)) => {
                    tokio::time::sleep(pause).await;
                    Some((Ok(rest), 2))
                }
                _ => None,
            }
        }
    });
    Body::from_stream(stream)
}

/// `POST /repos/{o}/{r}/statuses/{sha}`: counts statuses per SHA and context and, past the
/// limit, answers GitHub's 422 (which is charged like any other answer).
fn post_status(state: &FakeState, method: &Method, path: &str, body: &[u8], cred: &str) -> Option<Response> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["repos", owner, repo, "statuses", sha] = segments.as_slice() else { return None };
    if method != Method::POST {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let context = json.get("context").and_then(|c| c.as_str()).unwrap_or("default").to_string();
    let (count, limit, shape) = {
        let mut inner = state.inner.lock().unwrap();
        let key = (format!("{owner}/{repo}/{sha}"), context.clone());
        let count = inner.statuses.entry(key).or_default();
        *count += 1;
        let count = *count;
        (count, inner.statuses_limit, inner.statuses_shape.clone())
    };
    if count > limit {
        let body = match shape.as_str() {
            "list" => {
                r#"{"message":"Validation Failed","errors":[{"resource":"Status","code":"custom","message":"This SHA and context has reached the maximum number of statuses."}],"documentation_url":"https://docs.github.com/rest/commits/statuses#create-a-commit-status"}"#
            }
            "reworded" => {
                r#"{"message":"Validation Failed","errors":"Validation failed: this commit cannot take more statuses in this context.","documentation_url":"https://docs.github.com/rest/commits/statuses#create-a-commit-status","status":"422"}"#
            }
            _ => {
                r#"{"message":"Validation Failed","errors":"Validation failed: This SHA and context has reached the maximum number of statuses.","documentation_url":"https://docs.github.com/rest/commits/statuses#create-a-commit-status","status":"422"}"#
            }
        };
        return Some(respond(
            state,
            cred,
            StatusCode::UNPROCESSABLE_ENTITY,
            body.to_string(),
            HeaderMap::new(),
            true,
        ));
    }
    let state_field = json.get("state").and_then(|s| s.as_str()).unwrap_or("pending");
    let body = format!(r#"{{"id":{count},"state":"{state_field}","context":"{context}"}}"#);
    Some(respond(state, cred, StatusCode::CREATED, body, HeaderMap::new(), true))
}

/// Answers the GitHub App endpoints (installation look-ups and token mints), which need a
/// valid app JWT; `None` for every other request.
fn app_endpoint(
    state: &FakeState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Response> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let lookup_owner = match (method, segments.as_slice()) {
        (&Method::GET, ["repos", owner, _, "installation"]) => Some(owner.to_string()),
        (&Method::GET, ["orgs", owner, "installation"]) => Some(owner.to_string()),
        (&Method::GET, ["users", owner, "installation"]) => Some(owner.to_string()),
        _ => None,
    };
    let mint_for = match (method, segments.as_slice()) {
        (&Method::POST, ["app", "installations", id, "access_tokens"]) => id.parse::<u64>().ok(),
        _ => None,
    };
    if lookup_owner.is_none() && mint_for.is_none() {
        return None;
    }
    if let Err(message) = verify_jwt(state, headers) {
        state.jwt_refusals.fetch_add(1, Ordering::SeqCst);
        let (s, b) = json_error(StatusCode::UNAUTHORIZED, &message);
        return Some(respond(state, "app-jwt", s, b, HeaderMap::new(), false));
    }
    let mut inner = state.inner.lock().unwrap();
    let app = inner.app.as_mut().expect("verified JWT implies an app");
    if let Some(owner) = lookup_owner {
        state.lookups.fetch_add(1, Ordering::SeqCst);
        let found = app.installations.get(&owner.to_ascii_lowercase()).copied();
        drop(inner);
        return Some(match found {
            Some(id) => {
                let body = format!(r#"{{"id":{id},"account":{{"login":"{owner}"}},"app_id":1}}"#);
                respond(state, "app-jwt", StatusCode::OK, body, HeaderMap::new(), false)
            }
            None => {
                let (s, b) = json_error(StatusCode::NOT_FOUND, "Not Found");
                respond(state, "app-jwt", s, b, HeaderMap::new(), false)
            }
        });
    }
    let installation = mint_for.expect("checked above");
    if !app.installations.values().any(|id| *id == installation) {
        drop(inner);
        let (s, b) = json_error(StatusCode::NOT_FOUND, "Not Found");
        return Some(respond(state, "app-jwt", s, b, HeaderMap::new(), false));
    }
    let permissions =
        serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| v.get("permissions").cloned());
    let token = format!("ghs_fake{}x{}", app.next, hex::encode(rand::random::<[u8; 8]>()));
    app.next += 1;
    let expires = SystemTime::now() + app.lifetime;
    app.tokens.insert(
        token.clone(),
        FakeToken { installation, minted: Instant::now(), expires, revoked: false, permissions },
    );
    drop(inner);
    state.mints.fetch_add(1, Ordering::SeqCst);
    let expires_at = humantime::format_rfc3339_seconds(expires);
    let body = format!(r#"{{"token":"{token}","expires_at":"{expires_at}","repository_selection":"all"}}"#);
    Some(respond(state, "app-jwt", StatusCode::CREATED, body, HeaderMap::new(), false))
}

fn verify_jwt(state: &FakeState, headers: &HeaderMap) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Claims {
        iat: u64,
        exp: u64,
        iss: serde_json::Value,
    }
    let (app_id, public_pem) = {
        let inner = state.inner.lock().unwrap();
        let app = inner.app.as_ref().ok_or("no app is registered")?;
        (app.id.clone(), app.public_pem.clone())
    };
    let value = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("A JSON web token could not be decoded")?;
    let jwt = value.strip_prefix("Bearer ").ok_or("A JSON web token could not be decoded")?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(&public_pem).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    let claims = jsonwebtoken::decode::<Claims>(jwt.as_bytes(), &key, &validation)
        .map_err(|e| format!("A JSON web token could not be decoded: {e}"))?
        .claims;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    if claims.exp > now + 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future".into());
    }
    if claims.iat > now + 60 {
        return Err("'Issued at' claim ('iat') must be an Integer representing a time in the past".into());
    }
    let iss = match &claims.iss {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if iss != app_id {
        return Err("Integration not found".into());
    }
    Ok(())
}

/// The installation a token belongs to, or the 401 GitHub gives for it.
fn check_installation_token(state: &FakeState, token: &str) -> Result<u64, Box<Response>> {
    let verdict = {
        let inner = state.inner.lock().unwrap();
        let app = inner.app.as_ref();
        let lag_status = app.map(|a| a.lag_status).unwrap_or(401);
        match app.and_then(|a| a.tokens.get(token).map(|t| (t, a.lag))) {
            None => Err((None, 401)),
            Some((t, _)) if t.revoked => Err((None, 401)),
            Some((t, _)) if t.expires <= SystemTime::now() => Err((Some(&state.expired_token_uses), 401)),
            Some((t, lag)) if t.minted.elapsed() < lag => Err((Some(&state.lagged_token_uses), lag_status)),
            Some((t, _)) => Ok(t.installation),
        }
    };
    verdict.map_err(|(counter, status)| {
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        let status = StatusCode::from_u16(status).unwrap();
        let message = if status == StatusCode::FORBIDDEN {
            "Resource protected by organization SAML enforcement"
        } else {
            "Bad credentials"
        };
        let (s, b) = json_error(status, message);
        Box::new(respond(state, token, s, b, HeaderMap::new(), false))
    })
}

fn respond(
    state: &FakeState,
    cred: &str,
    status: StatusCode,
    body: String,
    headers: HeaderMap,
    charge: bool,
) -> Response {
    respond_as(state, cred, "core", status, body, headers, u64::from(charge))
}

/// An answer charging `cost` units (or points) of `resource` to `cred`, with its
/// `x-ratelimit-*` headers.
fn respond_as(
    state: &FakeState,
    cred: &str,
    resource: &'static str,
    status: StatusCode,
    body: String,
    mut headers: HeaderMap,
    cost: u64,
) -> Response {
    let used_limit = state.inner.lock().unwrap().limit;
    let limit = if cred == "anonymous" { LIMIT_ANONYMOUS } else { used_limit.unwrap_or(LIMIT_AUTHENTICATED) };
    let used = {
        let mut inner = state.inner.lock().unwrap();
        let used = inner.used.entry(ledger_key(cred, resource)).or_default();
        *used += cost;
        *used
    };
    if resource == "graphql" {
        state.points.fetch_add(cost, Ordering::SeqCst);
    } else if cost > 0 {
        state.charged.fetch_add(cost, Ordering::SeqCst);
    }
    let reset = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    headers.insert("x-ratelimit-limit", limit.into());
    headers.insert("x-ratelimit-remaining", limit.saturating_sub(used).into());
    headers.insert("x-ratelimit-used", used.into());
    headers.insert("x-ratelimit-reset", reset.into());
    headers.insert("x-ratelimit-resource", HeaderValue::from_static(resource));
    headers.insert("x-github-request-id", HeaderValue::from_static("FAKE:0001"));
    if !headers.contains_key("content-type") && status != StatusCode::NOT_MODIFIED {
        headers.insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
    }
    let mut response = Response::new(Body::from(Bytes::from(body)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The key of a credential's budget of one resource in `Inner::used`.
fn ledger_key(cred: &str, resource: &str) -> String {
    if resource == "core" { cred.to_string() } else { format!("{cred}#{resource}") }
}

mod graphql {
    //! The fake's `POST /graphql`: charges points to the `graphql` resource (its own budget and
    //! `x-ratelimit-*` headers, as GitHub does), answers every query with a fresh serial number
    //! (so a test can tell an upstream answer from a cached one), and can be told to answer with
    //! `errors` or to charge more points.

    use std::sync::atomic::Ordering;

    use axum::http::{HeaderMap, StatusCode};
    use axum::response::Response;

    use super::{FakeGitHub, FakeState, respond_as};

    /// The endpoint's settings and counter.
    #[derive(Default)]
    pub(super) struct Endpoint {
        /// Points each request costs (GitHub: at least 1, more for large connections).
        cost: Option<u64>,
        /// Serial number of the last answer.
        serial: u64,
        /// How many next answers report `errors`.
        errors_next: usize,
    }

    impl FakeGitHub {
        /// GraphQL points charged so far, over every credential.
        pub fn points(&self) -> u64 {
            self.state.points.load(Ordering::SeqCst)
        }

        /// `POST /graphql` requests received.
        pub fn graphql_requests(&self) -> u64 {
            self.state.graphql_requests.load(Ordering::SeqCst)
        }

        /// Makes every GraphQL request cost `points`.
        pub fn set_graphql_cost(&self, points: u64) {
            self.state.inner.lock().unwrap().graphql.cost = Some(points);
        }

        /// The next `n` GraphQL answers are 200s with `errors` (as GitHub answers a query about a
        /// repository it cannot find).
        pub fn graphql_errors_next(&self, n: usize) {
            self.state.inner.lock().unwrap().graphql.errors_next = n;
        }
    }

    fn error(message: &str) -> String {
        format!(r#"{{"message":"{message}","documentation_url":"https://docs.github.com/graphql"}}"#)
    }

    /// Answers one `POST /graphql`.
    pub(super) fn answer(state: &FakeState, body: &[u8], cred: &str) -> Response {
        state.graphql_requests.fetch_add(1, Ordering::SeqCst);
        let headers = HeaderMap::new();
        if cred == "anonymous" {
            let body = error("This endpoint requires you to be authenticated.");
            return respond_as(state, cred, "graphql", StatusCode::UNAUTHORIZED, body, headers, 0);
        }
        let Ok(serde_json::Value::Object(request)) = serde_json::from_slice::<serde_json::Value>(body) else {
            return respond_as(
                state,
                cred,
                "graphql",
                StatusCode::BAD_REQUEST,
                error("Problems parsing JSON"),
                headers,
                0,
            );
        };
        let query = request.get("query").and_then(|q| q.as_str()).unwrap_or("");
        let variables = request.get("variables").cloned().unwrap_or(serde_json::Value::Null);
        let (serial, cost, with_errors) = {
            let mut inner = state.inner.lock().unwrap();
            let endpoint = &mut inner.graphql;
            endpoint.serial += 1;
            let with_errors = endpoint.errors_next > 0;
            endpoint.errors_next = endpoint.errors_next.saturating_sub(1);
            (endpoint.serial, endpoint.cost.unwrap_or(1), with_errors)
        };
        let answer = if with_errors {
            serde_json::json!({
                "data": {"repository": null},
                "errors": [{"type": "NOT_FOUND", "path": ["repository"], "message": "Could not resolve to a Repository."}],
            })
        } else if query.trim_start().starts_with("mutation") {
            serde_json::json!({"data": {"mutation": {"serial": serial}}})
        } else {
            serde_json::json!({"data": {"serial": serial, "query": query, "variables": variables}})
        };
        respond_as(state, cred, "graphql", StatusCode::OK, answer.to_string(), headers, cost)
    }
}
