//! What a reload (SIGHUP, `POST /reload`) may change while the gateway runs, and what needs a
//! restart.
//!
//! Secrets rotate: client keys, an app's private key, webhook secrets, the admin token. Those
//! are read per request from their owners, so they can be swapped without dropping a cached
//! answer or a connection. Everything else shapes state built at start-up (listeners, the
//! store, the memory tier's bound, the limiter's buckets); a reload that changes any of it is
//! refused as a whole, naming those keys, so the settings in force always equal one file's.

use std::path::PathBuf;

use super::{Overrides, Settings};
use crate::config::ConfigErrors;

/// The keys a reload applies; any other changed key refuses the reload.
pub const RELOADABLE_KEYS: &[&str] = &[
    "server.admin_token",
    "webhooks.secrets",
    "clients",
    "apps[].private_key_path",
    "apps[].private_key_env",
    "log.level",
];

/// Where the settings came from, so a reload reads them the same way (the file again, the
/// environment as the process has it, the same command-line flags).
#[derive(Debug, Clone, Default)]
pub struct SettingsSource {
    /// The TOML file, when one was given.
    pub file: Option<PathBuf>,
    /// The command-line flags, which win over the file.
    pub overrides: Overrides,
}

impl SettingsSource {
    /// Reads the settings again (validated by [`Settings::load`]).
    pub fn load(&self) -> Result<Settings, ConfigErrors> {
        Settings::load(self.file.as_deref(), &self.overrides)
    }
}

/// The keys whose values differ between two settings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Changed keys a reload applies.
    pub reloadable: Vec<String>,
    /// Changed keys that need a restart.
    pub fixed: Vec<String>,
}

impl Settings {
    /// What changes from `self` to `new`, by key (never by value: some are secrets).
    pub fn changes_to(&self, new: &Settings) -> Changes {
        let mut changes = Changes::default();
        let mut reloadable = |key: &str, changed: bool| {
            if changed {
                changes.reloadable.push(key.to_string());
            }
        };
        reloadable("server.admin_token", self.server.admin_token != new.server.admin_token);
        reloadable("webhooks.secrets", self.webhooks.secrets != new.webhooks.secrets);
        reloadable("clients", to_json(&self.clients) != to_json(&new.clients));
        reloadable("log.level", self.log.level != new.log.level);
        for (i, (old, new)) in self.apps.iter().zip(&new.apps).enumerate() {
            reloadable(&format!("apps[{i}].private_key_path"), old.private_key_path != new.private_key_path);
            reloadable(&format!("apps[{i}].private_key_env"), old.private_key_env != new.private_key_env);
        }
        // Secrets serialize redacted, so the JSON comparison below cannot see them.
        if self.server.secret != new.server.secret {
            changes.fixed.push("server.secret".into());
        }
        if self.store.redis_url != new.store.redis_url {
            changes.fixed.push("store.redis_url".into());
        }
        differing_keys(
            &to_json(&compared_as_json(self)),
            &to_json(&compared_as_json(new)),
            "",
            &mut changes.fixed,
        );
        changes
    }
}

/// `settings` with every key compared above blanked (the reloadable ones and the redacted
/// secrets), so what is left compares the other fixed keys.
fn compared_as_json(settings: &Settings) -> Settings {
    let mut s = settings.clone();
    s.server.secret = None;
    s.store.redis_url = None;
    s.server.admin_token = None;
    s.webhooks.secrets.clear();
    s.clients.clear();
    s.log.level.clear();
    for app in &mut s.apps {
        app.private_key_path = None;
        app.private_key_env = None;
    }
    s
}

fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("settings serialize")
}

/// Appends the dotted keys (`cache.max_bytes`, `apps[1]`) whose values differ.
fn differing_keys(old: &serde_json::Value, new: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let path = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => differing_keys(x, y, &path, out),
                    _ => out.push(path),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differing_keys(x, y, &format!("{at}[{i}]"), out);
            }
        }
        (a, b) if a != b => out.push(at.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> Settings {
        Settings::from_toml_str(toml).unwrap()
    }

    #[test]
    fn rotated_secrets_are_reloadable_changes_and_name_no_value() {
        let old = settings(
            "[server]\nadmin_token = \"old-admin-token-1234\"\n[webhooks]\nsecrets = [\"old-secret-0123456789\"]",
        );
        let new = settings(
            "[server]\nadmin_token = \"new-admin-token-1234\"\n[webhooks]\nsecrets = [\"new-secret-0123456789\"]",
        );
        let changes = old.changes_to(&new);
        assert_eq!(changes.reloadable, ["server.admin_token", "webhooks.secrets"]);
        assert!(changes.fixed.is_empty(), "{changes:?}");
        assert!(!format!("{changes:?}").contains("secret-0123"), "values never appear");
    }

    #[test]
    fn listeners_store_and_bounds_are_fixed_changes_named_by_key() {
        let old = settings("[cache]\nmax_bytes = \"64MiB\"");
        let new = settings(
            "[server]\nlisten = \"127.0.0.1:8181\"\nsecret = \"another-secret-0123456\"\n[store]\nbackend = \"memory\"\n[cache]\nmax_bytes = \"32MiB\"",
        );
        let changes = old.changes_to(&new);
        assert!(changes.reloadable.is_empty());
        assert_eq!(changes.fixed, ["server.secret", "cache.max_bytes", "server.listen", "store.backend"]);
    }

    #[test]
    fn unchanged_settings_have_no_changes() {
        let s = settings("[server]\nadmin_token = \"admin-token-123456\"");
        assert_eq!(s.changes_to(&s.clone()), Changes::default());
    }
}
