-- Deletions that stick, and no partner status.
--
-- A row can be marked deleted on evidence (a delete event, an archived flag, PartnerStack
-- answering that the object is gone) or by inference (a complete full scan no longer
-- listed it). Lists can keep archived objects without a flag, so a deletion made on
-- evidence is undone only by a sighting of the live object whose source time is after
-- `undeleted_after`: the deletion's own source time, or, for a deletion that had none,
-- when it was learned. A deletion made by inference leaves `undeleted_after` NULL and is
-- undone by a newer sighting, or by a list at the same source time (the scan may have
-- missed the object).
--
-- Partnerships have no `status` in PartnerStack's API (only a legacy dialect had one):
-- the column was always empty on real data, and `/v1/partners?status=` could never match.
-- The raw object keeps whatever a body carried.

ALTER TABLE partners ADD COLUMN undeleted_after TIMESTAMPTZ;
ALTER TABLE customers ADD COLUMN undeleted_after TIMESTAMPTZ;
ALTER TABLE transactions ADD COLUMN undeleted_after TIMESTAMPTZ;
ALTER TABLE rewards ADD COLUMN undeleted_after TIMESTAMPTZ;
ALTER TABLE groups ADD COLUMN undeleted_after TIMESTAMPTZ;
ALTER TABLE deals ADD COLUMN undeleted_after TIMESTAMPTZ;
ALTER TABLE leads ADD COLUMN undeleted_after TIMESTAMPTZ;

-- Marks made before this migration: those a webhook or a write made are evidence, as of
-- the row's source time (when it had one, else when it was marked); a reconcile pass's
-- mark is taken for an inference.
UPDATE partners SET undeleted_after = COALESCE(observed_at, deleted_at)
    WHERE deleted_at IS NOT NULL AND source <> 'reconcile';
UPDATE customers SET undeleted_after = COALESCE(observed_at, deleted_at)
    WHERE deleted_at IS NOT NULL AND source <> 'reconcile';
UPDATE transactions SET undeleted_after = COALESCE(observed_at, deleted_at)
    WHERE deleted_at IS NOT NULL AND source <> 'reconcile';
UPDATE rewards SET undeleted_after = COALESCE(observed_at, deleted_at)
    WHERE deleted_at IS NOT NULL AND source <> 'reconcile';
UPDATE groups SET undeleted_after = COALESCE(observed_at, deleted_at)
    WHERE deleted_at IS NOT NULL AND source <> 'reconcile';
UPDATE deals SET undeleted_after = COALESCE(observed_at, deleted_at)
    WHERE deleted_at IS NOT NULL AND source <> 'reconcile';
UPDATE leads SET undeleted_after = COALESCE(observed_at, deleted_at)
    WHERE deleted_at IS NOT NULL AND source <> 'reconcile';

ALTER TABLE partners DROP COLUMN status;
