-- Webhook URL tokens decided at run time, beside the configured ones (webhooks.tokens):
-- `webhooks rotate` (and `webhooks register`, when no configured token is usable) adds a
-- generated token as 'active'; `webhooks remove` marks the removed registration's token
-- 'revoked', configured or not. Every replica re-reads this table every
-- webhooks.token_refresh, so both take effect without a change to any configuration.
-- Only the token's SHA-256 is kept: the token itself is in the URL PartnerStack delivers
-- to, which is where it is needed. A revoked token stays revoked.
CREATE TABLE webhook_tokens (
    digest BYTEA PRIMARY KEY CHECK (octet_length(digest) = 32),
    state TEXT NOT NULL CHECK (state IN ('active', 'revoked')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ,
    CHECK ((state = 'revoked') = (revoked_at IS NOT NULL))
);
COMMENT ON TABLE webhook_tokens IS 'webhook URL tokens added by rotation or refused after removal (SHA-256 only)';
