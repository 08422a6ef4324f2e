-- A complaint report turns a kind of email off as an unsubscribe does (SPEC T5); the change
-- is recorded with its own source.
ALTER TABLE preference_changes DROP CONSTRAINT preference_changes_source_check;
ALTER TABLE preference_changes ADD CONSTRAINT preference_changes_source_check
    CHECK (source IN ('api', 'unsubscribe', 'complaint'));
