//! Leadership that needs no server session: a lease row with an expiry and a fencing
//! token (`migrations/0015_leases.sql`).
//!
//! A session advisory lock lives as long as one server session, which a pooler in
//! transaction mode hands to other clients between transactions: the lock stays on a
//! session no replica owns, and a "leader" writes through sessions that never held it. A
//! lease is a row instead. Whoever finds it expired takes it, raising its token; the
//! holder renews it inside every transaction it writes in ([`Leader::begin`]), which locks
//! the row until that transaction ends. So a takeover waits for the old holder's commit,
//! and once it has happened the old holder's next transaction is refused (SQLSTATE
//! `PSL01`, sorted as a lost session by [`super::classify`]): a frozen or cut-off leader
//! writes nothing after it is replaced, however long it was away.
//!
//! The price: a holder that dies without a word is replaced when its lease expires
//! ([`TTL`]), not the moment its connection drops; one that stops cleanly hands over at
//! once ([`Leader::release`]).

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};

use super::{atomic, begin, query, query_scalar};

/// How long a lease lasts without renewal: a holder that stopped (frozen, cut off, dead)
/// is replaced this long after its last renewal, plus the others' polling interval.
pub const TTL: Duration = Duration::from_secs(15);

/// Renew at least this often while holding (a third of [`TTL`]).
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// A lease this process holds, and the pool its transactions run on.
#[derive(Debug, Clone)]
pub struct Leader {
    pool: PgPool,
    name: String,
    token: i64,
}

impl Leader {
    /// Takes lease `name` for `holder` when it is free (never taken, expired, released,
    /// or `holder`'s own); `None` while another holder's is current.
    pub async fn acquire(
        pool: &PgPool,
        name: &str,
        holder: &str,
    ) -> Result<Option<Leader>, sqlx::Error> {
        query("INSERT INTO leases (name) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(name)
            .execute(atomic(pool))
            .await?;
        // SKIP LOCKED: a holder inside a transaction has the row locked, so it is not free.
        // A holder may take its own lease again at once (it stood down after losing its
        // connection); `holder` names one process.
        let token: Option<i64> = query_scalar(
            "UPDATE leases l
                SET holder = $2, token = l.token + 1, acquired_at = clock_timestamp(),
                    expires_at = clock_timestamp() + $3 * interval '1 millisecond'
               FROM (SELECT name FROM leases
                      WHERE name = $1 AND (expires_at <= clock_timestamp() OR holder = $2)
                      FOR UPDATE SKIP LOCKED) free
              WHERE l.name = free.name
          RETURNING l.token",
        )
        .bind(name)
        .bind(holder)
        .bind(ttl_ms())
        .fetch_optional(atomic(pool))
        .await?;
        Ok(token.map(|token| Leader {
            pool: pool.clone(),
            name: name.to_string(),
            token,
        }))
    }

    /// The fencing token: raised by every takeover.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// A transaction in which this holder may write: the lease is renewed in it and stays
    /// locked until it ends. Fails (`PSL01`) when another holder has taken the lease. Such
    /// a transaction left idle (a frozen holder) is ended by Postgres after [`TTL`], so
    /// it cannot keep a successor waiting longer than the lease itself would.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = begin(&self.pool).await?;
        query("SELECT set_config('idle_in_transaction_session_timeout', $1, true)")
            .bind(ttl_ms().to_string())
            .execute(&mut *tx)
            .await?;
        self.hold(&mut tx).await?;
        Ok(tx)
    }

    /// Renews the lease now (while waiting for something else, to show it is alive).
    pub async fn renew(&self) -> Result<(), sqlx::Error> {
        let mut tx = begin(&self.pool).await?;
        self.hold(&mut tx).await?;
        tx.commit().await
    }

    async fn hold(&self, tx: &mut Transaction<'static, Postgres>) -> Result<(), sqlx::Error> {
        query("SELECT psync_hold_lease($1, $2, $3)")
            .bind(&self.name)
            .bind(self.token)
            .bind(ttl_ms())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Gives the lease up, so another replica takes over at its next try (a clean stop).
    pub async fn release(self) -> Result<(), sqlx::Error> {
        query("UPDATE leases SET expires_at = '-infinity' WHERE name = $1 AND token = $2")
            .bind(&self.name)
            .bind(self.token)
            .execute(atomic(&self.pool))
            .await?;
        Ok(())
    }
}

fn ttl_ms() -> i64 {
    TTL.as_millis() as i64
}

/// Whether `e` says the caller's lease was taken over (it must stand down).
pub fn is_lost(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(LOST))
}

/// The SQLSTATE `psync_hold_lease` refuses with.
pub const LOST: &str = "PSL01";
