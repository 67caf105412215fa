//! How values look on disk and in Redis: a frame — magic, expiry, CRC-32 — around a postcard
//! payload. The checksum is why a torn or corrupted entry is dropped instead of served.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::cache::{CachedResponse, Freshness};

const MAGIC: [u8; 4] = *b"GGv1";
const HEADER_LEN: usize = 4 + 8 + 4;

/// Why a stored value could not be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CodecError {
    /// Too short, wrong magic or a checksum mismatch: the bytes are not what was written.
    #[error("corrupted or truncated value")]
    Corrupt,
    /// The checksum matched but the payload did not decode (a format change).
    #[error("undecodable value: {0}")]
    Undecodable(String),
}

/// Wraps `payload` in a frame carrying its expiry and checksum.
pub fn frame(payload: &[u8], expires_at: SystemTime) -> Bytes {
    let expires = expires_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&expires.to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&expires.to_be_bytes());
    crc.update(payload);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Checks a frame and returns its expiry and payload.
pub(crate) fn unframe(bytes: &[u8]) -> Result<(SystemTime, &[u8]), CodecError> {
    if bytes.len() < HEADER_LEN || bytes[..4] != MAGIC {
        return Err(CodecError::Corrupt);
    }
    let expires: [u8; 8] = bytes[4..12].try_into().map_err(|_| CodecError::Corrupt)?;
    let stored_crc = u32::from_be_bytes(bytes[12..16].try_into().map_err(|_| CodecError::Corrupt)?);
    let payload = &bytes[HEADER_LEN..];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&expires);
    crc.update(payload);
    if crc.finalize() != stored_crc {
        return Err(CodecError::Corrupt);
    }
    let expires_at = UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(expires));
    Ok((expires_at, payload))
}

/// The expiry written in a frame, without checking the payload (for warm starts).
pub(crate) fn frame_expiry(bytes: &[u8]) -> Option<SystemTime> {
    if bytes.len() < HEADER_LEN || bytes[..4] != MAGIC {
        return None;
    }
    let expires = u64::from_be_bytes(bytes[4..12].try_into().ok()?);
    Some(UNIX_EPOCH + Duration::from_millis(expires))
}

/// The first answer format: the body inline.
#[derive(Serialize, Deserialize)]
struct StoredResponse {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    response_time_ms: u64,
    initial_age_ms: u64,
    fresh_for_ms: u64,
    stale_while_revalidate_ms: u64,
    stale_if_error_ms: u64,
    keep_stale_for_ms: u64,
    vary: Vec<(String, Option<Vec<u8>>)>,
    path_key: String,
    credential_tag: Option<u64>,
}

/// Where a stored answer's body is.
#[derive(Serialize, Deserialize)]
enum StoredBody {
    /// In the record.
    Inline(Vec<u8>),
    /// Under its own key (`b:<digest>`), shared by every entry with these bytes.
    Shared { digest: [u8; 16], len: u64 },
}

/// The second answer format: the body inline, or shared by digest. Written after
/// [`V2_MARK`]; a payload without the mark is the first format (a postcard status of 0 is
/// not a status, so the two cannot be confused).
#[derive(Serialize, Deserialize)]
struct StoredResponseV2 {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: StoredBody,
    response_time_ms: u64,
    initial_age_ms: u64,
    fresh_for_ms: u64,
    stale_while_revalidate_ms: u64,
    stale_if_error_ms: u64,
    keep_stale_for_ms: u64,
    vary: Vec<(String, Option<Vec<u8>>)>,
    path_key: String,
    credential_tag: Option<u64>,
}

const V2_MARK: [u8; 2] = [0, 2];

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// A decoded answer, and the body it refers to when that is stored under its own key.
pub(crate) struct Decoded {
    /// The answer (with an empty body when `shared_body` is set).
    pub entry: CachedResponse,
    /// The digest and length of a body stored apart.
    pub shared_body: Option<([u8; 16], u64)>,
}

/// Encodes a cached answer, framed, expiring when the entry does. With `shared`, the body is
/// left out and named by that digest (the caller stores it under [`body_key`]).
pub(crate) fn encode_response(entry: &CachedResponse, shared: Option<[u8; 16]>) -> Bytes {
    let body = match shared {
        Some(digest) => StoredBody::Shared { digest, len: entry.body.len() as u64 },
        None => StoredBody::Inline(entry.body.to_vec()),
    };
    let stored = StoredResponseV2 {
        status: entry.status.as_u16(),
        headers: entry.headers.iter().map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())).collect(),
        body,
        response_time_ms: ms(entry.response_time.duration_since(UNIX_EPOCH).unwrap_or_default()),
        initial_age_ms: ms(entry.initial_age),
        fresh_for_ms: ms(entry.freshness.fresh_for),
        stale_while_revalidate_ms: ms(entry.freshness.stale_while_revalidate),
        stale_if_error_ms: ms(entry.freshness.stale_if_error),
        keep_stale_for_ms: ms(entry.freshness.keep_stale_for),
        vary: entry
            .vary
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_ref().map(|v| v.as_bytes().to_vec())))
            .collect(),
        path_key: entry.path_key.clone(),
        credential_tag: entry.credential_tag,
    };
    let mut payload = V2_MARK.to_vec();
    postcard::to_io(&stored, &mut payload).expect("encoding to memory cannot fail");
    frame(&payload, entry.expires_at())
}

/// The store key of a shared body.
pub(crate) fn body_key(digest: &[u8; 16]) -> String {
    format!("b:{}", hex::encode(digest))
}

