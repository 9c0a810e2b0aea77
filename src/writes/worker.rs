//! The outbox worker: sends pending writes to PartnerStack, oldest first, each replica a
//! few at a time, with exactly one upstream effect per write.
//!
//! One attempt of one write:
//!
//! 1. **Claim** it (`db::writes::claim`): a lease, renewed while the attempt runs, and a
//!    fencing token (`attempts`). Writes about a customer with an earlier write pending
//!    wait their turn.
//! 2. **Look first** when an earlier attempt may have landed (`in_doubt`: its answer was
//!    lost, or its worker died): a customer by `GET /customers/{customer_key}`, a
//!    transaction by its key in a list page. Found: the write is done. A customer not
//!    found yet is looked for again until `writes.lookup_window` has passed since it
//!    was last sent (PartnerStack can take minutes to show a new customer, and does
//!    not promise `customer_key` is unique, so sending again sooner could create a second
//!    one); transactions are keyed, so a repeat cannot create a second one.
//! 3. **Mark it in doubt**, committed, then send it through the client (its requests go
//!    ahead of reconcile pages in the request budget): the stored request, read back as a
//!    typed [`Request`], becomes the client's types by `From`, which cannot fail.
//! 4. **Record** the outcome, fenced by the claim: success applies PartnerStack's answer
//!    through the one door in the same transaction, so `/v1` shows it at once; a refusal
//!    (4xx) fails the write with PartnerStack's message; anything else (429, 5xx, timeout,
//!    a cut connection) leaves it pending with back-off, in doubt unless the answer proves
//!    nothing landed.

use std::sync::Arc;
use std::time::Duration;

use partnerstack::Entity;
use partnerstack::client::{self, Client, Error as ClientError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use rand::RngExt as _;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::fields::{Key, Timestamp};
use super::request::{CustomerRef, CustomerUpdate, NewCustomer, NewTransaction};
use super::{Outbox, Request};
use crate::apply::{self, Observation};
use crate::config::WritesConfig;
use crate::db::writes::{self, Claimed, Finished, Resolution, WriteKind, WriteStatus};
use crate::telemetry::{FloatGauge, Labels};

/// How often an idle worker looks for due writes (another replica may have accepted them,
/// or a back-off may have ended).
const POLL: Duration = Duration::from_millis(500);
/// How often the backlog gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(5);
/// First retry delay of a failing write (doubles per attempt up to `max_retry_delay`).
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// How often a customer not yet found after a lost answer is looked for again.
const LOOK_AGAIN: Duration = Duration::from_secs(5);

crate::text_enum! {
    /// How one attempt at a write ended.
    pub enum WriteOutcome {
        Succeeded = "succeeded",
        Failed = "failed",
        Retried = "retried",
        /// An answer was lost and the object not found yet.
        Looking = "looking",
        /// The claim was lost to another replica.
        Abandoned = "abandoned",
    }
}

/// A write attempt: its kind, and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: WriteKind,
    pub outcome: WriteOutcome,
}

impl Labels for WriteLabels {
    fn fixed() -> Vec<Self> {
        let mut out = Vec::new();
        for &kind in WriteKind::ALL {
            for &outcome in WriteOutcome::ALL {
                out.push(WriteLabels { kind, outcome });
            }
        }
        out
    }
}

crate::metrics! {
    /// The write worker's metrics.
    pub struct WriteMetrics {
        /// Write attempts, by kind and outcome.
        #[values(WriteOutcome::words())]
        pub writes: Family<WriteLabels, Counter>,
        /// Writes accepted and not finished.
        ///
        /// Refreshed every few seconds by each worker.
        pub writes_pending: Gauge,
        /// Age of the oldest pending write (0 when none).
        #[unit(Seconds)]
        pub writes_oldest_pending_seconds: FloatGauge,
        /// Requests sent to PartnerStack per finished write, look-ups and retries included.
        ///
        /// 1 when nothing went wrong.
        pub write_upstream_requests: Histogram =
            Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]),
    }
}

/// The worker of one replica.
#[derive(Clone)]
pub struct Worker {
    pool: PgPool,
    client: Client,
    config: WritesConfig,
    metrics: Arc<WriteMetrics>,
    outbox: Outbox,
}

/// How one attempt ended.
#[derive(Debug)]
enum Outcome {
    /// Done: PartnerStack has the effect. `object`: what it answered (or what a look-up
    /// found), applied to the copy.
    Done {
        resolution: Resolution,
        object: Option<Value>,
    },
    /// PartnerStack refused the write for good.
    Refused {
        status: Option<u16>,
        message: String,
    },
    /// Try again later. `in_doubt`: the attempt may have landed.
    Retry {
        in_doubt: bool,
        status: Option<u16>,
        error: String,
    },
    /// A lost answer is unresolved: look again later, send nothing yet.
    LookAgain { why: String },
    /// The claim was lost to another worker: record nothing.
    Abandoned,
}

