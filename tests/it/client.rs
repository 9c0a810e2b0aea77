//! The PartnerStack client against the stand-in (`simulate`), in-process on port 0.

use std::collections::HashSet;
use std::time::Duration;

use partnerstack::Entity;
use partnerstack::client::{
    Client, CustomerUpdate, Error, ListQuery, NewCustomer, NewTransaction, TransactionCustomer,
};
use partnerstack_sim::{
    self as simulate, Behaviours, DuplicateTransactionKey, FaultUpdate, Options, RetryAfterHeader,
    Running,
};
use partnerstack_sync::apply::Observation;
use partnerstack_sync::config::{Config, PartnerStackConfig, Verification};

use crate::common::TestApp;
use secrecy::SecretString;
use serde_json::Value;

pub const PUBLIC_KEY: &str = "pk_test_simulated_0123";
pub const SECRET_KEY: &str = "sk_test_simulated_0123";

/// A program with uneven counts, so pages end at every kind of boundary.
pub fn program() -> Options {
    Options {
        groups: 3,
        partners: 23,
        customers: 61,
        transactions: 50,
        rewards: 40,
        deals: 9,
        leads: 12,
        ..Options::default()
    }
}

pub async fn stand_in(options: Options) -> Running {
    simulate::start(&options, PUBLIC_KEY, SECRET_KEY)
        .await
        .expect("start the stand-in")
}

/// The service in verified mode and a stand-in wired both ways: the stand-in's webhooks go
/// to the service, the service's verification fetches to the stand-in. `tweak` adjusts the
/// service's settings (its reconciler stays off; tests drive passes themselves).
pub async fn wired(options: Options, tweak: impl FnOnce(&mut Config)) -> (TestApp, Running) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/api/v2", listener.local_addr().unwrap());
    let app = TestApp::spawn_with(|c| {
        c.partnerstack = client_config(&base_url);
        c.webhooks.verification = Verification::Fetch;
        tweak(c);
    })
    .await;
    let options = Options {
        webhook_url: Some(app.webhook_url()),
        ..options
    };
    let sim = simulate::Simulator::new(
        &options,
        &SecretString::from(PUBLIC_KEY.to_string()),
        &SecretString::from(SECRET_KEY.to_string()),
    )
    .unwrap();
    let running = sim.spawn(listener).unwrap();
    (app, running)
}

/// Client settings for `base_url`: a budget that never binds and short backoff caps, so
/// retries cost milliseconds (the timing itself is tested with tokio's paused clock).
pub fn client_config(base_url: &str) -> PartnerStackConfig {
    let mut c = Config::load_with_env(None, &Default::default())
        .unwrap()
        .partnerstack;
    c.base_url = base_url.to_string();
    c.public_key = Some(SecretString::from(PUBLIC_KEY.to_string()));
    c.secret_key = Some(SecretString::from(SECRET_KEY.to_string()));
    c.requests_per_second = 10_000.0;
    c.max_backoff = Duration::from_millis(20);
    c.request_timeout = Duration::from_secs(10);
    c
}

pub fn client(running: &Running) -> Client {
    Client::new(&client_config(&running.base_url())).unwrap()
}

/// Every key of one list walk, in order; fails on any error.
pub async fn scan(client: &Client, entity: Entity, query: ListQuery) -> Result<Vec<String>, Error> {
    let mut pager = client.pages(entity, query);
    let mut keys = Vec::new();
    while let Some(page) = pager.next_page().await? {
        for item in page.items {
            // What the reconciler will do with every item.
            let o = Observation::parse(entity, item, false)
                .unwrap_or_else(|e| panic!("{entity:?} item does not parse: {e}"));
            keys.push(o.key);
        }
    }
    Ok(keys)
}

/// The keys a full scan must return, newest first.
fn expected(running: &Running, entity: Entity) -> Vec<String> {
    let mut keys = running.simulator.listed_keys(entity);
    keys.reverse();
    keys
}

