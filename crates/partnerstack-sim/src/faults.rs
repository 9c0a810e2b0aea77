//! Fault injection for the stand-in's API: rate limiting, 5xx answers, slow answers, a
//! stalled cursor, and writes that take effect but whose answer is lost (a 500, a dropped
//! connection, or no answer at all). Random faults come from a seeded generator; scripted ones ("the next
//! N requests") make tests deterministic.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use partnerstack::Entity;

/// The fault settings in force. Every field can be changed at run time through
/// `POST /admin/faults` (see [`FaultUpdate`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultSettings {
    /// Requests per second the API accepts (token bucket, burst of one second's worth);
    /// beyond it, 429 with `Retry-After`. `None`: unlimited.
    pub rate_limit: Option<f64>,
    /// Seconds sent in `Retry-After` with every 429.
    pub retry_after: u64,
    /// Fraction of requests answered with a random 500/502/503.
    pub error_rate: f64,
    /// Delay before every API answer, in milliseconds.
    pub slow_ms: u64,
    /// The next N API requests are answered `fail_status`, with `fail_message` (default
    /// "Internal server error") as PartnerStack's message.
    pub fail_next: u32,
    pub fail_status: u16,
    pub fail_message: Option<String>,
    /// The next N API requests are answered 429 with `Retry-After`.
    pub throttle_next: u32,
    /// Streams whose lists ignore `starting_after` and serve the first page again: the
    /// cursor never advances.
    pub stall: Vec<String>,
    /// Fraction of writes (POST, PATCH, DELETE) that take effect and are then answered
    /// 500, as if the answer was lost on the way.
    pub after_commit_fail: f64,
    /// Fraction of writes that take effect and then lose their connection: no answer.
    pub after_commit_drop: f64,
    /// The next N writes take effect and then hang for `hang_ms` before answering (the
    /// caller times out first).
    pub hang_next: u32,
    pub hang_ms: u64,
    /// The next N writes take effect and are then answered 500 (a scripted
    /// `after_commit_fail`).
    pub lose_next: u32,
}

impl Default for FaultSettings {
    fn default() -> Self {
        FaultSettings {
            rate_limit: None,
            retry_after: 1,
            error_rate: 0.0,
            slow_ms: 0,
            fail_next: 0,
            fail_status: 503,
            fail_message: None,
            throttle_next: 0,
            stall: Vec::new(),
            after_commit_fail: 0.0,
            after_commit_drop: 0.0,
            hang_next: 0,
            hang_ms: 60_000,
            lose_next: 0,
        }
    }
}

/// A partial change of [`FaultSettings`]; absent fields stay as they are. `rate_limit: 0`
/// removes the limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultUpdate {
    pub rate_limit: Option<f64>,
    pub retry_after: Option<u64>,
    pub error_rate: Option<f64>,
    pub slow_ms: Option<u64>,
    pub fail_next: Option<u32>,
    pub fail_status: Option<u16>,
    /// Empty: back to the default message.
    pub fail_message: Option<String>,
    pub throttle_next: Option<u32>,
    pub stall: Option<Vec<String>>,
    pub after_commit_fail: Option<f64>,
    pub after_commit_drop: Option<f64>,
    pub hang_next: Option<u32>,
    pub hang_ms: Option<u64>,
    pub lose_next: Option<u32>,
}

/// What to do with one API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Serve,
    /// 429 with this `Retry-After` (seconds).
    Throttle(u64),
    /// This error status (5xx unless scripted otherwise), with this message.
    Fail(u16, String),
}

/// What happens to the answer of a write that took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCommit {
    Answer,
    /// A 500 in place of the answer.
    Fail,
    /// The connection is dropped: no answer at all.
    Drop,
    /// No answer for this long.
    Hang(Duration),
}

/// The stand-in's faults and request counters.
#[derive(Debug)]
pub struct Faults {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    settings: FaultSettings,
    tokens: f64,
    refilled: Instant,
    rng: Xoshiro256PlusPlus,
    /// Answers by HTTP status, API routes only.
    answers: BTreeMap<u16, u64>,
    /// Write requests by method and stream ("POST customers"), whatever their answer.
    writes: BTreeMap<String, u64>,
    /// Every API request by method and endpoint ("GET customers/{key}", "GET customers"),
    /// whatever its answer.
    requests: BTreeMap<String, u64>,
    /// When each API request arrived (the first [`MAX_TIMES`]).
    times: Vec<Instant>,
}

