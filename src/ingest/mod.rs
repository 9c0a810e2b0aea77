//! The ingest pipeline behind `POST /webhooks/partnerstack/{token}`
//! ([`crate::routes::webhook`]): the [`writer`] commits deliveries raw, in shared
//! batches, in a task no client can cancel; the [`applier`] applies stored deliveries to
//! the entity tables through [`crate::apply`], after the [`verify`]er has fetched the
//! objects they name from PartnerStack (in verified mode). Their metrics are
//! [`IngestMetrics`].

pub mod applier;
pub mod verify;
pub mod writer;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::db::events::Outcome;
use crate::telemetry::Labels;
use applier::ApplyLabel;
use verify::FetchLabel;

/// A stored delivery's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: Outcome,
}

impl Labels for OutcomeLabel {
    fn fixed() -> Vec<Self> {
        Outcome::ALL
            .iter()
            .map(|&outcome| OutcomeLabel { outcome })
            .collect()
    }
}

crate::metrics! {
    /// The pipeline's metrics (its queue's, read when scraped, are service-wide).
    pub struct IngestMetrics {
        /// Stored webhook deliveries applied, by outcome.
        #[values(Outcome::words())]
        pub webhook_events_applied: Family<OutcomeLabel, Counter>,
        /// Objects fetched from PartnerStack to verify webhook deliveries, by result.
        pub webhook_fetches: Family<FetchLabel, Counter>,
        /// Deliveries committed per writer statement.
        pub ingest_batch_size: Histogram = Histogram::new(exponential_buckets(1.0, 2.0, 11)),
        /// Transactions the applier ran, by result.
        #[values(applier::ApplyResult::words())]
        pub apply_transactions: Family<ApplyLabel, Counter>,
    }
}
