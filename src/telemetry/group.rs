//! Metrics declared once: [`metrics!`](crate::metrics) declares a group of metrics as a
//! struct whose fields are the metrics, each field's doc comment its help text; the
//! [`Exposition`] serves every group on `/metrics`.
//!
//! **Each metric is declared where its labels are.** A group lives in the module that
//! owns the types its labels are made of (the write worker's outcomes, the relay's
//! results, retention's tables), so no module low in the graph names a type of one above
//! it; the service-wide group is [`Metrics`](super::Metrics).
//!
//! **Every labelled series exists from the start, at zero.** A family's label type says
//! which series it has ([`Labels`]): those known without the deployment are created with
//! the group, those the configuration and the served routes call for by
//! [`Exposition::declare`].

use std::hash::Hash;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Metric;
pub use prometheus_client::registry::{Registry, Unit};
use utoipa::openapi::OpenApi;

use crate::config::Config;

/// Every metric name's prefix.
const PREFIX: &str = "psync";

/// What the series a deployment calls for depend on.
pub struct Deployment<'a> {
    pub config: &'a Config,
    /// The served routes: every operation and the statuses it documents.
    pub api: &'a OpenApi,
    /// Whether this service runs the reconciler (stream series exist only then, so a
    /// stream nobody syncs raises no staleness alert).
    pub reconciling: bool,
}

/// The series of a family, by their labels.
pub trait Labels: Sized {
    /// The label sets known without the deployment (created with the group).
    fn fixed() -> Vec<Self> {
        Vec::new()
    }

    /// The label sets `deployment` calls for (created by [`Exposition::declare`]).
    fn declared(_deployment: &Deployment<'_>) -> Vec<Self> {
        Vec::new()
    }
}

/// Creates a metric's series at zero: a family's from its [`Labels`]; a metric without
/// labels has its one series already.
pub trait Precreate {
    fn create_fixed(&self) {}
    fn declare(&self, _deployment: &Deployment<'_>) {}
}

impl<L, M, C> Precreate for Family<L, M, C>
where
    L: Labels + EncodeLabelSet + Clone + Hash + Eq,
    C: MetricConstructor<M>,
{
    fn create_fixed(&self) {
        for labels in L::fixed() {
            let _ = self.get_or_create(&labels);
        }
    }

    fn declare(&self, deployment: &Deployment<'_>) {
        for labels in L::declared(deployment) {
            let _ = self.get_or_create(&labels);
        }
    }
}

impl<N, A> Precreate for Counter<N, A> {}
impl<N, A> Precreate for Gauge<N, A> {}
impl Precreate for Histogram {}

/// A group of metrics declared with [`metrics!`](crate::metrics).
pub trait Group: Send + Sync + 'static {
    /// Registers every metric of the group in `registry`, shared: what the group's owner
    /// records is what is served.
    fn register(&self, registry: &mut Registry);

