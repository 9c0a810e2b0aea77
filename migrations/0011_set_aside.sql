-- No value can wedge the copy.
--
-- 1. Objects set aside. One object the copy cannot take (it does not read, or the
--    database refuses it) used to stop everything around it: a reconcile page failed on
--    every retry, a webhook batch was halved until the culprit stood alone, and a write
--    whose answer could not be applied stayed pending for good. Now the object is set
--    aside here with its error and the rest goes on (src/db/set_aside.rs). It is tried
--    again whenever it is seen again, and its row goes once a version of it applies.
--
-- 2. Partner totals in NUMERIC. A transaction of 9223372036854775807 cents was stored, and
--    the commit then failed folding it into a BIGINT total: the page (or the write) was
--    refused on every retry. Sums of BIGINT amounts cannot overflow a NUMERIC.

CREATE TABLE set_aside (
    -- The stream the object belongs to ('transactions', 'customers', ...).
    stream      TEXT NOT NULL,
    -- PartnerStack's key of the object.
    key         TEXT NOT NULL,
    -- Where it was last seen: 'reconcile' (a list page), 'webhook' (a delivery) or
    -- 'write' (PartnerStack's answer to a write of this service).
    source      TEXT NOT NULL CHECK (source IN ('webhook', 'reconcile', 'write')),
    -- Why it was refused, the last time.
    error       TEXT NOT NULL,
    -- The object as last received, as JSON text (text, not jsonb: an object refused for
    -- a NUL character is kept too).
    raw         TEXT NOT NULL,
    first_seen  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Times it was refused.
    times       BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (stream, key)
);
COMMENT ON TABLE set_aside IS 'objects the copy refused, kept with their error until a version of them applies (migrations/0011)';
-- /v1/sync and the status page: the newest first.
CREATE INDEX set_aside_last_seen ON set_aside (last_seen DESC);

-- The totals' amounts become NUMERIC; the functions that compute a row's contribution
-- are redefined to compute it in NUMERIC (a BIGINT product could overflow too).
ALTER TABLE partner_totals ALTER COLUMN amount TYPE NUMERIC;
ALTER TABLE partner_total_deltas ALTER COLUMN amount TYPE NUMERIC;
ALTER TYPE partner_total_delta ALTER ATTRIBUTE amount TYPE NUMERIC;

CREATE OR REPLACE FUNCTION partner_total_of_transaction(
    credited_partner_key TEXT, credited_partnership_key TEXT, currency TEXT, approved BOOLEAN,
    amount BIGINT, archived BOOLEAN, deleted_at TIMESTAMPTZ, sign BIGINT
) RETURNS partner_total_delta LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN deleted_at IS NULL AND archived IS NOT TRUE
                 AND (credited_partner_key IS NOT NULL OR credited_partnership_key IS NOT NULL)
           THEN ROW('transactions', credited_partner_key, credited_partnership_key, currency, NULL,
                    approved IS TRUE, sign, sign::numeric * COALESCE(amount, 0))::partner_total_delta
           END
$$;

CREATE OR REPLACE FUNCTION partner_total_of_reward(
    partner_key TEXT, partnership_key TEXT, reward_status TEXT, currency TEXT, amount BIGINT,
    deleted_at TIMESTAMPTZ, sign BIGINT
) RETURNS partner_total_delta LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN deleted_at IS NULL AND (partner_key IS NOT NULL OR partnership_key IS NOT NULL)
           THEN ROW('rewards', partner_key, partnership_key, currency, reward_status, NULL,
                    sign, sign::numeric * COALESCE(amount, 0))::partner_total_delta
           END
$$;

CREATE OR REPLACE FUNCTION partner_total_of_customer(
    partner_key TEXT, partnership_key TEXT, deleted_at TIMESTAMPTZ, sign BIGINT
) RETURNS partner_total_delta LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN deleted_at IS NULL AND (partner_key IS NOT NULL OR partnership_key IS NOT NULL)
           THEN ROW('customers', partner_key, partnership_key, NULL, NULL, NULL, sign, 0::numeric)::partner_total_delta
           END
$$;
