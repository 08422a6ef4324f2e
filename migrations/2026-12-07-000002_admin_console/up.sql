-- Admins: users who may use the admin routes with their own session (the console at /admin).
ALTER TABLE people ADD COLUMN admin BOOLEAN NOT NULL DEFAULT false;

-- Every change an admin made with their session: who, when, the route and its answer, and the
-- JSON body they sent (cut at 64 KiB).
CREATE TABLE admin_changes (
    id BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor_id BIGINT NOT NULL REFERENCES people (id),
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status SMALLINT NOT NULL,
    body JSONB
);
CREATE INDEX admin_changes_at ON admin_changes (at DESC, id DESC);

-- Template versions saved from the console. The newest version of a (name, locale) overrides
-- the shipped files of that template; a version with no parts is a revert to the files.
CREATE TABLE template_versions (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    -- The locale folder the version belongs to; '' is the default locale's (the top level).
    locale TEXT NOT NULL DEFAULT '',
    subject TEXT,
    text TEXT,
    html TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    author_id BIGINT REFERENCES people (id),
    CHECK ((subject IS NULL) = (text IS NULL) AND (text IS NULL) = (html IS NULL))
);
CREATE INDEX template_versions_current ON template_versions (name, locale, id DESC);

-- The raw text of each inbound email as it was received, for the console: the Incoming log's
-- source, and "post it anyway" for mail that was set aside (ignored or rejected). Removed
-- with the email log's retention by purge_log.
CREATE TABLE inbound_raw (
    inbound_email_id BIGINT PRIMARY KEY REFERENCES inbound_emails (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    mail_from TEXT NOT NULL,
    rcpt_to TEXT NOT NULL,
    subject TEXT,
    raw BYTEA NOT NULL,
    -- Why it was not posted (NULL: it was posted).
    set_aside TEXT,
    recovered_at TIMESTAMPTZ,
    recovered_by BIGINT REFERENCES people (id),
    recovered_message_id BIGINT
);
ALTER TABLE inbound_raw ALTER COLUMN raw SET STORAGE EXTERNAL;
CREATE INDEX inbound_raw_created ON inbound_raw (created_at);
CREATE INDEX inbound_raw_set_aside ON inbound_raw (inbound_email_id DESC) WHERE set_aside IS NOT NULL;

-- The inbound email a log row is about (the console opens its source from the row).
ALTER TABLE email_log ADD COLUMN inbound_email_id BIGINT;

-- Each sent email as the SMTP server accepted it (its first TIDINGS_KEEP_SOURCE bytes), by its Message-ID, for
-- the console's raw view of an Outgoing row. Removed with the email log's retention.
CREATE TABLE outbound_sources (
    message_id_header TEXT PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    raw BYTEA NOT NULL,
    cut BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX outbound_sources_created ON outbound_sources (created_at);
