//! Stored answers at run time: what each question means, what the service does under
//! each answer, and the answers that replace a default.
//!
//! Three answers change what the service does (each only where the setting is left at
//! its default; a setting given in a file or the environment wins):
//!
//! - `page_size`: the largest page the account accepts becomes `partnerstack.page_size`.
//! - `time_filter.<stream>` = `ignored` or `refused`: that stream's passes are full scans
//!   (an ignored filter reads everything anyway; a full scan also finds deletions), never
//!   incremental or window passes (`reconcile.unfiltered`).
//! - `new_customer_invisible` (milliseconds): `writes.lookup_window` becomes three times
//!   the measured delay, at least a minute.
//!
//! The others say which of the alternatives the service already handles the account
//! takes; `/v1/sync` and `/status` show every question, settled (with when) or a guess.

use std::time::Duration;

use chrono::{DateTime, Utc};
use partnerstack::Entity;
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::config::Config;
use crate::db::answers::{self, StoredAnswer};

/// The shortest look-up window a measured delay sets.
pub const MIN_LOOKUP_WINDOW: Duration = Duration::from_secs(60);

/// The questions, in the order they are shown: id, question, what the service assumes
/// until it is settled.
pub fn catalogue() -> Vec<(String, String, &'static str)> {
    let mut out: Vec<(String, String, &'static str)> = vec![
        (
            "page_size".into(),
            "Does a list accept 250 items a page?".into(),
            "250, the documented maximum",
        ),
        (
            "list_order".into(),
            "Are lists newest created first?".into(),
            "newest first (documented); a full scan does not depend on it",
        ),
    ];
    for entity in Entity::ALL {
        let (filter, _) = super::reads::time_filter_of(entity);
        out.push((
            format!("time_filter.{}", entity.stream()),
            format!(
                "Does the {} list honour {}?",
                entity.stream(),
                filter.param()
            ),
            "honoured: passes between full scans read only what changed",
        ));
    }
    for entity in [
        Entity::Partner,
        Entity::Customer,
        Entity::Deal,
        Entity::Lead,
    ] {
        out.push((
            format!("single_read.{}", entity.stream()),
            format!("Can one {} be read by key?", entity.name()),
            "yes (documented): webhook deliveries are verified by reading their object",
        ));
    }
    out.extend([
        ("partnership_by_partner_key".into(), "Does GET /partnerships/{partner_key} find a partnership?".into(), "unknown: a partnership body without key is resolved by partner_key in the copy"),
        ("lost_cursor".into(), "What does a list answer for a cursor naming no object?".into(), "a 4xx or an empty page: either restarts the pass from the top"),
        ("archived.partnerships".into(), "Do lists show archived partnerships?".into(), "hidden, flagged or listed without a flag: all handled"),
        ("archived.customers".into(), "Do lists show archived customers?".into(), "hidden, flagged or listed without a flag: all handled (an archived customer is marked deleted)"),
        ("rate_limit_headers".into(), "Do answers carry rate-limit headers?".into(), "undocumented: logged when seen; the client keeps its own budget"),
        ("duplicate_customer_key".into(), "What does a repeated customer_key get? (--writes)".into(), "a refusal or a customer: a create succeeds only when a look-up finds it as asked"),
        ("duplicate_transaction_key".into(), "What does a repeated transaction key get? (--writes)".into(), "a refusal or the existing one: a create succeeds only when a look-up finds it as asked"),
        ("delete_answer".into(), "What does a delete answer? (--writes)".into(), "any 2xx is the delete done, with or without data, or empty"),
        ("new_customer_invisible".into(), "How long is a new customer unknown to GET /customers/{key}? (--writes)".into(), "up to 6 minutes (seen): writes.lookup_window 15 min"),
    ]);
    out
}

/// The question `id` in words.
pub fn asked(id: &str) -> String {
    catalogue()
        .into_iter()
        .find(|(q, ..)| q == id)
        .map_or_else(|| id.to_string(), |(_, asked, _)| asked)
}

