//! Applies stored deliveries to the entity tables, through the one door.
//!
//! Works from the database, not from memory: it takes `pending` deliveries (oldest first,
//! `SKIP LOCKED`, so replicas share the work), applies them and records each outcome in
//! the same transaction. Deliveries stored just before a crash are therefore applied after
//! the restart, and re-applying is harmless (the newer-wins rule makes it `stale`).
//!
//! Two modes (`webhooks.verification`):
//! - **body**: a delivery's body is laid over the stored object it names (by its key, or,
//!   without one, by the `partner_key` or `customer_key` of PartnerStack's documented
//!   samples) and applied, in the transaction that locked it: fields a sparse body does
//!   not carry keep their stored values. A keyless body whose object is not stored is
//!   `unresolved`.
//! - **fetch**: the deliveries are leased (one committed statement), the objects they
//!   name are fetched from PartnerStack outside any transaction ([`super::verify`]), and
//!   PartnerStack's answers are applied. A keyless partnership body is fetched by the key
//!   of the stored partnership its `partner_key` finds, and only an unknown partnership by
//!   its `partner_key`; if PartnerStack refuses that read (a 404), the body is applied as
//!   in body mode at once. Another object PartnerStack does not know (yet: new customers
//!   can take minutes to become readable) is looked for again with back-off, until
//!   `webhooks.confirm_within` after the delivery arrived; then it is `unconfirmed`. A
//!   delete event whose object PartnerStack still shows is a deletion unless the answer
//!   says `archived: false` (lists can keep archived objects without a flag).
//!
//! A delivery that cannot be applied (unknown event, unexpected shape) keeps its raw body
//! and gets an outcome with the reason. An object the database refuses is set aside
//! ([`crate::apply::apply_or_set_aside`]: found by halving within the batch's
//! transaction) and its delivery marked `error`, while the rest of the batch applies. A
//! batch refused for anything else (or at commit) is split in halves, each in a
//! transaction of its own, until the culprit stands alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use partnerstack::Entity;
use partnerstack::models::Meta;
use partnerstack::webhook::{self, EventKind};
use partnerstack::wire;
use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::verify::{Answers, Awaited, Fetched, Lookup, Verifier};
use super::{IngestMetrics, OutcomeLabel};
use crate::apply::{self, Applied, Observation, Source};
use crate::burst::Burst;
use crate::columns;
use crate::db::events::{self, AppliedFrom, Outcome, OutcomeRecord, PendingEvent};
use crate::db::{is_transient_error, set_aside};
use crate::telemetry::Labels;

/// Deliveries applied per transaction.
const BATCH: i64 = 256;
/// Verification answers (a page's, or one object's) waiting to be applied at most.
const ANSWERS_QUEUED: usize = 16;
/// How often pending deliveries are looked for without a nudge (deliveries stored by
/// another replica that died, deliveries put off until later, earlier errors).
const POLL: Duration = Duration::from_secs(1);
/// In fetch mode, how long the applier lets deliveries gather after a nudge, so a burst
/// of deliveries about one object shares one fetch.
const GATHER: Duration = Duration::from_millis(200);
/// How long leased deliveries are reserved for the replica fetching for them; a lease
/// that runs out (its holder died) frees them for another.
const LEASE: Duration = Duration::from_secs(600);
/// The first wait before a fetch that failed or found nothing is tried again; it doubles
/// per attempt, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(120);

crate::text_enum! {
    /// How an applier transaction ended.
    pub enum ApplyResult {
        Committed = "committed",
        /// The database refused a batch's data; it is split to find the culprit.
        Refused = "refused",
    }
}

/// An applier transaction's result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ApplyLabel {
    pub result: ApplyResult,
}

impl Labels for ApplyLabel {
    fn fixed() -> Vec<Self> {
        ApplyResult::ALL
            .iter()
            .map(|&result| ApplyLabel { result })
            .collect()
    }
}

/// The applier: a pool, the metrics, and a verifier in fetch mode.
#[derive(Clone)]
pub struct Applier {
    pool: PgPool,
    metrics: Arc<IngestMetrics>,
    verifier: Option<Verifier>,
}

impl Applier {
    /// `verifier` is `Some` in fetch mode.
    pub fn new(pool: PgPool, metrics: Arc<IngestMetrics>, verifier: Option<Verifier>) -> Applier {
        Applier {
            pool,
            metrics,
            verifier,
        }
    }