impl Worker {
    pub fn new(
        pool: PgPool,
        client: Client,
        config: WritesConfig,
        metrics: Arc<WriteMetrics>,
        outbox: Outbox,
    ) -> Worker {
        Worker {
            pool,
            client,
            config,
            metrics,
            outbox,
        }
    }

    /// Sends due writes until `stop` is cancelled, then lets the writes in flight finish
    /// (within `grace`; one abandoned mid-send stays in doubt and is looked for by the
    /// next claim).
    pub async fn run(self, stop: CancellationToken, grace: Duration) {
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let mut gauges_at = tokio::time::Instant::now();
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            let room = usize::from(self.config.concurrency).saturating_sub(in_flight.len());
            if room > 0 {
                match writes::claim(&self.pool, room as i64, self.config.lease).await {
                    Ok(claimed) => {
                        failures = 0;
                        for claim in claimed {
                            let worker = self.clone();
                            in_flight.spawn(async move { worker.attempt(claim).await });
                        }
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        if failures == 1 || failures.is_multiple_of(60) {
                            tracing::warn!(error = %e, "cannot claim writes; retrying");
                        }
                    }
                }
            }
            if gauges_at.elapsed() >= GAUGES_EVERY {
                gauges_at = tokio::time::Instant::now();
                if let Ok((pending, oldest)) = writes::backlog(&self.pool).await {
                    self.metrics.writes_pending.set(pending);
                    self.metrics.writes_oldest_pending_seconds.set(oldest);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = self.outbox.accepted.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        let drain = async { while in_flight.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                ?grace,
                "writes still in flight at shutdown; they stay pending (in doubt) and are resumed at the next start"
            );
            in_flight.abort_all();
        }
    }

    /// One attempt of one claimed write, from look-up to recorded outcome. Its span names
    /// the write for every line logged on the way, the client's too (logs are flat, so
    /// the fields are prefixed: the client's retries log their own `attempt`).
    #[tracing::instrument(
        name = "write_attempt",
        skip_all,
        fields(write = claim.id, write_kind = %claim.kind, write_attempt = claim.attempts)
    )]
    async fn attempt(&self, claim: Claimed) {
        let renew_stop = CancellationToken::new();
        let renewer = tokio::spawn(
            keep_lease(
                self.pool.clone(),
                claim.clone(),
                self.config.lease,
                renew_stop.clone(),
            )
            .in_current_span(),
        );
        let (outcome, requests) = client::for_write(self.send(&claim)).await;
        renew_stop.cancel();
        let _ = renewer.await;
        let kind = claim.kind;
        let label = match &outcome {
            Outcome::Done { .. } => WriteOutcome::Succeeded,
            Outcome::Refused { .. } => WriteOutcome::Failed,
            Outcome::Retry { .. } => WriteOutcome::Retried,
            Outcome::LookAgain { .. } => WriteOutcome::Looking,
            Outcome::Abandoned => WriteOutcome::Abandoned,
        };
        if let Err(e) = self.record(&claim, outcome, requests).await {
            // The claim's lease runs out and the write is claimed again (in doubt if it
            // was sent), so nothing is lost.
            tracing::warn!(error = %e, "recording a write's outcome failed; it will be retried");
        }
        self.metrics
            .writes
            .get_or_create(&WriteLabels {
                kind,
                outcome: label,
            })
            .inc();
        if matches!(label, WriteOutcome::Succeeded | WriteOutcome::Failed) {
            self.metrics
                .write_upstream_requests
                .observe(requests as f64);
        }
    }

    /// Looks (when in doubt), marks the write in doubt, sends it, and sorts the answer.
    async fn send(&self, claim: &Claimed) -> Outcome {
        // Only a row this code did not write fails to read back.
        let request = match Request::from_stored(claim.kind, &claim.request) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Refused {
                    status: None,
                    message: format!("the stored request cannot be read: {e}"),
                };
            }
        };
        if claim.in_doubt {
            match self.look(claim, &request).await {
                Look::Found(object) => {
                    return Outcome::Done {
                        resolution: Resolution::Found,
                        object,
                    };
                }
                Look::Send => {}
                Look::Wait(why) => return Outcome::LookAgain { why },
                Look::Failed(e) => return retry(&e, true),
            }
        }
        match writes::sending(&self.pool, claim).await {
            Ok(true) => {}
            Ok(false) => return Outcome::Abandoned,
            Err(e) => {
                return Outcome::Retry {
                    in_doubt: claim.in_doubt,
                    status: None,
                    error: format!("the database: {e}"),
                };
            }
        }
        match &request {
            Request::CreateCustomer(c) => self.create_customer(claim, c).await,
            Request::UpdateCustomer(u) => self.update_customer(claim, u).await,
            Request::CreateTransaction(t) => self.create_transaction(claim, t).await,
            Request::DeleteTransaction(d) => self.delete_transaction(claim, &d.key).await,
        }
    }

    /// `POST /customers`. A customer PartnerStack has under this key already is what
    /// was asked for if it has this email.
    async fn create_customer(&self, claim: &Claimed, customer: &NewCustomer) -> Outcome {
        match self.client.create_customer(&customer.into()).await {
            Ok(created) => Outcome::Done {
                resolution: Resolution::Created,
                object: Some(created.raw),
            },
            Err(ClientError::DuplicateCustomer {
                existing,
                status,
                message,
                ..
            }) => {
                if same_email(&existing.raw, customer.email.as_str()) {
                    Outcome::Done {
                        resolution: existed(claim),
                        object: Some(existing.raw),
                    }
                } else {
                    Outcome::Refused {
                        status: Some(status.as_u16()),
                        message: format!(
                            "{message} (a customer with this customer_key exists with another email)"
                        ),
                    }
                }
            }
            Err(e) => self.sorted(e, claim),
        }
    }

    /// `PATCH /customers/{customer_key}`.
    async fn update_customer(&self, claim: &Claimed, update: &CustomerUpdate) -> Outcome {
        let customer_key = update.customer_key.as_str();
        match self
            .client
            .update_customer(customer_key, &(&update.update).into())
            .await
        {
            Ok(updated) => Outcome::Done {
                resolution: Resolution::Updated,
                object: Some(updated.raw),
            },
            Err(e) => self.sorted_for_customer(e, claim, Some(customer_key)).await,
        }
    }

    /// `POST /transactions`. Its key makes a repeat harmless: PartnerStack answers that
    /// the transaction exists.
    async fn create_transaction(&self, claim: &Claimed, transaction: &NewTransaction) -> Outcome {
        match self.client.create_transaction(&transaction.into()).await {
            Ok(created) => Outcome::Done {
                resolution: Resolution::Created,
                object: Some(created.raw),
            },
            Err(ClientError::DuplicateTransaction { existing, .. }) => Outcome::Done {
                resolution: existed(claim),
                object: Some(existing.raw),
            },
            Err(e) => {
                let customer_key = match &transaction.fields.customer {
                    CustomerRef::Key(k) => Some(k.as_str()),
                    CustomerRef::Email(_) | CustomerRef::PartnerStack(_) => None,
                };
                self.sorted_for_customer(e, claim, customer_key).await
            }
        }
    }

    /// `DELETE /transactions/{key}`.
    async fn delete_transaction(&self, claim: &Claimed, key: &Key) -> Outcome {
        match self.client.delete_transaction(key.as_str()).await {
            Ok(Some(deleted)) => Outcome::Done {
                resolution: Resolution::Deleted,
                object: Some(deleted),
            },
            // Nothing to delete: gone with an earlier attempt whose answer was lost, or
            // never there.
            Ok(None) if claim.in_doubt => Outcome::Done {
                resolution: Resolution::Absent,
                object: None,
            },
            Ok(None) => Outcome::Refused {
                status: Some(404),
                message: format!(
                    "PartnerStack has no transaction with key {:?}",
                    key.as_str()
                ),
            },
            Err(e) => self.sorted(e, claim),
        }
    }

    /// [`Worker::sorted`], except that a refusal of a write about a customer this outbox
    /// created moments ago (within `lookup_window`) is tried again: PartnerStack can take
    /// minutes to know a new customer.
    async fn sorted_for_customer(
        &self,
        e: ClientError,
        claim: &Claimed,
        customer_key: Option<&str>,
    ) -> Outcome {
        let outcome = self.sorted(e, claim);
        let (Outcome::Refused { message, .. }, Some(customer_key)) = (&outcome, customer_key)
        else {
            return outcome;
        };
        match writes::created_customer_within(&self.pool, customer_key, self.config.lookup_window)
            .await
        {
            Ok(true) => Outcome::LookAgain {
                why: format!(
                    "PartnerStack does not know customer {customer_key:?} yet (created moments ago): {message}"
                ),
            },
            _ => outcome,
        }
    }

    /// A failed send, sorted: a refusal of the data fails the write, except that a
    /// create answered "already exists" (now, or after an earlier lost answer) has what
    /// it asked for; anything else is retried.
    fn sorted(&self, e: ClientError, claim: &Claimed) -> Outcome {
        let status = e.status();
        let refused =
            status.is_some_and(|s| s.is_client_error() && s != StatusCode::TOO_MANY_REQUESTS);
        if !refused {
            return retry(&e, true);
        }
        let message = match &e {
            ClientError::Http { message, .. } => message.clone(),
            ClientError::GaveUp { last, .. } => last.to_string(),
            other => other.to_string(),
        };
        let creates = matches!(
            claim.kind,
            WriteKind::CreateCustomer | WriteKind::CreateTransaction
        );
        let says_exists =
            message.to_ascii_lowercase().contains("exist") || status == Some(StatusCode::CONFLICT);
        if creates && says_exists {
            return Outcome::Done {
                resolution: existed(claim),
                object: None,
            };
        }
        Outcome::Refused {
            status: status.map(|s| s.as_u16()),
            message,
        }
    }

    /// Looks for the effect of an earlier attempt whose answer was lost.
    async fn look(&self, claim: &Claimed, request: &Request) -> Look {
        match request {
            Request::CreateCustomer(c) => self.look_for_customer(claim, c).await,
            Request::CreateTransaction(t) => {
                let created_at = t.fields.created_at.map(Timestamp::time);
                match self
                    .client
                    .find_transaction(t.key.as_str(), created_at)
                    .await
                {
                    Ok(Some(found)) => Look::Found(Some(found.raw)),
                    Ok(None) => Look::Send,
                    Err(e) => Look::Failed(e),
                }
            }
            // Updates and deletes are idempotent: sending again is the look.
            Request::UpdateCustomer(_) | Request::DeleteTransaction(_) => Look::Send,
        }
    }

    /// Looks for a customer an earlier attempt may have created.
    async fn look_for_customer(&self, claim: &Claimed, customer: &NewCustomer) -> Look {
        let customer_key = customer.customer_key.as_str();
        match self.client.get_customer(customer_key).await {
            Ok(Some(found)) if same_email(&found.raw, customer.email.as_str()) => {
                Look::Found(Some(found.raw))
            }
            // Another customer under this key: ours did not land (a send will be refused
            // as a duplicate, or make the second customer asked for).
            Ok(Some(_)) => Look::Send,
            Ok(None) => {
                // Measured from the latest send: what it created may be what PartnerStack
                // does not show yet.
                let since = claim.last_sent_at.unwrap_or(claim.created_at);
                let waited = (chrono::Utc::now() - since).to_std().unwrap_or_default();
                if waited < self.config.lookup_window {
                    Look::Wait(format!(
                        "an earlier attempt's answer was lost and PartnerStack does not show customer {customer_key:?} yet; \
                         looking again (sent again after {}s without it)",
                        self.config.lookup_window.as_secs()
                    ))
                } else {
                    Look::Send
                }
            }
            Err(e) => Look::Failed(e),
        }
    }

    /// Records an attempt's outcome, fenced by the claim.
    async fn record(
        &self,
        claim: &Claimed,
        outcome: Outcome,
        requests: u64,
    ) -> Result<(), sqlx::Error> {
        let failed = |error_status, message| Finished {
            status: WriteStatus::Failed,
            resolution: Resolution::Refused,
            result: None,
            error_status,
            error_message: Some(message),
            requests,
        };
        match outcome {
            Outcome::Abandoned => Ok(()),
            Outcome::Done { resolution, object } => {
                let observation = object.as_ref().and_then(|o| observation(claim.kind, o));
                let finished = Finished {
                    status: WriteStatus::Succeeded,
                    resolution,
                    result: object,
                    error_status: None,
                    error_message: None,
                    requests,
                };
                self.finish(claim, &finished, observation).await
            }
            Outcome::Refused { status, message } => {
                self.finish(claim, &failed(status, message), None).await
            }
            Outcome::Retry {
                in_doubt,
                status,
                error,
            } => {
                let age = (chrono::Utc::now() - claim.created_at)
                    .to_std()
                    .unwrap_or_default();
                if age >= self.config.give_up_after {
                    let message = format!(
                        "gave up after {} attempts over {}: {error}",
                        claim.attempts,
                        humantime::format_duration(self.config.give_up_after)
                    );
                    return self.finish(claim, &failed(status, message), None).await;
                }
                let delay = backoff(claim.attempts, self.config.max_retry_delay);
                tracing::info!(retry_in_ms = delay.as_millis() as u64, error = %error, "write not sent; will retry");
                writes::postpone(
                    &self.pool,
                    claim,
                    delay,
                    in_doubt || claim.in_doubt,
                    status,
                    &error,
                    requests,
                )
                .await
            }
            Outcome::LookAgain { why } => {
                writes::postpone(&self.pool, claim, LOOK_AGAIN, true, None, &why, requests).await
            }
        }
    }

    /// Finishes the write, fenced by the claim, and applies PartnerStack's answer in the
    /// same transaction (nothing when the claim no longer holds); wakes the waiters.
    async fn finish(
        &self,
        claim: &Claimed,
        finished: &Finished,
        observation: Option<Observation>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = crate::db::begin(&self.pool).await?;
        if !writes::finish(&mut tx, claim, finished).await? {
            tx.rollback().await?;
            return Ok(());
        }
        if let Some(o) = observation {
            let client = claim.client.as_deref();
            apply::apply_write(&mut tx, client, std::slice::from_ref(&o)).await?;
        }
        tx.commit().await?;
        self.outbox.finished.notify_waiters();
        Ok(())
    }
}

