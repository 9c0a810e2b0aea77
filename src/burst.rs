//! Log throttling: one warning per burst of the same failure, not one per request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One warning per burst: the first event of a burst is logged, then at most one line
/// per `every`, saying how many were left out (an outage otherwise writes a line per
/// request).
#[derive(Debug)]
pub struct Burst {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Burst {
    pub const fn new(every: Duration) -> Burst {
        Burst {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(left_out)` when this event should be logged (with how many were not since
    /// the last one that was); `None` when it should not.
    pub fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                let left_out = std::mem::take(&mut state.1);
                state.0 = Some(now);
                Some(left_out)
            }
        }
    }
}
