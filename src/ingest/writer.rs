//! The ingest writer: the only code that writes deliveries, in a task no client can cancel.
//!
//! Request handlers queue a delivery and await the answer. The writer takes whatever is
//! queued (up to `batch_size`), commits it in one statement, then answers each request.
//! A handler whose client hung up only drops its end of the answer: the write itself is
//! never interrupted, so a pooled connection is never left inside a half-done transaction
//! (design.md, "Cancellation is the trap"). Concurrent deliveries share commits, which
//! is where ingest throughput comes from. The queue is bounded: when it is full, handlers
//! wait for room until the request timeout, and memory stays flat under any burst.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::db::events::{self, NewEvent, Stored};
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
    metrics: Arc<Metrics>,
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
        let task = tokio::spawn(run(pool, rx, batch_size, stored, stop, metrics.clone()));
        (Writer { queue, metrics }, task)
    }

    /// Stores a delivery and returns once it is committed. Cancelling this future before
    /// it returns never cancels the write; it only discards the answer.
    pub async fn store(&self, event: NewEvent) -> Result<Stored, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.metrics.ingest_queue_depth.inc();
        if self.queue.send(Job { event, reply }).await.is_err() {
            self.metrics.ingest_queue_depth.dec();
            return Err(WriteError::Closed);
        }
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
                metrics.ingest_queue_depth.dec_by(n as i64);
                write_batch(&pool, &mut jobs, &metrics).await;
                stored.notify_one();
            }
        }
    }
    tracing::debug!("ingest writer drained and stopped");
}

async fn write_batch(pool: &PgPool, jobs: &mut Vec<Job>, metrics: &Metrics) {
    let (events, replies): (Vec<NewEvent>, Vec<_>) =
        jobs.drain(..).map(|j| (j.event, j.reply)).unzip();
    metrics.ingest_batch_size.observe(events.len() as f64);
    let result = events::insert_batch(pool, &events).await;
    if let Err(e) = &result {
        tracing::warn!(error = %e, deliveries = events.len(), "could not store deliveries; answering 503");
    }
    for (i, reply) in replies.into_iter().enumerate() {
        let answer = match &result {
            Ok(stored) => Ok(stored[i]),
            Err(_) => Err(WriteError::Database),
        };
        // The requester may have gone; the delivery is stored (or not) either way.
        let _ = reply.send(answer);
    }
}
