//! Deletions that stick: archived objects under each way lists can show them, and a
//! partnership read by `partner_key` under each way PartnerStack can answer it.

use std::time::Duration;

use partnerstack::Entity;
use partnerstack_sim::{
    ArchivedInLists, Behaviours, CustomerBody, DealLeadBody, MutationKind, Notify, Options,
    PartnershipByPartnerKey, Running,
};
use partnerstack_sync::apply::{self, Applied, Observation, Source};
use partnerstack_sync::config::Verification;
use serde_json::{Map, Value, json};

use crate::client::wired;
use crate::common::{TestApp, TestDb};
use crate::reconcile::{assert_converged, pass, reconciler, to_repair, total, truth};

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

/// `n` keys of live objects of `entity` the stand-in has (customers: with a
/// `customer_key`, which keyless bodies need to be found by).
fn live(sim: &Running, entity: Entity, n: usize) -> Vec<String> {
    let keys: Vec<String> = truth(sim, entity)
        .into_iter()
        .filter(|o| o["archived"] != true)
        .filter(|o| entity != Entity::Customer || o["customer_key"].is_string())
        .map(|o| o["key"].as_str().unwrap().to_string())
        .take(n)
        .collect();
    assert_eq!(keys.len(), n, "{entity:?}: not enough live objects");
    keys
}

async fn deleted(app: &TestApp, entity: Entity, key: &str) -> bool {
    app.db
        .count(&format!(
            "SELECT count(*) FROM {} WHERE key = '{key}' AND deleted_at IS NOT NULL",
            partnerstack_sync::columns::table(entity)
        ))
        .await
        == 1
}

/// Archived objects stay deleted and the copy converges under each way lists show them
/// (hidden; listed with `archived: true`; listed without a flag), for customers and
/// partnerships alike, under each partnership-refetch answer, each webhook body shape and
/// both verification modes. Which webhooks are lost is chosen, not drawn: where lists
/// keep archived objects without a flag only the webhook tells an archived object from a
/// live one, so there every archival is delivered (a lost one cannot be repaired by
/// lists, and the test would be asking the impossible). Repeats and reordering stay on.
#[tokio::test]
async fn archived_objects_stay_deleted_and_the_copy_converges() {
    use ArchivedInLists::{Flagged, Hidden, Unflagged};
    use PartnershipByPartnerKey::{Answers, Refused};
    for (archived, by_partner_key, customer_body, deal_lead_body, verification) in [
        (
            Hidden,
            Answers,
            CustomerBody::Sample,
            DealLeadBody::Full,
            Verification::Fetch,
        ),
        (
            Flagged,
            Refused,
            CustomerBody::Full,
            DealLeadBody::Keyless,
            Verification::Fetch,
        ),
        (
            Unflagged,
            Refused,
            CustomerBody::Keyless,
            DealLeadBody::Full,
            Verification::Fetch,
        ),
        (
            Unflagged,
            Answers,
            CustomerBody::Sample,
            DealLeadBody::Keyless,
            Verification::Body,
        ),
    ] {
        let behaviours = Behaviours {
            archived_customers: archived,
            archived_partnerships: archived,
            partnership_by_partner_key: by_partner_key,
            customer_body,
            deal_lead_body,
            ..Behaviours::default()
        };
        println!("[archives] {verification:?} {behaviours:?}");
        converges_with_archives(behaviours, verification).await;
    }
}

