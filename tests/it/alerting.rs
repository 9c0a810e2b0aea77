//! The alert rules (`deploy/prometheus/alerts.yml`) in a real Prometheus, scraping the
//! service while its stand-in of PartnerStack goes down and comes back.
//!
//! Time is compressed sixty-fold, by settings only: the service's (interval 5 s, pass
//! budget 5 s, back-off at most 0.5 s; the poll-only staleness bound at its lowest, 1 m)
//! and the rules' (a copy of alerts.yml with every duration, `for:` and range, divided by
//! [`SCALE`], the expressions unchanged). What is asserted comes from the rules as
//! Prometheus loaded them (each alert's `for:` and windows) and from the bounds the
//! service exports, with margins for a loaded machine: each alert an outage should raise
//! goes pending within the time alerts.yml documents, then fires once its `for:` has
//! passed, and clears within the documented time of recovery; no other alert is raised;
//! each stream's bound stays put throughout and is the one `/v1/sync` shows.
//!
//! Prometheus is Debian's (`prometheus`, installed by `.ci/run`), run on a free port
//! with its own storage in a temporary directory; without it the test skips
//! ([`crate::tools::skip`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use partnerstack::Entity;
use serde_json::Value;

use crate::client::{partnerstack_down, program, wired};
use crate::common::{TestApp, free_port};
use crate::tools;

/// Every duration of the rules is divided by this, and the service's timings match.
const SCALE: u32 = 60;
/// Prometheus' scrape and evaluation interval.
const TICK: Duration = Duration::from_secs(1);
/// Slack on every time asserted: the machine is shared and loaded.
const MARGIN: Duration = Duration::from_secs(20);

/// Each duration of a rule file (the value of `for:`, and every `[range]` of an
/// expression) divided by `factor`, written in milliseconds; nothing else changes.
fn scale_durations(rules: &str, factor: u32) -> String {
    let scaled = |text: &str| -> String {
        let d = humantime::parse_duration(text.trim())
            .unwrap_or_else(|e| panic!("{text:?} is not a duration: {e}"));
        format!("{}ms", (d / factor).as_millis())
    };
    let mut out = String::new();
    for line in rules.lines() {
        let line = match line.split_once("for: ") {
            Some((head, value)) if line.trim_start().starts_with("for: ") => {
                format!("{head}for: {}", scaled(value))
            }
            _ => {
                let mut rest = line;
                let mut line = String::new();
                while let Some(open) = rest.find('[') {
                    let close = open + rest[open..].find(']').expect("a closed range");
                    line.push_str(&rest[..=open]);
                    line.push_str(&scaled(&rest[open + 1..close]));
                    rest = &rest[close..];
                }
                line + rest
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[test]
fn durations_are_scaled_and_nothing_else() {
    let rules =
        "        expr: sum(rate(x{a=\"b\"}[10m])) / sum(rate(x[1h])) > 0.2\n        for: 15m\n";
    assert_eq!(
        scale_durations(rules, 60),
        "        expr: sum(rate(x{a=\"b\"}[10000ms])) / sum(rate(x[60000ms])) > 0.2\n        for: 15000ms\n"
    );
}

/// Prometheus in a child process (its own process group), stopped on drop.
struct Prometheus {
    child: std::process::Child,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts `binary` scraping `target` every [`TICK`] and evaluating `rules`, with its
    /// storage under `dir`; waits (at most 60 s) until it is ready.
    async fn start(binary: &Path, dir: &Path, target: &str, rules: &Path) -> Prometheus {
        use std::os::unix::process::CommandExt as _;
        let tick = format!("{}s", TICK.as_secs());
        let config = format!(
            "global:\n  scrape_interval: {tick}\n  scrape_timeout: {tick}\n  evaluation_interval: {tick}\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: psync\n    static_configs:\n      - targets: ['{target}']\n",
            rules = rules.display()
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = std::process::Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("prometheus.err")).unwrap())
            .process_group(0)
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log: dir.join("prometheus.err"),
        };
        let http = reqwest::Client::new();
        for _ in 0..600 {
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                panic!(
                    "prometheus exited with {status}:\n{}",
                    prometheus.log_text()
                );
            }
            let ready = http.get(format!("{}/-/ready", prometheus.url)).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return prometheus;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "prometheus was not ready within 60 s:\n{}",
            prometheus.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn api(&self, http: &reqwest::Client, path: &str) -> Value {
        let response = http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "success", "{path}: {body}");
        body["data"].clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// An alerting rule as Prometheus loaded it.
struct Rule {
    /// Its `for:`.
    hold: Duration,
    query: String,
}

/// The range of the first `[...]` selector after `metric` in `query`.
fn window(query: &str, metric: &str) -> Duration {
    let at = query
        .find(metric)
        .unwrap_or_else(|| panic!("{metric} is not in {query}"));
    let rest = &query[at..];
    let open = rest.find('[').expect("a range");
    let close = rest.find(']').expect("a range");
    humantime::parse_duration(&rest[open + 1..close]).unwrap()
}

/// One alert (a rule and its `stream` label) as the test saw it.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// When Prometheus says its expression first became true.
    active_at: Option<DateTime<Utc>>,
    /// When the test first saw it pending, and firing.
    pending: Option<DateTime<Utc>>,
    firing: Option<DateTime<Utc>>,
    /// When the expression became true for the firing alert (later than `active_at` if
    /// it was interrupted, as by a scrape that failed on a loaded machine).
    firing_active_at: Option<DateTime<Utc>>,
    /// After recovery, since when the test has not seen it.
    cleared: Option<DateTime<Utc>>,
}

/// The alerts pending or firing now, by `(alertname, stream)`: their state and `activeAt`.
async fn active(
    prometheus: &Prometheus,
    http: &reqwest::Client,
) -> BTreeMap<(String, String), (String, DateTime<Utc>)> {
    let data = prometheus.api(http, "/api/v1/alerts").await;
    data["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let labels = &a["labels"];
            let key = (
                labels["alertname"].as_str().unwrap().to_string(),
                labels["stream"].as_str().unwrap_or("").to_string(),
            );
            let at = a["activeAt"].as_str().unwrap().parse().unwrap();
            (key, (a["state"].as_str().unwrap().to_string(), at))
        })
        .collect()
}

/// Each enabled stream's staleness bound in `/metrics` and in `/v1/sync`.
async fn bounds(app: &TestApp) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let metrics = app
        .metrics()
        .await
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("psync_reconcile_staleness_bound_seconds{stream=\"")?;
            let (stream, value) = rest.split_once("\"} ")?;
            Some((stream.to_string(), value.trim().parse().unwrap()))
        })
        .collect();
    let sync: Value = app.api_get("/v1/sync").await.json().await.unwrap();
    let sync = sync["data"]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stream"].as_str().unwrap().to_string(),
                s["staleness_bound_seconds"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("no bound: {s}")),
            )
        })
        .collect();
    (metrics, sync)
}

