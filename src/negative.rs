//! Futile-request protection: answers that are known in advance are remembered and replayed
//! (`x-ghgate-cache: NEGATIVE`) without spending a rate-limit unit again.
//!
//! Rules are data: two built in — GitHub's 1000-statuses-per-SHA-and-context limit
//! (`statuses_limit`) and GET answers 404/410 (`not_found`) — and any number from the settings.
//! Entries live in the store (Redis when replicas share one), so every replica agrees and an
//! operator can clear them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use metrics::Counter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::config::{ConfigError, NegativeAnswer, NegativeRuleSettings, NegativeSettings};
use crate::path_pattern::PathPattern;
use crate::store::Store;
use crate::telemetry::Metrics;

/// The built-in rule for GitHub's statuses limit.
pub(crate) const STATUSES_LIMIT: &str = "statuses_limit";
/// The built-in rule for GET answers 404 and 410.
pub(crate) const NOT_FOUND: &str = "not_found";
/// The built-in rule for "this GitHub App is not installed on this owner or repository".
pub(crate) const APP_NOT_INSTALLED: &str = "app_not_installed";

/// The settings problems only this module can see: operator rules that do not compile. Called
/// by [`crate::server::check_settings`] (so by `check-config` and at start-up).
pub(crate) fn check_settings(settings: &NegativeSettings) -> Vec<ConfigError> {
    settings
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| {
            Rule::from_settings(rule)
                .err()
                .map(|message| ConfigError { key: format!("negative.rules[{i}]"), message })
        })
        .collect()
}

/// The words GitHub uses when a SHA and context are full (matched case-insensitively).
const STATUSES_LIMIT_PHRASE: &str = "reached the maximum number of statuses";

/// What identifies one remembered answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    /// A path parameter, e.g. `sha`.
    Param(String),
    /// A JSON body field, with the value GitHub assumes when it is missing.
    Body { field: String, default: Option<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    StatusesLimit,
    NotFound,
    Custom,
}

/// One rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    /// Its name (metrics, clearing).
    pub name: String,
    kind: Kind,
    method: Method,
    path: PathPattern,
    statuses: Vec<u16>,
    phrase: Option<String>,
    key: Vec<KeyPart>,
    ttl: Duration,
    per_credential: bool,
}

impl Rule {
    /// Builds and checks an operator rule; the error says what is wrong.
    pub(crate) fn from_settings(s: &NegativeRuleSettings) -> Result<Rule, String> {
        if s.name.is_empty()
            || !s.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(format!("name {:?}: use lower-case letters, digits, '-' and '_'", s.name));
        }
        let method = Method::from_bytes(s.method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("rule {:?}: method {:?} is not an HTTP method", s.name, s.method))?;
        if s.status.is_empty() || s.status.iter().any(|c| !(100..=599).contains(c)) {
            return Err(format!("rule {:?}: status must list HTTP statuses (100-599)", s.name));
        }
        if s.status.iter().any(|c| matches!(c, 401 | 403) || *c >= 500) {
            return Err(format!(
                "rule {:?}: 401, 403 and 5xx answers depend on credentials and time, never remember them",
                s.name
            ));
        }
        if s.ttl.is_zero() {
            return Err(format!("rule {:?}: ttl must be greater than zero", s.name));
        }
        let mut key = Vec::new();
        for part in &s.key {
            if let Some(field) = part.strip_prefix("body.") {
                let (field, default) = match field.split_once('=') {
                    Some((f, d)) => (f.to_string(), Some(d.to_string())),
                    None => (field.to_string(), None),
                };
                if field.is_empty() {
                    return Err(format!("rule {:?}: key {part:?} names no body field", s.name));
                }
                key.push(KeyPart::Body { field, default });
            } else if s
                .path
                .matches(&example_path(&s.path))
                .is_some_and(|caps| caps.iter().any(|(n, _)| *n == part))
            {
                key.push(KeyPart::Param(part.clone()));
            } else {
                return Err(format!(
                    "rule {:?}: key {part:?} is neither a parameter of {} nor body.<field>",
                    s.name,
                    s.path.as_str()
                ));
            }
        }
        Ok(Rule {
            name: s.name.clone(),
            kind: Kind::Custom,
            method,
            path: s.path.clone(),
            statuses: s.status.clone(),
            phrase: s.phrase.as_ref().map(|p| p.to_ascii_lowercase()),
            key,
            ttl: s.ttl,
            per_credential: s.per_credential,
        })
    }

    fn statuses_limit(ttl: Duration) -> Rule {
        Rule {
            name: STATUSES_LIMIT.into(),
            kind: Kind::StatusesLimit,
            method: Method::POST,
            path: PathPattern::parse("/repos/{owner}/{repo}/statuses/{sha}").expect("static pattern"),
            statuses: vec![422],
            phrase: None,
            key: vec![
                KeyPart::Param("owner".into()),
                KeyPart::Param("repo".into()),
                KeyPart::Param("sha".into()),
                KeyPart::Body { field: "context".into(), default: Some("default".into()) },
            ],
            ttl,
            per_credential: false,
        }
    }

    fn not_found(ttl: Duration) -> Rule {
        Rule {
            name: NOT_FOUND.into(),
            kind: Kind::NotFound,
            method: Method::GET,
            path: PathPattern::parse("/**").expect("static pattern"),
            statuses: vec![404, 410],
            phrase: None,
            key: Vec::new(),
            ttl,
            per_credential: true,
        }
    }

    /// Whether an answer's JSON body field is part of this rule's key.
    pub fn needs_body(&self) -> bool {
        self.key.iter().any(|k| matches!(k, KeyPart::Body { .. }))
    }
}

