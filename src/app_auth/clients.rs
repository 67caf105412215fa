//! Client keys: how a request says "act as this app" (`Authorization: token ghgate_…`), which
//! installation it means (its path, or `x-ghgate-installation`), and whether the client may.
//! Keys are compared as SHA-256 digests in constant time; the key itself is never kept.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{GitHubApp, Rejection};
use crate::config::ClientSettings;

/// Client keys start with this, so they can be told apart from GitHub tokens.
pub const CLIENT_KEY_PREFIX: &str = "ghgate_";

/// Names the installation of a request whose path names no owner: an owner or an id.
pub const INSTALLATION_HEADER: HeaderName = HeaderName::from_static("x-ghgate-installation");

/// Down-scoped permissions, kept sorted so equal sets hash equally.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Permissions {
    pub(super) map: BTreeMap<String, String>,
    /// Short stable id of the set, for keys and partitions.
    pub id: String,
}

impl Permissions {
    fn new(map: BTreeMap<String, String>) -> Option<Arc<Permissions>> {
        if map.is_empty() {
            return None;
        }
        let text = serde_json::to_string(&map).unwrap_or_default();
        let id = hex::encode(&Sha256::digest(text.as_bytes())[..4]);
        Some(Arc::new(Permissions { map, id }))
    }
}

/// Which installation a request means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/repos/{owner}/{repo}/...`
    Repo(String, String),
    /// `/orgs/{org}/...`
    Org(String),
    /// `/users/{user}/...`
    User(String),
    /// `x-ghgate-installation: <owner>`
    Owner(String),
    /// `x-ghgate-installation: <id>`
    Id(u64),
}

impl Target {
    /// The owner it names (none for an installation id).
    pub(super) fn owner(&self) -> Option<&str> {
        match self {
            Target::Repo(o, _) | Target::Org(o) | Target::User(o) | Target::Owner(o) => Some(o),
            Target::Id(_) => None,
        }
    }

    /// How messages name it.
    pub(super) fn describe(&self) -> String {
        match self {
            Target::Repo(o, r) => format!("{o}/{r}"),
            Target::Org(o) | Target::User(o) | Target::Owner(o) => o.clone(),
            Target::Id(id) => format!("installation {id}"),
        }
    }
}

/// Who a request acts as.
#[derive(Debug, Clone)]
pub enum Identity {
    /// Its own credential (or none): forwarded as it is.
    PassThrough,
    /// A broker client: acts as an app installation.
    App(AppRequest),
}

/// A broker client's request, before its installation is known.
#[derive(Debug, Clone)]
pub struct AppRequest {
    /// The app it uses.
    pub app: Arc<GitHubApp>,
    /// The installation it addresses.
    pub target: Target,
    /// Down-scoped permissions, if the client has them.
    pub permissions: Option<Arc<Permissions>>,
}

/// One configured client.
struct Client {
    name: String,
    key_hash: [u8; 32],
    app: Arc<GitHubApp>,
    owners: Vec<String>,
    permissions: Option<Arc<Permissions>>,
}

/// The configured clients and whether requests without a client key may pass through.
pub(super) struct ClientKeys {
    clients: Vec<Client>,
    allow_pass_through: bool,
}

impl ClientKeys {
    /// The clients of `settings`, each bound to its app (checked by `check_settings`).
    pub(super) fn new(
        settings: &[ClientSettings],
        apps: &std::collections::HashMap<String, Arc<GitHubApp>>,
        allow_pass_through: bool,
    ) -> Result<ClientKeys, String> {
        let mut clients = Vec::new();
        for c in settings {
            let app =
                apps.get(&c.app).ok_or_else(|| format!("client {:?}: unknown app {:?}", c.name, c.app))?;
            let mut key_hash = [0u8; 32];
            hex::decode_to_slice(c.key_sha256.trim(), &mut key_hash)
                .map_err(|e| format!("client {:?}: key_sha256: {e}", c.name))?;
            clients.push(Client {
                name: c.name.clone(),
                key_hash,
                app: Arc::clone(app),
                owners: c.owners.iter().map(|o| o.to_ascii_lowercase()).collect(),
                permissions: Permissions::new(c.permissions.clone()),
            });
        }
        Ok(ClientKeys { clients, allow_pass_through })
    }

    /// A client key makes the request an app request; anything else passes through with its
    /// own credential (unless pass-through is switched off).
    pub(super) fn identify(&self, headers: &HeaderMap, path: &str) -> Result<Identity, Rejection> {
        let presented = headers.get(http::header::AUTHORIZATION).and_then(|v| presented_key(v.as_bytes()));
        let Some(key) = presented else {
            if !self.allow_pass_through {
                return Err(Rejection::new(
                    StatusCode::UNAUTHORIZED,
                    "This gateway accepts only ghgate client keys (broker.allow_pass_through is off)",
                ));
            }
            return Ok(Identity::PassThrough);
        };
        let digest: [u8; 32] = Sha256::digest(key).into();
        // Compare against every client, without stopping early, in constant time each.
        let mut found: Option<&Client> = None;
        for client in &self.clients {
            if bool::from(client.key_hash.ct_eq(&digest)) {
                found = Some(client);
            }
        }
        let Some(client) = found else {
            return Err(Rejection::new(
                StatusCode::UNAUTHORIZED,
                "Bad credentials: unknown ghgate client key",
            ));
        };
        let target = target_of(path, headers)?;
        if !client.owners.is_empty() {
            let allowed =
                target.owner().is_some_and(|o| client.owners.iter().any(|a| a.eq_ignore_ascii_case(o)));
            if !allowed {
                return Err(Rejection::new(
                    StatusCode::FORBIDDEN,
                    format!("Client {:?} may not act on {}", client.name, target.describe()),
                ));
            }
        }
        Ok(Identity::App(AppRequest {
            app: Arc::clone(&client.app),
            target,
            permissions: client.permissions.clone(),
        }))
    }
}

