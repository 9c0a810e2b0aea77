-- partnerstack-sync: indexes for the /v1 query API.
--
-- Every collection is listed newest first, ties broken by key, with keyset pagination:
-- `WHERE (created_at, key) < ($at, $key) ORDER BY created_at DESC, key DESC LIMIT n`.
-- The `*_order` indexes serve that directly. A filter that selects a slice of a table
-- gets an index of its own, ending in the same order where the filter is an equality
-- the list is often paged by (so a page is a range scan that stops after n rows).
-- `updated_since` compares COALESCE(updated_at, created_at), indexed as that expression.
-- Email and status filters ignore case, so they are indexed on lower(...).

CREATE INDEX partners_order ON partners (created_at DESC, key DESC);
CREATE INDEX partners_group_order ON partners (group_key, created_at DESC, key DESC);
CREATE INDEX partners_status_order ON partners (lower(status), created_at DESC, key DESC);
CREATE INDEX partners_email ON partners (lower(email));
CREATE INDEX partners_updated ON partners ((COALESCE(updated_at, created_at)));

CREATE INDEX customers_order ON customers (created_at DESC, key DESC);
CREATE INDEX customers_partnership_key ON customers (partnership_key);
CREATE INDEX customers_email ON customers (lower(email));
CREATE INDEX customers_updated ON customers ((COALESCE(updated_at, created_at)));
-- partner_key and customer_key are indexed by 0001.

CREATE INDEX transactions_order ON transactions (created_at DESC, key DESC);
CREATE INDEX transactions_partner_key ON transactions (partner_key);
CREATE INDEX transactions_approved_order ON transactions (approved, created_at DESC, key DESC);
CREATE INDEX transactions_status_order ON transactions (status, created_at DESC, key DESC);
CREATE INDEX transactions_currency_order ON transactions (currency, created_at DESC, key DESC);
CREATE INDEX transactions_updated ON transactions ((COALESCE(updated_at, created_at)));
-- customer_key and customer_external_key are indexed by 0001.

CREATE INDEX rewards_order ON rewards (created_at DESC, key DESC);
CREATE INDEX rewards_partner_key ON rewards (partner_key);
CREATE INDEX rewards_customer_key ON rewards (customer_key);
CREATE INDEX rewards_customer_external_key ON rewards (customer_external_key);
CREATE INDEX rewards_status_order ON rewards (reward_status, created_at DESC, key DESC);
CREATE INDEX rewards_updated ON rewards ((COALESCE(updated_at, created_at)));
-- partnership_key is indexed by 0001.

CREATE INDEX groups_order ON groups (created_at DESC, key DESC);
CREATE INDEX groups_updated ON groups ((COALESCE(updated_at, created_at)));

CREATE INDEX deals_order ON deals (created_at DESC, key DESC);
CREATE INDEX deals_partner_key ON deals (partner_key);
CREATE INDEX deals_group_order ON deals (group_key, created_at DESC, key DESC);
CREATE INDEX deals_updated ON deals ((COALESCE(updated_at, created_at)));

CREATE INDEX leads_order ON leads (created_at DESC, key DESC);
CREATE INDEX leads_partner_key ON leads (partner_key);
CREATE INDEX leads_group_order ON leads (group_key, created_at DESC, key DESC);
CREATE INDEX leads_status_order ON leads (lower(status), created_at DESC, key DESC);
CREATE INDEX leads_updated ON leads ((COALESCE(updated_at, created_at)));

-- The event log is ordered by id (its primary key); type and outcome are indexed by 0001.
CREATE INDEX webhook_events_entity_key ON webhook_events (entity_key, id);
CREATE INDEX webhook_events_updated ON webhook_events ((COALESCE(applied_at, received_at)));
