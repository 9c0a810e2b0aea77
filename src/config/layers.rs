//! The layering engine: the compiled-in defaults, then an optional `--config` file, then
//! the environment, merged into one TOML table, with the origin of every value the file
//! or the environment set (the variable, or the file and line), so an error can name the
//! layer that was wrong.
//!
//! Written here rather than taken from a crate (figment): a variable is typed like the
//! default it replaces (a token of digits stays text, a list is comma-separated), which a
//! generic provider cannot know, and the origins cost a map.
//!
//! Every setting has a variable named after it ([`env_var`]); the older names in
//! [`LEGACY_ENV`] keep working. Lists of named tables (`[[relay]]`) take their entries from
//! variables too, one per field ([`NamedList`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::ConfigError;

/// The compiled-in defaults; `config/default.toml` in the repository.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// The prefix of every setting's variable ([`env_var`]).
const ENV_PREFIX: &str = "PSYNC_";

/// Variables documented before the derived names, and the setting each sets. They keep
/// working; with the derived name also set, both must agree.
pub const LEGACY_ENV: &[(&str, &str)] = &[
    ("PSYNC_LISTEN", "server.listen"),
    ("PSYNC_REQUEST_TIMEOUT", "server.request_timeout"),
    ("PSYNC_ADMIN_LISTEN", "server.admin_listen"),
    ("PSYNC_KEEPALIVE_TIMEOUT", "server.keepalive_timeout"),
    ("PSYNC_MAX_CONNECTIONS", "server.max_connections"),
    ("PSYNC_STATUS_PAGE", "server.status_page"),
    ("DATABASE_URL", "database.url"),
    ("PSYNC_DATA_DIR", "database.data_dir"),
    ("PSYNC_WEBHOOK_TOKENS", "webhooks.tokens"),
    ("PSYNC_WEBHOOK_SIGNING_SECRETS", "webhooks.signing_secrets"),
    (
        "PSYNC_WEBHOOK_SIGNATURE_HEADER",
        "webhooks.signature_header",
    ),
    ("PSYNC_WEBHOOK_BODY_LIMIT", "webhooks.body_limit"),
    ("PSYNC_WEBHOOK_VERIFICATION", "webhooks.verification"),
    ("PARTNERSTACK_BASE_URL", "partnerstack.base_url"),
    ("PARTNERSTACK_PUBLIC_KEY", "partnerstack.public_key"),
    ("PARTNERSTACK_SECRET_KEY", "partnerstack.secret_key"),
    ("PARTNERSTACK_PAGE_SIZE", "partnerstack.page_size"),
    (
        "PARTNERSTACK_REQUESTS_PER_SECOND",
        "partnerstack.requests_per_second",
    ),
    ("PSYNC_WEBHOOK_STREAMS", "reconcile.webhook_streams"),
    ("PSYNC_STALENESS_BOUND", "reconcile.staleness_bound"),
];

/// Variables with the settings prefix that are not settings (read elsewhere).
const OTHER_PSYNC_VARS: &[&str] = &["PSYNC_DEMO_DATA_DIR"];

/// The lists of named tables the environment can add entries to.
const NAMED_LISTS: &[NamedList] = &[
    NamedList {
        setting: "relay",
        what: "relay",
        prefix: "PSYNC_RELAY_",
        fields: &[
            ("_URL", "url", Kind::Text),
            ("_SECRET", "secret", Kind::Text),
            ("_ENTITIES", "entities", Kind::List),
        ],
    },
    NamedList {
        setting: "api.clients",
        what: "client",
        prefix: "PSYNC_API_CLIENT_",
        fields: &[
            ("_TOKEN", "token", Kind::Text),
            ("_TOKEN_SHA256", "token_sha256", Kind::Text),
            ("_SCOPES", "scopes", Kind::List),
        ],
    },
];

/// A list of named tables (`[[relay]]`) whose entries the environment can also define, one
/// variable per field: `<prefix><NAME><suffix>` (`PSYNC_RELAY_BILLING_URL`). `<NAME>`
/// lower-cased is the entry's `name`; a variable sets that field of the entry with that
/// name, which is added when the file has none. A variable with the prefix and another
/// ending is an error, so a typo is not silently ignored.
struct NamedList {
    /// The list's dotted path (`relay`).
    setting: &'static str,
    /// What an entry is called in errors ("not a relay setting").
    what: &'static str,
    /// What every variable of the list starts with.
    prefix: &'static str,
    /// Each variable's ending, the field it sets, and how its value is read.
    fields: &'static [(&'static str, &'static str, Kind)],
}

