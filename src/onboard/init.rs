//! `partnerstack-sync init [--out FILE] [--force]`: a configuration file with fresh
//! secrets.
//!
//! The file is `config/default.toml` with every setting commented out (so each shows its
//! default and what it means) except the ones `init` decides: a generated webhook URL
//! token, two named API clients with generated tokens (`reader`: read; `admin`: read,
//! write, admin), and the PartnerStack keys when the environment has them (otherwise
//! they stay commented placeholders). It is created with mode 0600 (it holds secrets),
//! never over an existing file unless `--force` (then it is replaced whole, by a rename).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::auth::random_hex;
use crate::config::{DEFAULT_TOML, variables_of};

/// Where `init` writes unless `--out` says otherwise.
pub const DEFAULT_OUT: &str = "./partnerstack-sync.toml";
/// Random bytes in each generated token (hex: twice as many characters).
const TOKEN_BYTES: usize = 24;

/// `partnerstack-sync init` options.
#[derive(Debug, Clone, clap::Args)]
pub struct InitOptions {
    /// The file to write.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// Replace the file if it exists (its secrets are lost).
    #[arg(long)]
    pub force: bool,
}

/// The secrets a new configuration gets.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub webhook_token: String,
    pub reader_token: String,
    pub admin_token: String,
}

impl Secrets {
    pub fn generate() -> Secrets {
        Secrets {
            webhook_token: random_hex(TOKEN_BYTES),
            reader_token: random_hex(TOKEN_BYTES),
            admin_token: random_hex(TOKEN_BYTES),
        }
    }
}

/// The PartnerStack keys found in `env` (by any of their variables).
fn key_from(env: &HashMap<String, String>, setting: &str) -> Option<String> {
    variables_of(setting)
        .iter()
        .find_map(|var| env.get(var))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A TOML string.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The file's text: the defaults commented out, with `values` (section, key, TOML value)
/// set, and the API clients appended.
pub fn render(secrets: &Secrets, env: &HashMap<String, String>) -> String {
    let public_key = key_from(env, "partnerstack.public_key");
    let secret_key = key_from(env, "partnerstack.secret_key");
    let mut values: Vec<(&str, &str, String)> = vec![(
        "webhooks",
        "tokens",
        format!("[{}]", quoted(&secrets.webhook_token)),
    )];
    if let (Some(p), Some(s)) = (&public_key, &secret_key) {
        values.push(("partnerstack", "public_key", quoted(p)));
        values.push(("partnerstack", "secret_key", quoted(s)));
    }
    let mut out = String::from(
        "# partnerstack-sync configuration, written by `partnerstack-sync init`. It holds secrets:\n\
         # keep it private (it was created readable by its owner only).\n\
         #\n\
         # Below, every setting with its default, commented out; the ones `init` chose are set.\n\
         # Uncomment a line to change it. Environment variables still override this file.\n\
         # The defaults' own notes follow.\n\
         #\n",
    );
    let mut section = String::new();
    for line in DEFAULT_TOML.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = name.to_string();
            let _ = writeln!(out, "{line}");
            continue;
        }
        let setting = (!trimmed.starts_with('#'))
            .then(|| trimmed.split_once('='))
            .flatten()
            .map(|(key, _)| key.trim());
        match setting {
            Some(key) => match values.iter().find(|(s, k, _)| *s == section && *k == key) {
                Some((_, _, value)) => {
                    let _ = writeln!(out, "{key} = {value}");
                }
                None if section == "partnerstack"
                    && (key == "public_key" || key == "secret_key") =>
                {
                    let _ = writeln!(
                        out,
                        "# {key} = \"...\"   # yours, from PartnerStack's settings (API keys)"
                    );
                }
                None => {
                    let _ = writeln!(out, "# {line}");
                }
            },
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    let _ = write!(
        out,
        "\n# The API clients `init` made (see [api] above): each service that calls /v1 should\n\
         # get a client of its own; add [[api.clients]] tables like these.\n\
         [[api.clients]]\n\
         name = \"reader\"\n\
         token = {}\n\
         scopes = [\"read\"]\n\
         \n\
         [[api.clients]]\n\
         name = \"admin\"\n\
         token = {}\n\
         scopes = [\"read\", \"write\", \"admin\"]\n",
        quoted(&secrets.reader_token),
        quoted(&secrets.admin_token),
    );
    out
}

/// Writes a new configuration to `options.out` (refusing an existing file unless
/// `force`); what to do next, to print.
pub fn run(options: &InitOptions, env: &HashMap<String, String>) -> anyhow::Result<String> {
    let secrets = Secrets::generate();
    let text = render(&secrets, env);
    let out = &options.out;
    if options.force {
        replace(out, &text)?;
    } else {
        create_new(out, &text).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} exists; it was left as it is (its secrets may be in use). Use --force to \
                 replace it, or --out for another file",
                out.display()
            ),
            _ => anyhow::anyhow!("writing {}: {e}", out.display()),
        })?;
    }
    let keys_set = key_from(env, "partnerstack.public_key").is_some()
        && key_from(env, "partnerstack.secret_key").is_some();
    Ok(next_steps(out, &secrets, keys_set))
}

