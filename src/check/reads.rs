//! The read-only questions: page size, list order, time filters, single reads,
//! partnerships by `partner_key`, a lost cursor, archived objects in lists, rate-limit
//! headers. Nothing here changes the account.

use chrono::{DateTime, Utc};
use partnerstack::client::{Client, Filter, Probe, supported_filters};
use partnerstack::{Entity, wire};
use reqwest::Method;
use serde_json::Value;

use super::{CheckError, Finding, sent};

/// Page sizes asked for, largest first: the documented maximum, the legacy dialect's, the
/// documented default.
pub const PAGE_SIZES: [u32; 3] = [250, 100, 10];

/// The cursor of the lost-cursor question: a key no object has.
const NO_SUCH_KEY: &str = "psync_check_no_such_key";

/// A list request, its items when it answered 2xx with a list.
struct Listed {
    probe: Probe,
    items: Option<Vec<Value>>,
}

async fn list(
    client: &Client,
    base_url: &str,
    entity: Entity,
    params: &[(&str, String)],
) -> Result<Listed, CheckError> {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    let probe = sent(
        client
            .probe(Method::GET, client.path(entity), None, &params, None)
            .await,
        base_url,
    )
    .await?;
    let items = probe
        .status
        .is_success()
        .then(|| items(&probe.body))
        .flatten();
    Ok(Listed { probe, items })
}

/// A list body's items (`data.items`, or `data` as an array).
fn items(body: &Value) -> Option<Vec<Value>> {
    let data = body.get("data")?;
    data.get("items").unwrap_or(data).as_array().cloned()
}

/// A time field of a raw object.
fn time(item: &Value, field: &str) -> Option<DateTime<Utc>> {
    item.get(field)
        .and_then(|v| wire::parse_timestamp(v).ok().flatten())
}

/// Every read-only question. The first request doubles as the key check: refused keys or
/// no answer end the run with a [`CheckError`].
pub async fn ask(client: &Client, base_url: &str) -> Result<Vec<Finding>, CheckError> {
    let first = list(client, base_url, Entity::Partner, &[("limit", "1".into())]).await?;
    if !first.probe.status.is_success() {
        return Err(CheckError::Refused {
            what: format!("GET {}?limit=1", client.path(Entity::Partner)),
            status: first.probe.status,
        });
    }
    let mut findings = vec![rate_limit_headers(&first.probe)];
    let (size, finding) = page_size(client, base_url).await?;
    findings.push(finding);
    let customers = list(
        client,
        base_url,
        Entity::Customer,
        &[("limit", size.to_string())],
    )
    .await?;
    findings.push(list_order(customers.items.as_deref()));
    for entity in Entity::ALL {
        findings.push(time_filter(client, base_url, entity, size).await?);
    }
    for entity in [
        Entity::Partner,
        Entity::Customer,
        Entity::Deal,
        Entity::Lead,
    ] {
        findings.push(single_read(client, base_url, entity).await?);
    }
    findings.push(partner_key_read(client, base_url).await?);
    findings.push(lost_cursor(client, base_url).await?);
    for entity in [Entity::Partner, Entity::Customer] {
        findings.push(archived_listed(client, base_url, entity, size).await?);
    }
    Ok(findings)
}

fn rate_limit_headers(probe: &Probe) -> Finding {
    if probe.rate_limit_headers.is_empty() {
        Finding::settled(
            "rate_limit_headers",
            "none",
            "an ordinary answer carried no rate-limit header",
        )
    } else {
        Finding::settled(
            "rate_limit_headers",
            "sent",
            format!(
                "an ordinary answer carried {}",
                probe.rate_limit_headers.join(", ")
            ),
        )
    }
}

/// The largest of [`PAGE_SIZES`] a list accepts (2xx with its items).
async fn page_size(client: &Client, base_url: &str) -> Result<(u32, Finding), CheckError> {
    let mut refused = Vec::new();
    for size in PAGE_SIZES {
        let listed = list(
            client,
            base_url,
            Entity::Customer,
            &[("limit", size.to_string())],
        )
        .await?;
        match listed.items {
            Some(items) if items.len() <= size as usize => {
                let observed = if refused.is_empty() {
                    format!(
                        "limit={size} answered {} with {} items",
                        listed.probe.status,
                        items.len()
                    )
                } else {
                    format!(
                        "{}; limit={size} answered {} with {} items",
                        refused.join("; "),
                        listed.probe.status,
                        items.len()
                    )
                };
                return Ok((
                    size,
                    Finding::settled("page_size", &size.to_string(), observed),
                ));
            }
            Some(items) => refused.push(format!("limit={size} sent {} items", items.len())),
            None => refused.push(format!("limit={size} answered {}", listed.probe.status)),
        }
    }
    Ok((10, Finding::open("page_size", refused.join("; "))))
}

