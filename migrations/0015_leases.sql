-- Leadership as a lease row with a fencing token, instead of a session advisory lock, so
-- that it holds through a connection pooler in transaction mode (no server session is
-- anyone's for longer than a transaction). One row per lease: the reconciler's, and one
-- per relay endpoint.
--
-- A holder takes a lease that has expired (`token` goes up by one), and renews it inside
-- every transaction that writes on its behalf (`psync_hold_lease`): the renewal locks the
-- row until that transaction ends, so a takeover waits for the holder's commit, and a
-- holder whose token was replaced has that transaction refused. Time is the database's
-- clock alone.
CREATE TABLE leases (
    name        text PRIMARY KEY,
    holder      text NOT NULL DEFAULT '',
    token       bigint NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity',
    acquired_at timestamptz
);

-- Renews lease `p_name` for `p_ttl_ms` if `p_token` still holds it; otherwise refuses
-- with SQLSTATE PSL01, which aborts the caller's transaction.
CREATE FUNCTION psync_hold_lease(p_name text, p_token bigint, p_ttl_ms bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE leases SET expires_at = clock_timestamp() + p_ttl_ms * interval '1 millisecond'
     WHERE name = p_name AND token = p_token;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lease % is no longer held with token %', p_name, p_token
            USING ERRCODE = 'PSL01';
    END IF;
END
$$;
