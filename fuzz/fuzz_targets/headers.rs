//! Header parsing: arbitrary request and response header blocks through everything that reads
//! headers — Accept normalisation, the cache key, rate-limit headers, Link/Location rewriting,
//! forwarding headers, webhook signatures, CORS, and the admit phase's reading of `Host`,
//! `Connection` and `Authorization`. None may panic, and once admitted, a request's cache key
//! is the one the same headers give after admission again (admission is idempotent).
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fn headers(block: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in block.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        map.append(name, value);
    }
    map
}

fuzz_target!(|data: &[u8]| {
    let (request_block, response_block) = match data.iter().position(|b| *b == 0) {
        Some(split) => (&data[..split], &data[split + 1..]),
        None => (data, &data[..0]),
    };
    let request = headers(request_block);
    let mut response = headers(response_block);

    let accept = ghgate::github::normalize_accept(request.get(http::header::ACCEPT));
    assert_eq!(accept, ghgate::github::normalize_accept(HeaderValue::from_str(&accept).ok().as_ref()));
    let partition = ghgate::identity::Partition::from_safe_id("p-fuzz".to_string());
    let _ = ghgate::cache::key::CacheKey::new(&partition, "/repos/octo/hello?page=2", &request);
    if let Some(limit) = ghgate::github::RateLimit::from_headers(&response) {
        let mut out = HeaderMap::new();
        ghgate::github::RenderedRateLimit::from(limit).apply(&mut out);
    }
    let _ = ghgate::github::resource_of(&response);
    ghgate::rewrite::rewrite_headers(&mut response, "https://api.github.com", "http://127.0.0.1:8080");
    let trusted = ["127.0.0.0/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
    let _ = ghgate::inbound::client_address("127.0.0.1:9".parse().unwrap(), &request, &trusted, true);
    let _ =
        ghgate::webhook::verify(&["secret".to_string()], request_block, request.get("x-hub-signature-256"));

    // The admit phase: Host, Connection nominations, then the credential's partition.
    let mut parts = http::Request::get("/repos/octo/hello").body(()).unwrap().into_parts().0;
    parts.headers = request.clone();
    if ghgate::inbound::check_request(&parts).is_ok()
        && ghgate::inbound::drop_connection_nominated(&mut parts.headers).is_ok()
    {
        let partitioner = ghgate::identity::Partitioner::new(b"fuzz-secret");
        let admitted = partitioner.partition(&parts.headers);
        let key = ghgate::cache::key::CacheKey::new(&admitted, "/repos/octo/hello", &parts.headers);
        let mut again = parts.headers.clone();
        assert!(ghgate::inbound::drop_connection_nominated(&mut again).is_ok());
        assert_eq!(key, ghgate::cache::key::CacheKey::new(&partitioner.partition(&again), "/repos/octo/hello", &again));
    }
});
