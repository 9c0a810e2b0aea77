//! List endpoints: filters, the list envelope in both dialects, and the pager.
//!
//! A [`Pager`] walks one list endpoint newest-first with `starting_after`, one page in
//! memory at a time. The next cursor is the page's `ending_cursor` (the legacy dialect)
//! or else its last item's `key` (the real API). It stops on `has_more == false` or an
//! empty page, and a cursor seen before ends the walk with [`Error::StalledCursor`]
//! instead of looping.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde_json::Value;

use super::{Client, Error, Record};
use crate::entity::Entity;
use crate::models::Object;

/// A list filter PartnerStack documents (see `docs/partnerstack.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    MinUpdated,
    MaxUpdated,
    MinCreated,
    MaxCreated,
    PartnerKey,
    CustomerKey,
    Group,
    Status,
}

impl Filter {
    /// The query parameter's name.
    pub fn param(self) -> &'static str {
        match self {
            Filter::MinUpdated => "min_updated",
            Filter::MaxUpdated => "max_updated",
            Filter::MinCreated => "min_created",
            Filter::MaxCreated => "max_created",
            Filter::PartnerKey => "partner_key",
            Filter::CustomerKey => "customer_key",
            Filter::Group => "group",
            Filter::Status => "status",
        }
    }
}

/// The filters the client sends to each stream's list endpoint: those documented for it,
/// or used against real accounts by a production integration (`docs/partnerstack.md`,
/// "List filters"). The client refuses to send others: an ignored filter would silently
/// widen a scan. Transactions and rewards have no update filter: their mutable fields
/// change after creation.
pub fn supported_filters(entity: Entity) -> &'static [Filter] {
    use Filter::*;
    match entity {
        Entity::Partner | Entity::Group | Entity::Lead => &[MinUpdated],
        Entity::Customer => &[
            MinUpdated, MaxUpdated, MinCreated, MaxCreated, PartnerKey, Group,
        ],
        Entity::Transaction => &[MinCreated, MaxCreated],
        Entity::Reward => &[MinCreated, Status],
        Entity::Deal => &[
            MinUpdated, MaxUpdated, MinCreated, MaxCreated, PartnerKey, Group,
        ],
    }
}

/// What to list: filters, page size and where to start. Times are sent as epoch
/// milliseconds.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub min_updated: Option<DateTime<Utc>>,
    pub max_updated: Option<DateTime<Utc>>,
    pub min_created: Option<DateTime<Utc>>,
    pub max_created: Option<DateTime<Utc>>,
    pub partner_key: Option<String>,
    pub customer_key: Option<String>,
    /// Customers: the group's name with spaces removed.
    pub group: Option<String>,
    /// Rewards: a `reward_status`.
    pub status: Option<String>,
    /// Further parameters sent as given, unchecked (e.g. `approved_status`).
    pub extra: Vec<(String, String)>,
    /// Items per page, 1..=250; the client's configured page size when unset.
    pub limit: Option<u32>,
    /// Resume after this cursor (a [`Pager::cursor`] saved earlier).
    pub starting_after: Option<String>,
}

impl ListQuery {
    /// The typed filters that are set, with their values as sent.
    fn filters(&self) -> Vec<(Filter, String)> {
        let ms = |t: &Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis().to_string());
        [
            (Filter::MinUpdated, ms(&self.min_updated)),
            (Filter::MaxUpdated, ms(&self.max_updated)),
            (Filter::MinCreated, ms(&self.min_created)),
            (Filter::MaxCreated, ms(&self.max_created)),
            (Filter::PartnerKey, self.partner_key.clone()),
            (Filter::CustomerKey, self.customer_key.clone()),
            (Filter::Group, self.group.clone()),
            (Filter::Status, self.status.clone()),
        ]
        .into_iter()
        .filter_map(|(f, v)| v.map(|v| (f, v)))
        .collect()
    }

    /// The query parameters of a page request, checked against `entity`'s filters.
    pub(super) fn params(
        &self,
        entity: Entity,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Vec<(String, String)>, Error> {
        let supported = supported_filters(entity);
        let mut params = vec![("limit".to_string(), limit.to_string())];
        for (filter, value) in self.filters() {
            if !supported.contains(&filter) {
                return Err(Error::InvalidRequest(format!(
                    "the {} list has no `{}` filter",
                    entity.stream(),
                    filter.param()
                )));
            }
            params.push((filter.param().to_string(), value));
        }
        params.extend(self.extra.iter().cloned());
        if let Some(cursor) = cursor {
            params.push(("starting_after".to_string(), cursor.to_string()));
        }
        Ok(params)
    }
}

/// One page of a list, as PartnerStack sent it.
#[derive(Debug, Clone)]
pub struct Page {
    /// The items, newest first, each the raw JSON object (feed it to
    /// a consumer's reader).
    pub items: Vec<Value>,
    pub has_more: bool,
    /// The total count, when the API sends one.
    pub total: Option<u64>,
    /// The cursor this page was requested with (`None` for the first page).
    pub cursor: Option<String>,
    /// The cursor of the following page, when there is one.
    pub next_cursor: Option<String>,
}

