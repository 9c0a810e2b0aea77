//! Which partner a transaction is credited to, kept at write time.
//!
//! A transaction is credited to the partner it names (`partner_key`), else to its
//! customer's (`partner_key`, `partnership_key`). Its customer is the one whose key is the
//! transaction's `customer_key`, else one whose own `customer_key` (the company's key)
//! equals the transaction's `customer_external_key` or `customer_key` (the legacy dialect
//! puts the company's key there), a live one before a deleted one, then the newest.
//!
//! [`crate::apply`] writes the credit with every transaction it writes
//! ([`derived_columns`]), and calls [`credit`] for the customers it changes, in
//! the same transaction; the `credited_*` columns the query API reads are therefore always
//! current. (Marking a customer deleted does not re-credit: who referred a transaction
//! does not change when the customer leaves.)
//!
//! A credit reads rows another transaction may be writing: a transaction written while its
//! customer is being created, by another applier or replica or the reconciler, would see
//! no customer, and the customer's re-credit would not see the transaction; both commit,
//! and the transaction stays uncredited. So [`apply`](crate::apply::apply) first takes
//! [`lock_identities`] on the customer identities its batch touches: the second of two
//! such writers waits for the first to commit, and its statements then see its rows.

use std::sync::LazyLock;

use sqlx::{AssertSqlSafe, PgConnection};

/// Columns computed while writing a table's rows: a join adding what they need to the
/// input rows, and the columns as expressions over it.
#[derive(Debug, Clone)]
pub struct Derived {
    pub join: String,
    pub columns: Vec<(&'static str, String)>,
}

/// The derived columns of `table`, for input rows aliased `row` (they carry the typed
/// columns of the table).
pub fn derived_columns(table: &str, row: &str) -> Option<Derived> {
    (table == "transactions").then(|| transaction_credit(row))
}

/// A transaction's credit, for input rows aliased `row`.
fn transaction_credit(row: &str) -> Derived {
    // The customer found by PartnerStack's key (tck), else by the company's key (tcx).
    let pick = |column: &str| {
        format!("CASE WHEN tck.key IS NOT NULL THEN tck.{column} ELSE tcx.{column} END")
    };
    Derived {
        join: customer_of(row),
        columns: vec![
            (
                "credited_partner_key",
                format!("COALESCE({row}.partner_key, {})", pick("partner_key")),
            ),
            (
                "credited_partnership_key",
                format!(
                    "CASE WHEN {row}.partner_key IS NULL THEN {} END",
                    pick("partnership_key")
                ),
            ),
        ],
    }
}

/// Joins `tck`, the customer whose key is the transaction row's `customer_key`, and, only
/// when there is none, `tcx`, the customer found by the company's key: one index probe for
/// the usual case, a second only when it misses.
fn customer_of(row: &str) -> String {
    format!(
        "LEFT JOIN customers tck ON tck.key = {row}.customer_key
         LEFT JOIN LATERAL (
            SELECT c.partner_key, c.partnership_key FROM customers c
            WHERE tck.key IS NULL
              AND c.customer_key = ANY(ARRAY[{row}.customer_key, {row}.customer_external_key])
            ORDER BY (c.deleted_at IS NULL) DESC, c.created_at DESC, c.key DESC
            LIMIT 1
         ) tcx ON TRUE"
    )
}

/// The advisory lock class of customer identities ("psya").
const LOCK_CLASS: i32 = 0x7073_7961;

/// Locks the customer identities `identities` (PartnerStack keys and company keys) until
/// the end of the caller's transaction, in one order (their hashes, sorted) so writers
/// cannot deadlock on them. Two identities with the same hash share a lock: more waiting,
/// never less.
pub async fn lock_identities(
    conn: &mut PgConnection,
    identities: &[&str],
) -> Result<(), sqlx::Error> {
    if identities.is_empty() {
        return Ok(());
    }
    crate::db::query(
        "SELECT count(pg_advisory_xact_lock($1, h))
         FROM (SELECT DISTINCT hashtext(v) AS h FROM unnest($2::text[]) AS v ORDER BY h) s",
    )
    .bind(LOCK_CLASS)
    .bind(identities)
    .execute(conn)
    .await?;
    Ok(())
}

/// Credits again the given transactions and every transaction of the given customers
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
    static SQL: LazyLock<String> = LazyLock::new(credit_sql);
    let done = crate::db::query(AssertSqlSafe(SQL.as_str()))
        .bind(transactions)
        .bind(customers)
        .bind(customer_keys)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// The statement [`credit`] runs (built once).
fn credit_sql() -> String {
    let derived = transaction_credit("s");
    let list = |item: &dyn Fn(&str, &str) -> String| {
        derived
            .columns
            .iter()
            .map(|(name, expr)| item(name, expr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // One index scan per branch (an OR across columns could end in a table scan).
    format!(
        "WITH affected AS (
             SELECT unnest($1::text[]) AS key
             UNION SELECT x.key FROM transactions x WHERE x.customer_key = ANY($2)
             UNION SELECT x.key FROM transactions x WHERE x.customer_key = ANY($3)
             UNION SELECT x.key FROM transactions x WHERE x.customer_external_key = ANY($3)
         ), credit AS (
             SELECT s.key, {values}
             FROM affected a JOIN transactions s ON s.key = a.key {join}
         )
         UPDATE transactions t SET {sets}
         FROM credit
         WHERE t.key = credit.key AND ({names}) IS DISTINCT FROM ({new})",
        values = list(&|name, expr| format!("{expr} AS {name}")),
        join = derived.join,
        sets = list(&|name, _| format!("{name} = credit.{name}")),
        names = list(&|name, _| format!("t.{name}")),
        new = list(&|name, _| format!("credit.{name}")),
    )
}
