//! Page cursors as the API takes them: the format of [`crate::cursor`], and a 400 naming
//! the parameter for anything that is not a cursor of the collection asked.

use crate::error::ApiError;

pub use crate::cursor::{Position, encode};

/// The position a cursor issued by `collection` stands for; a 400 for anything else.
pub fn decode(collection: &str, cursor: &str) -> Result<Position, ApiError> {
    decode_param("starting_after", collection, cursor)
}

/// [`decode`], for a cursor passed as the query parameter `param`.
pub fn decode_param(param: &str, collection: &str, cursor: &str) -> Result<Position, ApiError> {
    crate::cursor::decode(collection, cursor).map_err(|why| {
        ApiError::bad_request(format!(
            "{param} is not a cursor of /v1/{collection}: {why}; pass the ending_cursor of a previous page"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::changes::FeedPosition;

    #[test]
    fn a_cursor_that_does_not_decode_is_a_400_naming_the_parameter() {
        let at = Position::Feed(FeedPosition { pos: 9, id: 3 });
        let feed = encode("changes", &at);
        assert_eq!(decode_param("after", "changes", &feed).unwrap(), at);
        let ev = encode("events", &Position::Id(42));
        assert_eq!(decode("events", &ev).unwrap(), Position::Id(42));
        let err = decode_param("after", "changes", &ev).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(format!("{err:?}").contains("after is not a cursor of /v1/changes"));
        for bad in ["", "x", "!!!", "part_123", &"A".repeat(5000)] {
            let err = decode("partners", bad).unwrap_err();
            assert_eq!(err.status(), 400, "{bad}");
        }
    }
}