/// PartnerStack's answer to a write of `kind`, as an observation for the one door; none
/// when it cannot be read (the reconciler brings the object then).
fn observation(kind: WriteKind, object: &Value) -> Option<Observation> {
    let entity = match kind {
        WriteKind::CreateCustomer | WriteKind::UpdateCustomer => Entity::Customer,
        WriteKind::CreateTransaction | WriteKind::DeleteTransaction => Entity::Transaction,
    };
    let deleted = kind == WriteKind::DeleteTransaction;
    Observation::parse(entity, object.clone(), deleted)
        .map_err(|e| {
            tracing::warn!(error = %e, "PartnerStack's answer to a write cannot be applied; the reconciler will bring the object")
        })
        .ok()
}

/// What a look-up after a lost answer found.
enum Look {
    /// The write had landed: this is the object.
    Found(Option<Value>),
    /// Not there (or it need not be looked for): send.
    Send,
    /// Not there yet: look again later.
    Wait(String),
    /// The look-up itself failed.
    Failed(ClientError),
}

/// A send that failed in a way that may pass: retried, in doubt unless the answer proves
/// nothing landed (429: refused before processing).
fn retry(e: &ClientError, may_have_landed: bool) -> Outcome {
    let status = e.status();
    let throttled = status == Some(StatusCode::TOO_MANY_REQUESTS);
    Outcome::Retry {
        in_doubt: may_have_landed && !throttled,
        status: status.map(|s| s.as_u16()),
        error: e.to_string(),
    }
}

