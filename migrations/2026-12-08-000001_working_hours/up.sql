-- A2 working hours: the days (bits, Monday 1, Tuesday 2, … Sunday 64), the local start and
-- end (an end at or before the start ends the next day, for a shift over midnight) and the
-- IANA time zone. On a person's row, work_days NULL takes the organisation's default (users
-- only) and 0 is their own choice of no working hours.
ALTER TABLE attention
    ADD COLUMN IF NOT EXISTS work_days SMALLINT,
    ADD COLUMN IF NOT EXISTS work_start TIME,
    ADD COLUMN IF NOT EXISTS work_end TIME,
    ADD COLUMN IF NOT EXISTS time_zone TEXT;
ALTER TABLE attention ADD CONSTRAINT attention_working_hours CHECK (
    work_days IS NULL OR work_days = 0
    OR (work_days BETWEEN 1 AND 127 AND work_start IS NOT NULL AND work_end IS NOT NULL
        AND work_start <> work_end AND time_zone IS NOT NULL));

-- The organisation's default working hours for users: one row at most.
CREATE TABLE attention_defaults (
    only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    work_days SMALLINT NOT NULL CHECK (work_days BETWEEN 1 AND 127),
    work_start TIME NOT NULL,
    work_end TIME NOT NULL CHECK (work_end <> work_start),
    time_zone TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
