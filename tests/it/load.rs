//! A small, bounded load generator over raw HTTP/1.1, so a test controls exactly when a
//! client hangs up, and records which deliveries were acknowledged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::common::WEBHOOK_TOKEN;

/// How a client behaves for one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Sends the request and reads the whole answer.
    Patient,
    /// Hangs up after part of the headers.
    QuitsInHeaders,
    /// Hangs up after part of the body.
    QuitsInBody,
    /// Sends the whole request, then hangs up after a short random wait.
    QuitsAwaitingAnswer,
}

/// What one delivery got.
#[derive(Debug, Clone)]
pub struct Answer {
    pub body: String,
    pub client: Client,
    /// HTTP status, when an answer was read.
    pub status: Option<u16>,
    /// `id` of a 200 answer.
    pub id: Option<i64>,
    pub retry_after: bool,
    pub elapsed: Duration,
}

/// Totals over a run.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: usize,
    pub ok: usize,
    pub unavailable: usize,
    pub other_status: usize,
    pub hung_up: usize,
    pub no_answer: usize,
}

impl Tally {
    pub fn of(answers: &[Answer]) -> Tally {
        let mut t = Tally {
            sent: answers.len(),
            ..Tally::default()
        };
        for a in answers {
            match (a.client, a.status) {
                (_, Some(200)) => t.ok += 1,
                (_, Some(503)) => t.unavailable += 1,
                (_, Some(_)) => t.other_status += 1,
                (Client::Patient, None) => t.no_answer += 1,
                (_, None) => t.hung_up += 1,
            }
        }
        t
    }
}

/// A realistic customer delivery of about 1.5 KB, unique per `(run, n)`.
pub fn delivery(run: &str, n: usize) -> String {
    json!({
        "event": "customer.created",
        "key": format!("cus_{run}_{n}"),
        "customer_key": format!("acct-{run}-{n}"),
        "email": format!("customer{n}@example.com"),
        "name": format!("Customer {n}"),
        "partner_key": format!("partner_{}", n % 97),
        "partnership_key": format!("part_{}", n % 97),
        "provider_key": format!("cus_stripe_{n:012}"),
        "source_key": "stripe",
        "source_type": "integration",
        "test": false,
        "created_at": 1_700_000_000_000_i64 + n as i64,
        "updated_at": 1_700_000_000_000_i64 + n as i64,
        "meta": {},
        "fields": {"plan": "pro", "seats": 5, "region": "eu-west-1"},
        "mdata": {"notes": "x".repeat(900)},
    })
    .to_string()
}

/// Sends every body once, `concurrency` at a time, each on its own connection; a
/// `quitter_share` fraction of clients hang up at random points. Bounded by `deadline`
/// per request.
pub async fn run(
    addr: SocketAddr,
    bodies: Vec<String>,
    concurrency: usize,
    quitter_share: f64,
    seed: u64,
    deadline: Duration,
) -> Vec<Answer> {
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tasks = Vec::with_capacity(bodies.len());
    for body in bodies {
        let client = if rng.random_bool(quitter_share) {
            match rng.random_range(0..3) {
                0 => Client::QuitsInHeaders,
                1 => Client::QuitsInBody,
                _ => Client::QuitsAwaitingAnswer,
            }
        } else {
            Client::Patient
        };
        let wait = Duration::from_micros(rng.random_range(0..20_000));
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            send(addr, body, client, wait, deadline).await
        }));
    }
    let mut answers = Vec::with_capacity(tasks.len());
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

/// One delivery on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    body: String,
    client: Client,
    wait: Duration,
    deadline: Duration,
) -> Answer {
    let started = Instant::now();
    let result = tokio::time::timeout(deadline, exchange(addr, &body, client, wait)).await;
    let (status, id, retry_after) = match result {
        Ok(Some((status, retry_after, text))) => {
            let id = (status == 200)
                .then(|| serde_json::from_str::<Value>(&text).ok()?["id"].as_i64())
                .flatten();
            (Some(status), id, retry_after)
        }
        _ => (None, None, false),
    };
    Answer {
        body,
        client,
        status,
        id,
        retry_after,
        elapsed: started.elapsed(),
    }
}

async fn exchange(
    addr: SocketAddr,
    body: &str,
    client: Client,
    wait: Duration,
) -> Option<(u16, bool, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "POST /webhooks/partnerstack/{WEBHOOK_TOKEN} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    match client {
        Client::QuitsInHeaders => {
            stream
                .write_all(&head.as_bytes()[..head.len() / 2])
                .await
                .ok()?;
            tokio::time::sleep(wait).await;
            return None;
        }
        Client::QuitsInBody => {
            stream.write_all(head.as_bytes()).await.ok()?;
            stream
                .write_all(&body.as_bytes()[..body.len() / 2])
                .await
                .ok()?;
            tokio::time::sleep(wait).await;
            return None;
        }
        Client::QuitsAwaitingAnswer => {
            stream.write_all(head.as_bytes()).await.ok()?;
            stream.write_all(body.as_bytes()).await.ok()?;
            tokio::time::sleep(wait).await;
            // If the answer already came, read it: a hang-up that came too late is not one.
            let mut buf = vec![0u8; 4096];
            return match tokio::time::timeout(Duration::ZERO, stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => parse(&buf[..n]),
                _ => None,
            };
        }
        Client::Patient => {
            stream.write_all(head.as_bytes()).await.ok()?;
            stream.write_all(body.as_bytes()).await.ok()?;
        }
    }
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    parse(&response)
}

fn parse(response: &[u8]) -> Option<(u16, bool, String)> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let retry_after = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("retry-after:"));
    // A complete 200 answer ends with its JSON; a partial read is not an acknowledgement.
    if status == 200 && serde_json::from_str::<Value>(body).is_err() {
        return None;
    }
    Some((status, retry_after, body.to_string()))
}

/// Checks that every acknowledged delivery is stored under the id it was given, with its
/// exact bytes.
pub async fn assert_acknowledged_are_stored(pool: &sqlx::PgPool, answers: &[Answer]) {
    let acked: Vec<&Answer> = answers.iter().filter(|a| a.status == Some(200)).collect();
    let ids: Vec<i64> = acked
        .iter()
        .map(|a| a.id.expect("200 carries an id"))
        .collect();
    let stored: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, body FROM webhook_events WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await
            .unwrap();
    let stored: std::collections::HashMap<i64, String> = stored.into_iter().collect();
    let mut lost = 0;
    for a in &acked {
        if stored.get(&a.id.unwrap()) != Some(&a.body) {
            lost += 1;
        }
    }
    assert_eq!(
        lost, 0,
        "{lost} acknowledged deliveries are not stored as acknowledged"
    );
}
