//! Logs: `tracing` to stdout, filtered by `RUST_LOG`, as text or JSON (`log.format`).
//!
//! JSON lines are flat, for log pipelines: one object per line with `timestamp`, `level`,
//! `target`, `message`, `service` and `version`, the fields of every span the event is in
//! (a request's `request_id`, `method` and `route`; a pass's `stream`), and the event's
//! own fields (the access log's numeric `latency_ms` and `http.status`). Nothing is nested,
//! and no field is called bare `status` (pipelines read that as the level).

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// What is logged when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn";

/// The `service` of every JSON line.
pub const SERVICE: &str = "partnerstack-sync";

/// The log filter: `RUST_LOG` when set (an invalid one is an error, not ignored), else
/// `default_filter`.
pub fn filter(rust_log: Option<&str>, default_filter: &str) -> Result<EnvFilter, String> {
    match rust_log {
        Some(directives) => EnvFilter::builder()
            .parse(directives)
            .map_err(|e| format!("RUST_LOG {directives:?} is not a valid log filter: {e}")),
        None => Ok(EnvFilter::new(default_filter)),
    }
}

/// Installs the global log subscriber, filtered by `RUST_LOG` or else `default_filter`.
/// Fails on an invalid (or non-Unicode) `RUST_LOG`. Safe to call more than once (later
/// calls install nothing).
pub fn init_logging(format: LogFormat, default_filter: &str) -> Result<(), String> {
    let rust_log = match std::env::var("RUST_LOG") {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("RUST_LOG is not valid Unicode".to_string());
        }
    };
    let filter = filter(rust_log.as_deref(), default_filter)?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    Ok(())
}

/// One flat JSON object per event (see the module documentation).
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        // Spans' fields, outermost first, so inner spans (and then the event) win.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields)
                {
                    line.extend(map);
                }
            }
        }
        event.record(&mut Fields(&mut line));
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        line.insert("service".into(), SERVICE.into());
        line.insert("version".into(), super::VERSION.into());
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Records an event's fields as JSON values: numbers and booleans stay numbers and
/// booleans.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_are_flat_with_span_fields_and_typed_values() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(move || out.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "abc-123", route = "/v1/x");
            let _entered = span.enter();
            tracing::info!(
                latency_ms = 1.25,
                http.status = 404_u16,
                ok = true,
                "finished"
            );
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["request_id"], "abc-123");
        assert_eq!(line["route"], "/v1/x");
        assert_eq!(line["latency_ms"], 1.25);
        assert_eq!(line["http.status"], 404);
        assert_eq!(line["ok"], true);
        assert_eq!(line["message"], "finished");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["service"], SERVICE);
        assert_eq!(line["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            line.get("status").is_none() && line.get("spans").is_none(),
            "{line}"
        );
    }

    #[test]
    fn an_invalid_rust_log_is_an_error() {
        assert!(filter(Some("info,sqlx=warn"), "info").is_ok());
        assert!(filter(None, "info").is_ok());
        let err = filter(Some("info,[[["), "info").unwrap_err();
        assert!(err.contains("RUST_LOG"), "{err}");
        assert!(filter(Some("partnerstack_sync=loud"), "info").is_err());
    }
}
