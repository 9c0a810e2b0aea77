-- partnerstack-sync: the raw webhook log and the entity tables.
--
-- Every entity table shares the same bookkeeping columns:
--   key          PartnerStack's key for the object (part_..., cus_..., ...)
--   created_at   the object's created_at (the time it was first stored, if it has none)
--   updated_at   the object's updated_at, when it carries one
--   observed_at  source time of the stored observation: updated_at, else created_at.
--                apply() replaces a row only with a newer observation (see src/apply.rs)
--   deleted_at   soft-delete mark: a deleted/archived event, or gone from a full scan
--   raw          the object as last applied, unknown fields included
--   source       where the stored observation came from: 'webhook' or 'reconcile'
--   synced_at    when it was applied here
-- Money is BIGINT cents; nothing is ever hard-deleted.

CREATE TABLE webhook_events (
    id              BIGSERIAL PRIMARY KEY,
    idempotency_key BYTEA NOT NULL UNIQUE CHECK (octet_length(idempotency_key) = 32),
    event_type      TEXT,
    body            TEXT NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    outcome         TEXT NOT NULL DEFAULT 'pending'
                    CHECK (outcome IN ('pending', 'applied', 'stale', 'unknown_type', 'error')),
    outcome_reason  TEXT,
    entity          TEXT,
    entity_key      TEXT,
    applied_at      TIMESTAMPTZ
);
COMMENT ON COLUMN webhook_events.idempotency_key IS 'SHA-256 of the raw body: byte-identical repeats are stored once';
COMMENT ON COLUMN webhook_events.event_type IS 'normalised event name (lower case, _ separated, partner_* as partnership_*)';
COMMENT ON COLUMN webhook_events.body IS 'the request body exactly as received';
CREATE INDEX webhook_events_pending ON webhook_events (id) WHERE outcome = 'pending';
CREATE INDEX webhook_events_type ON webhook_events (event_type, id);
CREATE INDEX webhook_events_outcome ON webhook_events (outcome, id);
CREATE INDEX webhook_events_entity ON webhook_events (entity, entity_key);

CREATE TABLE partners (
    key          TEXT PRIMARY KEY,
    partner_key  TEXT,
    email        TEXT,
    first_name   TEXT,
    last_name    TEXT,
    name         TEXT,
    status       TEXT,
    group_key    TEXT,
    group_name   TEXT,
    team_key     TEXT,
    tags         JSONB,
    joined_at    TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ,
    observed_at  TIMESTAMPTZ,
    deleted_at   TIMESTAMPTZ,
    raw          JSONB NOT NULL,
    source       TEXT NOT NULL CHECK (source IN ('webhook', 'reconcile')),
    synced_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX partners_partner_key ON partners (partner_key);

CREATE TABLE customers (
    key             TEXT PRIMARY KEY,
    customer_key    TEXT,
    email           TEXT,
    name            TEXT,
    partner_key     TEXT,
    partnership_key TEXT,
    provider_key    TEXT,
    source_key      TEXT,
    source_type     TEXT,
    test            BOOLEAN,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ,
    observed_at     TIMESTAMPTZ,
    deleted_at      TIMESTAMPTZ,
    raw             JSONB NOT NULL,
    source          TEXT NOT NULL CHECK (source IN ('webhook', 'reconcile')),
    synced_at       TIMESTAMPTZ NOT NULL
);
COMMENT ON COLUMN customers.key IS 'PartnerStack''s customer key';
COMMENT ON COLUMN customers.customer_key IS 'your own key for the customer (nullable, not guaranteed unique)';
CREATE INDEX customers_customer_key ON customers (customer_key);
CREATE INDEX customers_partner_key ON customers (partner_key);

CREATE TABLE transactions (
    key                   TEXT PRIMARY KEY,
    amount                BIGINT,
    amount_usd            BIGINT,
    currency              TEXT,
    approved              BOOLEAN,
    archived              BOOLEAN,
    status                TEXT,
    customer_key          TEXT,
    customer_external_key TEXT,
    partner_key           TEXT,
    category_key          TEXT,
    product_key           TEXT,
    test                  BOOLEAN,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ,
    observed_at           TIMESTAMPTZ,
    deleted_at            TIMESTAMPTZ,
    raw                   JSONB NOT NULL,
    source                TEXT NOT NULL CHECK (source IN ('webhook', 'reconcile')),
    synced_at             TIMESTAMPTZ NOT NULL
);
COMMENT ON COLUMN transactions.customer_key IS 'PartnerStack''s customer key';
COMMENT ON COLUMN transactions.customer_external_key IS 'your key for the customer (customer.external_key)';
CREATE INDEX transactions_customer_key ON transactions (customer_key);
CREATE INDEX transactions_customer_external_key ON transactions (customer_external_key);

CREATE TABLE rewards (
    key                   TEXT PRIMARY KEY,
    amount                BIGINT,
    currency              TEXT,
    description           TEXT,
    reward_status         TEXT,
    partnership_key       TEXT,
    partner_key           TEXT,
    customer_key          TEXT,
    customer_external_key TEXT,
    transaction_key       TEXT,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ,
    observed_at           TIMESTAMPTZ,
    deleted_at            TIMESTAMPTZ,
    raw                   JSONB NOT NULL,
    source                TEXT NOT NULL CHECK (source IN ('webhook', 'reconcile')),
    synced_at             TIMESTAMPTZ NOT NULL
);
CREATE INDEX rewards_partnership_key ON rewards (partnership_key);

CREATE TABLE groups (
    key         TEXT PRIMARY KEY,
    name        TEXT,
    slug        TEXT,
    is_default  BOOLEAN,
    archived    BOOLEAN,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ,
    observed_at TIMESTAMPTZ,
    deleted_at  TIMESTAMPTZ,
    raw         JSONB NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('webhook', 'reconcile')),
    synced_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE deals (
    key          TEXT PRIMARY KEY,
    account_name TEXT,
    amount       BIGINT,
    close_date   DATE,
    external_key TEXT,
    group_key    TEXT,
    partner_key  TEXT,
    customer_key TEXT,
    stage        TEXT,
    deal_source  TEXT,
    lost_reason  TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ,
    observed_at  TIMESTAMPTZ,
    deleted_at   TIMESTAMPTZ,
    raw          JSONB NOT NULL,
    source       TEXT NOT NULL CHECK (source IN ('webhook', 'reconcile')),
    synced_at    TIMESTAMPTZ NOT NULL
);
COMMENT ON COLUMN deals.deal_source IS 'PartnerStack''s deal "source" field (partner or vendor)';

CREATE TABLE leads (
    key          TEXT PRIMARY KEY,
    amount       BIGINT,
    approved     BOOLEAN,
    external_key TEXT,
    group_key    TEXT,
    partner_key  TEXT,
    status       TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ,
    observed_at  TIMESTAMPTZ,
    deleted_at   TIMESTAMPTZ,
    raw          JSONB NOT NULL,
    source       TEXT NOT NULL CHECK (source IN ('webhook', 'reconcile')),
    synced_at    TIMESTAMPTZ NOT NULL
);
