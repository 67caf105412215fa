//! GraphQL requests as the gateway needs to see them: which operation a `POST /graphql` body
//! runs (query, mutation, subscription), what makes two requests the same (the normalised
//! document, the operation name, the variables), which repositories and owners an answer can
//! be about (for invalidation), and which `[[graphql.rules]]` rule lets it be cached.
//!
//! Bodies come from clients, so parsing is bounded: the body size is capped before this
//! module sees it, and the parser (`apollo-parser`, made for hostile input) stops at a
//! recursion and a token limit instead of overflowing the stack. Pure functions, no I/O.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use apollo_parser::cst::{self, CstNode};
use apollo_parser::{Parser, SyntaxKind};
use http::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::GraphqlRule;

/// GitHub's documentation for GraphQL, named in local error answers.
pub const DOCUMENTATION_URL: &str = "https://docs.github.com/graphql";

/// Nesting deeper than this is refused (GitHub's own queries nest about ten levels).
const RECURSION_LIMIT: usize = 128;

/// Documents with more tokens than this are refused.
const TOKEN_LIMIT: usize = 100_000;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reads: coalesced, and cached where a rule says so.
    Query,
    /// Writes: never coalesced or cached; invalidate what they may change.
    Mutation,
    /// Not served by GitHub; passed on as it is.
    Subscription,
}

/// What an answer may be about: repositories and owners named by the query's top-level
/// fields, or `Unknown` when a field may reach anything (`viewer`, `search`, `node`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mentions {
    /// Only these (lower-case, as GitHub names are case-insensitive).
    Known(BTreeSet<Scope>),
    /// The gateway cannot tell.
    Unknown,
}

/// A repository or an owner a GraphQL operation names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `repository(owner: "o", name: "r")`.
    Repo {
        /// The owner's login.
        owner: String,
        /// The repository's name.
        name: String,
    },
    /// `organization(login: "o")`, `user(login: ...)`, `repositoryOwner(login: ...)`.
    Owner(String),
}

/// One `POST /graphql` body, understood.
#[derive(Debug, Clone)]
pub struct Operation {
    /// Query, mutation or subscription, from the parsed document.
    pub kind: Kind,
    /// The operation's name: `operationName`, or the name the document gives its only
    /// operation.
    pub name: Option<String>,
    /// The names (not aliases) of the fields the operation selects at the top, sorted.
    pub top_fields: Vec<String>,
    /// The repositories and owners its answer can be about.
    pub mentions: Mentions,
    /// SHA-256 over the normalised document, the operation name and the variables with
    /// sorted keys, hex: two bodies with one fingerprint ask GitHub the same thing.
    pub fingerprint: String,
}

/// A body refused locally, with GitHub's status and message for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400 for a body that is not a GraphQL request.
    pub status: StatusCode,
    /// GitHub's words for it, where GitHub has some.
    pub message: String,
}

