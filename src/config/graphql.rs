//! `[graphql]`: how `POST /graphql` is handled. GraphQL answers carry no validator, so
//! nothing is cached unless a rule says how stale an answer may be served.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::formats::{duration, opt_duration, size};

/// `[graphql]`: the GraphQL track.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphqlSettings {
    /// Off passes `POST /graphql` straight through, as any other write (`BYPASS`).
    pub enabled: bool,
    /// Request bodies larger than this are refused locally (413), before a point is spent.
    #[serde(with = "size")]
    pub max_body_bytes: u64,
    /// Queries whose answers may be served from cache, per credential partition, for a
    /// while; the first matching rule wins. None by default: nothing is cached.
    pub rules: Vec<GraphqlRule>,
}

impl Default for GraphqlSettings {
    fn default() -> Self {
        Self { enabled: true, max_body_bytes: 256 * 1024, rules: Vec::new() }
    }
}

/// `[[graphql.rules]]`: queries matched by operation name or by their top-level fields, and
/// how long their answers are served without asking GitHub.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlRule {
    /// The operation's name (`operationName`, or the name in the document), e.g.
    /// `PullRequestList` as `gh pr list` sends it.
    #[serde(default)]
    pub operation: Option<String>,
    /// Top-level fields: the rule matches a query whose every top-level field is listed
    /// (`["repository"]` matches `{ repository(...) {...} }` but not one that also asks
    /// for `viewer`).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// How long an answer is served without asking GitHub.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// After that, how long it is still served when GitHub fails (and when the budget is
    /// down to the reserve). Default: `cache.stale_if_error`.
    #[serde(default, with = "opt_duration")]
    pub stale_if_error: Option<Duration>,
}
