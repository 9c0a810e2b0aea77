//! Syncing a real PartnerStack account, not an idea of one: the documented webhook bodies,
//! webhooks verified against the API, poll-only streams within their staleness bound, and
//! every guessed behaviour under each of its alternatives (see `docs/partnerstack.md`).

use std::time::{Duration, Instant};

use partnerstack::Entity;
use partnerstack_sim::{Behaviours, CustomerBody, LostCursor, Notify, Options};
use serde_json::{Map, Value, json};

use crate::client::wired;
use crate::common::{API_TOKEN, TestApp, TestDb};
use crate::reconcile::{interrupt_after, pass, reconciler, truth, wait_for_row};

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/webhooks")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn accepted_id(app: &TestApp, body: &str) -> i64 {
    let response = app.deliver(body.to_string()).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    answer["id"].as_i64().unwrap()
}

/// A delivery's outcome, where its state came from, and the key it was applied to.
async fn outcome(app: &TestApp, id: i64) -> (String, Option<String>, Option<String>) {
    sqlx::query_as("SELECT outcome, applied_from, entity_key FROM webhook_events WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

async fn row(db: &TestDb, table: &str, key: &str) -> Option<Value> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT to_jsonb(t) FROM {table} t WHERE key = $1"
    )))
    .bind(key)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

