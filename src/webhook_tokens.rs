//! The webhook URL tokens a replica accepts: the configured ones (`webhooks.tokens`) and
//! the ones `webhooks rotate` stored (`db::tokens`), less the ones `webhooks remove`
//! revoked, whether configured or not. So a rotation or a removal takes effect in every
//! running replica without a configuration change, within `webhooks.token_refresh`.
//!
//! Ingest is the hot path: a delivery's token is checked against a set held in memory,
//! in constant time ([`TokenSet`]: every digest compared), never with a database read. A
//! task re-reads the stored tokens every `webhooks.token_refresh`; while the database
//! does not answer, the last set read stays in force.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::auth::{TokenSet, sha256};
use crate::burst::Burst;
use crate::db::tokens::{self, StoredToken, TokenState};

/// Where a token stands, for the service and for the `webhooks` commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Accepted: listed in `webhooks.tokens`.
    Configured,
    /// Accepted: stored by a rotation at this time.
    Rotated(DateTime<Utc>),
    /// Refused: its registration was removed.
    Revoked,
    /// Refused: this service does not know it.
    Unknown,
}

impl Standing {
    /// Whether a delivery with the token is accepted.
    pub fn accepted(self) -> bool {
        matches!(self, Standing::Configured | Standing::Rotated(_))
    }
}

/// Where the token with SHA-256 `digest` stands, given the configured tokens' digests and
/// the stored tokens. Revocation wins over configuration.
pub fn standing(digest: &[u8; 32], configured: &[[u8; 32]], stored: &[StoredToken]) -> Standing {
    match stored.iter().find(|s| &s.digest == digest) {
        Some(s) if s.state == TokenState::Revoked => Standing::Revoked,
        _ if configured.contains(digest) => Standing::Configured,
        Some(s) => Standing::Rotated(s.created_at),
        None => Standing::Unknown,
    }
}

/// The digests of configured tokens.
pub fn digests(tokens: &[SecretString]) -> Vec<[u8; 32]> {
    tokens
        .iter()
        .map(|t| sha256(t.expose_secret().as_bytes()))
        .collect()
}

/// The tokens a replica accepts now.
#[derive(Debug)]
pub struct WebhookTokens {
    configured: Vec<[u8; 32]>,
    accepted: RwLock<Arc<TokenSet>>,
}

impl WebhookTokens {
    /// The configured tokens, until the stored ones are read ([`WebhookTokens::load`]).
    pub fn new(configured: &[SecretString]) -> WebhookTokens {
        let configured = digests(configured);
        WebhookTokens {
            accepted: RwLock::new(Arc::new(TokenSet::from_digests(configured.clone()))),
            configured,
        }
    }

    /// Whether `presented` is an accepted token (constant time over the set).
    pub fn verify(&self, presented: &str) -> bool {
        let set = self
            .accepted
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        set.verify(presented)
    }

    /// Accepted tokens now: none means every delivery is refused.
    pub fn count(&self) -> usize {
        self.accepted
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Takes `stored` into account: the configured tokens less the revoked, plus the
    /// active stored ones.
    pub fn apply(&self, stored: &[StoredToken]) {
        let mut accepted: Vec<[u8; 32]> = self
            .configured
            .iter()
            .chain(stored.iter().map(|s| &s.digest))
            .filter(|d| standing(d, &self.configured, stored).accepted())
            .copied()
            .collect();
        accepted.sort_unstable();
        accepted.dedup();
        *self.accepted.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(TokenSet::from_digests(accepted));
    }

    /// Reads the stored tokens once and applies them.
    pub async fn load(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        self.apply(&tokens::load(pool).await?);
        Ok(())
    }

    /// Re-reads the stored tokens every `every` until `stop`.
    pub async fn refresh(self: Arc<Self>, pool: PgPool, every: Duration, stop: CancellationToken) {
        static FAILING: Burst = Burst::new(crate::error::BURST);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.load(&pool).await
                && let Some(left_out) = FAILING.admit()
            {
                tracing::warn!(error = %e, left_out, "cannot re-read the stored webhook tokens; the last ones read stay in force");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(list: &[&str]) -> Vec<SecretString> {
        list.iter()
            .map(|s| SecretString::from(s.to_string()))
            .collect()
    }

    fn stored(token: &str, state: TokenState) -> StoredToken {
        StoredToken {
            digest: sha256(token.as_bytes()),
            state,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn rotated_tokens_are_added_and_revoked_ones_refused_even_when_configured() {
        let tokens = WebhookTokens::new(&secrets(&[
            "configured-token-0001",
            "configured-token-0002",
        ]));
        assert!(tokens.verify("configured-token-0001"));
        assert!(!tokens.verify("rotated-token-000001"));
        tokens.apply(&[
            stored("rotated-token-000001", TokenState::Active),
            stored("configured-token-0002", TokenState::Revoked),
            stored("removed-token-000001", TokenState::Revoked),
        ]);
        assert!(tokens.verify("configured-token-0001"));
        assert!(tokens.verify("rotated-token-000001"));
        assert!(!tokens.verify("configured-token-0002"));
        assert!(!tokens.verify("removed-token-000001"));
        assert_eq!(tokens.count(), 2);
        // A later read replaces the earlier one.
        tokens.apply(&[stored("rotated-token-000001", TokenState::Revoked)]);
        assert!(!tokens.verify("rotated-token-000001"));
        assert!(tokens.verify("configured-token-0002"));
    }

    #[test]
    fn standing_puts_revocation_first() {
        let configured = digests(&secrets(&["a-configured-token-01"]));
        let d = |t: &str| sha256(t.as_bytes());
        let revoked = [stored("a-configured-token-01", TokenState::Revoked)];
        assert_eq!(
            standing(&d("a-configured-token-01"), &configured, &revoked),
            Standing::Revoked
        );
        assert_eq!(
            standing(&d("a-configured-token-01"), &configured, &[]),
            Standing::Configured
        );
        assert_eq!(standing(&d("other"), &configured, &[]), Standing::Unknown);
        let active = [stored("rotated", TokenState::Active)];
        assert!(matches!(
            standing(&d("rotated"), &configured, &active),
            Standing::Rotated(_)
        ));
        assert!(!Standing::Revoked.accepted() && Standing::Configured.accepted());
    }
}
