//! Stored answers about the PartnerStack account (`account_answers`,
//! `migrations/0019_account_answers.sql`), written by `partnerstack-sync check` and read
//! by the service at start-up, `/v1/sync` and `/status` (`crate::check::settled`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::pooler::{atomic, query, query_as};

/// One settled answer, as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredAnswer {
    /// The question's id (`page_size`, `time_filter.customers`, ...).
    pub question: String,
    /// The answer's word (`250`, `honoured`, `ignored`, ...).
    pub answer: String,
    /// What the account did, in words.
    pub observed: String,
    pub settled_at: DateTime<Utc>,
}

/// Stores `answers` for `account` in one statement, each replacing an earlier answer to
/// the same question.
pub async fn store(
    pool: &PgPool,
    account: &str,
    answers: &[(String, String, String)],
) -> Result<(), sqlx::Error> {
    let questions: Vec<&str> = answers.iter().map(|a| a.0.as_str()).collect();
    let words: Vec<&str> = answers.iter().map(|a| a.1.as_str()).collect();
    let observed: Vec<&str> = answers.iter().map(|a| a.2.as_str()).collect();
    query(
        "INSERT INTO account_answers (account, question, answer, observed, settled_at) \
         SELECT $1, q, a, o, now() FROM UNNEST($2::text[], $3::text[], $4::text[]) AS t(q, a, o) \
         ON CONFLICT (account, question) DO UPDATE \
         SET answer = EXCLUDED.answer, observed = EXCLUDED.observed, settled_at = EXCLUDED.settled_at",
    )
    .bind(account)
    .bind(&questions)
    .bind(&words)
    .bind(&observed)
    .execute(atomic(pool))
    .await?;
    Ok(())
}

/// Every answer stored for `account`, by question.
pub async fn load(pool: &PgPool, account: &str) -> Result<Vec<StoredAnswer>, sqlx::Error> {
    query_as(
        "SELECT question, answer, observed, settled_at FROM account_answers \
         WHERE account = $1 ORDER BY question",
    )
    .bind(account)
    .fetch_all(atomic(pool))
    .await
}
