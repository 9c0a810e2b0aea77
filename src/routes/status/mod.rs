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
//! pass through [`redact`] first. The markup is written with maud's `html!` (`page.rs`):
//! every value spliced into it is escaped, there is no way here to write text unescaped.
//!
//! The figures come from the read models the JSON routes serve (`GET /v1/sync`:
//! [`reconcile::status`]; `GET /v1/relay`: [`relay::status`]), so the page and the API
//! cannot disagree.
//!
//! Layout: [`Snapshot::load`] reads everything, then each section of the page is one
//! function of the snapshot (see `page.rs`). A new section adds its figures to [`Snapshot`]
//! and its function to the page's list of sections.

mod page;
mod words;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, DurationRound as _, Utc};

use crate::db::events::{self, MinuteCount, Outcome};
use crate::error::ApiError;
use crate::reconcile::{self, status::SyncStatus};
use crate::relay::{self, status::RelayStatus};
use crate::state::AppState;

pub use page::render;
pub use words::{grouped, human_duration, redact};

/// Seconds between the page's own reloads.
pub const REFRESH_SECONDS: u32 = 10;
/// Minutes of webhook deliveries shown.
pub const WINDOW_MINUTES: i64 = 15;
/// Most deliveries read to count the window's (bounds the page's cost at any rate).
const ACTIVITY_CAP: i64 = 100_000;
/// Stored deliveries counted per outcome in the backlog, at most.
const COUNT_CAP: i64 = 10_000;
/// The outcomes the backlog section counts, each with a link to its deliveries.
const BACKLOG: [Outcome; 4] = [
    Outcome::Pending,
    Outcome::Error,
    Outcome::Unresolved,
    Outcome::Unconfirmed,
];

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
            (status, page::render_failure(status))
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
    /// Stored deliveries per outcome of `BACKLOG`, each counted up to `COUNT_CAP`.
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
        let pool = &state.pool;
        let sync = reconcile::status::load(pool, &state.config, state.reconciler.as_ref()).await?;
        let relay = relay::status::load(pool, &state.config.relay).await?;
        // From the start of the oldest minute shown (the current one is the newest).
        let since = now
            .duration_trunc(chrono::TimeDelta::minutes(1))
            .unwrap_or(now)
            - chrono::Duration::minutes(WINDOW_MINUTES - 1);
        let (activity, activity_capped) =
            events::recent_activity(pool, since, ACTIVITY_CAP).await?;
        let mut backlog = Vec::with_capacity(BACKLOG.len());
        for outcome in BACKLOG {
            backlog.push((
                outcome,
                events::count_outcome(pool, outcome, COUNT_CAP).await?,
            ));
        }
        let oldest_pending = events::oldest_pending(pool).await?;
        let writes = match &state.outbox {
            Some(_) => Some(crate::db::writes::summary(pool).await?),
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
