//! `GET /status`: where it is served, its setting, and what a person sees in a real
//! browser (headless Chromium) against a service synced from the stand-in.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use partnerstack::Entity;
use partnerstack_sim::{MutationKind, Notify};
use partnerstack_sync::routes::status::{grouped, human_duration};
use serde_json::Value;

use crate::client::{program, wired};
use crate::common::{API_TOKEN, TestApp, free_port};
use crate::reconcile::wait_for;

/// `$CHROMIUM`, else the first `chromium` or `chromium-browser` on PATH.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find_map(|name| crate::tools::find("CHROMIUM", name, &[]))
}

const NO_CHROMIUM: &str = "the browser part needs chromium or chromium-browser on PATH \
                           (.ci/run installs Debian's chromium; or set CHROMIUM)";

/// The DOM headless Chromium builds from `url` (after its scripts, had it any), or a
/// panic naming what went wrong. Chromium runs in a process group of its own, killed as a
/// whole past 60 s, and with a profile directory it leaves behind nowhere.
async fn dump_dom(browser: &PathBuf, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(browser);
    cmd.args([
        "--headless",
        // Chromium refuses to run as root inside its sandbox.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(["--dump-dom", url])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .process_group(0)
    .kill_on_drop(true);
    let child = cmd.spawn().expect("start chromium");
    let group = nix::unistd::Pid::from_raw(child.id().expect("chromium's pid") as i32);
    match tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await {
        Ok(output) => {
            let output = output.expect("chromium's output");
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            assert!(
                output.status.success(),
                "chromium exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).expect("the DOM is UTF-8")
        }
        Err(_) => {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            panic!("chromium did not dump {url} within 60 s");
        }
    }
}

/// The markup of the element that starts with `start` (up to its `end`).
fn element<'a>(page: &'a str, start: &str, end: &str) -> &'a str {
    let from = page
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in the page:\n{page}"));
    let rest = &page[from..];
    let to = rest[start.len()..]
        .find(end)
        .map_or(rest.len(), |i| start.len() + i + end.len());
    &rest[..to]
}

/// The text of the cell `data-field="field"` in `row`.
pub(crate) fn cell<'a>(row: &'a str, field: &str) -> &'a str {
    let start = format!("<td data-field=\"{field}\"");
    let at = row
        .find(&start)
        .unwrap_or_else(|| panic!("no {field} cell in {row}"));
    let from = row[at..].find('>').unwrap() + at + 1;
    let to = row[from..].find("</td>").unwrap() + from;
    &row[from..to]
}

/// The sum of the numbers in the cells of `markup` named `data-field="field"` (or all
/// its cells, with `None`).
fn sum_cells(markup: &str, field: Option<&str>) -> i64 {
    let start = match field {
        Some(f) => format!("<td data-field=\"{f}\""),
        None => "<td data-field=".to_string(),
    };
    markup
        .split(start.as_str())
        .skip(1)
        .map(|s| {
            let s = &s[s.find('>').unwrap() + 1..];
            s[..s.find("</td>").unwrap()]
                .replace(',', "")
                .parse::<i64>()
                .unwrap()
        })
        .sum()
}

/// Every string under a key named `name`, anywhere in `value`.
fn strings_under(value: &Value, name: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == name
                    && let Some(s) = v.as_str()
                {
                    out.push(s.to_string());
                }
                strings_under(v, name, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| strings_under(v, name, out)),
        _ => {}
    }
}