async fn converges_with_archives(behaviours: Behaviours, verification: Verification) {
    let unflagged = behaviours.archived_customers == ArchivedInLists::Unflagged;
    let options = Options {
        duplicate: 0.3,
        reorder: 0.5,
        behaviours,
        ..Options::small(12)
    };
    let (app, sim) = wired(options, |c| {
        c.webhooks.confirm_within = Duration::from_secs(2);
        c.webhooks.verification = verification;
    })
    .await;
    if unflagged {
        // Customers archived before the copy began are listed like live ones and were
        // never announced: nothing could tell the copy. Start from a program without them.
        for customer in truth(&sim, Entity::Customer) {
            if customer["archived"] == true {
                let key = customer["key"].as_str().unwrap();
                let live = fields(json!({"archived": false}));
                sim.simulator
                    .patch(Entity::Customer, key, &live, Notify::None)
                    .unwrap();
            }
        }
    }
    let r = reconciler(&app.db, &sim, |_| {});
    pass(&r, true).await;
    assert_converged(&app.db, &sim).await;
    // What no webhook delivered so far, the first pass brought: in the copy now, it is
    // nothing for the next pass to repair unless it changes again.
    let brought: Vec<(String, i64)> = sim
        .simulator
        .undelivered()
        .into_iter()
        .map(|u| (u.key, u.updated_at))
        .collect();

    // A lost archival is repaired by lists that hide or flag archived objects; with
    // unflagged lists nothing could repair it, so it is delivered there.
    let lost_archival = if unflagged {
        Notify::Deliver
    } else {
        Notify::Drop
    };
    let customers = live(&sim, Entity::Customer, 4);
    let partners = live(&sim, Entity::Partner, 4);
    let deals = live(&sim, Entity::Deal, 2);
    let leads = live(&sim, Entity::Lead, 2);
    let s = &sim.simulator;
    let patch = |entity, key: &str, change: Value, notify| {
        s.patch(entity, key, &fields(change), notify).unwrap();
    };
    patch(
        Entity::Customer,
        &customers[0],
        json!({"name": "Renamed, delivered"}),
        Notify::Deliver,
    );
    patch(
        Entity::Customer,
        &customers[1],
        json!({"name": "Renamed, lost"}),
        Notify::Drop,
    );
    patch(
        Entity::Customer,
        &customers[2],
        json!({"archived": true}),
        Notify::Deliver,
    );
    patch(
        Entity::Customer,
        &customers[3],
        json!({"archived": true}),
        lost_archival,
    );
    patch(
        Entity::Partner,
        &partners[0],
        json!({"tags": ["delivered"]}),
        Notify::Deliver,
    );
    patch(
        Entity::Partner,
        &partners[1],
        json!({"tags": ["lost"]}),
        Notify::Drop,
    );
    patch(
        Entity::Partner,
        &partners[2],
        json!({"archived": true}),
        Notify::Deliver,
    );
    patch(
        Entity::Partner,
        &partners[3],
        json!({"archived": true}),
        lost_archival,
    );
    patch(
        Entity::Deal,
        &deals[0],
        json!({"stage": "won"}),
        Notify::Deliver,
    );
    patch(
        Entity::Deal,
        &deals[1],
        json!({"stage": "lost"}),
        Notify::Drop,
    );
    patch(
        Entity::Lead,
        &leads[0],
        json!({"status": "dead"}),
        Notify::Deliver,
    );
    patch(
        Entity::Lead,
        &leads[1],
        json!({"status": "open"}),
        Notify::Drop,
    );
    s.mutate(1, Some(MutationKind::NewCustomer), Notify::Deliver);
    s.mutate(1, Some(MutationKind::NewCustomer), Notify::Drop);
    assert!(s.flush(Duration::from_secs(30)).await);
    app.settle().await;

    // What was delivered is deleted already, without waiting for a pass.
    assert!(deleted(&app, Entity::Customer, &customers[2]).await);
    assert!(deleted(&app, Entity::Partner, &partners[2]).await);
    if unflagged {
        assert!(deleted(&app, Entity::Customer, &customers[3]).await);
        assert!(deleted(&app, Entity::Partner, &partners[3]).await);
    }
    // No partnership delivery waited for PartnerStack: read by the stored key, or
    // settled at once.
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM webhook_events WHERE attempts > 0")
            .await,
        0
    );

    // One full pass: the lists (which may show the archived objects unflagged) bring
    // back nothing archived, and repair exactly what no webhook delivered.
    let expected: Vec<_> = to_repair(&app.db, &sim)
        .await
        .into_iter()
        .filter(|u| !brought.contains(&(u.key.clone(), u.updated_at)))
        .collect();
    let reports = pass(&r, true).await;
    let repairs = total(&reports, |r| r.counts.repairs);
    println!("[archives] repairs={repairs}, expected: {expected:?}");
    assert_converged(&app.db, &sim).await;
    assert_eq!(repairs as usize, expected.len());
    for (entity, key) in [
        (Entity::Customer, &customers[2]),
        (Entity::Customer, &customers[3]),
        (Entity::Partner, &partners[2]),
        (Entity::Partner, &partners[3]),
    ] {
        assert!(deleted(&app, entity, key).await, "{entity:?} {key} is live");
    }
    // And again: nothing left to change.
    let again = pass(&r, true).await;
    assert_eq!(total(&again, |r| r.counts.changed), 0);
    sim.stop().await.unwrap();
    app.stop().await;
}