    /// Runs until `stop` is cancelled, then applies what is left and returns.
    pub async fn run(self, stored: Arc<Notify>, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            match self.drain().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    static FAILING: Burst = Burst::new(crate::error::BURST);
                    if let Some(left_out) = FAILING.admit() {
                        tracing::warn!(error = %e, left_out, "applying stored deliveries failed; will retry");
                    }
                }
            }
            // Back off while the database is failing, up to 30 s.
            let wait = POLL * 2u32.saturating_pow(failures.min(5)).min(30);
            tokio::select! {
                _ = stored.notified() => {
                    if self.verifier.is_some() {
                        tokio::time::sleep(GATHER).await;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => break,
            }
        }
        if let Err(e) = self.drain().await {
            tracing::warn!(error = %e, "stored deliveries left pending at shutdown; they are applied at the next start");
        }
    }

    /// Applies due deliveries until none are left.
    pub async fn drain(&self) -> Result<(), sqlx::Error> {
        while self.apply_batch().await? > 0 {}
        Ok(())
    }

    /// Applies one batch of due deliveries; returns how many were taken up.
    #[tracing::instrument(name = "apply_batch", skip_all, fields(verified = self.verifier.is_some()))]
    pub async fn apply_batch(&self) -> Result<usize, sqlx::Error> {
        match &self.verifier {
            None => self.apply_trusting().await,
            Some(verifier) => self.apply_verifying(verifier).await,
        }
    }

    /// Body mode: lock, apply and record in one transaction.
    async fn apply_trusting(&self) -> Result<usize, sqlx::Error> {
        let mut tx = crate::db::begin(&self.pool).await?;
        let pending = events::lock_pending(&mut tx, None, BATCH).await?;
        if pending.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let plans: Vec<Planned> = pending.iter().map(|e| plan(e, false)).collect();
        if let Rejected::Yes = self.commit(tx, &plans, &[]).await? {
            self.isolate(plans, true).await?;
        }
        Ok(pending.len())
    }

    /// Fetch mode: lease, fetch outside any transaction, and apply and record each
    /// delivery as soon as its object is known (answers that arrive together are
    /// committed together), so none waits for the rest of its batch to be read.
    async fn apply_verifying(&self, verifier: &Verifier) -> Result<usize, sqlx::Error> {
        let pending = events::lease_pending(&self.pool, BATCH, LEASE).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let mut plans: Vec<Planned> = pending.iter().map(|e| plan(e, true)).collect();
        by_stored_partnership_keys(&self.pool, &mut plans).await?;
        let mut plans: Vec<Option<Planned>> = plans.into_iter().map(Some).collect();
        // The deliveries waiting for each lookup's answer, by index.
        let mut waiting: HashMap<Lookup, Vec<usize>> = HashMap::new();
        for (i, planned) in plans.iter().enumerate() {
            if let Some(Planned {
                plan: Plan::Fetch { lookup, .. },
                ..
            }) = planned
            {
                waiting.entry(lookup.clone()).or_default().push(i);
            }
        }
        // What needs no answer first.
        let ready: Vec<Planned> = plans
            .iter_mut()
            .filter(|p| {
                !matches!(
                    p,
                    Some(Planned {
                        plan: Plan::Fetch { .. },
                        ..
                    })
                )
            })
            .filter_map(Option::take)
            .collect();
        self.commit_settled(ready, Vec::new()).await?;
        // Each lookup with what the deliveries waiting for it tell.
        let lookups: HashMap<Lookup, Awaited> =
            waiting
                .iter()
                .filter_map(|(lookup, waiters)| {
                    let awaited =
                        Awaited::of(waiters.iter().filter_map(
                            |&i| match &plans[i].as_ref()?.plan {
                                Plan::Fetch { kind, body, .. } => {
                                    Some((pending[i].received_at, *kind, body))
                                }
                                _ => None,
                            },
                        ))?;
                    Some((lookup.clone(), awaited))
                })
                .collect();
        let (answered, mut answers) = mpsc::channel::<Answers>(ANSWERS_QUEUED);
        let fetcher = {
            let (verifier, metrics) = (verifier.clone(), self.metrics.clone());
            tokio::spawn(async move {
                verifier.answer_each(lookups, &metrics, answered).await;
            })
        };
        let result = self
            .apply_answers(verifier, &pending, &mut plans, &mut waiting, &mut answers)
            .await;
        drop(answers);
        let _ = fetcher.await;
        result?;
        // Lookups left without an answer are tried again later.
        let unanswered: Vec<Planned> = plans.iter_mut().filter_map(Option::take).collect();
        self.commit_settled(unanswered, Vec::new()).await?;
        Ok(pending.len())
    }

    /// Applies answers as they arrive: every answer queued when one arrives is committed
    /// with it, with the deliveries it settles and the other objects its pages brought.
    async fn apply_answers(
        &self,
        verifier: &Verifier,
        pending: &[PendingEvent],
        plans: &mut [Option<Planned>],
        waiting: &mut HashMap<Lookup, Vec<usize>>,
        answers: &mut mpsc::Receiver<Answers>,
    ) -> Result<(), sqlx::Error> {
        while let Some(first) = answers.recv().await {
            let mut arrived = vec![first];
            while let Ok(more) = answers.try_recv() {
                arrived.push(more);
            }
            let mut settled = Vec::new();
            let mut extra = Vec::new();
            for batch in arrived {
                for (lookup, fetched) in batch.by_lookup {
                    for i in waiting.remove(&lookup).unwrap_or_default() {
                        let Some(mut planned) = plans[i].take() else {
                            continue;
                        };
                        if let Plan::Fetch { kind, body, lookup } = &planned.plan {
                            planned.plan = settle(
                                *kind,
                                body,
                                lookup,
                                fetched.clone(),
                                &pending[i],
                                verifier.confirm_within,
                            );
                        }
                        settled.push(planned);
                    }
                }
                // The other objects pages returned are PartnerStack's state too: applied
                // with the deliveries (they have no delivery of their own to record).
                extra.extend(
                    batch.others.into_iter().filter_map(|(entity, object)| {
                        Observation::parse(entity, object, false).ok()
                    }),
                );
            }
            self.commit_settled(settled, extra).await?;
        }
        Ok(())
    }

    /// Applies and records settled deliveries (and `extra` objects) in one transaction;
    /// a batch the database refuses is isolated delivery by delivery (the extra objects
    /// then wait for a reconcile pass).
    async fn commit_settled(
        &self,
        plans: Vec<Planned>,
        extra: Vec<Observation>,
    ) -> Result<(), sqlx::Error> {
        if plans.is_empty() && extra.is_empty() {
            return Ok(());
        }
        let tx = crate::db::begin(&self.pool).await?;
        if let Rejected::Yes = self.commit(tx, &plans, &extra).await? {
            self.isolate(plans, false).await?;
        }
        Ok(())
    }

    /// Applies `plans` and records their outcomes in `tx`, then commits. `Rejected::Yes`
    /// (rolled back) when the database refused the data; passing failures are errors.
    async fn commit(
        &self,
        mut tx: Transaction<'_, Postgres>,
        plans: &[Planned],
        extra: &[Observation],
    ) -> Result<Rejected, sqlx::Error> {
        let Resolved {
            mut outcomes,
            mut observations,
            slots,
            deferred,
        } = resolve(&mut tx, plans).await?;
        let named = observations.len();
        observations.extend_from_slice(extra);
        // An object the database refuses is set aside (its delivery marked `error`), and
        // the rest of the batch applies.
        let results =
            match apply::apply_or_set_aside(&mut tx, Source::Webhook, None, &observations).await {
                Ok(r) => r,
                Err(e) if is_transient_error(&e) => return Err(e),
                Err(e) => return self.rejected(tx, &e, plans.len()).await,
            };
        for (&slot, result) in slots.iter().zip(results.into_iter().take(named)) {
            match result {
                Ok(Applied::Stale) => {
                    outcomes[slot].outcome = Outcome::Stale;
                    outcomes[slot].reason = Some("the stored row is as new or newer".into());
                }
                Ok(_) => {}
                Err(error) => {
                    outcomes[slot].outcome = Outcome::Error;
                    outcomes[slot].applied_from = None;
                    outcomes[slot].reason = Some(format!(
                        "the database refused the object (set aside): {error}"
                    ));
                }
            }
        }
        events::record_outcomes(&mut tx, &outcomes).await?;
        for (at, reason, id) in &deferred {
            events::defer(&mut tx, &[*id], *at, reason).await?;
        }
        match tx.commit().await {
            Ok(()) => {}
            Err(e) if is_transient_error(&e) => return Err(e),
            // Refused at commit (a deferred check): isolated like any refused batch.
            Err(e) => {
                tracing::warn!(error = %e, deliveries = plans.len(), "the database refused a batch at commit; isolating the culprit");
                self.count_refused();
                return Ok(Rejected::Yes);
            }
        }
        self.metrics
            .apply_transactions
            .get_or_create(&ApplyLabel {
                result: ApplyResult::Committed,
            })
            .inc();
        for o in &outcomes {
            self.metrics
                .webhook_events_applied
                .get_or_create(&OutcomeLabel { outcome: o.outcome })
                .inc();
        }
        Ok(Rejected::No)
    }

    /// Rolls back a batch the database refused outside the objects (which are set aside
    /// one by one): it is isolated by [`Applier::isolate`].
    async fn rejected(
        &self,
        tx: Transaction<'_, Postgres>,
        e: &sqlx::Error,
        deliveries: usize,
    ) -> Result<Rejected, sqlx::Error> {
        tracing::warn!(error = %e, deliveries, "the database refused a batch; isolating the culprit");
        tx.rollback().await?;
        self.count_refused();
        Ok(Rejected::Yes)
    }

    fn count_refused(&self) {
        self.metrics
            .apply_transactions
            .get_or_create(&ApplyLabel {
                result: ApplyResult::Refused,
            })
            .inc();
    }

    /// A refused batch, split in halves until each refused delivery stands alone and is
    /// marked `error`. With `relock`, each part locks its deliveries again (body mode:
    /// the refused transaction's locks are gone); leased deliveries need no lock.
    async fn isolate(&self, plans: Vec<Planned>, relock: bool) -> Result<(), sqlx::Error> {
        let mut parts = vec![plans];
        while let Some(mut part) = parts.pop() {
            let mut tx = crate::db::begin(&self.pool).await?;
            if relock {
                let ids: Vec<i64> = part.iter().map(|p| p.id).collect();
                let locked: Vec<i64> = events::lock_pending(&mut tx, Some(&ids), BATCH)
                    .await?
                    .into_iter()
                    .map(|e| e.id)
                    .collect();
                // Another replica may have taken some up meanwhile.
                part.retain(|p| locked.contains(&p.id));
                if part.is_empty() {
                    tx.commit().await?;
                    continue;
                }
            }
            if let Rejected::No = self.commit(tx, &part, &[]).await? {
                continue;
            }
            if part.len() == 1 {
                self.mark_refused(part[0].id).await?;
            } else {
                let second = part.split_off(part.len() / 2);
                parts.push(second);
                parts.push(part);
            }
        }
        Ok(())
    }

    async fn mark_refused(&self, id: i64) -> Result<(), sqlx::Error> {
        tracing::warn!(event_id = id, "the database refused a delivery's object");
        let mut tx = crate::db::begin(&self.pool).await?;
        let outcome = OutcomeRecord {
            id,
            outcome: Outcome::Error,
            applied_from: None,
            reason: Some("the database refused the object (see the service log)".into()),
            entity: None,
            entity_key: None,
        };
        events::record_outcomes(&mut tx, std::slice::from_ref(&outcome)).await?;
        tx.commit().await?;
        self.metrics
            .webhook_events_applied
            .get_or_create(&OutcomeLabel {
                outcome: Outcome::Error,
            })
            .inc();
        Ok(())
    }
}