impl Refusal {
    fn bad(message: impl Into<String>) -> Refusal {
        Refusal { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
}

/// Reads a `POST /graphql` body: JSON with a `query` string, optional `variables` (an object)
/// and `operationName`; the document parsed; the operation to run picked.
pub fn read(body: &[u8]) -> Result<Operation, Refusal> {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return Err(Refusal::bad("Problems parsing JSON"));
    };
    let Some(Value::String(query)) = request.get("query") else {
        return Err(Refusal::bad("A query attribute must be specified and must be a string."));
    };
    let no_variables = serde_json::Map::new();
    let variables = match request.get("variables") {
        None | Some(Value::Null) => &no_variables,
        Some(Value::Object(variables)) => variables,
        Some(_) => return Err(Refusal::bad("Variables must be a JSON object.")),
    };
    let wanted = match request.get("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if name.is_empty() => None,
        Some(Value::String(name)) => Some(name.as_str()),
        Some(_) => return Err(Refusal::bad("operationName must be a string.")),
    };

    let tree = Parser::new(query).recursion_limit(RECURSION_LIMIT).token_limit(TOKEN_LIMIT).parse();
    if let Some(error) = tree.errors().next() {
        return Err(Refusal::bad(format!("Parse error: {}", error.message())));
    }
    let document = tree.document();
    let mut operations = Vec::new();
    let mut fragments = Vec::new();
    for definition in document.definitions() {
        match definition {
            cst::Definition::OperationDefinition(op) => operations.push(op),
            cst::Definition::FragmentDefinition(fragment) => fragments.push(fragment),
            _ => {}
        }
    }
    let operation = match wanted {
        Some(wanted) => operations
            .iter()
            .find(|op| op.name().is_some_and(|n| n.text() == wanted))
            .ok_or_else(|| Refusal::bad(format!("Unknown operation named \"{wanted}\".")))?,
        None => match operations.as_slice() {
            [only] => only,
            [] => return Err(Refusal::bad("No operations in the query document.")),
            _ => return Err(Refusal::bad("An operation name is required when the document holds several.")),
        },
    };
    let kind = match operation.operation_type() {
        Some(t) if t.mutation_token().is_some() => Kind::Mutation,
        Some(t) if t.subscription_token().is_some() => Kind::Subscription,
        _ => Kind::Query,
    };
    let name = wanted.map(str::to_string).or_else(|| operation.name().map(|n| n.text().to_string()));
    let mut fields = Vec::new();
    if let Some(selections) = operation.selection_set() {
        top_level_fields(&selections, &fragments, &mut HashSet::new(), &mut fields);
    }
    let mentions = mentions_of(&fields, variables);
    let mut top_fields: Vec<String> =
        fields.iter().filter_map(|f| f.name().map(|n| n.text().to_string())).collect();
    top_fields.sort();
    top_fields.dedup();

    let mut hasher = Sha256::new();
    hasher.update(normalised(&document).as_bytes());
    hasher.update([0]);
    hasher.update(name.as_deref().unwrap_or("").as_bytes());
    hasher.update([0]);
    let mut canonical = String::new();
    canonical_json(&Value::Object(variables.clone()), &mut canonical);
    hasher.update(canonical.as_bytes());
    let fingerprint = hex::encode(hasher.finalize());
    Ok(Operation { kind, name, top_fields, mentions, fingerprint })
}

/// Bodies read recently, by SHA-256 of their bytes: clients that poll send the same bytes
/// again and again, and a hit should not parse them each time.
pub(crate) struct Reader {
    read: quick_cache::sync::Cache<[u8; 32], Arc<Operation>>,
}

impl Reader {
    /// Remembers the operations of up to `capacity` distinct bodies.
    pub(crate) fn new(capacity: usize) -> Reader {
        Reader { read: quick_cache::sync::Cache::new(capacity) }
    }

