//! Cache keys. A key names one representation of one resource as seen by one credential
//! partition; two requests share an entry only when GitHub would send both the same answer.

use http::HeaderMap;

use crate::github;
use crate::identity::Partition;

/// The key of one cache entry, plus the path it is filed under for invalidation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// `partition \n path?query \n accept \n api-version`: the store key.
    pub key: String,
    /// The lowercased path without query; unsafe requests to it invalidate every entry under it.
    pub path_key: String,
}

impl CacheKey {
    /// The key of a GET or HEAD request (they share entries; HEAD answers drop the body).
    ///
    /// `Accept` and `X-GitHub-Api-Version` are part of the key because they pick the
    /// representation (JSON, raw, diff, ...); both are normalised so that clients that mean
    /// the same thing share one entry. `Authorization` is represented by the partition.
    pub fn new(partition: &Partition, path_and_query: &str, headers: &HeaderMap) -> CacheKey {
        let accept = github::normalize_accept(headers.get(http::header::ACCEPT));
        let version = headers
            .get(&github::API_VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && *v != github::DEFAULT_API_VERSION)
            .unwrap_or("");
        let mut key = String::with_capacity(
            partition.as_str().len() + path_and_query.len() + accept.len() + version.len() + 3,
        );
        for (i, part) in [partition.as_str(), path_and_query, &accept, version].iter().enumerate() {
            if i > 0 {
                key.push('\n');
            }
            key.push_str(part);
        }
        CacheKey { key, path_key: path_key(path_and_query) }
    }

    /// The key without its partition: path, query, `Accept` and API version. Entries of
    /// different partitions with one variant hold GitHub's answers to the same request, made
    /// with different credentials (see `cache::etag`).
    pub(crate) fn variant(&self) -> &str {
        self.key.split_once('\n').map_or("", |(_, rest)| rest)
    }
}

/// The invalidation key of a path: no query, lowercase (GitHub owners and repositories are
/// case-insensitive, so invalidating more is the safe side).
pub(crate) fn path_key(path_and_query: &str) -> String {
    let path = path_and_query.split('?').next().unwrap_or("");
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    path.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Partitioner;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn client_spellings_of_default_json_share_a_key() {
        let p = Partition::anonymous();
        let octokit =
            CacheKey::new(&p, "/repos/o/r", &headers(&[("accept", "application/vnd.github.v3+json")]));
        let octocrab = CacheKey::new(&p, "/repos/o/r", &headers(&[("content-length", "0")]));
        let gh = CacheKey::new(&p, "/repos/o/r", &headers(&[("accept", "")]));
        let pygithub = CacheKey::new(&p, "/repos/o/r", &headers(&[("accept", "*/*")]));
        assert_eq!(octokit, octocrab);
        assert_eq!(octokit, gh);
        assert_eq!(octokit, pygithub);
        let pinned = CacheKey::new(&p, "/repos/o/r", &headers(&[("x-github-api-version", "2022-11-28")]));
        assert_eq!(octokit, pinned);
    }

    #[test]
    fn partitions_media_types_and_queries_are_apart() {
        let a = Partitioner::new(b"s").partition(&headers(&[("authorization", "token a")]));
        let anon = Partition::anonymous();
        let base = CacheKey::new(&anon, "/repos/o/r/pulls/1", &HeaderMap::new());
        assert_ne!(base, CacheKey::new(&a, "/repos/o/r/pulls/1", &HeaderMap::new()));
        assert_ne!(base, CacheKey::new(&anon, "/repos/o/r/pulls/1?x=1", &HeaderMap::new()));
        let diff = CacheKey::new(
            &anon,
            "/repos/o/r/pulls/1",
            &headers(&[("accept", "application/vnd.github.diff")]),
        );
        assert_ne!(base, diff);
        assert_eq!(base.path_key, diff.path_key);
    }

    #[test]
    fn path_keys_drop_query_case_and_trailing_slash() {
        assert_eq!(path_key("/repos/Octo/Hello/?page=2"), "/repos/octo/hello");
        assert_eq!(path_key("/"), "/");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::identity::Partitioner;
    use proptest::prelude::*;

    fn auth(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, format!("token {token}").parse().unwrap());
        h
    }

    proptest! {
        /// Two different credentials never share a partition, hence never a cache key.
        #[test]
        fn different_credentials_never_share_a_key(a in "[A-Za-z0-9_]{1,40}", b in "[A-Za-z0-9_]{1,40}", path in "/[a-z0-9/]{0,30}") {
            prop_assume!(a != b);
            let p = Partitioner::new(b"property-secret");
            let (pa, pb) = (p.partition(&auth(&a)), p.partition(&auth(&b)));
            prop_assert_ne!(&pa, &pb);
            prop_assert_ne!(CacheKey::new(&pa, &path, &HeaderMap::new()), CacheKey::new(&pb, &path, &HeaderMap::new()));
        }

        /// Keys are deterministic, and the partition of a credential is never readable in it.
        #[test]
        fn keys_are_stable_and_hide_the_credential(token in "[A-Za-z0-9]{12,40}", path in "/[a-z0-9/]{0,30}") {
            prop_assume!(!path.contains(&token.to_ascii_lowercase()));
            let p = Partitioner::new(b"property-secret");
            let one = CacheKey::new(&p.partition(&auth(&token)), &path, &HeaderMap::new());
            let two = CacheKey::new(&p.partition(&auth(&token)), &path, &HeaderMap::new());
            prop_assert_eq!(&one, &two);
            prop_assert!(!one.key.contains(&token));
        }

        /// Normalising `Accept` twice changes nothing.
        #[test]
        fn accept_normalisation_is_idempotent(accept in "[a-zA-Z0-9/+.*, ]{0,40}") {
            if let Ok(value) = http::HeaderValue::from_str(&accept) {
                let once = crate::github::normalize_accept(Some(&value));
                let again = crate::github::normalize_accept(http::HeaderValue::from_str(&once).ok().as_ref());
                prop_assert_eq!(once, again);
            }
        }
    }
}
