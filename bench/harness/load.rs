//! A lean HTTP/1.1 load generator on hyper's connection API: keep-alive connections, one
//! request at a time each, so the client costs as little CPU as possible on a machine the
//! service and Postgres share.
//!
//! Closed loop ([`closed`]): N connections send back to back for a fixed time (maximum
//! throughput). Open loop ([`open`]): requests are scheduled at a fixed rate and latency
//! is measured from the scheduled instant, so a stall is charged to every request it
//! delays (no coordinated omission).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What to send: a method, a path and a body, as a function of a sequence number.
pub trait Workload: Send + Sync + 'static {
    fn request(&self, n: u64) -> Request<Full<Bytes>>;
}

/// Unique, realistic webhook deliveries (about 1.5 KB).
pub struct Deliveries {
    pub path: String,
    pub run: String,
}

impl Workload for Deliveries {
    fn request(&self, n: u64) -> Request<Full<Bytes>> {
        let body = delivery(&self.run, n);
        Request::post(&self.path)
            .header("host", "bench")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("static request parts are valid")
    }
}

/// GETs with a bearer token; `paths` are cycled through.
pub struct Gets {
    pub paths: Vec<String>,
    pub token: String,
}

impl Workload for Gets {
    fn request(&self, n: u64) -> Request<Full<Bytes>> {
        let path = &self.paths[(n as usize) % self.paths.len()];
        Request::get(path)
            .header("host", "bench")
            .header("authorization", format!("Bearer {}", self.token))
            .body(Full::new(Bytes::new()))
            .expect("static request parts are valid")
    }
}

/// A PartnerStack-shaped customer delivery, unique per `(run, n)`, about 1.5 KB.
pub fn delivery(run: &str, n: u64) -> String {
    format!(
        concat!(
            r#"{{"event":"customer.created","key":"cus_{run}_{n}","customer_key":"acct-{run}-{n}","#,
            r#""email":"customer{n}@example.com","name":"Customer {n}","partner_key":"partner_{p}","#,
            r#""partnership_key":"part_{p}","provider_key":"cus_stripe_{n:012}","source_key":"stripe","#,
            r#""source_type":"integration","test":false,"created_at":{ts},"updated_at":{ts},"meta":{{}},"#,
            r#""fields":{{"plan":"pro","seats":5,"region":"eu-west-1"}},"mdata":{{"notes":"{pad}"}}}}"#
        ),
        run = run,
        n = n,
        p = n % 997,
        ts = 1_700_000_000_000_u64 + n,
        pad = PAD,
    )
}

const PAD: &str = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor \
incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation \
ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit in \
voluptate velit esse cillum dolore eu fugiat nulla pariatur. Excepteur sint occaecat cupidatat non \
proident, sunt in culpa qui officia deserunt mollit anim id est laborum. Sed ut perspiciatis unde \
omnis iste natus error sit voluptatem accusantium doloremque laudantium, totam rem aperiam, eaque \
ipsa quae ab illo inventore veritatis et quasi architecto beatae vitae dicta sunt explicabo. Nemo \
enim ipsam voluptatem quia voluptas sit aspernatur aut odit aut fugit, sed quia consequuntur magni \
dolores eos qui ratione voluptatem sequi nesciunt. Neque porro quisquam est, qui dolorem ipsum.";

/// Outcome of a run.
#[derive(Debug, Default)]
pub struct Stats {
    pub ok: u64,
    /// Successes during the warm-up (not in `ok`, rates or latencies).
    pub warmup_ok: u64,
    pub failed: u64,
    /// Latencies of successful requests, microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// When each successful request of an open-loop run was answered, by sequence number.
    pub answered: Vec<(u64, Instant)>,
    pub elapsed: Duration,
    /// The measured window by the wall clock (after the warm-up), to compare with times
    /// Postgres recorded.
    pub window: Option<(SystemTime, SystemTime)>,
}

impl Stats {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latencies_us, q)
    }

    fn merge(parts: Vec<Stats>, elapsed: Duration) -> Stats {
        let mut s = Stats {
            elapsed,
            ..Stats::default()
        };
        for p in parts {
            s.ok += p.ok;
            s.warmup_ok += p.warmup_ok;
            s.failed += p.failed;
            s.latencies_us.extend(p.latencies_us);
            s.answered.extend(p.answered);
        }
        s.latencies_us.sort_unstable();
        s
    }
}

