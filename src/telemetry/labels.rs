//! The service-wide metrics' labels, and which series each family has ([`Labels`]).

use partnerstack::Entity;
use partnerstack::client::Answer;
use prometheus_client::encoding::EncodeLabelSet;
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::Operation;

use super::group::{Deployment, Labels};
use crate::error::ErrorCode;

/// How the webhook route answered a delivery.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DeliveryResult {
    /// Stored.
    Accepted,
    /// A byte-identical delivery was already stored.
    Duplicate,
    /// Refused, with the error code it was answered with.
    Refused(ErrorCode),
}

impl DeliveryResult {
    /// Every result the webhook route answers with.
    pub const ALL: [DeliveryResult; 6] = [
        DeliveryResult::Accepted,
        DeliveryResult::Duplicate,
        DeliveryResult::Refused(ErrorCode::BadRequest),
        DeliveryResult::Refused(ErrorCode::Unauthorized),
        DeliveryResult::Refused(ErrorCode::PayloadTooLarge),
        DeliveryResult::Refused(ErrorCode::Unavailable),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryResult::Accepted => "accepted",
            DeliveryResult::Duplicate => "duplicate",
            DeliveryResult::Refused(code) => code.as_str(),
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for DeliveryResult {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: DeliveryResult,
}

impl Labels for ResultLabel {
    fn fixed() -> Vec<Self> {
        DeliveryResult::ALL
            .into_iter()
            .map(|result| ResultLabel { result })
            .collect()
    }
}

/// Every operation `api` serves: its method, path template and description.
fn operations(api: &OpenApi) -> Vec<(&'static str, &String, &Operation)> {
    let mut out = Vec::new();
    for (path, item) in &api.paths.paths {
        let operations = [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            out.push((method, path, operation));
        }
    }
    out
}

/// An HTTP route: its method and template (never the raw path).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

impl Labels for RouteLabels {
    /// Every served operation.
    fn declared(deployment: &Deployment<'_>) -> Vec<Self> {
        operations(deployment.api)
            .into_iter()
            .map(|(method, route, _)| RouteLabels {
                method: method.to_string(),
                route: route.clone(),
            })
            .collect()
    }
}

/// An HTTP answer: its route and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

impl Labels for AnswerLabels {
    /// Every served operation with each status it documents.
    fn declared(deployment: &Deployment<'_>) -> Vec<Self> {
        let mut out = Vec::new();
        for (method, route, operation) in operations(deployment.api) {
            for status in operation.responses.responses.keys() {
                if let Ok(status) = status.parse::<u16>() {
                    out.push(AnswerLabels {
                        method: method.to_string(),
                        route: route.clone(),
                        status,
                    });
                }
            }
        }
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub stream: &'static str,
}

impl Labels for StreamLabel {
    /// The streams this service reconciles (none when it does not).
    fn declared(deployment: &Deployment<'_>) -> Vec<Self> {
        if !deployment.reconciling {
            return Vec::new();
        }
        let streams = &deployment.config.reconcile.streams;
        streams
            .iter()
            .map(|entity| StreamLabel {
                stream: entity.stream(),
            })
            .collect()
    }
}

/// A stream, any of them: for series that exist whether or not the stream is reconciled
/// (objects can be set aside from webhooks and writes too).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EntityLabel {
    pub stream: &'static str,
}

impl Labels for EntityLabel {
    fn fixed() -> Vec<Self> {
        Entity::ALL
            .iter()
            .map(|entity| EntityLabel {
                stream: entity.stream(),
            })
            .collect()
    }
}

/// A PartnerStack endpoint: the method and path template (`/customers/{key}`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub method: String,
    pub endpoint: String,
}

impl Labels for UpstreamLabels {
    /// Every endpoint the client can call (none without credentials: no client).
    fn declared(deployment: &Deployment<'_>) -> Vec<Self> {
        let partnerstack = &deployment.config.partnerstack;
        if partnerstack.credentials().is_none() {
            return Vec::new();
        }
        partnerstack
            .endpoints()
            .into_iter()
            .map(|(method, endpoint)| UpstreamLabels {
                method: method.to_string(),
                endpoint,
            })
            .collect()
    }
}

/// What a request to PartnerStack was spent on (`reconcile`, `verify`, `write`, `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurposeLabel {
    pub purpose: &'static str,
}

impl Labels for PurposeLabel {
    /// Every purpose, whenever there is a client (credentials set).
    fn declared(deployment: &Deployment<'_>) -> Vec<Self> {
        if deployment.config.partnerstack.credentials().is_none() {
            return Vec::new();
        }
        partnerstack::client::Purpose::ALL
            .iter()
            .map(|p| PurposeLabel {
                purpose: p.as_str(),
            })
            .collect()
    }
}

/// A PartnerStack answer: its endpoint, and its status class ([`Answer::class`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamAnswerLabels {
    pub method: String,
    pub endpoint: String,
    pub status: &'static str,
}

impl Labels for UpstreamAnswerLabels {
    /// Every endpoint the client can call, with each status class.
    fn declared(deployment: &Deployment<'_>) -> Vec<Self> {
        let mut out = Vec::new();
        for UpstreamLabels { method, endpoint } in UpstreamLabels::declared(deployment) {
            for status in Answer::CLASSES {
                out.push(UpstreamAnswerLabels {
                    method: method.clone(),
                    endpoint: endpoint.clone(),
                    status,
                });
            }
        }
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// `idle` or `in_use`.
    pub state: &'static str,
}

impl PoolLabel {
    pub const STATES: [&'static str; 2] = ["idle", "in_use"];
}

impl Labels for PoolLabel {
    fn fixed() -> Vec<Self> {
        PoolLabel::STATES
            .into_iter()
            .map(|state| PoolLabel { state })
            .collect()
    }
}
