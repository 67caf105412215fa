//! Layering: defaults, then the file, then the environment, then flags — and the errors of
//! each layer, named by key and source.

use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use url::Url;

use super::{ConfigError, ConfigErrors, Settings};

/// Values given on the command line; they win over file and environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`
    pub admin_listen: Option<SocketAddr>,
    /// `--upstream`
    pub upstream: Option<Url>,
}

impl Settings {
    /// Loads defaults, then `file` (which must exist when given), then the environment,
    /// then `overrides`, and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigErrors> {
        Self::load_from(file, "GHGATE_", overrides)
    }

    /// Settings from TOML text alone (defaults, then the text; no environment), validated.
    /// What `check-config` does for a file, for callers that hold the text (fuzzing, tests).
    pub fn from_toml_str(text: &str) -> Result<Settings, ConfigErrors> {
        let figment = Figment::from(Serialized::defaults(Settings::default())).merge(Toml::string(text));
        let settings: Settings = figment.extract_lossy().map_err(figment_errors)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Like [`Settings::load`] with another environment prefix (tests use this).
    pub fn load_from(
        file: Option<&Path>,
        env_prefix: &str,
        overrides: &Overrides,
    ) -> Result<Settings, ConfigErrors> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigErrors(vec![ConfigError {
                    key: String::new(),
                    message: format!("config file {} does not exist or is not a file", path.display()),
                }]));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(RawEnv { prefix: env_prefix.to_string() });
        // Lossy: `GHGATE_CACHE__ENABLED=false` is a string that means a bool.
        let mut settings: Settings = figment.extract_lossy().map_err(figment_errors)?;
        if let Some(listen) = overrides.listen {
            settings.server.listen = listen;
        }
        if let Some(admin) = overrides.admin_listen {
            settings.server.admin_listen = admin;
        }
        if let Some(upstream) = &overrides.upstream {
            settings.upstream.url = upstream.clone();
        }
        settings.validate()?;
        Ok(settings)
    }
}

/// Environment variables as figment values, kept as the exact strings they are.
///
/// figment's own `Env` parses values, so a secret such as `0123` or `1e5` would arrive as a
/// number and lose its text; here every value stays a string and the lossy extraction turns
/// it into a bool or number only where a field asks for one.
struct RawEnv {
    prefix: String,
}

impl figment::Provider for RawEnv {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("environment variable(s) {}*", self.prefix))
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        use figment::value::{Dict, Value};
        let mut root = Dict::new();
        for (name, value) in std::env::vars() {
            let Some(rest) = name.strip_prefix(&self.prefix) else { continue };
            // Only `SECTION__KEY` variables are settings; `GHGATE_CONFIG` and friends are not.
            if !rest.contains("__") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            let mut dict = &mut root;
            for part in &path[..path.len() - 1] {
                let entry = dict.entry(part.clone()).or_insert_with(|| Value::from(Dict::new()));
                if !matches!(entry, Value::Dict(..)) {
                    *entry = Value::from(Dict::new());
                }
                let Value::Dict(_, inner) = entry else { unreachable!("made a dict above") };
                dict = inner;
            }
            dict.insert(path[path.len() - 1].clone(), Value::from(value));
        }
        Ok(figment::Profile::Default.collect(root))
    }
}

