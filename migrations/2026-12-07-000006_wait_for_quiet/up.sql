-- A3 wait for quiet: the person's own choice (NULL: the organisation's default,
-- TIDINGS_WAIT_FOR_QUIET).
ALTER TABLE attention ADD COLUMN IF NOT EXISTS wait_for_quiet BOOLEAN;
