//! Keeping clients behind the gateway: absolute upstream URLs in answer headers (`Link` for
//! pagination, `Location` for redirects) and in JSON bodies (`url`, `issues_url`, ... — PyGithub,
//! Octokit's `request(url)`, go-github and `gh api` follow them) are rewritten to the gateway's
//! public base URL. Without this, a client following one would talk to GitHub directly with
//! its credential, or (PyGithub) refuse the URL.
//!
//! In bodies, only JSON strings that *start* with the upstream base are rewritten (URLs in the
//! middle of text, such as an issue's description, stay as written), and no JSON is parsed:
//! [`body_url_offsets`] finds where such strings start once per stored entry, and
//! [`splice_body`] builds the answer from those offsets. Stored bodies stay GitHub's own bytes,
//! which GitHub's ETags are computed over.

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

/// Where JSON strings that start with `upstream_base` start in `body`: offsets of the base
/// right after an unescaped `"`, followed by `/`, `?`, `#`, `{` or the string's end.
pub(crate) fn body_url_offsets(body: &[u8], upstream_base: &str) -> Vec<u32> {
    let base = upstream_base.as_bytes();
    if base.is_empty() || u32::try_from(body.len()).is_err() {
        return Vec::new();
    }
    let mut offsets = Vec::new();
    for at in memchr::memmem::find_iter(body, base) {
        let after = body.get(at + base.len()).copied();
        let at_boundary = matches!(after, Some(b'/' | b'?' | b'#' | b'{' | b'"'));
        let opens_string = at > 0 && body[at - 1] == b'"' && {
            // An odd run of backslashes before the quote escapes it: text inside a string.
            let backslashes = body[..at - 1].iter().rev().take_while(|b| **b == b'\\').count();
            backslashes % 2 == 0
        };
        if at_boundary && opens_string {
            offsets.push(at as u32);
        }
    }
    offsets
}

/// `body` with the upstream base (`base_len` bytes) at each of `offsets` replaced by
/// `public_base`.
pub(crate) fn splice_body(body: &[u8], offsets: &[u32], base_len: usize, public_base: &str) -> bytes::Bytes {
    let grown = offsets.len() * public_base.len();
    let mut out = Vec::with_capacity((body.len() + grown).saturating_sub(offsets.len() * base_len));
    let mut from = 0;
    for &at in offsets {
        let at = at as usize;
        out.extend_from_slice(&body[from..at]);
        out.extend_from_slice(public_base.as_bytes());
        from = at + base_len;
    }
    out.extend_from_slice(&body[from..]);
    bytes::Bytes::from(out)
}

/// The length of `body` once spliced (for `Content-Length` of HEAD answers).
pub(crate) fn spliced_len(body_len: usize, offsets: usize, base_len: usize, public_base: &str) -> usize {
    body_len + offsets * public_base.len() - offsets * base_len
}

/// Whether an answer's body is JSON (the only bodies whose URLs are rewritten).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|t| t.trim().as_bytes())
        .is_some_and(|t| t.len() >= 4 && t[t.len() - 4..].eq_ignore_ascii_case(b"json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_urls_that_start_a_string_point_back_at_the_gateway() {
        let base = "https://api.github.com";
        let body = br#"{"url":"https://api.github.com/repos/o/r","issues_url":"https://api.github.com/repos/o/r/issues{/number}","html_url":"https://github.com/o/r","body":"see https://api.github.com/x","quoted":"say \"https://api.github.com/y","evil":"https://api.github.com.evil.com/z","root":"https://api.github.com"}"#;
        let offsets = body_url_offsets(body, base);
        assert_eq!(offsets.len(), 3, "url, issues_url and root; not text, escaped quotes or lookalikes");
        let out = splice_body(body, &offsets, base.len(), "http://gw:8080");
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains(r#""url":"http://gw:8080/repos/o/r""#), "{text}");
        assert!(text.contains(r#""issues_url":"http://gw:8080/repos/o/r/issues{/number}""#));
        assert!(text.contains(r#""root":"http://gw:8080""#));
        assert!(text.contains(r#""html_url":"https://github.com/o/r""#));
        assert!(
            text.contains("see https://api.github.com/x") && text.contains(r#"\"https://api.github.com/y"#)
        );
        assert!(text.contains("https://api.github.com.evil.com/z"));
        assert_eq!(out.len(), spliced_len(body.len(), 3, base.len(), "http://gw:8080"));
        assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok(), "still JSON");
    }

    #[test]
    fn json_media_types_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        assert!(is_json(&h));
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/vnd.github+json"));
        assert!(is_json(&h));
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        assert!(!is_json(&h));
    }

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
