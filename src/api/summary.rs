//! `GET /v1/partners/{key}/summary`: a partner's customers, transactions and rewards in
//! numbers: the partner's identifiers are resolved, then one SQL statement (one snapshot,
//! no transaction) counts and sums over the partner columns' indexes.
//!
//! Attribution follows [`super::attribution`], the same rules the list filters use.
//! Deleted objects and archived transactions are left out. Sums are per currency (and per
//! reward status): adding cents of different currencies would mean nothing.

use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{FromRow, PgPool};
use utoipa::ToSchema;

use super::attribution::partner_ids;
use super::params::QueryParams;
use crate::error::ApiError;

/// A partner's totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartnerSummary {
    /// The partnership key.
    pub key: String,
    pub partner_key: Option<String>,
    pub customers: CustomerTotals,
    pub transactions: TransactionTotals,
    pub rewards: RewardTotals,
}

/// The partner's customers (not deleted).
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerTotals {
    pub count: i64,
}

/// The partner's transactions (not deleted, not archived).
#[derive(Debug, Serialize, ToSchema)]
pub struct TransactionTotals {
    pub count: i64,
    /// One entry per currency, ordered by currency.
    pub by_currency: Vec<CurrencyTotals>,
}

/// Transactions in one currency. Amounts are integer cents and include refunds
/// (negative amounts). A transaction not (yet) approved counts as unapproved.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CurrencyTotals {
    pub currency: Option<String>,
    pub count: i64,
    pub amount: i64,
    pub approved_count: i64,
    pub approved_amount: i64,
    pub unapproved_count: i64,
    pub unapproved_amount: i64,
}

/// The partner's rewards (not deleted).
#[derive(Debug, Serialize, ToSchema)]
pub struct RewardTotals {
    pub count: i64,
    /// One entry per reward status and currency.
    pub by_status: Vec<StatusTotals>,
}

/// Rewards with one status in one currency; the amount is integer cents.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusTotals {
    pub reward_status: Option<String>,
    pub currency: Option<String>,
    pub count: i64,
    pub amount: i64,
}

#[derive(FromRow)]
struct Row {
    customers: i64,
    transaction_count: i64,
    transactions: Json<Vec<CurrencyTotals>>,
    reward_count: i64,
    rewards: Json<Vec<StatusTotals>>,
}

/// The summary of the partner `key` names (partnership key or `partner_key`).
pub async fn partner_summary(
    pool: &PgPool,
    key: &str,
    query: Option<&str>,
) -> Result<PartnerSummary, ApiError> {
    QueryParams::parse(query, &[])?;
    let not_found = || ApiError::not_found(format!("no partner {key:?}"));
    if key.is_empty() || key.contains('\0') {
        return Err(not_found());
    }
    let partner = partner_ids(pool, key).await?;
    let Some((partnership_key, partner_key)) = partner.partner else {
        return Err(not_found());
    };
    let row: Row = sqlx::query_as(SUMMARY_SQL)
        .bind(&partner.ids)
        .fetch_one(pool)
        .await?;
    Ok(PartnerSummary {
        key: partnership_key,
        partner_key,
        customers: CustomerTotals {
            count: row.customers,
        },
        transactions: TransactionTotals {
            count: row.transaction_count,
            by_currency: row.transactions.0,
        },
        rewards: RewardTotals {
            count: row.reward_count,
            by_status: row.rewards.0,
        },
    })
}

/// The totals of the partner whose identifiers are `$1` (see [`partner_ids`]): the same
/// partner columns the list filters match. Each side of a `UNION` is an index-only scan of
/// one partner column's index (migrations/0004), and the `UNION` drops rows matched twice.
const SUMMARY_SQL: &str = "WITH
    cust AS (SELECT t.key FROM customers t WHERE t.deleted_at IS NULL AND t.partner_key = ANY($1)
             UNION
             SELECT t.key FROM customers t WHERE t.deleted_at IS NULL AND t.partnership_key = ANY($1)),
    tx AS (SELECT t.key, t.currency, t.approved, t.amount FROM transactions t
           WHERE t.deleted_at IS NULL AND t.archived IS NOT TRUE AND t.credited_partner_key = ANY($1)
           UNION
           SELECT t.key, t.currency, t.approved, t.amount FROM transactions t
           WHERE t.deleted_at IS NULL AND t.archived IS NOT TRUE AND t.credited_partnership_key = ANY($1)),
    rw AS (SELECT t.key, t.reward_status, t.currency, t.amount FROM rewards t
           WHERE t.deleted_at IS NULL AND t.partner_key = ANY($1)
           UNION
           SELECT t.key, t.reward_status, t.currency, t.amount FROM rewards t
           WHERE t.deleted_at IS NULL AND t.partnership_key = ANY($1))
    SELECT
        (SELECT count(*) FROM cust) AS customers,
        (SELECT count(*) FROM tx) AS transaction_count,
        (SELECT COALESCE(jsonb_agg(to_jsonb(x) ORDER BY x.currency NULLS LAST), '[]'::jsonb) FROM (
            SELECT currency,
                   count(*) AS count,
                   COALESCE(sum(amount), 0)::bigint AS amount,
                   count(*) FILTER (WHERE approved IS TRUE) AS approved_count,
                   COALESCE(sum(amount) FILTER (WHERE approved IS TRUE), 0)::bigint AS approved_amount,
                   count(*) FILTER (WHERE approved IS NOT TRUE) AS unapproved_count,
                   COALESCE(sum(amount) FILTER (WHERE approved IS NOT TRUE), 0)::bigint AS unapproved_amount
            FROM tx GROUP BY currency) x) AS transactions,
        (SELECT count(*) FROM rw) AS reward_count,
        (SELECT COALESCE(jsonb_agg(to_jsonb(x) ORDER BY x.reward_status NULLS LAST, x.currency NULLS LAST), '[]'::jsonb) FROM (
            SELECT reward_status, currency, count(*) AS count,
                   COALESCE(sum(amount), 0)::bigint AS amount
            FROM rw GROUP BY reward_status, currency) x) AS rewards";