fn object(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

/// PartnerStack's own samples through the real route, bodies trusted (no API keys): the
/// partnership sample updates the row its `partner_key` finds (its numeric `id` makes no
/// row), the agreement and partner-team events are kept as unknown, and a sample naming a
/// partner nobody stored is unresolved.
#[tokio::test]
async fn documented_samples_make_no_phantom_rows() {
    let app = TestApp::spawn().await;
    // What the copy knew before: the partnership (a typo in its first name, in another
    // group) and the group the sample names by slug.
    for body in [
        json!({"event": "group_created", "key": "grup_gold", "name": "Gold Partners",
               "slug": "gold-partners", "created_at": 1_690_000_000_000_i64}),
        json!({"event": "group_created", "key": "grup_silver", "name": "Silver",
               "slug": "silver", "created_at": 1_690_000_000_000_i64}),
        json!({"event": "partnership_created", "key": "part_js", "partner_key": "JohnSmith",
               "first_name": "Jon", "last_name": "Smith", "email": "john.smith@example.com",
               "group": {"key": "grup_silver", "name": "Silver", "slug": "silver"},
               "tags": ["vip"], "created_at": 1_700_000_000_000_i64,
               "updated_at": 1_700_000_000_000_i64}),
    ] {
        accepted_id(&app, &body.to_string()).await;
    }
    app.settle().await;

    let sample = accepted_id(&app, &fixture("partnership_created.json")).await;
    let agreement = accepted_id(&app, &fixture("agreement_accepted.json")).await;
    let team = accepted_id(&app, &fixture("partner_team_created.json")).await;
    let member = accepted_id(&app, &fixture("partner_team_member_added.json")).await;
    let nobody = fixture("partnership_created.json").replace("JohnSmith", "NobodyStored");
    let nobody = accepted_id(&app, &nobody).await;
    app.settle().await;

    assert_eq!(
        outcome(&app, sample).await,
        (
            "applied".into(),
            Some("body".into()),
            Some("part_js".into())
        )
    );
    for unknown in [agreement, team, member] {
        assert_eq!(outcome(&app, unknown).await.0, "unknown_type");
    }
    assert_eq!(outcome(&app, nobody).await.0, "unresolved");
    // One partner, updated where it stood; nothing keyed by the sample's `id` (123).
    assert_eq!(app.db.count("SELECT count(*) FROM partners").await, 1);
    let partner = row(&app.db, "partners", "part_js").await.unwrap();
    assert_eq!(partner["first_name"], "John");
    // The sample's group has no key; its slug finds the stored group.
    assert_eq!(partner["group_key"], "grup_gold");
    // What the sample does not carry is kept.
    assert_eq!(partner["tags"], json!(["vip"]));
    let found: Value = app
        .http
        .get(app.url("/v1/partners/JohnSmith"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["data"]["key"], "part_js");
    app.stop().await;
}

/// With API keys, a delivery is a notification: the service applies what PartnerStack
/// answers. A forged delivery (a valid URL token, fabricated fields) changes nothing, and
/// one naming an object PartnerStack does not know is recorded unconfirmed.
#[tokio::test]
async fn a_forged_delivery_changes_nothing_partnerstack_does_not_confirm() {
    let (app, sim) = wired(Options::small(10), |c| {
        c.webhooks.confirm_within = Duration::from_secs(2);
    })
    .await;
    let r = reconciler(&app.db, &sim, |_| {});
    pass(&r, true).await;
    let partner = truth(&sim, Entity::Partner).remove(0);
    let key = partner["key"].as_str().unwrap();
    let before = row(&app.db, "partners", key).await.unwrap();

    // The documented shape, the partner's real partner_key, everything else made up.
    let forged = json!({"id": 999, "partner_key": partner["partner_key"], "first_name": "Mallory",
        "last_name": "Forger", "email": "mallory@attacker.example",
        "group": {"id": 1, "name": "Platinum", "slug": "platinum"},
        "event": "partnership_updated", "archived": "false"});
    let forged = accepted_id(&app, &forged.to_string()).await;
    let unknown = json!({"id": 1000, "partner_key": "NoSuchPartner", "first_name": "Eve",
        "event": "partnership_created", "archived": "false"});
    let unknown = accepted_id(&app, &unknown.to_string()).await;
    let fabricated_customer = json!({"event": "customer_created", "key": "cust_forged",
        "customer_key": "forged-1", "email": "victim@example.com", "partner_key": partner["partner_key"],
        "created_at": 1_700_000_000_000_i64, "updated_at": 1_700_000_000_000_i64});
    let fabricated_customer = accepted_id(&app, &fabricated_customer.to_string()).await;
    app.settle().await;

    let (o, from, applied_to) = outcome(&app, forged).await;
    assert_eq!(
        (from.as_deref(), applied_to.as_deref()),
        (Some("fetch"), Some(key))
    );
    assert!(o == "stale" || o == "applied", "{o}");
    let after = row(&app.db, "partners", key).await.unwrap();
    for field in [
        "first_name",
        "last_name",
        "email",
        "group_key",
        "observed_at",
    ] {
        assert_eq!(after[field], before[field], "{field} changed");
    }
    // A partnership nobody stored, read by its partner_key: not found, so the body is
    // taken as in body mode, at once, and finds no row (a reconcile pass would bring it).
    assert_eq!(outcome(&app, unknown).await.0, "unresolved");
    assert_eq!(outcome(&app, fabricated_customer).await.0, "unconfirmed");
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM partners WHERE first_name IN ('Mallory', 'Eve')")
            .await,
        0
    );
    assert!(row(&app.db, "customers", "cust_forged").await.is_none());
    sim.stop().await.unwrap();
    app.stop().await;
}

/// PartnerStack can take minutes to make a new customer readable: a verified delivery
/// whose customer is not found yet is looked for again, then applied. Under each
/// alternative: readable at once, or only after a delay.
#[tokio::test]
async fn a_new_customer_is_applied_once_partnerstack_can_read_it() {
    for delay_ms in [0, 1_500] {
        // Customer bodies that name the customer_key, so the fetch is the single read.
        let options = Options {
            behaviours: Behaviours {
                customer_readable_after_ms: delay_ms,
                customer_body: CustomerBody::Full,
                ..Behaviours::default()
            },
            ..Options::small(5)
        };
        let (app, sim) = wired(options, |c| {
            c.webhooks.confirm_within = Duration::from_secs(60);
        })
        .await;
        let partner_key = truth(&sim, Entity::Partner)[0]["partner_key"].clone();
        let created: Value = partnerstack::http::builder()
            .build()
            .unwrap()
            .post(format!("{}/customers", sim.base_url()))
            .basic_auth(crate::client::PUBLIC_KEY, Some(crate::client::SECRET_KEY))
            .json(
                &json!({"email": "new@example.com", "partner_key": partner_key,
                          "customer_key": "acct-new-1"}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = created["data"]["key"].as_str().unwrap().to_string();
        assert!(sim.simulator.flush(Duration::from_secs(10)).await);
        wait_for_row(
            &app.db,
            &format!("SELECT count(*) FROM customers WHERE key = '{key}'"),
        )
        .await;
        let (attempts, from): (i32, Option<String>) = sqlx::query_as(
            "SELECT attempts, applied_from FROM webhook_events WHERE outcome = 'applied'
             AND entity_key = $1",
        )
        .bind(&key)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(from.as_deref(), Some("fetch"));
        if delay_ms == 0 {
            assert_eq!(
                attempts, 0,
                "readable at once: applied at the first attempt"
            );
        } else {
            assert!(
                attempts >= 1,
                "not readable yet: looked for again ({attempts})"
            );
        }
        sim.stop().await.unwrap();
        app.stop().await;
    }
}

/// Transactions and rewards get no webhooks and have no "updated since" filter: the
/// service's own reconciler rescans them often enough that a change to an object created
/// months ago reaches the copy within the staleness bound, without anyone forcing a full
/// pass. The clock is compressed: the objects are back-dated 60 and 90 days, and the
/// bound is 10 seconds instead of an hour.
#[tokio::test]
async fn poll_only_streams_meet_their_staleness_bound() {
    const BOUND: Duration = Duration::from_secs(10);
    let options = Options {
        drop: 0.3,
        history_days: 120,
        ..Options::small(20)
    };
    let (app, sim) = wired(options, |c| {
        c.reconcile.interval = Some(Duration::from_secs(1));
        c.reconcile.staleness_bound = BOUND;
        c.reconcile.max_retry_delay = Duration::from_secs(1);
    })
    .await;
    let now = sim.simulator.now_ms();
    let tx = truth(&sim, Entity::Transaction)
        .into_iter()
        .find(|t| t["approved"] == false)
        .unwrap();
    let reward = truth(&sim, Entity::Reward)
        .into_iter()
        .find(|r| r["reward_status"] == "pending" || r["reward_status"] == "hold")
        .unwrap();
    let (tx_key, reward_key) = (
        tx["key"].as_str().unwrap().to_string(),
        reward["key"].as_str().unwrap().to_string(),
    );
    let day = 86_400_000_i64;
    sim.simulator
        .patch(
            Entity::Transaction,
            &tx_key,
            &object(json!({"created_at": now - 90 * day})),
            Notify::None,
        )
        .unwrap();
    sim.simulator
        .patch(
            Entity::Reward,
            &reward_key,
            &object(json!({"created_at": now - 60 * day})),
            Notify::None,
        )
        .unwrap();
    // The copy has both, back-dated (a full scan after the patch).
    wait_for_row(
        &app.db,
        &format!(
            "SELECT count(*) FROM transactions WHERE key = '{tx_key}'
             AND created_at < now() - interval '80 days'"
        ),
    )
    .await;
    wait_for_row(
        &app.db,
        &format!(
            "SELECT count(*) FROM rewards WHERE key = '{reward_key}'
             AND created_at < now() - interval '50 days'"
        ),
    )
    .await;

    // Months after they were created: the reward and the transaction are approved.
    // PartnerStack sends no webhook for either.
    let changed_at = Instant::now();
    let changed_ms = sim.simulator.now_ms();
    sim.simulator
        .patch(
            Entity::Reward,
            &reward_key,
            &object(json!({"reward_status": "approved"})),
            Notify::Deliver,
        )
        .unwrap();
    sim.simulator
        .patch(
            Entity::Transaction,
            &tx_key,
            &object(json!({"approved": true})),
            Notify::Deliver,
        )
        .unwrap();
    assert!(
        sim.simulator
            .deliveries(0)
            .iter()
            .all(|d| d.stream != "transactions" && d.stream != "rewards"),
        "no webhook for transactions or rewards"
    );
    wait_for_row(
        &app.db,
        &format!(
            "SELECT count(*) FROM rewards WHERE key = '{reward_key}' AND reward_status = 'approved'"
        ),
    )
    .await;
    wait_for_row(
        &app.db,
        &format!("SELECT count(*) FROM transactions WHERE key = '{tx_key}' AND approved"),
    )
    .await;
    // Within the bound, by the service's own clock: when it stored each change.
    let lag_ms: i64 = sqlx::query_scalar(
        "SELECT max((extract(epoch FROM synced_at) * 1000)::bigint) - $1 FROM (
             SELECT synced_at FROM rewards WHERE key = $2
             UNION ALL SELECT synced_at FROM transactions WHERE key = $3) s",
    )
    .bind(changed_ms)
    .bind(&reward_key)
    .bind(&tx_key)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    println!(
        "[staleness] changes applied {lag_ms} ms after they were made (bound {} ms; test saw {} ms)",
        BOUND.as_millis(),
        changed_at.elapsed().as_millis()
    );
    assert!(lag_ms <= BOUND.as_millis() as i64, "{lag_ms} ms");
    // Scheduled full scans did it: nobody asked for a pass.
    assert_eq!(
        app.db
            .count(
                "SELECT count(*) FROM sync_streams WHERE requested_at IS NOT NULL OR requested_full"
            )
            .await,
        0
    );
    // /v1/sync says which streams are poll-only and how stale they can be.
    let sync: Value = app
        .http
        .get(app.url("/v1/sync"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stream = |name: &str| {
        sync["data"]["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stream"] == name)
            .cloned()
            .unwrap()
    };
    for name in ["transactions", "rewards"] {
        let s = stream(name);
        assert_eq!(s["coverage"], "poll", "{s}");
        assert_eq!(s["staleness_bound_seconds"], BOUND.as_secs(), "{s}");
        assert!(
            s["staleness_seconds"].as_u64().unwrap() <= BOUND.as_secs(),
            "{s}"
        );
        assert!(s["last"]["requests"].as_u64().unwrap() >= 1, "{s}");
    }
    assert_eq!(stream("customers")["coverage"], "webhooks");
    assert_eq!(stream("groups")["coverage"], "poll");
    // Every stream has its bound from the settings: poll-only ones the configured one,
    // webhook-covered ones the interval (1 s) and its jitter (0.1 s) plus the pass budget.
    assert_eq!(stream("groups")["staleness_bound_seconds"], BOUND.as_secs());
    assert_eq!(stream("customers")["staleness_bound_seconds"], 301);
    sim.stop().await.unwrap();
    app.stop().await;
}

/// What PartnerStack answers for a cursor whose object was deleted is undocumented (a 400,
/// or an empty page). Under each: the pass that resumes with such a cursor starts again
/// from the top, reads everything, and marks only what is really gone.
#[tokio::test]
async fn a_lost_cursor_restarts_the_pass_from_the_top() {
    for lost_cursor in [LostCursor::BadRequest, LostCursor::EmptyPage] {
        let db = TestDb::new().await;
        let sim = crate::client::stand_in(Options {
            transactions: 35,
            behaviours: Behaviours {
                lost_cursor,
                ..Behaviours::default()
            },
            ..Options::small(5)
        })
        .await;
        let r = reconciler(&db, &sim, |_| {});
        interrupt_after(&r, Entity::Transaction, true, 1).await;
        let cursor: String = sqlx::query_scalar(
            "SELECT pass_cursor FROM sync_streams WHERE stream = 'transactions'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        sim.simulator.delete_transaction(&cursor).unwrap();

        let stop = tokio_util::sync::CancellationToken::new();
        let report = r
            .run_once(
                &[Entity::Transaction],
                true,
                Duration::from_secs(10),
                &stop,
                &|_| {},
            )
            .await
            .unwrap()
            .remove(0)
            .unwrap_or_else(|e| panic!("{lost_cursor:?}: {e}"));
        let listed = sim.simulator.listed_keys(Entity::Transaction);
        assert_eq!(listed.len(), 34);
        // Read from the top: every page, not just those after the lost cursor.
        assert_eq!(report.counts.seen, 34, "{lost_cursor:?}");
        assert_eq!(report.counts.pages, 4, "{lost_cursor:?}");
        assert_eq!(report.counts.deleted, 1, "{lost_cursor:?}");
        assert_eq!(
            db.count("SELECT count(*) FROM transactions WHERE deleted_at IS NULL")
                .await,
            34
        );
        let gone: Option<Value> = row(&db, "transactions", &cursor).await;
        assert!(!gone.unwrap()["deleted_at"].is_null());
        sim.stop().await.unwrap();
    }
}

/// The request budget, not Postgres, bounds a sync against the real API: a full pass of N
/// objects costs at most ceil(N / 250) + 1 requests per stream at the default page size.
#[tokio::test]
async fn a_full_pass_costs_one_request_per_page() {
    let db = TestDb::new().await;
    let sim = crate::client::stand_in(Options {
        groups: 3,
        partners: 260,
        customers: 600,
        transactions: 500,
        rewards: 251,
        deals: 249,
        leads: 10,
        ..Options::default()
    })
    .await;
    let mut config = crate::client::client_config(&sim.base_url());
    config.page_size = 250;
    let r = crate::reconcile::reconciler_with(&db, config, |_| {});
    let reports = pass(&r, true).await;
    for report in reports {
        let n = sim.simulator.listed_keys(report.entity).len() as i64;
        let most = (n + 249) / 250 + 1;
        println!(
            "[requests] {}: {} objects, {} requests (at most {most})",
            report.entity.stream(),
            n,
            report.counts.requests
        );
        assert_eq!(report.counts.seen, n, "{:?}", report.entity);
        assert!(
            (1..=most).contains(&report.counts.requests),
            "{:?}: {} requests for {n} objects",
            report.entity,
            report.counts.requests
        );
    }
    sim.stop().await.unwrap();
}