/// The `q` quantile (0..=1) of `sorted_us` (microseconds, sorted), in milliseconds; NaN
/// when there are none.
pub fn quantile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    sorted_us[i] as f64 / 1000.0
}

pub type Sender = http1::SendRequest<Full<Bytes>>;

pub async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request; true on a 2xx with its whole body read.
async fn exchange(sender: &mut Sender, request: Request<Full<Bytes>>) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    match sender.send_request(request).await {
        Ok(response) => {
            let ok = response.status().is_success();
            ok && response.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

/// Polls `path` (a GET with a bearer token) on one connection until it answers 200:
/// returns when that answer was read, or `None` past `deadline`. Polls every `every`.
pub async fn poll_until_found(
    sender: &mut Option<Sender>,
    addr: SocketAddr,
    path: &str,
    token: &str,
    every: Duration,
    deadline: Instant,
) -> Option<Instant> {
    while Instant::now() < deadline {
        if sender.is_none() {
            *sender = connect(addr).await.ok();
        }
        let Some(s) = sender.as_mut() else {
            tokio::time::sleep(every).await;
            continue;
        };
        let request = Request::get(path)
            .header("host", "bench")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .expect("static request parts are valid");
        let found = match s.ready().await {
            Ok(()) => match s.send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    let read = response.into_body().collect().await.is_ok();
                    if !read {
                        *sender = None;
                    }
                    read && status.is_success()
                }
                Err(_) => {
                    *sender = None;
                    false
                }
            },
            Err(_) => {
                *sender = None;
                false
            }
        };
        if found {
            return Some(Instant::now());
        }
        tokio::time::sleep(every).await;
    }
    None
}

/// `connections` clients sending back to back for `duration` (after `warmup`, which is
/// not counted).
pub async fn closed<W: Workload>(
    addr: SocketAddr,
    workload: Arc<W>,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Stats> {
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + warmup;
    let end = start + duration;
    let wall_start = SystemTime::now() + warmup;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut sender = connect(addr).await?;
        let (workload, counter) = (workload.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if sender.ready().await.is_err() {
                    // The server closed the connection after its last answer (nginx does
                    // after `keepalive_requests`): nothing was sent; open another.
                    match connect(addr).await {
                        Ok(s) => sender = s,
                        Err(_) => stats.failed += 1,
                    }
                    continue;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let ok = exchange(&mut sender, workload.request(n)).await;
                if now >= start {
                    if ok {
                        stats.ok += 1;
                        stats.latencies_us.push(now.elapsed().as_micros() as u64);
                    } else {
                        stats.failed += 1;
                    }
                } else if ok {
                    stats.warmup_ok += 1;
                } else {
                    stats.failed += 1;
                }
                if !ok && let Ok(s) = connect(addr).await {
                    sender = s;
                }
            }
            stats
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await?);
    }
    let mut stats = Stats::merge(parts, duration);
    stats.window = Some((wall_start, wall_start + duration));
    Ok(stats)
}

/// Requests scheduled at `rate` per second for `duration`, served by up to `connections`
/// connections; latency counts from each request's scheduled instant. Each success is
/// also sent to `answers` (sequence number, when the answer was read), when given.
pub async fn open<W: Workload>(
    addr: SocketAddr,
    workload: Arc<W>,
    rate: f64,
    connections: usize,
    duration: Duration,
    answers: Option<mpsc::UnboundedSender<(u64, Instant)>>,
) -> anyhow::Result<Stats> {
    let total = (rate * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(200);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut sender = connect(addr).await?;
        let (workload, next, answers) = (workload.clone(), next.clone(), answers.clone());
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let scheduled = start + interval.mul_f64(n as f64);
                tokio::time::sleep_until(scheduled.into()).await;
                let ok = exchange(&mut sender, workload.request(n)).await;
                if ok {
                    stats.ok += 1;
                    let at = Instant::now();
                    stats.answered.push((n, at));
                    if let Some(answers) = &answers {
                        let _ = answers.send((n, at));
                    }
                    stats
                        .latencies_us
                        .push(scheduled.elapsed().as_micros() as u64);
                } else {
                    stats.failed += 1;
                    if let Ok(s) = connect(addr).await {
                        sender = s;
                    }
                }
            }
            stats
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await?);
    }
    Ok(Stats::merge(parts, duration))
}
