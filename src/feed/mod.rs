//! Wakes whoever waits for the change feed: long-polling readers of `/v1/changes` and
//! the relay.
//!
//! A change becomes visible to readers when every older transaction has ended, which is
//! not necessarily when the transaction that wrote it commits, and another replica may
//! have written it. So nothing signals it directly: while anyone is waiting, one task per
//! replica asks the database for the visible head every `poll_interval` (one cheap index
//! probe) and wakes the waiters when it moves. Waiters hold no connection while they wait.
//!
//! What the feed carries, [`ChangeItem`], is defined here too ([`item`]), below the
//! routes: `/v1` and the relay serve the same item.

pub mod item;

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::db::changes::{self, FeedPosition};

pub use item::{ChangeItem, cursor_of};

/// The visible head of the feed, as last seen; cheap to clone.
#[derive(Clone)]
pub struct Feed {
    head: watch::Sender<Option<FeedPosition>>,
    stop: CancellationToken,
}

impl Feed {
    /// A feed whose waiters are let go (and whose poller ends) when `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> Feed {
        let (head, _) = watch::channel(None);
        Feed { head, stop }
    }

    /// Resolves when the service is stopping: waiters should answer what they have.
    pub async fn stopping(&self) {
        self.stop.cancelled().await
    }

    /// A receiver that sees the head move (mark it seen before reading the feed, then
    /// wait on `changed()`).
    pub fn subscribe(&self) -> watch::Receiver<Option<FeedPosition>> {
        self.head.subscribe()
    }

    /// Polls the head while anyone is subscribed, until the feed's `stop` is cancelled.
    pub async fn run(self, pool: PgPool, every: Duration) {
        let stop = self.stop.clone();
        let mut failing = false;
        loop {
            if self.head.receiver_count() > 0 {
                match changes::head(&pool).await {
                    Ok(head) => {
                        failing = false;
                        self.head.send_if_modified(|seen| {
                            let moved = *seen != head;
                            *seen = head;
                            moved
                        });
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot read the change feed's head; retrying");
                        }
                        failing = true;
                    }
                }
            }
            let wait = if failing {
                every.max(Duration::from_secs(1))
            } else {
                every
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
