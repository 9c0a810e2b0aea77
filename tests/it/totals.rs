//! Partner totals (`partner_totals`, kept by triggers) never drift from the rows: a seeded
//! random mix of writes through apply() and the other real write paths, from several
//! concurrent writers, then every group recounted from the rows and compared exactly; and
//! every partner's summary compared with the row-level query the summary used before.

use partnerstack::Entity;
use partnerstack_sync::api::summary::partner_summary;
use partnerstack_sync::apply::{self, Observation, Source};
use partnerstack_sync::db::sync::{self, PassCounts, PassKind, PassPlan};
use partnerstack_sync::db::{Failure, classify, totals};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::TestDb;

const SEED: u64 = 0x7074_a15e;
const T0: i64 = 1_700_000_000_000;
/// Concurrent writers, and the steps each takes.
const WRITERS: u64 = 3;
const STEPS: usize = 150;
const PARTNERS: usize = 5;
const CUSTOMERS: usize = 24;
const TRANSACTIONS: usize = 48;
const REWARDS: usize = 24;

/// The partner summary as the row-level query computed it before the totals existed
/// (the union of each partner column's matches, so a row matched twice counts once).
const ROW_LEVEL_SUMMARY_SQL: &str = "WITH
    cust AS (SELECT t.key FROM customers t WHERE t.deleted_at IS NULL AND t.partner_key = ANY($1)
             UNION
             SELECT t.key FROM customers t WHERE t.deleted_at IS NULL AND t.partnership_key = ANY($1)),
    tx AS (SELECT t.key, t.currency, t.approved, t.amount FROM transactions t
           WHERE t.deleted_at IS NULL AND t.archived IS NOT TRUE AND t.credited_partner_key = ANY($1)
           UNION
           SELECT t.key, t.currency, t.approved, t.amount FROM transactions t
           WHERE t.deleted_at IS NULL AND t.archived IS NOT TRUE AND t.credited_partnership_key = ANY($1)),
    rw AS (SELECT t.key, t.reward_status, t.currency, t.amount FROM rewards t
           WHERE t.deleted_at IS NULL AND t.partner_key = ANY($1)
           UNION
           SELECT t.key, t.reward_status, t.currency, t.amount FROM rewards t
           WHERE t.deleted_at IS NULL AND t.partnership_key = ANY($1))
    SELECT jsonb_build_object(
        'customers', jsonb_build_object('count', (SELECT count(*) FROM cust)),
        'transactions', jsonb_build_object('count', (SELECT count(*) FROM tx), 'by_currency',
            (SELECT COALESCE(jsonb_agg(to_jsonb(x) ORDER BY x.currency NULLS LAST), '[]'::jsonb) FROM (
                SELECT currency, count(*) AS count, COALESCE(sum(amount), 0)::bigint AS amount,
                       count(*) FILTER (WHERE approved IS TRUE) AS approved_count,
                       COALESCE(sum(amount) FILTER (WHERE approved IS TRUE), 0)::bigint AS approved_amount,
                       count(*) FILTER (WHERE approved IS NOT TRUE) AS unapproved_count,
                       COALESCE(sum(amount) FILTER (WHERE approved IS NOT TRUE), 0)::bigint AS unapproved_amount
                FROM tx GROUP BY currency) x)),
        'rewards', jsonb_build_object('count', (SELECT count(*) FROM rw), 'by_status',
            (SELECT COALESCE(jsonb_agg(to_jsonb(x) ORDER BY x.reward_status NULLS LAST, x.currency NULLS LAST), '[]'::jsonb) FROM (
                SELECT reward_status, currency, count(*) AS count, COALESCE(sum(amount), 0)::bigint AS amount
                FROM rw GROUP BY reward_status, currency) x)))";

/// One writer's random choices.
struct Writer {
    rng: StdRng,
    /// Source times handed out so far (each new observation is newer, unless reordered).
    clock: i64,
}

impl Writer {
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    /// A source time: usually newer than any so far; sometimes an old one (a reordered or
    /// repeated delivery, which the one door must leave stale, or apply when the content
    /// differs at the same time).
    fn time(&mut self) -> i64 {
        if self.rng.random_bool(0.15) && self.clock > 0 {
            T0 + self.rng.random_range(0..=self.clock) * 1000
        } else {
            self.clock += 1;
            T0 + self.clock * 1000 + self.rng.random_range(0..1000)
        }
    }

