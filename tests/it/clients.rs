//! Real client libraries against ghgate and the fake GitHub: each runs a workflow a new user
//! would try, and what it saw is compared with what the fake serves directly. No request may
//! reach the fake except through the gateway (the fake's request count equals the gateway's
//! upstream count).
//!
//! PyGithub and Octokit are installed on first use, pinned, under the target directory
//! (PyGithub into a venv, Octokit with `npm ci` from `tests/clients/package-lock.json`); `gh` is
//! Debian's package, installed by `.ci/run`. `GHGATE_SKIP_CLIENT_TESTS=1` skips them on a
//! machine that cannot install them.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use support::{FakeGitHub, Resource, start_gateway};

const PYGITHUB: &str = "PyGithub==2.10.0";
const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";

fn skipped() -> bool {
    std::env::var("GHGATE_SKIP_CLIENT_TESTS").is_ok_and(|v| v == "1")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// A Python with PyGithub, made on first use.
fn pygithub_python() -> PathBuf {
    let venv = target_dir().join("clients/venv");
    let python = venv.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python).args(["-c", "import github"]).status().is_ok_and(|s| s.success())
    };
    if !ready(&python) {
        let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).status();
        assert!(made.is_ok_and(|s| s.success()), "python3 -m venv failed (is python3-venv installed?)");
        let pip = Command::new(venv.join("bin/pip")).args(["install", "--quiet", PYGITHUB]).status();
        assert!(pip.is_ok_and(|s| s.success()), "pip install {PYGITHUB} failed");
    }
    assert!(ready(&python));
    python
}

/// The fake GitHub a workflow reads: a repository whose body URLs point at the fake (as
/// GitHub's point at api.github.com), its README, three pages of issues, a commit, the rate
/// limit.
async fn fake_repository() -> FakeGitHub {
    let fake = FakeGitHub::start().await;
    let base = fake.url();
    fake.put(
        "/repos/octo/hello",
        Resource::json(format!(
            r#"{{"id":1,"name":"hello","full_name":"octo/hello","private":false,"owner":{{"login":"octo","id":2,"type":"User","url":"{base}/users/octo","html_url":"https://github.com/octo"}},"html_url":"https://github.com/octo/hello","url":"{base}/repos/octo/hello","issues_url":"{base}/repos/octo/hello/issues{{/number}}","commits_url":"{base}/repos/octo/hello/commits{{/sha}}","statuses_url":"{base}/repos/octo/hello/statuses/{{sha}}"}}"#
        )),
    );
    let readme = base64::engine::general_purpose::STANDARD.encode("# hello\n");
    fake.put(
        "/repos/octo/hello/readme",
        Resource::json(format!(
            r#"{{"type":"file","encoding":"base64","name":"README.md","path":"README.md","sha":"3d21ec53a331a6f037a91c368710b99387d012c1","size":8,"content":"{readme}","url":"{base}/repos/octo/hello/contents/README.md","html_url":"https://github.com/octo/hello/blob/main/README.md"}}"#
        ))
        .variant("raw", "# hello\n"),
    );
    let issue = |n: u64| {
        format!(
            r#"{{"id":{n}00,"number":{n},"title":"issue {n}","state":"open","url":"{base}/repos/octo/hello/issues/{n}","repository_url":"{base}/repos/octo/hello","html_url":"https://github.com/octo/hello/issues/{n}"}}"#
        )
    };
    let pages = (0..3).map(|p| format!("[{},{}]", issue(2 * p + 1), issue(2 * p + 2))).collect();
    fake.put("/repos/octo/hello/issues", Resource::pages(pages));
    fake.put(
        &format!("/repos/octo/hello/commits/{SHA}"),
        Resource::json(format!(
            r#"{{"sha":"{SHA}","url":"{base}/repos/octo/hello/commits/{SHA}","html_url":"https://github.com/octo/hello/commit/{SHA}","commit":{{"message":"m"}}}}"#
        )),
    );
    let rate = r#"{"limit":5000,"used":1,"remaining":4999,"reset":1893456000}"#;
    fake.put(
        "/rate_limit",
        Resource::json(format!(
            r#"{{"resources":{{"core":{rate},"search":{rate},"graphql":{rate}}},"rate":{rate}}}"#
        )),
    );
    fake
}

/// A directory with Octokit installed (`npm ci` from the committed lock) and the workflow
/// script beside it (ES modules resolve packages from the script's directory).
fn octokit_dir() -> PathBuf {
    let dir = target_dir().join("clients/node");
    std::fs::create_dir_all(&dir).unwrap();
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    for file in ["package.json", "package-lock.json", "octokit_flow.mjs"] {
        std::fs::copy(clients.join(file), dir.join(file)).unwrap();
    }
    if !dir.join("node_modules/@octokit/rest/package.json").is_file() {
        let npm =
            Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--quiet"]).current_dir(&dir).status();
        assert!(
            npm.is_ok_and(|s| s.success()),
            "npm ci in {} failed (are node and npm installed?)",
            dir.display()
        );
    }
    dir
}

