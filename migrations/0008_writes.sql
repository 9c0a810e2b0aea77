-- The write outbox: every write to PartnerStack accepted by /v1, committed before the
-- answer and sent by a worker (src/writes/worker.rs), with at most one upstream effect per
-- row.
--
-- A worker claims a row by raising `attempts` and setting `leased_until` (the claim is the
-- fencing token: a worker records an outcome only while `attempts` is still the value it
-- claimed). Before each send it commits `in_doubt = true` and `last_sent_at`; an answer
-- that proves nothing landed clears `in_doubt`. A row claimed while `in_doubt` is set may already have taken effect
-- upstream, so the worker looks for the object before it sends again.

CREATE TABLE writes (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN
                        ('create_customer', 'update_customer', 'create_transaction', 'delete_transaction')),
    -- Repeats with the same key are the same write: the Idempotency-Key header, else the
    -- object's own key (customer creates, transaction creates and deletes). NULL: none.
    idempotency_key TEXT UNIQUE,
    -- SHA-256 of the kind and the validated request: a repeat with another body is refused.
    request_digest  TEXT NOT NULL,
    -- The validated request, in the service's field names.
    request         JSONB NOT NULL,
    -- The object's key as the caller knows it: your customer_key, or the transaction key.
    object_key      TEXT NOT NULL,
    -- Who the write is about ('key:<customer_key>', 'email:<email>', 'ps:<PartnerStack key>'):
    -- writes sharing one are sent in the order they were accepted.
    customer_refs   TEXT[] NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    in_doubt        BOOLEAN NOT NULL DEFAULT false,
    -- When the write was last sent: a look-up after a lost answer waits for what that
    -- send may have created to become visible.
    last_sent_at    TIMESTAMPTZ,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    leased_until    TIMESTAMPTZ,
    -- HTTP requests sent to PartnerStack for this write, look-ups and retries included.
    upstream_requests INTEGER NOT NULL DEFAULT 0,
    -- How a finished write ended: created, updated, deleted, existed (PartnerStack had
    -- it already), found (a look-up after a lost answer found it), absent (a delete found
    -- nothing to delete after a lost answer), refused.
    resolution      TEXT CHECK (resolution IN
                        ('created', 'updated', 'deleted', 'existed', 'found', 'absent', 'refused')),
    -- The object as PartnerStack answered it (succeeded writes).
    result          JSONB,
    -- PartnerStack's status and message (failed writes), or the last passing failure
    -- (pending writes).
    error_status    INTEGER,
    error_message   TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    CHECK ((status = 'pending') = (finished_at IS NULL))
);

-- The worker's queue: pending writes, oldest first.
CREATE INDEX writes_pending ON writes (next_attempt_at, id) WHERE status = 'pending';
-- Earlier pending writes about the same customer hold later ones back.
CREATE INDEX writes_pending_refs ON writes USING gin (customer_refs) WHERE status = 'pending';
-- GET /v1/writes?status=...: newest first within a status.
CREATE INDEX writes_status ON writes (status, id);
-- Retention of finished writes.
CREATE INDEX writes_finished ON writes (finished_at) WHERE status <> 'pending';
