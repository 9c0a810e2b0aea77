//! The account's request budget, shared by every replica through a row
//! (`migrations/0017_request_budget.sql`): the [`TokenSource`] of the client's
//! [`RequestBudget`](partnerstack::client::RequestBudget).
//!
//! Each lease is one statement (a function call), so it holds through a pooler in
//! transaction mode; it runs on a spawned task, so a caller that gives up waiting (the
//! budget's lease timeout) never cancels a write mid-way (ARCHITECTURE.md rule 2).

use std::time::Duration;

use futures_util::future::BoxFuture;
use partnerstack::client::{Grant, Take, TokenSource};
use sqlx::PgPool;

use super::{atomic, query_as};

/// Tokens of one account's bucket, leased by one process (`holder`).
#[derive(Debug, Clone)]
pub struct SharedTokens {
    pool: PgPool,
    account: String,
    holder: String,
}

impl SharedTokens {
    /// `account`: the client's digest of the API and key ([`Client::account`]); `holder`:
    /// this process, as the reconciler names it.
    ///
    /// [`Client::account`]: partnerstack::client::Client::account
    pub fn new(pool: PgPool, account: &str, holder: &str) -> SharedTokens {
        SharedTokens {
            pool,
            account: account.to_string(),
            holder: holder.to_string(),
        }
    }

    /// One lease (see the migration for the rules).
    pub async fn take(&self, take: Take) -> Result<Grant, sqlx::Error> {
        let (granted, retry_ms, holders): (i32, f64, i32) = query_as(
            "SELECT granted, retry_ms, holders
               FROM psync_take_request_tokens($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&self.account)
        .bind(&self.holder)
        .bind(i32::try_from(take.want).unwrap_or(i32::MAX))
        .bind(i32::try_from(take.at_least).unwrap_or(i32::MAX))
        .bind(take.write)
        .bind(take.rate)
        .bind(take.burst)
        .fetch_one(atomic(&self.pool))
        .await?;
        let retry = if retry_ms.is_finite() {
            Duration::from_secs_f64(retry_ms.clamp(0.0, 60_000.0) / 1000.0)
        } else {
            Duration::ZERO
        };
        Ok(Grant {
            granted: u32::try_from(granted).unwrap_or(0),
            retry_in: retry,
            holders: u32::try_from(holders).unwrap_or(1).max(1),
        })
    }
}

impl TokenSource for SharedTokens {
    fn take(&self, take: Take) -> BoxFuture<'_, Result<Grant, String>> {
        let tokens = self.clone();
        Box::pin(async move {
            match tokio::spawn(async move { tokens.take(take).await }).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(e) => Err(format!("the lease task failed: {e}")),
            }
        })
    }
}
