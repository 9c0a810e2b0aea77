//! Which partner a customer, transaction or reward belongs to, in SQL.
//!
//! PartnerStack names a partner two ways (the partnership `key`, `part_...`, and the
//! readable `partner_key`) and its objects use either. Transactions rarely name a partner
//! at all: they belong to their customer's partner. The list filters and the partner
//! summary both use the definitions here, so a transaction counted in a summary is one
//! the filtered list shows, and the other way round.

use sqlx::{Postgres, QueryBuilder};

/// The customer a transaction belongs to, as `tc`: by PartnerStack's customer key, else
/// by your key (`customer.external_key`, or `customer_key` where the brief's dialect put
/// your key there). The best match wins, deterministically.
macro_rules! transaction_customer_join {
    () => {
        "LEFT JOIN LATERAL (
            SELECT c.partner_key, c.partnership_key FROM customers c
            WHERE c.key = t.customer_key
               OR c.customer_key = t.customer_key
               OR c.customer_key = t.customer_external_key
            ORDER BY (c.key = t.customer_key) IS TRUE DESC, (c.deleted_at IS NULL) DESC,
                     c.created_at DESC, c.key DESC
            LIMIT 1
        ) tc ON TRUE"
    };
}
pub(crate) use transaction_customer_join;

/// Pushes an SQL `text[]` of every identifier of the partner `value` names: `value`
/// itself, plus the other identifier of a stored partner known by either.
pub fn push_partner_ids(q: &mut QueryBuilder<Postgres>, value: &str) {
    q.push("ARRAY(SELECT ")
        .push_bind(value.to_string())
        .push("::text UNION SELECT p.key FROM partners p WHERE p.partner_key = ")
        .push_bind(value.to_string())
        .push(" UNION SELECT p.partner_key FROM partners p WHERE p.key = ")
        .push_bind(value.to_string())
        .push(" AND p.partner_key IS NOT NULL)");
}

/// `AND`s the condition "customer `c` belongs to partner `value`".
pub fn push_customer_of(q: &mut QueryBuilder<Postgres>, alias: &str, value: &str) {
    q.push(format!(" AND ({alias}.partner_key = ANY("));
    push_partner_ids(q, value);
    q.push(format!(") OR {alias}.partnership_key = ANY("));
    push_partner_ids(q, value);
    q.push("))");
}

/// `AND`s the condition "transaction `t` (joined with [`transaction_customer_join`])
/// belongs to partner `value`": its own `partner_key`, else its customer's partner.
///
/// The first part only narrows by indexed columns (the partner's own key, or a key of one
/// of the partner's customers) so Postgres can find candidates through indexes; the
/// second is the exact rule.
pub fn push_transaction_of(q: &mut QueryBuilder<Postgres>, value: &str) {
    let customer_keys = |q: &mut QueryBuilder<Postgres>| {
        q.push("ARRAY(SELECT c.key FROM customers c WHERE TRUE");
        push_customer_of(q, "c", value);
        q.push(" UNION SELECT c.customer_key FROM customers c WHERE c.customer_key IS NOT NULL");
        push_customer_of(q, "c", value);
        q.push(")");
    };
    q.push(" AND (t.partner_key = ANY(");
    push_partner_ids(q, value);
    q.push(") OR t.customer_key = ANY(");
    customer_keys(q);
    q.push(") OR t.customer_external_key = ANY(");
    customer_keys(q);
    q.push("))");
    q.push(" AND (t.partner_key = ANY(");
    push_partner_ids(q, value);
    q.push(") OR (t.partner_key IS NULL AND (tc.partner_key = ANY(");
    push_partner_ids(q, value);
    q.push(") OR tc.partnership_key = ANY(");
    push_partner_ids(q, value);
    q.push("))))");
}

/// `AND`s the condition "reward `t` belongs to partner `value`".
pub fn push_reward_of(q: &mut QueryBuilder<Postgres>, value: &str) {
    q.push(" AND (t.partner_key = ANY(");
    push_partner_ids(q, value);
    q.push(") OR t.partnership_key = ANY(");
    push_partner_ids(q, value);
    q.push("))");
}
