-- Live events on the hot path, made cheap: dispatch writes one row per recipient, and most
-- recipients have no stream open. Writers lock the person's feed slot, one of 128 (see
-- common/src/live.rs).
-- `notification` and `conversation` rows name their message and nothing else; the api
-- builds their payload (subject, author, excerpt) only when it sends them.
ALTER TABLE live_events
    ADD COLUMN conversation_id BIGINT,
    ADD COLUMN message_id BIGINT,
    ALTER COLUMN payload DROP NOT NULL;
-- No foreign key: people are never deleted (only deactivated), and a key check per row
-- would cost a lookup and a row lock on people for every notification.
ALTER TABLE live_events DROP CONSTRAINT live_events_person_id_fkey;
-- Rows arrive in time order, so a block-range index serves the retention purge at almost
-- no cost per insert.
DROP INDEX live_events_created;
CREATE INDEX live_events_created ON live_events USING brin (created_at);
-- The messenger's inbox lists the conversations a person takes part in.
CREATE INDEX conversation_participants_person ON conversation_participants (person_id);
