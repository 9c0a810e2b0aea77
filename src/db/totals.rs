//! Per-partner totals (`partner_totals`), kept by triggers in the same transaction as the
//! rows they count (`migrations/0009_partner_totals.sql`), and their check against the rows.
//!
//! Nothing in the service writes the totals: statement-level triggers on `customers`,
//! `transactions` and `rewards` do, for every write path. The partner summary
//! (`crate::api::summary`) reads them. [`drift`] recounts every group from the rows and
//! lists the groups whose stored totals differ; it is empty unless the triggers are wrong
//! (the tests run it after random mixes of writes).

use sqlx::PgConnection;

/// Every group's totals as the rows say they should be: the summary's counting rules
/// (live rows; transactions not archived; a row with either partner column) written out
/// again over the tables, independently of the triggers' functions.
const RECOUNT_SQL: &str = "
    SELECT jsonb_build_array(kind, partner_key, partnership_key, currency, reward_status,
                             approved)::text AS grp,
           count(*) AS count, COALESCE(sum(amount), 0) AS amount
    FROM (SELECT 'customers' AS kind, partner_key, partnership_key, NULL::text AS currency,
                 NULL::text AS reward_status, NULL::boolean AS approved, 0::bigint AS amount
          FROM customers
          WHERE deleted_at IS NULL AND (partner_key IS NOT NULL OR partnership_key IS NOT NULL)
          UNION ALL
          SELECT 'transactions', credited_partner_key, credited_partnership_key, currency, NULL,
                 approved IS TRUE, COALESCE(amount, 0)
          FROM transactions
          WHERE deleted_at IS NULL AND archived IS NOT TRUE
            AND (credited_partner_key IS NOT NULL OR credited_partnership_key IS NOT NULL)
          UNION ALL
          SELECT 'rewards', partner_key, partnership_key, currency, reward_status, NULL,
                 COALESCE(amount, 0)
          FROM rewards
          WHERE deleted_at IS NULL AND (partner_key IS NOT NULL OR partnership_key IS NOT NULL)) r
    GROUP BY kind, partner_key, partnership_key, currency, reward_status, approved";

/// A group whose stored totals differ from its rows': `(count, amount)` stored and counted.
/// Amounts are sums of `BIGINT` cents, kept in `NUMERIC` (no sum overflows), read here as
/// `i128`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub group: String,
    pub stored: (i64, i128),
    pub counted: (i64, i128),
}

/// Compares every group of `partner_totals` (zero groups included: they must have no rows)
/// with a recount from the rows, in one snapshot. Empty when they agree exactly.
pub async fn drift(conn: &mut PgConnection) -> Result<Vec<Drift>, sqlx::Error> {
    /// A group, its stored count and amount, and its recounted ones (amounts as text:
    /// sqlx reads `NUMERIC` only through optional crates).
    type Compared = (
        String,
        Option<i64>,
        Option<String>,
        Option<i64>,
        Option<String>,
    );
    let rows: Vec<Compared> = crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "WITH counted AS ({RECOUNT_SQL})
             SELECT COALESCE(s.grp, c.grp), s.count, s.amount::text, c.count, c.amount::text
             FROM partner_totals s FULL JOIN counted c ON c.grp = s.grp
             WHERE (COALESCE(s.count, 0), COALESCE(s.amount, 0))
                   IS DISTINCT FROM (COALESCE(c.count, 0), COALESCE(c.amount, 0))
             ORDER BY 1"
    )))
    .fetch_all(conn)
    .await?;
    let amount = |text: Option<String>| -> Result<i128, sqlx::Error> {
        text.map_or(Ok(0), |t| {
            t.parse()
                .map_err(|e| sqlx::Error::Decode(format!("amount {t:?}: {e}").into()))
        })
    };
    rows.into_iter()
        .map(|(group, sc, sa, cc, ca)| {
            Ok(Drift {
                group,
                stored: (sc.unwrap_or(0), amount(sa)?),
                counted: (cc.unwrap_or(0), amount(ca)?),
            })
        })
        .collect()
}
