//! The page's markup, written with maud's `html!`: tags and attributes are code, and
//! every value spliced into them (`(value)`) is escaped, in text and in attribute values
//! alike. Nothing in this module writes markup from a string.
//!
//! The page is a header, then [`SECTIONS`]: each a function of the [`Snapshot`] that
//! makes one `<section>`. A table with a row per thing (streams, relay endpoints) is
//! declared as [`Column`]s, a heading and the cell each row shows under it, and drawn
//! by [`table`]: a new column is one entry in its list.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use chrono::{DateTime, DurationRound as _, SecondsFormat, Utc};
use maud::{DOCTYPE, Markup, Render, html};
use partnerstack::Entity;

use super::words::{grouped, human_duration, redact, rounded_duration, site, truncate};
use super::{ACTIVITY_CAP, COUNT_CAP, REFRESH_SECONDS, Snapshot, WINDOW_MINUTES};
use crate::db::events::Outcome;
use crate::db::sync::PassStatus;
use crate::reconcile::Coverage;
use crate::reconcile::status::StreamStatus;
use crate::relay::status::EndpointStatus;

/// Event types listed; the rest are summed in one line.
const EVENT_TYPES_SHOWN: usize = 20;

/// The page's sections, in order: each makes one `<section>` from the snapshot.
const SECTIONS: &[fn(&Snapshot) -> Markup] = &[
    streams,
    webhooks,
    backlog,
    writes_outbox,
    budget,
    relay,
    account_answers,
];

/// The style sheet. It is text in a `<style>` element, so it is escaped like any text:
/// it must hold none of `&<>"` (a test checks that it reaches the page unchanged).
const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
    h1{font-size:1.4em;margin:0}h2{font-size:1.1em;margin:1.6em 0 .4em}\
    header p,.note{color:#666}\
    table{border-collapse:collapse}th,td{padding:.25em .6em;border-bottom:1px solid #ddd;\
    text-align:left;vertical-align:top}td.n{text-align:right}\
    th{background:#f4f4f4}td.text{max-width:32em}\
    .ok{color:#176b2c}.bad{color:#b00020}.warn{color:#8a5a00}";

/// The page.
pub fn render(snapshot: &Snapshot) -> String {
    let reconciler = match (snapshot.sync.enabled, snapshot.sync.leader) {
        (false, _) => "off",
        (true, true) => "leading (this replica reconciles)",
        (true, false) => "standing by (another replica reconciles)",
    };
    let body = html! {
        header {
            h1 { "partnerstack-sync" }
            p {
                "version " (env!("CARGO_PKG_VERSION"))
                " · as of " (snapshot.now.format("%Y-%m-%d %H:%M:%S").to_string()) " UTC"
                " · reloads every " (REFRESH_SECONDS) " s"
                " · reconciler: " span data-field="reconciler" { (reconciler) }
            }
        }
        main {
            @for section in SECTIONS {
                (section(snapshot))
            }
        }
        footer {
            p {
                "The same figures as JSON: " code { "GET /v1/sync" } ", " code { "GET /v1/relay" }
                ", " code { "GET /v1/events" } " (with the API token); "
                a href="/metrics" { "/metrics" } " where it is served."
            }
        }
    };
    document(body).into_string()
}

/// The page when its figures cannot be read: it says so and keeps reloading.
pub fn render_failure(status: StatusCode) -> String {
    document(html! {
        header { h1 { "partnerstack-sync" } }
        main {
            p class="bad" {
                "The status could not be read (" (status.to_string()) "): the database did not answer. \
                 This page tries again every " (REFRESH_SECONDS) " s; the service's log has \
                 the cause."
            }
        }
    })
    .into_string()
}

/// A whole document around `body`: it reloads itself and loads nothing from elsewhere.
fn document(body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(REFRESH_SECONDS);
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "partnerstack-sync status" }
                style { (CSS) }
            }
            body { (body) }
        }
    }
}

