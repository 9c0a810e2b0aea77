-- A claim checks, for each pending write it walks past, that no earlier pending write
-- concerns the same customer: one probe of writes_pending_refs per candidate. With GIN's
-- fast update, new entries wait in an unsorted pending list that every probe reads in
-- full, so while writes are being accepted each claim costs time in proportion to the
-- writes accepted since the list was last merged. Entries now go into the index as they
-- are inserted, and what is pending is merged now.
ALTER INDEX writes_pending_refs SET (fastupdate = off);
SELECT gin_clean_pending_list('writes_pending_refs'::regclass);