/// What the service does under `answer` to `question` (`None`: not settled).
pub fn consequence(question: &str, answer: Option<&str>) -> String {
    let Some(answer) = answer else {
        return catalogue()
            .into_iter()
            .find(|(q, ..)| q == question)
            .map_or("no default".into(), |(.., guess)| {
                format!("still a guess: {guess}")
            });
    };
    let stream = question.split_once('.').map_or("", |(_, s)| s);
    match (question.split_once('.').map_or(question, |(q, _)| q), answer) {
        ("page_size", n) => format!("lists are read {n} items a page (unless partnerstack.page_size is set)"),
        ("time_filter", "honoured") => format!("{stream}: incremental passes between full scans"),
        ("time_filter", _) => format!("{stream}: every pass is a full scan (the filter does not narrow the list)"),
        ("new_customer_invisible", ms) => {
            let window = lookup_window(ms).map_or("unchanged".into(), |w| format!("{} s", w.as_secs()));
            format!("writes.lookup_window {window} (three times the delay, at least 1 min), unless set")
        }
        ("list_order", "newest_first") => "as assumed: nothing changes".into(),
        ("list_order", _) => "passes read every page whatever the order; a resumed pass still restarts safely".into(),
        ("single_read", "found") => "deliveries are verified by reading their object, as assumed".into(),
        ("single_read", _) => "verification of this kind finds nothing: deliveries are applied once their retry window ends; consider webhooks.verification = \"trust\"".into(),
        ("partnership_by_partner_key", a) => format!("{a}: bodies without key are resolved by partner_key in the copy"),
        ("lost_cursor", _) => "a pass whose cursor fails restarts from the top (handled for every answer)".into(),
        ("archived", "flagged") => "listed archived objects carry the flag and are marked deleted in the copy".into(),
        ("archived", "unflagged") => "archived objects look live in lists: a deletion learned from a webhook stays until a newer sighting; one no webhook delivered cannot be seen by passes".into(),
        ("archived", _) => "objects a full scan no longer sees are marked deleted".into(),
        ("rate_limit_headers", _) => "rate-limit headers are logged at debug; the request budget is the client's own".into(),
        ("duplicate_customer_key" | "duplicate_transaction_key", _) => {
            "a create succeeds only when its object is there as asked (handled for every answer)".into()
        }
        ("delete_answer", _) => "any 2xx is the delete done (handled for every answer)".into(),
        _ => "recorded".into(),
    }
}

/// The look-up window a measured delay (milliseconds) sets.
pub fn lookup_window(ms: &str) -> Option<Duration> {
    let ms: u64 = ms.parse().ok()?;
    Some(Duration::from_millis(ms.saturating_mul(3)).max(MIN_LOOKUP_WINDOW))
}

/// Puts the stored answers that change behaviour in place of the defaults of `config`;
/// returns what changed, in words, for the log.
pub fn apply(config: &mut Config, stored: &[StoredAnswer]) -> Vec<String> {
    let mut changed = Vec::new();
    for a in stored {
        let stream = a.question.strip_prefix("time_filter.");
        if a.question == "page_size"
            && !config.set_explicitly("partnerstack.page_size")
            && let Ok(n) = a.answer.parse::<u32>()
            && (1..=250).contains(&n)
        {
            config.partnerstack.page_size = n;
            changed.push(format!(
                "partnerstack.page_size = {n} (settled {})",
                a.settled_at
            ));
        } else if let Some(entity) = stream.and_then(Entity::from_stream)
            && a.answer != "honoured"
            && !config.reconcile.unfiltered.contains(&entity)
        {
            config.reconcile.unfiltered.push(entity);
            changed.push(format!(
                "{}: full scans only (its time filter is {})",
                entity.stream(),
                a.answer
            ));
        } else if a.question == "new_customer_invisible"
            && !config.set_explicitly("writes.lookup_window")
            && let Some(window) = lookup_window(&a.answer)
        {
            config.writes.lookup_window = window;
            changed.push(format!("writes.lookup_window = {} s", window.as_secs()));
        }
    }
    changed
}

