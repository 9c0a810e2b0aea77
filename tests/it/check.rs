//! `partnerstack-sync check` against the stand-in: each switchable behaviour reported as
//! the switch sets it (the matrix), the command's exits and JSON, and a settled answer
//! changing what the service does (one test per answer that has an effect).

use std::time::Duration;

use partnerstack::Entity;
use partnerstack::client::Client;
use partnerstack_sim::{
    ArchivedInLists, DeleteAnswer, Dialect, DuplicateTransactionKey, LostCursor, Options,
    PartnershipByPartnerKey, Running, TimeFilters, behaviour::DuplicateCustomerKey,
};
use partnerstack_sync::check::{self, Report, trial};
use partnerstack_sync::config::PartnerStackConfig;
use serde_json::Value;

use crate::client::{PUBLIC_KEY, SECRET_KEY, client_config};
use crate::common::{TestApp, TestDb, free_port};

async fn sim(options: &Options) -> Running {
    partnerstack_sim::start(options, PUBLIC_KEY, SECRET_KEY)
        .await
        .unwrap()
}

/// Client settings for `sim`, in its dialect.
fn settings(sim: &Running) -> PartnerStackConfig {
    let mut settings = client_config(&sim.base_url());
    if sim.simulator.dialect() == Dialect::Legacy {
        settings.paths.partnerships = "/partners".into();
    }
    settings
}

fn quick() -> trial::Options {
    trial::Options {
        visible_within: Duration::from_secs(20),
        poll_every: Duration::from_millis(100),
    }
}

/// `check` (with the write questions) against a stand-in started with `options`.
async fn ask(options: &Options) -> Report {
    let sim = sim(options).await;
    let settings = settings(&sim);
    let client = Client::new(&settings).unwrap();
    let report = check::ask(&client, &settings, true, &quick())
        .await
        .unwrap();
    sim.stop().await.unwrap();
    report
}

fn answer(report: &Report, question: &str) -> Option<String> {
    report
        .findings
        .iter()
        .find(|f| f.question == question)
        .unwrap_or_else(|| panic!("no finding for {question}: {report:#?}"))
        .answer
        .clone()
}

fn small() -> Options {
    Options::small(30)
}

/// Every switch the stand-in has for a behaviour `check` asks about, under each of its
/// settings: the answer `check` gives is the one the switch chose.
#[tokio::test]
async fn check_reports_each_switchable_behaviour_as_switched() {
    type Case = (fn(&mut Options), &'static str, &'static str);
    let cases: &[Case] = &[
        (
            |o| o.behaviours.duplicate_customer_key = DuplicateCustomerKey::Reject,
            "duplicate_customer_key",
            "refused",
        ),
        (
            |o| o.behaviours.duplicate_customer_key = DuplicateCustomerKey::Accept,
            "duplicate_customer_key",
            "second_customer",
        ),
        (
            |o| o.behaviours.duplicate_transaction_key = DuplicateTransactionKey::Idempotent,
            "duplicate_transaction_key",
            "existing",
        ),
        (
            |o| o.behaviours.duplicate_transaction_key = DuplicateTransactionKey::Reject,
            "duplicate_transaction_key",
            "refused",
        ),
        (
            |o| o.behaviours.delete_answer = DeleteAnswer::Message,
            "delete_answer",
            "message",
        ),
        (
            |o| o.behaviours.delete_answer = DeleteAnswer::Data,
            "delete_answer",
            "data",
        ),
        (
            |o| o.behaviours.delete_answer = DeleteAnswer::Empty,
            "delete_answer",
            "empty",
        ),
        (
            |o| o.behaviours.lost_cursor = LostCursor::BadRequest,
            "lost_cursor",
            "refused",
        ),
        (
            |o| o.behaviours.lost_cursor = LostCursor::EmptyPage,
            "lost_cursor",
            "empty_page",
        ),
        (
            |o| o.behaviours.archived_customers = ArchivedInLists::Hidden,
            "archived.customers",
            "hidden",
        ),
        (
            |o| o.behaviours.archived_customers = ArchivedInLists::Flagged,
            "archived.customers",
            "flagged",
        ),
        (
            |o| o.behaviours.archived_customers = ArchivedInLists::Unflagged,
            "archived.customers",
            "unflagged",
        ),
        (
            |o| o.behaviours.partnership_by_partner_key = PartnershipByPartnerKey::Answers,
            "partnership_by_partner_key",
            "found",
        ),
        (
            |o| o.behaviours.partnership_by_partner_key = PartnershipByPartnerKey::Refused,
            "partnership_by_partner_key",
            "not_found",
        ),
        (|o| o.dialect = Dialect::Real, "page_size", "250"),
        (|o| o.dialect = Dialect::Legacy, "page_size", "100"),
    ];
    for (switch, question, expected) in cases {
        let mut options = small();
        switch(&mut options);
        let report = ask(&options).await;
        assert_eq!(
            answer(&report, question).as_deref(),
            Some(*expected),
            "{question}: {report:#?}"
        );
    }
    // Time filters, on every stream.
    for (setting, expected) in [
        (TimeFilters::Honoured, "honoured"),
        (TimeFilters::Ignored, "ignored"),
    ] {
        let mut options = small();
        options.behaviours.time_filters = setting;
        let report = ask(&options).await;
        for entity in Entity::ALL.into_iter().filter(|e| *e != Entity::Group) {
            let question = format!("time_filter.{}", entity.stream());
            assert_eq!(
                answer(&report, &question).as_deref(),
                Some(expected),
                "{question}: {report:#?}"
            );
        }
    }
    // How long a new customer stays unknown: measured, not assumed.
    for (after_ms, at_least, below) in [(0_u64, 0_u128, 1_500_u128), (1_500, 1_500, 20_000)] {
        let mut options = small();
        options.behaviours.customer_readable_after_ms = after_ms;
        let report = ask(&options).await;
        let ms: u128 = answer(&report, "new_customer_invisible")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (at_least..below).contains(&ms),
            "readable after {after_ms} ms, measured {ms}"
        );
    }
}