/// Whether the database refused a batch's data (it was rolled back).
enum Rejected {
    Yes,
    No,
}

/// A delivery and what to do with it.
#[derive(Debug, Clone)]
struct Planned {
    id: i64,
    plan: Plan,
}

#[derive(Debug, Clone)]
enum Plan {
    /// Apply this observation.
    Apply(Observation, AppliedFrom),
    /// Nothing to apply: record this outcome (with the entity, when known) and reason.
    Done(Outcome, Option<Entity>, String),
    /// A body laid over the stored object it names, by its key or natural key (body
    /// mode; in fetch mode, a deletion PartnerStack confirmed, or a partnership body whose
    /// read by `partner_key` found nothing).
    Merge {
        kind: EventKind,
        body: Value,
        from: AppliedFrom,
    },
    /// Fetch mode: ask PartnerStack.
    Fetch {
        kind: EventKind,
        lookup: Lookup,
        body: Value,
    },
    /// Try again at `at`.
    Defer { at: DateTime<Utc>, reason: String },
    /// An object with a key that does not read: set aside, the delivery an `error`.
    Unreadable {
        entity: Entity,
        key: String,
        reason: String,
        object: Value,
    },
}

/// An object that does not read: set aside when its key reads, else an `error` outcome
/// only.
fn unreadable(entity: Entity, object: Value, reason: String) -> Plan {
    match Meta::identity_of(&object).filter(|k| !k.contains('\0')) {
        Some(key) => Plan::Unreadable {
            entity,
            key,
            reason,
            object,
        },
        None => Plan::Done(Outcome::Error, Some(entity), reason),
    }
}