    /// [`read`], remembered by the body's bytes (refusals are not remembered).
    pub(crate) fn read(&self, body: &[u8]) -> Result<Arc<Operation>, Refusal> {
        let digest: [u8; 32] = Sha256::digest(body).into();
        if let Some(operation) = self.read.get(&digest) {
            return Ok(operation);
        }
        let operation = Arc::new(read(body)?);
        self.read.insert(digest, Arc::clone(&operation));
        Ok(operation)
    }
}

/// The document's significant tokens, one space apart: whitespace, commas and comments (all
/// insignificant in GraphQL) do not make two documents different.
fn normalised(document: &cst::Document) -> String {
    let mut out = String::new();
    for token in document.syntax().descendants_with_tokens().filter_map(|e| e.into_token()) {
        if matches!(token.kind(), SyntaxKind::WHITESPACE | SyntaxKind::COMMA | SyntaxKind::COMMENT) {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(token.text());
    }
    out
}

/// The fields selected at the top of an operation, through fragment spreads and inline
/// fragments (each fragment once, so a cycle cannot loop).
fn top_level_fields(
    selections: &cst::SelectionSet,
    fragments: &[cst::FragmentDefinition],
    visited: &mut HashSet<String>,
    out: &mut Vec<cst::Field>,
) {
    for selection in selections.selections() {
        match selection {
            cst::Selection::Field(field) => out.push(field),
            cst::Selection::InlineFragment(inline) => {
                if let Some(set) = inline.selection_set() {
                    top_level_fields(&set, fragments, visited, out);
                }
            }
            cst::Selection::FragmentSpread(spread) => {
                let Some(name) = spread.fragment_name().and_then(|n| n.name()) else { continue };
                let name = name.text().to_string();
                if !visited.insert(name.clone()) {
                    continue;
                }
                let fragment = fragments.iter().find(|f| {
                    f.fragment_name().and_then(|n| n.name()).is_some_and(|n| n.text() == name.as_str())
                });
                if let Some(set) = fragment.and_then(|f| f.selection_set()) {
                    top_level_fields(&set, fragments, visited, out);
                }
            }
        }
    }
}

/// Top-level fields that name nothing the gateway could invalidate by.
const HARMLESS_FIELDS: [&str; 2] = ["rateLimit", "__typename"];

/// The repositories and owners named by top-level fields, with variables resolved.
fn mentions_of(fields: &[cst::Field], variables: &serde_json::Map<String, Value>) -> Mentions {
    let mut scopes = BTreeSet::new();
    for field in fields {
        let Some(name) = field.name() else { return Mentions::Unknown };
        let argument = |wanted: &str| -> Option<String> {
            let arguments = field.arguments()?;
            let value =
                arguments.arguments().find(|a| a.name().is_some_and(|n| n.text() == wanted))?.value()?;
            let text = match value {
                cst::Value::StringValue(s) => String::from(&s),
                cst::Value::Variable(v) => variables.get(v.text().as_str())?.as_str()?.to_string(),
                _ => return None,
            };
            Some(text.to_ascii_lowercase())
        };
        match name.text().as_str() {
            "repository" => match (argument("owner"), argument("name")) {
                (Some(owner), Some(name)) => scopes.insert(Scope::Repo { owner, name }),
                _ => return Mentions::Unknown,
            },
            "organization" | "user" | "repositoryOwner" => match argument("login") {
                Some(login) => scopes.insert(Scope::Owner(login)),
                None => return Mentions::Unknown,
            },
            harmless if HARMLESS_FIELDS.contains(&harmless) => continue,
            _ => return Mentions::Unknown,
        };
    }
    Mentions::Known(scopes)
}

/// JSON with every object's keys sorted, so variables sent in another order match.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The `[[graphql.rules]]` in force.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    rules: Vec<GraphqlRule>,
    /// `cache.stale_if_error`, for rules that do not set their own.
    default_stale_if_error: Duration,
}

/// What a matching rule allows for one query's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caching {
    /// Served without asking GitHub for this long.
    pub ttl: Duration,
    /// Then served when GitHub fails (or the budget is at the reserve) for this long.
    pub stale_if_error: Duration,
}

impl Rules {
    /// The rules of `[[graphql.rules]]`, checked by `config::validate`.
    pub(crate) fn new(rules: &[GraphqlRule], default_stale_if_error: Duration) -> Rules {
        Rules { rules: rules.to_vec(), default_stale_if_error }
    }

    /// Whether any answer may be cached at all (else invalidation has nothing to track).
    pub(crate) fn any(&self) -> bool {
        !self.rules.is_empty()
    }

    /// How the answer to `operation` may be cached: by the first rule that matches, and only
    /// for queries.
    pub(crate) fn caching_for(&self, operation: &Operation) -> Option<Caching> {
        if operation.kind != Kind::Query {
            return None;
        }
        let rule = self.rules.iter().find(|rule| match (&rule.operation, &rule.fields) {
            (Some(name), _) => operation.name.as_deref() == Some(name.as_str()),
            (None, Some(fields)) => {
                !operation.top_fields.is_empty() && operation.top_fields.iter().all(|f| fields.contains(f))
            }
            (None, None) => false,
        })?;
        Some(Caching {
            ttl: rule.ttl,
            stale_if_error: rule.stale_if_error.unwrap_or(self.default_stale_if_error),
        })
    }

