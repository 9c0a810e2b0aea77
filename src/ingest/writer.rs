//! The ingest writer: the only code that writes deliveries, in a task no client can cancel.
//!
//! Request handlers queue a delivery and await the answer. The writer takes whatever is
//! queued (up to `batch_size`), commits it in one statement, then answers each request.
//! A handler whose client hung up only drops its end of the answer: the write itself is
//! never interrupted, so a pooled connection is never left inside a half-done transaction
//! (ARCHITECTURE.md, rule 2). Concurrent deliveries share commits, which
//! is where ingest throughput comes from. The queue is bounded: when it is full, handlers
//! wait for room until the request timeout, and memory stays flat under any burst.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::db::events::{self, NewEvent, Stored};
use crate::db::is_transient_error;
use crate::telemetry::Metrics;

/// The writer could not store a delivery; the sender should retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("the database could not store the delivery")]
    Database,
    #[error("the service is shutting down")]
    Closed,
}

struct Job {
    event: NewEvent,
    reply: oneshot::Sender<Result<Stored, WriteError>>,
}

/// A handle for queueing deliveries; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer task. It stops once `stop` is cancelled and the queue has been
    /// drained: every delivery accepted into the queue is written and answered.
    pub fn spawn(
        pool: PgPool,
        capacity: usize,
        batch_size: usize,
        stored: Arc<Notify>,
        stop: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> (Writer, JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(capacity);
        let task = tokio::spawn(run(pool, rx, batch_size, stored, stop, metrics));
        (Writer { queue }, task)
    }

    /// Deliveries queued and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Stores a delivery and returns once it is committed. Cancelling this future before
    /// it returns never cancels the write; it only discards the answer.
    pub async fn store(&self, event: NewEvent) -> Result<Stored, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { event, reply })
            .await
            .map_err(|_| WriteError::Closed)?;
        answer.await.map_err(|_| WriteError::Closed)?
    }
}

async fn run(
    pool: PgPool,
    mut rx: mpsc::Receiver<Job>,
    batch_size: usize,
    stored: Arc<Notify>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let mut jobs = Vec::with_capacity(batch_size);
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled(), if !closing => {
                // Refuse new deliveries; drain what is queued, then end.
                rx.close();
                closing = true;
            }
            n = rx.recv_many(&mut jobs, batch_size) => {
                if n == 0 {
                    break;
                }
                write_batch(&pool, &mut jobs, &metrics).await;
                stored.notify_one();
            }
        }
    }
    tracing::debug!("ingest writer drained and stopped");
}

#[tracing::instrument(name = "write_batch", skip_all, fields(queued = jobs.len()))]
async fn write_batch(pool: &PgPool, jobs: &mut Vec<Job>, metrics: &Metrics) {
    // A request that already gave up (timed out, or its client hung up) was never
    // acknowledged, and its sender will retry: skipping it sheds load after a stall
    // instead of working through a queue nobody waits for.
    let (events, replies): (Vec<NewEvent>, Vec<_>) = jobs
        .drain(..)
        .filter(|j| !j.reply.is_closed())
        .map(|j| (j.event, j.reply))
        .unzip();
    if events.is_empty() {
        return;
    }
    metrics.ingest_batch_size.observe(events.len() as f64);
    let answers = match events::insert_batch(pool, &events).await {
        Ok(stored) => stored.into_iter().map(Ok).collect(),
        // The database refused the data rather than being unreachable: store the batch
        // one by one so a single unstorable delivery cannot fail its neighbours.
        Err(e) if events.len() > 1 && !is_transient_error(&e) => {
            tracing::warn!(error = %e, "a batch was refused; storing its deliveries one by one");
            let mut answers = Vec::with_capacity(events.len());
            for event in &events {
                answers.push(store_one(pool, event).await);
            }
            answers
        }
        Err(e) => {
            tracing::warn!(error = %e, deliveries = events.len(), "could not store deliveries; answering 503");
            vec![Err(WriteError::Database); events.len()]
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        // The requester may have gone; the delivery is stored (or not) either way.
        let _ = reply.send(answer);
    }
}

async fn store_one(pool: &PgPool, event: &NewEvent) -> Result<Stored, WriteError> {
    match events::insert_batch(pool, std::slice::from_ref(event)).await {
        Ok(stored) => stored.into_iter().next().ok_or(WriteError::Database),
        Err(e) => {
            tracing::warn!(error = %e, "could not store a delivery; answering 503");
            Err(WriteError::Database)
        }
    }
}