/// What to do with a stored delivery, before anything is fetched.
fn plan(event: &PendingEvent, verify: bool) -> Planned {
    let plan = match webhook::read(&event.body) {
        webhook::Reading::UnknownType(reason) => Plan::Done(Outcome::UnknownType, None, reason),
        webhook::Reading::Invalid(reason) => Plan::Done(Outcome::Error, None, reason),
        // A `key` that does not read (an array, a blank string) makes the object malformed,
        // not keyless.
        webhook::Reading::Object { kind, object }
            if object.get("key").is_some_and(|k| !k.is_null())
                && Meta::identity_of(&object).is_none() =>
        {
            let reason = Observation::parse(kind.entity, object, kind.deleted)
                .err()
                .unwrap_or_else(|| "the key does not read".into());
            Plan::Done(Outcome::Error, Some(kind.entity), reason)
        }
        webhook::Reading::Object { kind, object } if verify => {
            match Lookup::for_body(kind.entity, &object) {
                Some(lookup) => Plan::Fetch {
                    kind,
                    lookup,
                    body: object,
                },
                None => unresolved(kind.entity),
            }
        }
        webhook::Reading::Object { kind, object } => {
            if Meta::identity_of(&object).is_some() || natural_key(kind.entity, &object).is_some() {
                Plan::Merge {
                    kind,
                    body: object,
                    from: AppliedFrom::Body,
                }
            } else {
                unresolved(kind.entity)
            }
        }
    };
    Planned { id: event.id, plan }
}

