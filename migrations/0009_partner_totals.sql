-- Per-partner totals, kept in the same transaction as the rows they count.
--
-- A partner's summary (GET /v1/partners/{key}/summary) counted and summed its customers,
-- transactions and rewards from the partner columns' indexes: thousands of index entries
-- per summary. It now reads a handful of rows from `partner_totals`.
--
-- A partner is known by two identifiers (partnership key and partner_key) and a row may
-- carry either or both, so the totals are not kept per partner: they are kept per group
-- of rows sharing the same pair of partner columns (and the values the summary breaks
-- down by). Every counted row is in exactly one group, so summing the groups in which
-- either column is one of the partner's identifiers counts each row exactly once, as the
-- row-level query did:
--   customers     (partner_key, partnership_key)                          live rows
--   transactions  (credited_partner_key, credited_partnership_key,       live, not archived
--                  currency, approved IS TRUE)
--   rewards       (partner_key, partnership_key, reward_status, currency) live rows
-- Rows with neither partner column are in no partner's summary and are not kept.
--
-- How they are kept. Statement-level AFTER triggers with transition tables see every
-- write of every path (apply(), attribution re-credits, a full scan's deletions, a
-- hand-written UPDATE), once per statement: they add up the statement's deltas per group
-- and stage them under the transaction's id (`partner_total_deltas`). At commit, a
-- deferred trigger folds the transaction's staged deltas into `partner_totals` in one
-- statement, locking the groups in `grp` order. A transaction therefore holds no lock on
-- a group until its last moment, and then takes all of them in one order: two writers
-- cannot deadlock on the totals, however their statements interleave, and a group is
-- locked only while a commit runs. A group whose rows are all gone keeps a row with zero
-- counts (readers skip it). `amount` is the sum of the rows' amounts in cents (NULL
-- counts as 0).

CREATE TABLE partner_totals (
    -- The group's identity: jsonb_build_array(kind, partner_key, partnership_key,
    -- currency, reward_status, approved) as text, which keeps NULL apart from any text.
    grp             TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('customers', 'transactions', 'rewards')),
    partner_key     TEXT,
    partnership_key TEXT,
    currency        TEXT,
    reward_status   TEXT,
    approved        BOOLEAN,
    count           BIGINT NOT NULL,
    amount          BIGINT NOT NULL
) WITH (fillfactor = 70); -- room for HOT updates: only count and amount ever change
COMMENT ON TABLE partner_totals IS 'counts and sums per group of rows sharing their partner columns, kept by triggers (migrations/0009)';
CREATE INDEX partner_totals_partner ON partner_totals (partner_key) WHERE partner_key IS NOT NULL;
CREATE INDEX partner_totals_partnership ON partner_totals (partnership_key) WHERE partnership_key IS NOT NULL;

-- One row's contribution to its group (sign +1 or -1), or NULL when the row is not
-- counted: the counting rules, in one place (src/db/totals.rs recounts with the same rules
-- written out again, to check them). Single-expression SQL functions of the row's
-- columns, so the planner inlines them (a whole-row argument would copy every row, raw
-- body included).
CREATE TYPE partner_total_delta AS (
    kind            TEXT,
    partner_key     TEXT,
    partnership_key TEXT,
    currency        TEXT,
    reward_status   TEXT,
    approved        BOOLEAN,
    count           BIGINT,
    amount          BIGINT
);

CREATE FUNCTION partner_total_of_customer(
    partner_key TEXT, partnership_key TEXT, deleted_at TIMESTAMPTZ, sign BIGINT
) RETURNS partner_total_delta LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN deleted_at IS NULL AND (partner_key IS NOT NULL OR partnership_key IS NOT NULL)
           THEN ROW('customers', partner_key, partnership_key, NULL, NULL, NULL, sign, 0)::partner_total_delta
           END
$$;

