//! The outbox worker: sends pending writes to PartnerStack, oldest first, each replica a
//! few at a time, with exactly one upstream effect per write, and reports success only
//! when PartnerStack did what the write asked.
//!
//! One attempt of one write:
//!
//! 1. **Claim** it (`db::writes::claim`): a lease, renewed while the attempt runs, and a
//!    fencing token (`attempts`). Writes about a customer with an earlier write pending
//!    wait their turn.
//! 2. **Look first** when an earlier attempt may have landed (`in_doubt`: its answer was
//!    lost, or its worker died): a customer by `GET /customers/{customer_key}`, a
//!    transaction by its key in a list page. Found with the fields asked for
//!    ([`super::confirm`]): the write is done. A customer not found (or not as asked) is
//!    looked for again, ever less often ([`next_look`]), until `writes.lookup_window` has
//!    passed since it was last sent (PartnerStack can take minutes to show a new customer,
//!    and does not promise `customer_key` is unique, so sending again sooner could create
//!    a second one); transactions are keyed, so a repeat cannot create a second one.
//! 3. **Mark it in doubt**, committed, then send it through the client (its requests go
//!    ahead of reconcile pages in the request budget): the stored request, read back as a
//!    typed [`Request`], becomes the client's types by `From`, which cannot fail.
//! 4. **Judge the answer by evidence**, never by the wording of a message. A create's 2xx
//!    answer counts when its object is the one asked for. A refusal (4xx) of a create is a
//!    reason to look: found as asked, the write succeeded (`existed`); found otherwise,
//!    it failed with the differences; not found, it failed with PartnerStack's status and
//!    message, unless it concerns a customer this outbox created moments ago (looked for
//!    again within the window). Updates and deletes are judged by the HTTP status (a
//!    delete's 2xx in any shape). 429, 5xx, timeouts and cut connections leave the write
//!    pending with back-off, in doubt unless the answer proves nothing landed.
//! 5. **Record** the outcome, fenced by the claim, applying PartnerStack's object through
//!    the one door in the same transaction, so `/v1` shows it at once (a delete marks the
//!    transaction deleted, with its change). An object the copy refuses is set aside
//!    ([`crate::db::set_aside`]) and the outcome recorded without it: a write whose effect
//!    happened is never reported failed, nor left pending, for want of recording it.

use std::sync::Arc;
use std::time::Duration;

use partnerstack::Entity;
use partnerstack::client::{self, Client, Deletion, Error as ClientError};
use partnerstack::models::Meta;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use rand::RngExt as _;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::fields::{Key, Timestamp};
use super::request::{CustomerRef, CustomerUpdate};
use super::{Outbox, Request, confirm};
use crate::apply::{self, Observation, Source};
use crate::config::WritesConfig;
use crate::db::is_transient_error;
use crate::db::set_aside;
use crate::db::writes::{self, Claimed, Finished, Resolution, WriteKind, WriteStatus};
use crate::telemetry::{FloatGauge, Labels};

