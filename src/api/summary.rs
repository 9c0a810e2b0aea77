//! `GET /v1/partners/{key}/summary`: a partner's customers, transactions and rewards in
//! numbers: the partner's identifiers are resolved, then one SQL statement (one snapshot,
//! no transaction) sums the partner's groups in `partner_totals`, which triggers keep in
//! the same transaction as the rows ([`crate::db::totals`]): a handful of rows, whatever
//! the partner's size.
//!
//! Attribution follows [`super::attribution`], the same rules the list filters use.
//! Deleted objects and archived transactions are left out. Sums are per currency (and per
//! reward status): adding cents of different currencies would mean nothing.

use serde::{Deserialize, Serialize};
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

/// One group of the partner's totals, summed over the groups its identifiers match.
#[derive(FromRow)]
struct Group {
    kind: String,
    currency: Option<String>,
    reward_status: Option<String>,
    approved: Option<bool>,
    count: i64,
    amount: i64,
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
    let groups: Vec<Group> = crate::db::query_as(SUMMARY_SQL)
        .bind(&partner.ids)
        .fetch_all(crate::db::atomic(pool))
        .await?;
    let mut summary = PartnerSummary {
        key: partnership_key,
        partner_key,
        customers: CustomerTotals { count: 0 },
        transactions: TransactionTotals {
            count: 0,
            by_currency: Vec::new(),
        },
        rewards: RewardTotals {
            count: 0,
            by_status: Vec::new(),
        },
    };
    // Rows come ordered by kind, then reward status and currency (NULLs last), so one
    // currency's approved and unapproved groups are adjacent.
    for g in groups {
        match g.kind.as_str() {
            "customers" => summary.customers.count += g.count,
            "transactions" => {
                summary.transactions.count += g.count;
                let list = &mut summary.transactions.by_currency;
                if list.last().is_none_or(|c| c.currency != g.currency) {
                    list.push(CurrencyTotals {
                        currency: g.currency.clone(),
                        count: 0,
                        amount: 0,
                        approved_count: 0,
                        approved_amount: 0,
                        unapproved_count: 0,
                        unapproved_amount: 0,
                    });
                }
                if let Some(c) = list.last_mut() {
                    c.count += g.count;
                    c.amount += g.amount;
                    if g.approved == Some(true) {
                        c.approved_count += g.count;
                        c.approved_amount += g.amount;
                    } else {
                        c.unapproved_count += g.count;
                        c.unapproved_amount += g.amount;
                    }
                }
            }
            "rewards" => {
                summary.rewards.count += g.count;
                summary.rewards.by_status.push(StatusTotals {
                    reward_status: g.reward_status,
                    currency: g.currency,
                    count: g.count,
                    amount: g.amount,
                });
            }
            other => {
                return Err(ApiError::from(sqlx::Error::Decode(
                    format!("partner_totals.kind {other:?}").into(),
                )));
            }
        }
    }
    Ok(summary)
}

/// The totals of the partner whose identifiers are `$1` (see [`partner_ids`]), from
/// `partner_totals` (`migrations/0009_partner_totals.sql`): the groups of rows whose
/// partner columns hold one of the identifiers, the same columns the list filters match.
/// A row is in exactly one group and a group is read once however many of its columns
/// match, so each row counts once. Groups whose rows are all gone (zero counts) are left
/// out.
const SUMMARY_SQL: &str = "SELECT kind, currency, reward_status, approved,
            sum(count)::bigint AS count, sum(amount)::bigint AS amount
     FROM partner_totals
     WHERE partner_key = ANY($1) OR partnership_key = ANY($1)
     GROUP BY kind, currency, reward_status, approved
     HAVING sum(count) <> 0
     ORDER BY kind, reward_status NULLS LAST, currency NULLS LAST, approved";
