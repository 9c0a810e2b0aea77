//! `GET /status`: a small HTML page, rendered on the server, for people.
//!
//! It answers "is the sync healthy?" at a glance: per stream, when its last pass ended,
//! what it changed and repaired, its worst-case staleness, its error and back-off; webhook
//! deliveries per minute by outcome and by event type; the backlog and apply lag; the
//! request budget; relay endpoints. It refreshes itself (a meta refresh: no JavaScript)
//! and loads nothing from elsewhere.
//!
//! It is open like `/metrics`, so it shows counts, times and stream names only: never an
//! object's key, a name, an email, a payload, a token or a URL's credentials. Error texts
//! pass through [`redact`] first. Every dynamic value is HTML-escaped by the [`Html`]
//! writer.
//!
//! The figures come from the read models the JSON routes serve (`GET /v1/sync`:
//! [`reconcile::status`]; `GET /v1/relay`: [`relay::status`]), so the page and the API
//! cannot disagree.
//!
//! Layout: [`Snapshot::load`] reads everything, then each section is one function of
//! [`SECTIONS`] writing one `<section>` from the snapshot. A new section adds its figures
//! to [`Snapshot`] and its function to [`SECTIONS`].

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, DurationRound as _, SecondsFormat, Utc};
use partnerstack::Entity;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::db::events::{self, MinuteCount, Outcome};
use crate::error::ApiError;
use crate::reconcile::{self, status::StreamStatus, status::SyncStatus};
use crate::relay::{self, status::RelayStatus};
use crate::state::AppState;

/// Seconds between the page's own reloads.
pub const REFRESH_SECONDS: u32 = 10;
/// Minutes of webhook deliveries shown.
pub const WINDOW_MINUTES: i64 = 15;
/// Most deliveries read to count the window's (bounds the page's cost at any rate).
const ACTIVITY_CAP: i64 = 100_000;
/// Stored deliveries counted per outcome in the backlog, at most.
const COUNT_CAP: i64 = 10_000;
/// Event types listed; the rest are summed in one line.
const EVENT_TYPES_SHOWN: usize = 20;
/// Longest error text shown (characters).
const ERROR_CHARS: usize = 240;
/// The outcomes the backlog section counts, each with a link to its deliveries.
const BACKLOG: [Outcome; 4] = [
    Outcome::Pending,
    Outcome::Error,
    Outcome::Unresolved,
    Outcome::Unconfirmed,
];

/// The page's sections, in order: each writes one `<section>` from the snapshot.
const SECTIONS: &[fn(&Snapshot, &mut Html)] =
    &[streams, webhooks, backlog, writes_outbox, budget, relay];

/// The service's health on one page (HTML; no personal data, no secrets).
#[utoipa::path(
    get, path = "/status", tag = "operations",
    responses(
        (status = 200, description = "An HTML page that reloads itself every 10 s: streams, \
            webhook deliveries per minute, backlog and apply lag, request budget, relay \
            endpoints. Counts and times only.", body = String, content_type = "text/html"),
        (status = 404, description = "The page is turned off (`server.status_page`)", body = crate::error::ErrorBody),
        (status = 503, description = "The database did not answer (an HTML page that retries)", body = String, content_type = "text/html"),
    ),
)]
pub async fn status_page(State(state): State<AppState>) -> Response {
    if !state.config.server.status_page {
        return ApiError::not_found("the status page is off (server.status_page)").into_response();
    }
    let (status, body) = match Snapshot::load(&state).await {
        Ok(snapshot) => (StatusCode::OK, render(&snapshot)),
        Err(e) => {
            // The conversion logs the cause (once per burst) and sorts it: 503 or 500.
            let status = ApiError::from(e).status();
            (status, render_failure(status))
        }
    };
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// Everything the page shows, read at one moment.
#[derive(Debug)]
pub struct Snapshot {
    pub now: DateTime<Utc>,
    /// What `GET /v1/sync` answers.
    pub sync: SyncStatus,
    /// What `GET /v1/relay` answers.
    pub relay: RelayStatus,
    /// Deliveries received within the window, per minute, outcome and event type.
    pub activity: Vec<MinuteCount>,
    /// The window held more deliveries than were read: its earliest minutes are short.
    pub activity_capped: bool,
    /// Stored deliveries per outcome of [`BACKLOG`], each counted up to [`COUNT_CAP`].
    pub backlog: Vec<(Outcome, i64)>,
    /// When the oldest pending delivery was received.
    pub oldest_pending: Option<DateTime<Utc>>,
    /// Deliveries waiting in memory for the writer.
    pub queued: usize,
    /// The PartnerStack request budget, when the reconciler runs.
    pub budget: Option<Budget>,
    /// The write outbox, when writes can be sent.
    pub writes: Option<crate::db::writes::Summary>,
}

/// The PartnerStack client's request budget and use.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub requests_per_second: f64,
    /// Requests sent since start, retries included.
    pub sent: u64,
    /// The share of the budget full scans of poll-only streams may use.
    pub scan_share: f64,
}

