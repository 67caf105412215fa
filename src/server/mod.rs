//! Listeners: the proxy (every path goes to the pipeline) and the admin listener (metrics,
//! health, status), on separate sockets so the admin surface is never exposed with the proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{ConfigErrors, Settings, SettingsSource};
use crate::github;
use crate::identity;
use crate::pipeline::Gateway;
use crate::store::{self, Health};
use crate::telemetry::Metrics;

mod reload;
mod workers;

use reload::Reloader;

/// A started gateway: its bound addresses and the means to stop it.
pub struct Running {
    /// Where the proxy listens (useful when the configured port was 0).
    pub proxy_addr: SocketAddr,
    /// Where the admin listener listens.
    pub admin_addr: SocketAddr,
    /// The gateway's shared state.
    pub(crate) gateway: Arc<Gateway>,
    reloader: Arc<Reloader>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, waits for both listeners and flushes
    /// the store.
    pub async fn shutdown(self) {
        self.gateway.begin_stopping();
        let _ = self.shutdown.send(true);
        self.wait().await;
    }

    /// Waits until both listeners have stopped (after a signal or [`Running::shutdown`]), then
    /// flushes the store so a clean stop loses nothing.
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        self.gateway.responses().flush().await;
    }

    /// A handle that stops the gateway when sent `true`.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Serves until a stop signal, then stops the way a load balancer needs: on SIGTERM
    /// `/readyz` answers 503 at once and the gateway keeps accepting and serving for
    /// `server.shutdown_delay`, every HTTP/1 answer saying `Connection: close`; then the
    /// listeners close and in-flight requests get up to `server.shutdown_grace`. Ctrl-C, or a
    /// second signal, skips the delay.
    pub async fn serve_until_signalled(self) {
        let stop = self.shutdown.clone();
        let gateway = Arc::clone(&self.gateway);
        let delay = gateway.settings().server.shutdown_delay;
        #[cfg(unix)]
        {
            let reloader = Arc::clone(&self.reloader);
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(mut hangups) => {
                    tokio::spawn(async move {
                        while hangups.recv().await.is_some() {
                            let _ = reloader.reload("SIGHUP").await;
                        }
                    });
                }
                Err(e) => warn!(error = %e, "cannot listen for SIGHUP: reload with POST /reload"),
            }
        }
        tokio::spawn(async move {
            let signal = stop_signal().await;
            gateway.begin_stopping();
            if signal == StopSignal::Terminate && !delay.is_zero() {
                info!(
                    delay = ?delay,
                    "SIGTERM: /readyz answers 503; serving on for server.shutdown_delay so load balancers stop sending"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop_signal() => info!("second stop signal: the rest of server.shutdown_delay is skipped"),
                }
            }
            info!("stopping: no new connections; finishing in-flight requests");
            let _ = stop.send(true);
        });
        self.wait().await;
    }
}

/// Every check of `settings`: the relations between keys ([`Settings::validate`]) and the
/// checks that need a module's own code (an app's private key loads, a negative rule compiles).
/// `check-config` runs this, and so does [`start`]; each error names its key.
pub fn check_settings(settings: &Settings) -> Result<(), ConfigErrors> {
    let mut errors = match settings.validate() {
        Ok(()) => Vec::new(),
        Err(ConfigErrors(errors)) => errors,
    };
    errors.extend(crate::app_auth::check_settings(settings));
    errors.extend(crate::negative::check_settings(&settings.negative));
    if errors.is_empty() { Ok(()) } else { Err(ConfigErrors(errors)) }
}

/// Binds both listeners and starts serving. Fails with a message naming the setting when a
/// listener cannot be bound or the secret cannot be read or created. A reload answers that
/// there is nothing to re-read: use [`start_from`] for settings read from a file or the
/// environment.
pub async fn start(settings: Settings) -> Result<Running, String> {
    start_with(settings, None).await
}

/// [`start`] for settings read from `source`, which SIGHUP and `POST /reload` read again.
pub async fn start_from(settings: Settings, source: SettingsSource) -> Result<Running, String> {
    start_with(settings, Some(source)).await
}

