-- Whether a notification is still open (pending or sending) as a column of its own, which the
-- partial index of open notifications names instead of the state. A claim (pending → sending)
-- then changes no value any index reads, so PostgreSQL writes it as a heap-only (HOT) update:
-- one new row version on the same page and no entry in any of the table's five indexes,
-- where it wrote five before. Only the record (→ sent, skipped or failed) still touches them.
-- The fill factor keeps room on each page for that version. Adding the generated column
-- rewrites the table once.
ALTER TABLE notifications SET (fillfactor = 70);
ALTER TABLE notifications
    ADD COLUMN is_open BOOLEAN GENERATED ALWAYS AS (state IN ('pending', 'sending')) STORED;
DROP INDEX notifications_open;
CREATE INDEX notifications_open ON notifications (due_at) WHERE is_open;
