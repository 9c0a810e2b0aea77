//! The baseline: this machine's Postgres running the service's own SQL under pgbench.
//!
//! The statements are the service's (taken from the library, not copied): only their
//! array parameters are replaced by SQL expressions that build the same arrays, because
//! pgbench cannot bind arrays.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use partnerstack::Entity;
use partnerstack_sync::apply::upsert_sql_for;
use partnerstack_sync::db::changes::{APPEND_SQL, lock_sql};
use partnerstack_sync::db::events::INSERT_EVENTS_SQL;
use partnerstack_sync::db::writes::ACCEPT_SQL;

/// pgbench's results.
#[derive(Debug, Default)]
pub struct Run {
    pub tps: f64,
    /// Per-transaction latencies (including schedule lag under `--rate`), µs, sorted.
    pub latencies_us: Vec<u64>,
}

impl Run {
    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        crate::load::quantile_ms(&self.latencies_us, q)
    }
}

pub fn pgbench_path() -> anyhow::Result<PathBuf> {
    let dir = partnerstack_sync::db::embedded::find_bin_dir().context("no PostgreSQL binaries")?;
    let path = dir.join("pgbench");
    if path.is_file() {
        return Ok(path);
    }
    Ok(PathBuf::from("pgbench"))
}

/// Runs `script` with pgbench against `url`.
pub fn run(
    url: &str,
    script: &str,
    clients: usize,
    duration: Duration,
    rate: Option<f64>,
    workdir: &Path,
    label: &str,
) -> anyhow::Result<Run> {
    run_scripts(
        url,
        &[script.to_string()],
        clients,
        duration,
        rate,
        workdir,
        label,
    )
}

/// Runs pgbench with several scripts, each transaction picking one at random.
pub fn run_scripts(
    url: &str,
    scripts: &[String],
    clients: usize,
    duration: Duration,
    rate: Option<f64>,
    workdir: &Path,
    label: &str,
) -> anyhow::Result<Run> {
    let weighted: Vec<(String, u32)> = scripts.iter().map(|s| (s.clone(), 1)).collect();
    run_weighted(url, &weighted, clients, duration, rate, workdir, label)
}

/// Runs pgbench with several scripts, each transaction picking one at random in
/// proportion to its weight.
pub fn run_weighted(
    url: &str,
    scripts: &[(String, u32)],
    clients: usize,
    duration: Duration,
    rate: Option<f64>,
    workdir: &Path,
    label: &str,
) -> anyhow::Result<Run> {
    let log_dir = workdir.join(format!("{label}-log"));
    let _ = std::fs::remove_dir_all(&log_dir);
    std::fs::create_dir_all(&log_dir)?;
    let mut cmd = Command::new(pgbench_path()?);
    // The service's own session settings (db::session_options): no JIT.
    cmd.env("PGOPTIONS", "-c jit=off");
    cmd.arg("--no-vacuum")
        .arg("--protocol=prepared")
        .arg(format!("--client={clients}"))
        .arg(format!("--jobs={}", clients.min(2)))
        .arg(format!("--time={}", duration.as_secs().max(1)));
    for (i, (script, weight)) in scripts.iter().enumerate() {
        let path = workdir.join(format!("{label}-{i}.sql"));
        std::fs::write(&path, script)?;
        cmd.arg(format!("--file={}@{weight}", path.display()));
    }
    cmd.arg("--log")
        .arg(format!("--log-prefix={}", log_dir.join("tx").display()))
        .arg(url)
        .current_dir(workdir);
    if let Some(rate) = rate {
        cmd.arg(format!("--rate={rate}"));
    }
    let out = cmd.output().context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps in pgbench output:\n{text}"))?;
    let mut latencies_us = Vec::new();
    for entry in std::fs::read_dir(&log_dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            // client_id transaction_no time script_no time_epoch time_us [schedule_lag]
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 6 {
                let time: u64 = f[2].parse().unwrap_or(0);
                let lag: u64 = f.get(6).and_then(|v| v.parse().ok()).unwrap_or(0);
                latencies_us.push(time + lag);
            }
        }
    }
    latencies_us.sort_unstable();
    Ok(Run { tps, latencies_us })
}