/// How a variable's text becomes a TOML value.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// The text, trimmed.
    Text,
    /// Comma-separated, blank items dropped.
    List,
}

/// The variable that sets `setting` (`server.listen` → `PSYNC_SERVER_LISTEN`).
pub fn env_var(setting: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        setting.replace('.', "_").to_ascii_uppercase()
    )
}

/// Every setting `config/default.toml` declares, as dotted paths (`server.listen`,
/// `partnerstack.paths.customers`), in file order.
pub fn settings() -> Vec<String> {
    let table: toml::Table = DEFAULT_TOML.parse().unwrap_or_default();
    let mut out = Vec::new();
    leaves(&table, "", &mut out);
    out
}

/// The variables that set `setting`: its derived name, and its older one if it has one.
pub fn variables_of(setting: &str) -> Vec<String> {
    let derived = env_var(setting);
    let older = LEGACY_ENV
        .iter()
        .filter(|(var, s)| *s == setting && **var != derived)
        .map(|(var, _)| var.to_string());
    std::iter::once(derived.clone()).chain(older).collect()
}

/// Every variable that sets a setting, with the setting: the derived names, then the
/// legacy ones.
pub fn environment_variables() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> =
        settings().into_iter().map(|s| (env_var(&s), s)).collect();
    for (var, setting) in LEGACY_ENV {
        if !vars.iter().any(|(v, _)| v == var) {
            vars.push((var.to_string(), setting.to_string()));
        }
    }
    vars
}

/// Variables that look like settings (`PSYNC_...`) but set none: most likely a typo, so
/// the service says so at start-up.
pub(super) fn unknown_variables(env: &HashMap<String, String>) -> Vec<String> {
    let known = environment_variables();
    let mut unknown: Vec<String> = env
        .keys()
        .filter(|var| var.starts_with(ENV_PREFIX))
        .filter(|var| !NAMED_LISTS.iter().any(|list| var.starts_with(list.prefix)))
        .filter(|var| !OTHER_PSYNC_VARS.contains(&var.as_str()))
        .filter(|var| !known.iter().any(|(k, _)| k == *var))
        .map(|var| format!("{var} is not a setting; it is ignored"))
        .collect();
    unknown.sort();
    unknown
}

/// The layers merged: one TOML table, and where each value the defaults did not give came
/// from.
pub(super) struct Layers {
    defaults: toml::Table,
    table: toml::Table,
    origins: Origins,
}