    /// Creates at zero the series `deployment` calls for.
    fn declare(&self, deployment: &Deployment<'_>);
}

/// Registers `metric` under its field's name: without the unit's suffix (the registry
/// appends it, and `_total` to counters) and with the first paragraph of its doc comment,
/// then `values` in parentheses, as help text.
#[doc(hidden)]
pub fn register(
    registry: &mut Registry,
    field: &str,
    doc: &str,
    unit: Option<Unit>,
    values: Option<String>,
    metric: impl Metric,
) {
    let help = help_text(doc, values);
    match unit {
        Some(unit) => {
            let suffix = format!("_{}", unit.as_str());
            debug_assert!(
                field.ends_with(&suffix),
                "{field} does not end with {suffix}"
            );
            let name = field.strip_suffix(&suffix).unwrap_or(field);
            registry.register_with_unit(name, help, unit, metric);
        }
        None => registry.register(field, help, metric),
    }
}

/// The help text a doc comment gives: its first paragraph on one line, without its final
/// full stop (the registry adds one), then `values` in parentheses.
fn help_text(doc: &str, values: Option<String>) -> String {
    let first: Vec<&str> = doc
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect();
    let text = first.join(" ");
    let text = text.strip_suffix('.').unwrap_or(&text);
    match values {
        Some(values) => format!("{text} ({values})"),
        None => text.to_string(),
    }
}

/// Declares a group of metrics: a struct, `new()` (every series known without the
/// deployment created at zero) and [`Group`]. Each field is a metric named as the field
/// (`psync_` prepended, `_total` appended to counters); its doc comment's first paragraph
/// is the help text. Optional, in this order:
///
/// - `#[unit(Seconds)]`: the unit (a [`Unit`] variant), which the field's name ends with;
/// - `#[values(expr)]`: words (a `String`) appended to the help text in parentheses;
/// - `= expr` after the type: the metric's constructor (else `Default::default()`).
///
/// ```ignore
/// metrics! {
///     /// The relay's metrics.
///     pub struct RelayMetrics {
///         /// Age of the oldest change an endpoint has still to receive.
///         #[unit(Seconds)]
///         pub relay_lag_seconds: Family<EndpointLabel, FloatGauge>,
///     }
/// }
/// ```
#[macro_export]
macro_rules! metrics {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                $(#[unit($unit:ident)])?
                $(#[values($values:expr)])?
                $field_vis:vis $field:ident: $ty:ty $(= $init:expr)?
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $(
                $(#[doc = $doc])+
                $field_vis $field: $ty,
            )+
        }

        impl $name {
            /// Every metric of the group; the series known without the deployment exist,
            /// at zero.
            $vis fn new() -> Self {
                let group = $name {
                    $( $field: $crate::__metric_init!($($init)?), )+
                };
                $( $crate::telemetry::Precreate::create_fixed(&group.$field); )+
                group
            }
        }

        impl ::std::default::Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $crate::telemetry::Group for $name {
            fn register(&self, registry: &mut $crate::telemetry::Registry) {
                $(
                    $crate::telemetry::register(
                        registry,
                        stringify!($field),
                        concat!($($doc, "\n"),+),
                        $crate::__metric_option!($($crate::telemetry::Unit::$unit)?),
                        $crate::__metric_option!($($values)?),
                        self.$field.clone(),
                    );
                )+
            }

            fn declare(&self, deployment: &$crate::telemetry::Deployment<'_>) {
                $( $crate::telemetry::Precreate::declare(&self.$field, deployment); )+
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __metric_init {
    () => {
        ::std::default::Default::default()
    };
    ($init:expr) => {
        $init
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __metric_option {
    () => {
        None
    };
    ($($value:tt)+) => {
        Some($($value)+)
    };
}

/// The build, as `psync_build_info{version}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// What `/metrics` serves: every group added, under `psync_`, the build, and the
/// process's own figures.
pub struct Exposition {
    registry: Registry,
    groups: Vec<Arc<dyn Group>>,
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new()
    }
}

impl Exposition {
    /// The build and the process's figures; no group yet.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(super::process::ProcessCollector));
        registry.sub_registry_with_prefix(PREFIX).register(
            "build",
            "The running build, as a label (always 1)",
            Info::new(BuildLabels {
                version: super::VERSION,
            }),
        );
        Exposition {
            registry,
            groups: Vec::new(),
        }
    }

    /// Serves `group`'s metrics; the handle returned is where they are recorded.
    pub fn add<G: Group>(&mut self, group: G) -> Arc<G> {
        group.register(self.registry.sub_registry_with_prefix(PREFIX));
        let group = Arc::new(group);
        self.groups.push(group.clone());
        group
    }

    /// Creates, at zero, the series of every group that `deployment` calls for.
    pub fn declare(&self, deployment: &Deployment<'_>) {
        for group in &self.groups {
            group.declare(deployment);
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_is_the_first_paragraph_on_one_line_with_values_before_the_full_stop() {
        let doc = " Write attempts, by kind\n and outcome.\n\n Not help.\n";
        assert_eq!(help_text(doc, None), "Write attempts, by kind and outcome");
        assert_eq!(
            help_text(doc, Some("a, b".into())),
            "Write attempts, by kind and outcome (a, b)"
        );
        assert_eq!(help_text(" No full stop\n", None), "No full stop");
    }
}
