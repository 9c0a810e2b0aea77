-- One request budget per PartnerStack account, shared by every replica: a token bucket
-- in a row. Replicas lease a few tokens at a time (`psync_take_request_tokens`, one round
-- trip for all the requests a replica has waiting), so the account's requests per second
-- are the configured rate in total, whatever the number of replicas.
--
-- Writes go first across replicas: a write that could not have all it asked for
-- reserves the rest (`write_wanted`) for a moment, and reads of any replica are granted
-- only what is left above the reservation. Time is the database's clock alone.
CREATE TABLE request_budgets (
    -- A digest of the API's base URL and public key: never a credential.
    account            text PRIMARY KEY,
    tokens             double precision NOT NULL,
    refilled_at        timestamptz NOT NULL,
    write_wanted       integer NOT NULL DEFAULT 0,
    write_wanted_until timestamptz NOT NULL DEFAULT '-infinity'
);

-- The replicas that leased lately: a replica cut off from the database sends at its share
-- of the rate (the rate divided by their number) until it reaches the database again.
CREATE TABLE request_budget_holders (
    account text NOT NULL,
    holder  text NOT NULL,
    seen_at timestamptz NOT NULL,
    PRIMARY KEY (account, holder)
);

-- Grants `p_holder` up to `p_want` tokens of `p_account`'s bucket (refilled at `p_rate`
-- per second up to `p_burst`), or none unless at least `p_at_least` are free; a read
-- (`p_write` false) is granted only tokens above a write's current reservation. Returns
-- the tokens granted, the milliseconds until asking again is worthwhile, and the replicas
-- that leased within the last 10 seconds.
CREATE FUNCTION psync_take_request_tokens(
    p_account text, p_holder text, p_want integer, p_at_least integer, p_write boolean,
    p_rate double precision, p_burst double precision,
    OUT granted integer, OUT retry_ms double precision, OUT holders integer)
LANGUAGE plpgsql AS $$
DECLARE
    b        request_budgets%ROWTYPE;
    now_     timestamptz;
    avail    double precision;
    reserved double precision;
    free     integer;
BEGIN
    INSERT INTO request_budgets (account, tokens, refilled_at)
         VALUES (p_account, p_burst, clock_timestamp())
    ON CONFLICT DO NOTHING;
    SELECT * INTO b FROM request_budgets WHERE account = p_account FOR UPDATE;
    -- Read after the lock: a lease that waited for another sees the time it is granted.
    now_ := clock_timestamp();
    avail := least(p_burst, b.tokens
        + greatest(0, extract(epoch FROM now_ - b.refilled_at)) * p_rate);
    reserved := CASE WHEN p_write OR b.write_wanted_until <= now_ THEN 0
                     ELSE b.write_wanted END;
    free := greatest(0, floor(avail - reserved))::integer;
    granted := CASE WHEN free >= greatest(p_at_least, 1) THEN least(free, p_want) ELSE 0 END;
    UPDATE request_budgets
       SET tokens = avail - granted,
           refilled_at = now_,
           write_wanted = CASE WHEN p_write THEN p_want - granted ELSE write_wanted END,
           write_wanted_until = CASE WHEN p_write AND granted < p_want
                                     THEN now_ + interval '2 seconds'
                                     WHEN p_write THEN '-infinity'
                                     ELSE write_wanted_until END
     WHERE account = p_account;
    retry_ms := greatest(0, greatest(p_at_least, 1) + reserved - (avail - granted))
                / p_rate * 1000;
    INSERT INTO request_budget_holders (account, holder, seen_at)
         VALUES (p_account, p_holder, now_)
    ON CONFLICT (account, holder) DO UPDATE SET seen_at = excluded.seen_at;
    DELETE FROM request_budget_holders
     WHERE account = p_account AND seen_at < now_ - interval '1 minute';
    SELECT count(*) INTO holders FROM request_budget_holders
     WHERE account = p_account AND seen_at > now_ - interval '10 seconds';
END
$$;
