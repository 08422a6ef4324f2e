-- A1 do not disturb: a person's pause, until a time. Emails that fall due meanwhile stay
-- pending with their due time moved to its end (rule A1), and the sweep wakes them.
CREATE TABLE attention (
    person_id BIGINT PRIMARY KEY REFERENCES people (id) ON DELETE CASCADE,
    dnd_until TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
