//! The request budget: how many requests a second reach PartnerStack, who goes first, and
//! what each request was spent on.
//!
//! **One budget per account.** A [`RequestBudget`] is a token bucket. On its own it is
//! local to the process ([`RequestBudget::new`]). With a [`TokenSource`] (a service's
//! shared bucket, e.g. a row in its database) it takes its tokens from there instead, a
//! lease of a few at a time for the requests waiting: every process using that source
//! shares one rate and one burst, whatever their number. A lease costs the source one
//! round trip for all the requests waiting at that moment, and while several wait it is
//! granted only once half a second's worth (or all it wants) is there, so a busy process
//! leases about twice a second, at any rate, rather than once per request. Leased tokens not used within [`TOKEN_TTL`] are dropped, never saved up: a burst
//! is only ever the source's. When the source fails (its database unreachable), the
//! budget falls back for a few seconds at a time to a local bucket at its share of the
//! rate (the rate divided by the processes the source last counted), and tries again.
//!
//! **Writes first.** While a write's request waits, no read takes a token in this
//! process, and the source is told, so reads of other processes leave the write the
//! tokens it wants (see the service's source for how long that lasts).
//!
//! **Spent on what.** Requests are sent inside a [`spend`] scope (a task-local) that says
//! what they are for ([`Purpose`]) and counts them; the client adds each to its totals by
//! purpose and tells its observer.
//!
//! Everything here runs on tokio's clock, so tests drive it with `tokio::time::pause()`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What a request to PartnerStack is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// A reconcile pass's list pages.
    Reconcile,
    /// Reads that verify webhook deliveries.
    Verify,
    /// A write, its look-ups included. Writes go ahead of every other purpose.
    Write,
    /// Anything sent outside a [`spend`] scope.
    Other,
}

impl Purpose {
    pub const ALL: [Purpose; 4] = [
        Purpose::Reconcile,
        Purpose::Verify,
        Purpose::Write,
        Purpose::Other,
    ];

    /// The word it is counted under.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Reconcile => "reconcile",
            Purpose::Verify => "verify",
            Purpose::Write => "write",
            Purpose::Other => "other",
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            Purpose::Reconcile => 0,
            Purpose::Verify => 1,
            Purpose::Write => 2,
            Purpose::Other => 3,
        }
    }
}

/// Requests sent so far, by purpose (retries included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub reconcile: u64,
    pub verify: u64,
    pub write: u64,
    pub other: u64,
}

impl Spent {
    /// Every request, whatever it was for.
    pub fn total(&self) -> u64 {
        self.reconcile + self.verify + self.write + self.other
    }

    pub(super) fn from_counts(counts: &[AtomicU64; 4]) -> Spent {
        let n = |p: Purpose| counts[p.index()].load(Ordering::Relaxed);
        Spent {
            reconcile: n(Purpose::Reconcile),
            verify: n(Purpose::Verify),
            write: n(Purpose::Write),
            other: n(Purpose::Other),
        }
    }
}

#[derive(Clone)]
struct Spending {
    purpose: Purpose,
    sent: Arc<AtomicU64>,
}

tokio::task_local! {
    /// Set while work of one purpose runs (see [`spend`]): its purpose and the requests
    /// it has sent.
    static SPENDING: Spending;
}

/// Runs `work` spending requests on `purpose`: they are counted under it (by the client,
/// and here: the second value returned is how many HTTP requests `work` sent, retries and
/// look-ups included), and a write's go ahead of reads in the request budget. The scope
/// is the future's own: a task `work` spawns is outside it.
pub async fn spend<F: Future>(purpose: Purpose, work: F) -> (F::Output, u64) {
    let sent = Arc::new(AtomicU64::new(0));
    let spending = Spending {
        purpose,
        sent: sent.clone(),
    };
    let output = SPENDING.scope(spending, work).await;
    (output, sent.load(Ordering::Relaxed))
}

/// [`spend`] on a write: its requests go ahead of reads in the request budget (a list
/// page waits while a write's request does).
pub async fn for_write<F: Future>(work: F) -> (F::Output, u64) {
    spend(Purpose::Write, work).await
}

/// The purpose of the request about to be sent ([`Purpose::Other`] outside a scope).
pub(super) fn current_purpose() -> Purpose {
    SPENDING.try_with(|s| s.purpose).unwrap_or(Purpose::Other)
}