/// A column of a [`table`]: its heading, and the cell (one `<td>`) a row's figures show
/// under it at `now`.
struct Column<R> {
    heading: &'static str,
    cell: fn(&R, DateTime<Utc>) -> Markup,
}

/// A row of a [`table`].
struct Row<'a, R> {
    /// The `<tr>`'s id.
    id: String,
    /// The row's first cells, one per key heading of the table.
    keys: Markup,
    /// The row's figures; without them, `note` spans their columns.
    figures: Option<&'a R>,
    note: &'static str,
    /// A row spanning the columns under this one (a warning not to be missed).
    under: Option<String>,
}

/// A table: key headings, then the columns of figures; one `<tr>` per row.
fn table<'a, R: 'a>(
    keys: &[&str],
    columns: &[Column<R>],
    rows: impl IntoIterator<Item = Row<'a, R>>,
    now: DateTime<Utc>,
) -> Markup {
    html! {
        table {
            thead {
                tr {
                    @for heading in keys { th { (heading) } }
                    @for column in columns { th { (column.heading) } }
                }
            }
            tbody {
                @for row in rows {
                    tr id=(row.id) {
                        (row.keys)
                        @match row.figures {
                            Some(figures) => {
                                @for column in columns { ((column.cell)(figures, now)) }
                            }
                            None => td class="text" colspan=(columns.len()) data-field="note" {
                                (row.note)
                            },
                        }
                    }
                    @if let Some(under) = row.under {
                        tr class="warn" {
                            td colspan=(keys.len()) {}
                            td class="text" colspan=(columns.len()) { (under) }
                        }
                    }
                }
            }
        }
    }
}

/// A text cell named `field`.
fn text(field: &str, content: impl Render) -> Markup {
    html! { td data-field=(field) { (content) } }
}

/// A number cell named `field`, right-aligned (empty when unknown).
fn number(field: &str, n: Option<i64>) -> Markup {
    figure(field, &n.map(grouped).unwrap_or_default(), false)
}

/// A cell named `field` showing a figure, right-aligned; in red when `bad`.
fn figure(field: &str, shown: &str, bad: bool) -> Markup {
    html! { td data-field=(field) class=(if bad { "n bad" } else { "n" }) { (shown) } }
}

/// A cell named `field` with a longer text (cut to the column's width by the style).
fn long_text(field: &str, text: Option<String>) -> Markup {
    html! { td class="text" data-field=(field) { @if let Some(text) = text { (text) } } }
}

/// "3m 05s ago", with the exact time (UTC) in the element.
fn time(at: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    let exact = at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let age = (now - at).num_seconds();
    html! {
        time datetime=(exact) title=(exact) {
            @if age >= 0 {
                (human_duration(age as u64)) " ago"
            } @else {
                "in " (human_duration(age.unsigned_abs()))
            }
        }
    }
}

/// The age of `at` at `now`, or `none` when there is nothing.
fn age(at: Option<DateTime<Utc>>, now: DateTime<Utc>, none: &'static str) -> String {
    match at {
        Some(at) => human_duration((now - at).num_seconds().max(0) as u64),
        None => none.to_string(),
    }
}

