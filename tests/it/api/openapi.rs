//! `/openapi.json`: valid, listing every route, and typed for client generators.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::*;
use crate::common::TestApp;

/// Every route the service serves, as `METHOD path`.
const ROUTES: &[&str] = &[
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /status",
    "GET /openapi.json",
    "POST /webhooks/partnerstack/{token}",
    "POST /webhooks/partnerstack",
    "POST /webhooks/partnerstack/",
    "GET /v1/partners",
    "GET /v1/partners/{key}",
    "GET /v1/partners/{key}/summary",
    "GET /v1/customers",
    "POST /v1/customers",
    "GET /v1/customers/{key}",
    "PATCH /v1/customers/{key}",
    "GET /v1/transactions",
    "POST /v1/transactions",
    "GET /v1/transactions/{key}",
    "DELETE /v1/transactions/{key}",
    "GET /v1/writes",
    "GET /v1/writes/{id}",
    "POST /v1/writes/{id}/retry",
    "GET /v1/rewards",
    "GET /v1/rewards/{key}",
    "GET /v1/groups",
    "GET /v1/groups/{key}",
    "GET /v1/deals",
    "GET /v1/deals/{key}",
    "GET /v1/leads",
    "GET /v1/leads/{key}",
    "GET /v1/events",
    "GET /v1/events/{id}",
    "GET /v1/sync",
    "POST /v1/sync/{stream}",
    "GET /v1/changes",
    "GET /v1/partners/{key}/history",
    "GET /v1/customers/{key}/history",
    "GET /v1/transactions/{key}/history",
    "GET /v1/rewards/{key}/history",
    "GET /v1/groups/{key}/history",
    "GET /v1/deals/{key}/history",
    "GET /v1/leads/{key}/history",
    "GET /v1/relay",
    "POST /v1/relay/{name}/replay",
];

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_is_valid_and_lists_every_route() {
    let app = TestApp::spawn().await;
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();

    // It parses as an OpenAPI 3.1 document.
    let spec = oas3::from_json(&text).expect("an OpenAPI 3.1 document");
    spec.validate_version()
        .expect("a supported OpenAPI version");
    assert!(spec.openapi.starts_with("3."));
    let doc: Value = serde_json::from_str(&text).unwrap();

    // It describes exactly the routes the router serves (the router and the description
    // are built from the same registrations; this pins both to the contract).
    let mut operations = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations.insert(
                format!("{} {path}", method.to_uppercase()),
                operation.clone(),
            );
        }
    }
    let described: BTreeSet<&str> = operations.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = ROUTES.iter().copied().collect();
    assert_eq!(described, expected);

    // Every $ref resolves.
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(!all_refs.is_empty());
    for r in all_refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .expect("a schema ref");
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{r} does not resolve"
        );
    }

    let ids: BTreeSet<&str> = operations
        .values()
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), operations.len(), "operationIds are unique");

    for (route, op) in &operations {
        let (method, path) = route.split_once(' ').unwrap();
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        // Every path template variable is a declared, required path parameter.
        for segment in path.split('/').filter(|s| s.starts_with('{')) {
            let name = segment.trim_matches(|c| c == '{' || c == '}');
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true),
                "{route}: path parameter {name} undeclared"
            );
        }
        let responses = op["responses"].as_object().unwrap();
        assert!(!responses.is_empty(), "{route}");

        // The service really serves it: a request with test values is not the fallback.
        let concrete = path
            .replace("{key}", "probe")
            .replace("{id}", "1")
            .replace("{token}", "probe")
            .replace("{stream}", "customers")
            .replace("{name}", "probe");
        let request = match method {
            "GET" => app.http.get(app.url(&concrete)),
            "POST" => app.http.post(app.url(&concrete)).body("{}"),
            "PATCH" => app.http.patch(app.url(&concrete)).body("{}"),
            "DELETE" => app.http.delete(app.url(&concrete)),
            other => panic!("unexpected method {other}"),
        };
        let response = request.bearer_auth(API_TOKEN).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!(!body.contains("no such route"), "{route} is not routed");
        assert!(
            responses.contains_key(&status.to_string()),
            "{route} answered {status}, which it does not document"
        );

        if path.starts_with("/v1/") {
            let success = if method == "GET" { "200" } else { "202" };
            for code in [success, "400", "401", "500", "503"] {
                assert!(responses.contains_key(code), "{route} lacks {code}");
            }
            // A write names an object PartnerStack may have (its answer is the write's
            // outcome); every other route with a key can miss.
            if path.contains('{') && !matches!(method, "PATCH" | "DELETE") {
                assert!(responses.contains_key("404"), "{route} lacks 404");
            }
            // Each operation shows the scope it needs: every GET reads; customer and
            // transaction writes write; anything else that changes state is admin.
            let writes = [
                "/v1/customers",
                "/v1/customers/{key}",
                "/v1/transactions",
                "/v1/transactions/{key}",
            ];
            let scope = match method {
                "GET" => "read",
                _ if writes.contains(&path) => "write",
                _ => "admin",
            };
            assert_eq!(op["security"], json!([{"bearer": [scope]}]), "{route}");
            assert!(
                op["description"]
                    .as_str()
                    .is_some_and(|d| d.contains(&format!("`{scope}` scope"))),
                "{route}: {}",
                op["description"]
            );
            assert!(responses.contains_key("403"), "{route} lacks 403");
            // And it is refused without a token.
            let unauthenticated = match method {
                "POST" => app.http.post(app.url(&concrete)),
                "PATCH" => app.http.patch(app.url(&concrete)),
                "DELETE" => app.http.delete(app.url(&concrete)),
                _ => app.http.get(app.url(&concrete)),
            };
            let response = unauthenticated.send().await.unwrap();
            assert_eq!(response.status(), 401, "{route} is open");
        }
        let accepted_query: BTreeSet<&str> = params
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        // Collections (not the reconciler's status, the feed or the relay) speak the list
        // dialect.
        let not_collections = ["/v1/sync", "/v1/changes", "/v1/relay"];
        if method == "GET"
            && path.starts_with("/v1/")
            && !path.contains('{')
            && !not_collections.contains(&path)
        {
            for name in ["limit", "starting_after", "updated_since", "include"] {
                assert!(accepted_query.contains(name), "{route} lacks {name}");
            }
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer"})
    );
    app.stop().await;
}

