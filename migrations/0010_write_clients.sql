-- Who made each write to PartnerStack: the named API client (api.clients) whose token
-- sent it, on the write (GET /v1/writes) and on every change its outcome caused in the
-- change log (GET /v1/changes, history, the relay). NULL: a change that no write caused
-- (webhook, reconcile), or a write accepted before clients had names.
ALTER TABLE writes ADD COLUMN client TEXT;
ALTER TABLE changes ADD COLUMN client TEXT;
COMMENT ON COLUMN writes.client IS 'the API client that made the write';
COMMENT ON COLUMN changes.client IS 'the API client whose write caused the change (source write)';