/// Counts one request in the current [`spend`] scope, if any.
pub(super) fn count_spent() {
    let _ = SPENDING.try_with(|s| s.sent.fetch_add(1, Ordering::Relaxed));
}

/// How long a leased token may wait for its request before it is dropped unused.
pub const TOKEN_TTL: Duration = Duration::from_secs(1);
/// How long the budget stays on its local fallback after the source failed, before it
/// tries the source again.
const FALLBACK_FOR: Duration = Duration::from_secs(3);
/// The longest a lease may take before it counts as a failure of the source.
const LEASE_TIMEOUT: Duration = Duration::from_secs(2);
/// The fewest seconds' worth of tokens a lease asks the source for when more than that
/// many requests wait (fewer round trips at high rates).
const LEASE_SECONDS: f64 = 0.5;

/// What a budget asks its [`TokenSource`] for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Take {
    /// Tokens wanted now: the requests waiting (0: only say this process is alive).
    pub want: u32,
    /// Grant nothing unless at least this many are available (at most `want`).
    pub at_least: u32,
    /// A write waits: reads of other processes should leave it what it wants.
    pub write: bool,
    /// The budget's rate (requests per second) and burst (tokens at most).
    pub rate: f64,
    pub burst: f64,
}

/// What a [`TokenSource`] granted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    /// Tokens granted, each for one request to send now.
    pub granted: u32,
    /// When fewer than asked were granted: how long until asking again is worthwhile.
    pub retry_in: Duration,
    /// Processes sharing the source now (this one included): the fallback's divisor.
    pub holders: u32,
}

/// Where a shared budget's tokens come from (e.g. a row in a database every replica
/// reaches). One call is one round trip; an error (or no answer within a couple of
/// seconds) puts the budget on its local fallback for a few seconds.
pub trait TokenSource: Send + Sync + 'static {
    fn take(&self, take: Take) -> BoxFuture<'_, Result<Grant, String>>;
}

/// A token bucket of requests per second, shared by every clone of a client (and, with a
/// [`TokenSource`], by every process of the account): each request takes a token, and a
/// caller finding none waits for its turn. Writes go first (see the module's notes).
pub struct RequestBudget {
    rate: f64,
    burst: f64,
    /// The local bucket: the budget's own without a source; the fallback with one.
    local: Mutex<Bucket>,
    /// Writes' requests waiting for a token.
    writes_waiting: AtomicUsize,
    shared: Option<Shared>,
}

