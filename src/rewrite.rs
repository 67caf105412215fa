//! Keeping clients behind the gateway: absolute upstream URLs in answer headers (`Link` for
//! pagination, `Location` for redirects) are rewritten to the gateway's public base URL.
//! Without this, a client following page 2 would talk to GitHub directly with its credential.
//!
//! URLs inside JSON bodies are left as they are: rewriting them would mean parsing and
//! re-serialising every body, and clients build their next request from headers.

use std::net::IpAddr;

use http::header::{HOST, LINK, LOCATION};
use http::{HeaderMap, HeaderValue, Uri};
use ipnet::IpNet;
use url::Url;

/// The upstream base URL as it appears at the start of the URLs GitHub sends
/// (`https://api.github.com`, or `https://ghe.example.com/api/v3`), without a trailing slash.
pub(crate) fn base_of(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_string()
}

/// Works out the base URL a client used to reach the gateway.
///
/// The configured public URL wins. Otherwise `Forwarded` / `X-Forwarded-Host` /
/// `X-Forwarded-Proto` are believed only from a trusted proxy, then `Host` (or the HTTP/2
/// authority) is used with plain `http`. `None` when nothing usable was sent.
pub(crate) fn public_base(
    configured: Option<&str>,
    headers: &HeaderMap,
    uri: &Uri,
    peer: IpAddr,
    trusted: &[IpNet],
) -> Option<String> {
    if let Some(base) = configured {
        return Some(base.to_string());
    }
    let mut scheme = "http".to_string();
    let mut host: Option<String> = None;
    if trusted.iter().any(|net| net.contains(&peer)) {
        if let Some((proto, fwd_host)) = forwarded_first(headers) {
            if let Some(p) = proto {
                scheme = p;
            }
            host = fwd_host;
        }
        if host.is_none() {
            host = header_first(headers, "x-forwarded-host");
        }
        if let Some(p) = header_first(headers, "x-forwarded-proto") {
            scheme = p;
        }
    }
    let host = host
        .or_else(|| headers.get(HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .or_else(|| uri.authority().map(|a| a.to_string()))?;
    // Only a plain authority may be spliced into a URL; anything else is ignored.
    let authority: http::uri::Authority = host.trim().parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    Some(format!("{scheme}://{}", authority.as_str()))
}

fn header_first(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?;
    let first = value.split(',').next()?.trim();
    (!first.is_empty()).then(|| first.to_string())
}

/// `proto` and `host` of the first element of `Forwarded` (RFC 7239): the one the first
/// proxy added, describing the client's original request.
fn forwarded_first(headers: &HeaderMap) -> Option<(Option<String>, Option<String>)> {
    let value = headers.get("forwarded")?.to_str().ok()?;
    let first = value.split(',').next()?;
    let mut proto = None;
    let mut host = None;
    for pair in first.split(';') {
        let Some((k, v)) = pair.split_once('=') else { continue };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "proto" => proto = Some(v),
            "host" => host = Some(v),
            _ => {}
        }
    }
    Some((proto, host))
}

/// Rewrites `Link` and `Location` values that start with `upstream_base` to start with
/// `public_base` instead.
pub fn rewrite_headers(headers: &mut HeaderMap, upstream_base: &str, public_base: &str) {
    for name in [LINK, LOCATION] {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        if values.is_empty() {
            continue;
        }
        let mut changed = false;
        let rewritten: Vec<HeaderValue> = values
            .iter()
            .map(|v| match v.to_str().ok().and_then(|s| rewrite_urls(s, upstream_base, public_base)) {
                Some(new) => match HeaderValue::from_str(&new) {
                    Ok(hv) => {
                        changed = true;
                        hv
                    }
                    Err(_) => v.clone(),
                },
                None => v.clone(),
            })
            .collect();
        if changed {
            headers.remove(&name);
            for v in rewritten {
                headers.append(name.clone(), v);
            }
        }
    }
}

/// Replaces every occurrence of `from` that begins a URL (followed by `/`, `?` or the URL's
/// end) with `to`. `None` when nothing changed.
pub(crate) fn rewrite_urls(text: &str, from: &str, to: &str) -> Option<String> {
    if from.is_empty() || !text.contains(from) {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    let mut changed = false;
    while let Some(pos) = rest.find(from) {
        let after = &rest[pos + from.len()..];
        let at_boundary = after.is_empty() || after.starts_with(['/', '?', '>', '#']);
        let at_url_start = pos == 0 || rest[..pos].ends_with(['<', ' ']);
        out.push_str(&rest[..pos]);
        if at_boundary && at_url_start {
            out.push_str(to);
            changed = true;
        } else {
            out.push_str(from);
        }
        rest = after;
    }
    out.push_str(rest);
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_links_point_back_at_the_gateway() {
        let link = "<https://api.github.com/repositories/1/issues?page=2>; rel=\"next\", <https://api.github.com/repositories/1/issues?page=5>; rel=\"last\"";
        let out = rewrite_urls(link, "https://api.github.com", "http://gw:8080").unwrap();
        assert_eq!(
            out,
            "<http://gw:8080/repositories/1/issues?page=2>; rel=\"next\", <http://gw:8080/repositories/1/issues?page=5>; rel=\"last\""
        );
    }

    #[test]
    fn enterprise_prefixes_and_lookalike_hosts() {
        let from = "https://ghe.example.com/api/v3";
        let out = rewrite_urls(
            "<https://ghe.example.com/api/v3/user/repos?page=2>; rel=\"next\"",
            from,
            "https://gw",
        )
        .unwrap();
        assert_eq!(out, "<https://gw/user/repos?page=2>; rel=\"next\"");
        assert!(
            rewrite_urls("https://api.github.com.evil.com/x", "https://api.github.com", "http://gw")
                .is_none()
        );
        assert!(rewrite_urls("https://ghe.example.com/api/v31/x", from, "http://gw").is_none());
    }

    #[test]
    fn rewrites_header_values_in_place() {
        let mut h = HeaderMap::new();
        h.insert(LOCATION, HeaderValue::from_static("https://api.github.com/repositories/9"));
        rewrite_headers(&mut h, "https://api.github.com", "http://127.0.0.1:1");
        assert_eq!(h[LOCATION], "http://127.0.0.1:1/repositories/9");
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("internal:8080"));
        h.insert("forwarded", HeaderValue::from_static("proto=https;host=gh.example.com, for=10.0.0.1"));
        let uri: Uri = "/x".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let from_proxy = public_base(None, &h, &uri, "10.1.2.3".parse().unwrap(), &trusted);
        assert_eq!(from_proxy.as_deref(), Some("https://gh.example.com"));
        let from_stranger = public_base(None, &h, &uri, "192.0.2.1".parse().unwrap(), &trusted);
        assert_eq!(from_stranger.as_deref(), Some("http://internal:8080"));
        let configured = public_base(Some("https://fixed"), &h, &uri, "10.1.2.3".parse().unwrap(), &trusted);
        assert_eq!(configured.as_deref(), Some("https://fixed"));
    }

    #[test]
    fn a_hostile_host_header_is_not_spliced_into_urls() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("evil.com/path?"));
        let uri: Uri = "/x".parse().unwrap();
        assert!(public_base(None, &h, &uri, "127.0.0.1".parse().unwrap(), &[]).is_none());
    }
}