impl Page {
    /// The items read as `T`, each with its raw JSON.
    pub fn typed<T: Object>(&self) -> Vec<Result<Record<T>, Error>> {
        self.items.iter().cloned().map(Record::parse).collect()
    }
}

/// A list body in either dialect: `data.items`, `data.has_more`, `data.total`,
/// `data.ending_cursor`. A bare array under `data` is accepted as a last page. Missing or
/// null `items` is an error, not an empty page: taken for the end of the list, it would
/// end a scan early (and a full scan would then mark the unread rest deleted).
pub(super) fn read_list(body: Value) -> Result<ListBody, String> {
    let Value::Object(mut body) = body else {
        return Err("the body is not a JSON object".into());
    };
    let data = body.remove("data").ok_or("the body has no `data`")?;
    let mut data = match data {
        Value::Object(map) => map,
        Value::Array(items) => {
            return Ok(ListBody {
                items,
                has_more: Some(false),
                total: None,
                ending_cursor: None,
            });
        }
        _ => return Err("`data` is neither a list wrapper nor an array".into()),
    };
    let items = match data.remove("items") {
        Some(Value::Array(items)) => items,
        Some(Value::Null) | None => return Err("`data` has no `items`".into()),
        Some(_) => return Err("`data.items` is not an array".into()),
    };
    let has_more = match data.get("has_more") {
        None | Some(Value::Null) => None,
        Some(v) => crate::wire::parse_bool(v).map_err(|e| format!("`data.has_more`: {e}"))?,
    };
    let total = data.get("total").and_then(Value::as_u64);
    let ending_cursor = data
        .get("ending_cursor")
        .and_then(|v| crate::wire::parse_string(v).ok().flatten())
        .filter(|c| !c.is_empty());
    Ok(ListBody {
        items,
        has_more,
        total,
        ending_cursor,
    })
}

pub(super) struct ListBody {
    pub items: Vec<Value>,
    pub has_more: Option<bool>,
    pub total: Option<u64>,
    pub ending_cursor: Option<String>,
}

/// Walks one list endpoint page by page. Holds one page at a time, plus the cursors seen
/// (one short string per page) to detect a cursor that does not advance.
#[derive(Debug)]
pub struct Pager {
    client: Client,
    entity: Entity,
    path: String,
    query: ListQuery,
    limit: u32,
    cursor: Option<String>,
    seen: HashSet<String>,
    done: bool,
    pages: u64,
    items: u64,
    strict: bool,
    requests: Arc<AtomicU64>,
}

