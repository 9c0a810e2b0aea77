//! The operator's first commands: `init` writes a configuration the service runs with,
//! and `webhooks register|list|rotate|remove` keep PartnerStack's registrations (the
//! stand-in's `/v2/webhooks`) and the accepted tokens in step.

use std::time::{Duration, Instant};

use partnerstack_sim::{ArchivedWebhooks, Behaviours, Options, WebhookTarget};
use partnerstack_sync::onboard::webhooks::{Action, BodyArgs, EVENTS, Field, Report, Webhooks};
use partnerstack_sync::webhook_tokens::Standing;
use secrecy::SecretString;
use serde_json::Value;

use crate::cli::run;
use crate::client::{PUBLIC_KEY, client, client_config, program, stand_in};
use crate::common::{API_CLIENTS, Process, TestApp, TestDb, WEBHOOK_TOKEN, shared_temp_dir};

const BASE: &str = "https://psync.example.test";

fn body() -> BodyArgs {
    BodyArgs {
        target_field: Field::Target,
        events: Vec::new(),
    }
}

fn register() -> Action {
    Action::Register {
        url: format!("{BASE}/"),
        body: body(),
    }
}

async fn webhooks(
    sim: &partnerstack_sim::Running,
    pool: &sqlx::PgPool,
    action: Action,
) -> anyhow::Result<Report> {
    let client = client(sim);
    let configured = [SecretString::from(WEBHOOK_TOKEN.to_string())];
    Webhooks {
        client: &client,
        pool,
        configured: &configured,
    }
    .run(&action)
    .await
}

/// The token in a held registration's address.
fn token_of(report: &Report, key: &str) -> String {
    let held = report
        .held
        .iter()
        .find(|h| h.webhook.key == key)
        .unwrap_or_else(|| panic!("{key} not held: {}", report.render()));
    held.ours.as_ref().expect("ours").token.clone()
}

/// What the stand-in holds, newest first.
fn registrations(sim: &partnerstack_sim::Running) -> Vec<Value> {
    sim.simulator.webhook_registrations()
}

/// Under either spelling the stand-in takes, `register` twice leaves one registration
/// of the configured token's address, subscribed to every event; `list` shows it as ours.
#[tokio::test]
async fn registering_twice_leaves_one_registration_under_either_body_spelling() {
    for target in [WebhookTarget::Target, WebhookTarget::TargetUrl] {
        let sim = stand_in(Options {
            behaviours: Behaviours {
                webhook_target: target,
                ..Behaviours::default()
            },
            ..program()
        })
        .await;
        let db = TestDb::new().await;
        let first = webhooks(&sim, &db.pool, register()).await.unwrap();
        let key = first.registration.clone().unwrap();
        assert!(
            first
                .render()
                .contains(&format!("the URL sent as `{}`", target.field())),
            "{target:?}: {}",
            first.render()
        );
        let second = webhooks(&sim, &db.pool, register()).await.unwrap();
        assert_eq!(second.registration.as_deref(), Some(key.as_str()));
        assert!(
            second.render().contains("already registered"),
            "{}",
            second.render()
        );

        let held = registrations(&sim);
        assert_eq!(held.len(), 1, "{target:?}: {held:?}");
        let expected = format!("{BASE}/webhooks/partnerstack/{WEBHOOK_TOKEN}");
        assert_eq!(held[0][target.field()], expected.as_str(), "{held:?}");
        let events: Vec<&str> = held[0]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert_eq!(events, EVENTS);

        let list = webhooks(&sim, &db.pool, Action::List).await.unwrap();
        assert_eq!(list.held.len(), 1);
        assert_eq!(list.held[0].webhook.key, key);
        assert_eq!(list.held[0].standing, Some(Standing::Configured));
        let shown = list.render();
        assert!(
            shown.contains(&key) && shown.contains("token configured"),
            "{shown}"
        );
        assert!(
            !shown.contains(WEBHOOK_TOKEN),
            "the token is a secret: {shown}"
        );
        sim.stop().await.unwrap();
    }
}