/// Checks `page` against `GET /v1/sync` read just before (`before`) and after (`after`)
/// it: every stream's row shows the same figures; staleness lies between the two reads.
fn check_streams(page: &str, before: &Value, after: &Value) {
    for entity in Entity::ALL {
        let name = entity.stream();
        let find = |status: &Value| {
            status["streams"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["stream"] == name)
                .unwrap_or_else(|| panic!("{name} in /v1/sync"))
                .clone()
        };
        let (was, is) = (find(before), find(after));
        assert_eq!(
            was["last"], is["last"],
            "{name}: a pass ended while the page was read"
        );
        let row = element(page, &format!("<tr id=\"stream-{name}\">"), "</tr>");
        assert_eq!(cell(row, "stream"), name);
        assert_eq!(cell(row, "coverage"), is["coverage"].as_str().unwrap());
        for (field, key) in [
            ("changed", "changed"),
            ("repairs", "repairs"),
            ("requests", "requests"),
        ] {
            assert_eq!(
                cell(row, field),
                grouped(is["last"][key].as_i64().unwrap()),
                "{name}: {field}"
            );
        }
        assert_eq!(
            cell(row, "total_repairs"),
            grouped(is["total_repairs"].as_i64().unwrap()),
            "{name}"
        );
        // When the last pass ended: the exact time is in the <time> element.
        let shown = element(row, "<time datetime=\"", "\"")
            .trim_start_matches("<time datetime=\"")
            .trim_end_matches('"');
        let shown: DateTime<Utc> = shown.parse().unwrap();
        let finished: DateTime<Utc> = is["last"]["finished_at"].as_str().unwrap().parse().unwrap();
        assert!(
            (shown - finished).num_milliseconds().abs() < 1,
            "{name}: {shown} vs {finished}"
        );
        assert!(
            row.contains(&format!("ok, {}", is["last"]["kind"].as_str().unwrap())),
            "{name}: {row}"
        );
        // Worst-case staleness, read between the two API reads.
        let (low, high) = (
            was["staleness_seconds"].as_u64().unwrap(),
            is["staleness_seconds"].as_u64().unwrap(),
        );
        let staleness = cell(row, "staleness");
        assert!(
            (low..=high).any(|s| human_duration(s) == staleness),
            "{name}: staleness {staleness:?} is not within {low}..={high} s"
        );
        // The bound, a figure of the settings: the same as /v1/sync's.
        assert_eq!(
            was["staleness_bound_seconds"],
            is["staleness_bound_seconds"]
        );
        assert_eq!(
            cell(row, "staleness_bound"),
            human_duration(is["staleness_bound_seconds"].as_u64().unwrap()),
            "{name}"
        );
        // Just synced: within its bound, in round units, and said plainly.
        let synced = cell(row, "synced");
        assert!(
            synced.ends_with("<span class=\"ok\">synced</span>") && synced.contains(" of "),
            "{name}: {synced}"
        );
        assert_eq!(cell(row, "failures"), "none", "{name}");
        assert_eq!(is["failures"], 0, "{name}");
    }
}

/// Checks what the page shows of webhooks and the backlog against the database, and that
/// no personal data of the stand-in's program appears in it.
async fn check_the_rest(page: &str, app: &TestApp, state: &Value) {
    // Deliveries per event type add up to what is stored (all of it is recent).
    let per_type = element(page, "<table id=\"per-type\">", "</table>");
    let shown = sum_cells(per_type, Some("deliveries"));
    let stored = app.db.count("SELECT count(*) FROM webhook_events").await;
    assert!(stored > 0);
    assert_eq!(shown, stored, "{per_type}");
    assert!(per_type.contains("customer_"), "{per_type}");
    let per_minute = element(page, "<table id=\"per-minute\">", "</table>");
    let all = element(per_minute, "<tr id=\"outcome-all\">", "</tr>");
    assert_eq!(sum_cells(all, None), stored, "{per_minute}");
    let applied = element(per_minute, "<tr id=\"outcome-applied\">", "</tr>");
    assert!(sum_cells(applied, None) > 0, "{per_minute}");
    // Nothing pending, no errors; links to the deliveries behind each count.
    let backlog = element(page, "<section id=\"backlog\">", "</section>");
    assert_eq!(cell(backlog, "pending"), "0");
    assert_eq!(cell(backlog, "error"), "0");
    assert_eq!(cell(backlog, "apply_lag"), "none (nothing pending)");
    assert!(backlog.contains("href=\"/v1/events?outcome=pending\""));
    assert!(backlog.contains("href=\"/v1/events?outcome=error\""));
    let budget = element(page, "<section id=\"budget\">", "</section>");
    assert_eq!(cell(budget, "requests_per_second"), "10000");
    assert!(
        cell(budget, "requests_sent")
            .replace(',', "")
            .parse::<u64>()
            .unwrap()
            > 0,
        "{budget}"
    );

    // No personal data: not one email, partner key or customer key of the program.
    assert!(
        !page.contains('@'),
        "an email-like text in the page:\n{page}"
    );
    // (Texts of 8 characters or more, so that none is a word the page may use anyway.)
    let mut private = Vec::new();
    for field in ["email", "partner_key", "customer_key", "name", "key"] {
        strings_under(state, field, &mut private);
    }
    private.retain(|t| t.len() >= 8);
    assert!(private.len() > 100, "the program's personal data was read");
    for text in &private {
        assert!(
            !page.contains(text.as_str()),
            "{text:?} appears in the page"
        );
    }
}

