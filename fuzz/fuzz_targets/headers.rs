//! Header parsing: arbitrary request and response header blocks through everything that reads
//! headers — Accept normalisation, the cache key, rate-limit headers, Link/Location rewriting,
//! forwarding headers, webhook signatures, CORS. None may panic.
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
});
