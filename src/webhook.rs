//! GitHub webhooks: signature checks and what a delivery says has changed.
//!
//! GitHub already tells apps what changed. A delivery whose `X-Hub-Signature-256` verifies
//! (HMAC-SHA256, compared in constant time, against any of the configured secrets so they can
//! be rotated) is turned into [`Effect`]s; the pipeline applies them: cached entries of the
//! repository or owner are marked stale, and installation changes drop the broker's tokens and
//! look-ups for them.

use hmac::{Hmac, KeyInit, Mac};
use http::HeaderValue;
use sha2::Sha256;

/// Where GitHub delivers webhooks, on the proxy listener.
pub const PATH: &str = "/_ghgate/webhook";

/// A delivery that passed the checks: its event name (short and plain, shown on the status
/// page) and its payload, read for its effects after the sender has had its 202.
pub struct Delivery {
    /// `X-GitHub-Event`, reduced to letters, digits and `_`.
    pub event: String,
    /// The payload as delivered.
    pub payload: bytes::Bytes,
}

impl Delivery {
    /// What the delivery changes (nothing, when the payload is not JSON).
    pub fn effects(&self) -> Vec<Effect> {
        let payload: serde_json::Value = serde_json::from_slice(&self.payload).unwrap_or_default();
        effects(&self.event, &payload)
    }
}

/// What a delivery changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Something in one repository changed: its cached entries are stale.
    Repo {
        /// Owner login, lower-case.
        owner: String,
        /// Repository name, lower-case.
        repo: String,
    },
    /// Something about an owner changed (members, teams, the organisation itself).
    Owner(String),
    /// An app installation was created, deleted, suspended or changed its repositories.
    Installation {
        /// The installation id.
        id: u64,
        /// Its account login, lower-case, when the payload names it.
        account: Option<String>,
    },
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under one of `secrets`.
/// Each comparison is constant-time (`verify_slice`).
pub fn verify(secrets: &[String], body: &[u8], signature: Option<&HeaderValue>) -> bool {
    let Some(hex_digest) =
        signature.and_then(|v| v.to_str().ok()).and_then(|v| v.trim().strip_prefix("sha256="))
    else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_digest) else { return false };
    let mut ok = false;
    for secret in secrets {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(body);
        ok |= mac.verify_slice(&expected).is_ok();
    }
    ok
}

/// What a delivery of `event` with `payload` changes.
pub fn effects(event: &str, payload: &serde_json::Value) -> Vec<Effect> {
    let mut out = Vec::new();
    let lower = |v: &serde_json::Value| v.as_str().map(str::to_ascii_lowercase);
    if matches!(event, "installation" | "installation_repositories" | "installation_target") {
        if let Some(id) = payload.pointer("/installation/id").and_then(|v| v.as_u64()) {
            let account = payload.pointer("/installation/account/login").and_then(lower);
            out.push(Effect::Installation { id, account: account.clone() });
            if let Some(owner) = account {
                out.push(Effect::Owner(owner));
            }
        }
        return out;
    }
    if event == "ping" {
        return out;
    }
    if let Some(full_name) = payload.pointer("/repository/full_name").and_then(lower) {
        if let Some((owner, repo)) = full_name.split_once('/') {
            out.push(Effect::Repo { owner: owner.to_string(), repo: repo.to_string() });
        }
    } else if let Some(org) = payload.pointer("/organization/login").and_then(lower) {
        out.push(Effect::Owner(org));
    }
    out
}

/// The owner and repository a cached path belongs to (`/repos/{o}/{r}/…`), or the owner of
/// `/orgs/{o}/…` and `/users/{o}/…`; lower-case.
pub fn tags_of(path_key: &str) -> (Option<&str>, Option<&str>) {
    let mut parts = path_key.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("repos"), Some(o), r) => (Some(o), r.filter(|r| !r.is_empty())),
        (Some("orgs" | "users"), Some(o), _) => (Some(o), None),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> HeaderValue {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        HeaderValue::from_str(&format!("sha256={}", hex::encode(mac.finalize().into_bytes()))).unwrap()
    }

    #[test]
    fn signatures_verify_with_any_configured_secret() {
        let secrets = vec!["old-secret".to_string(), "new-secret".to_string()];
        let body = br#"{"zen":"hi"}"#;
        assert!(verify(&secrets, body, Some(&sign("new-secret", body))));
        assert!(verify(&secrets, body, Some(&sign("old-secret", body))));
        assert!(!verify(&secrets, body, Some(&sign("other", body))));
        assert!(!verify(&secrets, b"tampered", Some(&sign("new-secret", body))));
        assert!(!verify(&secrets, body, None));
        assert!(!verify(&secrets, body, Some(&HeaderValue::from_static("sha1=abc"))));
    }

    #[test]
    fn deliveries_name_what_they_change() {
        let push: serde_json::Value =
            serde_json::from_str(include_str!("../tests/data/webhooks/push.json")).unwrap();
        assert_eq!(effects("push", &push), vec![Effect::Repo { owner: "octo".into(), repo: "hello".into() }]);
        let deleted: serde_json::Value =
            serde_json::from_str(include_str!("../tests/data/webhooks/installation_deleted.json")).unwrap();
        assert_eq!(
            effects("installation", &deleted),
            vec![Effect::Installation { id: 7, account: Some("octo".into()) }, Effect::Owner("octo".into())]
        );
        let ping: serde_json::Value =
            serde_json::from_str(include_str!("../tests/data/webhooks/ping.json")).unwrap();
        assert!(effects("ping", &ping).is_empty());
    }

    #[test]
    fn cached_paths_are_tagged_by_owner_and_repository() {
        assert_eq!(tags_of("/repos/octo/hello/pulls/1"), (Some("octo"), Some("hello")));
        assert_eq!(tags_of("/orgs/acme/members"), (Some("acme"), None));
        assert_eq!(tags_of("/search/code"), (None, None));
    }
}