    /// A partner reference: both identifiers of one partner, either one, a mismatched
    /// pair, or none.
    fn partner(&mut self) -> (Option<String>, Option<String>) {
        let (a, b) = (
            self.rng.random_range(0..PARTNERS),
            self.rng.random_range(0..PARTNERS),
        );
        match self.rng.random_range(0..6) {
            0 | 1 => (Some(format!("pk_{a}")), Some(format!("part_{a}"))),
            2 => (Some(format!("pk_{a}")), None),
            3 => (None, Some(format!("part_{a}"))),
            4 => (Some(format!("pk_{a}")), Some(format!("part_{b}"))),
            _ => (None, None),
        }
    }

    fn currency(&mut self) -> Value {
        json!(*self.pick(&[Some("USD"), Some("usd"), Some("EUR"), None]))
    }

    fn amount(&mut self) -> Value {
        match self.rng.random_range(0..10) {
            0 => Value::Null,
            1 => json!(-self.rng.random_range(1..5_000)),
            _ => json!(self.rng.random_range(0..100_000)),
        }
    }

    fn customer(&mut self) -> Value {
        let n = self.rng.random_range(0..CUSTOMERS);
        let (partner_key, partnership_key) = self.partner();
        // Now and then the company's own key changes (transactions that named the old
        // one lose their customer).
        let company = if self.rng.random_bool(0.1) {
            format!("acct-{n}-b")
        } else {
            format!("acct-{n}")
        };
        let at = self.time();
        json!({"key": format!("cus_{n}"), "customer_key": company,
               "partner_key": partner_key, "partnership_key": partnership_key,
               "archived": self.rng.random_bool(0.1),
               "created_at": T0, "updated_at": at})
    }

    fn transaction(&mut self) -> Value {
        let n = self.rng.random_range(0..TRANSACTIONS);
        let c = self.rng.random_range(0..CUSTOMERS);
        let at = self.time();
        let mut body = json!({"key": format!("txn_{n}"), "amount": self.amount(),
                              "currency": self.currency(),
                              "approved": *self.pick(&[Some(true), Some(false), None]),
                              "archived": self.rng.random_bool(0.1),
                              "created_at": T0, "updated_at": at});
        // Its customer by PartnerStack's key, by your key (possibly one no customer has
        // yet: the customer arrives later), or its own partner.
        match self.rng.random_range(0..4) {
            0 => body["customer_key"] = json!(format!("cus_{c}")),
            1 => body["customer"] = json!({"external_key": format!("acct-{c}")}),
            2 => body["partner_key"] = json!(format!("pk_{}", c % PARTNERS)),
            _ => body["customer"] = json!({"key": format!("cus_{c}")}),
        }
        body
    }

    fn reward(&mut self) -> Value {
        let n = self.rng.random_range(0..REWARDS);
        let (partner_key, partnership_key) = self.partner();
        let at = self.time();
        let mut body = json!({"key": format!("rew_{n}"), "amount": self.amount(),
                              "currency": self.currency(),
                              "reward_status": *self.pick(&[Some("pending"), Some("approved"), Some("paid"), None]),
                              "partner_key": partner_key,
                              "created_at": T0, "updated_at": at});
        if let Some(p) = partnership_key {
            body["partnership"] = json!({"key": p});
        }
        body
    }

    /// 1 to 12 observations of random objects: new states, deletions (with a time or
    /// without), repeats of one object in the same batch.
    fn batch(&mut self) -> Vec<Observation> {
        let n = self.rng.random_range(1..=12);
        (0..n)
            .map(|_| {
                let entity = *self.pick(&[Entity::Customer, Entity::Transaction, Entity::Reward]);
                let body = match entity {
                    Entity::Customer => self.customer(),
                    Entity::Transaction => self.transaction(),
                    _ => self.reward(),
                };
                match self.rng.random_range(0..12) {
                    0 => Observation::parse(entity, body, true).unwrap(),
                    1 => Observation::parse(entity, json!({"key": body["key"]}), true).unwrap(),
                    _ => Observation::parse(entity, body, false).unwrap(),
                }
            })
            .collect()
    }
}

/// Whether a failed transaction should be retried, as the service's writers do
/// (deadlocks and serialization failures are passing).
fn passing(e: &sqlx::Error) -> bool {
    classify(e) == Failure::Passing
}