fn unresolved(entity: Entity) -> Plan {
    Plan::Done(
        Outcome::Unresolved,
        Some(entity),
        format!(
            "the {} names no key (and nothing else it can be found by); a reconcile pass \
             brings it",
            entity.name()
        ),
    )
}

/// What PartnerStack's answer to `lookup` means for one delivery (whose body was `body`).
fn settle(
    kind: EventKind,
    body: &Value,
    lookup: &Lookup,
    answer: Fetched,
    event: &PendingEvent,
    confirm_within: Duration,
) -> Plan {
    let entity = kind.entity;
    match answer {
        Fetched::Found(object) => {
            // PartnerStack's current state; an archived object is a deletion. A delete
            // event stands unless the answer says the object is not archived: lists and
            // reads can show archived objects without a flag.
            let deleted = kind.deleted && apply::archived(&object) != Some(false);
            match Observation::parse(entity, object.clone(), deleted) {
                Ok(o) => Plan::Apply(o, AppliedFrom::Fetch),
                Err(reason) => unreadable(
                    entity,
                    object,
                    format!("PartnerStack's answer could not be read: {reason}"),
                ),
            }
        }
        // PartnerStack may take partnerships by their key only (its reference names a
        // "unique identifier"): a keyless body whose read by partner_key found nothing is
        // applied as in body mode now, not looked for again. Only a partnership the copy
        // did not know is read by partner_key (see `by_stored_partnership_keys`).
        Fetched::Missing if !kind.deleted && read_by_partner_key(body, lookup) => Plan::Merge {
            kind,
            body: body.clone(),
            from: AppliedFrom::Body,
        },
        // The deletion is confirmed: the body is laid over the row it names (by its key, or
        // by its natural key when it carries none), as in body mode. Its content can only
        // describe an object PartnerStack says is gone; a body without times just marks
        // the row.
        Fetched::Missing if kind.deleted => Plan::Merge {
            kind,
            body: body.clone(),
            from: AppliedFrom::Fetch,
        },
        Fetched::Missing => {
            let waited = (Utc::now() - event.received_at)
                .to_std()
                .unwrap_or_default();
            if waited < confirm_within {
                Plan::Defer {
                    at: Utc::now() + backoff(event.attempts),
                    reason: format!(
                        "PartnerStack does not know this {} yet; looking again",
                        entity.name()
                    ),
                }
            } else {
                Plan::Done(
                    Outcome::Unconfirmed,
                    Some(entity),
                    format!(
                        "PartnerStack did not know this {} within {}; nothing applied",
                        entity.name(),
                        humantime::format_duration(confirm_within)
                    ),
                )
            }
        }
        Fetched::Failed(error) => Plan::Defer {
            at: Utc::now() + backoff(event.attempts),
            reason: format!("fetching from PartnerStack failed: {error}"),
        },
    }
}

fn backoff(attempts: i32) -> chrono::Duration {
    let wait = FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(attempts.clamp(0, 16) as u32))
        .min(MAX_RETRY);
    chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
}

/// The natural key a keyless body can be resolved by: (column, value).
fn natural_key(entity: Entity, body: &Value) -> Option<(&'static str, String)> {
    let column = match entity {
        Entity::Partner => "partner_key",
        Entity::Customer => "customer_key",
        _ => return None,
    };
    let value = body
        .get(column)
        .and_then(|v| wire::parse_string(v).ok().flatten())
        .filter(|v| !v.trim().is_empty())?;
    Some((column, value))
}

/// A batch's plans resolved in its transaction: the outcomes to record, the observations
/// to apply (`slots`: the index of each one's outcome), the deliveries to try again later.
#[derive(Default)]
struct Resolved {
    outcomes: Vec<OutcomeRecord>,
    observations: Vec<Observation>,
    slots: Vec<usize>,
    deferred: Vec<(DateTime<Utc>, String, i64)>,
}