/// A path that a pattern matches, to learn its parameter names.
fn example_path(pattern: &PathPattern) -> String {
    pattern
        .as_str()
        .split('/')
        .map(|seg| match seg {
            "**" => "x",
            s if s.starts_with('{') || s == "*" => "x",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A request a rule applies to, with its entry's store key.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Index of the rule.
    rule: usize,
    /// `n:<rule>:<owner>:<repo>:<digest>`.
    pub key: String,
    /// The partition of the credential asking, and the repository it asks about: a shared
    /// entry is replayed only to credentials that have shown access to that repository.
    partition: String,
    repository: Option<String>,
}

/// A remembered answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Remembered {
    /// The status GitHub gave.
    pub status: u16,
    /// Its `Content-Type`.
    pub content_type: Option<String>,
    /// Its body.
    pub body: Vec<u8>,
}

struct RuleMetrics {
    stored: Counter,
    hits: Counter,
    canary: Counter,
    withheld: Counter,
}

/// How long a credential's shown access to a repository counts (the statuses limit's own
/// memory is 24 hours).
const ACCESS_PROOF_TTL: Duration = Duration::from_secs(24 * 3600);

/// The store key of "this credential has shown access to this repository".
fn access_key(partition: &str, repository: &str) -> String {
    format!("w:{partition}:{repository}")
}

/// The negative cache.
pub struct NegativeCache {
    enabled: bool,
    /// How long "app not installed" is remembered (zero: not at all).
    not_installed_ttl: Duration,
    rules: Vec<Rule>,
    statuses_answer: NegativeAnswer,
    store: Arc<dyn Store>,
    metrics: HashMap<String, RuleMetrics>,
    /// For the status page's log of recent hits.
    all_metrics: Arc<Metrics>,
}

/// What [`NegativeCache::consider`] decided about an upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Remembered.
    Stored,
    /// Not a futile answer.
    Ignored,
    /// Looked like the statuses limit but without GitHub's known words: not remembered,
    /// and the canary raised.
    Canary,
}