CREATE FUNCTION partner_total_of_transaction(
    credited_partner_key TEXT, credited_partnership_key TEXT, currency TEXT, approved BOOLEAN,
    amount BIGINT, archived BOOLEAN, deleted_at TIMESTAMPTZ, sign BIGINT
) RETURNS partner_total_delta LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN deleted_at IS NULL AND archived IS NOT TRUE
                 AND (credited_partner_key IS NOT NULL OR credited_partnership_key IS NOT NULL)
           THEN ROW('transactions', credited_partner_key, credited_partnership_key, currency, NULL,
                    approved IS TRUE, sign, sign * COALESCE(amount, 0))::partner_total_delta
           END
$$;

CREATE FUNCTION partner_total_of_reward(
    partner_key TEXT, partnership_key TEXT, reward_status TEXT, currency TEXT, amount BIGINT,
    deleted_at TIMESTAMPTZ, sign BIGINT
) RETURNS partner_total_delta LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN deleted_at IS NULL AND (partner_key IS NOT NULL OR partnership_key IS NOT NULL)
           THEN ROW('rewards', partner_key, partnership_key, currency, reward_status, NULL,
                    sign, sign * COALESCE(amount, 0))::partner_total_delta
           END
$$;

-- Deltas waiting for their transaction's commit: staged by the statement triggers, folded
-- into partner_totals and deleted by the deferred trigger. UNLOGGED: a crash ends every
-- transaction that staged anything, so nothing here needs to survive one.
CREATE UNLOGGED TABLE partner_total_deltas (
    txid            XID8 NOT NULL DEFAULT pg_current_xact_id(),
    grp             TEXT NOT NULL,
    kind            TEXT NOT NULL,
    partner_key     TEXT,
    partnership_key TEXT,
    currency        TEXT,
    reward_status   TEXT,
    approved        BOOLEAN,
    count           BIGINT NOT NULL,
    amount          BIGINT NOT NULL
);
CREATE INDEX partner_total_deltas_txid ON partner_total_deltas (txid);
-- One row per transaction with staged deltas: its insertion queues the fold at commit.
CREATE UNLOGGED TABLE partner_totals_due (
    txid XID8 PRIMARY KEY
);

-- Queues the fold for this transaction's commit (once per transaction).
CREATE FUNCTION partner_totals_queue_fold() RETURNS void LANGUAGE sql AS $$
    INSERT INTO partner_totals_due VALUES (pg_current_xact_id()) ON CONFLICT DO NOTHING
$$;

-- At commit: the transaction's staged deltas, added up per group, upserted in group order
-- (the order the row locks are taken in), then forgotten.
CREATE FUNCTION partner_totals_fold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO partner_totals AS t
        (grp, kind, partner_key, partnership_key, currency, reward_status, approved, count, amount)
    SELECT d.grp, d.kind, d.partner_key, d.partnership_key, d.currency, d.reward_status,
           d.approved, sum(d.count), sum(d.amount)
    FROM partner_total_deltas d
    WHERE d.txid = NEW.txid
    GROUP BY d.grp, d.kind, d.partner_key, d.partnership_key, d.currency, d.reward_status,
             d.approved
    HAVING sum(d.count) <> 0 OR sum(d.amount) <> 0
    ORDER BY d.grp
    ON CONFLICT (grp) DO UPDATE
        SET count = t.count + EXCLUDED.count, amount = t.amount + EXCLUDED.amount;
    DELETE FROM partner_total_deltas WHERE txid = NEW.txid;
    DELETE FROM partner_totals_due WHERE txid = NEW.txid;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER partner_totals_fold AFTER INSERT ON partner_totals_due
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION partner_totals_fold();

