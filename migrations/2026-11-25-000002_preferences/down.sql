ALTER TABLE email_log DROP COLUMN rule;
ALTER TABLE notifications DROP COLUMN coalesced_into;
ALTER TABLE notifications DROP COLUMN rule;
DROP TABLE preference_changes;
DROP TABLE conversation_mutes;
DROP TABLE user_preferences;
ALTER TABLE messages DROP COLUMN edited_at;
ALTER TABLE people DROP COLUMN active;