impl Layers {
    /// The defaults, then `file`, then the settings' variables in `env`, then the named
    /// lists' entries in `env`.
    pub(super) fn read(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Layers, ConfigError> {
        let defaults: toml::Table = DEFAULT_TOML
            .parse()
            .map_err(|e| ConfigError(format!("built-in defaults do not parse: {e}")))?;
        let mut layers = Layers {
            table: defaults.clone(),
            defaults,
            origins: Origins::default(),
        };
        if let Some(path) = file {
            layers.add_file(path)?;
        }
        let settings_vars = environment_variables();
        layers.add_env(&settings_vars, env)?;
        for list in NAMED_LISTS {
            layers.add_named(list, &settings_vars, env)?;
        }
        Ok(layers)
    }

    /// The merged table as `T`. An error names the setting and where its value came from,
    /// on one line.
    pub(super) fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(self.table.clone())).map_err(|e| {
            let setting = e.path().to_string();
            // toml's message repeats the path on a line of its own.
            let why = e.inner().to_string();
            self.error(&setting, why.lines().next().unwrap_or_default())
        })
    }

    /// Whether the file or the environment set `setting` (else it has its default).
    pub(super) fn sets(&self, setting: &str) -> bool {
        self.origins.get(setting).is_some()
    }

    /// "`setting` (where its value came from): `why`".
    pub(super) fn error(&self, setting: &str, why: &str) -> ConfigError {
        ConfigError(format!("{}: {why}", self.origins.describe(setting)))
    }

    fn add_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let overlay: toml::Table = text
            .parse()
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let lines = key_lines(&text);
        let mut set = Vec::new();
        leaves(&overlay, "", &mut set);
        for setting in set {
            let line = lines.get(&setting).copied();
            self.origins
                .set(&setting, Origin::File(path.to_path_buf(), line));
        }
        merge(&mut self.table, overlay);
        Ok(())
    }

    /// The settings' variables ([`environment_variables`]); two names of one setting set
    /// differently are refused.
    fn add_env(
        &mut self,
        settings_vars: &[(String, String)],
        env: &HashMap<String, String>,
    ) -> Result<(), ConfigError> {
        let mut by_setting: BTreeMap<&str, (&str, &String)> = BTreeMap::new();
        for (var, setting) in settings_vars {
            let Some(value) = env.get(var) else { continue };
            if let Some((other, earlier)) = by_setting.get(setting.as_str())
                && earlier.trim() != value.trim()
            {
                return Err(ConfigError(format!(
                    "{other} and {var} both set {setting}, differently; set one of them"
                )));
            }
            self.set_from_env(setting, var, value)?;
            self.origins.set(setting, Origin::Env(var.clone()));
            by_setting.insert(setting, (var, value));
        }
        Ok(())
    }

    /// Writes an environment value into the table, typed like the default it replaces (not
    /// like a file's value, which may be the wrong one), so an ill-typed variable is
    /// reported with its own name.
    fn set_from_env(&mut self, setting: &str, var: &str, raw: &str) -> Result<(), ConfigError> {
        let (tables, field) = setting.rsplit_once('.').unwrap_or(("", setting));
        let missing = || ConfigError(format!("{var}: no section for {setting}"));
        let default = section(&self.defaults, tables).ok_or_else(missing)?;
        let bad = |expected: &str| ConfigError(format!("{var}: expected {expected}, got {raw:?}"));
        let value = match default.get(field) {
            Some(toml::Value::Integer(_)) => {
                toml::Value::Integer(raw.trim().parse().map_err(|_| bad("a whole number"))?)
            }
            Some(toml::Value::Float(_)) => {
                toml::Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?)
            }
            Some(toml::Value::Boolean(_)) => {
                toml::Value::Boolean(match raw.trim().to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("true or false")),
                })
            }
            Some(toml::Value::Array(_)) => Kind::List.read(raw),
            _ => Kind::Text.read(raw),
        };
        let section = section_mut(&mut self.table, tables).ok_or_else(missing)?;
        section.insert(field.to_string(), value);
        Ok(())
    }

    /// The entries `list`'s variables define, added to the list or merged into the entry
    /// of the same name. Variables are read in sorted order, so new entries are too.
    fn add_named(
        &mut self,
        list: &NamedList,
        settings_vars: &[(String, String)],
        env: &HashMap<String, String>,
    ) -> Result<(), ConfigError> {
        let mut vars: Vec<(&String, &String)> = env
            .iter()
            .filter(|(var, _)| var.starts_with(list.prefix))
            .filter(|(var, _)| !settings_vars.iter().any(|(v, _)| v == *var))
            .collect();
        vars.sort();
        for (var, value) in vars {
            let (name, field, kind) = list.parse(var)?;
            let (index, entry) = self.entry(list, &name, var)?;
            entry.insert(field.to_string(), kind.read(value));
            let origin = Origin::Env(var.clone());
            self.origins
                .set(&format!("{}[{index}].{field}", list.setting), origin);
        }
        Ok(())
    }

    /// The position and table of `list`'s entry named `name`, added (its origin `var`)
    /// when there is none.
    fn entry(
        &mut self,
        list: &NamedList,
        name: &str,
        var: &str,
    ) -> Result<(usize, &mut toml::Table), ConfigError> {
        let (tables, key) = list.setting.rsplit_once('.').unwrap_or(("", list.setting));
        let not_a_list = || {
            ConfigError(format!(
                "{}: must be a list of [[{}]] tables",
                list.setting, list.setting
            ))
        };
        let entries = section_mut(&mut self.table, tables)
            .ok_or_else(not_a_list)?
            .entry(key)
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        let toml::Value::Array(entries) = entries else {
            return Err(not_a_list());
        };
        let found = entries
            .iter()
            .position(|t| t.get("name").and_then(toml::Value::as_str) == Some(name));
        let index = match found {
            Some(i) => i,
            None => {
                let mut entry = toml::Table::new();
                entry.insert("name".into(), toml::Value::String(name.to_string()));
                entries.push(toml::Value::Table(entry));
                let i = entries.len() - 1;
                let origin = Origin::Env(var.to_string());
                self.origins.set(&format!("{}[{i}]", list.setting), origin);
                i
            }
        };
        match &mut entries[index] {
            toml::Value::Table(entry) => Ok((index, entry)),
            _ => Err(ConfigError(format!(
                "{} {name:?}: must be a table",
                list.what
            ))),
        }
    }
}