/// What the stand-in does without a switch, `check` reports as it is; and the throwaway
/// objects are gone afterwards.
#[tokio::test]
async fn check_reports_the_fixed_behaviours_and_cleans_up() {
    let options = small();
    let sim = sim(&options).await;
    let settings = settings(&sim);
    let client = Client::new(&settings).unwrap();
    let customers = sim.simulator.listed_keys(Entity::Customer).len();
    let transactions = sim.simulator.len(Entity::Transaction);
    let report = check::ask(&client, &settings, true, &quick())
        .await
        .unwrap();
    for (question, expected) in [
        ("list_order", "newest_first"),
        ("single_read.partnerships", "found"),
        ("single_read.customers", "found"),
        ("single_read.deals", "found"),
        ("single_read.leads", "found"),
        ("partnership_by_partner_key", "found"),
        ("rate_limit_headers", "none"),
    ] {
        assert_eq!(
            answer(&report, question).as_deref(),
            Some(expected),
            "{question}"
        );
    }
    // The throwaway customer is archived (no longer listed), its transaction deleted.
    assert_eq!(sim.simulator.listed_keys(Entity::Customer).len(), customers);
    assert_eq!(sim.simulator.len(Entity::Transaction), transactions);
    sim.stop().await.unwrap();
}

/// Runs the binary's `check` with `args` and `env`: exit code, stdout, stderr.
async fn run_check(args: &[&str], env: Vec<(&str, String)>) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_partnerstack-sync"));
    cmd.arg("check")
        .args(args)
        .env_remove("DATABASE_URL")
        .env(
            "PSYNC_DATA_DIR",
            std::env::temp_dir().join("psync-check-never-used"),
        )
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("check finished within 120 s")
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn keys(base_url: &str, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("PARTNERSTACK_BASE_URL", base_url.to_string()),
        ("PARTNERSTACK_PUBLIC_KEY", PUBLIC_KEY.to_string()),
        ("PARTNERSTACK_SECRET_KEY", secret.to_string()),
    ]
}