/// The streams table's columns after the stream's name.
const STREAM_COLUMNS: &[Column<StreamStatus>] = &[
    Column {
        heading: "Kept fresh by",
        cell: |s, _| {
            if s.enabled {
                text("coverage", s.coverage.as_str())
            } else {
                text("coverage", "not reconciled here")
            }
        },
    },
    Column {
        heading: "Last pass ended",
        cell: last_pass,
    },
    Column {
        heading: "Changed",
        cell: |s, _| number("changed", s.last.as_ref().map(|l| l.counts.changed)),
    },
    Column {
        heading: "Repaired",
        cell: |s, _| number("repairs", s.last.as_ref().map(|l| l.counts.repairs)),
    },
    Column {
        heading: "Repaired in total",
        cell: |s, _| number("total_repairs", Some(s.total_repairs)),
    },
    Column {
        heading: "Requests",
        cell: |s, _| number("requests", s.last.as_ref().map(|l| l.counts.requests)),
    },
    Column {
        heading: "Set aside",
        cell: |s, _| figure("set_aside", &grouped(s.set_aside), s.set_aside > 0),
    },
    Column {
        heading: "Worst-case staleness",
        cell: |s, _| match s.staleness_seconds {
            Some(seconds) => text("staleness", human_duration(seconds)),
            None => text("staleness", "unknown (no completed pass)"),
        },
    },
    Column {
        heading: "Staleness bound",
        cell: |s, _| text("staleness_bound", human_duration(s.staleness_bound_seconds)),
    },
    Column {
        heading: "Synced?",
        cell: |s, _| against_bound(s),
    },
    Column {
        heading: "Now",
        cell: |s, _| text("now", running(s)),
    },
    Column {
        heading: "Failures and back-off",
        cell: failures,
    },
    Column {
        heading: "Error",
        cell: |s, _| {
            let error = s.last.as_ref().and_then(|l| l.error.as_deref());
            long_text("error", error.map(redact))
        },
    },
];

/// Streams: one row per stream, all seven, in [`Entity::ALL`] order.
fn streams(snapshot: &Snapshot) -> Markup {
    let rows = Entity::ALL.into_iter().map(|entity| {
        let name = entity.stream();
        let stream = snapshot.sync.streams.iter().find(|s| s.stream.0 == entity);
        Row {
            id: format!("stream-{name}"),
            keys: text("stream", name),
            figures: stream,
            note: if snapshot.sync.enabled {
                "no pass yet"
            } else {
                "not reconciled (the reconciler is off)"
            },
            under: stream.and_then(bound_missed),
        }
    });
    html! {
        section id="streams" {
            h2 { "Streams" }
            (table(&["Stream"], STREAM_COLUMNS, rows, snapshot.now))
            p class="note" {
                "Changed and repaired: rows the last pass created or changed, and of those, \
                 the ones no webhook had delivered (the measured webhook loss; a stream's \
                 first pass repairs nothing). Set aside: objects the copy refused (they do \
                 not read, or the database refused them), kept with their error while the \
                 rest went on, and tried again when seen again (listed in "
                code { "GET /v1/sync" } "). Worst-case staleness: a change made upstream \
                 this long ago may not be in the copy yet (webhooks usually do far better); \
                 the bound is what it should stay within, set by the settings (the \
                 PsyncStreamStale alert compares the two)."
            }
        }
    }
}

/// The staleness against its bound in round units ("2 m of 1 h"), and a plain word:
/// synced (within the bound) or behind.
fn against_bound(stream: &StreamStatus) -> Markup {
    let bound = rounded_duration(stream.staleness_bound_seconds);
    html! {
        td data-field="synced" {
            @match stream.staleness_seconds {
                Some(seconds) => {
                    (rounded_duration(seconds)) " of " (bound) ": "
                    @if seconds <= stream.staleness_bound_seconds {
                        span class="ok" { "synced" }
                    } @else {
                        span class="bad" { "behind" }
                    }
                },
                None => { "? of " (bound) ": " span class="bad" { "behind" } " (no completed pass)" },
            }
        }
    }
}

/// When the last pass ended, and how.
fn last_pass(stream: &StreamStatus, now: DateTime<Utc>) -> Markup {
    html! {
        td data-field="last" {
            @match &stream.last {
                Some(last) => {
                    @if let Some(finished) = last.finished_at { (time(finished, now)) " " }
                    span class=(if last.status == Some(PassStatus::Ok) { "ok" } else { "bad" }) {
                        (last.status.map_or("?", |s| s.as_str()))
                        @if let Some(kind) = last.kind { ", " (kind.as_str()) }
                    }
                },
                None => "never",
            }
        }
    }
}

