//! Bounds on requests that wait: a long-poll of `/v1/changes` or a write with `wait`
//! holds its connection for up to 30 s. Without a bound, one token holder's long-polls
//! could take every connection slot the webhooks and the balancer's probes need. Past
//! the bound (all callers together, or one caller), the API answers 429 with
//! `Retry-After` at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The waiting requests a replica holds, in total and per caller; cheap to clone.
#[derive(Clone, Debug)]
pub struct LongPolls {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    total: usize,
    per_caller: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    /// By caller slot (`auth::Caller::slot`); a caller holding none has no entry.
    by_caller: HashMap<usize, usize>,
}

/// Which bound a refused request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every caller's waits together.
    Total(usize),
    /// This caller's.
    Caller(usize),
}

/// One waiting request's place, given back when dropped.
#[derive(Debug)]
pub struct Place {
    inner: Arc<Inner>,
    slot: usize,
}

impl LongPolls {
    /// At most `total` waiting requests at once, `per_caller` of them from one caller.
    pub fn new(total: usize, per_caller: usize) -> LongPolls {
        LongPolls {
            inner: Arc::new(Inner {
                total,
                per_caller,
                held: Mutex::new(Held::default()),
            }),
        }
    }

    /// A place for a waiting request of the caller in `slot`, unless a bound is met.
    pub fn take(&self, slot: usize) -> Result<Place, Full> {
        let mut held = self.inner.lock();
        if held.total >= self.inner.total {
            return Err(Full::Total(self.inner.total));
        }
        let mine = held.by_caller.entry(slot).or_default();
        if *mine >= self.inner.per_caller {
            return Err(Full::Caller(self.inner.per_caller));
        }
        *mine += 1;
        held.total += 1;
        Ok(Place {
            inner: self.inner.clone(),
            slot,
        })
    }

    /// Waiting requests held now.
    pub fn held(&self) -> usize {
        self.inner.lock().total
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // The counts are updated in one step under the lock; a panic elsewhere cannot
        // leave them half-changed.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.inner.lock();
        held.total = held.total.saturating_sub(1);
        if let Some(mine) = held.by_caller.get_mut(&self.slot) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                held.by_caller.remove(&self.slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_in_total_and_per_caller_and_given_back() {
        let polls = LongPolls::new(3, 2);
        let a1 = polls.take(0).unwrap();
        let _a2 = polls.take(0).unwrap();
        assert_eq!(polls.take(0).unwrap_err(), Full::Caller(2));
        let _b1 = polls.take(1).unwrap();
        assert_eq!(polls.take(2).unwrap_err(), Full::Total(3));
        assert_eq!(polls.held(), 3);
        drop(a1);
        assert_eq!(polls.held(), 2);
        let _c1 = polls.take(2).unwrap();
        assert_eq!(polls.take(0).unwrap_err(), Full::Total(3));
    }
}
