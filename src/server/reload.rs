//! Reloading the settings while serving, on SIGHUP or `POST /reload`: rotated secrets take
//! effect without a restart, so no replica drops its memory tier or its connections.
//!
//! A reload reads the settings the way start-up did (the same file, environment and flags),
//! checks them as `check-config` does, and applies them only when every changed key is one
//! that can change at run time ([`crate::config::RELOADABLE_KEYS`]). Anything else — a file
//! that does not parse, a key that fails its check, a changed listener — refuses the whole
//! reload with the reasons, and the settings in force stay as they were.

use std::sync::Arc;

use tracing::{info, warn};

use crate::config::SettingsSource;
use crate::pipeline::Gateway;

/// Reloads the gateway's settings from where they came from, one reload at a time.
pub(crate) struct Reloader {
    gateway: Arc<Gateway>,
    /// `None` for a gateway started in process from settings built in code: nothing to re-read.
    source: Option<SettingsSource>,
    turn: tokio::sync::Mutex<()>,
}

/// An applied reload: the reloadable keys that changed, and what could not take effect.
#[derive(Debug)]
pub(crate) struct Reloaded {
    pub(crate) changed: Vec<String>,
    /// A reloadable key that did not apply (a `log.level` while `RUST_LOG` is set).
    pub(crate) notes: Vec<String>,
}

/// Why a reload was refused: one line per problem, each naming its key.
#[derive(Debug)]
pub(crate) struct Refusal(pub(crate) Vec<String>);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl Reloader {
    pub(crate) fn new(gateway: Arc<Gateway>, source: Option<SettingsSource>) -> Reloader {
        gateway.metrics().last_reload_successful.set(1.0);
        Reloader { gateway, source, turn: tokio::sync::Mutex::new(()) }
    }

    /// Reloads, logs and counts the result. `trigger` names what asked (`SIGHUP`, `POST /reload`).
    pub(crate) async fn reload(&self, trigger: &'static str) -> Result<Reloaded, Refusal> {
        let _turn = self.turn.lock().await;
        let metrics = self.gateway.metrics();
        let result = match &self.source {
            Some(source) => {
                let source = source.clone();
                match tokio::task::spawn_blocking(move || source.load()).await {
                    Ok(loaded) => loaded.map_err(|errors| Refusal(lines(&errors.to_string()))),
                    Err(e) => Err(Refusal(vec![format!("reading the settings failed: {e}")])),
                }
                .and_then(|new| self.apply(new))
            }
            None => Err(Refusal(vec![
                "this gateway was started without a settings file or environment to read again".into(),
            ])),
        };
        match &result {
            Ok(reloaded) => {
                metrics.reload("applied").increment(1);
                metrics.last_reload_successful.set(1.0);
                info!(trigger, changed = ?reloaded.changed, "settings reloaded; app keys read again");
                for note in &reloaded.notes {
                    warn!(trigger, "{note}");
                }
            }
            Err(refusal) => {
                metrics.reload("refused").increment(1);
                metrics.last_reload_successful.set(0.0);
                warn!(trigger, reasons = %refusal, "reload refused; the settings in force are unchanged");
            }
        }
        result
    }

    /// Checks `new` against the settings in force and applies it.
    fn apply(&self, new: crate::config::Settings) -> Result<Reloaded, Refusal> {
        super::check_settings(&new).map_err(|errors| Refusal(lines(&errors.to_string())))?;
        let changes = self.gateway.applied_settings().changes_to(&new);
        if !changes.fixed.is_empty() {
            return Err(Refusal(
                changes
                    .fixed
                    .iter()
                    .map(|key| format!("{key}: cannot change while running; restart to apply it"))
                    .collect(),
            ));
        }
        let mut notes = Vec::new();
        if changes.reloadable.iter().any(|key| key == "log.level") {
            if let Err(e) = crate::telemetry::set_log_level(&new.log.level) {
                notes.push(e);
            }
        }
        self.gateway.apply_reload(new).map_err(|e| Refusal(vec![e]))?;
        Ok(Reloaded { changed: changes.reloadable, notes })
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}