/// Refusals are reported plainly: wrong keys name the variables, an http BASE is refused
/// before anything is sent.
#[tokio::test]
async fn wrong_keys_and_plain_http_are_refused_clearly() {
    let sim = stand_in(program()).await;
    let db = TestDb::new().await;
    let mut settings = client_config(&sim.base_url());
    settings.secret_key = Some(SecretString::from("sk_wrong_0123456789".to_string()));
    let wrong = partnerstack::client::Client::new(&settings).unwrap();
    let err = Webhooks {
        client: &wrong,
        pool: &db.pool,
        configured: &[],
    }
    .run(&register())
    .await
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("PARTNERSTACK_SECRET_KEY"), "{text}");
    assert!(registrations(&sim).is_empty());

    let (code, stderr) = run(
        &["webhooks", "register", "--url", "http://psync.example.test"],
        &[
            ("PARTNERSTACK_PUBLIC_KEY", PUBLIC_KEY),
            ("PARTNERSTACK_SECRET_KEY", "sk_irrelevant"),
        ],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("https://"), "{stderr}");
    sim.stop().await.unwrap();
}

/// A delivery's status at the service with `token` in its address.
async fn deliver(app: &TestApp, token: &str) -> u16 {
    app.http
        .post(app.url(&format!("/webhooks/partnerstack/{token}")))
        .header("content-type", "application/json")
        .body(r#"{"event":"customer.created","key":"cus_onboard","email":"a@example.com"}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits (at most 10 s) until a delivery with `token` is answered `status`.
async fn until_answered(app: &TestApp, token: &str, status: u16) {
    let started = Instant::now();
    loop {
        let got = deliver(app, token).await;
        if got == status {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still {got}, not {status}, after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `rotate` registers a new token's address and both are accepted; `remove` then archives
/// the old registration, and the running service refuses the old token while the new one
/// goes on working. Under both guesses about archived registrations: still listed (with
/// `archived: true`), or gone from the list.
#[tokio::test]
async fn rotate_then_remove_moves_deliveries_to_the_new_token() {
    for archived in [ArchivedWebhooks::Listed, ArchivedWebhooks::Hidden] {
        let sim = stand_in(Options {
            behaviours: Behaviours {
                archived_webhooks: archived,
                ..Behaviours::default()
            },
            ..program()
        })
        .await;
        let app =
            TestApp::spawn_with(|c| c.webhooks.token_refresh = Duration::from_millis(200)).await;
        rotate_then_remove(&sim, &app, archived).await;
        app.stop().await;
        sim.stop().await.unwrap();
    }
}

async fn rotate_then_remove(
    sim: &partnerstack_sim::Running,
    app: &TestApp,
    archived: ArchivedWebhooks,
) {
    let pool = &app.db.pool;
    let registered = webhooks(sim, pool, register()).await.unwrap();
    let old = registered.registration.clone().unwrap();
    let rotate = Action::Rotate {
        url: None,
        body: body(),
    };
    let rotated = webhooks(sim, pool, rotate).await.unwrap();
    let new = rotated.registration.clone().unwrap();
    assert_ne!(new, old);
    let token = token_of(&rotated, &new);
    assert_ne!(token, WEBHOOK_TOKEN);
    until_answered(app, &token, 200).await;
    assert_eq!(
        deliver(app, WEBHOOK_TOKEN).await,
        200,
        "the old token stays accepted"
    );

    // A second register keeps the newest registration: nothing new.
    let again = webhooks(sim, pool, register()).await.unwrap();
    assert_eq!(again.registration.as_deref(), Some(new.as_str()));
    assert_eq!(registrations(sim).len(), 2);

    let removed = webhooks(sim, pool, Action::Remove { key: None })
        .await
        .unwrap();
    let live: Vec<&str> = removed
        .held
        .iter()
        .filter(|h| h.live())
        .map(|h| h.webhook.key.as_str())
        .collect();
    assert_eq!(live, [new.as_str()], "{archived:?}: {}", removed.render());
    let old_held = removed.held.iter().find(|h| h.webhook.key == old);
    match archived {
        ArchivedWebhooks::Listed => {
            let old_held = old_held.expect("the archived registration is listed");
            assert_eq!(old_held.webhook.archived, Some(true));
            assert_eq!(old_held.standing, Some(Standing::Revoked));
        }
        ArchivedWebhooks::Hidden => assert!(old_held.is_none(), "{}", removed.render()),
    }
    until_answered(app, WEBHOOK_TOKEN, 401).await;
    assert_eq!(deliver(app, &token).await, 200, "the new token still works");

    // Nothing more is superseded.
    let nothing = webhooks(sim, pool, Action::Remove { key: None })
        .await
        .unwrap();
    assert!(
        nothing.render().contains("nothing to remove"),
        "{}",
        nothing.render()
    );
}

/// `init` writes a file that `serve --config` runs with: its webhook token is accepted
/// (and the test's is not), its `reader` client reads but may not operate, its `admin`
/// client may. A second `init` refuses and leaves the file as it was; `--force` replaces it.
#[tokio::test]
async fn init_writes_a_configuration_the_service_runs_with_and_never_overwrites_it() {
    let dir = shared_temp_dir("init");
    let path = dir.join("psync.toml");
    let file = path.to_str().unwrap();
    let (code, stderr) = run(&["init", "--out", file], &[]);
    assert_eq!(code, 0, "{stderr}");
    let written = std::fs::read(&path).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (code, stderr) = run(&["init", "--out", file], &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        written,
        "the file was changed"
    );

    let toml: toml::Table = String::from_utf8(written.clone()).unwrap().parse().unwrap();
    let webhook_token = toml["webhooks"]["tokens"][0].as_str().unwrap().to_string();
    let client_token = |name: &str| {
        toml["api"]["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"].as_str() == Some(name))
            .unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (reader, admin) = (client_token("reader"), client_token("admin"));

    let db = TestDb::new().await;
    let mut env: Vec<(&str, Option<&str>)> = vec![
        ("DATABASE_URL", Some(&db.url)),
        ("PSYNC_WEBHOOK_TOKENS", None),
    ];
    env.extend(API_CLIENTS.iter().map(|(k, _)| (*k, None)));
    let (mut cmd, port) = Process::command(&env);
    cmd.args(["--config", file]);
    let mut service = Process::start(cmd, port);
    service.wait_ready().await;
    let http = partnerstack::http::builder().build().unwrap();
    let delivery = |token: &str| {
        http.post(service.url(&format!("/webhooks/partnerstack/{token}")))
            .header("content-type", "application/json")
            .body(r#"{"event":"customer.created","key":"cus_init","email":"a@example.com"}"#)
            .send()
    };
    assert_eq!(delivery(&webhook_token).await.unwrap().status(), 200);
    assert_eq!(delivery(WEBHOOK_TOKEN).await.unwrap().status(), 401);
    let get = |token: &str| {
        http.get(service.url("/v1/customers"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(get(&reader).await.unwrap().status(), 200);
    assert_eq!(get(&admin).await.unwrap().status(), 200);
    let sync = |token: &str| {
        http.post(service.url("/v1/sync/customers"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(sync(&reader).await.unwrap().status(), 403);
    let by_admin = sync(&admin).await.unwrap().status().as_u16();
    assert!(by_admin != 401 && by_admin != 403, "admin got {by_admin}");
    service.terminate().await;

    let (code, stderr) = run(&["init", "--out", file, "--force"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_ne!(std::fs::read(&path).unwrap(), written);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The binary as an operator runs it: `webhooks register` against the configured
/// database and API, printing what PartnerStack holds; `webhooks list` shows the same.
#[tokio::test]
async fn the_webhooks_command_registers_and_lists_through_the_binary() {
    let sim = stand_in(program()).await;
    let db = TestDb::new().await;
    let env = [
        ("DATABASE_URL", db.url.clone()),
        ("PSYNC_WEBHOOK_TOKENS", WEBHOOK_TOKEN.to_string()),
        ("PARTNERSTACK_BASE_URL", sim.base_url()),
        ("PARTNERSTACK_PUBLIC_KEY", PUBLIC_KEY.to_string()),
        (
            "PARTNERSTACK_SECRET_KEY",
            crate::client::SECRET_KEY.to_string(),
        ),
        ("RUST_LOG", "error".to_string()),
    ];
    let registered = command(&["webhooks", "register", "--url", BASE], &env).await;
    assert!(registered.contains("registered"), "{registered}");
    assert!(registered.contains("verified"), "{registered}");
    assert!(!registered.contains(WEBHOOK_TOKEN), "{registered}");
    let key = sim.simulator.webhook_registrations()[0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = command(&["webhooks", "list"], &env).await;
    assert!(listed.contains(&key), "{listed}");
    assert!(
        listed.contains("PartnerStack holds 1 webhook(s)"),
        "{listed}"
    );
    assert!(listed.contains("token configured"), "{listed}");
    sim.stop().await.unwrap();
}

/// Runs the binary with `args` and `env` (without blocking the stand-in, which serves on
/// this runtime); fails unless it succeeds; its stdout.
async fn command(args: &[&str], env: &[(&str, String)]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_partnerstack-sync"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {stdout}\n{stderr}");
    stdout
}