/// How often an idle worker looks for due writes (another replica may have accepted them,
/// or a back-off may have ended).
const POLL: Duration = Duration::from_millis(500);
/// How often the backlog gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(5);
/// First retry delay of a failing write (doubles per attempt up to `max_retry_delay`).
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The shortest wait between two looks for an object that may not be visible yet.
const MIN_LOOK: Duration = Duration::from_secs(1);

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
    /// found), applied to the copy; every create has one.
    Done {
        resolution: Resolution,
        object: Option<Value>,
    },
    /// PartnerStack refused the write for good (or has another object where this one
    /// should be).
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
    /// Not resolved yet: look again `after` this long, send nothing before.
    LookAgain {
        why: String,
        after: Duration,
        in_doubt: bool,
    },
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
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {
                    // And every other attempt that ended meanwhile: one claim refills them.
                    while in_flight.try_join_next().is_some() {}
                }
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

    /// Looks (when in doubt), marks the write in doubt, sends it, and judges the answer.
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
        if claim.in_doubt
            && let Some(outcome) = self.look_first(claim, &request).await
        {
            return outcome;
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
            Request::CreateCustomer(c) => {
                let answer = self.client.create_customer(&c.into()).await;
                self.created(claim, &request, answer.map(|r| r.raw)).await
            }
            Request::CreateTransaction(t) => {
                let answer = self.client.create_transaction(&t.into()).await;
                self.created(claim, &request, answer.map(|r| r.raw)).await
            }
            Request::UpdateCustomer(u) => self.update_customer(claim, u).await,
            Request::DeleteTransaction(d) => self.delete_transaction(claim, &d.key).await,
        }
    }

    /// Before sending again a create whose earlier answer was lost: `Some` outcome when it
    /// landed (found as asked) or when it is too early to tell; `None` to send. Updates
    /// and deletes are idempotent: sending again is their look.
    async fn look_first(&self, claim: &Claimed, request: &Request) -> Option<Outcome> {
        let found = match self.find(request).await {
            Ok(found) => found,
            Err(e) => return Some(passing(&e)),
        };
        if let Some(object) = found
            && confirm::differences(request, &object).is_empty()
        {
            return Some(Outcome::Done {
                resolution: Resolution::Found,
                object: Some(object),
            });
        }
        let Request::CreateCustomer(customer) = request else {
            // Keyed: a repeat cannot make a second transaction.
            return None;
        };
        // Not there, or another customer under this key (`customer_key` is not promised
        // unique): what the last send made may not be visible yet. Measured from that send.
        let since = claim.last_sent_at.unwrap_or(claim.created_at);
        let waited = (chrono::Utc::now() - since).to_std().unwrap_or_default();
        let window = self.config.lookup_window;
        let after = next_look(waited, window)?;
        Some(Outcome::LookAgain {
            why: format!(
                "an earlier attempt's answer was lost and PartnerStack does not show customer {:?} \
                 as asked yet; looking again, ever less often (sent again {}s after the last send \
                 if still not found)",
                customer.customer_key.as_str(),
                window.as_secs()
            ),
            after,
            in_doubt: true,
        })
    }

    /// The object a create asks for, as PartnerStack shows it now: a customer by its
    /// `customer_key`, a transaction by its key. `None` for other writes.
    async fn find(&self, request: &Request) -> Result<Option<Value>, ClientError> {
        Ok(match request {
            Request::CreateCustomer(c) => self
                .client
                .get_customer(c.customer_key.as_str())
                .await?
                .map(|r| r.raw),
            Request::CreateTransaction(t) => {
                let created_at = t.fields.created_at.map(Timestamp::time);
                self.client
                    .find_transaction(t.key.as_str(), created_at)
                    .await?
                    .map(|r| r.raw)
            }
            Request::UpdateCustomer(_) | Request::DeleteTransaction(_) => None,
        })
    }

    /// A create's answer, judged: a 2xx counts when its object is the one asked for (a
    /// repeated key may be answered with an earlier, different object); a refusal is a
    /// reason to look.
    async fn created(
        &self,
        claim: &Claimed,
        request: &Request,
        answer: Result<Value, ClientError>,
    ) -> Outcome {
        let error = match answer {
            Ok(object) => {
                let differences = confirm::differences(request, &object);
                return if differences.is_empty() {
                    Outcome::Done {
                        resolution: Resolution::Created,
                        object: Some(object),
                    }
                } else {
                    Outcome::Refused {
                        status: None,
                        message: conflict(request, "answered with", &differences),
                    }
                };
            }
            Err(e) => e,
        };
        let Some((status, message)) = refusal(&error) else {
            return passing(&error);
        };
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return refused(status, message);
        }
        // Refused: perhaps because the object exists, perhaps for any other reason. Only a
        // look-up can tell.
        match self.find(request).await {
            Ok(Some(object)) => {
                let differences = confirm::differences(request, &object);
                if differences.is_empty() {
                    Outcome::Done {
                        resolution: existed(claim),
                        object: Some(object),
                    }
                } else {
                    Outcome::Refused {
                        status: Some(status.as_u16()),
                        message: format!(
                            "{} (PartnerStack answered {}: {message})",
                            conflict(request, "has", &differences),
                            status.as_u16()
                        ),
                    }
                }
            }
            Ok(None) => {
                let customer_key = match request {
                    Request::CreateCustomer(c) => Some(c.customer_key.as_str()),
                    Request::CreateTransaction(t) => match &t.fields.customer {
                        CustomerRef::Key(k) => Some(k.as_str()),
                        CustomerRef::Email(_) | CustomerRef::PartnerStack(_) => None,
                    },
                    Request::UpdateCustomer(_) | Request::DeleteTransaction(_) => None,
                };
                self.unless_new_customer(claim, customer_key, status, message)
                    .await
            }
            // The refusal proved this send landed nothing; whether the object exists is
            // still to learn.
            Err(e) => Outcome::Retry {
                in_doubt: claim.in_doubt,
                status: Some(status.as_u16()),
                error: format!(
                    "PartnerStack refused the create ({status}: {message}) and looking for it failed: {e}"
                ),
            },
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
            Err(e) => match refusal(&e) {
                Some((status, message)) => {
                    self.unless_new_customer(claim, Some(customer_key), status, message)
                        .await
                }
                None => passing(&e),
            },
        }
    }

    /// `DELETE /transactions/{key}`: any 2xx is done, whatever the answer's shape.
    async fn delete_transaction(&self, claim: &Claimed, key: &Key) -> Outcome {
        match self.client.delete_transaction(key.as_str()).await {
            Ok(Deletion::Deleted { object }) => Outcome::Done {
                resolution: Resolution::Deleted,
                object,
            },
            // Nothing to delete: gone with an earlier attempt whose answer was lost, or
            // never there.
            Ok(Deletion::Absent) if claim.in_doubt => Outcome::Done {
                resolution: Resolution::Absent,
                object: None,
            },
            Ok(Deletion::Absent) => Outcome::Refused {
                status: Some(404),
                message: format!(
                    "PartnerStack has no transaction with key {:?}",
                    key.as_str()
                ),
            },
            Err(e) => match refusal(&e) {
                Some((status, message)) => refused(status, message),
                None => passing(&e),
            },
        }
    }

    /// A refusal of a write about `customer_key`: final, unless this outbox created that
    /// customer within `lookup_window` (PartnerStack can take minutes to know a new
    /// customer): then tried again, ever less often, until the window has passed.
    async fn unless_new_customer(
        &self,
        claim: &Claimed,
        customer_key: Option<&str>,
        status: StatusCode,
        message: String,
    ) -> Outcome {
        let Some(customer_key) = customer_key else {
            return refused(status, message);
        };
        let window = self.config.lookup_window;
        let created = match writes::customer_created_within(&self.pool, customer_key, window).await
        {
            Ok(Some(at)) => at,
            Ok(None) => return refused(status, message),
            Err(e) => {
                return Outcome::Retry {
                    in_doubt: claim.in_doubt,
                    status: Some(status.as_u16()),
                    error: format!("the database: {e}"),
                };
            }
        };
        let since = (chrono::Utc::now() - created).to_std().unwrap_or_default();
        match next_look(since, window) {
            Some(after) => Outcome::LookAgain {
                why: format!(
                    "PartnerStack does not know customer {customer_key:?} yet (created moments ago): {message}"
                ),
                after,
                in_doubt: claim.in_doubt,
            },
            None => refused(status, message),
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
                let answer = Answer::of(claim, object.as_ref());
                let finished = Finished {
                    status: WriteStatus::Succeeded,
                    resolution,
                    result: object,
                    error_status: None,
                    error_message: None,
                    requests,
                };
                self.finish(claim, &finished, answer).await
            }
            Outcome::Refused { status, message } => {
                self.finish(claim, &failed(status, message), Answer::Nothing)
                    .await
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
                    return self
                        .finish(claim, &failed(status, message), Answer::Nothing)
                        .await;
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
            Outcome::LookAgain {
                why,
                after,
                in_doubt,
            } => writes::postpone(&self.pool, claim, after, in_doubt, None, &why, requests).await,
        }
    }

    /// Finishes the write, fenced by the claim, and applies PartnerStack's answer in the
    /// same transaction (nothing when the claim no longer holds); wakes the waiters. An
    /// answer the copy refuses is set aside and the outcome recorded all the same; so is
    /// one refused only at commit (the outcome is then recorded again, without it).
    async fn finish(
        &self,
        claim: &Claimed,
        finished: &Finished,
        answer: Answer,
    ) -> Result<(), sqlx::Error> {
        let mut tx = crate::db::begin(&self.pool).await?;
        if !writes::finish(&mut tx, claim, finished).await? {
            tx.rollback().await?;
            return Ok(());
        }
        let client = claim.client.as_deref();
        answer.record(&mut tx, client).await?;
        match tx.commit().await {
            Ok(()) => {}
            Err(e) if !is_transient_error(&e) && answer.applies() => {
                tracing::warn!(error = %e, "the database refused a write's answer at commit; recording the outcome without it");
                let mut tx = crate::db::begin(&self.pool).await?;
                if !writes::finish(&mut tx, claim, finished).await? {
                    tx.rollback().await?;
                    return Ok(());
                }
                answer
                    .refused(format!("the database refused it: {e}"))
                    .record(&mut tx, client)
                    .await?;
                tx.commit().await?;
            }
            Err(e) => return Err(e),
        }
        self.outbox.finished.notify_waiters();
        Ok(())
    }
}

