-- The change log, the relay's positions, and retention.
--
-- apply() (src/apply.rs) appends one row to `changes` for every row it creates, changes
-- or marks deleted, in the same transaction (src/db/changes.rs). A full scan's deletions
-- (src/db/sync.rs) append theirs the same way.
--
-- Feed order. Sequence numbers (`id`) are taken when a row is inserted, not when its
-- transaction commits, so a reader that paged by `id` alone would skip a lower id that
-- commits after a higher one. The feed is therefore ordered by (pos, id), where `pos` is
-- a transaction id (xid8), and a reader only returns rows with
-- pos < pg_snapshot_xmin(pg_current_snapshot()): every transaction below that is over, so
-- no row can appear there later. `pos` is the writing transaction's id, raised to the
-- `pos` of the object's previous change when that is higher: a writer that got its
-- transaction id before the previous writer of the same object still sorts after it, so
-- one object's changes are in the feed in the order apply() made them.
--
-- `state` is the object's typed state after the change; `fields` the fields that changed,
-- each with its old and new value.

CREATE TABLE changes (
    id        BIGSERIAL NOT NULL,
    pos       xid8 NOT NULL,
    txid      xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    entity    TEXT NOT NULL
              CHECK (entity IN ('partners', 'customers', 'transactions', 'rewards', 'groups', 'deals', 'leads')),
    key       TEXT NOT NULL,
    operation TEXT NOT NULL CHECK (operation IN ('created', 'updated', 'deleted')),
    source    TEXT NOT NULL CHECK (source IN ('webhook', 'reconcile', 'write')),
    fields    JSONB NOT NULL,
    state     JSONB NOT NULL,
    PRIMARY KEY (pos, id)
);
COMMENT ON COLUMN changes.pos IS 'feed position: the writer''s transaction id, or the object''s previous pos if higher';
COMMENT ON COLUMN changes.txid IS 'the writing transaction';
COMMENT ON COLUMN changes.at IS 'when the change was applied (the writing transaction''s start, as synced_at)';
-- One object's changes, for history and for the previous pos of an object.
CREATE INDEX changes_object ON changes (entity, key, id);

-- The pruning horizon: every change at or below (pos, id) has been deleted. A reader whose
-- cursor is below it may have missed changes, and is told so (410).
CREATE TABLE change_horizon (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    pos       xid8,
    id        BIGINT,
    pruned_at TIMESTAMPTZ
);
INSERT INTO change_horizon DEFAULT VALUES;

-- One row per relay endpoint (by its configured name): its position in the feed (the last
-- change it acknowledged with a 2xx, or skipped as not of its entities), counters and the
-- last error. Only the replica holding the endpoint's advisory lock writes the position.
CREATE TABLE relay_endpoints (
    name              TEXT PRIMARY KEY,
    position_pos      xid8,
    position_id       BIGINT,
    delivered         BIGINT NOT NULL DEFAULT 0,
    failures          INTEGER NOT NULL DEFAULT 0,
    last_delivered_at TIMESTAMPTZ,
    last_error        TEXT,
    last_error_at     TIMESTAMPTZ,
    runner            TEXT,
    -- POST /v1/relay/{name}/replay: the leader moves the position here before its next read
    -- (both NULL with replay_requested_at set: from the oldest change kept).
    replay_requested_at TIMESTAMPTZ,
    replay_pos        xid8,
    replay_id         BIGINT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((position_pos IS NULL) = (position_id IS NULL)),
    CHECK ((replay_pos IS NULL) = (replay_id IS NULL))
);

-- Webhook deliveries are pruned oldest first, by id (their primary key): no index needed.

-- A write path is coming: its observations are stored with source 'write'.
ALTER TABLE partners DROP CONSTRAINT partners_source_check,
    ADD CONSTRAINT partners_source_check CHECK (source IN ('webhook', 'reconcile', 'write'));
ALTER TABLE customers DROP CONSTRAINT customers_source_check,
    ADD CONSTRAINT customers_source_check CHECK (source IN ('webhook', 'reconcile', 'write'));
ALTER TABLE transactions DROP CONSTRAINT transactions_source_check,
    ADD CONSTRAINT transactions_source_check CHECK (source IN ('webhook', 'reconcile', 'write'));
ALTER TABLE rewards DROP CONSTRAINT rewards_source_check,
    ADD CONSTRAINT rewards_source_check CHECK (source IN ('webhook', 'reconcile', 'write'));
ALTER TABLE groups DROP CONSTRAINT groups_source_check,
    ADD CONSTRAINT groups_source_check CHECK (source IN ('webhook', 'reconcile', 'write'));
ALTER TABLE deals DROP CONSTRAINT deals_source_check,
    ADD CONSTRAINT deals_source_check CHECK (source IN ('webhook', 'reconcile', 'write'));
ALTER TABLE leads DROP CONSTRAINT leads_source_check,
    ADD CONSTRAINT leads_source_check CHECK (source IN ('webhook', 'reconcile', 'write'));
