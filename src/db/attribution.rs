//! Which partner a transaction is credited to, kept at write time.
//!
//! A transaction is credited to the partner it names (`partner_key`), else to its
//! customer's (`partner_key`, `partnership_key`). Its customer is the one whose key is the
//! transaction's `customer_key`, else one whose own `customer_key` (the company's key)
//! equals the transaction's `customer_external_key` or `customer_key` (the brief's dialect
//! puts the company's key there); ties go to a live customer, then the newest.
//! [`crate::apply::apply`] calls [`credit`] for the transactions it changed and for those
//! of the customers it changed, in the same transaction, so the `credited_*` columns the
//! query API reads are always current. (Marking a customer deleted does not re-credit:
//! who referred a transaction does not change when the customer leaves.)

use sqlx::PgConnection;

/// Re-credits the given transactions and every transaction of the given customers
/// (PartnerStack keys and company keys). Returns how many rows changed.
pub async fn credit(
    conn: &mut PgConnection,
    transactions: &[&str],
    customers: &[&str],
    customer_keys: &[&str],
) -> Result<u64, sqlx::Error> {
    if transactions.is_empty() && customers.is_empty() && customer_keys.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "WITH affected AS (
             SELECT unnest($1::text[]) AS key
             UNION
             SELECT x.key FROM transactions x
             WHERE x.customer_key = ANY($2) OR x.customer_key = ANY($3)
                OR x.customer_external_key = ANY($3)
         ), credit AS (
             SELECT s.key,
                    COALESCE(s.partner_key, tc.partner_key) AS partner_key,
                    CASE WHEN s.partner_key IS NULL THEN tc.partnership_key END AS partnership_key
             FROM affected a
             JOIN transactions s ON s.key = a.key
             LEFT JOIN LATERAL (
                 SELECT c.partner_key, c.partnership_key FROM customers c
                 WHERE c.key = s.customer_key
                    OR c.customer_key = s.customer_key
                    OR c.customer_key = s.customer_external_key
                 ORDER BY (c.key = s.customer_key) IS TRUE DESC, (c.deleted_at IS NULL) DESC,
                          c.created_at DESC, c.key DESC
                 LIMIT 1
             ) tc ON TRUE
         )
         UPDATE transactions t
         SET credited_partner_key = credit.partner_key,
             credited_partnership_key = credit.partnership_key
         FROM credit
         WHERE t.key = credit.key
           AND (t.credited_partner_key, t.credited_partnership_key)
               IS DISTINCT FROM (credit.partner_key, credit.partnership_key)",
    )
    .bind(transactions)
    .bind(customers)
    .bind(customer_keys)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
