//! Path patterns as operators write them: `/repos/{owner}/{repo}/statuses/{sha}`.
//!
//! `{name}` matches one segment and captures it, `*` matches one segment, and a final `**`
//! matches whatever is left (including nothing). Matching is by whole segments, never by
//! substring, so `/repos/{owner}` cannot match `/repos-old/x`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parsed path pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    segments: Vec<Segment>,
    rest: bool,
}

#[derive(Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture(String),
    Any,
}

impl PathPattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(source: &str) -> Result<Self, String> {
        let Some(body) = source.strip_prefix('/') else {
            return Err(format!("path pattern must start with '/', got {source:?}"));
        };
        let parts: Vec<&str> = if body.is_empty() { Vec::new() } else { body.split('/').collect() };
        let mut segments = Vec::new();
        let mut rest = false;
        for (i, part) in parts.iter().enumerate() {
            if rest {
                return Err(format!("'**' may only end a path pattern, in {source:?}"));
            }
            match *part {
                "" => return Err(format!("empty segment in path pattern {source:?}")),
                "**" => rest = true,
                "*" => segments.push(Segment::Any),
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                    let name = &p[1..p.len() - 1];
                    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!("bad parameter name {name:?} in {source:?}"));
                    }
                    segments.push(Segment::Capture(name.to_string()));
                }
                p if p.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "segment {} of {source:?} mixes text with a wildcard; use a whole segment",
                        i + 1
                    ));
                }
                p => segments.push(Segment::Literal(p.to_string())),
            }
        }
        Ok(Self { source: source.to_string(), segments, rest })
    }

    /// Matches `path` (no query) and returns the captured parameters, in pattern order.
    pub(crate) fn matches<'p>(&self, path: &'p str) -> Option<Vec<(&str, &'p str)>> {
        let body = path.strip_prefix('/')?;
        let body = body.strip_suffix('/').unwrap_or(body);
        // An empty path has no segments (not one empty segment).
        let mut parts = body.split('/').filter(|_| !body.is_empty());
        let mut captures = Vec::new();
        for segment in &self.segments {
            let part = parts.next()?;
            if part.is_empty() {
                return None;
            }
            match segment {
                Segment::Literal(lit) if lit.eq_ignore_ascii_case(part) => {}
                Segment::Literal(_) => return None,
                Segment::Capture(name) => captures.push((name.as_str(), part)),
                Segment::Any => {}
            }
        }
        if self.rest || parts.next().is_none() { Some(captures) } else { None }
    }

    /// The pattern as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl Serialize for PathPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for PathPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PathPattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_named_segments() {
        let p = PathPattern::parse("/repos/{owner}/{repo}/statuses/{sha}").unwrap();
        let caps = p.matches("/repos/octo/hello/statuses/abc123").unwrap();
        assert_eq!(caps, vec![("owner", "octo"), ("repo", "hello"), ("sha", "abc123")]);
        assert!(p.matches("/repos/octo/hello/statuses").is_none());
        assert!(p.matches("/repos/octo/hello/statuses/abc/extra").is_none());
        assert!(p.matches("/repos-old/octo/hello/statuses/abc").is_none());
    }

    #[test]
    fn double_star_matches_the_rest() {
        let p = PathPattern::parse("/repos/*/*/contents/**").unwrap();
        assert!(p.matches("/repos/a/b/contents").is_some());
        assert!(p.matches("/repos/a/b/contents/src/lib.rs").is_some());
        assert!(p.matches("/repos/a/b/issues").is_none());
        assert!(PathPattern::parse("/**").unwrap().matches("/anything/at/all").is_some());
    }

    #[test]
    fn empty_segments_never_match_a_capture() {
        let p = PathPattern::parse("/users/{user}").unwrap();
        assert!(p.matches("/users//").is_none());
        assert!(p.matches("/users/").is_none());
    }

    #[test]
    fn bad_patterns_are_rejected_with_a_reason() {
        assert!(PathPattern::parse("repos").unwrap_err().contains("start with '/'"));
        assert!(PathPattern::parse("/a/**/b").unwrap_err().contains("'**'"));
        assert!(PathPattern::parse("/a//b").unwrap_err().contains("empty segment"));
        assert!(PathPattern::parse("/a/x*").unwrap_err().contains("wildcard"));
        assert!(PathPattern::parse("/a/{b-c}").unwrap_err().contains("parameter name"));
    }
}