-- The triggers' function, for the three tables: the rows a statement inserted count +1,
-- those it deleted -1, and an update is both (old -1, new +1). Each statement's deltas are
-- added up per group straight from the transition tables (memory grows with the groups,
-- not the rows) and staged; groups whose deltas cancel out are left out.
CREATE FUNCTION partner_totals_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'customers' AND TG_OP = 'INSERT' THEN
        INSERT INTO partner_total_deltas
            (grp, kind, partner_key, partnership_key, currency, reward_status, approved,
             count, amount)
        SELECT jsonb_build_array((d).kind, (d).partner_key, (d).partnership_key, (d).currency,
                                 (d).reward_status, (d).approved)::text,
               (d).kind, (d).partner_key, (d).partnership_key, (d).currency,
               (d).reward_status, (d).approved, sum((d).count), sum((d).amount)
        FROM (SELECT partner_total_of_customer(r.partner_key, r.partnership_key, r.deleted_at, 1)
              FROM new_rows r) s(d)
        WHERE (d).kind IS NOT NULL
        GROUP BY 2, 3, 4, 5, 6, 7
        HAVING sum((d).count) <> 0 OR sum((d).amount) <> 0;
    ELSIF TG_TABLE_NAME = 'customers' AND TG_OP = 'DELETE' THEN
        INSERT INTO partner_total_deltas
            (grp, kind, partner_key, partnership_key, currency, reward_status, approved,
             count, amount)
        SELECT jsonb_build_array((d).kind, (d).partner_key, (d).partnership_key, (d).currency,
                                 (d).reward_status, (d).approved)::text,
               (d).kind, (d).partner_key, (d).partnership_key, (d).currency,
               (d).reward_status, (d).approved, sum((d).count), sum((d).amount)
        FROM (SELECT partner_total_of_customer(r.partner_key, r.partnership_key, r.deleted_at, -1)
              FROM old_rows r) s(d)
        WHERE (d).kind IS NOT NULL
        GROUP BY 2, 3, 4, 5, 6, 7
        HAVING sum((d).count) <> 0 OR sum((d).amount) <> 0;
    ELSIF TG_TABLE_NAME = 'customers' AND TG_OP = 'UPDATE' THEN
        INSERT INTO partner_total_deltas
            (grp, kind, partner_key, partnership_key, currency, reward_status, approved,
             count, amount)
        SELECT jsonb_build_array((d).kind, (d).partner_key, (d).partnership_key, (d).currency,
                                 (d).reward_status, (d).approved)::text,
               (d).kind, (d).partner_key, (d).partnership_key, (d).currency,
               (d).reward_status, (d).approved, sum((d).count), sum((d).amount)
        FROM (SELECT partner_total_of_customer(r.partner_key, r.partnership_key, r.deleted_at, 1)
              FROM new_rows r
              UNION ALL
              SELECT partner_total_of_customer(r.partner_key, r.partnership_key, r.deleted_at, -1)
              FROM old_rows r) s(d)
        WHERE (d).kind IS NOT NULL
        GROUP BY 2, 3, 4, 5, 6, 7
        HAVING sum((d).count) <> 0 OR sum((d).amount) <> 0;
    ELSIF TG_TABLE_NAME = 'transactions' AND TG_OP = 'INSERT' THEN
        INSERT INTO partner_total_deltas
            (grp, kind, partner_key, partnership_key, currency, reward_status, approved,
             count, amount)
        SELECT jsonb_build_array((d).kind, (d).partner_key, (d).partnership_key, (d).currency,
                                 (d).reward_status, (d).approved)::text,
               (d).kind, (d).partner_key, (d).partnership_key, (d).currency,
               (d).reward_status, (d).approved, sum((d).count), sum((d).amount)
        FROM (SELECT partner_total_of_transaction(r.credited_partner_key, r.credited_partnership_key,
                     r.currency, r.approved, r.amount, r.archived, r.deleted_at, 1)
              FROM new_rows r) s(d)
        WHERE (d).kind IS NOT NULL
        GROUP BY 2, 3, 4, 5, 6, 7
        HAVING sum((d).count) <> 0 OR sum((d).amount) <> 0;
    ELSIF TG_TABLE_NAME = 'transactions' AND TG_OP = 'DELETE' THEN
        INSERT INTO partner_total_deltas
            (grp, kind, partner_key, partnership_key, currency, reward_status, approved,
             count, amount)
        SELECT jsonb_build_array((d).kind, (d).partner_key, (d).partnership_key, (d).currency,
                                 (d).reward_status, (d).approved)::text,
               (d).kind, (d).partner_key, (d).partnership_key, (d).currency,
               (d).reward_status, (d).approved, sum((d).count), sum((d).amount)
        FROM (SELECT partner_total_of_transaction(r.credited_partner_key, r.credited_partnership_key,
                     r.currency, r.approved, r.amount, r.archived, r.deleted_at, -1)
              FROM old_rows r) s(d)
        WHERE (d).kind IS NOT NULL
        GROUP BY 2, 3, 4, 5, 6, 7
        HAVING sum((d).count) <> 0 OR sum((d).amount) <> 0;
    ELSIF TG_TABLE_NAME = 'transactions' AND TG_OP = 'UPDATE' THEN
        INSERT INTO partner_total_deltas
            (grp, kind, partner_key, partnership_key, currency, reward_status, approved,
             count, amount)
        SELECT jsonb_build_array((d).kind, (d).partner_key, (d).partnership_key, (d).currency,
                                 (d).reward_status, (d).approved)::text,
               (d).kind, (d).partner_key, (d).partnership_key, (d).currency,
               (d).reward_status, (d).approved, sum((d).count), sum((d).amount)
        FROM (SELECT partner_total_of_transaction(r.credited_partner_key, r.credited_partnership_key,
                     r.currency, r.approved, r.amount, r.archived, r.deleted_at, 1)
              FROM new_rows r
              UNION ALL
              SELECT partner_total_of_transaction(r.credited_partner_key, r.credited_partnership_key,
                     r.currency, r.approved, r.amount, r.archived, r.deleted_at, -1)
              FROM old_rows r) s(d)
        WHERE (d).kind IS NOT NULL
        GROUP BY 2, 3, 4, 5, 6, 7
        HAVING sum((d).count) <> 0 OR sum((d).amount) <> 0;
    ELSIF TG_TABLE_NAME = 'rewards' AND TG_OP = 'INSERT' THEN
        INSERT INTO partner_total_deltas
            (grp, kind, partner_key, partnership_key, currency, reward_status, approved,
             count, amount)
        SELECT jsonb_build_array((d).kind, (d).partner_key, (d).partnership_key, (d).currency,
                                 (d).reward_status, (d).approved)::text,
               (d).kind, (d).partner_key, (d).partnership_key, (d).currency,
               (d).reward_status, (d).approved, sum((d).count), sum((d).amount)
        FROM (SELECT partner_total_of_reward(r.partner_key, r.partnership_key, r.reward_status, r.currency,
                     r.amount, r.deleted_at, 1)
              FROM new_rows r) s(d)
        WHERE (d).kind IS NOT NULL
        GROUP BY 2, 3, 4, 5, 6, 7
        HAVING sum((d).count) <> 0 OR sum((d).amount) <> 0;
    ELSIF TG_TABLE_NAME = 'rewards' AND TG_OP = 'DELETE' THEN
        INSERT INTO partner_total_deltas
            (grp, kind, partner_key, partnership_key, currency, reward_status, approved,
             count, amount)
        SELECT jsonb_build_array((d).kind, (d).partner_key, (d).partnership_key, (d).currency,
                                 (d).reward_status, (d).approved)::text,
               (d).kind, (d).partner_key, (d).partnership_key, (d).currency,
               (d).reward_status, (d).approved, sum((d).count), sum((d).amount)
        FROM (SELECT partner_total_of_reward(r.partner_key, r.partnership_key, r.reward_status, r.currency,
                     r.amount, r.deleted_at, -1)
              FROM old_rows r) s(d)
        WHERE (d).kind IS NOT NULL
        GROUP BY 2, 3, 4, 5, 6, 7
        HAVING sum((d).count) <> 0 OR sum((d).amount) <> 0;
    ELSIF TG_TABLE_NAME = 'rewards' AND TG_OP = 'UPDATE' THEN
        INSERT INTO partner_total_deltas
            (grp, kind, partner_key, partnership_key, currency, reward_status, approved,
             count, amount)
        SELECT jsonb_build_array((d).kind, (d).partner_key, (d).partnership_key, (d).currency,
                                 (d).reward_status, (d).approved)::text,
               (d).kind, (d).partner_key, (d).partnership_key, (d).currency,
               (d).reward_status, (d).approved, sum((d).count), sum((d).amount)
        FROM (SELECT partner_total_of_reward(r.partner_key, r.partnership_key, r.reward_status, r.currency,
                     r.amount, r.deleted_at, 1)
              FROM new_rows r
              UNION ALL
              SELECT partner_total_of_reward(r.partner_key, r.partnership_key, r.reward_status, r.currency,
                     r.amount, r.deleted_at, -1)
              FROM old_rows r) s(d)
        WHERE (d).kind IS NOT NULL
        GROUP BY 2, 3, 4, 5, 6, 7
        HAVING sum((d).count) <> 0 OR sum((d).amount) <> 0;
    ELSE
        RAISE EXCEPTION 'partner_totals_changed: unexpected % on %', TG_OP, TG_TABLE_NAME;
    END IF;
    IF FOUND THEN
        PERFORM partner_totals_queue_fold();
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE fires no delete trigger: the table's groups go with it, and so do the deltas
-- this transaction staged for them before.
CREATE FUNCTION partner_totals_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM partner_totals WHERE kind = TG_TABLE_NAME;
    DELETE FROM partner_total_deltas WHERE kind = TG_TABLE_NAME AND txid = pg_current_xact_id();
    RETURN NULL;
