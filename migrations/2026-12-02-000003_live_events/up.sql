-- The live event feed (SPEC D1, D8): one row per event per person, written in the same
-- transaction as the change that causes it and announced after commit. The id orders a
-- person's events: writers take a per-person advisory lock before inserting, so a person's
-- events commit in id order and a stream that has sent id N has seen every earlier one.
CREATE TABLE live_events (
    id BIGSERIAL PRIMARY KEY,
    person_id BIGINT NOT NULL REFERENCES people (id),
    kind TEXT NOT NULL CHECK (kind IN ('notification', 'seen', 'delivery', 'conversation')),
    payload JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX live_events_person ON live_events (person_id, id);
CREATE INDEX live_events_created ON live_events (created_at);