    /// The longest any answer is kept (for how long invalidation must remember its marks).
    pub(crate) fn longest_kept(&self) -> Duration {
        self.rules
            .iter()
            .map(|r| r.ttl + r.stale_if_error.unwrap_or(self.default_stale_if_error))
            .max()
            .unwrap_or_default()
    }
}

/// Whether a GraphQL answer body reports errors (`"errors"` present and not null): such an
/// answer is never cached. A body that is not a JSON object counts as an error.
pub(crate) fn has_errors(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Top {
        #[serde(default)]
        errors: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Top>(body).map_or(true, |top| top.errors.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(query: &str, variables: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"query": query, "variables": variables})).unwrap()
    }

    #[test]
    fn whitespace_commas_comments_and_variable_order_do_not_change_the_fingerprint() {
        let a = read(&body(
            "query Q($o: String!, $n: String!) { repository(owner: $o, name: $n) { id } }",
            serde_json::json!({"o": "a", "n": "b"}),
        ))
        .unwrap();
        let b = read(&body(
            "# list\nquery   Q($o: String! $n: String!)\n{\n  repository(owner: $o, name: $n) { id, }\n}",
            serde_json::json!({"n": "b", "o": "a"}),
        ))
        .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        let c = read(&body(
            "query Q($o: String!, $n: String!) { repository(owner: $o, name: $n) { id } }",
            serde_json::json!({"o": "a", "n": "c"}),
        ))
        .unwrap();
        assert_ne!(a.fingerprint, c.fingerprint, "other variables ask something else");
        let d =
            read(&body("query Q { repository(owner: \"a\", name: \"b\") { name } }", Value::Null)).unwrap();
        assert_ne!(a.fingerprint, d.fingerprint);
    }

    #[test]
    fn the_operation_kind_comes_from_the_parsed_document() {
        assert_eq!(read(&body("{ viewer { login } }", Value::Null)).unwrap().kind, Kind::Query);
        let m = read(&body(
            "mutation M { addStar(input: {starrableId: \"x\"}) { clientMutationId } }",
            Value::Null,
        ));
        assert_eq!(m.unwrap().kind, Kind::Mutation);
        // A query whose text merely contains the word "mutation" is still a query.
        let q = read(&body("query mutation { viewer { login } } ", Value::Null)).unwrap();
        assert_eq!(q.kind, Kind::Query);
        let s = read(&body("subscription S { x }", Value::Null)).unwrap();
        assert_eq!(s.kind, Kind::Subscription);
    }

    #[test]
    fn operation_name_picks_one_of_several_operations() {
        let doc = "query A { viewer { login } } mutation B { x }";
        let pick = |name: &str| {
            serde_json::to_vec(&serde_json::json!({"query": doc, "operationName": name})).unwrap()
        };
        assert_eq!(read(&pick("A")).unwrap().kind, Kind::Query);
        assert_eq!(read(&pick("B")).unwrap().kind, Kind::Mutation);
        assert!(read(&pick("C")).unwrap_err().message.contains("Unknown operation"));
        assert!(read(&body(doc, Value::Null)).unwrap_err().message.contains("operation name is required"));
    }

    #[test]
    fn bad_bodies_are_refused_with_github_messages() {
        assert_eq!(read(b"not json").unwrap_err().message, "Problems parsing JSON");
        assert_eq!(read(b"[1]").unwrap_err().message, "Problems parsing JSON");
        assert!(read(br#"{"variables":{}}"#).unwrap_err().message.contains("query attribute"));
        assert!(read(br#"{"query": 3}"#).unwrap_err().message.contains("query attribute"));
        assert!(
            read(&body("{ viewer { login }", Value::Null)).unwrap_err().message.starts_with("Parse error")
        );
        assert!(
            read(&body("fragment F on User { login }", Value::Null))
                .unwrap_err()
                .message
                .contains("No operations")
        );
        let variables = serde_json::to_vec(&serde_json::json!({"query": "{ a }", "variables": [1]})).unwrap();
        assert!(read(&variables).unwrap_err().message.contains("Variables"));
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let depth = 100_000;
        let query = format!("{}{}", "{a".repeat(depth), "}".repeat(depth));
        let refusal = read(&body(&query, Value::Null)).unwrap_err();
        assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
        assert!(refusal.message.starts_with("Parse error"), "{}", refusal.message);
    }

    #[test]
    fn mentions_come_from_literals_variables_and_fragments() {
        let op = read(&body(
            "query($o: String!) { a: repository(owner: $o, name: \"One\") { id } ...F rateLimit { remaining } }
             fragment F on Query { organization(login: \"Acme\") { id } }",
            serde_json::json!({"o": "Octo"}),
        ))
        .unwrap();
        let expected: BTreeSet<Scope> =
            [Scope::Repo { owner: "octo".into(), name: "one".into() }, Scope::Owner("acme".into())].into();
        assert_eq!(op.mentions, Mentions::Known(expected));
        assert_eq!(op.top_fields, vec!["organization", "rateLimit", "repository"]);
        let viewer =
            read(&body("{ viewer { login } repository(owner: \"a\", name: \"b\") { id } }", Value::Null));
        assert_eq!(viewer.unwrap().mentions, Mentions::Unknown);
        let unresolved =
            read(&body("query($n: String) { repository(owner: \"a\", name: $n) { id } }", Value::Null));
        assert_eq!(unresolved.unwrap().mentions, Mentions::Unknown);
    }

    fn rule(operation: Option<&str>, fields: Option<&[&str]>) -> GraphqlRule {
        GraphqlRule {
            operation: operation.map(str::to_string),
            fields: fields.map(|f| f.iter().map(|s| s.to_string()).collect()),
            ttl: Duration::from_secs(10),
            stale_if_error: None,
        }
    }

    #[test]
    fn rules_match_queries_by_name_or_by_all_top_level_fields() {
        let rules = Rules::new(
            &[rule(Some("PullRequestList"), None), rule(None, Some(&["repository", "rateLimit"]))],
            Duration::from_secs(300),
        );
        let named = read(&body("query PullRequestList { viewer { login } }", Value::Null)).unwrap();
        let caching = rules.caching_for(&named).unwrap();
        assert_eq!(caching.ttl, Duration::from_secs(10));
        assert_eq!(caching.stale_if_error, Duration::from_secs(300));
        let fields = read(&body("{ repository(owner: \"a\", name: \"b\") { id } }", Value::Null)).unwrap();
        assert!(rules.caching_for(&fields).is_some());
        let wider =
            read(&body("{ repository(owner: \"a\", name: \"b\") { id } viewer { login } }", Value::Null));
        assert!(rules.caching_for(&wider.unwrap()).is_none(), "viewer is not in the rule");
        let mutation = read(&body("mutation PullRequestList { x }", Value::Null)).unwrap();
        assert!(rules.caching_for(&mutation).is_none(), "mutations are never cached");
    }

    #[test]
    fn the_reader_remembers_operations_by_body_bytes() {
        let reader = Reader::new(16);
        let bytes = body("{ viewer { login } }", Value::Null);
        let first = reader.read(&bytes).unwrap();
        assert!(Arc::ptr_eq(&first, &reader.read(&bytes).unwrap()), "read once");
        assert!(reader.read(b"not json").is_err());
        assert!(reader.read(b"not json").is_err(), "refusals are not remembered as operations");
    }

    proptest::proptest! {
        /// Whatever a client sends, reading it answers (an operation or a refusal), never
        /// panics; GraphQL-ish text built from its own tokens included.
        #[test]
        fn reading_any_body_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            query in r#"[{}()\[\]$:!@.,"a-z ]{0,200}"#,
        ) {
            let _ = read(&bytes);
            let _ = read(&body(&query, serde_json::json!({"o": "x"})));
        }
    }

    #[test]
    fn answers_with_errors_are_recognised() {
        assert!(!has_errors(br#"{"data":{"viewer":{"login":"a"}}}"#));
        assert!(!has_errors(br#"{"data":{},"errors":null}"#));
        assert!(has_errors(br#"{"data":null,"errors":[{"message":"x"}]}"#));
        assert!(has_errors(b"<html>"));
    }
}
