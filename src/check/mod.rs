//! `partnerstack-sync check`: asks the PartnerStack account the questions
//! `docs/partnerstack.md` lists as guesses, stores the answers, and says what the service
//! will do with each.
//!
//! Read-only by default ([`reads`]); with `--writes`, through a throwaway customer and
//! transaction that it removes again ([`trial`]). No answer is read from a message's
//! wording: each is classified by HTTP status and by reading objects back. Settled answers
//! are stored (`account_answers`) under a digest of the account ([`account`]); the
//! service uses those that change its behaviour in place of its defaults
//! ([`settled`]), and `/v1/sync` and `/status` show which questions are settled.

pub mod reads;
pub mod settled;
pub mod trial;

use std::fmt::Write as _;

use partnerstack::client::{Client, Error as ClientError, Probe};
use reqwest::StatusCode;
use serde::Serialize;
use sha2::Digest as _;

use crate::config::PartnerStackConfig;

/// What one question got from the account.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The question's id (`page_size`, `time_filter.customers`, ...).
    pub question: String,
    /// The question, in words.
    pub asked: String,
    /// The settled answer's word; `None` when the account's behaviour could not be
    /// observed (the question stays a guess and nothing is stored).
    pub answer: Option<String>,
    /// What the account did.
    pub observed: String,
    /// What the service will do.
    pub service: String,
}

impl Finding {
    /// A settled answer to `question`.
    pub fn settled(question: &str, answer: &str, observed: impl Into<String>) -> Finding {
        Finding::new(question, Some(answer.to_string()), observed.into())
    }

    /// A question this run could not answer: `observed` says why.
    pub fn open(question: &str, observed: impl Into<String>) -> Finding {
        Finding::new(question, None, observed.into())
    }

    fn new(question: &str, answer: Option<String>, observed: String) -> Finding {
        Finding {
            question: question.to_string(),
            asked: settled::asked(question),
            service: settled::consequence(question, answer.as_deref()),
            answer,
            observed,
        }
    }
}

/// A whole run's findings.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The API root asked.
    pub base_url: String,
    /// The digest the answers are stored under (see [`account`]).
    pub account: String,
    /// Whether the write questions were asked.
    pub writes: bool,
    pub findings: Vec<Finding>,
}

/// Why a run could not ask its questions.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(
        "PartnerStack refused the API keys ({0}): check PARTNERSTACK_PUBLIC_KEY and PARTNERSTACK_SECRET_KEY"
    )]
    Unauthorized(StatusCode),
    #[error("PartnerStack could not be reached at {base_url}: {detail}")]
    Unreachable { base_url: String, detail: String },
    #[error("PartnerStack answered {status} to {what}; no question was answered")]
    Refused { what: String, status: StatusCode },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The digest answers about the account of `settings` are stored under: its API root and
/// public key, hashed (no credential is stored). `None` without credentials.
pub fn account(settings: &PartnerStackConfig) -> Option<String> {
    use secrecy::ExposeSecret as _;
    let (public_key, _) = settings.credentials()?;
    let base = settings.base_url.trim_end_matches('/');
    let digest = sha2::Sha256::digest(format!("{base}\n{}", public_key.expose_secret()));
    Some(hex::encode(&digest[..8]))
}

/// Asks the account every question (the write questions when `writes`), without storing
/// anything. Fails on refused keys or an unreachable API before any other question.
pub async fn ask(
    client: &Client,
    settings: &PartnerStackConfig,
    writes: bool,
    trial_options: &trial::Options,
) -> Result<Report, CheckError> {
    let account = account(settings).ok_or(ClientError::NoCredentials)?;
    let base_url = settings.base_url.clone();
    let mut findings = reads::ask(client, &base_url).await?;
    if writes {
        // A write question that settles one the reads left open (archived customers)
        // takes its place.
        for finding in trial::ask(client, trial_options).await? {
            match findings.iter_mut().find(|f| f.question == finding.question) {
                Some(f) if finding.answer.is_some() || f.answer.is_none() => *f = finding,
                Some(_) => {}
                None => findings.push(finding),
            }
        }
    }
    Ok(Report {
        base_url,
        account,
        writes,
        findings,
    })
}

/// The settled findings of `report`, stored for its account.
pub async fn store(pool: &sqlx::PgPool, report: &Report) -> Result<usize, sqlx::Error> {
    let rows: Vec<(String, String, String)> = report
        .findings
        .iter()
        .filter_map(|f| {
            let answer = f.answer.clone()?;
            Some((f.question.clone(), answer, f.observed.clone()))
        })
        .collect();
    crate::db::answers::store(pool, &report.account, &rows).await?;
    Ok(rows.len())
}

/// `probe`, with refused keys and an unreachable API turned into their [`CheckError`].
pub(crate) async fn sent(
    result: Result<Probe, ClientError>,
    base_url: &str,
) -> Result<Probe, CheckError> {
    match result {
        Ok(p) if matches!(p.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
            Err(CheckError::Unauthorized(p.status))
        }
        Ok(p) => Ok(p),
        Err(ClientError::Transport { detail, .. }) => Err(CheckError::Unreachable {
            base_url: base_url.to_string(),
            detail,
        }),
        Err(e) => Err(e.into()),
    }
}

/// The report as a table: the question and its answer, then what the account did and
/// what the service will do under them.
pub fn table(report: &Report) -> String {
    let answer = |f: &Finding| f.answer.clone().unwrap_or_else(|| "(still a guess)".into());
    let asked = report
        .findings
        .iter()
        .map(|f| f.asked.len())
        .max()
        .unwrap_or(0);
    let answered = report
        .findings
        .iter()
        .map(|f| answer(f).len())
        .max()
        .unwrap_or(0)
        .max("answer".len());
    let indent = " ".repeat(asked + answered + 4);
    let mut out = String::new();
    let _ = writeln!(out, "PartnerStack account at {}\n", report.base_url);
    let _ = writeln!(
        out,
        "{:asked$}  {:answered$}  what the account did / what the service will do",
        "question", "answer"
    );
    for f in &report.findings {
        let _ = writeln!(
            out,
            "{:asked$}  {:answered$}  account: {}",
            f.asked,
            answer(f),
            f.observed
        );
        let _ = writeln!(out, "{indent}service: {}", f.service);
    }
    let settled = report
        .findings
        .iter()
        .filter(|f| f.answer.is_some())
        .count();
    let _ = writeln!(
        out,
        "\n{settled} of {} questions settled{}",
        report.findings.len(),
        if report.writes {
            ""
        } else {
            " (--writes asks the write questions through a throwaway customer)"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_question_with_both_sides() {
        let report = Report {
            base_url: "http://127.0.0.1:1/api/v2".into(),
            account: "abc".into(),
            writes: false,
            findings: vec![
                Finding::settled("page_size", "100", "limit=250 answered 400"),
                Finding::open("archived.customers", "none listed"),
            ],
        };
        let table = table(&report);
        assert!(
            table.contains("Does a list accept 250 items a page?  100"),
            "{table}"
        );
        assert!(table.contains("account: limit=250 answered 400"), "{table}");
        assert!(
            table.contains("service: lists are read 100 items a page"),
            "{table}"
        );
        assert!(
            table.contains("(still a guess)  account: none listed"),
            "{table}"
        );
        assert!(table.contains("1 of 2 questions settled"), "{table}");
    }
}