/// PartnerStack's answer to a finished write, as the copy takes it.
enum Answer {
    /// Nothing to apply (a refusal, or a delete of nothing).
    Nothing,
    /// An observation for the one door.
    Apply(Observation),
    /// An object the copy cannot take: set aside (when it has a key) with the reason.
    Refused {
        entity: Entity,
        key: Option<String>,
        error: String,
        raw: Value,
    },
}

impl Answer {
    /// What a finished write of `claim`'s kind brings to the copy: PartnerStack's object;
    /// for a delete, the transaction marked deleted (from the answer's object when it is
    /// that transaction, else by its key alone: the documented answer has no object).
    fn of(claim: &Claimed, object: Option<&Value>) -> Answer {
        let entity = match claim.kind {
            WriteKind::CreateCustomer | WriteKind::UpdateCustomer => Entity::Customer,
            WriteKind::CreateTransaction | WriteKind::DeleteTransaction => Entity::Transaction,
        };
        if claim.kind == WriteKind::DeleteTransaction {
            let key = claim.object_key.as_str();
            let deletion = object
                .filter(|o| Meta::identity_of(o).as_deref() == Some(key))
                .and_then(|o| Observation::parse(entity, o.clone(), true).ok())
                .or_else(|| {
                    Observation::parse(entity, serde_json::json!({ "key": key }), true).ok()
                });
            return deletion.map_or(Answer::Nothing, Answer::Apply);
        }
        let Some(object) = object else {
            return Answer::Nothing;
        };
        match Observation::parse(entity, object.clone(), false) {
            Ok(o) => Answer::Apply(o),
            Err(error) => Answer::Refused {
                entity,
                key: Meta::identity_of(object),
                error,
                raw: object.clone(),
            },
        }
    }

