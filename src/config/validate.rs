//! The relations between keys that types alone cannot express.

use std::time::Duration;

use super::{ConfigError, ConfigErrors, Settings, StoreBackend};

impl Settings {
    /// Checks what types alone cannot: relations between keys and allowed URL schemes. Checks
    /// that need a module's own code (an app's private key, a negative rule's fields) belong
    /// to that module; [`crate::server::check_settings`] runs them all.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut bad = |key: &str, message: String| {
            errors.push(ConfigError { key: key.into(), message });
        };
        let up = &self.upstream.url;
        if !matches!(up.scheme(), "http" | "https") {
            bad("upstream.url", format!("scheme must be http or https, got {:?}", up.scheme()));
        }
        if up.query().is_some() || up.fragment().is_some() {
            bad("upstream.url", "must not carry a query or fragment".into());
        }
        if up.host_str().is_none() {
            bad("upstream.url", "must name a host".into());
        }
        if !up.username().is_empty() || up.password().is_some() {
            bad("upstream.url", "must not carry credentials".into());
        }
        if let Some(public) = &self.server.public_url {
            if !matches!(public.scheme(), "http" | "https") || public.host_str().is_none() {
                bad("server.public_url", format!("must be an http(s) URL with a host, got {public}"));
            }
        }
        if !self.server.admin_listen.ip().is_loopback() && self.server.admin_token.is_none() {
            bad(
                "server.admin_token",
                format!(
                    "is required when server.admin_listen ({}) is not a loopback address",
                    self.server.admin_listen
                ),
            );
        }
        if self.server.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            bad("server.admin_token", "must be at least 16 characters".into());
        }
        if self.server.listen == self.server.admin_listen && self.server.listen.port() != 0 {
            bad("server.admin_listen", "must differ from server.listen".into());
        }
        if let Some(secret) = &self.server.secret {
            if secret.len() < 16 {
                bad("server.secret", "must be at least 16 characters".into());
            }
        }
        if self.store.backend == StoreBackend::Redis {
            match self.store.redis_url.as_deref() {
                None => bad("store.redis_url", "is required when store.backend = \"redis\"".into()),
                Some(urls) => {
                    let seeds: Vec<&str> = urls.split(',').map(str::trim).collect();
                    if seeds.len() > 1 && !self.store.redis_cluster {
                        bad("store.redis_url", "several URLs need store.redis_cluster = true".into());
                    }
                    for url in seeds {
                        if !(url.starts_with("redis://")
                            || url.starts_with("rediss://")
                            || url.starts_with("unix://"))
                        {
                            bad("store.redis_url", "must start with redis://, rediss:// or unix://".into());
                        }
                    }
                }
            }
        }
        if !(0.0..=100.0).contains(&self.limits.reserve_percent) {
            bad(
                "limits.reserve_percent",
                format!("must be between 0 and 100, got {}", self.limits.reserve_percent),
            );
        }
        if self.store.redis_timeout.is_zero() {
            bad("store.redis_timeout", "must be greater than zero".into());
        }
        if self.store.hot_max_bytes == 0 {
            bad("store.hot_max_bytes", "must be greater than zero".into());
        }
        if self.webhooks.read_timeout.is_zero() {
            bad("webhooks.read_timeout", "must be greater than zero".into());
        }
        if self.webhooks.max_concurrent == 0 {
            bad("webhooks.max_concurrent", "must be greater than zero".into());
        }
        for (i, secret) in self.webhooks.secrets.iter().enumerate() {
            if secret.is_empty() {
                bad(
                    &format!("webhooks.secrets[{i}]"),
                    "must not be empty: anyone can sign a delivery with an empty key".into(),
                );
            }
        }
        if self.server.header_read_timeout.is_zero() {
            bad("server.header_read_timeout", "must be greater than zero".into());
        }
        if !(8192..=1 << 20).contains(&self.server.max_header_bytes) {
            bad("server.max_header_bytes", "must be between 8192 and 1048576".into());
        }
        if self.server.max_connections == 0 {
            bad("server.max_connections", "must be greater than zero".into());
        }
        if self.server.http2_keep_alive.is_zero() {
            bad("server.http2_keep_alive", "must be greater than zero".into());
        }
        if self.server.max_body_bytes == 0 {
            bad("server.max_body_bytes", "must be greater than zero".into());
        }
        if self.server.workers > 1024 {
            bad(
                "server.workers",
                format!("must be at most 1024 (0: one per CPU), got {}", self.server.workers),
            );
        }
        if self.upstream.timeout.is_zero() {
            bad("upstream.timeout", "must be greater than zero".into());
        }
        if self.upstream.connect_timeout.is_zero() {
            bad("upstream.connect_timeout", "must be greater than zero".into());
        }
        if self.cache.max_bytes == 0 {
            bad("cache.max_bytes", "must be greater than zero".into());
        }
        if self.cache.max_body_bytes > self.cache.max_bytes {
            bad("cache.max_body_bytes", "must not exceed cache.max_bytes".into());
        }
        for (i, prefix) in self.cache.bypass_paths.iter().enumerate() {
            if !prefix.starts_with('/') {
                bad(&format!("cache.bypass_paths[{i}]"), format!("must start with '/', got {prefix:?}"));
            }
        }
        for (i, rule) in self.cache.rules.iter().enumerate() {
            if let (Some(min), Some(max)) = (rule.min_fresh, rule.max_fresh) {
                if min > max {
                    bad(&format!("cache.rules[{i}].min_fresh"), "must not exceed max_fresh".into());
                }
            }
        }
        self.validate_broker(&mut bad);
        self.validate_graphql(&mut bad);
        // Whether each rule compiles is `negative::check_settings`'s question.
        for (i, rule) in self.negative.rules.iter().enumerate() {
            if ["statuses_limit", "not_found", "app_not_installed"].contains(&rule.name.as_str())
                || self.negative.rules[..i].iter().any(|r| r.name == rule.name)
            {
                bad(&format!("negative.rules[{i}].name"), format!("{:?} is already taken", rule.name));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(ConfigErrors(errors)) }
    }

    fn validate_graphql(&self, bad: &mut impl FnMut(&str, String)) {
        if self.graphql.max_body_bytes == 0 {
            bad("graphql.max_body_bytes", "must be greater than zero".into());
        }
        for (i, rule) in self.graphql.rules.iter().enumerate() {
            let key = |k: &str| format!("graphql.rules[{i}].{k}");
            match (&rule.operation, &rule.fields) {
                (Some(_), Some(_)) => bad(&key("operation"), "give operation or fields, not both".into()),
                (None, None) => bad(&key("operation"), "give operation or fields".into()),
                (Some(name), None) if name.trim().is_empty() => {
                    bad(&key("operation"), "must not be empty".into())
                }
                (None, Some(fields)) if fields.is_empty() || fields.iter().any(|f| f.trim().is_empty()) => {
                    bad(&key("fields"), "must list at least one field name, none empty".into())
                }
                _ => {}
            }
            if rule.ttl.is_zero() {
                bad(&key("ttl"), "must be greater than zero".into());
            }
        }
    }

    fn validate_broker(&self, bad: &mut impl FnMut(&str, String)) {
        let mut names = std::collections::HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            let key = |k: &str| format!("apps[{i}].{k}");
            if app.name.trim().is_empty() {
                bad(&key("name"), "must not be empty".into());
            } else if !names.insert(app.name.as_str()) {
                bad(&key("name"), format!("app {:?} is defined twice", app.name));
            }
            match (&app.app_id, &app.client_id) {
                (None, None) => bad(&key("app_id"), format!("app {:?} needs app_id or client_id", app.name)),
                (Some(id), _) if id.parse::<u64>().is_err() => {
                    bad(&key("app_id"), format!("app {:?}: app_id must be a number, got {id:?}", app.name))
                }
                _ => {}
            }
            match (&app.private_key_path, &app.private_key_env) {
                (None, None) => bad(
                    &key("private_key_path"),
                    format!("app {:?} needs private_key_path or private_key_env", app.name),
                ),
                (Some(_), Some(_)) => bad(
                    &key("private_key_path"),
                    format!("app {:?}: give private_key_path or private_key_env, not both", app.name),
                ),
                // Whether the key loads and parses is `app_auth::check_settings`'s question.
                _ => {}
            }
        }
        let mut hashes = std::collections::HashSet::new();
        for (i, client) in self.clients.iter().enumerate() {
            let key = |k: &str| format!("clients[{i}].{k}");
            let hash = client.key_sha256.trim().to_ascii_lowercase();
            if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                bad(
                    &key("key_sha256"),
                    format!("client {:?}: must be 64 hex digits (a SHA-256)", client.name),
                );
            } else if !hashes.insert(hash) {
                bad(
                    &key("key_sha256"),
                    format!("client {:?}: the same key is configured twice", client.name),
                );
            }
            if !self.apps.iter().any(|a| a.name == client.app) {
                bad(
                    &key("app"),
                    format!("client {:?} names app {:?}, which is not in [[apps]]", client.name, client.app),
                );
            }
            for (perm, level) in &client.permissions {
                if !matches!(level.as_str(), "read" | "write" | "admin") {
                    bad(
                        &key(&format!("permissions.{perm}")),
                        format!("must be \"read\", \"write\" or \"admin\", got {level:?}"),
                    );
                }
            }
        }
        let b = &self.broker;
        if b.token_refresh_buffer >= Duration::from_secs(3300) {
            bad("broker.token_refresh_buffer", "must be well under a token's 1 hour lifetime".into());
        }
        if b.settle_retry_interval.is_zero() {
            bad("broker.settle_retry_interval", "must be greater than zero".into());
        }
    }
}
