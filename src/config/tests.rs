//! The settings as a whole: layering, origins named in errors, every rule checked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use partnerstack::Entity;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_load_and_match_the_documentation() {
    let c = Config::load_with_env(None, &env(&[])).expect("defaults are valid");
    assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert!(c.database.url.is_none());
    assert_eq!(c.database.data_dir, PathBuf::from("./data"));
    assert_eq!(c.webhooks.body_limit.get(), 1024 * 1024);
    assert_eq!(c.partnerstack.page_size, 250);
    assert_eq!(c.webhooks.verification, Verification::Auto);
    assert!(!c.webhooks.verifies(false) && c.webhooks.verifies(true));
    assert_eq!(c.reconcile.staleness_bound, Duration::from_secs(3600));
    assert_eq!(
        c.reconcile.webhook_streams,
        [
            Entity::Partner,
            Entity::Customer,
            Entity::Deal,
            Entity::Lead
        ]
    );
    assert_eq!(c.reconcile.interval, Some(Duration::from_secs(300)));
    assert!(c.partnerstack.credentials().is_none());
    assert_eq!(c.log.format, LogFormat::Pretty);
    assert!(c.server.status_page);
}

#[test]
fn environment_overrides_file_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:9000\"\n[partnerstack]\npage_size = 50\n",
    )
    .unwrap();
    let c = Config::load_with_env(
        Some(&path),
        &env(&[
            ("PARTNERSTACK_PAGE_SIZE", "250"),
            (
                "PSYNC_WEBHOOK_TOKENS",
                "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb,",
            ),
            ("PSYNC_RECONCILE_INTERVAL", "off"),
            ("PSYNC_LOG_FORMAT", "json"),
            ("PSYNC_STATUS_PAGE", "False"),
        ]),
    )
    .unwrap();
    assert!(!c.server.status_page);
    assert_eq!(c.server.listen.port(), 9000);
    assert_eq!(c.partnerstack.page_size, 250);
    assert_eq!(c.webhooks.tokens.len(), 2);
    assert_eq!(c.reconcile.interval, None);
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn errors_name_the_setting_and_variable() {
    let cases = [
        (
            ("PSYNC_LISTEN", "nonsense"),
            "server.listen (env PSYNC_LISTEN)",
        ),
        (
            ("PARTNERSTACK_PAGE_SIZE", "251"),
            "partnerstack.page_size (env PARTNERSTACK_PAGE_SIZE)",
        ),
        (
            ("PARTNERSTACK_PAGE_SIZE", "ten"),
            "PARTNERSTACK_PAGE_SIZE: expected a whole number",
        ),
        (
            ("PSYNC_WEBHOOK_TOKENS", "short"),
            "webhooks.tokens (env PSYNC_WEBHOOK_TOKENS)",
        ),
        (
            ("PSYNC_RECONCILE_INTERVAL", "soon"),
            "reconcile.interval (env PSYNC_RECONCILE_INTERVAL)",
        ),
        (
            ("PSYNC_STATUS_PAGE", "yes"),
            "PSYNC_STATUS_PAGE: expected true or false",
        ),
        (
            ("PSYNC_LOG_FORMAT", "xml"),
            "log.format (env PSYNC_LOG_FORMAT)",
        ),
        (
            ("DATABASE_URL", "mysql://x"),
            "database.url (env DATABASE_URL)",
        ),
        (
            ("PARTNERSTACK_PUBLIC_KEY", "pk_only"),
            "partnerstack.public_key (env PARTNERSTACK_PUBLIC_KEY): set both API keys",
        ),
    ];
    for ((var, value), expected) in cases {
        let err = Config::load_with_env(None, &env(&[(var, value)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{var}={value}: {err}");
    }
}

#[test]
fn reconcile_settings_are_checked() {
    let err = Config::load_with_env(
        None,
        &env(&[("PSYNC_RECONCILE_STREAMS", "customers, custommers")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("reconcile.streams (env PSYNC_RECONCILE_STREAMS)")
            && err.contains("\"custommers\"")
            && err.contains("partnerships, customers, transactions, rewards, groups, deals, leads"),
        "{err}"
    );
    let c = Config::load_with_env(
        None,
        &env(&[("PSYNC_RECONCILE_STREAMS", "Customers,partners")]),
    )
    .unwrap();
    assert_eq!(c.reconcile.streams, [Entity::Customer, Entity::Partner]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    for (line, setting) in [
        ("max_delete_fraction = nan", "reconcile.max_delete_fraction"),
        ("max_delete_fraction = inf", "reconcile.max_delete_fraction"),
        ("max_delete_fraction = 1.5", "reconcile.max_delete_fraction"),
        (
            "max_delete_fraction = -0.1",
            "reconcile.max_delete_fraction",
        ),
        ("overlap = \"11years\"", "reconcile.overlap"),
        ("window = \"500000000years\"", "reconcile.window"),
        ("full_interval = \"20years\"", "reconcile.full_interval"),
        ("max_retry_delay = \"11years\"", "reconcile.max_retry_delay"),
        ("interval = \"11years\"", "reconcile.interval"),
    ] {
        std::fs::write(&path, format!("[reconcile]\n{line}\n")).unwrap();
        let err = Config::load_with_env(Some(&path), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(setting), "{line}: {err}");
    }
    for line in [
        "max_delete_fraction = 0.0",
        "max_delete_fraction = 1.0",
        "window = \"10years\"",
    ] {
        std::fs::write(&path, format!("[reconcile]\n{line}\n")).unwrap();
        assert!(
            Config::load_with_env(Some(&path), &env(&[])).is_ok(),
            "{line}"
        );
    }
}

#[test]
fn the_data_dir_is_explicit_when_a_file_or_the_environment_sets_it() {
    let default = Config::load_with_env(None, &env(&[])).unwrap();
    assert!(default.database.data_dir_is_default);

    // Set to the default's own value, it is still an explicit choice.
    let by_env = Config::load_with_env(None, &env(&[("PSYNC_DATA_DIR", "./data")])).unwrap();
    assert!(!by_env.database.data_dir_is_default);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[database]\ndata_dir = \"/srv/psync\"\n").unwrap();
    let by_file = Config::load_with_env(Some(&path), &env(&[])).unwrap();
    assert!(!by_file.database.data_dir_is_default);
    assert_eq!(by_file.database.data_dir, PathBuf::from("/srv/psync"));

    std::fs::write(&path, "[database]\nmax_connections = 4\n").unwrap();
    let other = Config::load_with_env(Some(&path), &env(&[])).unwrap();
    assert!(other.database.data_dir_is_default);
}

/// The comment block above `key`'s line in `section` of the defaults' text (the lines
/// after the previous key's).
fn documentation(setting: &str) -> String {
    let (section, key) = setting.rsplit_once('.').unwrap();
    let header = format!("[{section}]");
    let text = DEFAULT_TOML;
    let start = text
        .find(&format!("\n{header}\n"))
        .unwrap_or_else(|| panic!("{header}"));
    let lines: Vec<&str> = text[start..].lines().skip(2).collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} under {header}"));
    let mut block = Vec::new();
    for line in lines[..at].iter().rev() {
        if !line.starts_with('#') {
            break;
        }
        block.push(*line);
    }
    block.reverse();
    block.join("\n")
}

/// Every setting of `config/default.toml` (walked, so a new one cannot be missed) is
/// set by its variable, which its documentation names; so are the older names.
#[test]
fn every_setting_is_set_by_its_documented_variable() {
    let settings = settings();
    assert!(settings.len() >= 60, "{} settings", settings.len());
    let marker = "psync-marker";
    for (var, setting) in environment_variables() {
        // The marker is invalid for almost every setting, so the error must name the
        // variable; where text of any kind is accepted, it must show in the settings.
        match Config::load_with_env(None, &env(&[(&var, marker)])) {
            Err(e) => assert!(e.to_string().contains(&var), "{var}: {e}"),
            Ok(c) => assert!(
                format!("{c:?}").contains(marker),
                "{var} did not set {setting}"
            ),
        }
        let doc = documentation(&setting);
        assert!(
            doc.contains(&format!("Env: {}", env_var(&setting))),
            "{setting}'s documentation does not name {}:\n{doc}",
            env_var(&setting)
        );
        if var != env_var(&setting) {
            assert!(
                doc.contains(&format!("or {var}.")),
                "{setting}: {var}\n{doc}"
            );
        }
    }
    // A valid value takes effect, at every depth.
    let c = Config::load_with_env(
        None,
        &env(&[
            ("PSYNC_PARTNERSTACK_PATHS_PARTNERSHIPS", "/partners"),
            ("PSYNC_DATABASE_CONNECT_TIMEOUT", "5s"),
            ("PSYNC_WEBHOOKS_QUEUE_CAPACITY", "7"),
            ("PSYNC_RECONCILE_SCAN_SHARE", "0.25"),
            ("PSYNC_SERVER_STATUS_PAGE", "false"),
        ]),
    )
    .unwrap();
    assert_eq!(c.partnerstack.paths.partnerships, "/partners");
    assert_eq!(c.database.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.webhooks.queue_capacity.get(), 7);
    assert_eq!(c.reconcile.scan_share, 0.25);
    assert!(!c.server.status_page);
}

#[test]
fn errors_name_the_source_that_was_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[server]\nrequest_timeout = \"5s\"\nlisten = 5\n").unwrap();
    let file = path.display().to_string();
    let err = Config::load_with_env(Some(&path), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("server.listen ({file}, line 3)")),
        "{err}"
    );
    assert!(
        !err.contains("PSYNC_"),
        "the file was wrong, not a variable: {err}"
    );
    // A variable set over the file is what is named when it is wrong.
    let err = Config::load_with_env(Some(&path), &env(&[("PSYNC_SERVER_LISTEN", "nowhere")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.listen (env PSYNC_SERVER_LISTEN)"),
        "{err}"
    );
    // A checked setting names its file line too.
    std::fs::write(&path, "[partnerstack]\n\npage_size = 999\n").unwrap();
    let err = Config::load_with_env(Some(&path), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("partnerstack.page_size ({file}, line 3)")),
        "{err}"
    );
    // toml's own message stays on one line.
    assert!(!err.contains('\n'), "{err}");
    // The secret key alone is named as the one set.
    let err = Config::load_with_env(None, &env(&[("PARTNERSTACK_SECRET_KEY", "sk_x")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("partnerstack.secret_key (env PARTNERSTACK_SECRET_KEY)"),
        "{err}"
    );
}

#[test]
fn both_names_of_a_setting_must_agree() {
    let both = |a: &str, b: &str| {
        Config::load_with_env(
            None,
            &env(&[("PSYNC_LISTEN", a), ("PSYNC_SERVER_LISTEN", b)]),
        )
    };
    let c = both("127.0.0.1:9001", "127.0.0.1:9001").unwrap();
    assert_eq!(c.server.listen.port(), 9001);
    let err = both("127.0.0.1:9001", "127.0.0.1:9002")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("PSYNC_SERVER_LISTEN") && err.contains("PSYNC_LISTEN"),
        "{err}"
    );
}

#[test]
fn appliers_are_bounded_by_the_pool() {
    let with = |appliers: &str, connections: &str| {
        Config::load_with_env(
            None,
            &env(&[
                ("PSYNC_WEBHOOKS_APPLIERS", appliers),
                ("PSYNC_DATABASE_MAX_CONNECTIONS", connections),
            ]),
        )
    };
    assert_eq!(with("3", "16").unwrap().webhooks.appliers.get(), 3);
    for (appliers, connections) in [("0", "16"), ("17", "32"), ("4", "4")] {
        let err = with(appliers, connections).unwrap_err().to_string();
        assert!(err.contains("PSYNC_WEBHOOKS_APPLIERS"), "{err}");
    }
}

#[test]
fn variables_that_set_nothing_are_warned_about() {
    let c = Config::load_with_env(
        None,
        &env(&[
            ("PSYNC_SERVR_LISTEN", "x"),
            ("PSYNC_SERVER_LISTEN", "127.0.0.1:9000"),
            ("PSYNC_DEMO_DATA_DIR", "/tmp/x"),
            ("HOME", "/root"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.warnings,
        ["PSYNC_SERVR_LISTEN is not a setting; it is ignored"]
    );
}

#[test]
fn unknown_keys_in_a_file_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[server]\nlisten_addr = \"x\"\n").unwrap();
    let err = Config::load_with_env(Some(&path), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("listen_addr"), "{err}");
}

#[test]
fn secrets_never_show_in_debug_output() {
    let c = Config::load_with_env(
        None,
        &env(&[
            ("PSYNC_WEBHOOK_TOKENS", "webhook-token-0123456789"),
            ("PSYNC_WEBHOOK_SIGNING_SECRETS", "signing-secret-0123456789"),
            ("PSYNC_API_TOKENS", "api-token-0123456789"),
            ("PARTNERSTACK_PUBLIC_KEY", "pk_live_0123456789"),
            ("PARTNERSTACK_SECRET_KEY", "sk_live_0123456789"),
            ("DATABASE_URL", "postgres://u:db-password-0123@localhost/x"),
        ]),
    )
    .unwrap();
    let debug = format!("{c:?}");
    for secret in [
        "webhook-token-0123456789",
        "signing-secret-0123456789",
        "api-token-0123456789",
        "pk_live_0123456789",
        "sk_live_0123456789",
        "db-password-0123",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked into Debug output");
    }
}

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[test]
fn relay_endpoints_come_from_the_file_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[[relay]]\nname = \"billing\"\nurl = \"https://billing.internal/h?token=t0p\"\n\
             secret = \"{WHSEC}\"\nentities = [\"transactions\", \"rewards\"]\n"
        ),
    )
    .unwrap();
    let c = Config::load_with_env(
        Some(&path),
        &env(&[
            ("PSYNC_RELAY_BILLING_ENTITIES", "rewards"),
            ("PSYNC_RELAY_CRM_URL", "http://crm.internal/hook"),
            ("PSYNC_RELAY_CRM_SECRET", WHSEC),
        ]),
    )
    .unwrap();
    assert_eq!(c.relay.len(), 2);
    let billing = &c.relay[0];
    assert_eq!(billing.name, "billing");
    assert_eq!(billing.entities.as_deref(), Some(&[Entity::Reward][..]));
    assert_eq!(billing.public_url(), "https://billing.internal/h");
    let crm = &c.relay[1];
    assert_eq!((crm.name.as_str(), crm.entities.as_ref()), ("crm", None));
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("t0p") && !debug.contains("MfKQ9r8"),
        "{debug}"
    );
    assert_eq!(c.retention.changes, Duration::from_secs(30 * 86_400));
    assert_eq!(c.retention.deliveries, Duration::from_secs(90 * 86_400));
    assert!(
        Config::load_with_env(None, &env(&[]))
            .unwrap()
            .relay
            .is_empty()
    );
}

