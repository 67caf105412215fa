//! A GitHub App for broker tests: the fake GitHub knows its public key, the gateway its
//! private key (the test keys in tests/data), and clients of it with known keys.

use ghgate::config::{AppSettings, ClientSettings, Settings};
use sha2::{Digest, Sha256};

use super::{FakeGitHub, TestGateway};

/// The app's id, as the fake and the gateway know it.
pub const APP_ID: &str = "4242";
/// The app's name in the gateway's settings.
pub const APP: &str = "ci-bot";

/// A file under tests/data.
pub fn data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// A fake GitHub with the app's endpoints turned on.
pub async fn fake_with_app() -> FakeGitHub {
    let fake = FakeGitHub::start().await;
    fake.enable_app(APP_ID, &std::fs::read(data("app-key-public.pem")).unwrap());
    fake
}

/// A `[[clients]]` entry of the app for `key`.
pub fn client(name: &str, key: &str, owners: &[&str]) -> ClientSettings {
    ClientSettings {
        name: name.into(),
        key_sha256: hex::encode(Sha256::digest(key.as_bytes())),
        app: APP.into(),
        owners: owners.iter().map(|o| o.to_string()).collect(),
        permissions: Default::default(),
    }
}

/// Adds the app to the settings, with no clients.
pub fn add_app(s: &mut Settings) {
    s.apps.push(AppSettings {
        name: APP.into(),
        app_id: Some(APP_ID.into()),
        client_id: None,
        private_key_path: Some(data("app-key-pkcs1.pem")),
        private_key_env: None,
    });
}

/// GET `path` through the gateway with a client key.
pub async fn get_with_key(gw: &TestGateway, path: &str, key: &str) -> reqwest::Response {
    gw.client
        .get(format!("{}{path}", gw.url))
        .header("authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap()
}
