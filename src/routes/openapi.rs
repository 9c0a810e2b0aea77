//! The OpenAPI 3.1 description of the service: utoipa's, made exact where utoipa cannot be.
//!
//! utoipa describes each type on its own; three rules need the whole document, and are
//! applied to it here, so no route or type has to remember them:
//! - **Named schemas are referenced, never copied.** utoipa inlines a generic's type
//!   argument (`List<Customer>` holds a copy of `Customer`), which gives a generated client
//!   a class per copy. Every inline copy of a named schema becomes a `$ref` to it.
//! - **Answers' fields are `required`.** Every field of a response type is serialised
//!   (null when it has no value) except the few serde leaves out ([`SOMETIMES_ABSENT`]);
//!   utoipa marks only the non-`Option` ones.
//! - **Text query parameters say what the server accepts**: 1 to
//!   [`params::MAX_VALUE_CHARS`] characters without NUL (`QueryParams::parse` refuses
//!   anything else), and list parameters at least one item.
//! - **Each `/v1` operation shows its scope**: the security requirement lists the scope
//!   [`api::scope`] enforces (OpenAPI 3.1 lets a non-OAuth scheme list roles), and its
//!   description says so; routes that may wait document the long-poll bound's 429.
//! - **Free-form objects say they are.** An object schema without `properties` (a JSON
//!   value such as `raw`, a change's `object`, the webhook body) gets
//!   `additionalProperties: true`: without it, openapi-typescript types it
//!   `Record<string, never>`, which TypeScript cannot read.

use std::collections::BTreeSet;

use axum::http::Method;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{AdditionalProperties, ArrayItems, Schema, SchemaType, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::Tag;
use utoipa::openapi::{Info, OpenApi, Ref, RefOr};

use crate::api::{self, params};

/// Response fields serde leaves out when they have no value, as `(schema, field)`: the
/// only fields of answers not marked `required`.
pub const SOMETIMES_ABSENT: &[(&str, &str)] = &[
    // Only with `include=raw`.
    ("Record", "raw"),
    // Only on `/v1/events/{id}` and with `include=payload`.
    ("Event", "payload"),
];

/// The OpenAPI 3.1 description of every route [`super::router`] serves, as served on
/// `/openapi.json`.
pub fn openapi() -> OpenApi {
    let mut doc = described();
    reference_named_schemas(&mut doc);
    require_answer_fields(&mut doc);
    bound_query_values(&mut doc);
    add_body_rules(&mut doc);
    describe_scopes(&mut doc);
    declare_free_form_objects(&mut doc);
    doc
}

/// utoipa's description of every route [`super::router`] serves.
fn described() -> OpenApi {
    let mut doc = super::open_routes(true).merge(api::routes()).into_openapi();
    // The `include` enums, which the routes' parameters refer to.
    let components = doc.components.get_or_insert_default();
    for include in params::INCLUDES {
        let (name, schema) = include.component();
        components.schemas.insert(name, schema);
    }
    doc.info = Info::new("partnerstack-sync", env!("CARGO_PKG_VERSION"));
    doc.info.description = Some(
        "A copy of a PartnerStack partner program, kept by webhooks and reconciliation. \
         `/v1` reads it in PartnerStack's list dialect (`limit` 1..250, default 25; \
         `starting_after` with the previous page's `ending_cursor`) and needs \
         `Authorization: Bearer <token>` of a client with the operation's scope: `read` \
         (every GET), `write` (customer and transaction writes) or `admin` (retries, \
         replays, syncs); a missing scope is a 403 `forbidden`. Errors are `{\"status\", \"code\", \"message\"}`. \
         Money is integer cents with its currency; times are RFC 3339."
            .to_string(),
    );
    doc.components.get_or_insert_default().add_security_scheme(
        api::BEARER,
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    let tag = |name: &str, description: &str| {
        let mut tag = Tag::new(name);
        tag.description = Some(description.to_string());
        tag
    };
    doc.tags = Some(vec![
        tag(
            "partners",
            "Partners (partnerships) and their commission summary",
        ),
        tag("customers", "Customers referred by partners"),
        tag("transactions", "Billing events of referred customers"),
        tag("rewards", "Commissions earned by partners"),
        tag("groups", "Partner groups"),
        tag("deals", "Deals registered by partners"),
        tag("leads", "Leads submitted by partners"),
        tag("events", "The raw webhook log"),
        tag(
            "writes",
            "Writes to PartnerStack (customers, transactions) through the outbox: committed, then sent once",
        ),
        tag("sync", "The reconciler: status and passes on demand"),
        tag(
            "changes",
            "The change feed: every change to the copy, in order (long-poll)",
        ),
        tag("relay", "Endpoints the change feed is pushed to, signed"),
        tag("webhooks", "PartnerStack's webhook deliveries"),
        tag(
            "operations",
            "Health, readiness, metrics and this description",
        ),
    ]);
    doc
}

/// The operations of the document.
fn operations_mut(doc: &mut OpenApi) -> impl Iterator<Item = &mut Operation> {
    doc.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
    })
}

