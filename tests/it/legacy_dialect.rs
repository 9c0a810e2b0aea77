//! The client against wiremock speaking the legacy dialect: `/partners`,
//! `ending_cursor`, second timestamps, `"status": "2xx"`; and the error paths.

use chrono::{TimeZone, Utc};
use partnerstack::Entity;
use partnerstack::client::{Client, Error, ListQuery};
use serde_json::{Value, json};
use wiremock::matchers::{basic_auth, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::client::{PUBLIC_KEY, SECRET_KEY, client_config, scan};
use crate::common::free_port;

async fn legacy_client(server: &MockServer) -> Client {
    let mut config = client_config(&format!("{}/api/v2", server.uri()));
    config.paths.partnerships = "/partners".into();
    config.page_size = 2;
    Client::new(&config).unwrap()
}

fn partner(key: &str, created_s: i64) -> Value {
    json!({"key": key, "partner_key": format!("pk-{key}"), "name": "Partner", "status": "active",
           "group_key": "grp_gold", "created_at": created_s, "updated_at": created_s + 60,
           "metadata": {"source": "legacy"}})
}

fn page(items: Vec<Value>, has_more: bool, cursor: Option<&str>) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "data": {"items": items, "has_more": has_more, "ending_cursor": cursor},
        "message": "Success",
        "status": "2xx",
    }))
}

#[tokio::test]
async fn the_legacy_dialect_pages_by_ending_cursor_with_second_timestamps() {
    let server = MockServer::start().await;
    // The cursor is opaque: it is not the last item's key, so using the key would miss.
    Mock::given(method("GET"))
        .and(path("/api/v2/partners"))
        .and(basic_auth(PUBLIC_KEY, SECRET_KEY))
        .and(query_param("limit", "2"))
        .and(query_param_is_missing("starting_after"))
        .respond_with(page(
            vec![partner("p3", 1_700_000_300), partner("p2", 1_700_000_200)],
            true,
            Some("cursor-after-p2"),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/partners"))
        .and(query_param("starting_after", "cursor-after-p2"))
        .respond_with(page(vec![partner("p1", 1_700_000_100)], false, None))
        .expect(1)
        .mount(&server)
        .await;

    let client = legacy_client(&server).await;
    let mut pager = client.pages(Entity::Partner, ListQuery::default());
    let first = pager.next_page().await.unwrap().unwrap();
    assert_eq!(first.next_cursor.as_deref(), Some("cursor-after-p2"));
    let typed = first.typed::<partnerstack::models::Partnership>();
    let p3 = typed[0].as_ref().unwrap();
    assert_eq!(
        p3.typed.meta.created_at,
        Some(Utc.timestamp_opt(1_700_000_300, 0).unwrap()),
        "seconds read as seconds"
    );
    assert_eq!(
        p3.raw["metadata"]["source"], "legacy",
        "unknown fields kept raw"
    );
    let second = pager.next_page().await.unwrap().unwrap();
    assert_eq!(second.items.len(), 1);
    assert!(!second.has_more);
    assert!(pager.next_page().await.unwrap().is_none());
    assert_eq!((pager.pages(), pager.items()), (2, 3));
}

#[tokio::test]
async fn an_empty_page_ends_the_walk_even_when_has_more_says_otherwise() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v2/customers"))
        .respond_with(page(vec![], true, None))
        .expect(1)
        .mount(&server)
        .await;
    let client = legacy_client(&server).await;
    assert!(
        scan(&client, Entity::Customer, ListQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_list_answer_without_items_is_an_error_not_the_last_page() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v2/partners"))
        .and(query_param_is_missing("starting_after"))
        .respond_with(page(
            vec![partner("p3", 1_700_000_300), partner("p2", 1_700_000_200)],
            true,
            Some("cursor-after-p2"),
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/partners"))
        .and(query_param("starting_after", "cursor-after-p2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": {"has_more": true, "items": null},
            "status": "2xx",
        })))
        .mount(&server)
        .await;
    let client = legacy_client(&server).await;
    let err = scan(&client, Entity::Partner, ListQuery::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidResponse { detail, .. } if detail.contains("items")),
        "{err}"
    );
}

#[tokio::test]
async fn a_cursor_that_comes_back_is_an_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v2/partners"))
        .respond_with(page(
            vec![partner("p2", 1_700_000_200), partner("p1", 1_700_000_100)],
            true,
            Some("same-cursor"),
        ))
        .expect(2)
        .mount(&server)
        .await;
    let client = legacy_client(&server).await;
    let err = scan(&client, Entity::Partner, ListQuery::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::StalledCursor { cursor, pages: 2, .. } if cursor == "same-cursor"),
        "{err}"
    );
}

#[tokio::test]
async fn client_errors_keep_partnerstacks_status_and_message_and_are_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v2/customers"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"message": "'limit' must be less than or equal to 100", "status": 400}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let client = legacy_client(&server).await;
    let err = scan(&client, Entity::Customer, ListQuery::default())
        .await
        .unwrap_err();
    match &err {
        Error::Http { status, message } => {
            assert_eq!(status.as_u16(), 400);
            assert_eq!(message, "'limit' must be less than or equal to 100");
        }
        other => panic!("expected an HTTP error, got {other}"),
    }
}

#[tokio::test]
async fn retry_after_as_an_http_date_and_5xx_are_retried_then_given_up() {
    let server = MockServer::start().await;
    // A date in the past: retry at once.
    Mock::given(method("GET"))
        .and(path("/api/v2/groups"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")
                .insert_header("x-ratelimit-remaining", "0"),
        )
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/groups"))
        .respond_with(page(
            vec![json!({"key": "grup_1", "name": "Gold", "created_at": 1_700_000_000})],
            false,
            None,
        ))
        .expect(1)
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/leads"))
        .respond_with(ResponseTemplate::new(500).set_body_string("upstream exploded"))
        .expect(3)
        .mount(&server)
        .await;

    let mut config = client_config(&format!("{}/api/v2", server.uri()));
    config.max_attempts = 3;
    let client = Client::new(&config).unwrap();
    assert_eq!(
        scan(&client, Entity::Group, ListQuery::default())
            .await
            .unwrap(),
        ["grup_1"]
    );
    let err = scan(&client, Entity::Lead, ListQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::GaveUp { attempts: 3, .. }), "{err}");
    assert!(err.to_string().contains("upstream exploded"), "{err}");
}

#[tokio::test]
async fn an_unreachable_api_is_a_transport_error_after_bounded_attempts() {
    // A port nothing listens on (bound, then released).
    let port = free_port();
    let mut config = client_config(&format!("http://127.0.0.1:{port}/api/v2"));
    config.max_attempts = 2;
    let client = Client::new(&config).unwrap();
    let err = scan(&client, Entity::Deal, ListQuery::default())
        .await
        .unwrap_err();
    match err {
        Error::GaveUp { attempts: 2, last } => {
            assert!(matches!(*last, Error::Transport { .. }), "{last}")
        }
        other => panic!("{other}"),
    }
}