/// The client key an `Authorization` value presents, if it looks like one: the credential
/// after any scheme (`token`, `Bearer`, `BEARER`, even `Basic`), with any whitespace, starts
/// with `ghgate_`. Such a value is never forwarded: a known key acts as its app, an unknown
/// one is refused here.
pub(crate) fn presented_key(value: &[u8]) -> Option<&[u8]> {
    let (_, credential) = crate::identity::split_scheme(value);
    credential.starts_with(CLIENT_KEY_PREFIX.as_bytes()).then_some(credential)
}

/// The installation a request addresses, from its path or the installation header. The
/// header's value is spliced into look-up URLs, so it must be an owner login or an
/// installation id and nothing else.
fn target_of(path: &str, headers: &HeaderMap) -> Result<Target, Rejection> {
    let mut parts = path.trim_start_matches('/').split('/');
    let first = parts.next().unwrap_or("");
    let second = parts.next().filter(|s| !s.is_empty());
    let third = parts.next().filter(|s| !s.is_empty());
    match (first, second, third) {
        ("repos", Some(o), Some(r)) => return Ok(Target::Repo(o.to_string(), r.to_string())),
        ("orgs", Some(o), _) => return Ok(Target::Org(o.to_string())),
        ("users", Some(u), _) => return Ok(Target::User(u.to_string())),
        _ => {}
    }
    let named = headers.get(&INSTALLATION_HEADER).map(|v| v.to_str().unwrap_or("\u{0}").trim()).unwrap_or("");
    if named.is_empty() {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            format!(
                "This path names no owner: say which installation you mean with the {INSTALLATION_HEADER} header (an owner or an installation id)"
            ),
        ));
    }
    if let Ok(id) = named.parse::<u64>() {
        return Ok(Target::Id(id));
    }
    if !is_login(named) {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            format!("The {INSTALLATION_HEADER} header must be an owner login or an installation id"),
        ));
    }
    Ok(Target::Owner(named.to_string()))
}

/// A GitHub login: 1–39 letters, digits and single hyphens, not starting or ending with one.
fn is_login(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=39).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// A new client key and the SHA-256 to configure for it (`ghgate gen-client-key`).
pub fn generate_client_key() -> (String, String) {
    let key = format!("{CLIENT_KEY_PREFIX}{}", hex::encode(rand::random::<[u8; 24]>()));
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    (key, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn targets_come_from_the_path_or_the_installation_header() {
        let none = HeaderMap::new();
        let target = |path: &str, h: &HeaderMap| target_of(path, h).ok();
        assert_eq!(
            target("/repos/octo/hello/pulls", &none),
            Some(Target::Repo("octo".into(), "hello".into()))
        );
        assert_eq!(target("/orgs/acme/members", &none), Some(Target::Org("acme".into())));
        assert_eq!(target("/users/mona", &none), Some(Target::User("mona".into())));
        assert_eq!(target("/installation/repositories", &none), None);
        assert_eq!(target("/repos/octo", &none), None);
        let by_owner = headers(&[("x-ghgate-installation", "acme")]);
        assert_eq!(target("/installation/repositories", &by_owner), Some(Target::Owner("acme".into())));
        let by_id = headers(&[("x-ghgate-installation", "123")]);
        assert_eq!(target("/graphql", &by_id), Some(Target::Id(123)));
        for bad in ["a/b", "../x", "-a", "a-", "a--b", "a?b", "a b", &"a".repeat(40)] {
            assert!(target_of("/graphql", &headers(&[("x-ghgate-installation", bad)])).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_keys_are_recognised_in_any_scheme_spelling() {
        for value in [
            "token ghgate_x",
            "BEARER ghgate_x",
            "bearer\tghgate_x",
            "  Token   ghgate_x ",
            "ghgate_x",
            "Basic ghgate_x",
        ] {
            assert_eq!(presented_key(value.as_bytes()), Some(b"ghgate_x".as_slice()), "{value:?}");
        }
        for value in ["token ghp_x", "Bearer", "", "token ghgate"] {
            assert_eq!(presented_key(value.as_bytes()), None, "{value:?}");
        }
    }

    #[test]
    fn generated_client_keys_hash_to_what_is_printed() {
        let (key, hash) = generate_client_key();
        assert!(key.starts_with(CLIENT_KEY_PREFIX));
        assert_eq!(hex::encode(Sha256::digest(key.as_bytes())), hash);
    }

    #[test]
    fn equal_permission_sets_share_an_id() {
        let a = Permissions::new(BTreeMap::from([
            ("contents".into(), "read".into()),
            ("issues".into(), "write".into()),
        ]));
        let b = Permissions::new(BTreeMap::from([
            ("issues".into(), "write".into()),
            ("contents".into(), "read".into()),
        ]));
        assert_eq!(a.unwrap().id, b.unwrap().id);
        assert!(Permissions::new(BTreeMap::new()).is_none());
    }
}