impl NegativeCache {
    /// The built-in rules (unless switched off) and the operator's, over `store`.
    pub fn new(
        settings: &NegativeSettings,
        not_installed_ttl: Duration,
        store: Arc<dyn Store>,
        metrics: &Arc<Metrics>,
    ) -> Result<NegativeCache, String> {
        let mut rules = Vec::new();
        if settings.statuses_limit.enabled {
            rules.push(Rule::statuses_limit(settings.statuses_limit.ttl));
        }
        if settings.not_found.enabled && !settings.not_found.ttl.is_zero() {
            rules.push(Rule::not_found(settings.not_found.ttl));
        }
        for rule in settings.rules.iter().filter(|r| r.enabled) {
            rules.push(Rule::from_settings(rule)?);
        }
        let mut rule_metrics = HashMap::new();
        let builtin = [STATUSES_LIMIT, NOT_FOUND, APP_NOT_INSTALLED];
        for name in builtin.iter().copied().chain(settings.rules.iter().map(|r| r.name.as_str())) {
            rule_metrics.insert(
                name.to_string(),
                RuleMetrics {
                    stored: metrics.labelled_counter("ghgate_negative_stored_total", "rule", name),
                    hits: metrics.labelled_counter("ghgate_negative_hits_total", "rule", name),
                    canary: metrics.labelled_counter("ghgate_negative_canary_total", "rule", name),
                    withheld: metrics.labelled_counter("ghgate_negative_withheld_total", "rule", name),
                },
            );
        }
        Ok(NegativeCache {
            enabled: settings.enabled,
            not_installed_ttl: if settings.enabled { not_installed_ttl } else { Duration::ZERO },
            rules,
            statuses_answer: settings.statuses_limit.answer,
            store,
            metrics: rule_metrics,
            all_metrics: Arc::clone(metrics),
        })
    }

    /// The first rule that applies to a request, if any (`not_found` only for cacheable GETs,
    /// whose key the caller gives as `cache_key`).
    pub fn rule_for(&self, method: &Method, path: &str, cacheable_get: bool) -> Option<usize> {
        if !self.enabled {
            return None;
        }
        self.rules.iter().position(|r| {
            r.method == *method
                && r.path.matches(path).is_some()
                && (r.kind != Kind::NotFound || cacheable_get)
        })
    }

    /// Whether the rule needs the request body for its key.
    pub fn needs_body(&self, rule: usize) -> bool {
        self.rules[rule].needs_body()
    }

