-- Objects a pass could not read and whose key could not be read either.
--
-- A full scan records the key of every object it reads in sync_seen, also of objects
-- it cannot otherwise read, and marks the stored rows it did not see as deleted. An
-- object without a readable key could be any stored row, so a full scan that met one
-- marks nothing deleted. The count is part of the checkpoint, so a resumed scan knows.

ALTER TABLE sync_streams ADD COLUMN pass_unkeyed BIGINT NOT NULL DEFAULT 0;