/// Resolves each plan: bodies laid over the stored objects they name, objects that do not
/// read set aside.
async fn resolve(conn: &mut PgConnection, plans: &[Planned]) -> Result<Resolved, sqlx::Error> {
    let mut r = Resolved::default();
    let stored = stored_objects(conn, plans).await?;
    for planned in plans {
        let resolved = match &planned.plan {
            Plan::Merge { kind, body, from } => merge(conn, *kind, body, *from, &stored).await?,
            other => other.clone(),
        };
        match resolved {
            Plan::Apply(observation, from) => {
                r.slots.push(r.outcomes.len());
                r.outcomes.push(OutcomeRecord {
                    id: planned.id,
                    outcome: Outcome::Applied,
                    applied_from: Some(from),
                    reason: None,
                    entity: Some(columns::table(observation.entity)),
                    entity_key: Some(observation.key.clone()),
                });
                r.observations.push(observation);
            }
            Plan::Done(outcome, entity, reason) => r.outcomes.push(OutcomeRecord {
                id: planned.id,
                outcome,
                applied_from: None,
                reason: Some(reason),
                entity: entity.map(columns::table),
                entity_key: None,
            }),
            Plan::Defer { at, reason } => r.deferred.push((at, reason, planned.id)),
            Plan::Unreadable {
                entity,
                key,
                reason,
                object,
            } => {
                let refused = set_aside::Refused {
                    entity,
                    key: &key,
                    error: reason.clone(),
                    raw: &object,
                };
                set_aside::record(conn, Source::Webhook, std::slice::from_ref(&refused)).await?;
                r.outcomes.push(OutcomeRecord {
                    id: planned.id,
                    outcome: Outcome::Error,
                    applied_from: None,
                    reason: Some(format!("set aside: {reason}")),
                    entity: Some(columns::table(entity)),
                    entity_key: Some(key),
                });
            }
            Plan::Fetch { .. } | Plan::Merge { .. } => {
                // Settled before commit; a plan left unsettled waits for a retry.
                let at = Utc::now() + backoff(0);
                r.deferred.push((at, "not fetched yet".into(), planned.id));
            }
        }
    }
    Ok(r)
}

/// Whether `lookup` read a partnership by the `partner_key` of a keyless `body`.
fn read_by_partner_key(body: &Value, lookup: &Lookup) -> bool {
    match lookup {
        Lookup::Get {
            entity: Entity::Partner,
            key,
        } => {
            Meta::identity_of(body).is_none()
                && natural_key(Entity::Partner, body).is_some_and(|(_, value)| value == *key)
        }
        _ => false,
    }
}

/// In fetch mode, a keyless partnership body (PartnerStack's documented sample) is read
/// by the key of the stored partnership its `partner_key` finds: PartnerStack documents
/// reads by key, and reads by `partner_key` are only seen in production. Partnerships the
/// copy does not know yet keep their `partner_key` lookup. One statement per batch.
async fn by_stored_partnership_keys(
    pool: &PgPool,
    plans: &mut [Planned],
) -> Result<(), sqlx::Error> {
    let partner_keys: Vec<String> = plans
        .iter()
        .filter_map(|p| match &p.plan {
            Plan::Fetch { body, lookup, .. } if read_by_partner_key(body, lookup) => {
                natural_key(Entity::Partner, body).map(|(_, value)| value)
            }
            _ => None,
        })
        .collect();
    if partner_keys.is_empty() {
        return Ok(());
    }
    let stored: HashMap<String, String> = crate::db::query_as(
        "SELECT DISTINCT ON (partner_key) partner_key, key FROM partners
         WHERE partner_key = ANY($1)
         ORDER BY partner_key, (deleted_at IS NULL) DESC, created_at DESC, key DESC",
    )
    .bind(&partner_keys)
    .fetch_all(crate::db::atomic(pool))
    .await?
    .into_iter()
    .collect();
    for planned in plans {
        if let Plan::Fetch { lookup, .. } = &mut planned.plan
            && let Lookup::Get {
                entity: Entity::Partner,
                key,
            } = lookup
            && let Some(stored_key) = stored.get(key.as_str())
        {
            *key = stored_key.clone();
        }
    }
    Ok(())
}

/// The stored objects keyed bodies to merge name, by (entity, key): one statement per
/// kind in the batch.
type Stored = HashMap<(Entity, String), Value>;

async fn stored_objects(conn: &mut PgConnection, plans: &[Planned]) -> Result<Stored, sqlx::Error> {
    let mut wanted: HashMap<Entity, Vec<String>> = HashMap::new();
    for planned in plans {
        if let Plan::Merge { kind, body, .. } = &planned.plan
            && let Some(key) = Meta::identity_of(body)
        {
            wanted.entry(kind.entity).or_default().push(key);
        }
    }
    let mut stored = Stored::new();
    for (entity, keys) in wanted {
        let rows: Vec<(String, Value)> = crate::db::query_as(AssertSqlSafe(format!(
            "SELECT key, raw FROM {} WHERE key = ANY($1)",
            columns::table(entity)
        )))
        .bind(&keys)
        .fetch_all(&mut *conn)
        .await?;
        stored.extend(rows.into_iter().map(|(key, raw)| ((entity, key), raw)));
    }
    Ok(stored)
}

