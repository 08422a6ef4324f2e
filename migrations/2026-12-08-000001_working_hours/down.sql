DROP TABLE attention_defaults;
ALTER TABLE attention DROP CONSTRAINT attention_working_hours;
ALTER TABLE attention DROP COLUMN work_days, DROP COLUMN work_start, DROP COLUMN work_end,
    DROP COLUMN time_zone;