/// One random step: a batch through apply(), a full scan marking what it did not see,
/// or a hand-written statement (a migration or an operator's fix). Returns whether it had
/// to be retried.
async fn step(pool: &PgPool, w: &mut Writer) -> bool {
    let choice = w.rng.random_range(0..20);
    let batch = w.batch();
    let source = *w.pick(&[Source::Webhook, Source::Reconcile, Source::Write]);
    let entity = *w.pick(&[Entity::Customer, Entity::Transaction, Entity::Reward]);
    let seen: Vec<String> = (0..CUSTOMERS.max(TRANSACTIONS))
        .filter(|_| w.rng.random_bool(0.8))
        .map(|n| match entity {
            Entity::Customer => format!("cus_{n}"),
            Entity::Transaction => format!("txn_{n}"),
            _ => format!("rew_{n}"),
        })
        .collect();
    let victim = format!("rew_{}", w.rng.random_range(0..REWARDS));
    for attempt in 0..20 {
        let mut tx = pool.begin().await.unwrap();
        let result: Result<(), sqlx::Error> = async {
            match choice {
                // A full scan that saw most rows marks the others deleted.
                0 => {
                    let stream = entity.stream();
                    sync::ensure_streams(&mut tx, &[stream]).await?;
                    let plan = PassPlan {
                        kind: PassKind::Full,
                        min_updated: None,
                        min_created: None,
                    };
                    let (id, started) = sync::begin_pass(&mut tx, stream, plan, "test").await?;
                    let keys: Vec<&str> = seen.iter().map(String::as_str).collect();
                    let marked = sync::mark_seen(&mut tx, stream, id, &keys).await?;
                    let counts = PassCounts {
                        marked,
                        ..PassCounts::default()
                    };
                    sync::record_page(&mut tx, stream, id, None, &counts).await?;
                    sync::mark_vanished(&mut tx, entity, id, started, 1.0).await?;
                }
                // Hand-written statements: a correction, a hard delete.
                1 => {
                    sqlx::query(
                        "UPDATE transactions SET amount = amount + 7, currency = 'GBP'
                         WHERE key IN ('txn_1', 'txn_2', 'txn_3')",
                    )
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM rewards WHERE key = $1")
                        .bind(&victim)
                        .execute(&mut *tx)
                        .await?;
                }
                _ => {
                    apply::apply(&mut tx, source, &batch).await?;
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                tx.commit().await.unwrap();
                return attempt > 0;
            }
            Err(e) if passing(&e) => {
                eprintln!(
                    "[totals] retry: {e} {:?}",
                    e.as_database_error()
                        .and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
                        .map(|d| (
                            d.detail().map(str::to_string),
                            d.r#where().map(str::to_string)
                        ))
                );
                tx.rollback().await.unwrap()
            }
            Err(e) => panic!("step {choice} failed: {e}"),
        }
    }
    panic!("a step was refused 20 times in a row");
}

/// Every partner's summary (both identifiers, and a value naming no partner's key but
/// appearing in rows) equals the row-level query's.
async fn summaries_match_the_rows(pool: &PgPool) {
    for p in 0..PARTNERS {
        for key in [format!("pk_{p}"), format!("part_{p}")] {
            let summary = partner_summary(pool, &key, None).await.unwrap();
            let ids = vec![format!("part_{p}"), format!("pk_{p}")];
            let expected: Value = sqlx::query_scalar(ROW_LEVEL_SUMMARY_SQL)
                .bind(&ids)
                .fetch_one(pool)
                .await
                .unwrap();
            let got = serde_json::to_value(&summary).unwrap();
            for part in ["customers", "transactions", "rewards"] {
                assert_eq!(got[part], expected[part], "{key}: {part}");
            }
        }
    }
}

#[tokio::test]
async fn totals_match_the_rows_after_a_random_mix_of_writes() {
    let db = TestDb::new().await;
    // The partners the summaries are asked about.
    let partners: Vec<Observation> = (0..PARTNERS)
        .map(|p| {
            Observation::parse(
                Entity::Partner,
                json!({"key": format!("part_{p}"), "partner_key": format!("pk_{p}"), "created_at": T0}),
                false,
            )
            .unwrap()
        })
        .collect();
    let mut tx = db.pool.begin().await.unwrap();
    apply::apply(&mut tx, Source::Reconcile, &partners)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut writers = Vec::new();
    for i in 0..WRITERS {
        let pool = db.pool.clone();
        writers.push(tokio::spawn(async move {
            let mut w = Writer {
                rng: StdRng::seed_from_u64(SEED + i),
                clock: 0,
            };
            let mut retried = 0;
            for _ in 0..STEPS {
                retried += usize::from(step(&pool, &mut w).await);
            }
            retried
        }));
    }
    let mut retried = 0;
    for w in writers {
        retried += w.await.unwrap();
    }

    let mut conn = db.pool.acquire().await.unwrap();
    let drift = totals::drift(&mut conn).await.unwrap();
    assert!(drift.is_empty(), "totals drifted from the rows: {drift:#?}");
    // The mix did what it is for: groups were created, emptied and refilled.
    let (groups, empty, live): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE count = 0),
                (SELECT count(*) FROM customers WHERE deleted_at IS NOT NULL)
         FROM partner_totals",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    println!(
        "[totals] {groups} groups ({empty} emptied), {live} deleted customers, {retried} steps retried"
    );
    assert!(
        groups > 30 && empty > 0 && live > 0,
        "{groups} {empty} {live}"
    );
    drop(conn);
    summaries_match_the_rows(&db.pool).await;

    // TRUNCATE takes its table's groups with it.
    sqlx::query("TRUNCATE rewards")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    assert!(totals::drift(&mut conn).await.unwrap().is_empty());

    // The check can fail: a write the triggers do not see is a drift, named by group.
    sqlx::query("ALTER TABLE transactions DISABLE TRIGGER transactions_partner_totals_update")
        .execute(&mut *conn)
        .await
        .unwrap();
    let moved = sqlx::query(
        "UPDATE transactions SET amount = amount + 1
         WHERE deleted_at IS NULL AND archived IS NOT TRUE AND credited_partner_key IS NOT NULL",
    )
    .execute(&mut *conn)
    .await
    .unwrap()
    .rows_affected();
    assert!(moved > 0);
    let drift = totals::drift(&mut conn).await.unwrap();
    assert!(
        !drift.is_empty() && drift.iter().all(|d| d.group.contains("transactions")),
        "{drift:?}"
    );
}