async fn start_with(settings: Settings, source: Option<SettingsSource>) -> Result<Running, String> {
    check_settings(&settings).map_err(|errors| errors.to_string())?;
    let settings = Arc::new(settings);
    let secret = identity::load_or_create_secret(settings.server.secret.as_deref(), &settings.store.data_dir)
        .map_err(|e| {
            format!(
                "server.secret: unset, and no secret could be kept in store.data_dir ({}): {e}",
                settings.store.data_dir.display()
            )
        })?;
    let metrics = Metrics::new();
    let stores = store::from_settings(&settings, Arc::clone(&metrics))?;
    let gateway = Gateway::new(Arc::clone(&settings), stores, &secret, Arc::clone(&metrics))?;

    let proxy = TcpListener::bind(settings.server.listen)
        .await
        .map_err(|e| format!("server.listen: cannot listen on {}: {e}", settings.server.listen))?;
    let admin = TcpListener::bind(settings.server.admin_listen).await.map_err(|e| {
        format!("server.admin_listen: cannot listen on {}: {e}", settings.server.admin_listen)
    })?;
    let proxy_addr = proxy.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;

    let (shutdown, watcher) = watch::channel(false);
    let reloader = Arc::new(Reloader::new(Arc::clone(&gateway), source));
    let admin_app = Service::Admin(admin_router(Arc::clone(&gateway), Arc::clone(&reloader)));

    let limits = ConnectionLimits {
        header_read_timeout: settings.server.header_read_timeout,
        max_header_bytes: settings.server.max_header_bytes,
        shutdown_grace: settings.server.shutdown_grace,
        max_connections: settings.server.max_connections,
        http2_keep_alive: settings.server.http2_keep_alive,
    };
    let workers = workers::Workers::start(settings.server.worker_count(), &gateway, limits)?;
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(serve(proxy, Dispatch::Workers(workers), watcher.clone(), "proxy", limits)));
    tasks.push(tokio::spawn(serve(admin, Dispatch::Here(admin_app), watcher.clone(), "admin", limits)));
    if gateway.responses().backend().is_some_and(|b| b.is_shared()) {
        let marks_gateway = Arc::clone(&gateway);
        let mut marks_stop = watcher.clone();
        tasks.push(tokio::spawn(async move {
            let mut cursor = None;
            loop {
                tokio::select! {
                    followed = marks_gateway.invalidation().follow_marks(&mut cursor) => {
                        if followed.is_err() {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    _ = marks_stop.changed() => break,
                }
            }
        }));
    }
    let upkeep_gateway = Arc::clone(&gateway);
    let mut upkeep_stop = watcher;
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    upkeep_gateway.responses().maintain().await;
                    upkeep_gateway.inbound().retain_recent();
                    record_store_gauges(&upkeep_gateway);
                    upkeep_gateway.metrics().run_upkeep();
                    upkeep_gateway.report_to_fleet().await;
                }
                _ = upkeep_stop.changed() => break,
            }
        }
    }));
    info!(
        proxy = %proxy_addr,
        admin = %admin_addr,
        upstream = %settings.upstream.url,
        store = %gateway.responses().location(),
        "ghgate listening"
    );
    Ok(Running { proxy_addr, admin_addr, gateway, reloader, shutdown, tasks })
}

/// Limits every connection gets, from `[server]`.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    header_read_timeout: Duration,
    max_header_bytes: usize,
    shutdown_grace: Duration,
    max_connections: usize,
    http2_keep_alive: Duration,
}

/// What a listener serves: the proxy hands every request straight to the pipeline (no
/// routing to do, and this is the hot path); the admin listener routes with axum.
#[derive(Clone)]
enum Service {
    Proxy(Arc<Gateway>),
    Admin(Router),
}

/// Where accepted connections are served: on the runtime that accepted them (admin), or
/// handed to the proxy workers.
enum Dispatch {
    Here(Service),
    Workers(workers::Workers),
}

/// The HTTP/1.1 + HTTP/2 (prior knowledge) connection settings every connection gets: a client
/// that does not finish its request headers within `header_read_timeout` is dropped
/// (slowloris), and headers larger than `max_header_bytes` are refused by hyper with 431.
fn connection_builder(limits: ConnectionLimits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(limits.http2_keep_alive / 2))
        .keep_alive_timeout(limits.http2_keep_alive / 2);
    builder
}