/// The schemas an operation's answers (`answers`) or its parameters and body use directly.
fn operation_schemas(op: &mut Operation, answers: bool) -> Vec<&mut RefOr<Schema>> {
    let mut out = Vec::new();
    if answers {
        for response in op.responses.responses.values_mut() {
            if let RefOr::T(response) = response {
                for content in response.content.values_mut() {
                    if let RefOr::T(content) = content {
                        out.extend(content.schema.as_mut());
                    }
                }
            }
        }
    } else {
        if let Some(RefOr::T(body)) = &mut op.request_body {
            for content in body.content.values_mut() {
                if let RefOr::T(content) = content {
                    out.extend(content.schema.as_mut());
                }
            }
        }
        for parameter in op.parameters.iter_mut().flatten() {
            if let RefOr::T(parameter) = parameter {
                out.extend(parameter.schema.as_mut());
            }
        }
    }
    out
}

/// The schemas directly inside `schema` (properties, items, parts).
fn children(schema: &mut Schema) -> Vec<&mut RefOr<Schema>> {
    match schema {
        Schema::Object(object) => {
            let mut out: Vec<&mut RefOr<Schema>> = object.properties.values_mut().collect();
            if let Some(extra) = object.additional_properties.as_deref_mut()
                && let AdditionalProperties::RefOr(extra) = extra
            {
                out.push(extra);
            }
            out
        }
        Schema::Array(array) => match &mut array.items {
            ArrayItems::RefOrSchema(items) => vec![&mut **items],
            _ => Vec::new(),
        },
        Schema::OneOf(one) => one.items.iter_mut().collect(),
        Schema::AllOf(all) => all.items.iter_mut().collect(),
        Schema::AnyOf(any) => any.items.iter_mut().collect(),
        _ => Vec::new(),
    }
}

/// Replaces every inline copy of a named schema (`#/components/schemas/<name>`) with a
/// `$ref` to it. A schema shared by two names is left where it is.
fn reference_named_schemas(doc: &mut OpenApi) {
    let Some(components) = &mut doc.components else {
        return;
    };
    let mut named: Vec<(Schema, String)> = Vec::new();
    let mut shared = BTreeSet::new();
    for (name, schema) in &components.schemas {
        let RefOr::T(schema) = schema else { continue };
        match named.iter().find(|(s, _)| s == schema) {
            Some((_, first)) => {
                shared.insert(first.clone());
            }
            None => named.push((schema.clone(), name.clone())),
        }
    }
    named.retain(|(_, name)| !shared.contains(name));
    // A schema's own top level stays; copies of others inside it become references.
    for schema in components.schemas.values_mut() {
        if let RefOr::T(schema) = schema {
            for child in children(schema) {
                replace_copies(child, &named);
            }
        }
    }
    for op in operations_mut(doc) {
        for answers in [true, false] {
            for schema in operation_schemas(op, answers) {
                replace_copies(schema, &named);
            }
        }
    }
}

fn replace_copies(schema: &mut RefOr<Schema>, named: &[(Schema, String)]) {
    let RefOr::T(inline) = schema else { return };
    if let Some((_, name)) = named.iter().find(|(s, _)| s == inline) {
        *schema = RefOr::Ref(Ref::from_schema_name(name.clone()));
        return;
    }
    for child in children(inline) {
        replace_copies(child, named);
    }
}

/// The names of the schemas `roots` refer to, directly or through other schemas.
fn reachable(doc: &OpenApi, roots: Vec<RefOr<Schema>>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut todo: Vec<RefOr<Schema>> = roots;
    while let Some(schema) = todo.pop() {
        match schema {
            RefOr::Ref(r) => {
                let Some(name) = r.ref_location.strip_prefix("#/components/schemas/") else {
                    continue;
                };
                if found.insert(name.to_string())
                    && let Some(target) = doc.components.as_ref().and_then(|c| c.schemas.get(name))
                {
                    todo.push(target.clone());
                }
            }
            RefOr::T(mut inline) => {
                todo.extend(children(&mut inline).into_iter().map(|c| c.clone()))
            }
        }
    }
    found
}

/// Marks every property of the schemas only answers use `required`, but those in
/// [`SOMETIMES_ABSENT`]. A schema requests use too is left as utoipa made it.
fn require_answer_fields(doc: &mut OpenApi) {
    let mut answers = Vec::new();
    let mut requests = Vec::new();
    let mut copy = doc.clone();
    for op in operations_mut(&mut copy) {
        answers.extend(operation_schemas(op, true).into_iter().map(|s| s.clone()));
        requests.extend(operation_schemas(op, false).into_iter().map(|s| s.clone()));
    }
    let answers = reachable(doc, answers);
    let requests = reachable(doc, requests);
    let Some(components) = &mut doc.components else {
        return;
    };
    for name in answers.difference(&requests) {
        if let Some(RefOr::T(schema)) = components.schemas.get_mut(name) {
            require_all(schema, name);
        }
    }
}