/// Request arrival times kept at most (a test's worth; the counts go on beyond it).
const MAX_TIMES: usize = 1_000_000;

/// The message of an injected server error.
const SERVER_ERROR: &str = "Internal server error";

impl Faults {
    pub fn new(settings: FaultSettings, seed: u64) -> Faults {
        Faults {
            state: Mutex::new(State {
                tokens: settings.rate_limit.unwrap_or(1.0).max(1.0),
                settings,
                refilled: Instant::now(),
                rng: Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xfa17_5eed),
                answers: BTreeMap::new(),
                writes: BTreeMap::new(),
                requests: BTreeMap::new(),
                times: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the numbers are still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> FaultSettings {
        self.lock().settings.clone()
    }

    /// Applies `update`; refuses values out of range.
    pub fn update(&self, update: FaultUpdate) -> Result<FaultSettings, String> {
        for (name, rate) in [
            ("error_rate", update.error_rate),
            ("after_commit_fail", update.after_commit_fail),
            ("after_commit_drop", update.after_commit_drop),
        ] {
            if let Some(r) = rate
                && !(0.0..=1.0).contains(&r)
            {
                return Err(format!("{name} must be within 0..=1"));
            }
        }
        if let Some(r) = update.rate_limit
            && !(r.is_finite() && r >= 0.0)
        {
            return Err("rate_limit must be a positive number (0 removes the limit)".into());
        }
        if let Some(s) = update.fail_status
            && !(400..=599).contains(&s)
        {
            return Err("fail_status must be an HTTP error status".into());
        }
        if let Some(stall) = &update.stall
            && let Some(bad) = stall.iter().find(|s| Entity::from_stream(s).is_none())
        {
            return Err(format!("stall: unknown stream {bad:?}"));
        }
        let mut state = self.lock();
        let s = &mut state.settings;
        if let Some(r) = update.rate_limit {
            s.rate_limit = (r > 0.0).then_some(r);
        }
        if let Some(v) = update.retry_after {
            s.retry_after = v;
        }
        if let Some(v) = update.error_rate {
            s.error_rate = v;
        }
        if let Some(v) = update.slow_ms {
            s.slow_ms = v;
        }
        if let Some(v) = update.fail_next {
            s.fail_next = v;
        }
        if let Some(v) = update.fail_status {
            s.fail_status = v;
        }
        if let Some(v) = update.fail_message {
            s.fail_message = Some(v).filter(|m| !m.is_empty());
        }
        if let Some(v) = update.throttle_next {
            s.throttle_next = v;
        }
        if let Some(v) = update.stall {
            s.stall = v;
        }
        if let Some(v) = update.after_commit_fail {
            s.after_commit_fail = v;
        }
        if let Some(v) = update.after_commit_drop {
            s.after_commit_drop = v;
        }
        if let Some(v) = update.hang_next {
            s.hang_next = v;
        }
        if let Some(v) = update.hang_ms {
            s.hang_ms = v;
        }
        if let Some(v) = update.lose_next {
            s.lose_next = v;
        }
        let settings = state.settings.clone();
        state.tokens = settings.rate_limit.unwrap_or(1.0).max(1.0);
        state.refilled = Instant::now();
        Ok(settings)
    }

    /// How long to delay the answer.
    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.lock().settings.slow_ms)
    }

    /// Decides the fate of one API request: scripted faults first, then the rate limit,
    /// then the random error rate.
    pub fn verdict(&self) -> Verdict {
        let mut state = self.lock();
        let retry_after = state.settings.retry_after;
        if state.settings.throttle_next > 0 {
            state.settings.throttle_next -= 1;
            return Verdict::Throttle(retry_after);
        }
        if state.settings.fail_next > 0 {
            state.settings.fail_next -= 1;
            let message = state.settings.fail_message.clone();
            return Verdict::Fail(
                state.settings.fail_status,
                message.unwrap_or_else(|| SERVER_ERROR.to_string()),
            );
        }
        if let Some(rate) = state.settings.rate_limit {
            let now = Instant::now();
            let elapsed = now.duration_since(state.refilled).as_secs_f64();
            state.tokens = (state.tokens + elapsed * rate).min(rate.max(1.0));
            state.refilled = now;
            if state.tokens < 1.0 {
                return Verdict::Throttle(retry_after);
            }
            state.tokens -= 1.0;
        }
        let error_rate = state.settings.error_rate;
        if error_rate > 0.0 && state.rng.random_bool(error_rate) {
            let status = [500, 502, 503][state.rng.random_range(0..3)];
            return Verdict::Fail(status, SERVER_ERROR.to_string());
        }
        Verdict::Serve
    }

    /// Decides what happens to the answer of a write that took effect: a scripted hang
    /// first, then a lost answer (500 or dropped connection) at the configured rates.
    pub fn after_commit(&self) -> AfterCommit {
        let mut state = self.lock();
        if state.settings.hang_next > 0 {
            state.settings.hang_next -= 1;
            return AfterCommit::Hang(Duration::from_millis(state.settings.hang_ms));
        }
        if state.settings.lose_next > 0 {
            state.settings.lose_next -= 1;
            return AfterCommit::Fail;
        }
        let (fail, drop) = (
            state.settings.after_commit_fail,
            state.settings.after_commit_drop,
        );
        if fail + drop <= 0.0 {
            return AfterCommit::Answer;
        }
        let roll: f64 = state.rng.random();
        if roll < fail {
            AfterCommit::Fail
        } else if roll < fail + drop {
            AfterCommit::Drop
        } else {
            AfterCommit::Answer
        }
    }

    /// Counts one write request (`POST customers`), whatever its answer.
    pub fn count_write(&self, method: &str, stream: &str) {
        *self
            .lock()
            .writes
            .entry(format!("{method} {stream}"))
            .or_default() += 1;
    }

    /// Write requests so far, by method and stream.
    pub fn writes(&self) -> BTreeMap<String, u64> {
        self.lock().writes.clone()
    }

    /// Counts one API request (`GET customers/{key}`), whatever its answer.
    pub fn count_request(&self, endpoint: String) {
        let mut state = self.lock();
        *state.requests.entry(endpoint).or_default() += 1;
        if state.times.len() < MAX_TIMES {
            state.times.push(Instant::now());
        }
    }

    /// When each API request so far arrived, in order (the first million).
    pub fn request_times(&self) -> Vec<Instant> {
        self.lock().times.clone()
    }

    /// API requests so far, by method and endpoint (`GET customers/{key}`).
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.lock().requests.clone()
    }

