//! Authentication, cursors, limits and parameters: documented 4xx answers.

use serde_json::json;

use super::*;
use crate::common::TestApp;

#[tokio::test]
async fn auth_cursor_limit_and_parameter_errors_are_documented_4xx() {
    let app = TestApp::spawn().await;
    for i in 0..3 {
        seed(&app, "partners", json!({"key": format!("part_{i}")})).await;
        seed(&app, "customers", json!({"key": format!("cus_{i}")})).await;
    }

    // No token, a wrong token, another scheme: 401 with the error body.
    let url = app.url("/v1/partners");
    for request in [
        app.http.get(&url),
        app.http.get(&url).bearer_auth("wrong-token-0123456789"),
        app.http.get(&url).basic_auth(API_TOKEN, None::<&str>),
        app.http.get(&url).header("authorization", API_TOKEN),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_error_body(&response.json().await.unwrap(), 401, "unauthorized");
    }
    // The scheme is case-insensitive.
    let response = app
        .http
        .get(&url)
        .header("authorization", format!("bearer {API_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Operations stay open.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/status",
        "/openapi.json",
    ] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }

    // Cursors: garbage, tampered, and one from another collection.
    let page = ok(&app, "/v1/partners?limit=1").await;
    let cursor = page["data"]["ending_cursor"].as_str().unwrap().to_string();
    assert_eq!(page["data"]["has_more"], true);
    let customers_cursor = ok(&app, "/v1/customers?limit=1").await["data"]["ending_cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let mut tampered = cursor.clone().into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [
        "garbage",
        "part_1",
        "%00",
        "////",
        tampered.as_str(),
        customers_cursor.as_str(),
        &"A".repeat(3000),
    ] {
        let message = refused(
            &app,
            &format!("/v1/partners?starting_after={bad}"),
            400,
            "bad_request",
        )
        .await;
        assert!(message.contains("starting_after"), "{message}");
    }
    assert_eq!(
        ok(
            &app,
            &format!("/v1/partners?limit=1&starting_after={cursor}")
        )
        .await["data"]["items"][0]["key"],
        "part_1"
    );

    for limit in ["0", "251", "-1", "ten", "1.5"] {
        let message = refused(
            &app,
            &format!("/v1/partners?limit={limit}"),
            400,
            "bad_request",
        )
        .await;
        assert!(message.contains("limit"), "{message}");
    }
    assert_eq!(
        ok(&app, "/v1/partners?limit=250").await["data"]["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let message = refused(&app, "/v1/partners?grup_key=x&limit=5", 400, "bad_request").await;
    assert!(message.contains("grup_key"), "{message}");
    let message = refused(&app, "/v1/partners?b=1&a=2", 400, "bad_request").await;
    assert!(message.contains("a, b"), "{message}");
    // A filter of another collection is unknown here too.
    let message = refused(&app, "/v1/partners?customer_key=x", 400, "bad_request").await;
    assert!(message.contains("customer_key"), "{message}");
    let message = refused(&app, "/v1/events?include_deleted=true", 400, "bad_request").await;
    assert!(message.contains("include_deleted"), "{message}");
    let message = refused(&app, "/v1/partners/part_1?limit=1", 400, "bad_request").await;
    assert!(message.contains("limit"), "{message}");

    for (path, name) in [
        ("/v1/partners?limit=1&limit=2", "limit"),
        ("/v1/partners?group_key=", "group_key"),
        ("/v1/partners?include=everything", "include"),
        ("/v1/partners?include_deleted=maybe", "include_deleted"),
        ("/v1/partners?updated_since=yesterday", "updated_since"),
        ("/v1/transactions?approved=yes", "approved"),
        ("/v1/customers?email=a%00b", "email"),
    ] {
        let message = refused(&app, path, 400, "bad_request").await;
        assert!(message.contains(name), "{path}: {message}");
    }
    refused(&app, "/v1/nothing", 404, "not_found").await;
    let response = app
        .http
        .delete(app.url("/v1/partners/part_1"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_error_body(&response.json().await.unwrap(), 405, "method_not_allowed");
    app.stop().await;
}