/// Replaces every `$n` placeholder (with its `::type[]` cast, if any) with the given SQL
/// expression (`exprs[n-1]`).
fn bind(sql: &str, exprs: &[String]) -> String {
    let mut out = sql.to_string();
    // Highest first, so `$1` does not match the start of `$12`.
    for (i, expr) in exprs.iter().enumerate().rev() {
        let placeholder = format!("${}", i + 1);
        while let Some(start) = out.find(&placeholder) {
            let rest = &out[start..];
            let len = rest
                .find(|c: char| c == ',' || c == ')' || c.is_whitespace())
                .unwrap_or(rest.len());
            out.replace_range(start..start + len, expr);
        }
    }
    // pgbench reads one statement per line unless it ends with a semicolon; keep it on one.
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Array expressions for `entity`'s upsert: `rows` rows per statement, keys derived from
/// pgbench variables so every statement touches new rows.
fn upsert_exprs(entity: Entity, rows: usize, key: &str, raw_bytes: usize) -> Vec<String> {
    let series = |expr: &str, ty: &str| {
        if rows == 1 {
            format!("ARRAY[{expr}]::{ty}[]", expr = expr.replace("g.i", "1"))
        } else {
            format!("ARRAY(SELECT {expr} FROM generate_series(1, {rows}) AS g(i))::{ty}[]")
        }
    };
    let mut exprs = vec![
        "'webhook'".to_string(),
        series(&format!("{key} || '_' || g.i"), "text"),
        series("now()", "timestamptz"),
        series("now()", "timestamptz"),
        series("now()", "timestamptz"),
        series("false", "boolean"),
        series(
            &format!(
                "('{{\"key\":\"' || {key} || '\",\"pad\":\"' || repeat('x', {raw_bytes}) || '\"}}')::jsonb"
            ),
            "jsonb",
        ),
    ];
    let sql = upsert_sql_for(entity);
    // The typed columns follow, each `$n::type[]`: give each a plausible non-null value.
    let mut n = 8;
    while let Some(pos) = sql.find(&format!("${n}::")) {
        let ty: String = sql[pos + format!("${n}::").len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let value = match ty.as_str() {
            // Each object its own values (partners, currencies, ...), as in a real page: the
            // partner totals' triggers then see as many groups as a page of real objects.
            "text" => format!("'v' || {key} || '_' || g.i"),
            "bigint" => "4999".to_string(),
            "boolean" => "true".to_string(),
            "timestamptz" => "now()".to_string(),
            "date" => "current_date".to_string(),
            _ => "'[\"tag\"]'::jsonb".to_string(),
        };
        exprs.push(series(&value, &ty));
        n += 1;
    }
    exprs
}

/// One delivery per transaction: the writer's event insert plus the applier's customer
/// upsert, as the service would do them without batching.
pub fn per_delivery_script() -> String {
    let key = "('cus_' || :client_id::text || '_' || :n::text)";
    let events = bind(
        INSERT_EVENTS_SQL,
        &[
            format!("ARRAY[sha256(convert_to({key} || clock_timestamp()::text, 'UTF8'))]"),
            "ARRAY['customer_created']".to_string(),
            format!(
                "ARRAY['{{\"event\":\"customer.created\",\"key\":\"' || {key} || '\",\"pad\":\"' || repeat('x', 1400) || '\"}}']"
            ),
        ],
    );
    let upsert = bind(
        upsert_sql_for(Entity::Customer),
        &upsert_exprs(Entity::Customer, 1, key, 1200),
    );
    format!("\\set n random(1, 2000000000)\nBEGIN;\n{events};\n{upsert};\nEND;\n")
}

/// The SQL type of `entity`'s typed column `n` (from `$n::type[]` in its upsert), with a
/// plausible non-null value for it, as pgbench expressions.
fn column_values(entity: Entity, key: &str) -> Vec<(&'static str, String)> {
    partnerstack_sync::columns::of(entity)
        .iter()
        .map(|c| {
            use partnerstack_sync::columns::SqlType;
            let value = match c.ty {
                SqlType::Text => format!("'v' || {key} || '_' || g.i"),
                SqlType::Int => "4999".to_string(),
                SqlType::Bool => "true".to_string(),
                SqlType::Ts => "now()".to_string(),
                SqlType::Date => "current_date".to_string(),
                SqlType::Json => "'[\"tag\"]'::jsonb".to_string(),
            };
            (partnerstack_sync::columns::served_name(c.name), value)
        })
        .collect()
}

/// One reconciler page of `rows` new objects of `entity` per transaction, as `apply()`
/// writes it: the change log's locking read of the page's keys (`changes::lock_sql`), the
/// upsert (`apply::upsert_sql_for`), and the change log's append (`changes::APPEND_SQL`)
/// with a state of the size apply() logs.
pub fn page_apply_script(entity: Entity, rows: usize) -> String {
    let key = "('obj_' || :client_id::text || '_' || :n::text)";
    let series = |expr: &str, ty: &str| {
        format!("ARRAY(SELECT {expr} FROM generate_series(1, {rows}) AS g(i))::{ty}[]")
    };
    let keys = series(&format!("{key} || '_' || g.i"), "text");
    let lock = bind(lock_sql(entity), std::slice::from_ref(&keys));
    // The stand-in's objects are 350-600 bytes of JSON.
    let upsert = bind(
        upsert_sql_for(entity),
        &upsert_exprs(entity, rows, key, 400),
    );
    let mut fields = vec![format!("'key', {key} || '_' || g.i")];
    fields.extend(
        column_values(entity, key)
            .into_iter()
            .map(|(name, value)| format!("'{name}', {value}")),
    );
    fields.extend(
        [
            "'created_at', now()",
            "'updated_at', now()",
            "'deleted_at', NULL",
        ]
        .map(String::from),
    );
    let state = format!("jsonb_build_object({})", fields.join(", "));
    let append = bind(
        APPEND_SQL,
        &[
            "'reconcile'".to_string(),
            "NULL".to_string(),
            series(
                &format!("'{}'", partnerstack_sync::columns::table(entity)),
                "text",
            ),
            keys.clone(),
            series("'created'", "text"),
            series("'{}'::jsonb", "jsonb"),
            series(&state, "jsonb"),
        ],
    );
    format!("\\set n random(1, 2000000000)\nBEGIN;\n{lock};\n{upsert};\n{append};\nEND;\n")
}

/// One accepted write per transaction: the outbox insert the service commits before it
/// answers a write (`db::writes::ACCEPT_SQL`), with a request of the same size.
pub fn write_accept_script() -> String {
    let key = "('bench-' || :client_id::text || '-' || :n::text)";
    let accept = bind(
        ACCEPT_SQL,
        &[
            "'create_customer'".to_string(),
            format!("'customer:' || {key}"),
            format!("encode(sha256(convert_to({key}, 'UTF8')), 'hex')"),
            format!(
                "('{{\"customer_key\":\"' || {key} || '\",\"email\":\"' || {key} || '@example.com\",\"partner_key\":\"partner_1\"}}')::jsonb"
            ),
            key.to_string(),
            format!("ARRAY['key:' || {key}, 'email:' || {key} || '@example.com']"),
            "'bench'".to_string(),
        ],
    );
    format!("\\set n random(1, 2000000000)\n{accept};\n")
}