fn list_order(items: Option<&[Value]>) -> Finding {
    let times: Vec<DateTime<Utc>> = items
        .unwrap_or_default()
        .iter()
        .filter_map(|i| time(i, "created_at"))
        .collect();
    let descending = times.windows(2).all(|w| w[0] >= w[1]);
    let ascending = times.windows(2).all(|w| w[0] <= w[1]);
    let distinct = times.windows(2).any(|w| w[0] != w[1]);
    let n = times.len();
    match (distinct, descending, ascending) {
        (false, ..) => Finding::open(
            "list_order",
            format!("the customers list held {n} items with creation times, too few that differ"),
        ),
        (true, true, _) => Finding::settled(
            "list_order",
            "newest_first",
            format!("{n} customers came newest created first"),
        ),
        (true, false, true) => Finding::settled(
            "list_order",
            "oldest_first",
            format!("{n} customers came oldest created first"),
        ),
        (true, false, false) => Finding::settled(
            "list_order",
            "unordered",
            format!("{n} customers came in no order of creation"),
        ),
    }
}

/// The time filter the service's passes send to `entity`'s list, and the field it bounds.
pub fn time_filter_of(entity: Entity) -> (Filter, &'static str) {
    if supported_filters(entity).contains(&Filter::MinUpdated) {
        (Filter::MinUpdated, "updated_at")
    } else {
        (Filter::MinCreated, "created_at")
    }
}

/// Whether `entity`'s list honours its time filter: bounded at the newest time of a first
/// page that also holds older items, it must leave the older ones out.
async fn time_filter(
    client: &Client,
    base_url: &str,
    entity: Entity,
    size: u32,
) -> Result<Finding, CheckError> {
    let question = format!("time_filter.{}", entity.stream());
    let (filter, field) = time_filter_of(entity);
    let all = list(client, base_url, entity, &[("limit", size.to_string())]).await?;
    let times: Vec<DateTime<Utc>> = all
        .items
        .unwrap_or_default()
        .iter()
        .filter_map(|i| time(i, field))
        .collect();
    let (Some(newest), Some(oldest)) = (times.iter().max(), times.iter().min()) else {
        return Ok(Finding::open(
            &question,
            format!("the list has no item with {field}"),
        ));
    };
    if newest == oldest {
        return Ok(Finding::open(
            &question,
            format!("every listed item has the same {field}: nothing to filter out"),
        ));
    }
    let bound = newest.timestamp_millis().to_string();
    let filtered = list(
        client,
        base_url,
        entity,
        &[("limit", size.to_string()), (filter.param(), bound)],
    )
    .await?;
    let Some(items) = filtered.items else {
        return Ok(Finding::settled(
            &question,
            "refused",
            format!(
                "{}=<newest> answered {}",
                filter.param(),
                filtered.probe.status
            ),
        ));
    };
    let older = items
        .iter()
        .filter(|i| time(i, field).is_some_and(|t| t < *newest))
        .count();
    Ok(if older == 0 {
        Finding::settled(
            &question,
            "honoured",
            format!(
                "{}=<newest {field}> listed {} items, none older (without it: {})",
                filter.param(),
                items.len(),
                times.len()
            ),
        )
    } else {
        Finding::settled(
            &question,
            "ignored",
            format!(
                "{}=<newest {field}> still listed {older} older items",
                filter.param()
            ),
        )
    })
}

/// The key a single read of `entity` takes: customers by their `customer_key`, the rest
/// by `key`.
fn read_key(entity: Entity, item: &Value) -> Option<String> {
    let field = if entity == Entity::Customer {
        "customer_key"
    } else {
        "key"
    };
    item.get(field)
        .and_then(|v| wire::parse_string(v).ok().flatten())
}

