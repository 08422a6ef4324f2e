DELETE FROM preference_changes WHERE source = 'complaint';
ALTER TABLE preference_changes DROP CONSTRAINT preference_changes_source_check;
ALTER TABLE preference_changes ADD CONSTRAINT preference_changes_source_check
    CHECK (source IN ('api', 'unsubscribe'));
