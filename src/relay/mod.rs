//! The relay: pushes the change feed to configured HTTP endpoints, signed per the
//! Standard Webhooks specification.
//!
//! **Per endpoint, one sender across replicas.** Each replica runs a task per endpoint
//! that competes for the endpoint's lease (`relay:<name>`, a row: see [`crate::db::lease`],
//! as the reconciler's leadership); the holder relays, and writes the endpoint's position
//! only in transactions that renew the lease, so a replica that lost it cannot move the
//! position. A holder that stops cleanly hands over at once; a dead or cut-off one when
//! its lease expires.
//!
//! **At least once, in order, one in flight.** The holder reads the feed after the
//! endpoint's position and sends one change at a time; the position moves (committed)
//! only after a 2xx. A failure is retried, same change, after a back-off doubling from
//! 1 s up to `changes.relay_max_backoff`; nothing after it is sent meanwhile. A crash
//! between a 2xx and the position's commit sends that change again: receivers
//! de-duplicate with `webhook-id` (`chg_<sequence>`), which a change keeps forever.
//! Each endpoint has its own task, connection and back-off, so a failing endpoint never
//! slows another; ingest never waits for the relay.
//!
//! **The message.** `{"type": "<object>.<operation>", "timestamp": ..., "data": <the
//! change as /v1/changes serves it>}`, with `webhook-id`, `webhook-timestamp` (the
//! attempt's time) and `webhook-signature` (`v1,` base64 HMAC-SHA256 over
//! `id.timestamp.body`).
//!
//! Each endpoint's progress, as `/v1/relay` and the status page show it, is read by
//! [`status`].

pub mod status;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rand::RngExt;
use serde::Serialize;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::columns;
use crate::config::{Config, RelayEndpoint};
use crate::db::changes;
use crate::db::lease::{self, Leader};
use crate::db::relay;
use crate::feed::{ChangeItem, Feed};
use crate::telemetry::{Deployment, FloatGauge, Labels};

/// How often a replica that does not relay an endpoint tries to take it over.
const TAKEOVER_POLL: Duration = Duration::from_secs(3);
/// How often an idle sender looks for a replay request or new changes without a nudge.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Changes read per page.
const PAGE: i64 = 100;
/// First retry delay of a failing endpoint (doubles per failure).
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Most of an answer's body read (and ignored), so the connection can be reused.
const MAX_ANSWER: usize = 64 * 1024;

crate::text_enum! {
    /// How one attempt at relaying a change ended.
    pub enum RelayResult {
        /// Answered 2xx.
        Delivered = "delivered",
        Failed = "failed",
    }
}

/// An endpoint, by its configured name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

impl Labels for EndpointLabel {
    fn declared(deployment: &Deployment<'_>) -> Vec<Self> {
        let endpoints = &deployment.config.relay;
        endpoints
            .iter()
            .map(|e| EndpointLabel {
                endpoint: e.name.clone(),
            })
            .collect()
    }
}

/// An attempt at an endpoint, and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub endpoint: String,
    pub result: RelayResult,
}

impl Labels for AttemptLabels {
    fn declared(deployment: &Deployment<'_>) -> Vec<Self> {
        let mut out = Vec::new();
        for EndpointLabel { endpoint } in EndpointLabel::declared(deployment) {
            for &result in RelayResult::ALL {
                out.push(AttemptLabels {
                    endpoint: endpoint.clone(),
                    result,
                });
            }
        }
        out
    }
}

crate::metrics! {
    /// The relay's metrics, per endpoint.
    pub struct RelayMetrics {
        /// Relay deliveries attempted, by endpoint and result (delivered: answered 2xx;
        /// failed).
        pub relay_attempts: Family<AttemptLabels, Counter>,
        /// Age of the oldest change an endpoint has still to receive (0 when caught up), by
        /// endpoint.
        ///
        /// As seen by the replica relaying it.
        #[unit(Seconds)]
        pub relay_lag_seconds: Family<EndpointLabel, FloatGauge>,
        /// 1 while this replica relays to the endpoint.
        pub relay_leader: Family<EndpointLabel, Gauge>,
    }
}