/// What runs now.
fn running(stream: &StreamStatus) -> String {
    match &stream.in_progress {
        Some(pass) => format!(
            "{} pass, {} pages so far",
            pass.kind.map_or("a", |k| k.as_str()),
            grouped(pass.counts.pages)
        ),
        None if stream.requested_at.is_some() => "pass requested".to_string(),
        None => "idle".to_string(),
    }
}

/// Consecutive failures, and when the next try is.
fn failures(stream: &StreamStatus, now: DateTime<Utc>) -> Markup {
    html! {
        td data-field="failures" {
            @if stream.failures == 0 {
                "none"
            } @else {
                span class="bad" { (stream.failures) " in a row" }
                @if let Some(at) = stream.next_attempt_at {
                    "; next try in " (human_duration((at - now).num_seconds().max(0) as u64))
                }
            }
        }
    }
}

/// A warning when passes, as the last ones went, cannot meet the stream's staleness bound.
fn bound_missed(stream: &StreamStatus) -> Option<String> {
    let bound = stream.staleness_bound_seconds;
    let achievable = stream.achievable_staleness_seconds;
    (achievable > bound).then(|| match stream.coverage {
        Coverage::Poll => format!(
            "The request budget cannot meet the staleness bound of {}: about {} is achievable.",
            human_duration(bound),
            human_duration(achievable)
        ),
        Coverage::Webhooks => format!(
            "Passes take longer than reconcile.pass_budget: about {} is achievable, above the \
             staleness bound of {}.",
            human_duration(achievable),
            human_duration(bound)
        ),
    })
}

/// Deliveries in the window per minute, oldest minute first: a row per outcome that
/// occurs, then one of all.
struct PerMinute {
    minutes: Vec<DateTime<Utc>>,
    rows: Vec<(&'static str, Vec<i64>)>,
}

fn per_minute(snapshot: &Snapshot) -> PerMinute {
    let mut counts: BTreeMap<(DateTime<Utc>, Outcome), i64> = BTreeMap::new();
    for m in &snapshot.activity {
        *counts.entry((m.minute, m.outcome)).or_default() += m.count;
    }
    let newest = snapshot
        .now
        .duration_trunc(chrono::TimeDelta::minutes(1))
        .unwrap_or(snapshot.now);
    let minutes: Vec<DateTime<Utc>> = (0..WINDOW_MINUTES)
        .rev()
        .map(|back| newest - chrono::Duration::minutes(back))
        .collect();
    let row = |outcome: Option<Outcome>| {
        let count = |minute: &DateTime<Utc>| -> i64 {
            counts
                .iter()
                .filter(|((m, o), _)| m == minute && outcome.is_none_or(|x| x == *o))
                .map(|(_, n)| n)
                .sum()
        };
        minutes.iter().map(count).collect::<Vec<i64>>()
    };
    let mut rows: Vec<(&'static str, Vec<i64>)> = Outcome::ALL
        .iter()
        .filter(|o| snapshot.activity.iter().any(|m| m.outcome == **o))
        .map(|o| (o.as_str(), row(Some(*o))))
        .collect();
    rows.push(("all", row(None)));
    PerMinute { minutes, rows }
}

/// Deliveries in the window per event type, most frequent first: the type, its
/// deliveries, and of those the ones applied or stale.
fn per_type(snapshot: &Snapshot) -> Vec<(&str, i64, i64)> {
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
    let mut types: Vec<(&str, i64, i64)> =
        per_type.into_iter().map(|(t, (n, a))| (t, n, a)).collect();
    types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    types
}

/// Webhook deliveries in the window: per minute by outcome, and per event type.
fn webhooks(snapshot: &Snapshot) -> Markup {
    let heading = format!("Webhook deliveries, last {WINDOW_MINUTES} minutes");
    if snapshot.activity.iter().all(|m| m.count == 0) {
        return html! {
            section id="webhooks" {
                h2 { (heading) }
                p data-field="webhooks" { "None received in the last " (WINDOW_MINUTES) " minutes." }
            }
        };
    }
    let PerMinute { minutes, rows } = per_minute(snapshot);
    let types = per_type(snapshot);
    let others = types.get(EVENT_TYPES_SHOWN..).unwrap_or_default();
    let per_min = |n: i64| format!("{:.1}", n as f64 / WINDOW_MINUTES as f64);
    html! {
        section id="webhooks" {
            h2 { (heading) }
            table id="per-minute" {
                thead { tr {
                    th { "Outcome, per minute (UTC)" }
                    @for minute in &minutes { th { (minute.format("%H:%M").to_string()) } }
                } }
                tbody { @for (name, counts) in &rows {
                    tr id={ "outcome-" (name) } {
                        td { (name) }
                        @for (minute, n) in minutes.iter().zip(counts) {
                            (number(&minute.format("%H:%M").to_string(), Some(*n)))
                        }
                    }
                } }
            }
            table id="per-type" {
                thead { tr {
                    th { "Event type" } th { "Deliveries" } th { "Per minute" } th { "Applied or stale" }
                } }
                tbody {
                    @for (name, count, applied) in types.iter().take(EVENT_TYPES_SHOWN) {
                        tr {
                            (text("type", truncate(name, 64)))
                            (number("deliveries", Some(*count)))
                            (text("per_minute", per_min(*count)))
                            (number("applied", Some(*applied)))
                        }
                    }
                    @if !others.is_empty() {
                        tr {
                            (text("type", format!("{} other types", others.len())))
                            (number("deliveries", Some(others.iter().map(|t| t.1).sum())))
                            td {} td {}
                        }
                    }
                }
            }
            @if snapshot.activity_capped {
                p class="note warn" {
                    "More than " (grouped(ACTIVITY_CAP)) " deliveries in the window: only the \
                     most recent were counted, so the earliest minutes are short."
                }
            }
        }
    }
}

/// What each backlog outcome means, as its link says.
fn backlog_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pending => "pending (stored, not applied yet)",
        Outcome::Error => "in error (the data was refused)",
        Outcome::Unresolved => "unresolved (nothing stored matches the body)",
        Outcome::Unconfirmed => "unconfirmed (PartnerStack does not know the object)",
        other => other.as_str(),
    }
}