/// A service synced from the stand-in, with webhooks delivered, some lost and repaired:
/// the page in headless Chromium shows every stream's row with the figures of
/// `GET /v1/sync`, the deliveries that are stored, and no personal data. Without Chromium
/// the same checks run on the page as served, and the browser part is skipped
/// ([`crate::tools::skip`]: a failure under CI).
#[tokio::test]
async fn a_person_sees_every_stream_and_no_personal_data() {
    let (app, running) = wired(program(), |c| {
        c.reconcile.interval = Some(Duration::from_secs(3600));
    })
    .await;
    // The leader backfills every stream at start.
    wait_for(&app, |s| {
        s["streams"]
            .as_array()
            .is_some_and(|a| a.len() == 7 && a.iter().all(|x| x["last"]["status"] == "ok"))
    })
    .await;
    // Webhooks: some delivered, some lost; then a pass repairs the lost ones. The lost
    // ones come last: verifying a customer delivery reads a list page around its time,
    // which would bring changes lost before it.
    running.simulator.mutate(20, None, Notify::Deliver);
    assert!(running.simulator.flush(Duration::from_secs(30)).await);
    app.settle().await;
    running
        .simulator
        .mutate(4, Some(MutationKind::UpdateCustomer), Notify::Drop);
    let r = app
        .http
        .post(app.url("/v1/sync/customers"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_for(&app, |s| {
        s["streams"].as_array().unwrap().iter().any(|x| {
            x["stream"] == "customers"
                && x["requested_at"].is_null()
                && x["in_progress"].is_null()
                && x["total_repairs"].as_i64().unwrap_or(0) >= 4
        })
    })
    .await;
    let state = running.simulator.state(None);

    let sync =
        || async { app.api_get("/v1/sync").await.json::<Value>().await.unwrap()["data"].clone() };
    // The page as served.
    let before = sync().await;
    let served = app.http.get(app.url("/status")).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "text/html; charset=utf-8");
    let served = served.text().await.unwrap();
    let after = sync().await;
    check_streams(&served, &before, &after);
    check_the_rest(&served, &app, &state).await;

    // The page as a browser shows it.
    match chromium() {
        Some(browser) => {
            let before = sync().await;
            let dom = dump_dom(&browser, &app.url("/status")).await;
            let after = sync().await;
            eprintln!(
                "status: checking the page as {} rendered it ({} bytes of DOM)",
                browser.display(),
                dom.len()
            );
            assert!(dom.contains("<h1>partnerstack-sync</h1>"), "{dom}");
            check_streams(&dom, &before, &after);
            check_the_rest(&dom, &app, &state).await;
            let customers = element(&dom, "<tr id=\"stream-customers\">", "</tr>");
            assert_ne!(cell(customers, "total_repairs"), "0", "{customers}");
        }
        None => crate::tools::skip(NO_CHROMIUM),
    }
    running.stop().await.unwrap();
    app.stop().await;
}

/// The page as served.
async fn page_text(app: &TestApp) -> String {
    let response = app.http.get(app.url("/status")).send().await.unwrap();
    response.text().await.unwrap()
}

/// Served where `/metrics` is: on the main address, or only on the admin address when one
/// is set; turned off, it is a 404 everywhere.
#[tokio::test]
async fn the_page_is_served_where_metrics_are_and_can_be_turned_off() {
    // Default: on the main address, reconciler off, every stream says so.
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/status")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let page = r.text().await.unwrap();
    for entity in Entity::ALL {
        let row = element(
            &page,
            &format!("<tr id=\"stream-{}\">", entity.stream()),
            "</tr>",
        );
        assert!(
            row.contains("not reconciled (the reconciler is off)"),
            "{row}"
        );
    }
    assert!(page.contains("None received in the last 15 minutes."));
    // A delivery is counted once stored and applied.
    let delivered = app
        .deliver(r#"{"event":"customer_created","data":{"key":"cust_x1","email":"x@y.z","created_at":1700000000000}}"#)
        .await;
    assert_eq!(delivered.status(), 200);
    app.settle().await;
    let page = page_text(&app).await;
    let per_type = element(&page, "<table id=\"per-type\">", "</table>");
    assert!(
        per_type.contains("<td data-field=\"type\">customer_created</td>"),
        "{per_type}"
    );
    assert!(!page.contains("x@y.z") && !page.contains("cust_x1"));
    app.stop().await;

    // With an admin address: there, and not on the main one.
    let admin = format!("127.0.0.1:{}", free_port());
    let app = TestApp::spawn_with(|c| c.server.admin_listen = Some(admin.parse().unwrap())).await;
    let main = app.http.get(app.url("/status")).send().await.unwrap();
    assert_eq!(main.status(), 404);
    let moved = app
        .http
        .get(format!("http://{admin}/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 200);
    app.stop().await;

    // Turned off: 404, with the usual error body.
    let app = TestApp::spawn_with(|c| c.server.status_page = false).await;
    let off = app.http.get(app.url("/status")).send().await.unwrap();
    assert_eq!(off.status(), 404);
    let body: Value = off.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("server.status_page")
    );
    app.stop().await;
}

/// Text from outside reaches the page as text: a delivery whose event type is markup is
/// shown escaped, and a browser builds no element from it (an unclosed `<script>` would
/// swallow the rest of the page). Without Chromium the browser part is skipped
/// ([`crate::tools::skip`]: a failure under CI).
#[tokio::test]
async fn markup_in_a_delivery_is_shown_as_text() {
    let app = TestApp::spawn().await;
    let injected = "<script>alert(1)";
    let body = serde_json::json!({
        "event": injected,
        "data": {"key": "cust_x2", "created_at": 1700000000000_i64},
    });
    assert_eq!(app.deliver(body.to_string()).await.status(), 200);
    app.settle().await;
    let page = page_text(&app).await;
    let shown = "<td data-field=\"type\">&lt;script&gt;alert(1)</td>";
    let per_type = element(&page, "<table id=\"per-type\">", "</table>");
    assert!(per_type.contains(shown), "{per_type}");
    assert!(!page.contains("<script"), "{page}");
    match chromium() {
        Some(browser) => {
            let dom = dump_dom(&browser, &app.url("/status")).await;
            let per_type = element(&dom, "<table id=\"per-type\">", "</table>");
            assert!(per_type.contains(shown), "{dom}");
            assert!(!dom.contains("<script"), "{dom}");
            // The page after the table is still there: nothing swallowed it.
            assert!(dom.contains("<section id=\"relay\">"), "{dom}");
        }
        None => crate::tools::skip(NO_CHROMIUM),
    }
    app.stop().await;
}