/// `check --json --writes`: JSON on stdout, and the settled answers in the database.
#[tokio::test]
async fn check_json_parses_and_the_answers_are_stored() {
    let sim = sim(&small()).await;
    let db = TestDb::new().await;
    let mut env = keys(&sim.base_url(), SECRET_KEY);
    env.push(("DATABASE_URL", db.url.clone()));
    let (code, stdout, stderr) =
        run_check(&["--json", "--writes", "--visible-within", "20"], env).await;
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let findings = report["findings"].as_array().unwrap();
    let settled = findings.iter().filter(|f| !f["answer"].is_null()).count();
    assert!(settled >= 15, "{stdout}");
    for f in findings {
        for field in ["question", "asked", "observed", "service"] {
            assert!(f[field].is_string(), "{field}: {f}");
        }
    }
    assert_eq!(
        db.count("SELECT count(*) FROM account_answers").await,
        settled as i64
    );
    let page_size: String =
        sqlx::query_scalar("SELECT answer FROM account_answers WHERE question = 'page_size'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(page_size, "250");
    sim.stop().await.unwrap();
}

/// Wrong keys and an API that does not answer: a non-zero exit naming the problem (and
/// no database is needed to say so).
#[tokio::test]
async fn check_fails_clearly_on_wrong_keys_and_an_unreachable_api() {
    let sim = sim(&small()).await;
    let (code, _, stderr) = run_check(&[], keys(&sim.base_url(), "sk_wrong")).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("refused the API keys (401"), "{stderr}");
    assert!(stderr.contains("PARTNERSTACK_SECRET_KEY"), "{stderr}");
    sim.stop().await.unwrap();

    let nowhere = format!("http://127.0.0.1:{}/api/v2", free_port());
    let (code, _, stderr) = run_check(&["--json"], keys(&nowhere, SECRET_KEY)).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("could not be reached at"), "{stderr}");
    assert!(stderr.contains(&nowhere), "{stderr}");
}

/// The service on `db`, reading `sim` with the client settings `check` used, the
/// reconciler passing `streams` every second.
async fn service_on(db: TestDb, sim: &Running, streams: &[Entity]) -> TestApp {
    let settings = settings(sim);
    let streams = streams.to_vec();
    TestApp::spawn_on(db, move |c| {
        c.partnerstack = settings;
        c.reconcile.interval = Some(Duration::from_secs(1));
        c.reconcile.streams = streams;
        c.writes.max_retry_delay = Duration::from_millis(300);
    })
    .await
}

/// `check`'s read-only answers for `sim`, stored in `db`.
async fn settle(db: &TestDb, sim: &Running) -> Report {
    let settings = settings(sim);
    let client = Client::new(&settings).unwrap();
    let report = check::ask(&client, &settings, false, &quick())
        .await
        .unwrap();
    check::store(&db.pool, &report).await.unwrap();
    report
}

/// One stream's entry of `GET /v1/sync`.
async fn stream_status(app: &TestApp, entity: Entity) -> Value {
    let sync: Value = app.api_get("/v1/sync").await.json().await.unwrap();
    sync["data"]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == entity.stream())
        .cloned()
        .unwrap_or(Value::Null)
}