/// What waits to be applied or needs a look, and how far behind applying is.
fn backlog(snapshot: &Snapshot) -> Markup {
    let shown = |count: i64| {
        if count >= COUNT_CAP {
            format!("{}+", grouped(COUNT_CAP))
        } else {
            grouped(count)
        }
    };
    html! {
        section id="backlog" {
            h2 { "Backlog" }
            table { tbody {
                @for (outcome, count) in &snapshot.backlog {
                    tr {
                        td { a href={ "/v1/events?outcome=" (outcome.as_str()) } { (backlog_label(*outcome)) } }
                        (figure(outcome.as_str(), &shown(*count), *count > 0 && *outcome != Outcome::Pending))
                    }
                }
                tr {
                    td { "apply lag (age of the oldest pending delivery)" }
                    (text("apply_lag", age(snapshot.oldest_pending, snapshot.now, "none (nothing pending)")))
                }
                tr {
                    td { "waiting in memory for the writer" }
                    (number("queued", i64::try_from(snapshot.queued).ok()))
                }
            } }
            p class="note" {
                "The links list those deliveries (" code { "GET /v1/events" } " needs the API \
                 token). Deliveries whose object PartnerStack does not know yet stay pending \
                 while they are retried."
            }
        }
    }
}

/// The write outbox: what is pending, in doubt or failed.
fn writes_outbox(snapshot: &Snapshot) -> Markup {
    let Some(w) = &snapshot.writes else {
        return html! {
            section id="writes" {
                h2 { "Writes to PartnerStack" }
                p data-field="writes" { "Off here (no PartnerStack API keys): writes are answered 409." }
            }
        };
    };
    html! {
        section id="writes" {
            h2 { "Writes to PartnerStack" }
            table { tbody {
                tr {
                    td { a href="/v1/writes?status=pending" { "pending" } }
                    (number("writes_pending", Some(w.pending)))
                }
                tr {
                    td { "of which in doubt (an answer was lost; looking before sending again)" }
                    (number("writes_in_doubt", Some(w.in_doubt)))
                }
                tr {
                    td { "age of the oldest pending write" }
                    (text("writes_oldest", age(w.oldest_pending, snapshot.now, "none (nothing pending)")))
                }
                tr {
                    td { a href="/v1/writes?status=failed" { "failed (refused by PartnerStack)" } }
                    (figure("writes_failed", &grouped(w.failed), w.failed > 0))
                }
                tr {
                    td { "succeeded in the last hour" }
                    (number("writes_succeeded_last_hour", Some(w.succeeded_last_hour)))
                }
            } }
            p class="note" {
                "A failed write is sent again with " code { "POST /v1/writes/{id}/retry" }
                " (needs the API token)."
            }
        }
    }
}