/// What every endpoint's task shares.
struct Shared {
    pool: PgPool,
    feed: Feed,
    metrics: Arc<RelayMetrics>,
    http: reqwest::Client,
    max_backoff: Duration,
    /// Who this process is, in `relay_endpoints.runner` and logs.
    runner: String,
}

/// Starts one task per configured endpoint; they stop when `stop` is cancelled.
pub fn spawn(
    config: &Config,
    pool: PgPool,
    feed: Feed,
    metrics: Arc<RelayMetrics>,
    stop: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    if config.relay.is_empty() {
        return Ok(Vec::new());
    }
    let http = partnerstack::http::builder()
        .timeout(config.changes.relay_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let shared = Arc::new(Shared {
        pool,
        feed,
        metrics,
        http,
        max_backoff: config.changes.relay_max_backoff,
        runner: format!(
            "{}:{}:{}",
            host.trim(),
            std::process::id(),
            &uuid::Uuid::new_v4().to_string()[..8]
        ),
    });
    Ok(config
        .relay
        .iter()
        .map(|endpoint| tokio::spawn(run(shared.clone(), endpoint.clone(), stop.clone())))
        .collect())
}

/// Competes for the endpoint and relays while holding it, until `stop`.
#[tracing::instrument(name = "relay", skip_all, fields(endpoint = %endpoint.name))]
async fn run(shared: Arc<Shared>, endpoint: RelayEndpoint, stop: CancellationToken) {
    let label = EndpointLabel {
        endpoint: endpoint.name.clone(),
    };
    let leader = shared.metrics.relay_leader.get_or_create_owned(&label);
    shared.metrics.relay_lag_seconds.get_or_create_owned(&label);
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        match try_lead(&shared, &endpoint.name).await {
            Ok(Some(lease)) => {
                failures = 0;
                leader.set(1);
                tracing::info!(url = %endpoint.public_url(), runner = %shared.runner, "relaying to this endpoint");
                let result = Sender::new(&shared, &endpoint, &lease).lead(&stop).await;
                leader.set(0);
                match result {
                    Ok(()) => {
                        if let Err(e) = lease.release().await {
                            tracing::warn!(error = %e, "could not give up the endpoint's lease; it expires by itself");
                        }
                    }
                    Err(e) if lease::is_lost(&e) => {
                        tracing::warn!("another replica took over this endpoint; standing down")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the relay's database connection; standing down")
                    }
                }
            }
            Ok(None) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(error = %e, "cannot reach the database to relay; retrying");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(jitter(TAKEOVER_POLL, 0.25)) => {}
        }
    }
}

/// Takes the endpoint's lease if it is free.
async fn try_lead(shared: &Shared, name: &str) -> Result<Option<Leader>, sqlx::Error> {
    let Some(leader) =
        Leader::acquire(&shared.pool, &format!("relay:{name}"), &shared.runner).await?
    else {
        return Ok(None);
    };
    let mut tx = leader.begin().await?;
    relay::ensure(&mut tx, name).await?;
    tx.commit().await?;
    Ok(Some(leader))
}

/// How one attempt at the change in flight ended.
enum Sent {
    Delivered,
    /// A replay was asked for: read again from the new position.
    Replay,
    Stopped,
}

