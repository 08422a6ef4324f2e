DROP INDEX conversation_participants_person;
DROP INDEX live_events_created;
CREATE INDEX live_events_created ON live_events (created_at);
DELETE FROM live_events WHERE payload IS NULL;
ALTER TABLE live_events
    ALTER COLUMN payload SET NOT NULL,
    DROP COLUMN message_id,
    DROP COLUMN conversation_id,
    ADD CONSTRAINT live_events_person_id_fkey FOREIGN KEY (person_id) REFERENCES people (id);