/// PartnerStack down (`true`: every request to the stand-in's API answered with a 5xx
/// from now on), or back (`false`).
pub fn partnerstack_down(running: &Running, down: bool) {
    let error_rate = if down { 1.0 } else { 0.0 };
    running
        .simulator
        .faults()
        .update(FaultUpdate {
            error_rate: Some(error_rate),
            ..FaultUpdate::default()
        })
        .unwrap();
}

async fn set_faults(running: &Running, update: FaultUpdate) {
    running.simulator.faults().update(update).unwrap();
}

fn answers(running: &Running, status: u16) -> u64 {
    running
        .simulator
        .faults()
        .answers()
        .get(&status)
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn full_scans_return_exactly_the_stand_ins_objects_at_every_page_size() {
    let running = stand_in(program()).await;
    // Archive a customer: it must vanish from the customer list.
    running.simulator.mutate(
        1,
        Some(simulate::MutationKind::ArchiveCustomer),
        simulate::Notify::None,
    );
    for page_size in [1, 7, 100, 250] {
        let mut config = client_config(&running.base_url());
        config.page_size = page_size;
        let client = Client::new(&config).unwrap();
        for entity in Entity::ALL {
            let keys = scan(&client, entity, ListQuery::default()).await.unwrap();
            let want = expected(&running, entity);
            assert!(!want.is_empty(), "{entity:?} has objects");
            assert_eq!(keys, want, "{entity:?} at page size {page_size}");
            let distinct: HashSet<_> = keys.iter().collect();
            assert_eq!(distinct.len(), keys.len(), "duplicates in {entity:?}");
        }
    }
    let archived =
        running.simulator.len(Entity::Customer) - expected(&running, Entity::Customer).len();
    assert!(archived >= 1);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_scan_resumes_from_a_saved_cursor() {
    let running = stand_in(program()).await;
    let client = client(&running);
    let query = ListQuery {
        limit: Some(7),
        ..ListQuery::default()
    };
    let mut pager = client.pages(Entity::Customer, query.clone());
    let mut keys = Vec::new();
    for _ in 0..3 {
        let page = pager.next_page().await.unwrap().unwrap();
        keys.extend(
            page.items
                .iter()
                .map(|i| i["key"].as_str().unwrap().to_string()),
        );
    }
    let saved = pager.cursor().unwrap().to_string();
    assert_eq!(Some(saved.as_str()), keys.last().map(String::as_str));
    drop(pager);
    let rest = scan(
        &client,
        Entity::Customer,
        ListQuery {
            starting_after: Some(saved),
            ..query
        },
    )
    .await
    .unwrap();
    keys.extend(rest);
    assert_eq!(keys, expected(&running, Entity::Customer));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn items_stream_one_by_one() {
    use futures_util::TryStreamExt as _;
    let running = stand_in(program()).await;
    let client = client(&running);
    let query = ListQuery {
        limit: Some(9),
        ..ListQuery::default()
    };
    let items: Vec<Value> = client
        .pages(Entity::Lead, query)
        .into_items()
        .try_collect()
        .await
        .unwrap();
    let keys: Vec<String> = items
        .iter()
        .map(|i| i["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, expected(&running, Entity::Lead));
    running.stop().await.unwrap();
}

fn ms(t: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(t)
}

#[tokio::test]
async fn time_and_key_filters_return_the_right_subsets() {
    let running = stand_in(program()).await;
    let client = client(&running);
    let state = running.simulator.state(None);
    let objects = |stream: &str| -> Vec<Value> {
        let mut v = state["streams"][stream].as_array().unwrap().clone();
        v.reverse();
        v
    };
    let keys_where = |stream: &str, f: &dyn Fn(&Value) -> bool| -> Vec<String> {
        objects(stream)
            .into_iter()
            .filter(|o| o["archived"] != Value::Bool(true) || stream != "customers")
            .filter(|o| f(o))
            .map(|o| o["key"].as_str().unwrap().to_string())
            .collect()
    };
    let time = |o: &Value, f: &str| o[f].as_i64().unwrap();

    // Customers updated since the median update time.
    let mut updated: Vec<i64> = objects("customers")
        .iter()
        .map(|o| time(o, "updated_at"))
        .collect();
    updated.sort();
    let since = updated[updated.len() / 2];
    let got = scan(
        &client,
        Entity::Customer,
        ListQuery {
            min_updated: ms(since),
            limit: Some(5),
            ..ListQuery::default()
        },
    )
    .await
    .unwrap();
    let want = keys_where("customers", &|o| time(o, "updated_at") >= since);
    assert!(!want.is_empty() && want.len() < expected(&running, Entity::Customer).len());
    assert_eq!(got, want);

    // Transactions created within a window (both bounds inclusive).
    let created: Vec<i64> = objects("transactions")
        .iter()
        .map(|o| time(o, "created_at"))
        .collect();
    let (lo, hi) = (created[created.len() * 3 / 4], created[created.len() / 4]);
    let got = scan(
        &client,
        Entity::Transaction,
        ListQuery {
            min_created: ms(lo),
            max_created: ms(hi),
            limit: Some(4),
            ..ListQuery::default()
        },
    )
    .await
    .unwrap();
    let want = keys_where("transactions", &|o| {
        (lo..=hi).contains(&time(o, "created_at"))
    });
    assert!(want.len() >= 2);
    assert_eq!(got, want);

    // Rewards by status; customers and deals by partner.
    let got = scan(
        &client,
        Entity::Reward,
        ListQuery {
            status: Some("paid".into()),
            ..ListQuery::default()
        },
    )
    .await
    .unwrap();
    let want = keys_where("rewards", &|o| o["reward_status"] == "paid");
    assert!(!want.is_empty());
    assert_eq!(got, want);
    let partner = objects("customers")[0]["partner_key"]
        .as_str()
        .unwrap()
        .to_string();
    let got = scan(
        &client,
        Entity::Customer,
        ListQuery {
            partner_key: Some(partner.clone()),
            ..ListQuery::default()
        },
    )
    .await
    .unwrap();
    assert!(!got.is_empty());
    assert_eq!(
        got,
        keys_where("customers", &|o| o["partner_key"] == partner.as_str())
    );

    // A filter the stream does not have is refused before anything is sent.
    let before = running.simulator.faults().answers().values().sum::<u64>();
    let err = scan(
        &client,
        Entity::Transaction,
        ListQuery {
            min_updated: ms(since),
            ..ListQuery::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    assert_eq!(
        running.simulator.faults().answers().values().sum::<u64>(),
        before
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_429_storm_with_retry_after_is_waited_out_with_nothing_missed_or_repeated() {
    // Whether a 429 carries Retry-After is a guess: run under each.
    for header in [RetryAfterHeader::Sent, RetryAfterHeader::Omitted] {
        storm(header).await;
    }
}

async fn storm(header: RetryAfterHeader) {
    let running = stand_in(Options {
        behaviours: Behaviours {
            retry_after_header: header,
            ..Behaviours::default()
        },
        ..program()
    })
    .await;
    let client = client(&running);
    set_faults(
        &running,
        FaultUpdate {
            throttle_next: Some(5),
            retry_after: Some(1),
            ..FaultUpdate::default()
        },
    )
    .await;
    let keys = scan(
        &client,
        Entity::Customer,
        ListQuery {
            limit: Some(7),
            ..ListQuery::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(keys, expected(&running, Entity::Customer));
    assert_eq!(answers(&running, 429), 5);

    // A sustained rate limit: the stand-in accepts 40 requests/s, the scan asks for more.
    set_faults(
        &running,
        FaultUpdate {
            rate_limit: Some(40.0),
            ..FaultUpdate::default()
        },
    )
    .await;
    let keys = scan(
        &client,
        Entity::Transaction,
        ListQuery {
            limit: Some(1),
            ..ListQuery::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(keys, expected(&running, Entity::Transaction));
    assert!(answers(&running, 429) > 5, "the rate limit was hit");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn bursts_of_5xx_are_retried() {
    let running = stand_in(program()).await;
    let client = client(&running);
    set_faults(
        &running,
        FaultUpdate {
            fail_next: Some(4),
            fail_status: Some(503),
            ..FaultUpdate::default()
        },
    )
    .await;
    let keys = scan(&client, Entity::Reward, ListQuery::default())
        .await
        .unwrap();
    assert_eq!(keys, expected(&running, Entity::Reward));
    assert_eq!(answers(&running, 503), 4);

    // A random 30% of answers fail; 8 attempts make a lost request vanishingly unlikely.
    set_faults(
        &running,
        FaultUpdate {
            error_rate: Some(0.3),
            ..FaultUpdate::default()
        },
    )
    .await;
    let keys = scan(
        &client,
        Entity::Customer,
        ListQuery {
            limit: Some(3),
            ..ListQuery::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(keys, expected(&running, Entity::Customer));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn attempts_are_bounded_and_end_in_a_typed_error() {
    let running = stand_in(program()).await;
    let mut config = client_config(&running.base_url());
    config.max_attempts = 3;
    let client = Client::new(&config).unwrap();
    set_faults(
        &running,
        FaultUpdate {
            fail_next: Some(100),
            fail_status: Some(502),
            ..FaultUpdate::default()
        },
    )
    .await;
    let err = scan(&client, Entity::Group, ListQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::GaveUp { attempts: 3, .. }), "{err}");
    assert_eq!(err.status(), Some(reqwest::StatusCode::BAD_GATEWAY));
    assert_eq!(answers(&running, 502), 3);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_stalled_cursor_ends_in_an_error_not_a_loop() {
    let running = stand_in(program()).await;
    let client = client(&running);
    set_faults(
        &running,
        FaultUpdate {
            stall: Some(vec!["customers".into()]),
            ..FaultUpdate::default()
        },
    )
    .await;
    let mut pager = client.pages(
        Entity::Customer,
        ListQuery {
            limit: Some(10),
            ..ListQuery::default()
        },
    );
    assert!(pager.next_page().await.unwrap().is_some());
    let err = pager.next_page().await.unwrap_err();
    assert!(
        matches!(err, Error::StalledCursor { pages: 2, .. }),
        "{err}"
    );
    assert!(pager.is_done());
    assert!(pager.next_page().await.unwrap().is_none());
    // Other streams are unaffected.
    let keys = scan(&client, Entity::Deal, ListQuery::default())
        .await
        .unwrap();
    assert_eq!(keys, expected(&running, Entity::Deal));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_credentials_end_immediately_with_a_clear_error() {
    let running = stand_in(program()).await;
    let mut config = client_config(&running.base_url());
    config.secret_key = Some(SecretString::from("sk_wrong_0123456789".to_string()));
    let client = Client::new(&config).unwrap();
    let err = scan(&client, Entity::Partner, ListQuery::default())
        .await
        .unwrap_err();
    assert!(err.is_unauthorized(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("401") && text.contains("PARTNERSTACK_SECRET_KEY"),
        "{text}"
    );
    assert!(!text.contains("sk_wrong"), "the secret leaked: {text}");
    assert_eq!(answers(&running, 401), 1, "a 401 is not retried");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn customer_and_transaction_writes() {
    // A repeated transaction key is a guess: run under each answer.
    for duplicate in [
        DuplicateTransactionKey::Idempotent,
        DuplicateTransactionKey::Reject,
    ] {
        writes(duplicate).await;
    }
}

async fn writes(duplicate: DuplicateTransactionKey) {
    let running = stand_in(Options {
        behaviours: Behaviours {
            duplicate_transaction_key: duplicate,
            ..Behaviours::default()
        },
        ..program()
    })
    .await;
    let client = client(&running);
    let partner =
        running.simulator.state(Some(Entity::Partner))["streams"]["partnerships"][0]["partner_key"]
            .as_str()
            .unwrap()
            .to_string();
    let new = NewCustomer {
        email: "new.customer@example.com".into(),
        partner_key: partner.clone(),
        customer_key: Some("my-customer-1".into()),
        name: Some("New Customer".into()),
        ..NewCustomer::default()
    };
    let created = client.create_customer(&new).await.unwrap();
    assert_eq!(created.typed.customer_key.as_deref(), Some("my-customer-1"));
    assert_eq!(created.typed.partner_key.as_deref(), Some(partner.as_str()));
    assert!(created.raw["key"].as_str().unwrap().starts_with("cust_"));

    // A repeated customer_key: the refusal as PartnerStack worded it, nothing inferred
    // from it (the caller looks the customer up).
    let err = client.create_customer(&new).await.unwrap_err();
    assert!(matches!(&err, Error::Http { .. }), "{err}");
    assert_eq!(err.status(), Some(reqwest::StatusCode::BAD_REQUEST));

    let read = client.get_customer("my-customer-1").await.unwrap().unwrap();
    assert_eq!(read.typed.meta.key, created.typed.meta.key);
    assert!(client.get_customer("nobody").await.unwrap().is_none());

    let updated = client
        .update_customer(
            "my-customer-1",
            &CustomerUpdate {
                name: Some("Renamed".into()),
                ..CustomerUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.typed.name.as_deref(), Some("Renamed"));
    assert!(updated.typed.meta.updated_at > created.typed.meta.updated_at);

    let tx = NewTransaction {
        customer: TransactionCustomer::ExternalKey("my-customer-1".into()),
        amount: 4999,
        currency: "usd".into(),
        key: Some("invoice-0001".into()),
        category_key: None,
        product_key: Some("prod_pro".into()),
        metadata: None,
        test: None,
        created_at: None,
    };
    let t = client.create_transaction(&tx).await.unwrap();
    assert_eq!(t.typed.amount, Some(4999));
    assert_eq!(t.typed.currency.as_deref(), Some("USD"));
    assert_eq!(t.typed.meta.key.as_deref(), Some("invoice-0001"));
    assert_eq!(t.typed.customer_key, created.typed.meta.key);
    // The same key again: PartnerStack's answer is undocumented (the existing transaction,
    // or a refusal); either way nothing new exists, and a look-up finds the one there is.
    match (duplicate, client.create_transaction(&tx).await) {
        (DuplicateTransactionKey::Idempotent, Ok(again)) => assert_eq!(again.raw, t.raw),
        (DuplicateTransactionKey::Reject, Err(e)) => {
            assert_eq!(e.status(), Some(reqwest::StatusCode::BAD_REQUEST), "{e}");
        }
        (d, other) => panic!("{d:?}: {other:?}"),
    }
    let found = client
        .find_transaction("invoice-0001", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.raw, t.raw);
    let keys = scan(&client, Entity::Transaction, ListQuery::default())
        .await
        .unwrap();
    assert_eq!(keys.iter().filter(|k| *k == "invoice-0001").count(), 1);
    assert_eq!(keys[0], "invoice-0001", "newest first");

    // A 5xx on a create without a key is not retried: a repeat could create a second one.
    set_faults(
        &running,
        FaultUpdate {
            fail_next: Some(1),
            ..FaultUpdate::default()
        },
    )
    .await;
    let err = client
        .create_transaction(&NewTransaction { key: None, ..tx })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(reqwest::StatusCode::SERVICE_UNAVAILABLE));
    assert!(matches!(err, Error::Http { .. }), "not retried: {err}");
    running.stop().await.unwrap();
}