/// Creates `path` (0600) with `text`; fails if it exists.
fn create_new(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Replaces `path` whole: a new file beside it, renamed over it.
fn replace(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".init-{}", random_hex(4)));
    let temporary = path.with_file_name(name);
    create_new(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    if let Err(e) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        bail!("replacing {}: {e}", path.display());
    }
    Ok(())
}

/// What `init` prints: the file, the keys to set, how to run, the webhook address.
fn next_steps(out: &Path, secrets: &Secrets, keys_set: bool) -> String {
    let file = out.display();
    let keys = if keys_set {
        "the PartnerStack API keys were taken from the environment and are in the file".to_string()
    } else {
        format!(
            "set your PartnerStack API keys (the public and the secret key of your account):\n\
             \x20    export PARTNERSTACK_PUBLIC_KEY=pk_... PARTNERSTACK_SECRET_KEY=sk_...\n\
             \x20  or write them as public_key and secret_key under [partnerstack] in {file}"
        )
    };
    let short: String = secrets.webhook_token.chars().take(4).collect();
    format!(
        "wrote {file} (readable by you only): a webhook token, and API clients `reader` (read)\n\
         and `admin` (read, write, admin), whose tokens are in the file.\n\
         \n\
         Next:\n\
         \x20 1. {keys}\n\
         \x20 2. run the service (it listens on 127.0.0.1:8080; server.listen changes that):\n\
         \x20    cargo run --release -- --config {file}\n\
         \x20 3. make it reachable over https (a TLS-terminating load balancer or proxy in front),\n\
         \x20    then register its webhook with PartnerStack:\n\
         \x20    cargo run --release -- --config {file} webhooks register --url https://YOUR-HOST\n\
         \x20    PartnerStack will deliver to https://YOUR-HOST/webhooks/partnerstack/{short}… (the token\n\
         \x20    under [webhooks] in {file}). With the embedded Postgres (no DATABASE_URL), stop the\n\
         \x20    service while a `webhooks` command runs: one process at a time opens its data.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn secrets() -> Secrets {
        Secrets {
            webhook_token: "w".repeat(48),
            reader_token: "r".repeat(48),
            admin_token: "a".repeat(48),
        }
    }

    #[test]
    fn the_file_loads_with_its_secrets_and_every_other_setting_at_its_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psync.toml");
        let env: HashMap<String, String> = [
            ("PARTNERSTACK_PUBLIC_KEY", "pk_from_env"),
            ("PSYNC_PARTNERSTACK_SECRET_KEY", "sk_from_env"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        std::fs::write(&path, render(&secrets(), &env)).unwrap();
        let config = Config::load_with_env(Some(&path), &HashMap::new()).unwrap();
        let defaults = Config::load_with_env(None, &HashMap::new()).unwrap();
        assert_eq!(config.webhooks.tokens.len(), 1);
        let names: Vec<&str> = config.api.clients.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["reader", "admin"]);
        assert!(config.partnerstack.credentials().is_some());
        assert_eq!(config.server.listen, defaults.server.listen);
        assert_eq!(config.reconcile.streams, defaults.reconcile.streams);
        // Without keys in the environment they stay placeholders.
        std::fs::write(&path, render(&secrets(), &HashMap::new())).unwrap();
        let config = Config::load_with_env(Some(&path), &HashMap::new()).unwrap();
        assert!(config.partnerstack.credentials().is_none());
    }
}
