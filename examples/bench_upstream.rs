//! A fast GitHub-like upstream for the load benchmark (`bench/hit_path.sh`): the test suite's
//! fake GitHub, serving `/repos/octo/hello` and `/bench/0` … `/bench/{N-1}` with GitHub's
//! caching headers, ETags and rate-limit headers, until killed.
//!
//! Usage: `bench_upstream --port 18181 --resources 10000 [--max-age 60] [--stats-port 18182]
//! [--body-urls 40]` (`--body-urls`: upstream URLs in each body, for the gateway to rewrite)
//!
//! With `--stats-port`, `GET /` there answers `{"requests":…,"charged":…,"not_modified":…}`:
//! what the proxies in front cost, counted where GitHub would count it.

// The examples use part of the fake.
#[allow(dead_code)]
#[path = "../tests/it/support/fake_github.rs"]
mod fake_github;

use fake_github::{FakeGitHub, Resource};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A repository body about the size of GitHub's (a real one is 5–7 KB). With `urls` > 0 it
/// carries that many URLs under `base` (a real `GET /repos/o/r` has about 40), which the
/// gateway rewrites to itself.
fn repo_json(n: u64, base: &str, urls: u64) -> String {
    let filler = "x".repeat(1500);
    let links: String =
        (0..urls).map(|i| format!(r#""link{i}_url":"{base}/repos/octo/repo-{n}/link{i}{{/id}}","#)).collect();
    format!(
        r#"{{"id":{n},"name":"repo-{n}","full_name":"octo/repo-{n}","private":false,{links}"description":"{filler}","url":"https://api.github.com/repos/octo/repo-{n}","stargazers_count":{n}}}"#
    )
}

fn main() {
    let port = arg("--port", 18181) as u16;
    let resources = arg("--resources", 10_000);
    let max_age = arg("--max-age", 60);
    let stats_port = arg("--stats-port", 0) as u16;
    let urls = arg("--body-urls", 0);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let fake = std::sync::Arc::new(FakeGitHub::start_on(port).await);
        // No budget runs out during a benchmark; max-age as asked (0: every read revalidates).
        fake.set_limit(u64::MAX / 2);
        fake.set_max_age(max_age);
        let base = fake.url();
        fake.put("/repos/octo/hello", Resource::json(repo_json(0, &base, urls)));
        for n in 0..resources {
            fake.put(&format!("/bench/{n}"), Resource::json(repo_json(n, &base, urls)));
        }
        // Stats answer only once every resource is in place: scripts wait for them.
        if stats_port != 0 {
            let fake = fake.clone();
            let stats = axum::Router::new().route(
                "/",
                axum::routing::get(move || {
                    let fake = fake.clone();
                    async move {
                        format!(
                            r#"{{"requests":{},"charged":{},"not_modified":{}}}"#,
                            fake.requests(),
                            fake.charged(),
                            fake.not_modified()
                        )
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", stats_port)).await.unwrap();
            tokio::spawn(async move { axum::serve(listener, stats).await.unwrap() });
        }
        println!("bench upstream on {} with {} resources", fake.url(), resources + 1);
        std::future::pending::<()>().await;
    });
}