/// An accepted connection and its place under `server.max_connections` (given back when
/// the connection ends).
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
}

/// Serves one connection in a task on the current runtime, watched by `graceful`. A client
/// must send its first byte within `header_read_timeout` (hyper's own timeout starts only once
/// the protocol is known, and protocol detection waits for that byte).
fn spawn_connection(
    builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    accepted: Accepted,
    app: Service,
    first_byte_within: Duration,
) {
    let Accepted { stream, peer, _slot: slot } = accepted;
    let _ = stream.set_nodelay(true);
    // The address the client reached: the base of last resort for rewritten links.
    let local = stream.local_addr().unwrap_or(peer);
    let service =
        hyper::service::service_fn(move |mut request: axum::extract::Request<hyper::body::Incoming>| {
            use futures::future::Either;
            match &app {
                Service::Proxy(gateway) => {
                    let gateway = Arc::clone(gateway);
                    let request = request.map(Body::new);
                    Either::Left(async move {
                        Ok::<_, std::convert::Infallible>(gateway.handle(request, peer, local).await)
                    })
                }
                Service::Admin(router) => {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    let mut router = router.clone();
                    Either::Right(async move { tower::Service::call(&mut router, request).await })
                }
            }
        });
    let builder = builder.clone();
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let mut first = [0u8; 1];
        match tokio::time::timeout(first_byte_within, stream.peek(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {}
            // Silent past the deadline, closed, or broken: nothing to serve.
            _ => return,
        }
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let _ = watcher.watch(connection).await;
        drop(slot);
    });
}

/// Lets in-flight requests finish for up to `shutdown_grace`, then cuts them off.
async fn drain(graceful: GracefulShutdown, limits: ConnectionLimits, name: &'static str) {
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            warn!(listener = name, grace = ?limits.shutdown_grace, "in-flight requests cut off after server.shutdown_grace");
        }
    }
}

/// Accepts connections until told to stop, then lets in-flight requests finish for up to
/// `shutdown_grace` (the workers drain their own).
async fn serve(
    listener: TcpListener,
    mut dispatch: Dispatch,
    mut stop: watch::Receiver<bool>,
    name: &'static str,
    limits: ConnectionLimits,
) {
    let builder = connection_builder(limits);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut last_warning: Option<Instant> = None;
    loop {
        // A free slot first: at `max_connections`, new connections wait in the backlog.
        let accepted = tokio::select! {
            accepted = async {
                let slot = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
                (listener.accept().await, slot)
            } => accepted,
            _ = async { let _ = stop.wait_for(|stopped| *stopped).await; } => break,
        };
        let accepted = match accepted {
            (Ok((stream, peer)), slot) => Accepted { stream, peer, _slot: slot },
            (Err(e), _) => {
                // Out of file descriptors, or a connection reset before accept: back off
                // instead of spinning, and say so at most every 10 s.
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    last_warning = Some(Instant::now());
                    warn!(listener = name, error = %e, "accept failed; backing off");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match &mut dispatch {
            Dispatch::Here(app) => {
                spawn_connection(&builder, &graceful, accepted, app.clone(), limits.header_read_timeout)
            }
            Dispatch::Workers(workers) => workers.hand_over(accepted),
        }
    }
    drop(listener);
    match dispatch {
        Dispatch::Here(_) => drain(graceful, limits, name).await,
        Dispatch::Workers(workers) => workers.drain().await,
    }
}

fn admin_router(gateway: Arc<Gateway>, reloader: Arc<Reloader>) -> Router {
    let protected = Router::new()
        .route("/reload", axum::routing::post(reload_settings))
        .layer(axum::Extension(reloader))
        .route("/metrics", get(metrics))
        .route("/negative", axum::routing::delete(clear_negative))
        .route("/ratelimits", get(ratelimits))
        .route("/tokens", get(tokens))
        .route("/stats", get(stats))
        .route("/purge", axum::routing::post(purge))
        .route("/status.json", get(status_data))
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&gateway), require_admin_token));
    // Probes stay open: orchestrators call them without credentials.
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        // The status page's shell holds no data; it asks for the admin token itself.
        .route("/", get(|| async { crate::status::page() }))
        .merge(protected)
        .with_state(gateway)
}

