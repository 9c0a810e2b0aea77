-- Partner attribution, kept at write time, and indexes that page a partner's objects.
--
-- A transaction rarely names its partner: it is credited to its customer's. Working that
-- out at read time (a join per transaction) made a partner's summary cost tens of
-- milliseconds per thousand transactions, so apply() records it as it writes
-- (src/db/attribution.rs): the transaction's own partner_key if it has one, else its
-- customer's partner_key and partnership_key. Whenever customers change, the
-- transactions that refer to them are credited again.

ALTER TABLE transactions
    ADD COLUMN credited_partner_key TEXT,
    ADD COLUMN credited_partnership_key TEXT;
COMMENT ON COLUMN transactions.credited_partner_key IS 'partner credited: the transaction''s own partner_key, else its customer''s';
COMMENT ON COLUMN transactions.credited_partnership_key IS 'partnership credited through the customer (null when the transaction names its partner)';

-- Rows stored before this migration, credited by the same rule as src/db/attribution.rs.
UPDATE transactions t
SET credited_partner_key = COALESCE(t.partner_key, tc.partner_key),
    credited_partnership_key = CASE WHEN t.partner_key IS NULL THEN tc.partnership_key END
FROM transactions s
LEFT JOIN LATERAL (
    SELECT c.partner_key, c.partnership_key FROM customers c
    WHERE c.key = s.customer_key
       OR c.customer_key = s.customer_key
       OR c.customer_key = s.customer_external_key
    ORDER BY (c.key = s.customer_key) IS TRUE DESC, (c.deleted_at IS NULL) DESC,
             c.created_at DESC, c.key DESC
    LIMIT 1
) tc ON TRUE
WHERE t.key = s.key;

-- A partner's objects, newest first: one ordered range scan per partner identifier. The
-- included columns let the partner summary count and sum from the index alone.
CREATE INDEX transactions_credited_partner_order ON transactions (credited_partner_key, created_at DESC, key DESC)
    INCLUDE (deleted_at, archived, currency, approved, amount);
CREATE INDEX transactions_credited_partnership_order ON transactions (credited_partnership_key, created_at DESC, key DESC)
    INCLUDE (deleted_at, archived, currency, approved, amount);
CREATE INDEX customers_partner_order ON customers (partner_key, created_at DESC, key DESC) INCLUDE (deleted_at);
CREATE INDEX customers_partnership_order ON customers (partnership_key, created_at DESC, key DESC) INCLUDE (deleted_at);
CREATE INDEX rewards_partner_order ON rewards (partner_key, created_at DESC, key DESC)
    INCLUDE (deleted_at, reward_status, currency, amount);
CREATE INDEX rewards_partnership_order ON rewards (partnership_key, created_at DESC, key DESC)
    INCLUDE (deleted_at, reward_status, currency, amount);
CREATE INDEX deals_partner_order ON deals (partner_key, created_at DESC, key DESC);
CREATE INDEX leads_partner_order ON leads (partner_key, created_at DESC, key DESC);
-- The composite indexes cover what these served.
DROP INDEX customers_partner_key;
DROP INDEX customers_partnership_key;
DROP INDEX rewards_partner_key;
DROP INDEX rewards_partnership_key;
DROP INDEX deals_partner_key;
DROP INDEX leads_partner_key;
DROP INDEX transactions_partner_key;

-- Filters on a handful of values (approved, status, currency) select a large share of a
-- table: a page walks the created_at order index and stops after n matches, so ordered
-- indexes per value only cost every write.
DROP INDEX transactions_approved_order;
DROP INDEX transactions_status_order;
DROP INDEX transactions_currency_order;
DROP INDEX rewards_status_order;
DROP INDEX partners_status_order;
DROP INDEX leads_status_order;