impl Snapshot {
    /// Reads the page's figures: a handful of short, bounded reads, one after the other
    /// (a page load holds one pooled connection at a time).
    pub async fn load(state: &AppState) -> Result<Snapshot, sqlx::Error> {
        let now = Utc::now();
        let sync =
            reconcile::status::load(&state.pool, &state.config, state.reconciler.as_ref()).await?;
        let relay = relay::status::load(&state.pool, &state.config.relay).await?;
        // From the start of the oldest minute shown (the current one is the newest).
        let since = now
            .duration_trunc(chrono::TimeDelta::minutes(1))
            .unwrap_or(now)
            - chrono::Duration::minutes(WINDOW_MINUTES - 1);
        let (activity, activity_capped) =
            events::recent_activity(&state.pool, since, ACTIVITY_CAP).await?;
        let mut backlog = Vec::with_capacity(BACKLOG.len());
        for outcome in BACKLOG {
            backlog.push((
                outcome,
                events::count_outcome(&state.pool, outcome, COUNT_CAP).await?,
            ));
        }
        let oldest_pending = events::oldest_pending(&state.pool).await?;
        let writes = match &state.outbox {
            Some(_) => Some(crate::db::writes::summary(&state.pool).await?),
            None => None,
        };
        let budget = state.reconciler.as_ref().map(|r| Budget {
            requests_per_second: r.requests_per_second(),
            sent: r.requests_sent(),
            scan_share: r.config().scan_share,
        });
        Ok(Snapshot {
            now,
            sync,
            relay,
            activity,
            activity_capped,
            backlog,
            oldest_pending,
            queued: state.writer.queued(),
            budget,
            writes,
        })
    }
}

/// The page.
pub fn render(snapshot: &Snapshot) -> String {
    let mut html = Html::default();
    head(&mut html);
    html.raw("<header><h1>partnerstack-sync</h1><p>");
    html.text(&format!(
        "version {} · as of {} UTC",
        env!("CARGO_PKG_VERSION"),
        snapshot.now.format("%Y-%m-%d %H:%M:%S")
    ));
    html.raw(" · reloads every ");
    html.text(&REFRESH_SECONDS.to_string());
    html.raw(" s · reconciler: <span data-field=\"reconciler\">");
    let sync = &snapshot.sync;
    html.text(match (sync.enabled, sync.leader) {
        (false, _) => "off",
        (true, true) => "leading (this replica reconciles)",
        (true, false) => "standing by (another replica reconciles)",
    });
    html.raw("</span></p></header>\n<main>\n");
    for section in SECTIONS {
        section(snapshot, &mut html);
    }
    html.raw(
        "</main>\n<footer><p>The same figures as JSON: <code>GET /v1/sync</code>, \
         <code>GET /v1/relay</code>, <code>GET /v1/events</code> (with the API token); \
         <a href=\"/metrics\">/metrics</a> where it is served.</p></footer>\n</body></html>\n",
    );
    html.0
}

/// The page when its figures cannot be read: it says so and keeps reloading.
fn render_failure(status: StatusCode) -> String {
    let mut html = Html::default();
    head(&mut html);
    html.raw("<header><h1>partnerstack-sync</h1></header>\n<main><p class=\"bad\">");
    html.text(&format!(
        "The status could not be read ({status}): the database did not answer. This page \
         tries again every {REFRESH_SECONDS} s; the service's log has the cause."
    ));
    html.raw("</p></main>\n</body></html>\n");
    html.0
}