/// With `server.admin_token` set, every admin route but the probes needs
/// `Authorization: Bearer <token>` (compared in constant time).
async fn require_admin_token(
    State(gateway): State<Arc<Gateway>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let applied = gateway.applied_settings();
    let Some(expected) = applied.server.admin_token.as_deref() else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    use subtle::ConstantTimeEq;
    let ok = presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()));
    if !ok {
        return github::error_response(
            StatusCode::UNAUTHORIZED,
            "Requires authentication: Authorization: Bearer <server.admin_token>",
        );
    }
    next.run(request).await
}

/// `POST /reload`: reads the settings again and applies the keys that can change while
/// running; 422 with every reason, in GitHub's error shape, when the reload is refused.
async fn reload_settings(axum::Extension(reloader): axum::Extension<Arc<Reloader>>) -> Response {
    match reloader.reload("POST /reload").await {
        Ok(reloaded) => axum::Json(serde_json::json!({
            "reloaded": true,
            "changed": reloaded.changed,
            "notes": reloaded.notes,
        }))
        .into_response(),
        Err(refusal) => github::error_response_with_errors(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reload refused; the settings in force are unchanged",
            &refusal.0,
        ),
    }
}

/// `GET /tokens`: the broker's cached installation tokens — metadata only, never a token.
async fn tokens(State(gateway): State<Arc<Gateway>>) -> Response {
    axum::Json(serde_json::json!({ "tokens": gateway.broker().token_metadata() })).into_response()
}

