ALTER TABLE outbound_sources ALTER COLUMN raw SET COMPRESSION default;
