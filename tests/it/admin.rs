//! The admin API on the admin listener: purges, statistics, token metadata, and the admin
//! token that protects it off loopback.

use crate::support;

use support::app::{add_app, client, fake_with_app, get_with_key};
use support::{FakeGitHub, Resource, outcome, start_gateway};

#[tokio::test]
async fn purges_mark_a_path_a_repository_or_an_owner_stale() {
    let fake = FakeGitHub::start().await;
    for p in ["/repos/octo/hello", "/repos/octo/hello/pulls", "/repos/octo/other", "/repos/acme/x"] {
        fake.put(p, Resource::json("{}"));
    }
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let warm = |p: &'static str| async { gw.get(p, Some("t")).await };
    for p in ["/repos/octo/hello", "/repos/octo/hello/pulls", "/repos/octo/other", "/repos/acme/x"] {
        warm(p).await;
    }
    let purge = |q: &'static str| gw.client.post(format!("{}/purge?{q}", gw.admin_url)).send();
    assert_eq!(purge("path=/repos/octo/hello/pulls").await.unwrap().status(), 200);
    assert_eq!(outcome(&gw.get("/repos/octo/hello/pulls", Some("t")).await), "REVALIDATED");
    assert_eq!(outcome(&gw.get("/repos/octo/hello", Some("t")).await), "HIT");
    assert_eq!(purge("owner=octo&repo=hello").await.unwrap().status(), 200);
    assert_eq!(outcome(&gw.get("/repos/octo/hello", Some("t")).await), "REVALIDATED");
    assert_eq!(outcome(&gw.get("/repos/octo/other", Some("t")).await), "HIT");
    assert_eq!(purge("owner=octo").await.unwrap().status(), 200);
    assert_eq!(outcome(&gw.get("/repos/octo/other", Some("t")).await), "REVALIDATED");
    assert_eq!(outcome(&gw.get("/repos/acme/x", Some("t")).await), "HIT", "another owner stays");
    assert_eq!(fake.charged(), 4, "purges cost nothing when the data did not change");
    assert_eq!(purge("").await.unwrap().status(), 400);

    let stats = gw.admin_json("/stats").await;
    assert_eq!(stats["answers"]["miss"], 4);
    assert!(stats["hit_ratio"].as_f64().unwrap() > 0.5, "{stats}");
    assert_eq!(stats["store"]["entries"], 4);
    let location = stats["store"]["location"].as_str().unwrap();
    assert!(
        location.contains("(max 256 MiB) with a 64 MiB memory tier"),
        "sizes as people read them: {location}"
    );
}

#[tokio::test]
async fn token_metadata_never_shows_a_token() {
    const KEY: &str = "ghgate_admin_test_key_00000000000";
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    fake.put("/repos/octo/hello", Resource::json("{}"));
    let gw = start_gateway(&fake.url(), |s| {
        add_app(s);
        s.clients.push(client("runner", KEY, &[]));
    })
    .await;
    get_with_key(&gw, "/repos/octo/hello", KEY).await;
    let text = gw.client.get(format!("{}/tokens", gw.admin_url)).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("ghs_"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["tokens"][0]["installation"], 7);
    assert_eq!(json["tokens"][0]["app"], "ci-bot");
    assert!(json["tokens"][0]["expires_at"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn an_admin_token_protects_everything_but_the_probes() {
    let fake = FakeGitHub::start().await;
    let gw =
        start_gateway(&fake.url(), |s| s.server.admin_token = Some("admin-token-0123456789".into())).await;
    for path in ["/metrics", "/stats", "/ratelimits", "/tokens", "/status.json"] {
        let r = gw.client.get(format!("{}{path}", gw.admin_url)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without the token");
        let r = gw
            .client
            .get(format!("{}{path}", gw.admin_url))
            .bearer_auth("wrong-token-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
        let r = gw
            .client
            .get(format!("{}{path}", gw.admin_url))
            .bearer_auth("admin-token-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the token");
    }
    // The status page's shell is open (it holds no data and asks for the token itself).
    let page = gw.client.get(format!("{}/", gw.admin_url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("status.json") && !html.contains("\"budgets\":"), "no data in the shell");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            gw.client.get(format!("{}{path}", gw.admin_url)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let mut s = ghgate::config::Settings::default();
    s.server.admin_listen = "0.0.0.0:9090".parse().unwrap();
    assert!(s.validate().unwrap_err().to_string().contains("server.admin_token"));
    s.server.admin_token = Some("admin-token-0123456789".into());
    assert!(s.validate().is_ok());
}
