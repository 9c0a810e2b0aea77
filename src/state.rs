//! What every request handler may need, held low in the module graph: handlers
//! ([`crate::routes`], [`crate::api`]) import it, and it imports none of them.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::auth::{Callers, SigningKeys, TokenSet};
use crate::config::Config;
use crate::feed::Feed;
use crate::ingest::writer::Writer;
use crate::long_poll::LongPolls;
use crate::reconcile::Reconciler;
use crate::telemetry::{Exposition, Metrics};
use crate::writes::Outbox;

/// Shared state of a running service; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub writer: Writer,
    pub metrics: Arc<Metrics>,
    /// Every metric group, as `/metrics` serves them.
    pub exposition: Arc<Exposition>,
    pub webhook_tokens: Arc<TokenSet>,
    pub signing_keys: Arc<SigningKeys>,
    /// Who may call `/v1`, and with which scopes.
    pub api_callers: Arc<Callers>,
    /// Bounds on `/v1` requests that wait.
    pub long_polls: LongPolls,
    /// `None` when the reconciler is off (no credentials, or `PSYNC_RECONCILE_INTERVAL=off`).
    pub reconciler: Option<Reconciler>,
    /// `None` when writes cannot be sent (no PartnerStack credentials).
    pub outbox: Option<Outbox>,
    /// Wakes long-polling readers of the change feed.
    pub feed: Feed,
    /// Cancelled when shutdown begins: `/readyz` answers 503 and responses close their
    /// connections, while the service still serves (see [`crate::app`]).
    pub draining: CancellationToken,
}