    /// True when `entity`'s list should ignore its cursor.
    pub fn stalled(&self, entity: Entity) -> bool {
        self.lock()
            .settings
            .stall
            .iter()
            .any(|s| Entity::from_stream(s) == Some(entity))
    }

    /// Counts one API answer.
    pub fn count(&self, status: u16) {
        *self.lock().answers.entry(status).or_default() += 1;
    }

    /// API answers so far, by status.
    pub fn answers(&self) -> BTreeMap<u16, u64> {
        self.lock().answers.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripted_faults_come_first_and_run_out() {
        let f = Faults::new(FaultSettings::default(), 1);
        f.update(FaultUpdate {
            throttle_next: Some(2),
            fail_next: Some(1),
            fail_status: Some(502),
            retry_after: Some(3),
            ..FaultUpdate::default()
        })
        .unwrap();
        let verdicts: Vec<Verdict> = (0..5).map(|_| f.verdict()).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Throttle(3),
                Verdict::Throttle(3),
                Verdict::Fail(502, SERVER_ERROR.to_string()),
                Verdict::Serve,
                Verdict::Serve
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_refills_with_time() {
        let f = Faults::new(
            FaultSettings {
                rate_limit: Some(2.0),
                ..FaultSettings::default()
            },
            1,
        );
        assert_eq!(f.verdict(), Verdict::Serve);
        assert_eq!(f.verdict(), Verdict::Serve);
        assert_eq!(f.verdict(), Verdict::Throttle(1));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(f.verdict(), Verdict::Serve);
        assert_eq!(f.verdict(), Verdict::Throttle(1));
    }

    #[test]
    fn out_of_range_updates_are_refused() {
        let f = Faults::new(FaultSettings::default(), 1);
        for bad in [
            FaultUpdate {
                error_rate: Some(1.5),
                ..FaultUpdate::default()
            },
            FaultUpdate {
                fail_status: Some(200),
                ..FaultUpdate::default()
            },
            FaultUpdate {
                stall: Some(vec!["widgets".into()]),
                ..FaultUpdate::default()
            },
        ] {
            assert!(f.update(bad).is_err());
        }
        assert!(!f.stalled(Entity::Customer));
        f.update(FaultUpdate {
            stall: Some(vec!["customers".into()]),
            ..FaultUpdate::default()
        })
        .unwrap();
        assert!(f.stalled(Entity::Customer));
    }
}
