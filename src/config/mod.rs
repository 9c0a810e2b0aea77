//! Typed settings, loaded once at start-up.
//!
//! Three layers, later ones winning: `config/default.toml` (compiled in, documents every
//! setting), an optional file given with `--config`, then environment variables. Every
//! setting has a variable named after it ([`env_var`]: `server.listen` is
//! `PSYNC_SERVER_LISTEN`), and the names documented before that rule existed
//! ([`LEGACY_ENV`], e.g. `PSYNC_LISTEN`, `DATABASE_URL`) keep working. An error names the
//! layer that was wrong: the variable, or the file and line. Secrets are
//! [`SecretString`](secrecy::SecretString)s, so `Debug` output and logs show `[REDACTED]`.
//!
//! Split by job: `layers.rs` merges the layers and records each value's origin;
//! `settings.rs` is the typed structs, whose field types and readers (`fields.rs`) carry
//! the rules about one value; `validate.rs` checks the rules between settings. Loading
//! is the three in a row ([`Config::load_with_env`]).

mod fields;
mod layers;
mod settings;
mod validate;

use std::collections::HashMap;
use std::path::Path;

pub use layers::{
    DEFAULT_TOML, LEGACY_ENV, env_var, environment_variables, settings, variables_of,
};
pub use settings::{
    ApiClient, ApiConfig, ChangesConfig, Config, ConnectionCap, DatabaseConfig, LogConfig,
    LogFormat, PartnerStackConfig, ReconcileConfig, RelayEndpoint, RetentionConfig, ServerConfig,
    Verification, WebhookConfig, WritesConfig,
};

/// A configuration problem, worded for the person starting the service.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_with_env(file, &env)
    }

    /// Like [`Config::load`] with an explicit environment (tests use this).
    pub fn load_with_env(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let layers = layers::Layers::read(file, env)?;
        let mut config: Config = layers.deserialize()?;
        config.database.data_dir_is_default = !layers.sets("database.data_dir");
        config.warnings = layers::unknown_variables(env);
        validate::check(&config).map_err(|invalid| layers.error(&invalid.setting, &invalid.why))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