/// Decodes what [`encode_response`] wrote (or the first format); a damaged value is an error,
/// never a wrong answer.
pub(crate) fn decode_response(bytes: &[u8]) -> Result<Decoded, CodecError> {
    let (_, payload) = unframe(bytes)?;
    let undecodable = |e: postcard::Error| CodecError::Undecodable(e.to_string());
    let s = match payload.strip_prefix(&V2_MARK) {
        Some(v2) => postcard::from_bytes::<StoredResponseV2>(v2).map_err(undecodable)?,
        None => {
            let v1: StoredResponse = postcard::from_bytes(payload).map_err(undecodable)?;
            StoredResponseV2 {
                status: v1.status,
                headers: v1.headers,
                body: StoredBody::Inline(v1.body),
                response_time_ms: v1.response_time_ms,
                initial_age_ms: v1.initial_age_ms,
                fresh_for_ms: v1.fresh_for_ms,
                stale_while_revalidate_ms: v1.stale_while_revalidate_ms,
                stale_if_error_ms: v1.stale_if_error_ms,
                keep_stale_for_ms: v1.keep_stale_for_ms,
                vary: v1.vary,
                path_key: v1.path_key,
                credential_tag: v1.credential_tag,
            }
        }
    };
    let bad = |what: &str| CodecError::Undecodable(format!("bad {what}"));
    let mut headers = HeaderMap::with_capacity(s.headers.len());
    for (k, v) in s.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad("header name"))?;
        let value = HeaderValue::from_bytes(&v).map_err(|_| bad("header value"))?;
        let (name, value) = crate::github::intern_header(name, value);
        headers.append(name, value);
    }
    let mut vary = Vec::with_capacity(s.vary.len());
    for (k, v) in s.vary {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad("vary name"))?;
        let value = v.map(|v| HeaderValue::from_bytes(&v)).transpose().map_err(|_| bad("vary value"))?;
        vary.push((name, value));
    }
    let (body, shared_body) = match s.body {
        StoredBody::Inline(body) => (Bytes::from(body), None),
        StoredBody::Shared { digest, len } => (Bytes::new(), Some((digest, len))),
    };
    let entry = CachedResponse {
        status: StatusCode::from_u16(s.status).map_err(|_| bad("status"))?,
        headers,
        body,
        response_time: UNIX_EPOCH + Duration::from_millis(s.response_time_ms),
        initial_age: Duration::from_millis(s.initial_age_ms),
        freshness: Freshness {
            fresh_for: Duration::from_millis(s.fresh_for_ms),
            stale_while_revalidate: Duration::from_millis(s.stale_while_revalidate_ms),
            stale_if_error: Duration::from_millis(s.stale_if_error_ms),
            keep_stale_for: Duration::from_millis(s.keep_stale_for_ms),
        },
        vary,
        path_key: s.path_key,
        credential_tag: s.credential_tag,
        body_urls: Default::default(),
    };
    Ok(Decoded { entry, shared_body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> CachedResponse {
        let mut headers = HeaderMap::new();
        headers.insert("etag", HeaderValue::from_static("W/\"abc\""));
        headers.append("vary", HeaderValue::from_static("Accept, Authorization"));
        CachedResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"{\"id\":1}"),
            response_time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            initial_age: Duration::from_secs(3),
            freshness: Freshness {
                fresh_for: Duration::from_secs(60),
                stale_while_revalidate: Duration::from_secs(1),
                stale_if_error: Duration::from_secs(300),
                keep_stale_for: Duration::from_secs(86400),
            },
            vary: vec![(HeaderName::from_static("cookie"), None)],
            path_key: "/repos/o/r".into(),
            credential_tag: Some(42),
            body_urls: Default::default(),
        }
    }

    #[test]
    fn responses_round_trip() {
        let e = entry();
        let back = decode_response(&encode_response(&e, None)).unwrap();
        assert!(back.shared_body.is_none());
        let back = back.entry;
        assert_eq!(back.status, e.status);
        assert_eq!(back.headers, e.headers);
        assert_eq!(back.body, e.body);
        assert_eq!(back.response_time, e.response_time);
        assert_eq!(back.freshness, e.freshness);
        assert_eq!(back.vary, e.vary);
        assert_eq!(back.credential_tag, Some(42));
    }

    #[test]
    fn a_shared_body_is_named_not_stored() {
        let e = entry();
        let back = decode_response(&encode_response(&e, Some([9; 16]))).unwrap();
        assert_eq!(back.shared_body, Some(([9; 16], e.body.len() as u64)));
        assert!(back.entry.body.is_empty());
        assert_eq!(back.entry.headers, e.headers);
    }

    #[test]
    fn the_first_format_still_reads() {
        let e = entry();
        let v1 = StoredResponse {
            status: 200,
            headers: e.headers.iter().map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())).collect(),
            body: e.body.to_vec(),
            response_time_ms: 1_700_000_000_123,
            initial_age_ms: 3000,
            fresh_for_ms: 60_000,
            stale_while_revalidate_ms: 1000,
            stale_if_error_ms: 300_000,
            keep_stale_for_ms: 86_400_000,
            vary: vec![("cookie".into(), None)],
            path_key: "/repos/o/r".into(),
            credential_tag: Some(42),
        };
        let framed = frame(&postcard::to_stdvec(&v1).unwrap(), e.expires_at());
        let back = decode_response(&framed).unwrap();
        assert_eq!(back.entry.body, e.body);
        assert_eq!(back.entry.response_time, e.response_time);
        assert_eq!(back.entry.credential_tag, Some(42));
    }

    #[test]
    fn any_flipped_bit_or_truncation_is_detected() {
        let bytes = encode_response(&entry(), None).to_vec();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            assert!(decode_response(&damaged).is_err(), "flip at byte {i} went unnoticed");
        }
        for len in 0..bytes.len() {
            assert!(decode_response(&bytes[..len]).is_err(), "truncation to {len} went unnoticed");
        }
    }
}