/// A delivery's outcome and where its state came from.
async fn outcomes(app: &TestApp) -> Vec<(String, Option<String>, i32)> {
    sqlx::query_as("SELECT outcome, applied_from, attempts FROM webhook_events ORDER BY id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
}

/// The reference names only a "unique identifier" for a single partnership read, so
/// PartnerStack may refuse one by `partner_key` (a 404). Under each answer, a keyless
/// partnership body settles at once, never after minutes of retries: a partnership the
/// copy knows is read by its stored key (and verified either way); one it does not know is
/// read by `partner_key`, found where PartnerStack answers, else taken as in body mode
/// (no stored row: unresolved, for a reconcile pass to bring).
#[tokio::test]
async fn a_refused_partnership_read_falls_back_at_once() {
    for by_partner_key in [
        PartnershipByPartnerKey::Answers,
        PartnershipByPartnerKey::Refused,
    ] {
        let options = Options {
            behaviours: Behaviours {
                partnership_by_partner_key: by_partner_key,
                ..Behaviours::default()
            },
            ..Options::small(5)
        };
        // Retries would keep a delivery pending for a minute: settling sooner shows none.
        let (app, sim) = wired(options, |c| {
            c.webhooks.confirm_within = Duration::from_secs(60);
        })
        .await;
        let s = &sim.simulator;
        // The copy knows no partnership yet.
        let unknown = s.mutate(1, Some(MutationKind::UpdatePartnership), Notify::Deliver);
        assert!(s.flush(Duration::from_secs(10)).await);
        app.settle().await;
        let first = outcomes(&app).await;
        let expected = match by_partner_key {
            PartnershipByPartnerKey::Answers => ("applied".to_string(), Some("fetch".into()), 0),
            PartnershipByPartnerKey::Refused => ("unresolved".to_string(), None, 0),
        };
        assert_eq!(first, [expected], "{by_partner_key:?}");

        // Once the copy holds the partnerships, deliveries are read by the stored key.
        let r = reconciler(&app.db, &sim, |_| {});
        pass(&r, true).await;
        s.mutate(1, Some(MutationKind::UpdatePartnership), Notify::Deliver);
        assert!(s.flush(Duration::from_secs(10)).await);
        app.settle().await;
        let second = outcomes(&app).await;
        assert_eq!(
            second.last().unwrap(),
            &("applied".to_string(), Some("fetch".into()), 0),
            "{by_partner_key:?}"
        );
        let key = &unknown[0].key;
        assert!(!deleted(&app, Entity::Partner, key).await);
        sim.stop().await.unwrap();
        app.stop().await;
    }
}

const T0: i64 = 1_700_000_000_000;

/// Applies one customer observation through the one door, in a transaction of its own.
async fn apply_one(db: &TestDb, source: Source, object: Value, deleted: bool) -> Applied {
    let o = Observation::parse(Entity::Customer, object, deleted).unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let taken = apply::apply_or_set_aside(&mut tx, source, None, &[o])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    taken.into_iter().next().unwrap().unwrap()
}

/// Whether the customer is deleted, and its name.
async fn stored(db: &TestDb) -> (bool, String) {
    sqlx::query_as("SELECT deleted_at IS NOT NULL, name FROM customers WHERE key = 'cust_stick'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// The one door's rule, source by source: a deletion learned on evidence (a delete event,
/// an `archived` flag, from any source) stays until a sighting strictly newer than it says
/// the object is live, since lists may keep archived objects without a flag; a deletion
/// without a time of its own counts from when it was learned (a sighting older than that
/// still brings its content, and the row stays deleted); a deletion a full scan inferred
/// yields to a listing at the same source time.
#[tokio::test]
async fn a_deletion_stays_until_a_strictly_newer_sighting() {
    let db = TestDb::new().await;
    let at = |updated: i64, name: &str| {
        json!({"key": "cust_stick", "customer_key": "ck_stick", "name": name,
               "created_at": T0, "updated_at": updated})
    };
    let (webhook, reconcile) = (Source::Webhook, Source::Reconcile);
    apply_one(&db, webhook, at(T0, "a"), false).await;
    // A delete event, then lists that still show the object unflagged at that time.
    apply_one(&db, webhook, at(T0 + 1_000, "a"), true).await;
    assert_eq!(stored(&db).await, (true, "a".into()));
    let same = apply_one(&db, reconcile, at(T0 + 1_000, "a"), false).await;
    assert_eq!(same, Applied::Stale);
    apply_one(&db, reconcile, at(T0 + 1_000, "b"), false).await;
    apply_one(&db, webhook, at(T0 + 1_000, "b"), false).await;
    assert_eq!(stored(&db).await, (true, "a".into()), "not newer: no news");
    // Strictly newer: live again.
    apply_one(&db, reconcile, at(T0 + 2_000, "c"), false).await;
    assert_eq!(stored(&db).await, (false, "c".into()));

    // An archived flag on a listed object is a deletion, and it sticks the same way.
    let mut flagged = at(T0 + 3_000, "c");
    flagged["archived"] = json!(true);
    apply_one(&db, reconcile, flagged, false).await;
    apply_one(&db, webhook, at(T0 + 3_000, "c"), false).await;
    assert_eq!(stored(&db).await, (true, "c".into()));
    apply_one(&db, webhook, at(T0 + 4_000, "d"), false).await;
    assert_eq!(stored(&db).await, (false, "d".into()));

    // A delete event without a time (learned now): a later sighting made before now brings
    // its content and the row stays deleted.
    let bare = json!({"key": "cust_stick"});
    apply_one(&db, webhook, bare, true).await;
    assert_eq!(stored(&db).await, (true, "d".into()), "content kept");
    apply_one(&db, reconcile, at(T0 + 5_000, "e"), false).await;
    assert_eq!(stored(&db).await, (true, "e".into()));

    // A deletion a full scan inferred (it did not list the object) yields to a listing at
    // the same time: the scan may have missed it.
    sqlx::query(
        "UPDATE customers SET deleted_at = now(), undeleted_after = NULL WHERE key = 'cust_stick'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    apply_one(&db, reconcile, at(T0 + 5_000, "e"), false).await;
    assert_eq!(stored(&db).await, (false, "e".into()));
}
