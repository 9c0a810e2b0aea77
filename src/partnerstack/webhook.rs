//! Reading webhook deliveries: both payload shapes and both event-naming styles.
//!
//! Shapes: a flat object (the domain object's fields at the top level plus `"event"`), or
//! an envelope `{"event" | "type": ..., "data": {...}}`. Names: `customer.created`,
//! `customer_created`, `partner.updated` (= `partnership_updated`), any case.

use serde_json::{Map, Value};

use super::models::Entity;

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

/// Lower case, `_` separated, `partner_*` read as `partnership_*`.
pub fn normalise_event(name: &str) -> String {
    let name: String = name
        .trim()
        .chars()
        .map(|c| match c {
            '.' | '-' | ' ' | '/' | ':' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    match name.strip_prefix("partner_") {
        Some(rest) => format!("partnership_{rest}"),
        None => name,
    }
}

/// The normalised event name of a parsed body, if it names one.
pub fn event_name(body: &Map<String, Value>) -> Option<String> {
    ["event", "type", "event_type"]
        .iter()
        .find_map(|field| body.get(*field).and_then(Value::as_str))
        .map(normalise_event)
        .filter(|e| !e.is_empty())
}

/// Splits a body into its event name and the domain object, whichever shape it has.
pub fn split(mut body: Map<String, Value>) -> Delivery {
    let event = event_name(&body);
    let is_envelope = matches!(body.get("data"), Some(Value::Object(_)))
        && !body.contains_key("key")
        && !body.contains_key("id");
    let object = if is_envelope {
        body.remove("data").unwrap_or(Value::Null)
    } else {
        for field in ["event", "type", "event_type"] {
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
    let entity = Entity::from_event_prefix(prefix)?;
    let deleted = matches!(action, "deleted" | "archived" | "removed");
    Some(EventKind { entity, deleted })
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
            ("partnership.tags_updated", "partnership_tags_updated"),
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
        assert_eq!(interpret("application_created"), None);
        assert_eq!(interpret("customer"), None);
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
    }
}