fn head(html: &mut Html) {
    html.raw("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    html.raw(&format!(
        "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">"
    ));
    html.raw(
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>partnerstack-sync status</title><style>\
         body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
         h1{font-size:1.4em;margin:0}h2{font-size:1.1em;margin:1.6em 0 .4em}\
         header p,.note{color:#666}\
         table{border-collapse:collapse}th,td{padding:.25em .6em;border-bottom:1px solid #ddd;\
         text-align:left;vertical-align:top}td.n{text-align:right}\
         th{background:#f4f4f4}td.text{max-width:32em}\
         .ok{color:#176b2c}.bad{color:#b00020}.warn{color:#8a5a00}\
         </style></head><body>\n",
    );
}

/// Streams: one row per stream, all seven, in [`Entity::ALL`] order.
fn streams(snapshot: &Snapshot, html: &mut Html) {
    let now = snapshot.now;
    html.raw("<section id=\"streams\"><h2>Streams</h2>\n<table><thead><tr>");
    for heading in [
        "Stream",
        "Kept fresh by",
        "Last pass ended",
        "Changed",
        "Repaired",
        "Repaired in total",
        "Requests",
        "Worst-case staleness",
        "Now",
        "Failures and back-off",
        "Error",
    ] {
        html.raw("<th>");
        html.text(heading);
        html.raw("</th>");
    }
    html.raw("</tr></thead><tbody>\n");
    for entity in Entity::ALL {
        let name = entity.stream();
        html.raw("<tr id=\"stream-");
        html.text(name);
        html.raw("\">");
        html.cell("stream", name);
        match snapshot.sync.streams.iter().find(|s| s.stream.0 == entity) {
            Some(stream) => stream_cells(stream, now, html),
            None => {
                html.raw("<td class=\"text\" colspan=\"10\" data-field=\"note\">");
                html.text(if snapshot.sync.enabled {
                    "no pass yet"
                } else {
                    "not reconciled (the reconciler is off)"
                });
                html.raw("</td>");
            }
        }
        html.raw("</tr>\n");
    }
    html.raw(
        "</tbody></table>\n<p class=\"note\">Changed and repaired: rows the last pass \
         created or changed, and of those, the ones no webhook had delivered (the measured \
         webhook loss; a stream's first pass repairs nothing). Worst-case staleness: a \
         change made upstream this long ago may not be in the copy yet (webhooks usually do \
         far better).</p></section>\n",
    );
}

fn stream_cells(stream: &StreamStatus, now: DateTime<Utc>, html: &mut Html) {
    html.cell(
        "coverage",
        if stream.enabled {
            stream.coverage.as_str()
        } else {
            "not reconciled here"
        },
    );
    // The last pass that ended.
    html.raw("<td data-field=\"last\">");
    match &stream.last {
        Some(last) => {
            if let Some(finished) = last.finished_at {
                html.time(finished, now);
            }
            let ok = last
                .status
                .is_some_and(|s| s == crate::db::sync::PassStatus::Ok);
            html.raw(if ok {
                " <span class=\"ok\">"
            } else {
                " <span class=\"bad\">"
            });
            html.text(&format!(
                "{}{}",
                last.status.map_or("?", |s| s.as_str()),
                last.kind.map(|k| format!(", {k}")).unwrap_or_default()
            ));
            html.raw("</span>");
        }
        None => html.text("never"),
    }
    html.raw("</td>");
    let last = stream.last.as_ref().map(|l| l.counts);
    html.number("changed", last.map(|c| c.changed));
    html.number("repairs", last.map(|c| c.repairs));
    html.number("total_repairs", Some(stream.total_repairs));
    html.number("requests", last.map(|c| c.requests));
    // Staleness, against the bound where full scans keep the stream fresh.
    html.raw("<td data-field=\"staleness\">");
    match stream.staleness_seconds {
        Some(s) => html.text(&human_duration(s)),
        None => html.text("unknown (no completed pass)"),
    }
    html.raw("</td>");
    // What runs now.
    match &stream.in_progress {
        Some(pass) => html.cell(
            "now",
            &format!(
                "{} pass, {} pages so far",
                pass.kind.map_or("a", |k| k.as_str()),
                grouped(pass.counts.pages)
            ),
        ),
        None if stream.requested_at.is_some() => html.cell("now", "pass requested"),
        None => html.cell("now", "idle"),
    }
    html.raw("<td data-field=\"failures\">");
    if stream.failures == 0 {
        html.text("none");
    } else {
        html.raw("<span class=\"bad\">");
        html.text(&format!("{} in a row", stream.failures));
        html.raw("</span>");
        if let Some(at) = stream.next_attempt_at {
            html.text(&format!(
                "; next try in {}",
                human_duration((at - now).num_seconds().max(0) as u64)
            ));
        }
    }
    html.raw("</td>");
    let error = stream.last.as_ref().and_then(|l| l.error.as_deref());
    html.raw("<td class=\"text\" data-field=\"error\">");
    if let Some(error) = error {
        html.text(&redact(error));
    }
    html.raw("</td>");
    if let Some(bound) = stream.staleness_bound_seconds
        && stream.achievable_staleness_seconds > bound
    {
        // Shown under the row, where it cannot be missed.
        html.raw("</tr>\n<tr class=\"warn\"><td></td><td class=\"text\" colspan=\"10\">");
        html.text(&format!(
            "The request budget cannot meet the staleness bound of {}: about {} is achievable.",
            human_duration(bound),
            human_duration(stream.achievable_staleness_seconds)
        ));
        html.raw("</td>");
    }
}

/// Webhook deliveries in the window: per minute by outcome, and per event type.
fn webhooks(snapshot: &Snapshot, html: &mut Html) {
    html.raw("<section id=\"webhooks\"><h2>");
    html.text(&format!(
        "Webhook deliveries, last {WINDOW_MINUTES} minutes"
    ));
    html.raw("</h2>\n");
    let total: i64 = snapshot.activity.iter().map(|m| m.count).sum();
    if total == 0 {
        html.raw("<p data-field=\"webhooks\">");
        html.text(&format!(
            "None received in the last {WINDOW_MINUTES} minutes."
        ));
        html.raw("</p></section>\n");
        return;
    }
    // Per minute and outcome; only outcomes that occur get a row.
    let outcomes: Vec<Outcome> = Outcome::ALL
        .iter()
        .copied()
        .filter(|o| snapshot.activity.iter().any(|m| m.outcome == *o))
        .collect();
    let mut per_minute: BTreeMap<DateTime<Utc>, BTreeMap<Outcome, i64>> = BTreeMap::new();
    for m in &snapshot.activity {
        *per_minute
            .entry(m.minute)
            .or_default()
            .entry(m.outcome)
            .or_default() += m.count;
    }
    // A timeline: one column per minute, oldest first; one row per outcome, then all.
    let newest = snapshot
        .now
        .duration_trunc(chrono::TimeDelta::minutes(1))
        .unwrap_or(snapshot.now);
    let minutes: Vec<DateTime<Utc>> = (0..WINDOW_MINUTES)
        .rev()
        .map(|back| newest - chrono::Duration::minutes(back))
        .collect();
    html.raw("<table id=\"per-minute\"><thead><tr><th>Outcome, per minute (UTC)</th>");
    for minute in &minutes {
        html.raw("<th>");
        html.text(&minute.format("%H:%M").to_string());
        html.raw("</th>");
    }
    html.raw("</tr></thead><tbody>\n");
    let rows = outcomes
        .iter()
        .map(|o| (o.as_str(), Some(*o)))
        .chain([("all", None)]);
    for (name, outcome) in rows {
        html.raw("<tr id=\"outcome-");
        html.text(name);
        html.raw("\"><td>");
        html.text(name);
        html.raw("</td>");
        for minute in &minutes {
            let counts = per_minute.get(minute);
            let n = match outcome {
                Some(o) => counts.and_then(|c| c.get(&o)).copied().unwrap_or(0),
                None => counts.map_or(0, |c| c.values().sum()),
            };
            html.number(&minute.format("%H:%M").to_string(), Some(n));
        }
        html.raw("</tr>\n");
    }
    html.raw("</tbody></table>\n");
    // Per event type, most frequent first.
    let mut per_type: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for m in &snapshot.activity {
        let entry = per_type
            .entry(m.event_type.as_deref().unwrap_or("(none)"))
            .or_default();
        entry.0 += m.count;
        if matches!(m.outcome, Outcome::Applied | Outcome::Stale) {
            entry.1 += m.count;
        }
    }
    let mut types: Vec<(&str, (i64, i64))> = per_type.into_iter().collect();
    types.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
    html.raw(
        "<table id=\"per-type\"><thead><tr><th>Event type</th><th>Deliveries</th>\
         <th>Per minute</th><th>Applied or stale</th></tr></thead><tbody>\n",
    );
    for (name, (count, applied)) in types.iter().take(EVENT_TYPES_SHOWN) {
        html.raw("<tr>");
        html.cell("type", &truncate(name, 64));
        html.number("deliveries", Some(*count));
        html.cell(
            "per_minute",
            &format!("{:.1}", *count as f64 / WINDOW_MINUTES as f64),
        );
        html.number("applied", Some(*applied));
        html.raw("</tr>\n");
    }
    if types.len() > EVENT_TYPES_SHOWN {
        let rest: i64 = types[EVENT_TYPES_SHOWN..].iter().map(|t| t.1.0).sum();
        html.raw("<tr>");
        html.cell(
            "type",
            &format!("{} other types", types.len() - EVENT_TYPES_SHOWN),
        );
        html.number("deliveries", Some(rest));
        html.raw("<td></td><td></td></tr>\n");
    }
    html.raw("</tbody></table>\n");
    if snapshot.activity_capped {
        html.raw("<p class=\"note warn\">");
        html.text(&format!(
            "More than {} deliveries in the window: only the most recent were counted, so \
             the earliest minutes are short.",
            grouped(ACTIVITY_CAP)
        ));
        html.raw("</p>\n");
    }
    html.raw("</section>\n");
}

/// What waits to be applied or needs a look, and how far behind applying is.
fn backlog(snapshot: &Snapshot, html: &mut Html) {
    html.raw("<section id=\"backlog\"><h2>Backlog</h2>\n<table><tbody>\n");
    for (outcome, count) in &snapshot.backlog {
        html.raw("<tr><td><a href=\"/v1/events?outcome=");
        html.text(outcome.as_str());
        html.raw("\">");
        html.text(match outcome {
            Outcome::Pending => "pending (stored, not applied yet)",
            Outcome::Error => "in error (the data was refused)",
            Outcome::Unresolved => "unresolved (nothing stored matches the body)",
            Outcome::Unconfirmed => "unconfirmed (PartnerStack does not know the object)",
            other => other.as_str(),
        });
        html.raw("</a></td>");
        let shown = if *count >= COUNT_CAP {
            format!("{}+", grouped(COUNT_CAP))
        } else {
            grouped(*count)
        };
        html.raw("<td data-field=\"");
        html.text(outcome.as_str());
        html.raw(if *count > 0 && *outcome != Outcome::Pending {
            "\" class=\"n bad\">"
        } else {
            "\" class=\"n\">"
        });
        html.text(&shown);
        html.raw("</td></tr>\n");
    }
    html.raw(
        "<tr><td>apply lag (age of the oldest pending delivery)</td><td data-field=\"apply_lag\">",
    );
    match snapshot.oldest_pending {
        Some(at) => html.text(&human_duration(
            (snapshot.now - at).num_seconds().max(0) as u64
        )),
        None => html.text("none (nothing pending)"),
    }
    html.raw("</td></tr>\n<tr><td>waiting in memory for the writer</td>");
    html.number("queued", Some(snapshot.queued as i64));
    html.raw(
        "</tr>\n</tbody></table>\n<p class=\"note\">The links list those deliveries \
         (<code>GET /v1/events</code> needs the API token). Deliveries whose object \
         PartnerStack does not know yet stay pending while they are retried.</p></section>\n",
    );
}

/// The write outbox: what is pending, in doubt or failed.
fn writes_outbox(snapshot: &Snapshot, html: &mut Html) {
    html.raw("<section id=\"writes\"><h2>Writes to PartnerStack</h2>\n");
    let Some(w) = &snapshot.writes else {
        html.raw("<p data-field=\"writes\">");
        html.text("Off here (no PartnerStack API keys): writes are answered 409.");
        html.raw("</p></section>\n");
        return;
    };
    html.raw("<table><tbody>\n<tr><td><a href=\"/v1/writes?status=pending\">pending</a></td>");
    html.number("writes_pending", Some(w.pending));
    html.raw(
        "</tr>\n<tr><td>of which in doubt (an answer was lost; looking before sending again)</td>",
    );
    html.number("writes_in_doubt", Some(w.in_doubt));
    html.raw(
        "</tr>\n<tr><td>age of the oldest pending write</td><td data-field=\"writes_oldest\">",
    );
    match w.oldest_pending {
        Some(at) => html.text(&human_duration(
            (snapshot.now - at).num_seconds().max(0) as u64
        )),
        None => html.text("none (nothing pending)"),
    }
    html.raw("</td></tr>\n<tr><td><a href=\"/v1/writes?status=failed\">failed (refused by PartnerStack)</a></td>");
    html.raw(if w.failed > 0 {
        "<td data-field=\"writes_failed\" class=\"n bad\">"
    } else {
        "<td data-field=\"writes_failed\" class=\"n\">"
    });
    html.text(&grouped(w.failed));
    html.raw("</td></tr>\n<tr><td>succeeded in the last hour</td>");
    html.number("writes_succeeded_last_hour", Some(w.succeeded_last_hour));
    html.raw(
        "</tr>\n</tbody></table>\n<p class=\"note\">A failed write is sent again with \
         <code>POST /v1/writes/{id}/retry</code> (needs the API token).</p></section>\n",
    );
}

/// The PartnerStack request budget.
fn budget(snapshot: &Snapshot, html: &mut Html) {
    html.raw("<section id=\"budget\"><h2>PartnerStack request budget</h2>\n");
    match snapshot.budget {
        Some(b) => {
            html.raw("<table><tbody><tr><td>requests per second allowed</td>");
            html.cell("requests_per_second", &format!("{}", b.requests_per_second));
            html.raw("</tr>\n<tr><td>requests sent since start (retries included)</td>");
            html.number("requests_sent", i64::try_from(b.sent).ok());
            html.raw("</tr>\n<tr><td>share full scans of poll-only streams may use</td>");
            html.cell("scan_share", &format!("{:.0}%", b.scan_share * 100.0));
            html.raw(
                "</tr>\n</tbody></table>\n<p class=\"note\">One budget for the reconciler, \
                 webhook verification and writes (which go first). Each stream's requests of its last pass are in the \
                 streams table.</p>",
            );
        }
        None => {
            html.raw("<p data-field=\"budget\">");
            html.text(
                "The reconciler is off here (no PartnerStack API keys, or \
                 PSYNC_RECONCILE_INTERVAL=off).",
            );
            html.raw("</p>");
        }
    }
    html.raw("</section>\n");
}

/// Relay endpoints' progress.
fn relay(snapshot: &Snapshot, html: &mut Html) {
    html.raw("<section id=\"relay\"><h2>Relay endpoints</h2>\n");
    let endpoints = &snapshot.relay.endpoints;
    if endpoints.is_empty() {
        html.raw("<p data-field=\"relay\">");
        html.text("None configured.");
        html.raw("</p></section>\n");
        return;
    }
    html.raw("<table><thead><tr>");
    for heading in [
        "Endpoint",
        "URL",
        "Delivered",
        "Pending",
        "Lag",
        "Last delivery",
        "Failures",
        "Last error",
    ] {
        html.raw("<th>");
        html.text(heading);
        html.raw("</th>");
    }
    html.raw("</tr></thead><tbody>\n");
    for endpoint in endpoints {
        html.raw("<tr id=\"relay-");
        html.text(&endpoint.name);
        html.raw("\">");
        html.cell("name", &endpoint.name);
        html.cell("url", &site(&endpoint.url));
        if !endpoint.started {
            html.raw("<td class=\"text\" colspan=\"6\">");
            html.text("not started yet");
            html.raw("</td></tr>\n");
            continue;
        }
        html.number("delivered", Some(endpoint.delivered));
        html.number("pending", Some(endpoint.pending));
        html.cell(
            "lag",
            &human_duration(endpoint.lag_seconds.max(0.0).round() as u64),
        );
        html.raw("<td data-field=\"last_delivered\">");
        match endpoint.last_delivered_at {
            Some(at) => html.time(at, snapshot.now),
            None => html.text("never"),
        }
        html.raw("</td>");
        html.number("failures", Some(i64::from(endpoint.failures)));
        html.raw("<td class=\"text\" data-field=\"error\">");
        if endpoint.failures > 0
            && let Some(error) = &endpoint.last_error
        {
            html.text(&redact(error));
        }
        html.raw("</td></tr>\n");
    }
    html.raw("</tbody></table></section>\n");
}

/// An HTML document being written: markup goes in as it is, every other text escaped.
#[derive(Default)]
struct Html(String);

impl Html {
    /// Markup written by this module (never data).
    fn raw(&mut self, markup: &str) {
        self.0.push_str(markup);
    }

    /// Text, escaped.
    fn text(&mut self, text: &str) {
        self.0.push_str(&escape(text));
    }

    /// A text cell named `field`.
    fn cell(&mut self, field: &str, text: &str) {
        self.raw("<td data-field=\"");
        self.text(field);
        self.raw("\">");
        self.text(text);
        self.raw("</td>");
    }

    /// A number cell named `field`, right-aligned (empty when unknown).
    fn number(&mut self, field: &str, n: Option<i64>) {
        self.raw("<td data-field=\"");
        self.text(field);
        self.raw("\" class=\"n\">");
        self.text(&n.map(grouped).unwrap_or_default());
        self.raw("</td>");
    }

    /// "3m 05s ago", with the exact time (UTC) in the element.
    fn time(&mut self, at: DateTime<Utc>, now: DateTime<Utc>) {
        let exact = at.to_rfc3339_opts(SecondsFormat::Millis, true);
        self.raw("<time datetime=\"");
        self.text(&exact);
        self.raw("\" title=\"");
        self.text(&exact);
        self.raw("\">");
        let age = (now - at).num_seconds();
        if age >= 0 {
            self.text(&format!("{} ago", human_duration(age as u64)));
        } else {
            self.text(&format!("in {}", human_duration(age.unsigned_abs())));
        }
        self.raw("</time>");
    }
}

/// `text` with `&`, `<`, `>`, `"` and `'` escaped, safe in element content and in quoted
/// attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A duration as people read it: "45s", "3m 05s", "2h 07m", "3d 04h".
pub fn human_duration(seconds: u64) -> String {
    let d = seconds;
    match d {
        0..60 => format!("{d}s"),
        60..3600 => format!("{}m {:02}s", d / 60, d % 60),
        3600..86_400 => format!("{}h {:02}m", d / 3600, d % 3600 / 60),
        _ => format!("{}d {:02}h", d / 86_400, d % 86_400 / 3600),
    }
}

/// A whole number with thousands separators: "12,345".
pub fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An error text made fit for an open page: quoted values (cursors, keys), anything with
/// an `@` (emails), and query strings and credentials of URLs are masked, and the text is
/// cut to [`ERROR_CHARS`]. `GET /v1/sync` and `GET /v1/relay` have the whole text.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(ERROR_CHARS * 4));
    // Quoted values first: a Debug-formatted key or cursor is a quoted string.
    let mut quoted = false;
    let mut unquoted = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '"' {
            if !quoted {
                unquoted.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            unquoted.push(c);
        }
    }
    for (i, word) in unquoted.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if let Some(scheme_at) = word.find("://") {
            // Keep scheme, host and path; drop credentials and the query.
            let rest = &word[scheme_at + 3..];
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let cut = path.find(['?', '#']).unwrap_or(path.len());
            let shown = if path[..cut].contains('@') {
                "/…"
            } else {
                &path[..cut]
            };
            let _ = write!(out, "{}://{host}{shown}", &word[..scheme_at]);
            if cut < path.len() {
                out.push_str("?…");
                // A closing parenthesis after the query, as in "(for url ...)".
                if path.ends_with(')') {
                    out.push(')');
                }
            }
        } else if word.contains('@') {
            out.push('…');
        } else {
            out.push_str(word);
        }
    }
    truncate(&out, ERROR_CHARS)
}