/// A body laid over the stored object it names (by its key, from `stored`; else by its
/// natural key), so fields a sparse body does not carry keep their stored values. The
/// body's own times count when it has them; otherwise the stored ones do (so the one
/// door's rules decide as for any body). A deletion without times of its own marks the
/// row as learned now. A keyed body whose object is not stored is applied as it is; a
/// keyless one is `unresolved`.
async fn merge(
    conn: &mut PgConnection,
    kind: EventKind,
    body: &Value,
    from: AppliedFrom,
    stored: &Stored,
) -> Result<Plan, sqlx::Error> {
    let entity = kind.entity;
    let Value::Object(fields) = body else {
        return Ok(unresolved(entity));
    };
    let deleted = kind.deleted || apply::archived(body) == Some(true);
    let timed = ["created_at", "updated_at"]
        .iter()
        .any(|t| fields.get(*t).is_some_and(|v| !v.is_null()));
    let (key, base) = match Meta::identity_of(body) {
        Some(key) => {
            let base = stored.get(&(entity, key.clone())).cloned();
            (key, base)
        }
        None => {
            let Some((column, value)) = natural_key(entity, body) else {
                return Ok(unresolved(entity));
            };
            let table = columns::table(entity);
            let found: Option<(String, Value)> = crate::db::query_as(AssertSqlSafe(format!(
                "SELECT key, raw FROM {table} WHERE {column} = $1
                 ORDER BY (deleted_at IS NULL) DESC, created_at DESC, key DESC LIMIT 1"
            )))
            .bind(&value)
            .fetch_optional(&mut *conn)
            .await?;
            let Some((key, raw)) = found else {
                return Ok(Plan::Done(
                    Outcome::Unresolved,
                    Some(entity),
                    format!(
                        "no stored {} has {column} {value:?}; a reconcile pass brings it",
                        entity.name()
                    ),
                ));
            };
            (key, Some(raw))
        }
    };
    let object = match base {
        // A deletion with no time of its own: the stored row is marked (its content and
        // times stay) as of now.
        Some(_) if deleted && !timed => {
            let mut bare = fields.clone();
            bare.insert("key".into(), Value::String(key));
            Value::Object(bare)
        }
        Some(Value::Object(mut merged)) => {
            for (field, new) in fields {
                match field.as_str() {
                    // Not the object's own: its internal id.
                    "id" => {}
                    "key" => {
                        merged.insert("key".into(), Value::String(key.clone()));
                    }
                    "group" if new.get("key").is_none_or(Value::is_null) => {
                        if let Some(group) = resolve_group(conn, new, merged.get("group")).await? {
                            merged.insert("group".into(), group);
                        }
                    }
                    _ => {
                        merged.insert(field.clone(), new.clone());
                    }
                }
            }
            Value::Object(merged)
        }
        // Nothing stored (or not an object): the body as it is.
        _ => body.clone(),
    };
    Ok(match Observation::parse(entity, object.clone(), deleted) {
        Ok(o) => Plan::Apply(o, from),
        Err(reason) => unreadable(entity, object, reason),
    })
}