impl Pager {
    pub(super) fn new(client: Client, entity: Entity, path: String, query: ListQuery) -> Pager {
        let limit = query.limit.unwrap_or(client.page_size());
        let cursor = query.starting_after.clone();
        Pager {
            client,
            entity,
            path,
            query,
            limit,
            seen: cursor.iter().cloned().collect(),
            cursor,
            done: false,
            pages: 0,
            items: 0,
            strict: false,
            requests: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A pager that reports [`Error::CursorLost`] instead of ending quietly when a page
    /// asked for with a cursor comes back empty or refused (4xx): for callers that must
    /// know they read everything (a full scan marks what it did not see deleted).
    pub fn strict(mut self) -> Pager {
        self.strict = true;
        self
    }

    /// The count of HTTP requests this walk sent (retries included), shared: it keeps
    /// counting after the pager moves into another task.
    pub fn request_counter(&self) -> Arc<AtomicU64> {
        self.requests.clone()
    }

    /// The next page, or `None` after the last one. After an error the pager is finished.
    pub async fn next_page(&mut self) -> Result<Option<Page>, Error> {
        if self.done {
            return Ok(None);
        }
        let result = self.fetch().await;
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result
    }

    async fn fetch(&mut self) -> Result<Option<Page>, Error> {
        if !(1..=250).contains(&self.limit) {
            return Err(Error::InvalidRequest(format!(
                "page size {} is outside 1..=250",
                self.limit
            )));
        }
        let params = self
            .query
            .params(self.entity, self.limit, self.cursor.as_deref())?;
        let body = match self
            .client
            .get_list(&self.path, &params, &self.requests)
            .await
        {
            Ok(body) => body,
            // A refused cursor, not refused credentials or a rate limit.
            Err(e)
                if self.strict
                    && e.status()
                        .is_some_and(|s| matches!(s.as_u16(), 400 | 404 | 410 | 422)) =>
            {
                return Err(self.cursor_lost(e.to_string()).unwrap_or(e));
            }
            Err(e) => return Err(e),
        };
        let list = read_list(body).map_err(|detail| Error::InvalidResponse {
            path: self.path.clone(),
            detail,
        })?;
        self.pages += 1;
        self.items += list.items.len() as u64;
        if list.items.is_empty() {
            if self.strict
                && let Some(lost) = self.cursor_lost("an empty page".to_string())
            {
                return Err(lost);
            }
            return Ok(None);
        }
        // Without `has_more`, a full page suggests there may be more; an empty page ends it.
        let has_more = list
            .has_more
            .unwrap_or(list.items.len() as u64 >= u64::from(self.limit));
        let next_cursor = if has_more {
            let next = match list.ending_cursor.clone() {
                Some(c) => c,
                None => last_key(&list.items).ok_or_else(|| Error::InvalidResponse {
                    path: self.path.clone(),
                    detail: "has_more is true but the last item has no `key`".into(),
                })?,
            };
            if !self.seen.insert(next.clone()) {
                return Err(Error::StalledCursor {
                    path: self.path.clone(),
                    cursor: next,
                    pages: self.pages,
                });
            }
            Some(next)
        } else {
            None
        };
        let page = Page {
            items: list.items,
            has_more,
            total: list.total,
            cursor: self.cursor.clone(),
            next_cursor: next_cursor.clone(),
        };
        match next_cursor {
            Some(next) => self.cursor = Some(next),
            None => self.done = true,
        }
        Ok(Some(page))
    }

    /// [`Error::CursorLost`] for the current cursor; `None` on the first page (no cursor).
    fn cursor_lost(&self, detail: String) -> Option<Error> {
        Some(Error::CursorLost {
            path: self.path.clone(),
            cursor: self.cursor.clone()?,
            detail,
        })
    }

    /// Where the walk stands: pass it as [`ListQuery::starting_after`] to resume after the
    /// last page returned. `None` before the first page (or when started from the top).
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// True once the last page was returned (or an error ended the walk).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Pages fetched so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Items received so far.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The remaining pages as a stream.
    pub fn into_stream(self) -> impl Stream<Item = Result<Page, Error>> + Send {
        futures_util::stream::try_unfold(self, |mut pager| async move {
            Ok(pager.next_page().await?.map(|page| (page, pager)))
        })
    }

    /// The remaining items, one by one (still fetched a page at a time).
    pub fn into_items(self) -> impl Stream<Item = Result<Value, Error>> + Send {
        use futures_util::TryStreamExt as _;
        self.into_stream()
            .map_ok(|page| futures_util::stream::iter(page.items.into_iter().map(Ok)))
            .try_flatten()
    }
}

fn last_key(items: &[Value]) -> Option<String> {
    let key = items.last()?.get("key")?;
    crate::wire::parse_string(key)
        .ok()
        .flatten()
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_dialects_of_the_list_envelope() {
        let real = read_list(
            json!({"data": {"items": [{"key": "a"}], "has_more": true}, "message": "ok", "status": 200}))
        .unwrap();
        assert_eq!(real.items.len(), 1);
        assert_eq!(real.has_more, Some(true));
        assert_eq!(real.ending_cursor, None);

        let legacy = read_list(
            json!({"data": {"items": [], "has_more": "false", "ending_cursor": "c1", "total": 3}, "status": "2xx"}))
        .unwrap();
        assert_eq!(legacy.has_more, Some(false));
        assert_eq!(legacy.ending_cursor.as_deref(), Some("c1"));
        assert_eq!(legacy.total, Some(3));

        let bare = read_list(json!({"data": [{"key": "a"}]})).unwrap();
        assert_eq!(bare.has_more, Some(false));

        assert!(read_list(json!({"message": "x"})).is_err());
        assert!(read_list(json!({"data": {"items": {}}})).is_err());
        // Without items, even "no more" is not a page.
        for data in [
            json!({"has_more": true}),
            json!({"items": null, "has_more": true}),
            json!({"has_more": false}),
            json!({}),
        ] {
            let err = read_list(json!({"data": data})).err();
            assert_eq!(err.as_deref(), Some("`data` has no `items`"), "{data}");
        }
        assert!(read_list(json!([1])).is_err());
    }

    #[test]
    fn filters_are_checked_per_stream() {
        let q = ListQuery {
            min_updated: DateTime::from_timestamp_millis(1_700_000_000_123),
            ..ListQuery::default()
        };
        let params = q.params(Entity::Customer, 50, Some("cur")).unwrap();
        assert_eq!(
            params,
            vec![
                ("limit".to_string(), "50".to_string()),
                ("min_updated".to_string(), "1700000000123".to_string()),
                ("starting_after".to_string(), "cur".to_string()),
            ]
        );
        let err = q.params(Entity::Transaction, 50, None).unwrap_err();
        assert!(err.to_string().contains("min_updated"), "{err}");
        // No source documents a customer filter on deals.
        let by_customer = ListQuery {
            customer_key: Some("c".into()),
            ..ListQuery::default()
        };
        assert!(by_customer.params(Entity::Deal, 50, None).is_err());
    }
}
