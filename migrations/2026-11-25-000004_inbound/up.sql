-- Every email the inbound listener accepted, once: the dedupe key is its Message-ID (or a
-- hash of the raw message when it has none), so a relay's retry is processed once (SPEC I6).
-- Kept beyond the 72-hour log: received Message-IDs thread later replies (SPEC I2).
CREATE TABLE inbound_emails (
    id BIGSERIAL PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    message_id_header TEXT,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    mail_from TEXT,
    rcpt_to TEXT,
    sender TEXT,
    verdict TEXT NOT NULL,
    reason TEXT,
    conversation_id BIGINT REFERENCES conversations (id),
    posted_message_id BIGINT REFERENCES messages (id),
    quoted_text TEXT
);
CREATE INDEX inbound_emails_message_id ON inbound_emails (message_id_header);
CREATE INDEX inbound_emails_sender ON inbound_emails (sender, received_at);
CREATE INDEX inbound_emails_conversation ON inbound_emails (conversation_id, received_at);
CREATE INDEX notifications_email_message_id ON notifications (email_message_id);