impl NamedList {
    /// The entry's name (lower-cased) and the field `var` sets. Where one ending ends
    /// another (`_SHA256`, `_TOKEN_SHA256`), the longer wins.
    fn parse(&self, var: &str) -> Result<(String, &'static str, Kind), ConfigError> {
        let rest = &var[self.prefix.len()..];
        self.fields
            .iter()
            .filter_map(|(suffix, field, kind)| {
                let name = rest.strip_suffix(suffix).filter(|n| !n.is_empty())?;
                Some((suffix.len(), (name.to_ascii_lowercase(), *field, *kind)))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, parsed)| parsed)
            .ok_or_else(|| {
                let endings: Vec<&str> = self.fields.iter().map(|(suffix, ..)| *suffix).collect();
                let (last, others) = endings.split_last().unwrap_or((&"", &[]));
                let others = others.join(", ");
                ConfigError(format!(
                    "{var}: not a {} setting; use {}<NAME>{others} or {last}",
                    self.what, self.prefix
                ))
            })
    }
}

impl Kind {
    fn read(self, raw: &str) -> toml::Value {
        match self {
            Kind::Text => toml::Value::String(raw.trim().to_string()),
            Kind::List => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            ),
        }
    }
}

/// The table at dotted path `path` (`""` is `table` itself).
fn section<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Table> {
    path.split('.')
        .filter(|n| !n.is_empty())
        .try_fold(table, |t, name| t.get(name)?.as_table())
}

/// [`section`], to change.
fn section_mut<'a>(table: &'a mut toml::Table, path: &str) -> Option<&'a mut toml::Table> {
    path.split('.')
        .filter(|n| !n.is_empty())
        .try_fold(table, |t, name| t.get_mut(name)?.as_table_mut())
}

/// The dotted paths of the values in `table` (tables of tables walked; `[[relay]]`
/// entries as `relay[0].url`).
fn leaves(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        match value {
            toml::Value::Table(t) => leaves(t, &format!("{path}."), out),
            toml::Value::Array(items)
                if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
            {
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(t) = item {
                        leaves(t, &format!("{path}[{i}]."), out);
                    }
                }
            }
            _ => out.push(path),
        }
    }
}

/// Deep-merges `overlay` into `base`: tables merge key by key, everything else replaces.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The line (1-based) of each key a TOML text sets, by dotted path; `[[relay]]` entries
/// as `relay[0].url`.
fn key_lines(text: &str) -> HashMap<String, usize> {
    fn walk(
        table: &toml::de::DeTable<'_>,
        prefix: &str,
        text: &str,
        out: &mut HashMap<String, usize>,
    ) {
        let line = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
        for (key, value) in table {
            let path = format!("{prefix}{}", key.get_ref());
            match value.get_ref() {
                toml::de::DeValue::Table(t) => walk(t, &format!("{path}."), text, out),
                toml::de::DeValue::Array(items) => {
                    out.insert(path.clone(), line(key.span().start));
                    for (i, item) in items.iter().enumerate() {
                        if let toml::de::DeValue::Table(t) = item.get_ref() {
                            walk(t, &format!("{path}[{i}]."), text, out);
                        }
                    }
                }
                _ => {
                    out.insert(path, line(key.span().start));
                }
            }
        }
    }
    let mut out = HashMap::new();
    if let Ok(table) = toml::de::DeTable::parse(text) {
        walk(table.get_ref(), "", text, &mut out);
    }
    out
}

