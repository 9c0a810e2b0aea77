-- Webhooks as notifications, poll-only streams, requests per pass.
--
-- A delivery can now end without being applied: `unresolved` (its body names no key and
-- no stored row matches its partner_key or customer_key) or `unconfirmed` (verified
-- mode: PartnerStack does not know the object it names). `applied_from` says where the
-- applied state came from: the body itself, or PartnerStack's answer to a fetch.
-- A delivery waiting for PartnerStack (a new customer not readable yet, a failed fetch)
-- stays pending with `next_attempt_at`; a replica fetching for it holds a lease.

ALTER TABLE webhook_events DROP CONSTRAINT webhook_events_outcome_check;
ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_outcome_check
    CHECK (outcome IN ('pending', 'applied', 'stale', 'unknown_type', 'error',
                       'unresolved', 'unconfirmed'));
ALTER TABLE webhook_events
    ADD COLUMN applied_from TEXT CHECK (applied_from IN ('body', 'fetch')),
    ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at TIMESTAMPTZ,
    ADD COLUMN leased_until TIMESTAMPTZ;
COMMENT ON COLUMN webhook_events.applied_from IS 'where the applied state came from: the body, or PartnerStack''s answer to a fetch';

-- Requests sent per pass (retries included), and when the last full scan finished (its
-- duration plans the next scan of a poll-only stream).
ALTER TABLE sync_streams
    ADD COLUMN pass_requests BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN last_requests BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN last_full_finished_at TIMESTAMPTZ,
    ADD COLUMN last_full_pages BIGINT NOT NULL DEFAULT 0;
