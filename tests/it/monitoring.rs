//! `deploy/prometheus` and `deploy/grafana` against the service: the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), the service's
//! exposition passes `promtool check metrics`, and the rules and the dashboard name only
//! metrics the service exports. The promtool checks skip ([`crate::tools::skip`]) without
//! promtool (`.ci/run` installs it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::{program, wired};
use crate::relay::endpoint;

pub(crate) fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `$PROMTOOL`, else `promtool` on PATH.
fn promtool() -> Option<PathBuf> {
    crate::tools::find("PROMTOOL", "promtool", &[])
}

const NO_PROMTOOL: &str =
    "promtool is not installed (.ci/run installs Debian's prometheus package; or set PROMTOOL)";

/// Runs promtool with `args` (and `stdin`); its success and output.
fn run_promtool(promtool: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(promtool)
        .args(args)
        .current_dir(repo("deploy/prometheus"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start promtool");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = promtool() else {
        return crate::tools::skip(NO_PROMTOOL);
    };
    let (ok, out) = run_promtool(&promtool, &["check", "rules", "alerts.yml"], None);
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = run_promtool(&promtool, &["test", "rules", "alerts_test.yml"], None);
    assert!(ok && out.contains("SUCCESS"), "promtool test rules:\n{out}");
    // Every alert has at least one unit test.
    let rules = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(repo("deploy/prometheus/alerts_test.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no unit test"
        );
    }
}

/// The metric names `text` mentions: identifiers starting `psync_` or `process_`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    for prefix in ["psync_", "process_"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix).map(|i| i + from) {
            let end = bytes[at..]
                .iter()
                .position(|b| !ident(*b))
                .map_or(bytes.len(), |i| at + i);
            if at == 0 || !ident(bytes[at - 1]) {
                names.insert(text[at..end].to_string());
            }
            from = end;
        }
    }
    names
}

/// Every `expr` of a dashboard, at any depth.
fn expressions(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

/// A service exporting every family (reconciler, PartnerStack client, relay endpoint), and
/// what it exports.
#[tokio::test]
async fn the_dashboard_and_the_rules_use_only_metrics_the_service_exports() {
    let (app, sim) = wired(program(), |c| {
        c.reconcile.interval = Some(Duration::from_secs(3600));
        c.relay = vec![endpoint("probe", "http://127.0.0.1:9/", None)];
    })
    .await;
    let exposition = app.metrics().await;
    let exported: BTreeSet<String> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    assert!(exported.contains("psync_http_request_duration_seconds_bucket"));

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/partnerstack-sync.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() > 30, "{} expressions", exprs.len());
    let used = metric_names(&exprs.join("\n"));
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard uses unknown metrics: {unknown:?}"
    );

    let rules = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
    let in_rules = metric_names(&rules);
    let unknown: Vec<&String> = in_rules.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the alert rules use unknown metrics: {unknown:?}"
    );
    // The unit tests feed the rules only series the service has.
    let tests = std::fs::read_to_string(repo("deploy/prometheus/alerts_test.yml")).unwrap();
    let unknown: Vec<String> = metric_names(&tests)
        .into_iter()
        .filter(|n| !exported.contains(n))
        .collect();
    assert!(
        unknown.is_empty(),
        "the rules' tests use unknown metrics: {unknown:?}"
    );

    // And Prometheus' own linter finds nothing to say about the exposition.
    match promtool() {
        Some(promtool) => {
            let (ok, out) = run_promtool(&promtool, &["check", "metrics"], Some(&exposition));
            assert!(
                ok && out.trim().is_empty(),
                "promtool check metrics:\n{out}"
            );
        }
        None => crate::tools::skip(format!("promtool check metrics: {NO_PROMTOOL}")),
    }
    app.stop().await;
    sim.stop().await.unwrap();
}
