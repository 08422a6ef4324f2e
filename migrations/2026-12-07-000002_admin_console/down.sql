DROP TABLE outbound_sources;
ALTER TABLE email_log DROP COLUMN inbound_email_id;
DROP TABLE inbound_raw;
DROP TABLE template_versions;
DROP TABLE admin_changes;
ALTER TABLE people DROP COLUMN admin;
