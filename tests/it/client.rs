//! The stand-in (`simulate`) wired to the service, for the service's tests: a program of
//! objects, the client settings, and both directions at once ([`wired`]). The client's own
//! tests against the stand-in live with the crates (`crates/partnerstack-sim/tests`).

use std::time::Duration;

use partnerstack::Entity;
use partnerstack::client::{Client, Error, ListQuery};
use partnerstack_sim::{self as simulate, FaultUpdate, Options, Running};
use partnerstack_sync::apply::Observation;
use partnerstack_sync::config::{Config, PartnerStackConfig, Verification};

use crate::common::TestApp;
use secrecy::SecretString;

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

/// Every key of one list walk, in order, each item read as the reconciler reads it; fails
/// on any error.
pub async fn scan(client: &Client, entity: Entity, query: ListQuery) -> Result<Vec<String>, Error> {
    let mut pager = client.pages(entity, query);
    let mut keys = Vec::new();
    while let Some(page) = pager.next_page().await? {
        for item in page.items {
            let o = Observation::parse(entity, item, false)
                .unwrap_or_else(|e| panic!("{entity:?} item does not parse: {e}"));
            keys.push(o.key);
        }
    }
    Ok(keys)
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