END
$$;

-- No write may slip between counting the rows stored now and the triggers taking over.
LOCK TABLE customers, transactions, rewards IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO partner_totals
    (grp, kind, partner_key, partnership_key, currency, reward_status, approved, count, amount)
SELECT jsonb_build_array(d.kind, d.partner_key, d.partnership_key, d.currency,
                         d.reward_status, d.approved)::text,
       d.kind, d.partner_key, d.partnership_key, d.currency, d.reward_status, d.approved,
       sum(d.count), sum(d.amount)
FROM (SELECT (partner_total_of_customer(r.partner_key, r.partnership_key, r.deleted_at, 1)).*
      FROM customers r
      UNION ALL
      SELECT (partner_total_of_transaction(r.credited_partner_key, r.credited_partnership_key,
                                           r.currency, r.approved, r.amount, r.archived,
                                           r.deleted_at, 1)).*
      FROM transactions r
      UNION ALL
      SELECT (partner_total_of_reward(r.partner_key, r.partnership_key, r.reward_status,
                                      r.currency, r.amount, r.deleted_at, 1)).*
      FROM rewards r) d
WHERE d.kind IS NOT NULL
GROUP BY d.kind, d.partner_key, d.partnership_key, d.currency, d.reward_status, d.approved;

CREATE TRIGGER customers_partner_totals_insert AFTER INSERT ON customers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION partner_totals_changed();
CREATE TRIGGER customers_partner_totals_update AFTER UPDATE ON customers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION partner_totals_changed();
CREATE TRIGGER customers_partner_totals_delete AFTER DELETE ON customers
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION partner_totals_changed();
CREATE TRIGGER customers_partner_totals_truncate AFTER TRUNCATE ON customers
    FOR EACH STATEMENT EXECUTE FUNCTION partner_totals_truncated();

CREATE TRIGGER transactions_partner_totals_insert AFTER INSERT ON transactions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION partner_totals_changed();
CREATE TRIGGER transactions_partner_totals_update AFTER UPDATE ON transactions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION partner_totals_changed();
CREATE TRIGGER transactions_partner_totals_delete AFTER DELETE ON transactions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION partner_totals_changed();
CREATE TRIGGER transactions_partner_totals_truncate AFTER TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION partner_totals_truncated();

CREATE TRIGGER rewards_partner_totals_insert AFTER INSERT ON rewards
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION partner_totals_changed();
CREATE TRIGGER rewards_partner_totals_update AFTER UPDATE ON rewards
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION partner_totals_changed();
CREATE TRIGGER rewards_partner_totals_delete AFTER DELETE ON rewards
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION partner_totals_changed();
CREATE TRIGGER rewards_partner_totals_truncate AFTER TRUNCATE ON rewards
    FOR EACH STATEMENT EXECUTE FUNCTION partner_totals_truncated();
