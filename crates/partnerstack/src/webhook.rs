//! Reading webhook deliveries: both payload shapes and both event-naming styles.
//!
//! Shapes: a flat object (the domain object's fields at the top level plus `"event"`; the
//! documented samples), or an envelope `{"event" | "type": ..., "data": {...}}` (relays).
//! Names: dotted (`partnership.created`, current documentation) or underscored
//! (`partnership_created`, older documentation and every sample body), any case. The
//! legacy dialect's exact `partner.created|updated|deleted` mean `partnership_*`; other
//! `partner_*` names are kept as they are, because partner-team events exist and are not
//! partnerships. Documented bodies may carry a numeric `id` and no `key`: an `id` is never
//! taken for a key (see `docs/partnerstack.md`).

use serde_json::{Map, Value};

use crate::entity::Entity;

/// What an event name asks of the entity tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKind {
    pub entity: Entity,
    /// `*_deleted` / `*_archived`: the object is kept, marked deleted.
    pub deleted: bool,
}

/// A delivery's event name, normalised, and the object it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub event: Option<String>,
    pub object: Value,
}

/// Lower case, `_` separated; the legacy dialect's exact `partner.created`,
/// `partner.updated` and `partner.deleted` read as `partnership_*`.
pub fn normalise_event(name: &str) -> String {
    let name = name.trim();
    if let Some(action) = name.to_ascii_lowercase().strip_prefix("partner.")
        && matches!(action, "created" | "updated" | "deleted")
    {
        return format!("partnership_{action}");
    }
    name.chars()
        .map(|c| match c {
            '.' | '-' | ' ' | '/' | ':' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Fields that name the event, in order of preference.
const EVENT_FIELDS: [&str; 3] = ["event", "type", "event_type"];
/// Longer "event names" are not names; they are treated as absent.
const MAX_EVENT_NAME: usize = 200;

/// The normalised event name of a parsed body, if it names one.
pub fn event_name(body: &Map<String, Value>) -> Option<String> {
    EVENT_FIELDS.iter().find_map(|field| {
        body.get(*field)
            .and_then(Value::as_str)
            .and_then(clean_event_name)
    })
}

fn clean_event_name(raw: &str) -> Option<String> {
    let name = normalise_event(raw);
    let usable =
        !name.is_empty() && name.len() <= MAX_EVENT_NAME && !name.chars().any(char::is_control);
    usable.then_some(name)
}

/// Checks that `body` is one JSON object and returns its normalised event name, without
/// building the whole document: the ingest path only needs this much before storing the
/// raw bytes. Agrees with [`event_name`] on a fully parsed body (for repeated fields the
/// last occurrence wins, as in a parsed map). Numbers are skipped, not converted, so a
/// number too large for any Rust type does not make an object unacceptable here (the
/// applier then records why it cannot be applied).
pub fn peek_event(body: &str) -> Result<Option<String>, serde_json::Error> {
    use serde::Deserialize as _;
    // From a &str, not bytes: skipped strings are then known to be valid UTF-8 too.
    let mut de = serde_json::Deserializer::from_str(body);
    let head = Head::deserialize(&mut de)?;
    de.end()?;
    Ok(head
        .0
        .into_iter()
        .flatten()
        .find_map(|name| clean_event_name(&name)))
}

/// The event-naming fields of a body, in [`EVENT_FIELDS`] order.
struct Head([Option<String>; 3]);

impl<'de> serde::Deserialize<'de> for Head {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Head;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
                let mut names: [Option<String>; 3] = Default::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match EVENT_FIELDS.iter().position(|f| *f == key) {
                        Some(i) => names[i] = map.next_value::<MaybeString>()?.0,
                        None => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(Head(names))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A JSON value kept only when it is a string.
struct MaybeString(Option<String>);

impl<'de> serde::Deserialize<'de> for MaybeString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = MaybeString;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<MaybeString, E> {
                Ok(MaybeString(Some(v.to_string())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_unit<E>(self) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<MaybeString, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(MaybeString(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<MaybeString, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(MaybeString(None))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Splits a body into its event name and the domain object, whichever shape it has.
pub fn split(mut body: Map<String, Value>) -> Delivery {
    let event = event_name(&body);
    // A flat object may carry a numeric `id` instead of `key` (a documented quirk); an
    // envelope may carry its own event `id` (relays add one) around an object with a key.
    let is_envelope = match body.get("data") {
        Some(Value::Object(data)) => {
            !body.contains_key("key")
                && (!body.contains_key("id") || data.contains_key("key") || data.contains_key("id"))
        }
        _ => false,
    };
    let object = if is_envelope {
        body.remove("data").unwrap_or(Value::Null)
    } else {
        for field in EVENT_FIELDS {
            body.remove(field);
        }
        Value::Object(body)
    };
    Delivery { event, object }
}

/// Which table an event updates, or `None` for events the service does not model
/// (they are stored with outcome `unknown_type`).
pub fn interpret(event: &str) -> Option<EventKind> {
    let (prefix, action) = event.split_once('_')?;
    if action.is_empty() {
        return None;
    }
    let entity = entity_of_prefix(prefix)?;
    let deleted = matches!(action, "deleted" | "archived" | "removed");
    Some(EventKind { entity, deleted })
}

/// The entity an event-name prefix refers to (a bare `partner` is not a partnership:
/// `partner_team_*` events exist).
fn entity_of_prefix(prefix: &str) -> Option<Entity> {
    Some(match prefix {
        "partnership" => Entity::Partner,
        "customer" => Entity::Customer,
        "transaction" => Entity::Transaction,
        "reward" => Entity::Reward,
        "group" => Entity::Group,
        "deal" => Entity::Deal,
        "lead" => Entity::Lead,
        _ => return None,
    })
}

/// What a delivery body says.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// A known event and the object it carries (read as its type by the consumer, e.g.
    /// with [`crate::models::read`]).
    Object { kind: EventKind, object: Value },
    /// A well-formed delivery of an event this crate does not model (kept as is).
    UnknownType(String),
    /// A body that is not one JSON object; the reason says why.
    Invalid(String),
}

/// Reads a raw delivery body. Pure: no I/O, never panics on any input.
pub fn read(body: &str) -> Reading {
    let body: Map<String, Value> = match serde_json::from_str(body) {
        Ok(b) => b,
        Err(e) => {
            return Reading::Invalid(format!("the body is not a readable JSON object: {e}"));
        }
    };
    let delivery = split(body);
    let Some(name) = delivery.event else {
        return Reading::UnknownType(
            "the delivery names no event (no `event` or `type` field)".into(),
        );
    };
    let Some(kind) = interpret(&name) else {
        return Reading::UnknownType(format!(
            "event type `{name}` is not one the service applies"
        ));
    };
    Reading::Object {
        kind,
        object: delivery.object,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn both_naming_styles_normalise_alike() {
        for (raw, expected) in [
            ("customer.created", "customer_created"),
            ("customer_created", "customer_created"),
            ("Customer.Updated", "customer_updated"),
            ("partner.created", "partnership_created"),
            ("Partner.Deleted", "partnership_deleted"),
            ("partnership.tags_updated", "partnership_tags_updated"),
            // Only the legacy dialect's exact names are partnerships.
            ("partner_created", "partner_created"),
            ("partner.team_created", "partner_team_created"),
            ("partner_team.updated", "partner_team_updated"),
            (" reward.created ", "reward_created"),
        ] {
            assert_eq!(normalise_event(raw), expected);
        }
    }

    #[test]
    fn event_kinds() {
        assert_eq!(
            interpret("partnership_group_updated"),
            Some(EventKind {
                entity: Entity::Partner,
                deleted: false
            })
        );
        assert_eq!(
            interpret("customer_deleted"),
            Some(EventKind {
                entity: Entity::Customer,
                deleted: true
            })
        );
        assert_eq!(interpret("agreement_accepted"), None);
        assert_eq!(interpret("partner_team_created"), None);
        assert_eq!(interpret("partner_created"), None);
        assert_eq!(interpret("application_created"), None);
        assert_eq!(interpret("customer"), None);
    }

    #[test]
    fn peek_agrees_with_a_full_parse() {
        for body in [
            r#"{"event":"customer.created","key":"c"}"#,
            r#"{"type":"Partner.Updated","data":{"key":"p"}}"#,
            r#"{"event":5,"type":"reward.created"}"#,
            r#"{"event":"a.b","event":"c.d"}"#,
            r#"{"key":"c"}"#,
            r#"{"event":"x\u0000y"}"#,
            r#"{"event":{"nested":["a"]},"event_type":"lead_created"}"#,
            r#"{"event":"","event_type":"lead_created"}"#,
        ] {
            let parsed: Map<String, Value> = serde_json::from_str(body).unwrap();
            assert_eq!(peek_event(body).unwrap(), event_name(&parsed), "{body}");
        }
        let long = format!(r#"{{"event":"{}"}}"#, "a".repeat(500));
        assert_eq!(peek_event(&long).unwrap(), None);
    }

    #[test]
    fn peek_accepts_any_object_and_refuses_everything_else() {
        assert!(peek_event(r#"{"event":"x.y","amount":1e400}"#).is_ok());
        for body in ["", "[]", "\"s\"", "1", "null", "{", "{}}", "{} {}"] {
            assert!(peek_event(body).is_err(), "{body:?}");
        }
    }

    /// The fuzz seed corpus holds real-shaped deliveries: every known event in it reads
    /// as an object, and unknown ones as unknown.
    #[test]
    fn the_fuzz_corpus_reads_as_expected() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/webhook");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let body = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            assert!(peek_event(&body).unwrap().is_some(), "{name}");
            match read(&body) {
                Reading::Object { kind, object } => {
                    assert!(
                        !name.contains("unknown") && !name.starts_with("agreement"),
                        "{name}: {object}"
                    );
                    if let Err(reason) = crate::models::check(kind.entity, &object) {
                        panic!("{name}: {reason}");
                    }
                }
                Reading::UnknownType(_) => assert!(
                    name.contains("unknown") || name.starts_with("agreement"),
                    "{name}"
                ),
                Reading::Invalid(reason) => panic!("{name}: {reason}"),
            }
            seen += 1;
        }
        assert!(seen >= 10);
    }

    #[test]
    fn flat_and_envelope_shapes() {
        let flat = split(obj(
            json!({"event": "customer.created", "key": "cus_1", "email": "a@b.c"}),
        ));
        assert_eq!(flat.event.as_deref(), Some("customer_created"));
        assert_eq!(flat.object, json!({"key": "cus_1", "email": "a@b.c"}));

        let envelope = split(obj(
            json!({"type": "customer_created", "data": {"key": "cus_1"}}),
        ));
        assert_eq!(envelope.event.as_deref(), Some("customer_created"));
        assert_eq!(envelope.object, json!({"key": "cus_1"}));

        // A flat object that happens to have a `data` field stays flat.
        let flat_with_data = split(obj(json!({"event": "x_y", "key": "k", "data": {"a": 1}})));
        assert_eq!(flat_with_data.object, json!({"key": "k", "data": {"a": 1}}));

        // A relay's envelope with its own event id still wraps the object.
        let relayed = split(obj(json!({
            "id": "evt_1", "type": "customer.updated", "data": {"key": "cus_1", "email": "a@b.c"}
        })));
        assert_eq!(relayed.event.as_deref(), Some("customer_updated"));
        assert_eq!(relayed.object, json!({"key": "cus_1", "email": "a@b.c"}));

        // A flat object identified by a numeric `id`, with a `data` field of its own.
        let flat_with_id = split(obj(json!({"event": "x_y", "id": 7, "data": {"a": 1}})));
        assert_eq!(flat_with_id.object, json!({"id": 7, "data": {"a": 1}}));
    }
}
