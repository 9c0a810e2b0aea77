//! The feed's item: one change as `GET /v1/changes` and object histories serve it and the
//! relay sends it, with the cursor that marks its place in the feed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::apply::Source;
use crate::columns::CollectionName;
use crate::cursor::{self, Position};
use crate::db::changes::{Change, FeedPosition, Operation};

/// The cursor scope of the feed: its cursors say they belong to `/v1/changes`.
pub const CURSOR_SCOPE: &str = "changes";

/// One change to one object.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChangeItem {
    /// This change's place in the feed: pass it as `after` to read what follows it (or to
    /// replay a relay endpoint from here).
    pub cursor: String,
    /// The change's number: unique, and increasing across one object's changes. The
    /// feed's order across objects is the order of cursors, not of these numbers.
    pub sequence: i64,
    /// The object's collection, as under `/v1`.
    pub entity: CollectionName,
    /// The object's key.
    pub key: String,
    pub operation: Operation,
    /// Where the observation that made the change came from.
    pub source: Source,
    /// The API client whose write caused the change (source `write`); null otherwise.
    pub client: Option<String>,
    /// When the change was applied here.
    pub at: DateTime<Utc>,
    /// The fields that changed, each as `{"old": ..., "new": ...}`; on creation, every
    /// field that has a value (`old` null).
    #[schema(value_type = Object)]
    pub fields: Value,
    /// The object after the change: `key`, its own fields as `/v1` names them (a
    /// transaction's `partner_key` is its own, not the credited partner), `created_at`,
    /// `updated_at` and `deleted_at`.
    #[schema(value_type = Object)]
    pub object: Value,
}

impl TryFrom<Change> for ChangeItem {
    /// A stored word this version does not know is a decoding error, never a default.
    type Error = sqlx::Error;

    fn try_from(change: Change) -> Result<ChangeItem, sqlx::Error> {
        let position = change.position()?;
        let unknown = |column: &str, word: &str| {
            sqlx::Error::Decode(format!("change {} has {column} {word:?}", change.id).into())
        };
        let source =
            Source::parse(&change.source).ok_or_else(|| unknown("source", &change.source))?;
        let entity = CollectionName::parse(&change.entity)
            .ok_or_else(|| unknown("entity", &change.entity))?;
        let fields = change.fields();
        Ok(ChangeItem {
            cursor: cursor_of(position),
            sequence: change.id,
            entity,
            key: change.key,
            operation: change.operation,
            source,
            client: change.client,
            at: change.at,
            fields,
            object: change.state,
        })
    }
}

/// The cursor of a feed position.
pub fn cursor_of(at: FeedPosition) -> String {
    cursor::encode(CURSOR_SCOPE, &Position::Feed(at))
}
