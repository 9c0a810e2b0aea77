//! The ingest writer: the only code that writes deliveries, in a task no client can cancel.
//!
//! Request handlers queue a delivery and await the answer. The writer takes whatever is
//! queued (up to `batch_size`), commits it in one statement, then answers each request.
//! A handler whose client hung up only drops its end of the answer: the write itself is
//! never interrupted, so a pooled connection is never left inside a half-done transaction
//! (ARCHITECTURE.md, rule 2). Concurrent deliveries share commits, which
//! is where ingest throughput comes from. The queue is bounded twice: by count (handlers
//! wait for room until the request timeout) and by bytes (a delivery reserves its size
//! before its body is even read, and is answered 503 at once when the bytes are spent), so
//! memory stays flat under any burst, even of large deliveries whose senders hang up.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::IngestMetrics;
use crate::burst::Burst;
use crate::db::events::{self, NewEvent, Stored};
use crate::db::is_transient_error;
use crate::error::BURST;

/// The writer could not store a delivery; the sender should retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("the database could not store the delivery")]
    Database,
    #[error("the service is shutting down")]
    Closed,
    #[error("the delivery queue is full")]
    Full,
}

struct Job {
    event: NewEvent,
    reply: oneshot::Sender<Result<Stored, WriteError>>,
    /// The bytes this delivery holds in the queue, given back when it is done with.
    _room: Room,
}

/// Bytes reserved in the writer's queue for one delivery ([`Writer::reserve`]).
#[derive(Debug)]
pub struct Room(OwnedSemaphorePermit);

impl Room {
    /// Gives back what the delivery did not need once its size is known.
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX) as usize;
        if self.0.num_permits() > keep {
            drop(self.0.split(self.0.num_permits() - keep));
        }
    }
}

/// A handle for queueing deliveries; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
    bytes: Arc<Semaphore>,
    capacity_bytes: usize,
    /// When the writer last finished a batch (ms on [`clock_ms`]); 0 before the first.
    progress: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer task. It stops once `stop` is cancelled and the queue has been
    /// drained: every delivery accepted into the queue is written and answered.
    pub fn spawn(
        pool: PgPool,
        limits: Limits,
        stored: Arc<Notify>,
        stop: CancellationToken,
        metrics: Arc<IngestMetrics>,
    ) -> (Writer, JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(limits.capacity.get());
        let capacity_bytes = limits.capacity_bytes.clamp(1, Semaphore::MAX_PERMITS);
        let progress = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(
            pool,
            rx,
            limits.batch_size.get(),
            stored,
            stop,
            metrics,
            progress.clone(),
        ));
        let writer = Writer {
            queue,
            bytes: Arc::new(Semaphore::new(capacity_bytes)),
            capacity_bytes,
            progress,
        };
        (writer, task)
    }

    /// Deliveries queued and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Bytes reserved by deliveries being read or queued.
    pub fn queued_bytes(&self) -> usize {
        self.capacity_bytes - self.bytes.available_permits()
    }

    /// Reserves room for a delivery of at most `bytes` before its body is read; `None`
    /// when the queue's bytes are spent (answer 503 at once rather than hold the body).
    pub fn reserve(&self, bytes: usize) -> Option<Room> {
        let wanted = u32::try_from(bytes.clamp(1, self.capacity_bytes)).unwrap_or(u32::MAX);
        self.bytes
            .clone()
            .try_acquire_many_owned(wanted)
            .ok()
            .map(Room)
    }

    /// Whether deliveries are queued and the writer has finished no batch for `patience`:
    /// it cannot store anything (a lock, a stuck statement).
    pub fn stalled(&self, patience: Duration) -> bool {
        if self.queued() == 0 {
            return false;
        }
        let last = self.progress.load(Ordering::Relaxed);
        clock_ms().saturating_sub(last) > u64::try_from(patience.as_millis()).unwrap_or(u64::MAX)
    }

    /// Stores a delivery, holding `room` until it is done with, and returns once it is
    /// committed. Cancelling this future before it returns never cancels the write; it
    /// only discards the answer.
    pub async fn store(&self, event: NewEvent, room: Room) -> Result<Stored, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job {
                event,
                reply,
                _room: room,
            })
            .await
            .map_err(|_| WriteError::Closed)?;
        answer.await.map_err(|_| WriteError::Closed)?
    }
}

/// How much the writer's queue holds and writes at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deliveries queued at most.
    pub capacity: NonZeroUsize,
    /// Bytes of deliveries being read or queued at most.
    pub capacity_bytes: usize,
    /// Deliveries written per statement at most.
    pub batch_size: NonZeroUsize,
}

/// Milliseconds on a process-wide monotonic clock.
fn clock_ms() -> u64 {
    static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);
    u64::try_from(BASE.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn run(
    pool: PgPool,
    mut rx: mpsc::Receiver<Job>,
    batch_size: usize,
    stored: Arc<Notify>,
    stop: CancellationToken,
    metrics: Arc<IngestMetrics>,
    progress: Arc<AtomicU64>,
) {
    progress.store(clock_ms(), Ordering::Relaxed);
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
                progress.store(clock_ms(), Ordering::Relaxed);
                stored.notify_one();
            }
        }
    }
    tracing::debug!("ingest writer drained and stopped");
}

#[tracing::instrument(name = "write_batch", skip_all, fields(queued = jobs.len()))]
async fn write_batch(pool: &PgPool, jobs: &mut Vec<Job>, metrics: &IngestMetrics) {
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
            static FAILING: Burst = Burst::new(BURST);
            if let Some(left_out) = FAILING.admit() {
                tracing::warn!(error = %e, deliveries = events.len(), left_out, "could not store deliveries; answering 503");
            }
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
