-- A1 do not disturb: a person's pause, until a time. Emails that fall due meanwhile stay
-- pending with their due time moved to its end (rule A1), and the sweep wakes them.
-- A3 wait for quiet: the person's own choice (NULL: the organisation's default).
CREATE TABLE attention (
    person_id BIGINT PRIMARY KEY REFERENCES people (id) ON DELETE CASCADE,
    dnd_until TIMESTAMPTZ,
    wait_for_quiet BOOLEAN,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
