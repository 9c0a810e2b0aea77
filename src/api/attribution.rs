//! Which partner a customer, transaction or reward belongs to, for the query API.
//!
//! PartnerStack names a partner two ways (the partnership `key`, `part_...`, and the
//! readable `partner_key`) and its objects use either. A partner filter therefore first
//! resolves every identifier of the partner ([`partner_ids`]), then matches each
//! collection's partner columns ([`Collection::PARTNER_COLUMNS`](super::collection::Collection::PARTNER_COLUMNS))
//! against them. Transactions are matched on the partner they are credited to, which
//! [`crate::db::attribution`] keeps at write time (their own partner, else their
//! customer's), so reads need no join. The list filters and the partner summary use the
//! same columns, so a transaction counted in a summary is one the filtered list shows.

use sqlx::PgPool;

/// A partner, as `partner_key=` or a summary path names it.
#[derive(Debug, Clone)]
pub struct PartnerIds {
    /// The stored partner the value names, if any: (partnership key, partner_key).
    pub partner: Option<(String, Option<String>)>,
    /// Every identifier to match: the value itself, and the other identifier of a stored
    /// partner known by either.
    pub ids: Vec<String>,
}

/// Resolves `value` (a partnership key or a `partner_key`) to all of the partner's
/// identifiers. The partner the value names exactly as its key wins, then live, then newest.
pub async fn partner_ids(pool: &PgPool, value: &str) -> Result<PartnerIds, sqlx::Error> {
    let rows: Vec<(String, Option<String>)> = crate::db::query_as(
        "SELECT key, partner_key FROM partners WHERE key = $1 OR partner_key = $1
         ORDER BY (key = $1) DESC, (deleted_at IS NULL) DESC, created_at DESC, key DESC",
    )
    .bind(value)
    .fetch_all(crate::db::atomic(pool))
    .await?;
    let mut ids = vec![value.to_string()];
    for (key, partner_key) in &rows {
        for id in std::iter::once(key).chain(partner_key) {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
    }
    Ok(PartnerIds {
        partner: rows.into_iter().next(),
        ids,
    })
}