/// How a create that PartnerStack already had ended: `found` when an earlier attempt of
/// this write may have made it, else `existed`.
fn existed(claim: &Claimed) -> Resolution {
    if claim.in_doubt {
        Resolution::Found
    } else {
        Resolution::Existed
    }
}

/// Whether a customer object has `email` (emails compare without case).
fn same_email(object: &Value, email: &str) -> bool {
    object
        .get("email")
        .and_then(Value::as_str)
        .is_some_and(|e| e.trim().eq_ignore_ascii_case(email.trim()))
}

/// The wait before attempt `attempts + 1`: doubling from [`FIRST_RETRY`], capped, with
/// jitter (half to all of it).
fn backoff(attempts: i32, max: Duration) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    let ceiling = FIRST_RETRY.saturating_mul(1 << doublings).min(max);
    ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// Renews a claim's lease every third of it until `stop` (never mid-statement: the stop
/// is checked between statements).
async fn keep_lease(pool: PgPool, claim: Claimed, lease: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(lease / 3) => {}
        }
        match writes::renew(&pool, &claim, lease).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::debug!(error = %e, "renewing a write's lease failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_and_is_capped() {
        let max = Duration::from_secs(300);
        for _ in 0..50 {
            let first = backoff(1, max);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
            let fourth = backoff(4, max);
            assert!(fourth >= Duration::from_secs(4) && fourth <= Duration::from_secs(8));
            assert!(backoff(40, max) <= max);
        }
    }

    #[test]
    fn emails_compare_without_case() {
        let object = serde_json::json!({"email": "Ann@Example.com"});
        assert!(same_email(&object, "ann@example.com"));
        assert!(!same_email(&object, "bob@example.com"));
        assert!(!same_email(&serde_json::json!({}), "ann@example.com"));
    }
}