/// A URL's scheme and host only: some endpoints carry a secret in their path.
fn site(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let more = if u.path() == "/" { "" } else { "/…" };
            format!("{}://{host}{port}{more}", u.scheme())
        }
        Err(_) => "…".to_string(),
    }
}

/// At most `chars` characters of `text`, with "…" when cut.
fn truncate(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::sync::{PassCounts, PassKind};
    use crate::reconcile::Coverage;
    use crate::reconcile::status::{PassFigures, StreamName};
    use crate::relay::status::EndpointStatus;

    #[test]
    fn escaping_covers_markup_and_attribute_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn durations_and_numbers_read_as_people_write_them() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(65), "1m 05s");
        assert_eq!(human_duration(3599), "59m 59s");
        assert_eq!(human_duration(7260), "2h 01m");
        assert_eq!(human_duration(3 * 86_400 + 4 * 3600 + 59), "3d 04h");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(-12_345), "-12,345");
    }

    #[test]
    fn redaction_masks_keys_emails_and_url_secrets() {
        let cursor = redact(
            r#"PartnerStack: the cursor "cust_8f2k" of /customers no longer works (400 Bad Request); the list must be read again from the top"#,
        );
        assert!(!cursor.contains("cust_8f2k"), "{cursor}");
        assert!(
            cursor.contains("the cursor \"…\" of /customers"),
            "{cursor}"
        );
        let email = redact("PartnerStack answered 400: no customer jane.doe@example.com here");
        assert!(!email.contains("jane.doe"), "{email}");
        assert!(!email.contains('@'), "{email}");
        let url = redact(
            "gave up after 8 attempts: PartnerStack could not be reached: error sending request \
             (for url http://user:pw@127.0.0.1:9/api/v2/customers?limit=250&starting_after=cust_1)",
        );
        assert!(!url.contains("cust_1"), "{url}");
        assert!(!url.contains("pw"), "{url}");
        assert!(
            url.contains("http://127.0.0.1:9/api/v2/customers?…)"),
            "{url}"
        );
        let long = redact(&"x".repeat(1000));
        assert_eq!(long.chars().count(), ERROR_CHARS + 1);
        // An unbalanced quote masks to the end rather than leaking.
        assert_eq!(redact(r#"a "secret"#), "a \"…\"");
    }

    fn stream(name: &str) -> StreamStatus {
        let at: DateTime<Utc> = "2026-01-01T12:00:00Z".parse().unwrap();
        StreamStatus {
            stream: StreamName(Entity::from_stream(name).unwrap()),
            enabled: true,
            coverage: Coverage::Webhooks,
            staleness_seconds: Some(125),
            staleness_bound_seconds: None,
            achievable_staleness_seconds: 60,
            watermark: Some(at),
            last_full_at: Some(at),
            in_progress: None,
            last: Some(PassFigures {
                kind: Some(PassKind::Incremental),
                started_at: Some(at),
                finished_at: Some(at + chrono::Duration::seconds(3)),
                status: Some(crate::db::sync::PassStatus::Error),
                error: Some(r#"PartnerStack: <b>bad</b> "cust_secret" x@y.z"#.to_string()),
                counts: PassCounts {
                    changed: 1234,
                    repairs: 7,
                    requests: 3,
                    ..PassCounts::default()
                },
            }),
            total_repairs: 42,
            failures: 2,
            next_attempt_at: Some(at + chrono::Duration::seconds(90)),
            requested_at: None,
            runner: Some("host:1:abc".into()),
        }
    }

    fn snapshot() -> Snapshot {
        let now: DateTime<Utc> = "2026-01-01T12:00:30Z".parse().unwrap();
        Snapshot {
            now,
            sync: SyncStatus {
                enabled: true,
                leader: true,
                runner: Some("host:1:abc".into()),
                streams: vec![stream("customers")],
            },
            relay: RelayStatus {
                endpoints: vec![EndpointStatus {
                    name: "billing".into(),
                    url: "https://billing.internal/hooks".into(),
                    entities: None,
                    started: true,
                    position: None,
                    delivered: 10,
                    pending: 2,
                    lag_seconds: 1.4,
                    failures: 1,
                    last_error: Some("endpoint answered 500".into()),
                    last_error_at: Some(now),
                    last_delivered_at: Some(now),
                    runner: None,
                    replay_requested_at: None,
                }],
            },
            activity: vec![
                MinuteCount {
                    minute: "2026-01-01T12:00:00Z".parse().unwrap(),
                    outcome: Outcome::Applied,
                    event_type: Some("customer_created".into()),
                    count: 5,
                },
                MinuteCount {
                    minute: "2026-01-01T11:58:00Z".parse().unwrap(),
                    outcome: Outcome::Error,
                    event_type: Some("<img src=x onerror=alert(1)>".into()),
                    count: 1,
                },
            ],
            activity_capped: false,
            backlog: vec![(Outcome::Pending, 3), (Outcome::Error, COUNT_CAP)],
            oldest_pending: Some(now - chrono::Duration::seconds(75)),
            queued: 0,
            budget: Some(Budget {
                requests_per_second: 5.0,
                sent: 12_345,
                scan_share: 0.5,
            }),
            writes: Some(crate::db::writes::Summary {
                pending: 4,
                in_doubt: 1,
                failed: 2,
                succeeded_last_hour: 1_234,
                oldest_pending: Some(now - chrono::Duration::seconds(30)),
            }),
        }
    }

    #[test]
    fn the_page_shows_the_write_outbox() {
        let page = render(&snapshot());
        assert!(
            page.contains("<td data-field=\"writes_pending\" class=\"n\">4</td>"),
            "{page}"
        );
        assert!(page.contains("<td data-field=\"writes_in_doubt\" class=\"n\">1</td>"));
        assert!(page.contains("<td data-field=\"writes_failed\" class=\"n bad\">2</td>"));
        assert!(
            page.contains("<td data-field=\"writes_oldest\">30s</td>"),
            "{page}"
        );
        let off = render(&Snapshot {
            writes: None,
            ..snapshot()
        });
        assert!(off.contains("answered 409"));
    }

    #[test]
    fn the_page_shows_every_stream_and_escapes_what_it_shows() {
        let page = render(&snapshot());
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
        // No script, nothing loaded from elsewhere.
        assert!(!page.contains("<script"), "{page}");
        assert!(
            !page.contains(" src=\"") && !page.contains("<link"),
            "{page}"
        );
        assert!(
            !page.contains("http://") && !page.contains("//cdn"),
            "{page}"
        );
        for entity in Entity::ALL {
            assert!(
                page.contains(&format!("<tr id=\"stream-{}\">", entity.stream())),
                "{entity:?}"
            );
        }
        assert!(
            page.contains("<td data-field=\"changed\" class=\"n\">1,234</td>"),
            "{page}"
        );
        assert!(page.contains("<td data-field=\"repairs\" class=\"n\">7</td>"));
        assert!(page.contains("<td data-field=\"total_repairs\" class=\"n\">42</td>"));
        assert!(page.contains("<td data-field=\"staleness\">2m 05s</td>"));
        assert!(
            page.contains("2 in a row</span>; next try in 1m 00s"),
            "{page}"
        );
        assert!(page.contains("datetime=\"2026-01-01T12:00:03.000Z\""));
        assert!(page.contains(">27s ago</time>"), "{page}");
        // Error text: escaped and redacted.
        assert!(page.contains("&lt;b&gt;bad&lt;/b&gt;"), "{page}");
        assert!(!page.contains("cust_secret") && !page.contains("x@y.z"));
        // An event type from a delivery is text, never markup.
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!page.contains("<img"));
        // Backlog with links, capped counts, apply lag.
        assert!(page.contains("<a href=\"/v1/events?outcome=pending\">"));
        assert!(page.contains("<a href=\"/v1/events?outcome=error\">"));
        assert!(page.contains("10,000+"));
        assert!(page.contains("<td data-field=\"apply_lag\">1m 15s</td>"));
        assert!(page.contains("<td data-field=\"requests_sent\" class=\"n\">12,345</td>"));
        assert!(page.contains("<tr id=\"relay-billing\">"));
        // Only the endpoint's site: a path may carry a secret.
        assert!(page.contains("<td data-field=\"url\">https://billing.internal/…</td>"));
        // Streams without a row yet say so.
        assert!(page.contains("no pass yet"));
    }

    #[test]
    fn an_unreadable_status_is_a_page_that_keeps_trying() {
        let page = render_failure(StatusCode::SERVICE_UNAVAILABLE);
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
        assert!(page.contains("503 Service Unavailable"));
    }
}