    /// Whether it writes to the entity tables.
    fn applies(&self) -> bool {
        matches!(self, Answer::Apply(_))
    }

    /// This answer, refused for `error`.
    fn refused(self, error: String) -> Answer {
        match self {
            Answer::Apply(o) => Answer::Refused {
                entity: o.entity,
                key: Some(o.key),
                error,
                raw: o.raw,
            },
            other => other,
        }
    }

    /// Applies it (or sets it aside) in `tx`; `client` made the write.
    async fn record(&self, tx: &mut PgConnection, client: Option<&str>) -> Result<(), sqlx::Error> {
        match self {
            Answer::Nothing => Ok(()),
            Answer::Apply(o) => {
                apply::apply_or_set_aside(tx, Source::Write, client, std::slice::from_ref(o))
                    .await?;
                Ok(())
            }
            Answer::Refused {
                entity,
                key,
                error,
                raw,
            } => {
                tracing::warn!(%error, "PartnerStack's answer to a write cannot be applied; set aside");
                let Some(key) = key else {
                    return Ok(());
                };
                let refused = set_aside::Refused {
                    entity: *entity,
                    key,
                    error: error.clone(),
                    raw,
                };
                set_aside::record(tx, Source::Write, std::slice::from_ref(&refused)).await
            }
        }
    }
}

