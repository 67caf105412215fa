//! Value formats: durations (`"30s"`), sizes (`"256MiB"`), strings that may arrive as numbers
//! from the environment, and secrets that serialise redacted.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};
use url::Url;

/// Parses `"30s"`, `"5m"`, `"24h"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("expected a duration such as \"30s\" or \"24h\", got {text:?} ({e})"))
}

/// A size as people read it: `256 MiB`, `1.5 GiB`, `512 KiB`, `100 B` (for logs and the
/// status page; [`parse_size`] reads the settings' spelling).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 || value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{:.1} {}", value, UNITS[unit]).replace(".0 ", " ")
    }
}

/// Parses `"256MiB"`, `"10MB"`, `"512KiB"` or a bare number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let num: u64 = num.parse().map_err(|_| format!("expected a size such as \"256MiB\", got {text:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(format!("unknown size unit in {text:?}; use B, KiB, MiB, GiB, KB, MB or GB")),
    };
    num.checked_mul(mult).ok_or_else(|| format!("size {text:?} is too large"))
}

/// A number or a string, as figment may hand either for the same key (environment values
/// that look numeric arrive as numbers).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(u64),
    Float(f64),
    Text(String),
    Bool(bool),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(s) => s,
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

pub(super) fn de_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Scalar::deserialize(d)?.into_text())
}

pub(super) fn de_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = Option::<Scalar>::deserialize(d)?.map(Scalar::into_text);
    Ok(text.filter(|s| !s.is_empty()))
}

pub(super) fn de_opt_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
    match de_opt_string(d)? {
        None => Ok(None),
        Some(s) => Url::parse(&s).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "expected a URL such as https://ghgate.example.com, got {s:?} ({e})"
            ))
        }),
    }
}

pub(super) fn ser_redacted<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    // Serialisation only feeds figment's defaults layer; a secret is never a default.
    match v {
        Some(_) => s.serialize_some("<redacted>"),
        None => s.serialize_none(),
    }
}

pub(super) mod duration {
    use super::*;
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse_duration(&Scalar::deserialize(d)?.into_text()).map_err(serde::de::Error::custom)
    }
}

pub(super) mod opt_duration {
    use super::*;
    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&humantime::format_duration(*v).to_string()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Scalar>::deserialize(d)? {
            None => Ok(None),
            Some(v) => parse_duration(&v.into_text()).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

pub(super) mod size {
    use super::*;
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        parse_size(&Scalar::deserialize(d)?.into_text()).map_err(serde::de::Error::custom)
    }
}