impl std::fmt::Debug for RequestBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBudget")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// Decrements a count of waiters when their wait ends (or is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Bucket {
    /// Negative when callers are queued for future tokens.
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn full(burst: f64) -> Bucket {
        Bucket {
            tokens: burst,
            refilled: Instant::now(),
        }
    }

    /// Takes the next token at `rate` (refilling up to `burst`); returns how long to wait
    /// for it.
    fn reserve(&mut self, rate: f64, burst: f64) -> Duration {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.refilled = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

/// The part of a budget that takes its tokens from a [`TokenSource`].
struct Shared {
    source: Arc<dyn TokenSource>,
    state: Mutex<SharedState>,
    /// Told whenever tokens arrive or a lease ends.
    changed: Notify,
    reads_waiting: AtomicUsize,
}

struct SharedState {
    /// When each leased, unused token expires.
    tokens: VecDeque<Instant>,
    /// A caller is leasing for everyone waiting.
    leasing: bool,
    /// No lease before this (the source said when more tokens would be there).
    next_lease_at: Instant,
    /// Processes sharing the source, as it last said.
    holders: u32,
    /// On the local fallback until then.
    fallback_until: Option<Instant>,
    /// Source failures in a row (logged at the first and every 20th).
    failures: u32,
}

impl RequestBudget {
    /// The budget of one API account (`key`: e.g. base URL and public key), shared by
    /// every client built for it in this process; created at `rate` by the first caller.
    pub fn shared(key: &str, rate: f64) -> Arc<RequestBudget> {
        use std::collections::HashMap;
        use std::sync::{OnceLock, Weak};
        static BUDGETS: OnceLock<Mutex<HashMap<String, Weak<RequestBudget>>>> = OnceLock::new();
        let mut budgets = BUDGETS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        budgets.retain(|_, b| b.strong_count() > 0);
        if let Some(budget) = budgets.get(key).and_then(Weak::upgrade) {
            return budget;
        }
        let budget = Arc::new(RequestBudget::new(rate));
        budgets.insert(key.to_string(), Arc::downgrade(&budget));
        budget
    }

    /// `rate` requests per second on average, up to `max(1, rate)` at once, in this
    /// process.
    pub fn new(rate: f64) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1.0
        };
        let burst = rate.max(1.0);
        RequestBudget {
            rate,
            burst,
            local: Mutex::new(Bucket::full(burst)),
            writes_waiting: AtomicUsize::new(0),
            shared: None,
        }
    }

    /// `rate` requests per second on average, up to `max(1, rate)` at once, across every
    /// process taking its tokens from `source`. Until the source first answers, the
    /// fallback assumes `holders` processes share it.
    pub fn from_source(rate: f64, source: Arc<dyn TokenSource>, holders: u32) -> Self {
        let mut budget = RequestBudget::new(rate);
        budget.shared = Some(Shared {
            source,
            state: Mutex::new(SharedState {
                tokens: VecDeque::new(),
                leasing: false,
                next_lease_at: Instant::now(),
                holders: holders.max(1),
                fallback_until: None,
                failures: 0,
            }),
            changed: Notify::new(),
            reads_waiting: AtomicUsize::new(0),
        });
        budget
    }

    /// Requests per second on average (across every process, with a source).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Processes sharing the budget, as its source last said (1 without a source).
    pub fn holders(&self) -> u32 {
        self.shared.as_ref().map_or(1, |s| s.lock().holders)
    }

    /// Whether the budget is on its local fallback now (its source failed).
    pub fn on_fallback(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| {
            s.lock()
                .fallback_until
                .is_some_and(|until| Instant::now() < until)
        })
    }

    /// Tells the source this process is alive (so the fallback's share counts it), without
    /// taking a token. Returns the source's error, if any.
    pub async fn check_in(&self) -> Result<(), String> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let take = Take {
            want: 0,
            at_least: 0,
            write: false,
            rate: self.rate,
            burst: self.burst,
        };
        let grant = lease(shared, take).await?;
        shared.lock().holders = grant.holders.max(1);
        Ok(())
    }

    /// Waits until the caller may send one request (a write's first, see [`for_write`]).
    pub async fn acquire(&self) {
        let write = current_purpose() == Purpose::Write;
        match &self.shared {
            Some(shared) => self.acquire_shared(shared, write).await,
            None => self.acquire_local(write, self.rate).await,
        }
    }

    /// From the local bucket at `rate`: writes reserve at once; reads wait while a write
    /// does.
    async fn acquire_local(&self, write: bool, rate: f64) {
        if write {
            let _waiting = Waiting::new(&self.writes_waiting);
            self.reserve_local(rate).await;
        } else {
            while self.writes_waiting.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_secs_f64(1.0 / rate)).await;
            }
            self.reserve_local(rate).await;
        }
    }

    /// Takes the next local token at `rate`, waiting for it when there is none. Waiters
    /// reserve their token before sleeping, so they are served in arrival order.
    async fn reserve_local(&self, rate: f64) {
        let wait = {
            // A poisoned lock only means another caller panicked mid-update; the bucket's
            // numbers are still usable.
            let mut bucket = self.local.lock().unwrap_or_else(|e| e.into_inner());
            bucket.reserve(rate, self.burst.min(rate.max(1.0)))
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// From the source: a token leased for this caller, or for another and not taken
    /// yet; one caller at a time leases for everyone waiting.
    async fn acquire_shared(&self, shared: &Shared, write: bool) {
        let _waiting = SharedWaiting::new(shared, &self.writes_waiting, write);
        loop {
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a change after the look is not missed.
            changed.as_mut().enable();
            match self.next_step(shared, write) {
                Step::Taken => return,
                Step::Fallback { share } => {
                    self.acquire_local(write, share).await;
                    return;
                }
                Step::Lease => self.lease_for_waiters(shared).await,
                // Another caller leases; its tokens (or its failure) wake this one.
                Step::Wait => changed.await,
            }
        }
    }

    /// What a caller waiting for a shared token does next; takes the token when there is
    /// one for it.
    fn next_step(&self, shared: &Shared, write: bool) -> Step {
        let mut state = shared.lock();
        let now = Instant::now();
        while state.tokens.front().is_some_and(|&expires| expires <= now) {
            state.tokens.pop_front();
        }
        let writes_first = self.writes_waiting.load(Ordering::Relaxed) > 0;
        if !state.tokens.is_empty() && (write || !writes_first) {
            state.tokens.pop_front();
            return Step::Taken;
        }
        if state.fallback_until.is_some_and(|until| now < until) {
            return Step::Fallback {
                share: self.rate / f64::from(state.holders.max(1)),
            };
        }
        // Tokens left are a waiting write's: no lease until it has taken them.
        if state.leasing || !state.tokens.is_empty() {
            Step::Wait
        } else {
            state.leasing = true;
            Step::Lease
        }
    }

    /// Leases tokens for every caller waiting now (writes first), after the wait the
    /// source last asked for. Called with `leasing` set; clears it, whatever happens.
    async fn lease_for_waiters(&self, shared: &Shared) {
        let _leasing = Leasing(shared);
        let next = shared.lock().next_lease_at;
        tokio::time::sleep_until(next).await;
        let writes = self.writes_waiting.load(Ordering::Relaxed);
        let waiting = writes + shared.reads_waiting.load(Ordering::Relaxed);
        let want = (waiting.max(1) as f64).min(self.burst.floor().max(1.0)) as u32;
        let chunk = (self.rate * LEASE_SECONDS).floor().max(1.0) as u32;
        let take = Take {
            want,
            at_least: want.min(chunk),
            write: writes > 0,
            rate: self.rate,
            burst: self.burst,
        };
        let result = lease(shared, take).await;
        let mut state = shared.lock();
        let now = Instant::now();
        match result {
            Ok(grant) => {
                state.failures = 0;
                state.fallback_until = None;
                state.holders = grant.holders.max(1);
                for _ in 0..grant.granted {
                    state.tokens.push_back(now + TOKEN_TTL);
                }
                if grant.granted < want {
                    state.next_lease_at = now + grant.retry_in.min(TOKEN_TTL);
                }
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                if state.failures == 1 || state.failures.is_multiple_of(20) {
                    tracing::warn!(
                        %error,
                        share = self.rate / f64::from(state.holders.max(1)),
                        holders = state.holders,
                        "the shared request budget cannot be reached; sending at this \
                         process's share of the rate meanwhile"
                    );
                }
                state.fallback_until = Some(now + FALLBACK_FOR);
            }
        }
    }
}

/// What a caller waiting for a shared token does next.
enum Step {
    /// It took a leased token.
    Taken,
    /// The source failed lately: take a token of the local fallback at this rate.
    Fallback { share: f64 },
    /// Lease for everyone waiting (this caller set `leasing`).
    Lease,
    /// Wait for another caller's lease.
    Wait,
}

/// One lease from the source, bounded by [`LEASE_TIMEOUT`].
async fn lease(shared: &Shared, take: Take) -> Result<Grant, String> {
    match tokio::time::timeout(LEASE_TIMEOUT, shared.source.take(take)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", LEASE_TIMEOUT.as_millis())),
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        // A poisoned lock only means another caller panicked mid-update; the numbers are
        // still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts a caller waiting for a shared token until its wait ends (or is cancelled); a
/// write's end wakes the reads it held back.
struct SharedWaiting<'a> {
    shared: &'a Shared,
    writes: &'a AtomicUsize,
    write: bool,
}

impl<'a> SharedWaiting<'a> {
    fn new(shared: &'a Shared, writes: &'a AtomicUsize, write: bool) -> SharedWaiting<'a> {
        let count = if write { writes } else { &shared.reads_waiting };
        count.fetch_add(1, Ordering::Relaxed);
        SharedWaiting {
            shared,
            writes,
            write,
        }
    }
}

impl Drop for SharedWaiting<'_> {
    fn drop(&mut self) {
        if self.write {
            self.writes.fetch_sub(1, Ordering::Relaxed);
            self.shared.changed.notify_waiters();
        } else {
            self.shared.reads_waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Ends a lease: clears `leasing` and wakes the waiters (also when the leasing caller is
/// cancelled mid-lease).
struct Leasing<'a>(&'a Shared);

impl Drop for Leasing<'_> {
    fn drop(&mut self) {
        self.0.lock().leasing = false;
        self.0.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn clients_of_one_account_share_a_budget() {
        let a = RequestBudget::shared("account-a", 4.0);
        let b = RequestBudget::shared("account-a", 99.0);
        let c = RequestBudget::shared("account-c", 4.0);
        assert!(
            Arc::ptr_eq(&a, &b),
            "one budget per account, whatever the later rate"
        );
        assert!(!Arc::ptr_eq(&a, &c));
    }

    /// The budget lets a burst through, then spaces requests at the rate.
    #[tokio::test(start_paused = true)]
    async fn the_budget_spaces_requests_at_its_rate() {
        let budget = Arc::new(RequestBudget::new(4.0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let budget = budget.clone();
            tasks.push(tokio::spawn(async move {
                budget.acquire().await;
                start.elapsed()
            }));
        }
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.unwrap());
        }
        done.sort();
        // 4 at once, then one every 250 ms: the 12th after 2 s.
        assert!(done[3] < Duration::from_millis(1));
        let last = done[11];
        assert!(
            last >= Duration::from_millis(1999) && last <= Duration::from_millis(2001),
            "{last:?}"
        );
    }

    /// A write arriving while a reader keeps the budget busy is served next, not after
    /// the reader's queue; and its requests are counted.
    #[tokio::test(start_paused = true)]
    async fn writes_go_ahead_of_reads() {
        let budget = Arc::new(RequestBudget::new(4.0));
        let start = Instant::now();
        // Eight readers in line, each reserving its slot.
        let mut readers = Vec::new();
        for _ in 0..8 {
            let budget = budget.clone();
            readers.push(tokio::spawn(async move {
                budget.acquire().await;
                start.elapsed()
            }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Readers that arrive after the write wait for it.
        let late_readers: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    budget.acquire().await;
                    start.elapsed()
                })
            })
            .collect();
        let write = {
            let budget = budget.clone();
            tokio::spawn(for_write(async move {
                budget.acquire().await;
                count_spent();
                start.elapsed()
            }))
        };
        let (written_at, sent) = write.await.unwrap();
        assert_eq!(sent, 1);
        for r in readers {
            r.await.unwrap();
        }
        let mut late = Vec::new();
        for r in late_readers {
            late.push(r.await.unwrap());
        }
        // The eight readers reserved their slots before the write (4 at once, then up to
        // 1 s); the write comes right after them, before any later reader.
        assert!(
            written_at <= Duration::from_millis(1251),
            "the write waited until {written_at:?}"
        );
        assert!(
            late.iter().all(|t| *t > written_at),
            "write at {written_at:?}, later readers at {late:?}"
        );
    }

    #[tokio::test]
    async fn requests_are_counted_under_their_purpose() {
        assert_eq!(current_purpose(), Purpose::Other);
        let ((), sent) = spend(Purpose::Verify, async {
            assert_eq!(current_purpose(), Purpose::Verify);
            count_spent();
            count_spent();
        })
        .await;
        assert_eq!(sent, 2);
        let (purpose, _) = for_write(async { current_purpose() }).await;
        assert_eq!(purpose, Purpose::Write);
    }

    /// A bucket of tokens shared by several budgets, as a database row would be: refills at
    /// the rate, up to the burst, grants only what is there; counts leases and tokens.
    struct FakeSource {
        state: Mutex<(f64, Instant)>,
        leases: AtomicU64,
        granted: AtomicU64,
        /// Every lease fails while set.
        down: std::sync::atomic::AtomicBool,
        /// Writes reserve tokens: reads get none while a write was refused.
        write_wanted: AtomicU64,
    }

    impl FakeSource {
        fn new(burst: f64) -> Arc<FakeSource> {
            Arc::new(FakeSource {
                state: Mutex::new((burst, Instant::now())),
                leases: AtomicU64::new(0),
                granted: AtomicU64::new(0),
                down: std::sync::atomic::AtomicBool::new(false),
                write_wanted: AtomicU64::new(0),
            })
        }
    }

    impl TokenSource for FakeSource {
        fn take(&self, take: Take) -> BoxFuture<'_, Result<Grant, String>> {
            Box::pin(async move {
                // A round trip.
                tokio::time::sleep(Duration::from_millis(1)).await;
                if self.down.load(Ordering::Relaxed) {
                    return Err("down".into());
                }
                self.leases.fetch_add(1, Ordering::Relaxed);
                let mut state = self.state.lock().unwrap();
                let now = Instant::now();
                let avail = (state.0 + now.duration_since(state.1).as_secs_f64() * take.rate)
                    .min(take.burst);
                let reserved = if take.write {
                    0.0
                } else {
                    self.write_wanted.load(Ordering::Relaxed) as f64
                };
                let free = (avail - reserved).floor().max(0.0) as u32;
                let granted = if free >= take.at_least {
                    free.min(take.want)
                } else {
                    0
                };
                if take.write {
                    self.write_wanted
                        .store(u64::from(take.want - granted), Ordering::Relaxed);
                }
                *state = (avail - f64::from(granted), now);
                self.granted
                    .fetch_add(u64::from(granted), Ordering::Relaxed);
                let missing = (f64::from(take.at_least.max(1)) + reserved - state.0).max(0.0);
                Ok(Grant {
                    granted,
                    retry_in: Duration::from_secs_f64(missing / take.rate),
                    holders: 3,
                })
            })
        }
    }

    /// Three budgets on one source send, together, at most the source's rate (plus its
    /// burst), and lease far less often than they send.
    #[tokio::test(start_paused = true)]
    async fn budgets_on_one_source_share_its_rate() {
        let source = FakeSource::new(5.0);
        let budgets: Vec<Arc<RequestBudget>> = (0..3)
            .map(|_| Arc::new(RequestBudget::from_source(5.0, source.clone(), 3)))
            .collect();
        let start = Instant::now();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for budget in &budgets {
            for _ in 0..4 {
                let (budget, sent) = (budget.clone(), sent.clone());
                tasks.push(tokio::spawn(async move {
                    while start.elapsed() < Duration::from_secs(20) {
                        budget.acquire().await;
                        sent.lock().unwrap().push(start.elapsed());
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let sent = sent.lock().unwrap();
        // 20 s at 5/s plus the burst of 5, and the twelve callers that were waiting at
        // 20 s (each sends once more, still at the rate: the windows below check that).
        assert!(sent.len() <= 5 * 20 + 5 + 12, "{} requests", sent.len());
        assert!(sent.len() >= 5 * 19, "{} requests", sent.len());
        for window in [Duration::from_secs(5), Duration::from_secs(10)] {
            for (i, at) in sent.iter().enumerate() {
                let within = sent[i..].iter().take_while(|t| **t < *at + window).count();
                let most = 5.0 * window.as_secs_f64() + 5.0;
                assert!(
                    within as f64 <= most,
                    "{within} within {window:?} of {at:?}"
                );
            }
        }
        let granted = source.granted.load(Ordering::Relaxed);
        assert!(granted as usize >= sent.len(), "{granted} < {}", sent.len());
        // Each lease served every waiter at that moment.
        assert!(
            (source.leases.load(Ordering::Relaxed) as usize) < sent.len() * 3,
            "{} leases",
            source.leases.load(Ordering::Relaxed)
        );
    }

    /// A write waiting in one budget is served before reads queued in the others, and the
    /// budgets fall back to their share of the rate while the source is down.
    #[tokio::test(start_paused = true)]
    async fn writes_go_first_across_budgets_and_a_lost_source_leaves_a_share() {
        let source = FakeSource::new(5.0);
        let readers = Arc::new(RequestBudget::from_source(5.0, source.clone(), 2));
        let writer = Arc::new(RequestBudget::from_source(5.0, source.clone(), 2));
        let start = Instant::now();
        let reads = Arc::new(AtomicU64::new(0));
        let read_tasks: Vec<_> = (0..16)
            .map(|_| {
                let (budget, reads) = (readers.clone(), reads.clone());
                tokio::spawn(async move {
                    while start.elapsed() < Duration::from_secs(10) {
                        budget.acquire().await;
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = reads.load(Ordering::Relaxed);
        let ((), _) = for_write(writer.acquire()).await;
        let reads_meanwhile = reads.load(Ordering::Relaxed) - before;
        // The readers' tokens already leased (at most a burst) may go first; no more.
        assert!(reads_meanwhile <= 5, "{reads_meanwhile} reads went first");

        // The source goes down: each budget sends at its share (5 / 3 holders).
        source.down.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = reads.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = reads.load(Ordering::Relaxed) - before;
        assert!(readers.on_fallback());
        assert!(
            during <= 6,
            "{during} reads in 3 s at a share of 5/3 per second"
        );
        assert!(
            during >= 3,
            "{during} reads in 3 s: the fallback still sends"
        );
        source.down.store(false, Ordering::Relaxed);
        for t in read_tasks {
            t.await.unwrap();
        }
        assert!(!readers.on_fallback());
    }
}