/// The holder's side of one endpoint.
struct Sender<'a> {
    shared: &'a Shared,
    endpoint: &'a RelayEndpoint,
    /// Every position write is fenced by it.
    leader: &'a Leader,
    tables: Option<Vec<&'static str>>,
    attempts_ok: prometheus_client::metrics::counter::Counter,
    attempts_failed: prometheus_client::metrics::counter::Counter,
    lag: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl<'a> Sender<'a> {
    fn new(shared: &'a Shared, endpoint: &'a RelayEndpoint, leader: &'a Leader) -> Self {
        let attempts = |result| {
            shared
                .metrics
                .relay_attempts
                .get_or_create_owned(&AttemptLabels {
                    endpoint: endpoint.name.clone(),
                    result,
                })
        };
        Sender {
            shared,
            endpoint,
            leader,
            tables: endpoint
                .entities
                .as_ref()
                .map(|list| list.iter().map(|e| columns::table(*e)).collect()),
            attempts_ok: attempts(RelayResult::Delivered),
            attempts_failed: attempts(RelayResult::Failed),
            lag: shared
                .metrics
                .relay_lag_seconds
                .get_or_create_owned(&EndpointLabel {
                    endpoint: endpoint.name.clone(),
                }),
        }
    }

    /// Relays until `stop`. Errors only when the lease or the connection is lost (or the
    /// database refuses the position's writes).
    async fn lead(mut self, stop: &CancellationToken) -> Result<(), sqlx::Error> {
        let name = self.endpoint.name.as_str();
        let mut tx = self.leader.begin().await?;
        let mut position = relay::load(&mut tx, name).await?.position()?;
        tx.commit().await?;
        let mut moved = self.shared.feed.subscribe();
        let mut behind_reported = false;
        while !stop.is_cancelled() {
            // Also renews the lease at least every IDLE_POLL while idle.
            let mut tx = self.leader.begin().await?;
            let replay = relay::take_replay(&mut tx, name).await?;
            tx.commit().await?;
            if let Some(to) = replay {
                tracing::info!(from = ?to, "replaying");
                position = to;
                behind_reported = false;
            }
            moved.borrow_and_update();
            let page = match changes::read(
                &self.shared.pool,
                position,
                self.endpoint.entities.as_deref(),
                PAGE,
            )
            .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the change feed; retrying");
                    if pause(stop, IDLE_POLL).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            if let (Some(at), Some(horizon)) = (position, page.horizon)
                && at < horizon
                && !behind_reported
            {
                // Nothing can bring pruned changes back: say so, and go on from the oldest kept.
                behind_reported = true;
                let why = "the endpoint fell behind the change log's retention: changes were \
                           pruned before it received them";
                tracing::error!("{why}");
                let mut tx = self.leader.begin().await?;
                relay::failed(&mut tx, name, why, &self.shared.runner).await?;
                tx.commit().await?;
            }
            self.lag
                .set(page.changes.first().map_or(0.0, |c| age(c.at)));
            let more = page.changes.len() as i64 > PAGE;
            let mut replay = false;
            for change in page.changes.into_iter().take(PAGE as usize) {
                let at = change.position()?;
                let when = change.at;
                match self.send(change, stop).await? {
                    Sent::Delivered => {
                        position = Some(at);
                        let mut tx = self.leader.begin().await?;
                        replay =
                            relay::advance(&mut tx, name, at, true, &self.shared.runner).await?;
                        tx.commit().await?;
                        self.lag.set(0.0f64.max(age(when)));
                    }
                    Sent::Replay => replay = true,
                    Sent::Stopped => return Ok(()),
                }
                if replay {
                    break;
                }
            }
            if replay || more {
                continue;
            }
            self.lag.set(0.0);
            // Past changes of other collections, up to the visible head.
            if let Some(head) = page.head
                && self.tables.is_some()
                && position.is_none_or(|at| head > at)
            {
                let mut tx = self.leader.begin().await?;
                relay::advance(&mut tx, name, head, false, &self.shared.runner).await?;
                tx.commit().await?;
                position = Some(head);
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = moved.changed() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
        Ok(())
    }

    /// Sends one change until the endpoint answers 2xx (retrying with back-off), a
    /// replay is asked for, or `stop`.
    async fn send(
        &mut self,
        change: changes::Change,
        stop: &CancellationToken,
    ) -> Result<Sent, sqlx::Error> {
        let name = self.endpoint.name.as_str();
        let message = match ChangeItem::try_from(change) {
            Ok(item) => Message::of(item),
            Err(e) => Err(format!("the change cannot be served: {e}")),
        };
        let mut failures = 0u32;
        loop {
            let attempt = match &message {
                Ok(m) => tokio::select! {
                    r = self.attempt(m) => r,
                    _ = stop.cancelled() => return Ok(Sent::Stopped),
                },
                Err(why) => Err(why.clone()),
            };
            match attempt {
                Ok(()) => {
                    self.attempts_ok.inc();
                    return Ok(Sent::Delivered);
                }
                Err(why) => {
                    self.attempts_failed.inc();
                    failures = failures.saturating_add(1);
                    let delay = backoff(failures, self.shared.max_backoff);
                    tracing::warn!(error = %why, retry_in_ms = delay.as_millis() as u64, "relay attempt failed");
                    let mut tx = self.leader.begin().await?;
                    let replay = relay::failed(&mut tx, name, &why, &self.shared.runner).await?;
                    tx.commit().await?;
                    if replay {
                        return Ok(Sent::Replay);
                    }
                    // A back-off longer than the lease renews it on the way.
                    let until = tokio::time::Instant::now() + delay;
                    loop {
                        let left = until.saturating_duration_since(tokio::time::Instant::now());
                        if pause(stop, left.min(lease::RENEW_EVERY)).await {
                            return Ok(Sent::Stopped);
                        }
                        if left <= lease::RENEW_EVERY {
                            break;
                        }
                        self.leader.renew().await?;
                    }
                }
            }
        }
    }

    /// One POST; `Err` says why it did not get a 2xx.
    async fn attempt(&self, message: &Signed) -> Result<(), String> {
        let timestamp = Utc::now().timestamp();
        let signature = self
            .endpoint
            .secret
            .sign(&message.id, timestamp, &message.body);
        let mut response = self
            .shared
            .http
            .post(self.endpoint.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &message.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(message.body.clone())
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = response.status();
        let mut read = 0;
        while read < MAX_ANSWER {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered HTTP {}", status.as_u16()))
        }
    }
}

/// A message ready to send: its id and body (signed per attempt).
struct Signed {
    id: String,
    body: Vec<u8>,
}

/// The body of a relayed change.
#[derive(Serialize)]
struct Message<'a> {
    /// `<object>.<operation>`, e.g. `reward.updated`, `partnership.created`.
    #[serde(rename = "type")]
    kind: String,
    timestamp: DateTime<Utc>,
    data: &'a ChangeItem,
}

impl Message<'_> {
    fn of(item: ChangeItem) -> Result<Signed, String> {
        let object = item.entity.0.name();
        let message = Message {
            kind: format!("{object}.{}", item.operation),
            timestamp: item.at,
            data: &item,
        };
        let body = serde_json::to_vec(&message).map_err(|e| e.to_string())?;
        Ok(Signed {
            id: webhook_id(item.sequence),
            body,
        })
    }
}

/// The `webhook-id` of a change: the same for every attempt and every replay.
pub fn webhook_id(sequence: i64) -> String {
    format!("chg_{sequence}")
}

/// Seconds since `at` (0 for the future).
fn age(at: DateTime<Utc>) -> f64 {
    (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0
}

/// The wait after `failures` consecutive failures: 1 s doubling, at most `max`, ±20%.
fn backoff(failures: u32, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    jitter(
        FIRST_RETRY
            .saturating_mul(2u32.saturating_pow(exp))
            .min(max),
        0.2,
    )
}

/// `d` scaled by a random factor in `1 ± spread`.
fn jitter(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 + rand::rng().random_range(-spread..=spread))
}

/// Sleeps `d`; true when `stop` came first.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let max = Duration::from_secs(60);
        let b1 = backoff(1, max);
        assert!(b1 >= Duration::from_millis(800) && b1 <= Duration::from_millis(1200));
        let b3 = backoff(3, max);
        assert!(b3 >= Duration::from_millis(3200) && b3 <= Duration::from_millis(4800));
        let b30 = backoff(30, max);
        assert!(b30 <= Duration::from_secs(72) && b30 >= Duration::from_secs(48));
    }

    #[test]
    fn messages_name_the_object_and_operation_and_keep_their_id() {
        let item = ChangeItem {
            cursor: "c".into(),
            sequence: 42,
            entity: crate::columns::CollectionName(partnerstack::Entity::Partner),
            key: "part_1".into(),
            operation: changes::Operation::Created,
            source: crate::apply::Source::Webhook,
            client: None,
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            fields: serde_json::json!({}),
            object: serde_json::json!({"key": "part_1"}),
        };
        let signed = Message::of(item).unwrap();
        assert_eq!(signed.id, "chg_42");
        let body: serde_json::Value = serde_json::from_slice(&signed.body).unwrap();
        assert_eq!(body["type"], "partnership.created");
        assert_eq!(body["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(body["data"]["key"], "part_1");
    }
}
