-- The reconciler's state: one row per stream, and the keys a full scan has seen.
--
-- A pass's checkpoint (its filter, cursor and counters) is committed in the same
-- transaction as each page's rows, so a killed pass resumes after its last page and never
-- skips one. Only the reconciler's leader writes here, through the session that holds the
-- leadership lock; pass_id guards against a stale writer.

CREATE SEQUENCE sync_pass_ids;

CREATE TABLE sync_streams (
    stream            TEXT PRIMARY KEY,
    -- Incremental streams read from (watermark - overlap): the start of the last
    -- completed pass, never a time a pass did not cover.
    watermark         TIMESTAMPTZ,
    last_full_at      TIMESTAMPTZ,
    -- The pass in progress, if any: its identity, kind, filter and position.
    pass_id           BIGINT,
    pass_kind         TEXT CHECK (pass_kind IN ('full', 'incremental', 'window')),
    pass_started_at   TIMESTAMPTZ,
    pass_min_updated  TIMESTAMPTZ,
    pass_min_created  TIMESTAMPTZ,
    pass_cursor       TEXT,
    pass_pages        BIGINT NOT NULL DEFAULT 0,
    pass_seen         BIGINT NOT NULL DEFAULT 0,
    pass_changed      BIGINT NOT NULL DEFAULT 0,
    pass_repairs      BIGINT NOT NULL DEFAULT 0,
    pass_invalid      BIGINT NOT NULL DEFAULT 0,
    -- Keys recorded in sync_seen by this pass (a full scan); checked before deletion
    -- detection, since sync_seen does not survive a database crash.
    pass_marked       BIGINT NOT NULL DEFAULT 0,
    -- The last pass that ended, well or not.
    last_kind         TEXT,
    last_started_at   TIMESTAMPTZ,
    last_finished_at  TIMESTAMPTZ,
    last_status       TEXT CHECK (last_status IN ('ok', 'error')),
    last_error        TEXT,
    last_pages        BIGINT NOT NULL DEFAULT 0,
    last_seen         BIGINT NOT NULL DEFAULT 0,
    last_changed      BIGINT NOT NULL DEFAULT 0,
    last_repairs      BIGINT NOT NULL DEFAULT 0,
    last_deleted      BIGINT NOT NULL DEFAULT 0,
    last_invalid      BIGINT NOT NULL DEFAULT 0,
    -- Rows repaired since the first completed pass (the measured webhook loss).
    total_repairs     BIGINT NOT NULL DEFAULT 0,
    failures          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   TIMESTAMPTZ,
    -- POST /v1/sync/{stream}: run as soon as the leader sees it.
    requested_at      TIMESTAMPTZ,
    requested_full    BOOLEAN NOT NULL DEFAULT false,
    -- The replica that ran the pass in progress or the last one.
    runner            TEXT
);

-- UNLOGGED: no WAL for a million keys a day. A database crash empties it; the pass then
-- finds fewer keys than pass_marked says it recorded, and marks nothing deleted.
CREATE UNLOGGED TABLE sync_seen (
    stream  TEXT NOT NULL,
    key     TEXT NOT NULL,
    pass_id BIGINT NOT NULL,
    PRIMARY KEY (stream, key)
);