/// `name`'s schema in `doc`.
fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let schema = &doc["components"]["schemas"][name];
    assert!(schema.is_object(), "no schema {name}");
    schema
}

/// The schema a `$ref` names, or `schema` itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => schema_named(doc, r),
        None => schema,
    }
}

fn schema_named<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    schema(
        doc,
        reference.strip_prefix("#/components/schemas/").unwrap(),
    )
}

/// Checks `value` against `schema` as far as this contract needs: required properties
/// present, enum values listed, null only where allowed. Panics naming the path.
pub(super) fn conforms(doc: &Value, schema: &Value, value: &Value, path: &str) {
    let schema = resolve(doc, schema);
    if let Some(parts) = schema["allOf"].as_array() {
        parts.iter().for_each(|p| conforms(doc, p, value, path));
    }
    if let Some(options) = schema["oneOf"].as_array() {
        if value.is_null() {
            assert!(options.iter().any(|o| o["type"] == "null"), "{path}: null");
        } else {
            let typed: Vec<&Value> = options.iter().filter(|o| o["type"] != "null").collect();
            assert_eq!(typed.len(), 1, "{path}: one non-null option");
            conforms(doc, typed[0], value, path);
        }
    }
    if let Some(words) = schema["enum"].as_array() {
        assert!(
            words.contains(value),
            "{path}: {value} is not one of {words:?}"
        );
    }
    let nullable = schema["type"]
        .as_array()
        .is_some_and(|t| t.contains(&json!("null")));
    if value.is_null() && !schema["type"].is_null() {
        assert!(nullable, "{path} is null, which its schema does not allow");
    }
    if let (Some(properties), Some(object)) = (schema["properties"].as_object(), value.as_object())
    {
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap();
            assert!(
                object.contains_key(name),
                "{path}.{name} is required but absent"
            );
        }
        for (name, property) in properties {
            if let Some(v) = object.get(name) {
                conforms(doc, property, v, &format!("{path}.{name}"));
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, item) in list.iter().enumerate() {
            conforms(doc, items, item, &format!("{path}[{i}]"));
        }
    }
}