/// Whether the alert `key` was seen firing.
fn fired(seen: &BTreeMap<(String, String), Seen>, key: &(String, String)) -> bool {
    seen.get(key).is_some_and(|s| s.firing.is_some())
}

fn since(at: DateTime<Utc>, from: DateTime<Utc>) -> Duration {
    (at - from).to_std().unwrap_or_default()
}

/// PartnerStack down: every alert about it and about the streams goes pending, then
/// fires, each within the time alerts.yml documents; PartnerStack back: they clear. In a
/// real Prometheus, with time compressed (see the module's documentation).
#[tokio::test]
async fn an_outage_raises_its_alerts_in_a_real_prometheus_and_recovery_clears_them() {
    let Some(binary) = tools::find("PROMETHEUS", "prometheus", &[]) else {
        return tools::skip(
            "prometheus is not installed (.ci/run installs Debian's prometheus package; or \
             set PROMETHEUS)",
        );
    };
    // The defaults of config/default.toml, scaled.
    let minutes = |m: u64| Duration::from_secs(m * 60) / SCALE;
    let pass_budget = minutes(5);
    let max_retry_delay = Duration::from_secs(30) / SCALE;
    let (app, sim) = wired(program(), |c| {
        c.reconcile.interval = Some(minutes(5));
        c.reconcile.pass_budget = pass_budget;
        c.reconcile.max_retry_delay = max_retry_delay;
        c.reconcile.full_interval = minutes(24 * 60);
        // 1h scaled, the lowest bound the settings allow.
        c.reconcile.staleness_bound = minutes(60);
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let original =
        std::fs::read_to_string(crate::monitoring::repo("deploy/prometheus/alerts.yml")).unwrap();
    let rules_file = dir.path().join("alerts.yml");
    std::fs::write(&rules_file, scale_durations(&original, SCALE)).unwrap();
    let prometheus =
        Prometheus::start(&binary, dir.path(), &app.addr.to_string(), &rules_file).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // The rules as Prometheus loaded them: every alert of the file, durations scaled.
    let groups = prometheus.api(&http, "/api/v1/rules").await;
    let rules: BTreeMap<String, Rule> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .map(|r| {
            assert_ne!(r["health"], "err", "{r}");
            let rule = Rule {
                hold: Duration::from_secs_f64(r["duration"].as_f64().unwrap()),
                query: r["query"].as_str().unwrap().to_string(),
            };
            (r["name"].as_str().unwrap().to_string(), rule)
        })
        .collect();
    let in_file = original.matches("- alert: ").count();
    assert_eq!(rules.len(), in_file, "alerts loaded");
    assert_eq!(rules["PsyncStreamStale"].hold, minutes(15));

    // Healthy first: every stream synced, scraped, and no alert pending or firing.
    let healthy = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let sync: Value = app.api_get("/v1/sync").await.json().await.unwrap();
        let synced = sync["data"]["streams"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["staleness_seconds"].is_u64())
            .count();
        let up = prometheus
            .api(
                &http,
                "/api/v1/query?query=max(psync_reconcile_staleness_seconds)",
            )
            .await;
        let scraped = up["result"][0]["value"][1]
            .as_str()
            .is_some_and(|v| v != "+Inf");
        let alerts = active(&prometheus, &http).await;
        if synced == Entity::ALL.len() && scraped && alerts.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < healthy,
            "not healthy within 90 s: {synced} streams synced, scraped: {scraped}, alerts: {alerts:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every rule evaluates without error.
    let groups = prometheus.api(&http, "/api/v1/rules").await;
    for group in groups["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }
    let (bound_metrics, bound_sync) = bounds(&app).await;
    assert_eq!(bound_metrics, bound_sync, "/metrics and /v1/sync");
    assert_eq!(bound_metrics.len(), Entity::ALL.len());

    // What an outage must raise, and by when (from its start; then from recovery, when
    // it must have cleared), as alerts.yml documents it.
    let mut expected: BTreeMap<(String, String), (Duration, Duration)> = BTreeMap::new();
    for (stream, bound) in &bound_metrics {
        expected.insert(
            ("PsyncStreamStale".into(), stream.clone()),
            (
                Duration::from_secs_f64(*bound),
                max_retry_delay + pass_budget * 2,
            ),
        );
        let failing = &rules["PsyncReconcileFailing"].query;
        expected.insert(
            ("PsyncReconcileFailing".into(), stream.clone()),
            (
                window(failing, "psync_reconcile_passes_total"),
                max_retry_delay + pass_budget,
            ),
        );
    }
    let errors = window(
        &rules["PsyncPartnerStackErrors"].query,
        "psync_partnerstack_requests_total",
    );
    expected.insert(
        ("PsyncPartnerStackErrors".into(), String::new()),
        (errors, errors),
    );
    let mut seen: BTreeMap<(String, String), Seen> = BTreeMap::new();
    let mut unexpected = BTreeSet::new();
    let mut bounds_seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();

    // The outage: every request to PartnerStack answered 5xx.
    let outage = Utc::now();
    partnerstack_down(&sim, true);
    let longest = expected
        .iter()
        .map(|(key, (within, _))| *within + rules[&key.0].hold)
        .max()
        .unwrap();
    let deadline = tokio::time::Instant::now() + longest + MARGIN;
    let mut polls = 0u32;
    loop {
        let now = Utc::now();
        for (key, (state, at)) in active(&prometheus, &http).await {
            if !expected.contains_key(&key) {
                unexpected.insert(format!("{key:?} {state} since {at}"));
                continue;
            }
            let s = seen.entry(key).or_default();
            s.active_at.get_or_insert(at);
            if state == "pending" {
                s.pending.get_or_insert(now);
            } else if s.firing.is_none() {
                s.firing = Some(now);
                s.firing_active_at = Some(at);
            }
        }
        // Each stream's bound, in both places, every few seconds.
        if polls.is_multiple_of(10) {
            let (metrics, sync) = bounds(&app).await;
            assert_eq!(metrics, sync, "/metrics and /v1/sync during the outage");
            for (stream, bound) in metrics {
                bounds_seen.entry(stream).or_default().insert(bound as u64);
            }
        }
        polls += 1;
        let all_fired = expected.keys().all(|k| fired(&seen, k));
        if all_fired || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let not_fired: Vec<_> = expected.keys().filter(|k| !fired(&seen, k)).collect();
    assert!(
        not_fired.is_empty(),
        "not fired within {:?} of the outage: {not_fired:?}; seen: {seen:#?}",
        longest + MARGIN
    );

    // Recovery.
    partnerstack_down(&sim, false);
    let recovery = Utc::now();
    let longest = expected.values().map(|(_, clears)| *clears).max().unwrap();
    let deadline = tokio::time::Instant::now() + longest + MARGIN;
    // Cleared for good: gone, and still gone a few evaluations later.
    let settled = TICK * 3;
    loop {
        let now = Utc::now();
        let alerts = active(&prometheus, &http).await;
        for (key, s) in &mut seen {
            s.cleared = if alerts.contains_key(key) {
                None
            } else {
                Some(s.cleared.unwrap_or(now))
            };
        }
        for (key, (state, at)) in alerts {
            if !expected.contains_key(&key) {
                unexpected.insert(format!("{key:?} {state} since {at}"));
            }
        }
        let all_cleared = seen
            .values()
            .all(|s| s.cleared.is_some_and(|at| since(now, at) >= settled));
        if all_cleared || tokio::time::Instant::now() >= deadline + settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (metrics, sync) = bounds(&app).await;
    assert_eq!(metrics, sync, "/metrics and /v1/sync after recovery");
    assert_eq!(
        metrics, bound_metrics,
        "the bounds are those of before the outage"
    );

    // The assertions, each against the rule's own figures.
    let slack = MARGIN + TICK * 2;
    let mut report = Vec::new();
    for (key, (within, clears)) in &expected {
        let s = &seen[key];
        let hold = rules[&key.0].hold;
        let active_at = s.active_at.unwrap();
        let (pending, firing) = (s.pending, s.firing.unwrap());
        let firing_active_at = s.firing_active_at.unwrap();
        report.push(format!(
            "{key:?}: true after {:.1}s (documented: within {within:?}), pending seen: {}, \
             firing after {:.1}s (for: {hold:?}), cleared {:.1}s after recovery (documented: \
             within {clears:?})",
            (active_at - outage).as_seconds_f64(),
            pending.is_some(),
            (firing - firing_active_at).as_seconds_f64(),
            s.cleared
                .map_or(f64::NAN, |c| (c - recovery).as_seconds_f64()),
        ));
        assert!(
            active_at >= outage,
            "{key:?} was active before the outage: {s:?}"
        );
        assert!(
            since(active_at, outage) <= *within + slack,
            "{key:?} became true {:?} after the outage began; documented: within {within:?}",
            since(active_at, outage)
        );
        let pending = pending.unwrap_or_else(|| panic!("{key:?} was never seen pending: {s:?}"));
        assert!(pending < firing, "{key:?}: pending, then firing: {s:?}");
        // Prometheus fires at the first evaluation `for:` after the expression became
        // true: never sooner (the test's clock and Prometheus' are the same).
        let held = since(firing, firing_active_at);
        assert!(
            held + TICK >= hold,
            "{key:?} fired {held:?} after becoming true, before its for: {hold:?}"
        );
        assert!(
            held <= hold + slack,
            "{key:?} fired {held:?} after becoming true; for: {hold:?}"
        );
        assert!(
            since(firing, outage) <= *within + hold + slack,
            "{key:?} fired {:?} after the outage began; documented: within {within:?} and \
             its for: {hold:?}",
            since(firing, outage)
        );
        let cleared = s
            .cleared
            .unwrap_or_else(|| panic!("{key:?} did not clear within {:?}", *clears + MARGIN));
        assert!(
            since(cleared, recovery) <= *clears + slack,
            "{key:?} cleared {:?} after recovery; documented: within {clears:?}",
            since(cleared, recovery)
        );
    }
    eprintln!("alerting:\n  {}", report.join("\n  "));
    assert!(
        unexpected.is_empty(),
        "alerts an outage should not raise: {unexpected:?}"
    );
    // Each stream's bound stayed put through the outage.
    for (stream, values) in &bounds_seen {
        assert_eq!(values.len(), 1, "{stream}'s bound moved: {values:?}");
    }
    assert_eq!(bounds_seen.len(), Entity::ALL.len());

    drop(prometheus);
    sim.stop().await.unwrap();
    app.stop().await;
}