/// A transaction written while its customer is being written in another transaction (two
/// appliers, a replica, the reconciler) is still credited to the customer's partner. Each
/// alone would miss the other's uncommitted row; the second of the two waits for the
/// first's commit (customer identity locks), then sees it. The test holds the customer's
/// transaction open until the transaction's writer is either done (no waiting: the bug)
/// or waiting for a lock, then commits it.
#[tokio::test]
async fn a_transaction_written_while_its_customer_is_written_is_credited() {
    let db = TestDb::new().await;
    let customer = Observation::parse(
        Entity::Customer,
        json!({"key": "cus_race", "customer_key": "yours-race", "partner_key": "pk_race",
               "created_at": T0}),
        false,
    )
    .unwrap();
    let transaction = Observation::parse(
        Entity::Transaction,
        json!({"key": "txn_race", "amount": 1_000, "currency": "USD", "approved": true,
               "customer": {"external_key": "yours-race"}, "created_at": T0}),
        false,
    )
    .unwrap();
    let mut first = db.pool.begin().await.unwrap();
    apply::apply(&mut first, Source::Webhook, &[customer])
        .await
        .unwrap();
    let pool = db.pool.clone();
    let second = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        apply::apply(&mut tx, Source::Webhook, &[transaction])
            .await
            .unwrap();
        tx.commit().await.unwrap();
    });
    // Until the second writer has finished or waits for a lock (bounded: 10 s).
    let waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'advisory'";
    for _ in 0..1000 {
        if second.is_finished() || db.count(waiting).await > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    first.commit().await.unwrap();
    second.await.unwrap();
    let credited: Option<String> =
        sqlx::query_scalar("SELECT credited_partner_key FROM transactions WHERE key = 'txn_race'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(credited.as_deref(), Some("pk_race"));
    assert!(
        totals::drift(&mut db.pool.acquire().await.unwrap())
            .await
            .unwrap()
            .is_empty()
    );
}

/// Totals cannot overflow: rows of the largest amounts a `BIGINT` holds (written by a path
/// that skips the copy's own bound, as a hand-written row would), in one group, commit, and
/// the stored total is their exact sum, beyond any `BIGINT`.
#[tokio::test]
async fn totals_of_the_largest_amounts_do_not_overflow() {
    let db = TestDb::new().await;
    let mut observations = Vec::new();
    for n in 0..3 {
        let mut o = Observation::parse(
            Entity::Transaction,
            json!({"key": format!("txn_huge_{n}"), "amount": 1, "currency": "USD",
                   "approved": true, "partner_key": "pk_huge", "created_at": T0}),
            false,
        )
        .unwrap();
        let at = partnerstack_sync::columns::of(Entity::Transaction)
            .iter()
            .position(|c| c.name == "amount")
            .unwrap();
        o.columns[at] = partnerstack_sync::columns::Col::Int(Some(i64::MAX));
        observations.push(o);
    }
    let mut tx = db.pool.begin().await.unwrap();
    apply::apply(&mut tx, Source::Reconcile, &observations)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let total: String =
        sqlx::query_scalar("SELECT amount::text FROM partner_totals WHERE partner_key = 'pk_huge'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(total, (3 * i128::from(i64::MAX)).to_string());
    let drift = totals::drift(&mut db.pool.acquire().await.unwrap())
        .await
        .unwrap();
    assert!(drift.is_empty(), "{drift:?}");
}
