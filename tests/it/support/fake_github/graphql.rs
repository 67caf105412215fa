//! The fake's `POST /graphql`: charges points to the `graphql` resource (its own budget and
//! `x-ratelimit-*` headers, as GitHub does), answers every query with a fresh serial number
//! (so a test can tell an upstream answer from a cached one), and can be told to answer with
//! `errors` or to charge more points.

use std::sync::atomic::Ordering;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::{FakeGitHub, FakeState, respond_as};

/// The endpoint's settings and counter.
#[derive(Default)]
pub(super) struct Endpoint {
    /// Points each request costs (GitHub: at least 1, more for large connections).
    cost: Option<u64>,
    /// Serial number of the last answer.
    serial: u64,
    /// How many next answers report `errors`.
    errors_next: usize,
}

impl FakeGitHub {
    /// GraphQL points charged so far, over every credential.
    pub fn points(&self) -> u64 {
        self.state.points.load(Ordering::SeqCst)
    }

    /// `POST /graphql` requests received.
    pub fn graphql_requests(&self) -> u64 {
        self.state.graphql_requests.load(Ordering::SeqCst)
    }

    /// Makes every GraphQL request cost `points`.
    pub fn set_graphql_cost(&self, points: u64) {
        self.state.inner.lock().unwrap().graphql.cost = Some(points);
    }

    /// The next `n` GraphQL answers are 200s with `errors` (as GitHub answers a query about a
    /// repository it cannot find).
    pub fn graphql_errors_next(&self, n: usize) {
        self.state.inner.lock().unwrap().graphql.errors_next = n;
    }
}

fn error(message: &str) -> String {
    format!(r#"{{"message":"{message}","documentation_url":"https://docs.github.com/graphql"}}"#)
}

/// Answers one `POST /graphql`.
pub(super) fn answer(state: &FakeState, body: &[u8], cred: &str) -> Response {
    state.graphql_requests.fetch_add(1, Ordering::SeqCst);
    let headers = HeaderMap::new();
    if cred == "anonymous" {
        let body = error("This endpoint requires you to be authenticated.");
        return respond_as(state, cred, "graphql", StatusCode::UNAUTHORIZED, body, headers, 0);
    }
    let Ok(serde_json::Value::Object(request)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return respond_as(state, cred, "graphql", StatusCode::BAD_REQUEST, error("Problems parsing JSON"), headers, 0);
    };
    let query = request.get("query").and_then(|q| q.as_str()).unwrap_or("");
    let variables = request.get("variables").cloned().unwrap_or(serde_json::Value::Null);
    let (serial, cost, with_errors) = {
        let mut inner = state.inner.lock().unwrap();
        let endpoint = &mut inner.graphql;
        endpoint.serial += 1;
        let with_errors = endpoint.errors_next > 0;
        endpoint.errors_next = endpoint.errors_next.saturating_sub(1);
        (endpoint.serial, endpoint.cost.unwrap_or(1), with_errors)
    };
    let answer = if with_errors {
        serde_json::json!({
            "data": {"repository": null},
            "errors": [{"type": "NOT_FOUND", "path": ["repository"], "message": "Could not resolve to a Repository."}],
        })
    } else if query.trim_start().starts_with("mutation") {
        serde_json::json!({"data": {"mutation": {"serial": serial}}})
    } else {
        serde_json::json!({"data": {"serial": serial, "query": query, "variables": variables}})
    };
    respond_as(state, cred, "graphql", StatusCode::OK, answer.to_string(), headers, cost)
}