/// A body's group (which names no key, only an internal id, a name and a slug) as a
/// stored group: the stored row's own when it is the same group, else the group the slug
/// (or name) finds. `None` when it cannot be resolved: the stored group stays.
async fn resolve_group(
    conn: &mut PgConnection,
    body_group: &Value,
    stored_group: Option<&Value>,
) -> Result<Option<Value>, sqlx::Error> {
    let text = |v: &Value, field: &str| {
        v.get(field)
            .and_then(|x| wire::parse_string(x).ok().flatten())
    };
    if body_group.is_null() {
        return Ok(Some(Value::Null));
    }
    let (slug, name) = (text(body_group, "slug"), text(body_group, "name"));
    if let Some(stored) = stored_group
        && (slug.is_some() && text(stored, "slug") == slug
            || slug.is_none() && name.is_some() && text(stored, "name") == name)
    {
        return Ok(Some(stored.clone()));
    }
    let found: Option<(String, Option<String>, Option<String>)> = crate::db::query_as(
        "SELECT key, name, slug FROM groups
         WHERE deleted_at IS NULL AND (slug = $1 OR lower(name) = lower($2))
         ORDER BY (slug = $1) DESC NULLS LAST LIMIT 1",
    )
    .bind(&slug)
    .bind(&name)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(found.map(|(key, name, slug)| {
        let mut group = Map::new();
        group.insert("key".into(), Value::String(key));
        group.insert("name".into(), name.map_or(Value::Null, Value::String));
        group.insert("slug".into(), slug.map_or(Value::Null, Value::String));
        Value::Object(group)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body: &str) -> PendingEvent {
        PendingEvent {
            id: 1,
            body: body.to_string(),
            received_at: Utc::now(),
            attempts: 0,
        }
    }

    #[test]
    fn keyless_bodies_are_merged_or_unresolved_never_keyed_by_their_id() {
        let sample = r#"{"id": 123, "partner_key": "JohnSmith", "event": "partnership_created", "archived": "false"}"#;
        assert!(matches!(
            plan(&event(sample), false).plan,
            Plan::Merge { .. }
        ));
        let no_natural = r#"{"id": 123, "event": "partnership_updated"}"#;
        assert!(matches!(
            plan(&event(no_natural), false).plan,
            Plan::Done(Outcome::Unresolved, Some(Entity::Partner), _)
        ));
        assert!(matches!(
            plan(&event(sample), true).plan,
            Plan::Fetch {
                lookup: Lookup::Get { .. },
                ..
            }
        ));
        let team = r#"{"id": 5, "event": "partner_team.created", "partner_key": "x"}"#;
        assert!(matches!(
            plan(&event(team), false).plan,
            Plan::Done(Outcome::UnknownType, None, _)
        ));
    }

    #[test]
    fn a_missing_object_is_looked_for_again_then_unconfirmed() {
        let kind = EventKind {
            entity: Entity::Customer,
            deleted: false,
        };
        let body = serde_json::json!({"customer_key": "c-1"});
        let by_customer_key = Lookup::Get {
            entity: Entity::Customer,
            key: "c-1".into(),
        };
        let lookup = &by_customer_key;
        let fresh = event("{}");
        let within = Duration::from_secs(900);
        assert!(matches!(
            settle(kind, &body, lookup, Fetched::Missing, &fresh, within),
            Plan::Defer { .. }
        ));
        let old = PendingEvent {
            received_at: Utc::now() - chrono::Duration::minutes(16),
            ..event("{}")
        };
        assert!(matches!(
            settle(kind, &body, lookup, Fetched::Missing, &old, within),
            Plan::Done(Outcome::Unconfirmed, ..)
        ));
        // A failure is never taken for an answer.
        assert!(matches!(
            settle(
                kind,
                &body,
                lookup,
                Fetched::Failed("503".into()),
                &old,
                within
            ),
            Plan::Defer { .. }
        ));
        // A deletion PartnerStack confirms (the object is gone) is laid over the row.
        let deleted = EventKind {
            entity: Entity::Customer,
            deleted: true,
        };
        let keyed = serde_json::json!({"key": "cust_1", "customer_key": "c-1"});
        assert!(matches!(
            settle(deleted, &keyed, lookup, Fetched::Missing, &fresh, within),
            Plan::Merge {
                from: AppliedFrom::Fetch,
                ..
            }
        ));
        assert_eq!(backoff(0), chrono::Duration::seconds(5));
        assert_eq!(backoff(30), chrono::Duration::seconds(120));
    }

    /// A partnership PartnerStack will not read by partner_key is applied from its body at
    /// once; a delete event whose object PartnerStack still shows without a flag stays a
    /// deletion, and one whose answer says it is not archived does not.
    #[test]
    fn refused_partner_key_reads_fall_back_and_delete_events_stand() {
        let updated = EventKind {
            entity: Entity::Partner,
            deleted: false,
        };
        let sample =
            serde_json::json!({"id": 123, "partner_key": "JohnSmith", "archived": "false"});
        let by_partner_key = Lookup::Get {
            entity: Entity::Partner,
            key: "JohnSmith".into(),
        };
        let by_key = Lookup::Get {
            entity: Entity::Partner,
            key: "part_1".into(),
        };
        let fresh = event("{}");
        let within = Duration::from_secs(900);
        assert!(matches!(
            settle(
                updated,
                &sample,
                &by_partner_key,
                Fetched::Missing,
                &fresh,
                within
            ),
            Plan::Merge {
                from: AppliedFrom::Body,
                ..
            }
        ));
        // Read by the stored key and not found: looked for again, as any object.
        assert!(matches!(
            settle(updated, &sample, &by_key, Fetched::Missing, &fresh, within),
            Plan::Defer { .. }
        ));
        let deleted = EventKind {
            entity: Entity::Partner,
            deleted: true,
        };
        let shown = |archived: Value| {
            let mut object = serde_json::json!({"key": "part_1", "partner_key": "JohnSmith",
                "updated_at": 1_700_000_000_000_i64});
            if !archived.is_null() {
                object["archived"] = archived;
            }
            match settle(
                deleted,
                &sample,
                &by_key,
                Fetched::Found(object),
                &fresh,
                within,
            ) {
                Plan::Apply(o, AppliedFrom::Fetch) => o.deleted,
                other => panic!("{other:?}"),
            }
        };
        assert!(shown(Value::Null), "no flag: the event stands");
        assert!(shown(serde_json::json!(true)));
        assert!(
            !shown(serde_json::json!(false)),
            "PartnerStack says it is live"
        );
    }
}
