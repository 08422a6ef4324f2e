-- A large inbound mail waits here rather than on the broker: the queued delivery names its row,
-- so the inbound consumer's prefetched deliveries stay small and it reads each large mail when
-- it processes it. A row is deleted once its mail is processed; `purge_log` removes rows left
-- behind (a delivery dead-lettered, a publish that never confirmed) after 7 days.
CREATE TABLE inbound_spool (
    id BIGSERIAL PRIMARY KEY,
    raw BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE inbound_spool ALTER COLUMN raw SET STORAGE EXTERNAL;
