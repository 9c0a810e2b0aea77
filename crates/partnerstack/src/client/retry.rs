//! When to try a request again, and how long to wait.
//!
//! Everything here runs on tokio's clock, so tests drive it with `tokio::time::pause()`
//! instead of sleeping.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngExt as _;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::Error;
use super::budget::RequestBudget;

/// Exponential backoff with full jitter, and how many attempts a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    /// The cap of the first wait; it doubles with each attempt.
    pub base: Duration,
    /// The longest single wait, a server's `Retry-After` included.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The ceiling of the wait after failed attempt `attempt` (1-based): `base * 2^(attempt-1)`,
    /// capped at `max_backoff`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.base.saturating_mul(factor).min(self.max_backoff)
    }

    /// The wait after failed attempt `attempt`. A server's `Retry-After` is honoured as
    /// given (capped at `max_backoff`); otherwise full jitter: `jitter` (in `0.0..=1.0`)
    /// times the ceiling, so clients that failed together do not retry together.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        match retry_after {
            Some(wait) => wait.min(self.max_backoff),
            None => self.ceiling(attempt).mul_f64(jitter.clamp(0.0, 1.0)),
        }
    }
}

/// The outcome of one attempt, as the retry loop sees it.
#[derive(Debug)]
pub enum Attempt<T> {
    /// Finished, successfully or not; no further attempt.
    Done(Result<T, Error>),
    /// Failed in a way that may pass if repeated (429, 5xx, timeout, connection).
    Retry {
        error: Error,
        retry_after: Option<Duration>,
    },
}

/// Runs `attempt` until it is done or `policy.max_attempts` attempts were made, waiting
/// for the shared `budget` before each attempt and backing off between them. The closure
/// gets the 1-based attempt number.
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    budget: &RequestBudget,
    what: &str,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let max = policy.max_attempts.max(1);
    let mut n = 1;
    loop {
        budget.acquire().await;
        match attempt(n).await {
            Attempt::Done(result) => return result,
            Attempt::Retry { error, .. } if n >= max => {
                return Err(Error::GaveUp {
                    attempts: n,
                    last: Box::new(error),
                });
            }
            Attempt::Retry { error, retry_after } => {
                let wait = policy.delay(n, retry_after, rand::rng().random_range(0.0..=1.0));
                tracing::warn!(
                    request = what,
                    attempt = n,
                    wait_ms = wait.as_millis() as u64,
                    error = %error,
                    "PartnerStack request failed; retrying"
                );
                tokio::time::sleep(wait).await;
                n += 1;
            }
        }
    }
}

/// Reads `Retry-After`: delay-seconds or an HTTP date (a date in the past means now).
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        return Some(Duration::from_secs_f64(seconds.min(86_400.0)));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is a valid RFC 2822 date.
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use reqwest::header::HeaderValue;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
        }
    }

    fn http(status: u16) -> Error {
        Error::Http {
            status: StatusCode::from_u16(status).unwrap(),
            message: "x".into(),
        }
    }

    #[test]
    fn ceilings_double_and_are_capped() {
        let p = policy();
        let ceilings: Vec<u64> = (1..=8).map(|a| p.ceiling(a).as_millis() as u64).collect();
        assert_eq!(
            ceilings,
            vec![250, 500, 1000, 2000, 4000, 8000, 10000, 10000]
        );
        assert_eq!(p.ceiling(u32::MAX), p.max_backoff);
        assert_eq!(p.delay(3, None, 0.0), Duration::ZERO);
        assert_eq!(p.delay(3, None, 0.5), Duration::from_millis(500));
        assert_eq!(p.delay(3, None, 1.0), Duration::from_secs(1));
        // Retry-After wins over the jittered ceiling, but is capped.
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3)), 0.0),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600)), 0.0),
            p.max_backoff
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(500)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Mon, 01 Jan 2024 00:00:42 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(42)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 31 Dec 2023 23:00:00 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }

    /// Retry-After is waited out exactly (on tokio's paused clock), then the call succeeds.
    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_out_on_the_paused_clock() {
        let p = policy();
        let budget = RequestBudget::new(1000.0);
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let result = retry(&p, &budget, "test", |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Attempt::Retry {
                        error: http(429),
                        retry_after: Some(Duration::from_secs(2)),
                    }
                } else {
                    Attempt::Done(Ok(n))
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 3);
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_secs(6) && elapsed < Duration::from_millis(6010),
            "{elapsed:?}"
        );
    }

    /// Without Retry-After, each wait stays under its doubling ceiling, and after
    /// max_attempts the last error comes back wrapped with the count.
    #[tokio::test(start_paused = true)]
    async fn jittered_waits_stay_under_their_ceilings_then_give_up() {
        let p = policy();
        let budget = RequestBudget::new(1000.0);
        let times = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let result: Result<(), Error> = retry(&p, &budget, "test", |_| {
            times.lock().unwrap().push(start.elapsed());
            async {
                Attempt::Retry {
                    error: http(503),
                    retry_after: None,
                }
            }
        })
        .await;
        let err = result.unwrap_err();
        assert!(matches!(err, Error::GaveUp { attempts: 5, .. }), "{err}");
        assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        let times = times.lock().unwrap();
        assert_eq!(times.len(), 5);
        for (i, pair) in times.windows(2).enumerate() {
            let wait = pair[1] - pair[0];
            let ceiling = p.ceiling(i as u32 + 1) + Duration::from_millis(5);
            assert!(wait <= ceiling, "wait {i}: {wait:?} > {ceiling:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_answer_is_not_retried() {
        let budget = RequestBudget::new(1000.0);
        let calls = AtomicU32::new(0);
        let result: Result<(), Error> = retry(&policy(), &budget, "test", |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Attempt::Done(Err(http(400))) }
        })
        .await;
        assert_eq!(result.unwrap_err().status(), Some(StatusCode::BAD_REQUEST));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