/// What `partnerstack-sync check` settled about the account, and what is still a guess
/// (answers are words and times: no key, no name).
fn account_answers(snapshot: &Snapshot) -> Markup {
    let answers = &snapshot.sync.answers;
    let settled = answers.iter().filter(|a| a.settled).count();
    html! {
        section id="answers" {
            h2 { "What the account answered" }
            p data-field="answers_settled" {
                (settled) " of " (answers.len()) " questions settled by "
                code { "partnerstack-sync check" } "; the others are guesses the service handles."
            }
            table {
                thead { tr { th { "question" } th { "answer" } th { "settled" } th { "the service" } } }
                tbody {
                    @for a in answers {
                        tr id=(format!("answer-{}", a.question)) {
                            td { (a.asked) }
                            (text("answer", a.answer.as_deref().unwrap_or("still a guess")))
                            (text("settled_at", age(a.settled_at, snapshot.now, "never")))
                            td class="text" data-field="service" { (a.service) }
                        }
                    }
                }
            }
        }
    }
}

/// The PartnerStack request budget.
fn budget(snapshot: &Snapshot) -> Markup {
    html! {
        section id="budget" {
            h2 { "PartnerStack request budget" }
            @match snapshot.budget {
                Some(b) => {
                    table { tbody {
                        tr {
                            td { "requests per second allowed" }
                            (text("requests_per_second", b.requests_per_second))
                        }
                        tr {
                            td { "requests sent since start (retries included)" }
                            (number("requests_sent", i64::try_from(b.sent).ok()))
                        }
                        @if let Some(spent) = &snapshot.sync.requests {
                            @for (field, what, n) in [
                                ("requests_reconcile", "of them, reconcile passes' pages", spent.reconcile),
                                ("requests_verify", "reads verifying webhooks", spent.verify),
                                ("requests_write", "writes and their look-ups", spent.write),
                                ("requests_other", "anything else", spent.other),
                            ] {
                                tr {
                                    td { (what) }
                                    (number(field, i64::try_from(n).ok()))
                                }
                            }
                        }
                        tr {
                            td { "share full scans of poll-only streams may use" }
                            (text("scan_share", format!("{:.0}%", b.scan_share * 100.0)))
                        }
                    } }
                    p class="note" {
                        "One budget for the reconciler, webhook verification and writes (which \
                         go first). Each stream's requests of its last pass are in the streams \
                         table."
                    }
                },
                None => p data-field="budget" {
                    "The reconciler is off here (no PartnerStack API keys, or \
                     PSYNC_RECONCILE_INTERVAL=off)."
                },
            }
        }
    }
}

