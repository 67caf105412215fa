//! Who is asking: the credential partition a request belongs to.
//!
//! A partition is a keyed hash of the credential, never the credential itself, so it can be
//! put in cache keys, logs and metrics. Everything cached is stored under exactly one
//! partition and served only to requests of that partition.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::Sha256;

/// The partition of every request without credentials. It is a shared cache: answers marked
/// `private` are never stored in it.
pub(crate) const ANONYMOUS: &str = "anonymous";

/// A credential partition: `anonymous`, or `c-` followed by 32 hex digits of
/// HMAC-SHA256(secret, credential).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Partition(String);

impl Partition {
    /// The shared partition of requests without credentials.
    pub(crate) fn anonymous() -> Self {
        Partition(ANONYMOUS.to_string())
    }

    /// A partition whose id is already safe to log and cannot collide with a credential hash
    /// (`c-…`) or `anonymous`: app installations (`i-…`).
    pub fn from_safe_id(id: String) -> Self {
        Partition(id)
    }

    /// Whether this is the shared anonymous partition.
    pub(crate) fn is_anonymous(&self) -> bool {
        self.0 == ANONYMOUS
    }

    /// The partition id, safe to log.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Derives partitions from requests with the deployment's secret key.
#[derive(Clone)]
pub struct Partitioner {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for Partitioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Partitioner { key: <redacted> }")
    }
}

impl Partitioner {
    /// A partitioner keyed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        Self { mac: Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length") }
    }

    /// The partition of a request, from its `Authorization` header.
    ///
    /// `token X` and `Bearer X` are the same credential to GitHub, so they are the same
    /// partition here; any other scheme (Basic) is hashed whole.
    pub fn partition(&self, headers: &HeaderMap) -> Partition {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Partition::anonymous();
        };
        let bytes = value.as_bytes();
        let trimmed = trim_ascii(bytes);
        if trimmed.is_empty() {
            return Partition::anonymous();
        }
        let credential = match split_scheme(trimmed) {
            (Some(scheme), rest) if is_token_scheme(scheme) => (b"t:".as_slice(), rest),
            _ => (b"h:".as_slice(), trimmed),
        };
        let mut mac = self.mac.clone();
        mac.update(credential.0);
        mac.update(credential.1);
        let digest = mac.finalize().into_bytes();
        // "c-" and 32 hex digits, built in place (this runs on every request).
        let mut id = [0u8; 34];
        id[..2].copy_from_slice(b"c-");
        hex::encode_to_slice(&digest[..16], &mut id[2..]).expect("32 digits for 16 bytes");
        Partition(String::from_utf8(id.to_vec()).expect("ASCII"))
    }
}

/// An `Authorization` value split into its scheme (the first word, when whitespace follows
/// it) and the rest, trimmed: `("token", "X")` for `token X`, `Token\tX` or `  TOKEN   X `;
/// `(None, "X")` for a bare `X`. Every reader of `Authorization` (partitions, client keys)
/// splits it here, so they agree on what the credential is.
pub(crate) fn split_scheme(value: &[u8]) -> (Option<&[u8]>, &[u8]) {
    let value = value.trim_ascii();
    match value.iter().position(u8::is_ascii_whitespace) {
        Some(end) => (Some(&value[..end]), value[end..].trim_ascii()),
        None => (None, value),
    }
}

/// The spelling of `Authorization` that goes upstream with a cacheable read: `Bearer X` for
/// every spelling of a token (`token X`, `BEARER  X`, ...), since they are one partition and
/// GitHub's ETag covers the exact value (see `cache::etag`); other values as they are.
pub(crate) fn canonical_authorization(value: &http::HeaderValue) -> Option<http::HeaderValue> {
    let (Some(scheme), credential) = split_scheme(value.as_bytes()) else { return None };
    if !is_token_scheme(scheme) || credential.is_empty() {
        return None;
    }
    let mut spelled = Vec::with_capacity(7 + credential.len());
    spelled.extend_from_slice(b"Bearer ");
    spelled.extend_from_slice(credential);
    let mut canonical = http::HeaderValue::from_bytes(&spelled).ok()?;
    canonical.set_sensitive(true);
    Some(canonical)
}