/// Every schema name `value` refers to, and those they refer to.
fn closure(doc: &Value, roots: &[&Value]) -> BTreeSet<String> {
    let mut todo = Vec::new();
    roots.iter().for_each(|r| refs(r, &mut todo));
    let mut seen = BTreeSet::new();
    while let Some(r) = todo.pop() {
        let name = r.strip_prefix("#/components/schemas/").unwrap().to_string();
        if seen.insert(name.clone()) {
            refs(schema(doc, &name), &mut todo);
        }
    }
    seen
}

/// The object schemas inside `schema` (itself, its `allOf` parts).
fn object_parts(schema: &Value) -> Vec<&Value> {
    let mut parts: Vec<&Value> = schema["allOf"].as_array().into_iter().flatten().collect();
    parts.push(schema);
    parts.retain(|p| p["properties"].is_object());
    parts
}

/// What a client generator (openapi-python-client, openapi-typescript) reads: one named
/// schema per object, referenced; closed sets as enums; fields always answered marked
/// required; text parameters that refuse empty values saying so.
#[tokio::test]
async fn openapi_is_typed_for_client_generators() {
    use partnerstack_sync::columns::Source;
    use partnerstack_sync::db::{changes::Operation, events, sync, writes};
    use partnerstack_sync::error::ErrorCode;

    let app = TestApp::spawn().await;
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // Named objects are referenced, never copied: each object schema's text appears once.
    let text = doc.to_string();
    let objects = [
        "Partner",
        "Customer",
        "Transaction",
        "Reward",
        "Group",
        "Deal",
        "Lead",
        "Event",
        "Write",
        "ChangeItem",
        "StreamStatus",
        "EndpointStatus",
        "PartnerSummary",
    ];
    for name in objects {
        let own = schema(&doc, name).to_string();
        assert_eq!(text.matches(&own).count(), 1, "{name} is copied inline");
    }
    for name in [
        "Partner",
        "Customer",
        "Transaction",
        "Reward",
        "Group",
        "Deal",
        "Lead",
        "Event",
        "Write",
    ] {
        assert_eq!(
            schema(&doc, &format!("Page_{name}"))["properties"]["items"]["items"]["$ref"],
            format!("#/components/schemas/{name}")
        );
        assert_eq!(
            schema(&doc, &format!("Item_{name}"))["properties"]["data"]["$ref"],
            format!("#/components/schemas/{name}")
        );
    }

    // Closed sets are enums of the words served.
    let words = |list: Vec<&str>| json!(list);
    let enums = [
        (
            "Outcome",
            words(events::Outcome::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "AppliedFrom",
            words(
                events::AppliedFrom::ALL
                    .iter()
                    .map(|o| o.as_str())
                    .collect(),
            ),
        ),
        (
            "WriteKind",
            words(writes::WriteKind::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "WriteStatus",
            words(
                writes::WriteStatus::ALL
                    .iter()
                    .map(|o| o.as_str())
                    .collect(),
            ),
        ),
        (
            "Resolution",
            words(writes::Resolution::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "PassKind",
            words(sync::PassKind::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "PassStatus",
            words(sync::PassStatus::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "Operation",
            words(Operation::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "Source",
            words(Source::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "ErrorCode",
            words(ErrorCode::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "Collection",
            json!([
                "partners",
                "customers",
                "transactions",
                "rewards",
                "groups",
                "deals",
                "leads"
            ]),
        ),
        (
            "Stream",
            json!([
                "partnerships",
                "customers",
                "transactions",
                "rewards",
                "groups",
                "deals",
                "leads"
            ]),
        ),
        ("Acceptance", json!(["accepted"])),
    ];
    for (name, expected) in enums {
        assert_eq!(schema(&doc, name)["enum"], expected, "{name}");
    }
    let property = |object: &str, field: &str| {
        object_parts(schema(&doc, object))
            .into_iter()
            .find_map(|p| p["properties"].get(field).cloned())
            .unwrap_or_else(|| panic!("{object}.{field}"))
    };
    for (object, field, named) in [
        ("Record", "source", "Source"),
        ("ChangeItem", "entity", "Collection"),
        ("ChangeItem", "source", "Source"),
        ("StreamStatus", "stream", "Stream"),
        ("SyncRequested", "status", "Acceptance"),
        ("Accepted", "status", "Acceptance"),
        ("Event", "outcome", "Outcome"),
        ("Write", "kind", "WriteKind"),
    ] {
        let p = property(object, field);
        assert_eq!(
            p["$ref"],
            format!("#/components/schemas/{named}"),
            "{object}.{field}: {p}"
        );
    }
    assert_eq!(
        property("EndpointStatus", "entities")["items"]["$ref"],
        "#/components/schemas/Collection"
    );
    let parameter = |route: &str, method: &str, name: &str| {
        doc["paths"][route][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{method} {route} ?{name}"))
    };
    for (route, name, named) in [
        ("/v1/events", "outcome", "Outcome"),
        ("/v1/writes", "status", "WriteStatus"),
        ("/v1/writes", "kind", "WriteKind"),
    ] {
        assert_eq!(
            parameter(route, "get", name)["schema"]["$ref"],
            format!("#/components/schemas/{named}")
        );
    }
    assert_eq!(
        parameter("/v1/sync/{stream}", "post", "stream")["schema"]["$ref"],
        "#/components/schemas/Stream"
    );
    let entity = parameter("/v1/changes", "get", "entity");
    assert_eq!(
        entity["schema"]["items"]["$ref"],
        "#/components/schemas/Collection"
    );
    assert_eq!(
        (entity["style"].clone(), entity["explode"].clone()),
        (json!("form"), json!(false))
    );
    for (route, name, word) in [
        ("/v1/customers", "IncludeRaw", "raw"),
        ("/v1/customers/{key}", "IncludeRaw", "raw"),
        ("/v1/events", "IncludePayload", "payload"),
        ("/v1/writes", "IncludeResult", "result"),
    ] {
        let reference = parameter(route, "get", "include")["schema"]["$ref"].clone();
        assert_eq!(reference, format!("#/components/schemas/{name}"), "{route}");
        assert_eq!(schema(&doc, name)["enum"], json!([word]), "{route}");
    }

    // Answers' fields are required (nullable, but present), but the few left out when empty.
    let mut answers = Vec::new();
    let mut requests = Vec::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            answers.push(&op["responses"]);
            requests.push(&op["requestBody"]);
            requests.push(&op["parameters"]);
        }
    }
    let requests = closure(&doc, &requests);
    let sometimes_absent = [("Record", "raw"), ("Event", "payload")];
    let mut checked = 0;
    for name in closure(&doc, &answers).difference(&requests) {
        for part in object_parts(schema(&doc, name)) {
            let required: BTreeSet<&str> = part["required"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r.as_str().unwrap())
                .collect();
            for field in part["properties"].as_object().unwrap().keys() {
                let field = field.as_str();
                if !sometimes_absent.contains(&(name.as_str(), field)) {
                    assert!(required.contains(field), "{name}.{field} is not required");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} answer fields checked");

    // Text parameters refuse empty values, and say so; the server agrees.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let s = &p["schema"];
                if p["in"] == "query" && s["type"] == "string" && s["enum"].is_null() {
                    assert_eq!(s["minLength"], 1, "{method} {path} ?{}", p["name"]);
                }
                if s["type"] == "array" {
                    assert_eq!(s["minItems"], 1, "{method} {path} ?{}", p["name"]);
                }
            }
        }
    }
    for query in ["starting_after=", "include=", "email=", "updated_since="] {
        refused(&app, &format!("/v1/customers?{query}"), 400, "bad_request").await;
    }
    app.stop().await;
}