/// The relay table's columns after the endpoint's name and site.
const RELAY_COLUMNS: &[Column<EndpointStatus>] = &[
    Column {
        heading: "Delivered",
        cell: |e, _| number("delivered", Some(e.delivered)),
    },
    Column {
        heading: "Pending",
        cell: |e, _| number("pending", Some(e.pending)),
    },
    Column {
        heading: "Lag",
        cell: |e, _| text("lag", human_duration(e.lag_seconds.max(0.0).round() as u64)),
    },
    Column {
        heading: "Last delivery",
        cell: |e, now| match e.last_delivered_at {
            Some(at) => text("last_delivered", time(at, now)),
            None => text("last_delivered", "never"),
        },
    },
    Column {
        heading: "Failures",
        cell: |e, _| number("failures", Some(i64::from(e.failures))),
    },
    Column {
        heading: "Last error",
        cell: |e, _| {
            let error = e.last_error.as_deref().filter(|_| e.failures > 0);
            long_text("error", error.map(redact))
        },
    },
];

/// Relay endpoints' progress.
fn relay(snapshot: &Snapshot) -> Markup {
    let endpoints = &snapshot.relay.endpoints;
    let rows = endpoints.iter().map(|e| Row {
        id: format!("relay-{}", e.name),
        keys: html! { (text("name", &e.name)) (text("url", site(&e.url))) },
        figures: e.started.then_some(e),
        note: "not started yet",
        under: None,
    });
    html! {
        section id="relay" {
            h2 { "Relay endpoints" }
            @if endpoints.is_empty() {
                p data-field="relay" { "None configured." }
            } @else {
                (table(&["Endpoint", "URL"], RELAY_COLUMNS, rows, snapshot.now))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::events::MinuteCount;
    use crate::db::sync::{PassCounts, PassKind};
    use crate::reconcile::Coverage;
    use crate::reconcile::status::{PassFigures, StreamName, SyncStatus};
    use crate::relay::status::RelayStatus;
    use crate::routes::status::Budget;

    fn stream(name: &str) -> StreamStatus {
        let at: DateTime<Utc> = "2026-01-01T12:00:00Z".parse().unwrap();
        StreamStatus {
            stream: StreamName(Entity::from_stream(name).unwrap()),
            enabled: true,
            coverage: Coverage::Webhooks,
            staleness_seconds: Some(125),
            staleness_bound_seconds: 630,
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
            set_aside: 3,
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
                requests: Some(crate::reconcile::status::RequestsSpent {
                    reconcile: 12_000,
                    verify: 300,
                    write: 40,
                    other: 5,
                    total: 12_345,
                }),
                streams: vec![stream("customers")],
                set_aside: vec![crate::db::set_aside::SetAsideObject {
                    stream: "customers".into(),
                    key: "cust_setaside_secret".into(),
                    source: crate::columns::Source::Reconcile,
                    error: "field `email`: invalid type".into(),
                    first_seen_at: now,
                    last_seen_at: now,
                    times: 2,
                }],
                answers: Vec::new(),
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
    fn the_page_counts_objects_set_aside_and_never_names_them() {
        let page = render(&snapshot());
        assert!(
            page.contains("<td data-field=\"set_aside\" class=\"n bad\">3</td>"),
            "{page}"
        );
        assert!(!page.contains("cust_setaside_secret"), "{page}");
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
        // (maud writes the doctype in capitals; HTML reads it either way.)
        assert!(page.to_ascii_lowercase().starts_with("<!doctype html>"));
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
            page.contains(
                "<td data-field=\"synced\">2 m of 10 m: <span class=\"ok\">synced</span></td>"
            ),
            "{page}"
        );
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
        // Where they went, summing to the total.
        assert!(page.contains("<td data-field=\"requests_reconcile\" class=\"n\">12,000</td>"));
        assert!(page.contains("<td data-field=\"requests_verify\" class=\"n\">300</td>"));
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

    #[test]
    fn injected_markup_in_any_shown_text_comes_out_escaped() {
        let mut snapshot = snapshot();
        // Every text the page shows that does not come from this module: a stream's error,
        // an event type from a delivery, a relay endpoint's name (also in an attribute),
        // its URL and its error.
        snapshot.sync.streams[0].last.as_mut().unwrap().error =
            Some("<script>alert(1)</script>".into());
        snapshot.activity[0].event_type = Some("<script>alert(2)</script>".into());
        let endpoint = &mut snapshot.relay.endpoints[0];
        endpoint.name = "\"><script>alert(3)</script>".into();
        endpoint.url = "https://<script>alert(4)</script>/".into();
        endpoint.last_error = Some("<script>alert(5)</script>".into());
        let page = render(&snapshot);
        assert!(!page.contains("<script"), "{page}");
        for n in [1, 2, 3, 5] {
            assert!(
                page.contains(&format!("&lt;script&gt;alert({n})&lt;/script&gt;")),
                "alert({n}) is not in the page as text:\n{page}"
            );
        }
        // In an attribute, the quote cannot close it.
        assert!(
            page.contains("<tr id=\"relay-&quot;&gt;&lt;script&gt;alert(3)&lt;/script&gt;\">"),
            "{page}"
        );
        assert!(page.contains("<td data-field=\"name\">&quot;&gt;&lt;script&gt;alert(3)"));
        // A URL that is not one shows as nothing but "…".
        assert!(page.contains("<td data-field=\"url\">…</td>"), "{page}");
    }

    #[test]
    fn a_missed_staleness_bound_is_a_row_under_the_stream() {
        let mut snapshot = snapshot();
        let stream = &mut snapshot.sync.streams[0];
        stream.coverage = Coverage::Poll;
        stream.staleness_bound_seconds = 3600;
        stream.achievable_staleness_seconds = 7260;
        let under = |page: &str| {
            let under = &page[page.find("<tr id=\"stream-customers\">").unwrap()..];
            under[under.find("</tr>").unwrap() + "</tr>".len()..].to_string()
        };
        let page = render(&snapshot);
        assert!(
            under(&page).starts_with(
                "<tr class=\"warn\"><td colspan=\"1\"></td><td class=\"text\" colspan=\"13\">\
                 The request budget cannot meet the staleness bound of 1h 00m: about 2h 01m \
                 is achievable.</td></tr>"
            ),
            "{page}"
        );
        // A webhook-covered stream's passes outgrow their budget.
        snapshot.sync.streams[0].coverage = Coverage::Webhooks;
        let page = render(&snapshot);
        assert!(
            under(&page).contains(
                "Passes take longer than reconcile.pass_budget: about 2h 01m is achievable, \
                 above the staleness bound of 1h 00m."
            ),
            "{page}"
        );
        snapshot.sync.streams[0].achievable_staleness_seconds = 3600;
        assert!(!render(&snapshot).contains("class=\"warn\""));
    }

    #[test]
    fn the_style_sheet_reaches_the_page_unchanged() {
        // It is escaped like all text: a character escaping changes would break it.
        assert!(render(&snapshot()).contains(&format!("<style>{CSS}</style>")));
        assert!(!CSS.contains(['&', '<', '>', '"']));
    }

    #[test]
    fn nothing_here_writes_unescaped_markup() {
        // maud's escape hatch; the only markup trusted is what `html!` makes.
        let hatch = concat!("Pre", "Escaped");
        for (file, source) in [
            ("page.rs", include_str!("page.rs")),
            ("mod.rs", include_str!("mod.rs")),
            ("words.rs", include_str!("words.rs")),
        ] {
            assert!(!source.contains(hatch), "{file} uses {hatch}");
        }
    }

    #[test]
    fn a_column_is_one_entry() {
        // Every heading of the streams table has a cell in each row with figures.
        let page = render(&snapshot());
        let row = &page[page.find("<tr id=\"stream-customers\">").unwrap()..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert_eq!(
            row.matches("<td").count(),
            1 + STREAM_COLUMNS.len(),
            "{row}"
        );
        for column in STREAM_COLUMNS {
            assert!(page.contains(&format!("<th>{}</th>", column.heading)));
        }
    }
}