/// What an operator can recognise a credential by without it being shown: its kind (GitHub's
/// token prefixes, `ghp_`, `github_pat_`, `ghs_`, …) and the first 8 hex digits of its SHA-256
/// (`printf %s "$TOKEN" | sha256sum | cut -c1-8`), e.g. `ghp_… sha256:1a2b3c4d`.
pub(crate) fn fingerprint(authorization: &http::HeaderValue) -> String {
    use sha2::Digest;
    let (_, credential) = split_scheme(authorization.as_bytes());
    let digest = hex::encode(&Sha256::digest(credential)[..4]);
    let kind = ["github_pat_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_"]
        .into_iter()
        .find(|prefix| credential.starts_with(prefix.as_bytes()));
    match kind {
        Some(kind) => format!("{kind}… sha256:{digest}"),
        None => format!("token sha256:{digest}"),
    }
}

/// `token` and `Bearer`, in any case: the same credential to GitHub.
pub(crate) fn is_token_scheme(scheme: &[u8]) -> bool {
    scheme.eq_ignore_ascii_case(b"token") || scheme.eq_ignore_ascii_case(b"bearer")
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// Returns the configured secret, or the one kept in `data_dir/secret`, creating it (32
/// random bytes, hex, mode 0600) on first start so partitions stay stable across restarts.
pub(crate) fn load_or_create_secret(configured: Option<&str>, data_dir: &Path) -> std::io::Result<Vec<u8>> {
    if let Some(secret) = configured {
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join("secret");
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 32 => return Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is shorter than 32 characters; delete it to regenerate", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut file) => {
            use std::io::Write;
            file.write_all(secret.as_bytes())?;
            file.sync_all()?;
            Ok(secret.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().as_bytes().to_vec())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    #[test]
    fn fingerprints_name_the_kind_and_a_short_hash_never_the_token() {
        let value = http::HeaderValue::from_static("Bearer ghp_0123456789abcdefghijklmnopqrstuvwxyzAB");
        let print = fingerprint(&value);
        assert!(print.starts_with("ghp_… sha256:"), "{print}");
        assert!(!print.contains("0123456789"));
        // sha256("alice-token") starts with these 8 digits (printf %s alice-token | sha256sum).
        let plain = fingerprint(&http::HeaderValue::from_static("token alice-token"));
        assert_eq!(
            plain,
            format!("token sha256:{}", &hex::encode(<Sha256 as sha2::Digest>::digest(b"alice-token"))[..8])
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn token_and_bearer_spellings_share_a_partition() {
        let p = Partitioner::new(b"k");
        assert_eq!(p.partition(&auth("token abc")), p.partition(&auth("Bearer abc")));
        assert_eq!(p.partition(&auth("token abc")), p.partition(&auth("TOKEN  abc ")));
    }

    #[test]
    fn different_credentials_and_keys_differ() {
        let p = Partitioner::new(b"k");
        assert_ne!(p.partition(&auth("token abc")), p.partition(&auth("token abd")));
        assert_ne!(p.partition(&auth("token abc")), Partitioner::new(b"j").partition(&auth("token abc")));
        assert_ne!(p.partition(&auth("Basic abc")), p.partition(&auth("token abc")));
    }

    #[test]
    fn no_credential_is_anonymous_and_ids_never_contain_the_token() {
        let p = Partitioner::new(b"k");
        assert!(p.partition(&HeaderMap::new()).is_anonymous());
        assert!(p.partition(&auth("  ")).is_anonymous());
        let id = p.partition(&auth("token ghp_secretvalue"));
        assert!(!id.as_str().contains("secret"));
        assert_eq!(id.as_str().len(), 2 + 32);
    }

    #[test]
    fn secret_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_secret(None, dir.path()).unwrap();
        let b = load_or_create_secret(None, dir.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(load_or_create_secret(Some("given"), dir.path()).unwrap(), b"given");
    }
}