/// Where a setting's value came from (the defaults, when none is recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// A `--config` file, and the line of its key when known.
    File(PathBuf, Option<usize>),
    Env(String),
}

/// The origin of each setting a file or the environment set, by dotted path
/// (`server.listen`, `relay[0].url`).
#[derive(Debug, Default)]
struct Origins(HashMap<String, Origin>);

impl Origins {
    fn set(&mut self, setting: &str, origin: Origin) {
        self.0.insert(setting.to_string(), origin);
    }

    fn get(&self, setting: &str) -> Option<&Origin> {
        self.0.get(setting)
    }

    /// "webhooks.tokens (env PSYNC_WEBHOOKS_TOKENS)", "server.listen (/etc/psync.toml,
    /// line 3)", or just the setting when it is the default. A list element's path
    /// (`reconcile.streams[1]`) is named as "entry 2" of the list.
    fn describe(&self, setting: &str) -> String {
        let (base, entry) = match setting.rsplit_once('[') {
            Some((base, rest)) if rest.ends_with(']') && !base.is_empty() => (
                base,
                rest.trim_end_matches(']')
                    .parse::<usize>()
                    .ok()
                    .map(|i| format!(", entry {}", i + 1)),
            ),
            _ => (setting, None),
        };
        // The nearest recorded origin: the setting's own, else its list's or table's.
        let origin = [setting, base]
            .into_iter()
            .chain(ancestors(base))
            .find_map(|s| self.get(s));
        let entry = entry.unwrap_or_default();
        match origin {
            Some(Origin::Env(var)) => format!("{base} (env {var}){entry}"),
            Some(Origin::File(path, Some(line))) => {
                format!("{base} ({}, line {line}){entry}", path.display())
            }
            Some(Origin::File(path, None)) => format!("{base} ({}){entry}", path.display()),
            None => format!("{base}{entry}"),
        }
    }
}

/// `relay[0].url` → `relay[0]`, `relay`.
fn ancestors(setting: &str) -> impl Iterator<Item = &str> {
    let mut rest = setting;
    std::iter::from_fn(move || {
        let cut = rest.rfind(['.', '['])?;
        rest = &rest[..cut];
        Some(rest)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries from the environment work for any list at any depth (as the API clients a
    /// later change adds will need): a setting's own variable under the prefix is left
    /// alone, and origins name each entry's variable.
    #[test]
    fn named_lists_serve_any_list() {
        const CLIENTS: NamedList = NamedList {
            setting: "api.clients",
            what: "client",
            prefix: "PSYNC_API_",
            fields: &[
                ("_TOKEN", "token", Kind::Text),
                ("_TOKEN_SHA256", "token_sha256", Kind::Text),
                ("_SCOPES", "scopes", Kind::List),
            ],
        };
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let vars = environment_variables();
        let mut layers = Layers::read(None, &HashMap::new()).unwrap();
        let set = env(&[
            ("PSYNC_API_OPS_TOKEN", " t "),
            ("PSYNC_API_CI_TOKEN_SHA256", "ab"),
            ("PSYNC_API_CI_SCOPES", "read, write,"),
            ("PSYNC_API_TOKENS", "not an entry"),
        ]);
        layers.add_named(&CLIENTS, &vars, &set).unwrap();
        let clients = section(&layers.table, "api")
            .and_then(|api| api.get("clients"))
            .and_then(toml::Value::as_array)
            .unwrap();
        let expected: Vec<toml::Value> = [
            "name = \"ci\"\ntoken_sha256 = \"ab\"\nscopes = [\"read\", \"write\"]",
            "name = \"ops\"\ntoken = \"t\"",
        ]
        .iter()
        .map(|t| toml::Value::Table(t.parse().unwrap()))
        .collect();
        assert_eq!(clients, &expected);
        assert_eq!(
            layers.origins.describe("api.clients[0].scopes"),
            "api.clients[0].scopes (env PSYNC_API_CI_SCOPES)"
        );
        let err = layers
            .add_named(&CLIENTS, &vars, &env(&[("PSYNC_API_CI_SCOPE", "read")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "PSYNC_API_CI_SCOPE: not a client setting; \
                 use PSYNC_API_<NAME>_TOKEN, _TOKEN_SHA256 or _SCOPES"
            ),
            "{err}"
        );
    }
}
