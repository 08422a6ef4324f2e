-- The live event feed (SPEC D1, D8): one row per event per person, written in the same
-- transaction as the change that causes it and announced after commit. The id orders a
-- person's events: writers take an advisory lock on the person's slot before inserting, so a
-- person's events commit in id order and a stream that has sent id N has seen every earlier
-- one. No foreign key: people are never deleted (only deactivated), and a key check per row
-- would cost the hot path a lookup and a row lock on people for every notification.
CREATE TABLE live_events (
    id BIGSERIAL PRIMARY KEY,
    person_id BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('notification', 'seen', 'delivery', 'conversation')),
    -- `notification` and `conversation` rows name their message and nothing else: dispatch
    -- writes one per recipient on the hot path, and most recipients have no stream open, so
    -- the api builds their payload (subject, author, excerpt) only when it sends them.
    conversation_id BIGINT,
    message_id BIGINT,
    payload JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX live_events_person ON live_events (person_id, id);
-- The messenger's inbox lists the conversations a person takes part in.
CREATE INDEX conversation_participants_person ON conversation_participants (person_id);
-- Rows arrive in time order, so a block-range index serves the retention purge at almost no
-- cost per insert.
CREATE INDEX live_events_created ON live_events USING brin (created_at);
