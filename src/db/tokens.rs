//! `webhook_tokens`: webhook URL tokens added at run time (`webhooks rotate`) or refused
//! after their registration was removed (`webhooks remove`), by SHA-256 only (see
//! `migrations/0018_webhook_tokens.sql`). Read by every replica's accepted-token set
//! ([`crate::webhook_tokens`]), written by the `webhooks` commands.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

crate::text_enum! {
    /// Whether a stored token is accepted.
    pub enum TokenState {
        /// Accepted, beside the configured tokens.
        Active = "active",
        /// Refused, even when a configuration still lists it.
        Revoked = "revoked",
    }
}

/// One stored token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub digest: [u8; 32],
    pub state: TokenState,
    /// When it was first stored.
    pub created_at: DateTime<Utc>,
}

/// Every stored token (a handful: one per rotation or removal).
pub async fn load(pool: &PgPool) -> Result<Vec<StoredToken>, sqlx::Error> {
    let rows: Vec<(Vec<u8>, TokenState, DateTime<Utc>)> = crate::db::query_as(
        "SELECT digest, state, created_at FROM webhook_tokens ORDER BY created_at, digest",
    )
    .fetch_all(crate::db::atomic(pool))
    .await?;
    rows.into_iter()
        .map(|(digest, state, created_at)| {
            let digest = <[u8; 32]>::try_from(digest.as_slice())
                .map_err(|_| sqlx::Error::Decode("a token digest is not 32 bytes".into()))?;
            Ok(StoredToken {
                digest,
                state,
                created_at,
            })
        })
        .collect()
}

/// Stores a new token as accepted. A digest already stored keeps its state (a revoked
/// token is never accepted again); the answer is the state it has.
pub async fn add(pool: &PgPool, digest: &[u8; 32]) -> Result<TokenState, sqlx::Error> {
    crate::db::query_scalar(
        "WITH added AS (
             INSERT INTO webhook_tokens (digest, state) VALUES ($1, 'active')
             ON CONFLICT (digest) DO NOTHING RETURNING state
         )
         SELECT state FROM added
         UNION ALL SELECT state FROM webhook_tokens WHERE digest = $1
         LIMIT 1",
    )
    .bind(digest.as_slice())
    .fetch_one(crate::db::atomic(pool))
    .await
}

/// Refuses a token from now on, whether it was stored, configured, or neither.
pub async fn revoke(pool: &PgPool, digest: &[u8; 32]) -> Result<(), sqlx::Error> {
    crate::db::query(
        "INSERT INTO webhook_tokens (digest, state, revoked_at) VALUES ($1, 'revoked', now())
         ON CONFLICT (digest) DO UPDATE SET state = 'revoked',
             revoked_at = coalesce(webhook_tokens.revoked_at, now())",
    )
    .bind(digest.as_slice())
    .execute(crate::db::atomic(pool))
    .await?;
    Ok(())
}
