//! `/v1` offers no filter the copy cannot fill: every filter a list describes in
//! `/openapi.json` matches objects of a copy synced from PartnerStack (the stand-in).

use std::collections::BTreeSet;

use partnerstack_sim::{MutationKind, Notify, Options};
use serde_json::Value;

use super::ok;
use crate::client::wired;
use crate::common::TestApp;
use crate::reconcile::{pass, reconciler};

/// The query parameters the OpenAPI description gives `GET path`.
fn parameters(doc: &Value, path: &str) -> BTreeSet<String> {
    doc["paths"][path]["get"]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("{path} has no parameters"))
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// The field of a list item that a filter matches on.
fn field(collection: &str, filter: &str) -> String {
    match (collection, filter) {
        ("rewards", "status") => "reward_status".into(),
        ("events", "type") => "event_type".into(),
        _ => filter.into(),
    }
}

/// A filter's value as a query parameter.
fn param(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A copy synced from the stand-in (every kind of object, webhooks and a full pass): each
/// filter every list offers finds objects by a value the copy holds. A filter on a field
/// PartnerStack never fills (partners' `status`: partnerships have none) finds nothing
/// and fails here.
#[tokio::test]
async fn every_filter_v1_offers_matches_what_the_copy_holds() {
    let (app, sim) = wired(Options::small(7), |_| {}).await;
    let r = reconciler(&app.db, &sim, |_| {});
    pass(&r, true).await;
    // Deliveries, for the event log's filters.
    sim.simulator
        .mutate(3, Some(MutationKind::UpdateCustomer), Notify::Deliver);
    sim.simulator
        .mutate(2, Some(MutationKind::UpdatePartnership), Notify::Deliver);
    assert!(
        sim.simulator
            .flush(std::time::Duration::from_secs(10))
            .await
    );
    app.settle().await;
    assert_every_filter_matches(&app).await;
    sim.stop().await.unwrap();
    app.stop().await;
}

async fn assert_every_filter_matches(app: &TestApp) {
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    let doc: Value = response.json().await.unwrap();
    // Groups have no filters of their own: theirs are the ones every list has (paging,
    // `updated_since`, `include_deleted`, `include`).
    let common = parameters(&doc, "/v1/groups");
    let collections = [
        "partners",
        "customers",
        "transactions",
        "rewards",
        "deals",
        "leads",
        "events",
    ];
    let mut checked = 0;
    for collection in collections {
        let path = format!("/v1/{collection}");
        let all = ok(app, &format!("{path}?limit=250")).await;
        let items = all["data"]["items"].as_array().unwrap().clone();
        assert!(!items.is_empty(), "{path}: the copy holds nothing");
        for filter in parameters(&doc, &path).difference(&common) {
            let name = field(collection, filter);
            let value = items
                .iter()
                .find_map(|item| param(&item[&name]))
                .unwrap_or_else(|| {
                    panic!(
                        "{path}?{filter}= can never match: no {collection} in the copy has \
                         a `{name}`"
                    )
                });
            let pair = serde_urlencoded::to_string([(filter.as_str(), value.as_str())]).unwrap();
            let query = format!("{path}?{pair}&limit=250");
            let found = ok(app, &query).await;
            let found = found["data"]["items"].as_array().unwrap();
            assert!(!found.is_empty(), "{query} found nothing");
            checked += 1;
        }
    }
    // partners 2, customers 3, transactions 5, rewards 3, deals 2, leads 3, events 3.
    assert!(checked >= 21, "{checked} filters checked");
}