/// The wait before looking again for an object that may not be visible yet, `elapsed`
/// after it may have been created: as long again, so the looks double their spacing; at
/// least a 64th of `window` (and [`MIN_LOOK`]); never past the window's end. `None` once
/// the window has passed. Over any window that is about eight looks: one uncertain write
/// costs a handful of requests, whatever the window.
fn next_look(elapsed: Duration, window: Duration) -> Option<Duration> {
    let left = window.checked_sub(elapsed).filter(|d| !d.is_zero())?;
    let first = (window / 64).max(MIN_LOOK);
    Some(elapsed.max(first).min(left))
}

/// PartnerStack's refusal of a request (a 4xx other than 429), with its message.
fn refusal(e: &ClientError) -> Option<(StatusCode, String)> {
    let status = e
        .status()
        .filter(|s| s.is_client_error() && *s != StatusCode::TOO_MANY_REQUESTS)?;
    let message = match e {
        ClientError::Http { message, .. } => message.clone(),
        ClientError::GaveUp { last, .. } => last.to_string(),
        other => other.to_string(),
    };
    Some((status, message))
}

/// A refusal, as a failed write.
fn refused(status: StatusCode, message: String) -> Outcome {
    Outcome::Refused {
        status: Some(status.as_u16()),
        message,
    }
}

/// A failed request that is not a refusal: one that could not be made fails the write
/// (nothing was sent); anything else is retried, in doubt.
fn passing(e: &ClientError) -> Outcome {
    match e {
        ClientError::InvalidRequest(message) => Outcome::Refused {
            status: None,
            message: message.clone(),
        },
        _ => retry(e, true),
    }
}

/// The message of a create whose object PartnerStack shows with other fields.
fn conflict(request: &Request, shown: &str, differences: &[String]) -> String {
    let what = match request {
        Request::CreateCustomer(c) => {
            format!("a customer with customer_key {:?}", c.customer_key.as_str())
        }
        Request::CreateTransaction(t) => format!("a transaction with key {:?}", t.key.as_str()),
        Request::UpdateCustomer(_) | Request::DeleteTransaction(_) => "the object".to_string(),
    };
    format!(
        "conflict: PartnerStack {shown} {what} that is not the one asked for ({})",
        differences.join("; ")
    )
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
    fn looks_double_their_spacing_and_stop_at_the_window() {
        for (window, most) in [(900, 9), (30, 7), (3, 4)] {
            let window = Duration::from_secs(window);
            // The first look comes about a second after the lost answer.
            let mut elapsed = Duration::from_secs(1);
            let mut looks = 1;
            while let Some(wait) = next_look(elapsed, window) {
                assert!(wait >= Duration::from_millis(1));
                elapsed += wait;
                looks += 1;
            }
            assert!(looks <= most, "{looks} looks over {window:?}");
            assert!(elapsed >= window, "the last look is at the window's end");
            assert!(elapsed < window + Duration::from_secs(1), "{elapsed:?}");
        }
        // The default window: a new customer becomes readable 2 to 6 minutes after it is
        // created, and is found by a look within a factor two of that moment.
        let window = Duration::from_secs(900);
        let at = |s| Some(Duration::from_secs(s));
        assert_eq!(next_look(Duration::from_secs(200), window), at(200));
        assert_eq!(next_look(Duration::from_secs(800), window), at(100));
        assert_eq!(next_look(window, window), None);
    }
}