/// Loads the stored answers for the account of `config` and applies them (see [`apply`]).
pub async fn load_and_apply(pool: &PgPool, config: &mut Config) -> Result<(), sqlx::Error> {
    let Some(account) = super::account(&config.partnerstack) else {
        return Ok(());
    };
    let stored = answers::load(pool, &account).await?;
    for line in apply(config, &stored) {
        tracing::info!("settled by `check`: {line}");
    }
    Ok(())
}

/// One question as `/v1/sync` and `/status` show it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnswerStatus {
    /// The question's id (`page_size`, `time_filter.customers`, ...).
    pub question: String,
    pub asked: String,
    /// True when `partnerstack-sync check` answered it for this account.
    pub settled: bool,
    /// The settled answer's word.
    pub answer: Option<String>,
    /// What the account did.
    pub observed: Option<String>,
    pub settled_at: Option<DateTime<Utc>>,
    /// What the service does: under the answer, or the guess it keeps.
    pub service: String,
}

/// Every question for the account of `config`, settled or not.
pub async fn statuses(pool: &PgPool, config: &Config) -> Result<Vec<AnswerStatus>, sqlx::Error> {
    let stored = match super::account(&config.partnerstack) {
        Some(account) => answers::load(pool, &account).await?,
        None => Vec::new(),
    };
    Ok(catalogue()
        .into_iter()
        .map(|(question, asked, _)| {
            let found = stored.iter().find(|a| a.question == question);
            AnswerStatus {
                service: consequence(&question, found.map(|a| a.answer.as_str())),
                settled: found.is_some(),
                answer: found.map(|a| a.answer.clone()),
                observed: found.map(|a| a.observed.clone()),
                settled_at: found.map(|a| a.settled_at),
                asked,
                question,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn stored(question: &str, answer: &str) -> StoredAnswer {
        StoredAnswer {
            question: question.into(),
            answer: answer.into(),
            observed: String::new(),
            settled_at: Utc::now(),
        }
    }

    fn config(env: &[(&str, &str)]) -> Config {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with_env(None, &env).unwrap()
    }

    #[test]
    fn answers_replace_defaults_and_never_explicit_settings() {
        let answers = [
            stored("page_size", "100"),
            stored("time_filter.customers", "ignored"),
            stored("time_filter.deals", "honoured"),
            stored("new_customer_invisible", "240000"),
            stored("delete_answer", "empty"),
        ];
        let mut c = config(&[]);
        assert_eq!(apply(&mut c, &answers).len(), 3);
        assert_eq!(c.partnerstack.page_size, 100);
        assert_eq!(c.reconcile.unfiltered, vec![Entity::Customer]);
        assert_eq!(c.writes.lookup_window, Duration::from_secs(720));

        let mut c = config(&[
            ("PARTNERSTACK_PAGE_SIZE", "50"),
            ("PSYNC_WRITES_LOOKUP_WINDOW", "5m"),
        ]);
        apply(&mut c, &answers);
        assert_eq!(c.partnerstack.page_size, 50);
        assert_eq!(c.writes.lookup_window, Duration::from_secs(300));
        assert_eq!(c.reconcile.unfiltered, vec![Entity::Customer]);
    }

    #[test]
    fn a_short_delay_keeps_a_minute_and_nonsense_changes_nothing() {
        assert_eq!(lookup_window("0"), Some(MIN_LOOKUP_WINDOW));
        assert_eq!(lookup_window("soon"), None);
        let mut c = config(&[]);
        let before = (c.partnerstack.page_size, c.writes.lookup_window);
        apply(
            &mut c,
            &[
                stored("page_size", "999"),
                stored("new_customer_invisible", "x"),
            ],
        );
        assert_eq!((c.partnerstack.page_size, c.writes.lookup_window), before);
    }

    #[test]
    fn every_question_has_words_and_a_guess() {
        for (id, asked, _) in catalogue() {
            assert_ne!(asked, id);
            assert!(
                consequence(&id, None).starts_with("still a guess: "),
                "{id}"
            );
        }
    }
}