/// What the fake serves `path` directly, as JSON.
async fn direct(fake: &FakeGitHub, path: &str) -> serde_json::Value {
    let url = format!("{}{path}", fake.url());
    let r = support::client().get(url).header("authorization", "token tok-direct").send().await.unwrap();
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

/// A GraphQL rule caching the `RepositoryInfo` query the client workflows send.
fn cache_repository_info(s: &mut ghgate::config::Settings) {
    s.graphql.rules.push(ghgate::config::GraphqlRule {
        operation: Some("RepositoryInfo".into()),
        fields: None,
        ttl: std::time::Duration::from_secs(60),
        stale_if_error: None,
    })
}

#[tokio::test]
async fn octokit_follows_body_urls_through_the_gateway() {
    if skipped() {
        return;
    }
    let dir = tokio::task::spawn_blocking(octokit_dir).await.unwrap();
    let fake = fake_repository().await;
    let gw = start_gateway(&fake.url(), cache_repository_info).await;
    let url = gw.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("octokit_flow.mjs")
            .current_dir(dir)
            .env("GHGATE_URL", url)
            .env("GHGATE_TOKEN", "tok-node")
            .env("GHGATE_SHA", SHA)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Octokit workflow failed:\n{stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let repo = direct(&fake, "/repos/octo/hello").await;
    assert_eq!(seen["full_name"], repo["full_name"]);
    assert_eq!(seen["issues_url"], format!("{}/repos/octo/hello/issues", gw.url), "the body URL, rewritten");
    assert_eq!(seen["readme"], "# hello\n");
    assert_eq!(seen["raw_readme"], "# hello\n", "the raw media type");
    assert_eq!(seen["issues"], serde_json::json!([1, 2, 3, 4, 5, 6]), "every page, to the end");
    assert_eq!(seen["status"], "success");
    let rate_limit = direct(&fake, "/rate_limit").await;
    assert_eq!(seen["rate_limit"]["resources"], rate_limit["resources"]);
    // `octokit.graphql` posts to {baseUrl}/graphql with its variables; the second ask is a hit.
    let graphql = &seen["graphql"];
    assert_eq!(graphql[0]["variables"], serde_json::json!({"owner": "octo", "name": "hello"}), "{graphql}");
    assert_eq!(graphql[0]["serial"], graphql[1]["serial"], "the second query was answered from the cache");
    assert_eq!(fake.graphql_requests(), 1);
    let direct_reads = 2.0;
    assert_eq!(
        fake.requests() as f64 - direct_reads,
        upstream_requests(&gw).await,
        "a request reached the fake other than through the gateway"
    );
}

/// Runs `gh api` with `args` against the gateway at `url` (gh speaks https to any host but
/// github.com by name, so the gateway's plain-http URLs are given whole, as `gh api` users do
/// with a `next` URL), with its own empty configuration.
async fn gh_api(url: &str, args: &[&str]) -> String {
    let host = url.trim_start_matches("http://").to_string();
    let args: Vec<String> = args.iter().map(|a| a.replace("{gw}", url)).collect();
    let shown = args.join(" ");
    let config = tempfile::tempdir().unwrap();
    let config_dir = config.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("gh")
            .arg("api")
            .args(&args)
            .env("GH_CONFIG_DIR", config_dir)
            .env("GH_HOST", host)
            .env("GH_ENTERPRISE_TOKEN", "tok-gh")
            .env("GH_NO_UPDATE_NOTIFIER", "1")
            .env("GH_PROMPT_DISABLED", "1")
            .env_remove("GH_TOKEN")
            .env_remove("GITHUB_TOKEN")
            .output()
            .expect("gh is installed (Debian package gh; .ci/run installs it)")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gh api {shown} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn gh_api_follows_body_urls_and_pages_through_the_gateway() {
    if skipped() {
        return;
    }
    let fake = fake_repository().await;
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let repo: serde_json::Value =
        serde_json::from_str(&gh_api(&gw.url, &["{gw}/repos/octo/hello"]).await).unwrap();
    assert_eq!(repo["full_name"], direct(&fake, "/repos/octo/hello").await["full_name"]);
    // The body URL points at the gateway; `gh api` on it, paginated to the end.
    let issues_url = repo["issues_url"].as_str().unwrap().replace("{/number}", "");
    assert_eq!(issues_url, format!("{}/repos/octo/hello/issues", gw.url));
    let numbers = gh_api(&gw.url, &["--paginate", &issues_url, "--jq", ".[].number"]).await;
    assert_eq!(numbers.split_whitespace().collect::<Vec<_>>(), ["1", "2", "3", "4", "5", "6"]);
    let raw =
        gh_api(&gw.url, &["-H", "Accept: application/vnd.github.raw", "{gw}/repos/octo/hello/readme"]).await;
    assert_eq!(raw, "# hello\n");
    let state = gh_api(
        &gw.url,
        &[
            "--method",
            "POST",
            &format!("{{gw}}/repos/octo/hello/statuses/{SHA}"),
            "-f",
            "state=success",
            "-f",
            "context=ci/gate",
            "--jq",
            ".state",
        ],
    )
    .await;
    assert_eq!(state.trim(), "success");
    let rate: serde_json::Value = serde_json::from_str(&gh_api(&gw.url, &["{gw}/rate_limit"]).await).unwrap();
    assert_eq!(rate["resources"], direct(&fake, "/rate_limit").await["resources"]);
    let direct_reads = 2.0;
    assert_eq!(
        fake.requests() as f64 - direct_reads,
        upstream_requests(&gw).await,
        "a request reached the fake other than through the gateway"
    );
}

#[tokio::test]
async fn gh_api_graphql_queries_are_answered_and_cached_through_the_gateway() {
    if skipped() {
        return;
    }
    let fake = fake_repository().await;
    let gw = start_gateway(&fake.url(), cache_repository_info).await;
    // `gh api graphql` goes to https://HOST/api/graphql (GitHub Enterprise's form); over the
    // test's plain HTTP, `gh api` POSTs the body as GitHub's GraphQL clients send it.
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("query.json");
    let query = "query RepositoryInfo($owner: String!, $name: String!) { repository(owner: $owner, name: $name) { name } }";
    let json = serde_json::json!({"query": query, "variables": {"owner": "octo", "name": "hello"}});
    std::fs::write(&body, json.to_string()).unwrap();
    let args = ["{gw}/graphql", "--input", body.to_str().unwrap(), "--jq", ".data"];
    let first: serde_json::Value = serde_json::from_str(&gh_api(&gw.url, &args).await).unwrap();
    assert_eq!(first["variables"]["owner"], "octo", "{first}");
    let second: serde_json::Value = serde_json::from_str(&gh_api(&gw.url, &args).await).unwrap();
    assert_eq!(first["serial"], second["serial"], "the second query was answered from the cache");
    assert_eq!(fake.graphql_requests(), 1);
    assert_eq!(gw.metric("ghgate_graphql_requests_total{kind=\"query\"}").await, 2.0);
}

/// Runs tests/clients/pygithub_flow.py against the gateway at `url`.
async fn run_pygithub(python: &Path, url: &str) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/pygithub_flow.py");
    let (python, url) = (python.to_path_buf(), url.to_string());
    tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("GHGATE_URL", url)
            .env("GHGATE_TOKEN", "tok-python")
            .env("GHGATE_SHA", SHA)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Every upstream request the gateway made, by its metrics.
async fn upstream_requests(gw: &support::TestGateway) -> f64 {
    gw.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("ghgate_upstream_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn pygithub_follows_body_urls_through_the_gateway() {
    if skipped() {
        return;
    }
    let python = tokio::task::spawn_blocking(pygithub_python).await.unwrap();
    let fake = fake_repository().await;
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let out = run_pygithub(&python, &gw.url).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the PyGithub workflow failed:\n{stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let repo = direct(&fake, "/repos/octo/hello").await;
    assert_eq!(seen["full_name"], repo["full_name"]);
    assert_eq!(seen["owner"], repo["owner"]["login"], "a nested object");
    assert_eq!(seen["readme"], "# hello\n");
    assert_eq!(seen["issues"], serde_json::json!([1, 2, 3, 4, 5, 6]), "every page, to the end: {stderr}");
    assert_eq!(seen["status"], "success");
    let rate_limit = direct(&fake, "/rate_limit").await;
    assert_eq!(seen["rate_limit"]["resources"], rate_limit["resources"]);
    assert_eq!(seen["rate_limit"]["rate"], rate_limit["rate"]);

    // Without body URL rewriting, PyGithub refuses the URLs GitHub put in the bodies.
    let raw = start_gateway(&fake.url(), |s| s.server.rewrite_body_urls = false).await;
    let refused = run_pygithub(&python, &raw.url).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("AssertionError"), "PyGithub's URL check");
    let raw_upstream = upstream_requests(&raw).await;

    let through_gateway = upstream_requests(&gw).await + raw_upstream;
    let direct_reads = 2.0;
    assert_eq!(
        fake.requests() as f64 - direct_reads,
        through_gateway,
        "a request reached the fake other than through the gateway"
    );
}