/// Polls `probe` every 200 ms until it holds, at most `limit`.
async fn until<F: Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> F,
) {
    let start = std::time::Instant::now();
    while !probe().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `page_size`: an account that refuses 250 items a page (the stand-in's legacy dialect
/// takes at most 100) cannot be read with the default; once `check` has stored its answer,
/// the service reads it 100 a page, and `/v1/sync` and `/status` say the answer is settled.
#[tokio::test]
async fn a_settled_page_size_is_the_page_size_passes_use() {
    let mut options = small();
    options.dialect = Dialect::Legacy;
    let sim = sim(&options).await;
    let app = service_on(TestDb::new().await, &sim, &[Entity::Customer]).await;
    until(Duration::from_secs(30), "a refused pass", || async {
        stream_status(&app, Entity::Customer).await["failures"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    assert_eq!(app.db.count("SELECT count(*) FROM customers").await, 0);
    let sync: Value = app.api_get("/v1/sync").await.json().await.unwrap();
    let page_size = |sync: &Value| {
        sync["data"]["answers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["question"] == "page_size")
            .cloned()
            .unwrap()
    };
    assert_eq!(page_size(&sync)["settled"], false, "{sync}");
    let db = app.stop().await;

    let report = settle(&db, &sim).await;
    assert_eq!(answer(&report, "page_size").as_deref(), Some("100"));
    let app = service_on(db, &sim, &[Entity::Customer]).await;
    let listed = sim.simulator.listed_keys(Entity::Customer).len() as i64;
    until(Duration::from_secs(30), "the customers copied", || async {
        app.db.count("SELECT count(*) FROM customers").await == listed
    })
    .await;
    let sync: Value = app.api_get("/v1/sync").await.json().await.unwrap();
    let settled = page_size(&sync);
    assert_eq!(settled["settled"], true, "{settled}");
    assert_eq!(settled["answer"], "100", "{settled}");
    assert!(settled["settled_at"].is_string(), "{settled}");
    let page = app
        .http
        .get(app.url("/status"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"answer-page_size\""), "{page}");
    app.stop().await;
    sim.stop().await.unwrap();
}

/// The kinds of the first `n` passes of `entity` the service starts from now on.
async fn pass_kinds(app: &TestApp, entity: Entity, n: usize) -> Vec<String> {
    let since = chrono::Utc::now();
    let mut seen: Vec<(String, String)> = Vec::new();
    let begun = std::time::Instant::now();
    while seen.len() < n {
        assert!(
            begun.elapsed() < Duration::from_secs(60),
            "passes: {seen:?}"
        );
        let last = &stream_status(app, entity).await["last"];
        let started = last["started_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if let (Some(at), Some(kind)) = (started, last["kind"].as_str())
            && at > since
            && !seen.iter().any(|(a, _)| *a == at.to_rfc3339())
        {
            seen.push((at.to_rfc3339(), kind.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen.into_iter().map(|(_, kind)| kind).collect()
}

/// `time_filter.*`: while the account honours a stream's time filter, passes after the
/// first full scan are incremental; once `check` has found the filter ignored, every pass
/// of that stream is a full scan (which also finds deletions).
#[tokio::test]
async fn a_time_filter_found_ignored_makes_every_pass_a_full_scan() {
    let mut options = small();
    options.behaviours.time_filters = TimeFilters::Ignored;
    let sim = sim(&options).await;
    let app = service_on(TestDb::new().await, &sim, &[Entity::Customer]).await;
    let kinds = pass_kinds(&app, Entity::Customer, 3).await;
    // (The first, full, scan may have begun before the service answered.)
    assert!(kinds[1..].iter().all(|k| k == "incremental"), "{kinds:?}");
    let db = app.stop().await;

    let report = settle(&db, &sim).await;
    assert_eq!(
        answer(&report, "time_filter.customers").as_deref(),
        Some("ignored")
    );
    let app = service_on(db, &sim, &[Entity::Customer]).await;
    let kinds = pass_kinds(&app, Entity::Customer, 3).await;
    assert!(kinds.iter().all(|k| k == "full"), "{kinds:?}");
    app.stop().await;
    sim.stop().await.unwrap();
}

/// `new_customer_invisible`: a customer create whose answer was lost is looked for
/// during `writes.lookup_window` (15 min by default) before it is sent again; with the
/// account measured to show new customers at once, the window is a minute, and the create
/// goes again after it.
#[tokio::test]
async fn a_measured_visibility_delay_sets_the_look_up_window() {
    let mut options = small();
    // Invisible for longer than the settled window: only the window ends the look-ups.
    options.behaviours.customer_readable_after_ms = 600_000;
    let sim = sim(&options).await;
    let db = TestDb::new().await;
    let report = {
        let mut quick_sim = small();
        quick_sim.behaviours.customer_readable_after_ms = 0;
        let measured = self::sim(&quick_sim).await;
        let settings = settings(&measured);
        let client = Client::new(&settings).unwrap();
        let mut report = check::ask(&client, &settings, true, &quick())
            .await
            .unwrap();
        measured.stop().await.unwrap();
        // Stored for the account the service talks to (the same keys, its address).
        report.account = check::account(&self::settings(&sim)).unwrap();
        report
    };
    check::store(&db.pool, &report).await.unwrap();
    let app = service_on(db, &sim, &[Entity::Group]).await;
    sim.simulator
        .faults()
        .update(partnerstack_sim::FaultUpdate {
            lose_next: Some(1),
            ..partnerstack_sim::FaultUpdate::default()
        })
        .unwrap();
    let body = serde_json::json!({"customer_key": "window-1", "email": "w@example.com",
        "partner_key": crate::writes::a_partner_key(&sim)});
    let (http, url) = (app.http.clone(), app.url("/v1/customers"));
    let post = tokio::spawn(async move {
        http.post(url)
            .bearer_auth(crate::common::API_TOKEN)
            .json(&body)
            .send()
            .await
    });
    let sent = || crate::writes::upstream_writes(&sim, "POST customers");
    until(Duration::from_secs(20), "the first send", || async {
        sent() >= 1
    })
    .await;
    // Sent again after the settled window (a minute), long before the default's 15.
    until(Duration::from_secs(150), "a second send", || async {
        sent() >= 2
    })
    .await;
    post.abort();
    app.stop().await;
    sim.stop().await.unwrap();
}