/// Whether `GET /{stream}/{key}` finds a listed object with the same `key`.
async fn read_back(
    client: &Client,
    base_url: &str,
    entity: Entity,
    by: &str,
    expected_key: &str,
) -> Result<(Option<&'static str>, String), CheckError> {
    let probe = sent(
        client
            .probe(Method::GET, client.path(entity), Some(by), &[], None)
            .await,
        base_url,
    )
    .await?;
    let found = probe
        .body
        .get("data")
        .and_then(|d| d.get("key"))
        .and_then(|k| wire::parse_string(k).ok().flatten());
    Ok(match (probe.status, found) {
        (s, Some(k)) if s.is_success() && k == expected_key => (
            Some("found"),
            format!("answered {s} with the listed object"),
        ),
        (s, found) if s.is_success() => (
            None,
            format!(
                "answered {s} with {}",
                if found.is_some() {
                    "another object"
                } else {
                    "no object"
                }
            ),
        ),
        (s, _) if s == reqwest::StatusCode::NOT_FOUND => (
            Some("not_found"),
            format!("answered {s} for a listed object"),
        ),
        (s, _) => (Some("refused"), format!("answered {s}")),
    })
}

async fn single_read(
    client: &Client,
    base_url: &str,
    entity: Entity,
) -> Result<Finding, CheckError> {
    let question = format!("single_read.{}", entity.stream());
    let listed = list(client, base_url, entity, &[("limit", "10".into())]).await?;
    let found = listed.items.unwrap_or_default().into_iter().find_map(|i| {
        let key = wire::parse_string(i.get("key")?).ok().flatten()?;
        Some((read_key(entity, &i)?, key))
    });
    let Some((by, key)) = found else {
        return Ok(Finding::open(&question, "the list has no object to read"));
    };
    let (answer, observed) = read_back(client, base_url, entity, &by, &key).await?;
    Ok(match answer {
        Some(a) => Finding::settled(&question, a, observed),
        None => Finding::open(&question, observed),
    })
}

/// Whether `GET /partnerships/{partner_key}` finds the partnership.
async fn partner_key_read(client: &Client, base_url: &str) -> Result<Finding, CheckError> {
    let question = "partnership_by_partner_key";
    let listed = list(client, base_url, Entity::Partner, &[("limit", "10".into())]).await?;
    let found = listed.items.unwrap_or_default().into_iter().find_map(|i| {
        let key = wire::parse_string(i.get("key")?).ok().flatten()?;
        let partner_key = wire::parse_string(i.get("partner_key")?).ok().flatten()?;
        (partner_key != key).then_some((partner_key, key))
    });
    let Some((partner_key, key)) = found else {
        return Ok(Finding::open(
            question,
            "no listed partnership has a partner_key apart from its key",
        ));
    };
    let (answer, observed) =
        read_back(client, base_url, Entity::Partner, &partner_key, &key).await?;
    Ok(match answer {
        Some(a) => Finding::settled(question, a, format!("by partner_key: {observed}")),
        None => Finding::open(question, format!("by partner_key: {observed}")),
    })
}

/// What a list answers for a cursor naming no object.
async fn lost_cursor(client: &Client, base_url: &str) -> Result<Finding, CheckError> {
    let question = "lost_cursor";
    let listed = list(
        client,
        base_url,
        Entity::Customer,
        &[
            ("limit", "10".into()),
            ("starting_after", NO_SUCH_KEY.into()),
        ],
    )
    .await?;
    let status = listed.probe.status;
    Ok(match listed.items {
        _ if status.is_client_error() => Finding::settled(
            question,
            "refused",
            format!("a cursor naming no object answered {status}"),
        ),
        Some(items) if items.is_empty() => Finding::settled(
            question,
            "empty_page",
            format!("a cursor naming no object answered {status} with an empty page"),
        ),
        Some(items) => Finding::settled(
            question,
            "ignored",
            format!(
                "a cursor naming no object answered {status} with {} items",
                items.len()
            ),
        ),
        None => Finding::open(
            question,
            format!("a cursor naming no object answered {status}"),
        ),
    })
}

/// Whether `entity`'s list shows archived objects: settled only when one is seen (that no
/// archived object is listed may just mean there is none; `--writes` settles customers).
async fn archived_listed(
    client: &Client,
    base_url: &str,
    entity: Entity,
    size: u32,
) -> Result<Finding, CheckError> {
    let question = format!("archived.{}", entity.stream());
    let listed = list(client, base_url, entity, &[("limit", size.to_string())]).await?;
    let items = listed.items.unwrap_or_default();
    let archived = items
        .iter()
        .filter(|i| {
            i.get("archived")
                .and_then(|v| wire::parse_bool(v).ok().flatten())
                .unwrap_or(false)
        })
        .count();
    Ok(if archived > 0 {
        Finding::settled(
            &question,
            "flagged",
            format!(
                "the first page lists {archived} archived (flagged) of {}",
                items.len()
            ),
        )
    } else {
        Finding::open(
            &question,
            format!("no archived object among the first {} listed", items.len()),
        )
    })
}
