//! The `ghgate` binary as operators run it: `check-config` and `serve` with flags alone.

use crate::support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::process::{free_port, wait_exit, wait_healthy};
use support::{FakeGitHub, Resource, outcome};

const BIN: &str = env!("CARGO_BIN_EXE_ghgate");

fn check_config(toml: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ghgate.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config").arg("--config").arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_config_accepts_a_good_file() {
    let toml = r#"
[server]
listen = "127.0.0.1:8080"
public_url = "https://gh.example.com"

[upstream]
url = "https://ghe.example.com/api/v3"
timeout = "20s"

[cache]
max_bytes = "64MiB"
stale_if_error = "10m"

[[cache.rules]]
path = "/repos/{owner}/{repo}/contents/**"
min_fresh = "5m"
"#;
    let (ok, stdout, stderr) = check_config(toml, &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("valid"));
}

#[test]
fn check_config_names_the_bad_key_and_exits_non_zero() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 7] = [
        ("[cache]\nmax_bytes = \"lots\"\n", &[], "cache.max_bytes"),
        ("[server]\nlisten = \"port eighty\"\n", &[], "server.listen"),
        ("[upstream]\nurl = \"ftp://example.com\"\n", &[], "upstream.url"),
        ("[cache]\nmax_bites = 1\n", &[], "max_bites"),
        ("[[cache.rules]]\npath = \"no-slash\"\n", &[], "cache.rules"),
        ("", &[("GHGATE_UPSTREAM__TIMEOUT", "soon")], "upstream.timeout"),
        (
            "[[negative.rules]]\nname = \"r\"\nmethod = \"POST\"\npath = \"/repos/{owner}/{repo}/x\"\nstatus = [403]\nkey = [\"owner\"]\nttl = \"1m\"\n",
            &[],
            "negative.rules[0]",
        ),
    ];
    for (toml, env, key) in cases {
        let (ok, _, stderr) = check_config(toml, env);
        assert!(!ok, "{toml:?} should fail");
        assert!(stderr.contains(key), "{toml:?}: message should name {key}: {stderr}");
    }
}

#[test]
fn check_config_reports_a_missing_file() {
    let out =
        Command::new(BIN).args(["check-config", "--config", "/nonexistent/ghgate.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ghgate.toml"));
}

#[tokio::test]
async fn serve_runs_with_flags_alone_stops_on_sigterm_and_never_logs_credentials() {
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello", Resource::json(r#"{"id":1}"#));
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin_port}"),
        ])
        .args(["--upstream", &fake.url()])
        .current_dir(dir.path())
        .env("RUST_LOG", "debug")
        .env_remove("GHGATE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = support::client();
    wait_healthy(&format!("http://127.0.0.1:{admin_port}")).await;
    let secret_token = "ghp_SuperSecretToken1234567890";
    for expected in ["MISS", "HIT"] {
        let r = client
            .get(format!("http://127.0.0.1:{port}/repos/octo/hello"))
            .header("authorization", format!("token {secret_token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(outcome(&r), expected);
    }
    let metrics = client
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(support::metric_value(&metrics, "ghgate_requests_total{outcome=\"hit\"}"), 1.0, "{metrics}");
    let ready = client.get(format!("http://127.0.0.1:{admin_port}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let probe =
        Command::new(BIN).args(["probe", &format!("http://127.0.0.1:{admin_port}/readyz")]).status().unwrap();
    assert!(probe.success(), "the container health check passes");
    let probe = Command::new(BIN)
        .args(["probe", &format!("http://127.0.0.1:{admin_port}/nothing-here")])
        .status()
        .unwrap();
    assert!(!probe.success());

    // The embedded default keeps its secret in ./ghgate-data, readable by the owner only.
    let secret_file = dir.path().join("ghgate-data/secret");
    assert!(secret_file.is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&secret_file).unwrap().permissions().mode() & 0o777, 0o600);
    }

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "graceful stop exits 0: {status}");
    let mut logs = String::new();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    assert!(logs.contains("ghgate listening"), "{logs}");
    assert!(logs.contains("ghgate::access"), "debug logs show each request: {logs}");
    assert!(!logs.contains("SuperSecretToken"), "a credential reached the logs:\n{logs}");
    assert!(!logs.contains('\u{1b}'), "logs to a pipe carry no colour escapes:\n{logs}");
}

#[test]
fn serve_refuses_bad_flags_and_busy_ports_with_a_message() {
    let out = Command::new(BIN).args(["serve", "--upstream", "not a url"]).output().unwrap();
    assert!(!out.status.success());
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("server.listen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_example_settings_file_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/ghgate.example.toml");
    let out = Command::new(BIN).args(["check-config", "--config", path]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_config_names_the_app_whose_private_key_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let bad_key = dir.path().join("bad.pem");
    std::fs::write(
        &bad_key,
        "-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    let toml = format!(
        "[[apps]]\nname = \"deploy-bot\"\napp_id = \"12\"\nprivate_key_path = \"{}\"\n",
        bad_key.display()
    );
    let (ok, _, stderr) = check_config(&toml, &[]);
    assert!(!ok);
    assert!(stderr.contains("apps[0].private_key_path") && stderr.contains("deploy-bot"), "{stderr}");

    let missing =
        "[[apps]]\nname = \"deploy-bot\"\napp_id = \"12\"\nprivate_key_path = \"/nonexistent.pem\"\n";
    let (ok, _, stderr) = check_config(missing, &[]);
    assert!(!ok);
    assert!(stderr.contains("deploy-bot") && stderr.contains("/nonexistent.pem"), "{stderr}");

    let good_key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/app-key-pkcs8.pem");
    let unknown_app = format!(
        "[[apps]]\nname = \"a\"\nclient_id = \"Iv1.abc\"\nprivate_key_path = \"{good_key}\"\n\n[[clients]]\nname = \"c\"\nkey_sha256 = \"{}\"\napp = \"b\"\n",
        "0".repeat(64)
    );
    let (ok, _, stderr) = check_config(&unknown_app, &[]);
    assert!(!ok);
    assert!(stderr.contains("clients[0].app"), "{stderr}");
}

#[test]
fn gen_client_key_prints_a_key_and_its_hash() {
    let out = Command::new(BIN).arg("gen-client-key").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text.split_whitespace().find(|w| w.starts_with("ghgate_")).unwrap();
    let hash = text.lines().nth(1).unwrap().split_whitespace().last().unwrap();
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(key.as_bytes())), hash);
}