/// Sets `required` of `schema` (and of the object schemas composed into it) to all its
/// properties, but the ones of `name` in [`SOMETIMES_ABSENT`].
fn require_all(schema: &mut Schema, name: &str) {
    match schema {
        Schema::Object(object) => {
            object.required = object
                .properties
                .keys()
                .filter(|field| !SOMETIMES_ABSENT.contains(&(name, field.as_str())))
                .cloned()
                .collect();
        }
        Schema::AllOf(all) => {
            for part in &mut all.items {
                if let RefOr::T(part) = part {
                    require_all(part, name);
                }
            }
        }
        _ => {}
    }
}

/// Sets each `/v1` operation's security requirement to the bearer scheme with the scope
/// [`api::scope`] enforces, says it in its description, and adds the 429 of the
/// long-poll bounds to the operations that may wait ([`api::may_wait`]).
fn describe_scopes(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let operations = [
            (Method::GET, &mut item.get),
            (Method::POST, &mut item.post),
            (Method::PUT, &mut item.put),
            (Method::PATCH, &mut item.patch),
            (Method::DELETE, &mut item.delete),
        ];
        for (method, op) in operations {
            let Some(op) = op else { continue };
            let scope = api::scope(&method, path);
            op.security = Some(vec![SecurityRequirement::new(
                api::BEARER,
                [scope.as_str()],
            )]);
            let needs = format!(
                "Needs the `{scope}` scope (a named client's; unnamed tokens have `read` only)."
            );
            op.description = Some(match op.description.take() {
                Some(text) => format!("{text}\n\n{needs}"),
                None => needs,
            });
            if api::may_wait(&method, path)
                && let Some(RefOr::T(unavailable)) = op.responses.responses.get("503")
            {
                let mut bounded = unavailable.clone();
                bounded.description = "With `wait` above 0: this client, or this replica, \
                    already holds as many waiting requests as it may (`api.long_polls_per_client`, \
                    `api.long_polls`). Retry after `Retry-After` seconds, or without `wait`."
                    .to_string();
                op.responses
                    .responses
                    .insert("429".to_string(), RefOr::T(bounded));
            }
        }
    }
}

/// Adds the write bodies' rules no single field can state ([`crate::api::writes::bodies::body_rules`]).
/// utoipa's object schema has no field for `oneOf`/`anyOf` beside `properties`, so they
/// go in through its extensions map, which is serialised flat into the schema.
fn add_body_rules(doc: &mut OpenApi) {
    let Some(components) = &mut doc.components else {
        return;
    };
    for (name, keyword, rule) in crate::api::writes::bodies::body_rules() {
        if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(name) {
            object
                .extensions
                .get_or_insert_default()
                .insert(keyword.to_string(), rule);
        }
    }
}

/// Bounds every text query parameter as [`params::QueryParams::parse`] does, and asks list
/// parameters for at least one item.
fn bound_query_values(doc: &mut OpenApi) {
    for op in operations_mut(doc) {
        for parameter in op.parameters.iter_mut().flatten() {
            let RefOr::T(parameter) = parameter else {
                continue;
            };
            if parameter.parameter_in != ParameterIn::Query {
                continue;
            }
            match &mut parameter.schema {
                Some(RefOr::T(Schema::Object(text)))
                    if text.enum_values.is_none()
                        && text.format.is_none()
                        && matches!(text.schema_type, SchemaType::Type(Type::String)) =>
                {
                    text.min_length.get_or_insert(1);
                    text.max_length = Some(params::MAX_VALUE_CHARS);
                    text.pattern
                        .get_or_insert_with(|| params::NO_NUL_PATTERN.to_string());
                }
                Some(RefOr::T(Schema::Array(list))) => {
                    list.min_items.get_or_insert(1);
                }
                _ => {}
            }
        }
    }
}

/// Gives every object schema without `properties` or `additionalProperties` (a free-form
/// JSON object) `additionalProperties: true`, wherever it is: named schemas, and the
/// operations' parameters, bodies and answers, at any depth.
fn declare_free_form_objects(doc: &mut OpenApi) {
    if let Some(components) = &mut doc.components {
        for schema in components.schemas.values_mut() {
            if let RefOr::T(schema) = schema {
                declare_free_form(schema);
            }
        }
    }
    for op in operations_mut(doc) {
        for answers in [true, false] {
            for schema in operation_schemas(op, answers) {
                if let RefOr::T(schema) = schema {
                    declare_free_form(schema);
                }
            }
        }
    }
}

fn declare_free_form(schema: &mut Schema) {
    if let Schema::Object(object) = schema {
        let is_object = match &object.schema_type {
            SchemaType::Type(t) => *t == Type::Object,
            SchemaType::Array(types) => types.contains(&Type::Object),
            SchemaType::AnyValue => false,
        };
        if is_object && object.properties.is_empty() && object.additional_properties.is_none() {
            object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(true)));
        }
    }
    for child in children(schema) {
        if let RefOr::T(child) = child {
            declare_free_form(child);
        }
    }
}
