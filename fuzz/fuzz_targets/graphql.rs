//! GraphQL request bodies, as a hostile client sends them, through `graphql::read` (JSON, the
//! document parsed under a recursion and token limit, the operation picked, its mentions and
//! fingerprint). It must never panic or overflow the stack, and reading is deterministic:
//! the same bytes give the same operation. The body is also tried as the document of a
//! well-formed request, so the parser itself is reached without JSON in the way.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn check(body: &[u8]) {
    match ghgate::graphql::read(body) {
        Ok(operation) => {
            let again = ghgate::graphql::read(body).expect("a body read once reads again");
            assert_eq!(operation.fingerprint, again.fingerprint);
            assert_eq!(operation.fingerprint.len(), 64);
            assert_eq!(operation.kind, again.kind);
            assert_eq!(operation.mentions, again.mentions);
        }
        Err(refusal) => assert!(!refusal.message.is_empty()),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Ok(document) = std::str::from_utf8(data) {
        let body = serde_json::json!({"query": document, "variables": {"owner": "o", "name": "r"}});
        check(body.to_string().as_bytes());
    }
});