#[test]
fn relay_and_retention_settings_are_checked() {
    let cases = [
        (vec![("PSYNC_RELAY_X_URL", "http://x.internal/")], "secret"),
        (
            vec![
                ("PSYNC_RELAY_X_URL", "ftp://x/"),
                ("PSYNC_RELAY_X_SECRET", WHSEC),
            ],
            "http",
        ),
        (
            vec![
                ("PSYNC_RELAY_X_URL", "http://x/"),
                ("PSYNC_RELAY_X_SECRET", "hunter2"),
            ],
            "whsec_",
        ),
        (
            vec![("PSYNC_RELAY_X_SECERT", WHSEC)],
            "PSYNC_RELAY_X_SECERT: not a relay setting",
        ),
        (
            vec![
                ("PSYNC_RELAY_X_URL", "http://x/"),
                ("PSYNC_RELAY_X_SECRET", WHSEC),
                ("PSYNC_RELAY_X_ENTITIES", "rewards,refunds"),
            ],
            "refunds",
        ),
        (
            vec![
                ("PSYNC_RELAY_X!_URL", "http://x/"),
                ("PSYNC_RELAY_X!_SECRET", WHSEC),
            ],
            "lower-case",
        ),
        (
            vec![("PSYNC_RETENTION_CHANGES", "10m")],
            "retention.changes",
        ),
        (
            vec![("PSYNC_RETENTION_DELIVERIES", "soon")],
            "retention.deliveries",
        ),
    ];
    for (vars, expected) in cases {
        let err = Config::load_with_env(None, &env(&vars))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{vars:?}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

/// A count that must not be zero is a `NonZero*`; zero is refused naming the variable, or
/// the file and line, that set it.
#[test]
fn zero_is_refused_where_a_count_must_not_be_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let file = path.display().to_string();
    for setting in [
        "server.max_connections",
        "webhooks.body_limit",
        "webhooks.queue_capacity",
        "webhooks.batch_size",
        "webhooks.appliers",
        "api.page_bytes",
        "retention.batch_size",
        "writes.concurrency",
    ] {
        let var = env_var(setting);
        let err = Config::load_with_env(None, &env(&[(&var, "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{setting} (env {var}): must be")),
            "{err}"
        );
        let (section, key) = setting.split_once('.').unwrap();
        std::fs::write(&path, format!("[{section}]\n{key} = 0\n")).unwrap();
        let err = Config::load_with_env(Some(&path), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{setting} ({file}, line 2): must be")),
            "{err}"
        );
    }
}

/// Every duration setting of the service (walked from the defaults) is bounded, named by
/// its variable. (`[partnerstack]` is the client crate's, checked there.)
#[test]
fn every_duration_is_at_most_ten_years() {
    let defaults: toml::Table = DEFAULT_TOML.parse().unwrap();
    let mut durations = 0;
    for setting in settings()
        .into_iter()
        .filter(|s| !s.starts_with("partnerstack."))
    {
        let (section, key) = setting.rsplit_once('.').unwrap();
        let default = section
            .split('.')
            .try_fold(&defaults, |t, name| t.get(name)?.as_table())
            .and_then(|t| t.get(key))
            .and_then(toml::Value::as_str)
            .unwrap_or_default();
        if humantime::parse_duration(default).is_err() {
            continue;
        }
        durations += 1;
        let var = env_var(&setting);
        let err = Config::load_with_env(None, &env(&[(&var, "11years")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{setting} (env {var})")) && err.contains("10 years"),
            "{err}"
        );
        assert!(
            Config::load_with_env(None, &env(&[(&var, "9years")])).is_ok(),
            "{var}"
        );
    }
    assert!(durations >= 25, "{durations} durations");
}

#[test]
fn api_clients_come_from_the_file_and_the_environment() {
    use crate::auth::Scope;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let digest = hex::encode(crate::auth::sha256(b"billing-token-0123456789"));
    std::fs::write(
        &path,
        format!(
            "[[api.clients]]\nname = \"billing\"\ntoken_sha256 = \"{}\"\n\
             scopes = [\"write\", \"read\", \"write\"]\n",
            digest.to_uppercase()
        ),
    )
    .unwrap();
    let c = Config::load_with_env(
        Some(&path),
        &env(&[
            ("PSYNC_API_CLIENT_OPS_TOKEN", "ops-token-0123456789"),
            ("PSYNC_API_CLIENT_OPS_SCOPES", "admin"),
            ("PSYNC_API_TOKENS", "reader-token-0123456789"),
        ]),
    )
    .unwrap();
    assert_eq!(c.api.clients.len(), 2);
    let billing = &c.api.clients[0];
    assert_eq!(billing.name, "billing");
    assert_eq!(billing.scopes, [Scope::Read, Scope::Write]);
    let ops = &c.api.clients[1];
    assert_eq!(
        (ops.name.as_str(), &ops.scopes[..]),
        ("ops", &[Scope::Admin][..])
    );
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("ops-token") && !debug.contains(&digest),
        "{debug}"
    );
    // Each token names its caller; an unnamed token reads only.
    let callers = c.api.callers();
    let named = |token: &str| callers.verify(token).and_then(|c| c.name.clone());
    assert_eq!(
        named("billing-token-0123456789").as_deref(),
        Some("billing")
    );
    assert_eq!(named("ops-token-0123456789").as_deref(), Some("ops"));
    let unnamed = callers.verify("reader-token-0123456789").unwrap();
    assert_eq!(
        (unnamed.name.as_ref(), &unnamed.scopes[..]),
        (None, &[Scope::Read][..])
    );
    assert!(callers.verify("billing-token-012345678").is_none());
    assert!(callers.verify("").is_none());
    // No clients by default.
    assert!(
        Config::load_with_env(None, &env(&[]))
            .unwrap()
            .api
            .clients
            .is_empty()
    );
}

#[test]
fn api_clients_are_checked() {
    let digest = hex::encode(crate::auth::sha256(b"x-token-0123456789"));
    let cases = [
        (
            vec![("PSYNC_API_CLIENT_X_SCOPES", "read")],
            "needs a token or a token_sha256",
        ),
        (
            vec![("PSYNC_API_CLIENT_X_TOKEN", "x-token-0123456789")],
            "scopes",
        ),
        (
            vec![
                ("PSYNC_API_CLIENT_X_TOKEN", "x-token-0123456789"),
                ("PSYNC_API_CLIENT_X_TOKEN_SHA256", &digest),
                ("PSYNC_API_CLIENT_X_SCOPES", "read"),
            ],
            "sets both token and token_sha256",
        ),
        (
            vec![
                ("PSYNC_API_CLIENT_X_TOKEN", "hunter2"),
                ("PSYNC_API_CLIENT_X_SCOPES", "read"),
            ],
            "shorter than 16",
        ),
        (
            vec![
                ("PSYNC_API_CLIENT_X_TOKEN_SHA256", "abc"),
                ("PSYNC_API_CLIENT_X_SCOPES", "read"),
            ],
            "64 hex digits",
        ),
        (
            vec![
                ("PSYNC_API_CLIENT_X_TOKEN", "x-token-0123456789"),
                ("PSYNC_API_CLIENT_X_SCOPES", "read,delete"),
            ],
            "delete",
        ),
        (
            vec![
                ("PSYNC_API_CLIENT_X_TOKEN", "x-token-0123456789"),
                ("PSYNC_API_CLIENT_X_SCOPES", ","),
            ],
            "name at least one of read, write, admin",
        ),
        (
            vec![
                ("PSYNC_API_CLIENT_X_TOKEN", "x-token-0123456789"),
                ("PSYNC_API_CLIENT_X_SCOPES", "read"),
                ("PSYNC_API_CLIENT_Y_TOKEN_SHA256", &digest),
                ("PSYNC_API_CLIENT_Y_SCOPES", "write"),
            ],
            "api.clients (env PSYNC_API_CLIENT_Y_SCOPES), entry 2: client \"y\" has the token of another \
             client",
        ),
        (
            vec![
                ("PSYNC_API_CLIENT_X_TOKEN", "x-token-0123456789"),
                ("PSYNC_API_CLIENT_X_SCOPES", "write"),
                ("PSYNC_API_TOKENS", "x-token-0123456789"),
            ],
            "has the token of another client or of api.tokens",
        ),
        (
            vec![("PSYNC_API_CLIENT_X_SCOPE", "read")],
            "PSYNC_API_CLIENT_X_SCOPE: not a client setting; use PSYNC_API_CLIENT_<NAME>_TOKEN",
        ),
    ];
    for (vars, expected) in cases {
        let err = Config::load_with_env(None, &env(&vars))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{vars:?}: {err}");
        assert!(
            !err.contains("hunter2") && !err.contains("x-token"),
            "{err}"
        );
    }
}

#[test]
fn the_connection_cap_is_a_number_or_auto() {
    let load = |value: &str| {
        Config::load_with_env(None, &env(&[("PSYNC_MAX_CONNECTIONS", value)]))
            .map(|c| c.server.max_connections)
    };
    assert_eq!(
        Config::load_with_env(None, &env(&[]))
            .unwrap()
            .server
            .max_connections,
        ConnectionCap::Auto
    );
    assert_eq!(load("auto").unwrap(), ConnectionCap::Auto);
    assert_eq!(
        load("2000").unwrap(),
        ConnectionCap::At(std::num::NonZeroUsize::new(2000).unwrap())
    );
    for bad in ["lots", "-1", "0"] {
        let err = load(bad).unwrap_err().to_string();
        assert!(
            err.contains("PSYNC_MAX_CONNECTIONS") && err.contains("auto"),
            "{err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[server]\nmax_connections = 3000\n").unwrap();
    let c = Config::load_with_env(Some(&path), &env(&[])).unwrap();
    assert_eq!(
        c.server.max_connections,
        ConnectionCap::At(std::num::NonZeroUsize::new(3000).unwrap())
    );
}
