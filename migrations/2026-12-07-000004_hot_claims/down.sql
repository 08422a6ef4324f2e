DROP INDEX notifications_open;
ALTER TABLE notifications DROP COLUMN is_open;
ALTER TABLE notifications RESET (fillfactor);
CREATE INDEX notifications_open ON notifications (due_at) WHERE state IN ('pending', 'sending');
