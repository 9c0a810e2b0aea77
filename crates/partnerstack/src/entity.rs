//! The kinds of object a PartnerStack program holds, and their names on the wire.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A kind of PartnerStack object, one list stream each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    /// A partnership (the partner's membership of the program).
    Partner,
    Customer,
    Transaction,
    Reward,
    Group,
    Deal,
    Lead,
}

impl Entity {
    pub const ALL: [Entity; 7] = [
        Entity::Partner,
        Entity::Customer,
        Entity::Transaction,
        Entity::Reward,
        Entity::Group,
        Entity::Deal,
        Entity::Lead,
    ];

    /// The singular name used in event names and logs.
    pub fn name(self) -> &'static str {
        match self {
            Entity::Partner => "partnership",
            Entity::Customer => "customer",
            Entity::Transaction => "transaction",
            Entity::Reward => "reward",
            Entity::Group => "group",
            Entity::Deal => "deal",
            Entity::Lead => "lead",
        }
    }

    /// The name of this kind's v2 list stream (`/partnerships`, `/customers`, ...), as
    /// used in settings and on the command line.
    pub fn stream(self) -> &'static str {
        match self {
            Entity::Partner => "partnerships",
            Entity::Customer => "customers",
            Entity::Transaction => "transactions",
            Entity::Reward => "rewards",
            Entity::Group => "groups",
            Entity::Deal => "deals",
            Entity::Lead => "leads",
        }
    }

    /// The entity of a stream name, in any case; the legacy dialect's `partners` is
    /// `partnerships`.
    pub fn from_stream(name: &str) -> Option<Entity> {
        match name.trim().to_ascii_lowercase().as_str() {
            "partners" => Some(Entity::Partner),
            other => Entity::ALL.into_iter().find(|e| e.stream() == other),
        }
    }

    /// [`Entity::from_stream`], or the error naming the valid streams.
    pub fn parse_stream(name: &str) -> Result<Entity, String> {
        Entity::from_stream(name).ok_or_else(|| {
            let valid: Vec<&str> = Entity::ALL.iter().map(|e| e.stream()).collect();
            format!(
                "unknown stream {name:?}; valid streams: {}",
                valid.join(", ")
            )
        })
    }
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.stream())
    }
}

/// Serialised as its stream name.
impl Serialize for Entity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.stream())
    }
}

/// Read from a stream name ([`Entity::parse_stream`]).
impl<'de> Deserialize<'de> for Entity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Entity::parse_stream(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_round_trip_and_unknown_ones_are_named() {
        for e in Entity::ALL {
            assert_eq!(Entity::from_stream(e.stream()), Some(e));
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Entity>(&json).unwrap(), e);
        }
        assert_eq!(Entity::from_stream(" Partners "), Some(Entity::Partner));
        let err = Entity::parse_stream("custommers").unwrap_err();
        assert!(
            err.contains("\"custommers\"") && err.contains("leads"),
            "{err}"
        );
    }
}
