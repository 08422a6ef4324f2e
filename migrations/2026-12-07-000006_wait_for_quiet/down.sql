ALTER TABLE attention DROP COLUMN wait_for_quiet;
