//! Hostile and careless clients (issue 15): what one client sends must never change what
//! another is served, push a gateway secret to GitHub, or reach GitHub in a form the gateway
//! did not check. Each test here failed before the fix it is named after.

use crate::support;

use std::time::Duration;

use tokio::io::AsyncReadExt;

use support::app::{add_app, client, fake_with_app};
use support::{FakeGitHub, Resource, outcome, start_gateway};

const README: &str = "/repos/octo/hello/contents/README.md";

/// Whether any request the fake received carried `needle` in a header value or its target.
fn upstream_saw(fake: &FakeGitHub, needle: &str) -> bool {
    fake.log().iter().any(|(_, target, headers)| {
        target.contains(needle)
            || headers.values().any(|v| String::from_utf8_lossy(v.as_bytes()).contains(needle))
    })
}

#[tokio::test]
async fn a_connection_header_naming_a_keyed_header_cannot_poison_the_cache() {
    let fake = FakeGitHub::start().await;
    fake.put(README, Resource::json(r#"{"name":"README.md","encoding":"base64"}"#).variant("raw", "# hello"));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let raw = "application/vnd.github.raw";
    // `Connection: Accept` would drop Accept before going upstream (a JSON answer) while the
    // key still said "raw": refused, and nothing is stored under the raw key.
    let poisoned = gw
        .client
        .get(format!("{}{README}", gw.url))
        .header("accept", raw)
        .header("connection", "Accept")
        .send()
        .await
        .unwrap();
    assert_eq!(poisoned.status(), 400, "a Connection naming Accept is refused");
    let body = poisoned.text().await.unwrap();
    assert!(
        body.contains("\"message\"") && body.contains("Accept"),
        "GitHub-shaped, naming the header: {body}"
    );
    for nominated in ["x-github-api-version", "authorization", "if-none-match", "cookie"] {
        let r = gw
            .client
            .get(format!("{}{README}", gw.url))
            .header("connection", format!("keep-alive, {nominated}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "a Connection naming {nominated} is refused");
    }
    let honest = gw.client.get(format!("{}{README}", gw.url)).header("accept", raw).send().await.unwrap();
    assert_eq!(outcome(&honest), "MISS");
    assert_eq!(honest.text().await.unwrap(), "# hello", "the raw representation, not the JSON one");
    // Other nominated headers are hop-by-hop: dropped before the key and before GitHub.
    let r = gw
        .client
        .get(format!("{}{README}", gw.url))
        .header("accept", raw)
        .header("connection", "x-trace")
        .header("x-trace", "secret-hop-value")
        .send()
        .await
        .unwrap();
    assert_eq!(outcome(&r), "HIT", "the same key as the request without the hop-by-hop header");
    assert!(!upstream_saw(&fake, "secret-hop-value"), "a nominated header never goes upstream");
}

/// GET /repos/octo/hello with this `Authorization` value, as written.
async fn get_as(gw: &support::TestGateway, authorization: &str) -> reqwest::Response {
    gw.client
        .get(format!("{}/repos/octo/hello", gw.url))
        .header("authorization", authorization)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_client_key_is_never_sent_upstream_whatever_its_scheme_spelling() {
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    fake.put("/repos/octo/hello", Resource::json(r#"{"id":1}"#));
    let key = "ghgate_0123456789abcdef0123456789abcdef";
    let gw = start_gateway(&fake.url(), |s| {
        add_app(s);
        s.clients.push(client("ci", key, &[]));
    })
    .await;
    let unknown = "ghgate_ffffffffffffffffffffffffffffffffffff";
    for value in [
        format!("BEARER {key}"),
        format!("bearer\t{key}"),
        format!("Token   {key}"),
        format!("  token {key}  "),
    ] {
        assert_eq!(get_as(&gw, &value).await.status(), 200, "{value:?} is the client key, in any spelling");
    }
    for value in [
        format!("BEARER {unknown}"),
        format!("bearer\t{unknown}"),
        unknown.to_string(),
        format!("Basic {unknown}"),
    ] {
        assert_eq!(
            get_as(&gw, &value).await.status(),
            401,
            "{value:?} looks like a client key: refused here"
        );
    }
    assert!(!upstream_saw(&fake, "ghgate_"), "no client key, known or not, reached GitHub");
}

#[tokio::test]
async fn the_installation_header_takes_only_an_owner_login_or_an_id() {
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    let key = "ghgate_0123456789abcdef0123456789abcdef";
    let gw = start_gateway(&fake.url(), |s| {
        add_app(s);
        s.clients.push(client("ci", key, &[]));
    })
    .await;
    for named in ["nobody/../../app/installations/102?x=", "octo/hello", "a b", "-octo", "octo?x=1"] {
        let r = gw
            .client
            .get(format!("{}/installation/repositories", gw.url))
            .header("authorization", format!("token {key}"))
            .header("x-ghgate-installation", named)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{named:?} is neither an owner login nor an installation id");
    }
    assert!(
        !fake.log().iter().any(|(_, target, _)| target.contains("nobody") || target.contains("102")),
        "nothing was spliced into an upstream URL: {:?}",
        fake.log().iter().map(|(_, t, _)| t.clone()).collect::<Vec<_>>()
    );
    let fine = gw
        .client
        .get(format!("{}/installation/repositories", gw.url))
        .header("authorization", format!("token {key}"))
        .header("x-ghgate-installation", "octo")
        .send()
        .await
        .unwrap();
    assert_ne!(fine.status(), 400, "an owner login is accepted");
}

#[tokio::test]
async fn encoded_slashes_around_dot_segments_are_refused() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |_| {}).await;
    for path in
        ["/repos/x/..%2F..%2F_admin", "/repos/x/%2e%2e%2f%2e%2e%2fapp", "/repos/o/r/contents/a%2F.%2Fb"]
    {
        let r = gw.client.get(format!("{}{path}", gw.url)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path} has dot segments once decoded");
    }
    assert_eq!(fake.requests(), 0, "none reached GitHub");
    fake.put("/repos/o/r/contents/dir%2Ffile.md", Resource::json("{}"));
    let fine = gw.client.get(format!("{}/repos/o/r/contents/dir%2Ffile.md", gw.url)).send().await.unwrap();
    assert_ne!(fine.status(), 400, "an encoded slash alone is fine");
}

#[tokio::test]
async fn links_never_point_at_the_upstream_whatever_the_host_header_says() {
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello/issues", Resource::json("[]"));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let addr = gw.running.proxy_addr;
    let path = "/repos/octo/hello/issues?page=2";
    for host in ["user@evil.example", "evil.example/x?", "gw.example:70000"] {
        let answer =
            support::raw(addr, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"))
                .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "Host {host:?} is refused: {answer}");
    }
    // No Host at all (HTTP/1.0): the links name the listener the client reached.
    let answer = support::raw(addr, &format!("GET {path} HTTP/1.0\r\n\r\n")).await;
    assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "{answer}");
    let link = answer.lines().find(|l| l.to_ascii_lowercase().starts_with("link:")).expect("a Link header");
    assert!(link.contains(&format!("http://{addr}/repos/octo/hello/issues?page=3")), "{link}");
    assert!(!link.contains(&fake.url()), "the upstream's URL never reaches the client: {link}");
}

#[tokio::test]
async fn silent_connections_cannot_starve_the_gateway_of_descriptors() {
    use support::process::GatewayProcess;
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello", Resource::json("{}"));
    let dir = tempfile::tempdir().unwrap();
    let env = [("GHGATE_SERVER__HEADER_READ_TIMEOUT", "1s"), ("GHGATE_SERVER__MAX_CONNECTIONS", "24")];
    let gw = GatewayProcess::start(&fake.url(), dir.path(), &env).await;
    // As few descriptors as a small container might give it.
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &gw.pid().to_string(), "--nofile=64:64"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(limited.success());
    let addr: std::net::SocketAddr = gw.url.trim_start_matches("http://").parse().unwrap();
    // 70 sockets that never send a byte: more than the descriptors the gateway has.
    let mut silent = Vec::new();
    for _ in 0..70 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // A legitimate client is served once the silent ones have had their second.
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(8),
        support::client().get(format!("{}/repos/octo/hello", gw.url)).send(),
    )
    .await
    .expect("answered within 8 s")
    .expect("a legitimate request succeeds");
    assert_eq!(answer.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(8));
    // The silent sockets were closed by the gateway, not left to hold descriptors.
    let mut closed = 0;
    for mut socket in silent {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(3), socket.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert!(closed >= 60, "the gateway closed the silent connections ({closed} of 70)");
    let log = support::process::logs(dir.path());
    let warnings = log.matches("accept failed").count();
    assert!(warnings <= 2, "accept failures are logged at most every 10 s, not per attempt ({warnings})");
}

#[tokio::test]
async fn junk_credentials_count_against_their_address_and_refused_ones_are_answered_here() {
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello", Resource::json("{}"));
    let gw = start_gateway(&fake.url(), |s| {
        s.inbound.limit_enabled = true;
        s.inbound.requests_per_second = 1;
        s.inbound.burst = 3;
    })
    .await;
    // A new credential on every request: each has never been accepted by GitHub, so each
    // also spends the address's budget.
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(gw.get("/repos/octo/hello", Some(&format!("junk{i}"))).await.status().as_u16());
    }
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 4,
        "the address's bucket ran out: {statuses:?}"
    );
    // With inbound.refused_credential_ttl set, a credential GitHub refused with 401 is
    // answered 401 here for that long.
    let gw = start_gateway(&fake.url(), |s| s.inbound.refused_credential_ttl = Duration::from_secs(60)).await;
    let before = fake.requests();
    let first = gw.get("/repos/octo/hello", Some("ghs_revoked_or_never_valid")).await;
    assert_eq!(first.status(), 401);
    assert_eq!(fake.requests(), before + 1);
    for _ in 0..3 {
        let again = gw.get("/repos/octo/hello", Some("ghs_revoked_or_never_valid")).await;
        assert_eq!(again.status(), 401);
        assert_eq!(outcome(&again), "NEGATIVE");
        assert!(again.text().await.unwrap().contains("Bad credentials"));
    }
    assert_eq!(fake.requests(), before + 1, "GitHub was asked once");
    assert_eq!(gw.metric("ghgate_inbound_refused_credentials_total").await, 3.0);
    // Other credentials are unaffected.
    assert_eq!(gw.get("/repos/octo/hello", Some("good")).await.status(), 200);
}

/// POSTs a commit status as `token` (or anonymously).
async fn post_status_as(gw: &support::TestGateway, token: Option<&str>) -> reqwest::Response {
    let mut r = gw
        .client
        .post(format!("{}/repos/octo/private/statuses/0123abcd", gw.url))
        .header("content-type", "application/json")
        .body(r#"{"state":"success","context":"ci"}"#);
    if let Some(t) = token {
        r = r.header("authorization", format!("token {t}"));
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn the_statuses_limit_is_replayed_only_to_credentials_that_have_shown_access() {
    let fake = FakeGitHub::start().await;
    fake.set_statuses_limit(2, "string");
    let gw = start_gateway(&fake.url(), |_| {}).await;
    // The CI bot posts until the sha and context are full: its 2xx posts show write access.
    assert_eq!(post_status_as(&gw, Some("ci-bot")).await.status(), 201);
    assert_eq!(post_status_as(&gw, Some("ci-bot")).await.status(), 201);
    assert_eq!(post_status_as(&gw, Some("ci-bot")).await.status(), 422, "GitHub's own 422, remembered");
    let paid = fake.requests();
    assert_eq!(outcome(&post_status_as(&gw, Some("ci-bot")).await), "NEGATIVE", "replayed to the bot");
    assert_eq!(fake.requests(), paid);
    // Nobody else learns from the gateway that this private repository, sha and context exist:
    // an anonymous post and a stranger's post go to GitHub (which answers them as it would).
    assert_ne!(outcome(&post_status_as(&gw, None).await), "NEGATIVE");
    assert_ne!(outcome(&post_status_as(&gw, Some("stranger")).await), "NEGATIVE");
    assert_eq!(fake.requests(), paid + 2, "both asked GitHub");
    assert_eq!(gw.metric("ghgate_negative_withheld_total{rule=\"statuses_limit\"}").await, 2.0);
    // A credential that GitHub itself gave the 422 has shown access: replayed from then on,
    // so the fleet still pays one 422 per stuck key and credential, not one per post.
    assert_eq!(outcome(&post_status_as(&gw, Some("stranger")).await), "NEGATIVE");
    assert_eq!(fake.requests(), paid + 2);
}