    /// The candidate entry of a request under `rule`. `None` when a key field is missing
    /// (then nothing is remembered for it).
    pub fn candidate(
        &self,
        rule: usize,
        path: &str,
        body: Option<&[u8]>,
        partition: &str,
        cache_key: &str,
    ) -> Option<Candidate> {
        let r = &self.rules[rule];
        let params = r.path.matches(path)?;
        let param = |name: &str| params.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_ascii_lowercase());
        let (owner, repo) = owner_and_repo(path);
        let mut digest = Sha256::new();
        digest.update(r.name.as_bytes());
        if r.per_credential {
            digest.update(b"\npartition=");
            digest.update(partition.as_bytes());
        }
        if r.kind == Kind::NotFound {
            digest.update(b"\nkey=");
            digest.update(cache_key.as_bytes());
        }
        let json = body.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
        for part in &r.key {
            let value = match part {
                KeyPart::Param(name) => param(name)?,
                KeyPart::Body { field, default } => {
                    match json.as_ref().and_then(|j| j.get(field)).and_then(|v| v.as_str()) {
                        Some(v) => v.to_string(),
                        None => default.clone()?,
                    }
                }
            };
            digest.update(b"\n");
            digest.update(value.as_bytes());
        }
        let digest = hex::encode(&digest.finalize()[..12]);
        let repository = (owner != "-" && repo != "-").then(|| format!("{owner}/{repo}"));
        Some(Candidate {
            rule,
            key: format!("n:{}:{owner}:{repo}:{digest}", r.name),
            partition: partition.to_string(),
            repository,
        })
    }

    /// Records that the credential of `partition` was answered 2xx by GitHub on a request
    /// about the repository of `path` (nothing for other paths or anonymous requests): it has
    /// shown access, so shared negative entries of that repository may be replayed to it.
    pub(crate) async fn note_access(&self, partition: &str, path: &str) {
        let (owner, repo) = owner_and_repo(path);
        if owner != "-" && repo != "-" {
            self.remember_access(partition, &format!("{owner}/{repo}")).await;
        }
    }

    async fn remember_access(&self, partition: &str, repository: &str) {
        if partition == crate::identity::ANONYMOUS {
            return;
        }
        let _ = self.store.put_expiring(&access_key(partition, repository), b"1", ACCESS_PROOF_TTL).await;
    }

    /// Whether a remembered answer may be given to the candidate's credential: always for a
    /// per-credential rule (it was that credential's own answer); for a shared rule, only when
    /// the credential has shown access to the repository — otherwise the entry would tell
    /// anyone that a private repository, sha and context exist.
    async fn may_replay(&self, candidate: &Candidate) -> bool {
        if self.rules[candidate.rule].per_credential {
            return true;
        }
        let Some(repository) = &candidate.repository else { return true };
        if candidate.partition == crate::identity::ANONYMOUS {
            return false;
        }
        matches!(self.store.get_live(&access_key(&candidate.partition, repository)).await, Ok(Some(_)))
    }

    /// The remembered answer for a candidate, counting a hit.
    pub async fn lookup(&self, candidate: &Candidate) -> Option<Remembered> {
        let live = self.store.get_live(&candidate.key).await.ok()??;
        let remembered: Remembered = postcard::from_bytes(&live.payload).ok()?;
        if !self.may_replay(candidate).await {
            if let Some(m) = self.metrics.get(&self.rules[candidate.rule].name) {
                m.withheld.increment(1);
            }
            return None;
        }
        if let Some(m) = self.metrics.get(&self.rules[candidate.rule].name) {
            m.hits.increment(1);
        }
        self.note_hit(&candidate.key);
        Some(remembered)
    }

    /// Looks at an upstream answer to a candidate request and remembers it when its rule says so.
    pub async fn consider(
        &self,
        candidate: &Candidate,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Verdict {
        let rule = &self.rules[candidate.rule];
        let metrics = self.metrics.get(&rule.name);
        if rule.kind == Kind::StatusesLimit && status == StatusCode::UNPROCESSABLE_ENTITY {
            match statuses_limit(body) {
                Limit::Reached => {}
                Limit::ValidationFailedOtherwise => {
                    if let Some(m) = metrics {
                        m.canary.increment(1);
                    }
                    warn!(
                        rule = %rule.name,
                        "a 422 \"Validation Failed\" on a statuses post without the known limit phrase: not remembered (did GitHub reword it?)"
                    );
                    return Verdict::Canary;
                }
                Limit::Other => return Verdict::Ignored,
            }
        } else if !rule.statuses.contains(&status.as_u16()) {
            return Verdict::Ignored;
        }
        if let Some(phrase) = &rule.phrase {
            if !String::from_utf8_lossy(body).to_ascii_lowercase().contains(phrase.as_str()) {
                return Verdict::Ignored;
            }
        }
        let remembered = Remembered {
            status: status.as_u16(),
            content_type: headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: body.to_vec(),
        };
        let payload = postcard::to_stdvec(&remembered).expect("encoding to memory cannot fail");
        // GitHub gave this credential a shared answer itself: it may be given it again.
        if let Some(repository) = candidate.repository.as_ref().filter(|_| !rule.per_credential) {
            self.remember_access(&candidate.partition, repository).await;
        }
        if self.store.put_expiring(&candidate.key, &payload, rule.ttl).await.is_ok() {
            if let Some(m) = metrics {
                m.stored.increment(1);
            }
            Verdict::Stored
        } else {
            Verdict::Ignored
        }
    }

    /// The answer to give for a remembered entry of `candidate`.
    pub fn answer(&self, candidate: &Candidate, remembered: &Remembered) -> (StatusCode, HeaderMap, Bytes) {
        let rule = &self.rules[candidate.rule];
        let mut headers = HeaderMap::new();
        if rule.kind == Kind::StatusesLimit && self.statuses_answer == NegativeAnswer::Success {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            let body = serde_json::json!({
                "message": "ghgate: not posted: this SHA and context have reached GitHub's maximum number of statuses",
                "documentation_url": crate::github::DOCUMENTATION_URL,
            });
            return (StatusCode::CREATED, headers, Bytes::from(body.to_string()));
        }
        if let Some(ct) = remembered.content_type.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
            headers.insert(http::header::CONTENT_TYPE, ct);
        }
        let status = StatusCode::from_u16(remembered.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
        (status, headers, Bytes::from(remembered.body.clone()))
    }

    /// The entry for "app `app` is not installed on `asked`" (`repo:o/r` or `owner:o`);
    /// `None` when remembering it is switched off.
    pub(crate) fn not_installed_key(&self, app: &str, asked: &str) -> Option<String> {
        if self.not_installed_ttl.is_zero() {
            return None;
        }
        let (owner, repo) = match asked.strip_prefix("repo:") {
            Some(path) => {
                let (o, r) = path.split_once('/').unwrap_or((path, "-"));
                (o.to_string(), r.to_string())
            }
            None => (asked.trim_start_matches("owner:").to_string(), "-".to_string()),
        };
        let digest = hex::encode(&Sha256::digest(format!("{app}\n{asked}").as_bytes())[..12]);
        Some(format!("n:{APP_NOT_INSTALLED}:{owner}:{repo}:{digest}"))
    }

    /// Whether "not installed" is remembered under `key` (counting a hit).
    pub(crate) async fn is_not_installed(&self, key: &str, count_hit: bool) -> bool {
        let live = matches!(self.store.get_live(key).await, Ok(Some(_)));
        if live && count_hit {
            if let Some(m) = self.metrics.get(APP_NOT_INSTALLED) {
                m.hits.increment(1);
            }
            self.note_hit(key);
        }
        live
    }

    /// Logs a hit for the status page as `rule owner/repo` (read back from the entry's key,
    /// `n:<rule>:<owner>:<repo>:<digest>`; the digest is left out).
    fn note_hit(&self, key: &str) {
        let mut parts = key.splitn(5, ':').skip(1);
        let (Some(rule), Some(owner), Some(repo)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let what = if repo == "-" { format!("{rule} {owner}") } else { format!("{rule} {owner}/{repo}") };
        self.all_metrics.activity.event("negative", what);
    }

    /// Remembers "not installed" under `key` for the configured time.
    pub(crate) async fn remember_not_installed(&self, key: &str) {
        let ttl = self.not_installed_ttl;
        if ttl.is_zero() {
            return;
        }
        if self.store.put_expiring(key, b"not installed", ttl).await.is_ok() {
            if let Some(m) = self.metrics.get(APP_NOT_INSTALLED) {
                m.stored.increment(1);
            }
        }
    }

    /// Removes remembered answers by rule, owner and/or repository (all when none is given);
    /// returns how many were removed.
    pub(crate) async fn clear(
        &self,
        rule: Option<&str>,
        owner: Option<&str>,
        repo: Option<&str>,
    ) -> Result<usize, String> {
        let owner = owner.map(str::to_ascii_lowercase);
        let repo = repo.map(str::to_ascii_lowercase);
        let names: Vec<&str> = match rule {
            Some(r) => vec![r],
            None => self.metrics.keys().map(String::as_str).collect(),
        };
        let mut removed = 0;
        for name in names {
            let prefix = match (&owner, &repo) {
                (Some(o), Some(r)) => format!("n:{name}:{o}:{r}:"),
                (Some(o), None) => format!("n:{name}:{o}:"),
                (None, _) => format!("n:{name}:"),
            };
            let keys = self.store.keys_with_prefix(&prefix).await.map_err(|e| e.to_string())?;
            for key in keys {
                if repo.is_some() && owner.is_none() && key.split(':').nth(3) != repo.as_deref() {
                    continue;
                }
                self.store.remove(&key).await.map_err(|e| e.to_string())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// `owner` and `repo` of a path, lower-cased, `-` where the path names none.
fn owner_and_repo(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("repos"), Some(o), Some(r)) if !o.is_empty() && !r.is_empty() => {
            (o.to_ascii_lowercase(), r.to_ascii_lowercase())
        }
        (Some("orgs" | "users"), Some(o), _) if !o.is_empty() => (o.to_ascii_lowercase(), "-".into()),
        _ => ("-".into(), "-".into()),
    }
}

enum Limit {
    Reached,
    ValidationFailedOtherwise,
    Other,
}

/// Reads a 422 body: GitHub's statuses-limit answer has `errors` as a string today and as a
/// list of objects with `message` in older shapes; both are recognised.
fn statuses_limit(body: &[u8]) -> Limit {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else { return Limit::Other };
    let says = |text: &str| text.to_ascii_lowercase().contains(STATUSES_LIMIT_PHRASE);
    let reached = match json.get("errors") {
        Some(serde_json::Value::String(s)) => says(s),
        Some(serde_json::Value::Array(items)) => items.iter().any(|item| match item {
            serde_json::Value::String(s) => says(s),
            other => other.get("message").and_then(|m| m.as_str()).is_some_and(says),
        }),
        _ => false,
    };
    if reached {
        Limit::Reached
    } else if json
        .get("message")
        .and_then(|m| m.as_str())
        .is_some_and(|m| m.eq_ignore_ascii_case("Validation Failed"))
    {
        Limit::ValidationFailedOtherwise
    } else {
        Limit::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_of_the_statuses_limit_are_recognised_and_rewording_is_not() {
        let today = br#"{"message":"Validation Failed","errors":"Validation failed: This SHA and context has reached the maximum number of statuses.","documentation_url":"https://docs.github.com/rest/commits/statuses#create-a-commit-status","status":"422"}"#;
        assert!(matches!(statuses_limit(today), Limit::Reached));
        let older = br#"{"message":"Validation Failed","errors":[{"resource":"Status","code":"custom","message":"This SHA and context has reached the maximum number of statuses."}]}"#;
        assert!(matches!(statuses_limit(older), Limit::Reached));
        let reworded = br#"{"message":"Validation Failed","errors":"Validation failed: too many statuses for this commit."}"#;
        assert!(matches!(statuses_limit(reworded), Limit::ValidationFailedOtherwise));
        assert!(matches!(statuses_limit(b"not json"), Limit::Other));
    }

    #[test]
    fn operator_rules_are_checked() {
        let rule = |key: &[&str], status: &[u16]| NegativeRuleSettings {
            name: "hook-tests".into(),
            enabled: true,
            method: "POST".into(),
            path: PathPattern::parse("/repos/{owner}/{repo}/hooks/{id}/tests").unwrap(),
            status: status.to_vec(),
            phrase: None,
            key: key.iter().map(|k| k.to_string()).collect(),
            ttl: Duration::from_secs(60),
            per_credential: false,
        };
        assert!(Rule::from_settings(&rule(&["owner", "repo", "id", "body.x=y"], &[404])).is_ok());
        assert!(Rule::from_settings(&rule(&["sha"], &[404])).unwrap_err().contains("sha"));
        assert!(Rule::from_settings(&rule(&["owner"], &[403])).unwrap_err().contains("never"));
        assert!(Rule::from_settings(&rule(&["owner"], &[])).is_err());
        let mut bad_name = rule(&["owner"], &[404]);
        bad_name.name = "Bad Name".into();
        assert!(Rule::from_settings(&bad_name).is_err());
    }

    #[test]
    fn owners_and_repositories_come_from_the_path() {
        assert_eq!(owner_and_repo("/repos/Octo/Hello/statuses/abc"), ("octo".into(), "hello".into()));
        assert_eq!(owner_and_repo("/orgs/Acme/members"), ("acme".into(), "-".into()));
        assert_eq!(owner_and_repo("/search/code"), ("-".into(), "-".into()));
    }
}