fn figment_errors(err: figment::Error) -> ConfigErrors {
    ConfigErrors(
        err.into_iter()
            .map(|e| {
                let from = e
                    .metadata
                    .as_ref()
                    .map(|m| match &m.source {
                        Some(src) => format!(" (from {} {src})", m.name),
                        None => format!(" (from {})", m.name),
                    })
                    .unwrap_or_default();
                ConfigError { key: e.path.join("."), message: format!("{}{from}", e.kind) }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StoreBackend, parse_duration, parse_size};
    use std::time::Duration;

    fn load_toml(text: &str) -> Result<Settings, ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ghgate.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load_from(Some(&path), "GHGATE_TEST_NOTHING_", &Overrides::default())
    }

    fn first_key(r: Result<Settings, ConfigErrors>) -> String {
        r.unwrap_err().0[0].key.clone()
    }

    #[test]
    fn defaults_are_loopback_and_memory() {
        let s = Settings::default();
        assert!(s.server.listen.ip().is_loopback());
        assert!(s.server.admin_listen.ip().is_loopback());
        assert_eq!(s.upstream.url.as_str(), "https://api.github.com/");
        assert_eq!(s.store.backend, StoreBackend::Disk);
        assert_eq!(s.cache.max_bytes, 256 << 20);
    }

    #[test]
    fn sizes_and_durations_parse_in_human_units() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        for (bytes, text) in [
            (268_435_456, "256 MiB"),
            (67_108_864, "64 MiB"),
            (1536 << 20, "1.5 GiB"),
            (100, "100 B"),
            (1024, "1 KiB"),
        ] {
            assert_eq!(crate::config::human_size(bytes), text);
        }
        assert_eq!(parse_size("10 MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn a_bad_value_names_its_key() {
        assert_eq!(first_key(load_toml("[cache]\nmax_bytes = \"lots\"\n")), "cache.max_bytes");
        assert_eq!(first_key(load_toml("[server]\nlisten = \"nowhere\"\n")), "server.listen");
        assert_eq!(first_key(load_toml("[upstream]\nurl = \"ftp://x\"\n")), "upstream.url");
        assert_eq!(first_key(load_toml("[store]\nbackend = \"floppy\"\n")), "store.backend");
        assert_eq!(first_key(load_toml("[server]\nworkers = 5000\n")), "server.workers");
        assert_eq!(first_key(load_toml("[server]\nmax_body_bytes = 0\n")), "server.max_body_bytes");
        assert_eq!(first_key(load_toml("[server]\nworkers = -1\n")), "server.workers");
    }

    #[test]
    fn an_unknown_key_is_rejected_by_name() {
        let err = load_toml("[cache]\nmax_byte = 5\n").unwrap_err();
        assert!(err.to_string().contains("max_byte"), "{err}");
    }

    #[test]
    fn min_fresh_above_max_fresh_is_rejected() {
        let toml = "[[cache.rules]]\npath = \"/repos/**\"\nmin_fresh = \"5m\"\nmax_fresh = \"1m\"\n";
        assert_eq!(first_key(load_toml(toml)), "cache.rules[0].min_fresh");
    }

    #[test]
    fn graphql_rules_load_and_bad_ones_name_their_key() {
        let ok = "[[graphql.rules]]\noperation = \"PullRequestList\"\nttl = \"10s\"\n\n[[graphql.rules]]\nfields = [\"repository\"]\nttl = \"30s\"\nstale_if_error = \"1m\"\n";
        let s = load_toml(ok).unwrap();
        assert_eq!(s.graphql.rules.len(), 2);
        assert_eq!(s.graphql.rules[1].stale_if_error, Some(Duration::from_secs(60)));
        for (toml, key) in [
            ("[[graphql.rules]]\nttl = \"10s\"\n", "graphql.rules[0].operation"),
            (
                "[[graphql.rules]]\noperation = \"A\"\nfields = [\"a\"]\nttl = \"1s\"\n",
                "graphql.rules[0].operation",
            ),
            ("[[graphql.rules]]\nfields = []\nttl = \"1s\"\n", "graphql.rules[0].fields"),
            ("[[graphql.rules]]\noperation = \"A\"\nttl = \"0s\"\n", "graphql.rules[0].ttl"),
            ("[graphql]\nmax_body_bytes = 0\n", "graphql.max_body_bytes"),
        ] {
            assert_eq!(first_key(load_toml(toml)), key, "{toml}");
        }
        let missing_ttl = load_toml("[[graphql.rules]]\noperation = \"A\"\n").unwrap_err();
        assert!(missing_ttl.to_string().contains("ttl"), "{missing_ttl}");
    }

    #[test]
    fn a_rule_with_a_bad_pattern_is_rejected() {
        let toml = "[[cache.rules]]\npath = \"repos/**/x\"\n";
        let err = load_toml(toml).unwrap_err();
        assert!(err.0[0].key.starts_with("cache.rules"), "{err}");
    }

    #[test]
    fn environment_wins_over_file_and_numeric_strings_are_accepted() {
        // SAFETY: this test owns these uniquely named variables.
        unsafe {
            std::env::set_var("GHGATE_T1_SERVER__SECRET", "0123456789012345");
            std::env::set_var("GHGATE_T1_CACHE__ENABLED", "false");
            std::env::set_var("GHGATE_T1_CACHE__MAX_BYTES", "1MiB");
            std::env::set_var("GHGATE_T1_CONFIG", "ignored, not a setting");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ghgate.toml");
        std::fs::write(&path, "[cache]\nmax_bytes = \"2MiB\"\nmax_body_bytes = \"1KiB\"\n").unwrap();
        let s = Settings::load_from(Some(&path), "GHGATE_T1_", &Overrides::default()).unwrap();
        assert_eq!(s.cache.max_bytes, 1 << 20);
        assert!(!s.cache.enabled);
        // A numeric-looking secret keeps its exact text, leading zero included.
        assert_eq!(s.server.secret.as_deref(), Some("0123456789012345"));
    }

    #[test]
    fn flags_win_over_everything() {
        let o = Overrides {
            listen: Some("127.0.0.1:1".parse().unwrap()),
            admin_listen: None,
            upstream: Some(Url::parse("http://127.0.0.1:2/api/v3").unwrap()),
        };
        let s = Settings::load_from(None, "GHGATE_TEST_NOTHING_", &o).unwrap();
        assert_eq!(s.server.listen.port(), 1);
        assert_eq!(s.upstream.url.path(), "/api/v3");
    }
}