/// `GET /stats`: answers by outcome, hit ratio, units, store size; with replicas sharing a
/// store, the fleet's totals and each replica seen in the last minutes.
async fn stats(State(gateway): State<Arc<Gateway>>) -> Response {
    let responses = gateway.responses();
    responses.maintain().await;
    let counts = gateway.metrics().outcome_counts();
    let totals = gateway.metrics().totals();
    let ratio = |local: u64, answers: u64| if answers == 0 { 0.0 } else { local as f64 / answers as f64 };
    gateway.report_to_fleet().await;
    let fleet = gateway.fleet().view().await.map(|view| {
        serde_json::json!({
            "replicas": view.replicas.iter().map(|r| serde_json::json!({
                "id": r.id,
                "name": r.name,
                "seen_seconds_ago": now_epoch().saturating_sub(r.at),
                "answers": r.answers,
                "hit_ratio": ratio(r.local, r.answers),
                "units_spent": r.spent,
                "units_saved": r.saved,
            })).collect::<Vec<_>>(),
            "answers": view.answers,
            "hit_ratio": ratio(view.local, view.answers),
            "units_spent": view.spent,
            "units_saved": view.saved,
        })
    });
    let body = serde_json::json!({
        "replica": gateway.fleet().replica().name,
        "answers": counts.iter().map(|(o, n)| (o.to_ascii_lowercase(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
        "hit_ratio": ratio(totals.local, totals.answers),
        "units_spent": totals.spent,
        "units_saved": totals.saved,
        "fleet": fleet,
        "store": {
            "location": responses.location(),
            "entries": responses.entry_count(),
            "bytes": responses.size_bytes(),
            "memory_tier_bytes": responses.hot_bytes(),
            "memory_tier_body_bytes": responses.hot_body_bytes(),
            "max_bytes": gateway.settings().cache.max_bytes,
        },
    });
    axum::Json(body).into_response()
}

fn now_epoch() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// What to purge: a path, a repository (owner + repo) or an owner.
#[derive(Debug, serde::Deserialize)]
struct Purge {
    path: Option<String>,
    owner: Option<String>,
    repo: Option<String>,
}

/// `POST /purge?path=` | `?owner=&repo=` | `?owner=`: marks those entries stale everywhere.
async fn purge(
    State(gateway): State<Arc<Gateway>>,
    axum::extract::Query(q): axum::extract::Query<Purge>,
) -> Response {
    if q.path.is_none() && q.owner.is_none() {
        return github::error_response(StatusCode::BAD_REQUEST, "give path, or owner (and repo)");
    }
    gateway.invalidation().purge(q.path.as_deref(), q.owner.as_deref(), q.repo.as_deref()).await;
    info!(path = ?q.path, owner = ?q.owner, repo = ?q.repo, "purged");
    axum::Json(serde_json::json!({ "purged": true })).into_response()
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    gateway.responses().maintain().await;
    record_store_gauges(&gateway);
    let m = gateway.metrics();
    m.count_alive_tasks();
    let mut response = Response::new(Body::from(m.render()));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// `GET /ratelimits`: every identity's budget as GitHub last reported it (identities are
/// partition ids, never credentials), lowest remaining first.
async fn ratelimits(State(gateway): State<Arc<Gateway>>) -> Response {
    axum::Json(serde_json::json!({ "identities": gateway.budgets().lines().await })).into_response()
}

fn record_store_gauges(gateway: &Gateway) {
    let m = gateway.metrics();
    m.blocked_identities.set(gateway.budgets().blocked_count() as f64);
    // Every (resource, state) series seen is set each time, zero when no identity is in it.
    let census = gateway.budgets().census();
    for resource in census.iter().map(|(r, _, _)| r.clone()).collect::<std::collections::BTreeSet<_>>() {
        for state in ["ok", "reserve", "exhausted"] {
            let n = census.iter().find(|(r, s, _)| *r == resource && *s == state).map_or(0, |(_, _, n)| *n);
            m.identities_gauge(&resource, state).set(n as f64);
        }
    }
    let responses = gateway.responses();
    m.store_bytes.set(responses.size_bytes() as f64);
    m.store_entries.set(responses.entry_count() as f64);
    m.store_hot_bytes.set(responses.hot_bytes() as f64);
    m.store_hot_body_bytes.set(responses.hot_body_bytes() as f64);
    m.store_degraded.set(if responses.health() == Health::Ok { 0.0 } else { 1.0 });
}

/// Ready while the gateway can answer, until a stop signal (then 503, so a load balancer
/// stops sending). A failing store does not make it unready — requests
/// are still answered, without the store — but the answer says `degraded` and why, so a
/// probe or a person can tell. (Failing readiness on a shared-Redis outage would take every
/// replica out of service at once.)
async fn ready(State(gateway): State<Arc<Gateway>>) -> Response {
    let responses = gateway.responses();
    if gateway.is_stopping() {
        let body = serde_json::json!({ "status": "stopping", "store": responses.location() });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let body = match responses.health() {
        Health::Ok => serde_json::json!({ "status": "ready", "store": responses.location() }),
        Health::Degraded(reason) => {
            serde_json::json!({ "status": "degraded", "store": responses.location(), "reason": reason })
        }
    };
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `GET /status.json`: what the status page draws.
async fn status_data(State(gateway): State<Arc<Gateway>>) -> Response {
    axum::Json(crate::status::data(&gateway).await).into_response()
}

/// Which negative entries to clear: any combination of rule, owner and repository.
#[derive(Debug, serde::Deserialize)]
struct ClearNegative {
    rule: Option<String>,
    owner: Option<String>,
    repo: Option<String>,
}

/// `DELETE /negative?rule=&owner=&repo=`: forgets remembered futile answers (on every replica
/// when the store is shared).
async fn clear_negative(
    State(gateway): State<Arc<Gateway>>,
    axum::extract::Query(q): axum::extract::Query<ClearNegative>,
) -> Response {
    if q.repo.is_some() && q.owner.is_none() {
        return github::error_response(StatusCode::BAD_REQUEST, "repo needs owner");
    }
    match gateway.negative().clear(q.rule.as_deref(), q.owner.as_deref(), q.repo.as_deref()).await {
        Ok(removed) => {
            info!(rule = ?q.rule, owner = ?q.owner, repo = ?q.repo, removed, "cleared negative entries");
            axum::Json(serde_json::json!({ "removed": removed })).into_response()
        }
        Err(e) => github::error_response(StatusCode::SERVICE_UNAVAILABLE, &format!("store error: {e}")),
    }
}

/// How the process was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopSignal {
    /// Ctrl-C: a person at a terminal, who wants it to stop now.
    Interrupt,
    /// SIGTERM: an orchestrator, whose load balancer needs time to stop sending.
    Terminate,
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
async fn stop_signal() -> StopSignal {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => StopSignal::Interrupt,
        _ = term => StopSignal::Terminate,
    }
}
