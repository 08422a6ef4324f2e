-- People: staff users, external customers and bots share one table so that notifications,
-- follows and seen cursors can point at any of them.
CREATE TABLE people (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('user', 'customer', 'bot')),
    name TEXT NOT NULL,
    email TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (kind = 'bot' OR email IS NOT NULL)
);
CREATE UNIQUE INDEX people_kind_email ON people (kind, lower(email)) WHERE email IS NOT NULL;

CREATE TABLE projects (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE items (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects (id),
    kind TEXT NOT NULL CHECK (kind IN ('ticket', 'task')),
    title TEXT NOT NULL,
    assignee_id BIGINT REFERENCES people (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX items_project ON items (project_id);

CREATE TABLE project_follows (
    project_id BIGINT NOT NULL REFERENCES projects (id),
    person_id BIGINT NOT NULL REFERENCES people (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, person_id)
);

CREATE TABLE item_follows (
    item_id BIGINT NOT NULL REFERENCES items (id),
    person_id BIGINT NOT NULL REFERENCES people (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (item_id, person_id)
);

-- A conversation is linked to an item, to a project, or to neither (a new customer chat).
CREATE TABLE conversations (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT REFERENCES projects (id),
    item_id BIGINT REFERENCES items (id),
    subject TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (project_id IS NULL OR item_id IS NULL)
);

-- People who posted in a conversation or were added to it (SPEC F1).
CREATE TABLE conversation_participants (
    conversation_id BIGINT NOT NULL REFERENCES conversations (id),
    person_id BIGINT NOT NULL REFERENCES people (id),
    added_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, person_id)
);

CREATE TABLE messages (
    id BIGSERIAL PRIMARY KEY,
    conversation_id BIGINT NOT NULL REFERENCES conversations (id),
    author_id BIGINT NOT NULL REFERENCES people (id),
    body TEXT NOT NULL,
    internal BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at TIMESTAMPTZ,
    -- Set once dispatch has written the message's notifications; NULL rows older than the
    -- sweep interval had their message.posted event lost and are published again.
    dispatched_at TIMESTAMPTZ
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);
CREATE INDEX messages_author_conversation ON messages (author_id, conversation_id, id);
CREATE INDEX messages_undispatched ON messages (created_at) WHERE dispatched_at IS NULL;

-- Read cursor: the person has seen every message of the conversation up to last_seen_message_id.
CREATE TABLE seen_cursors (
    person_id BIGINT NOT NULL REFERENCES people (id),
    conversation_id BIGINT NOT NULL REFERENCES conversations (id),
    last_seen_message_id BIGINT NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (person_id, conversation_id)
);

-- One message for one recipient: in-app first, email if not seen in time.
-- pending -> sending -> sent | skipped(reason) | failed(reason); sending may fall back to
-- pending for a retry after a temporary SMTP failure.
CREATE TABLE notifications (
    id BIGSERIAL PRIMARY KEY,
    message_id BIGINT NOT NULL REFERENCES messages (id),
    recipient_id BIGINT NOT NULL REFERENCES people (id),
    conversation_id BIGINT NOT NULL REFERENCES conversations (id),
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sending', 'sent', 'skipped', 'failed')),
    reason TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    due_at TIMESTAMPTZ NOT NULL,
    claimed_at TIMESTAMPTZ,
    attempts INTEGER NOT NULL DEFAULT 0,
    -- Stable Message-ID of the email for this notification; kept for threading long after the log.
    email_message_id TEXT NOT NULL,
    sent_at TIMESTAMPTZ,
    smtp_reply TEXT,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (message_id, recipient_id)
);
CREATE INDEX notifications_recipient_conversation
    ON notifications (recipient_id, conversation_id, message_id);
CREATE INDEX notifications_open ON notifications (due_at) WHERE state IN ('pending', 'sending');

-- Outbound and inbound email log (SPEC L1); rows are purged after 72 hours.
CREATE TABLE email_log (
    id BIGSERIAL PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    direction TEXT NOT NULL CHECK (direction IN ('outbound', 'inbound')),
    status TEXT NOT NULL,
    reason TEXT,
    notification_id BIGINT REFERENCES notifications (id) ON DELETE SET NULL,
    message_id BIGINT REFERENCES messages (id) ON DELETE SET NULL,
    conversation_id BIGINT REFERENCES conversations (id) ON DELETE SET NULL,
    mail_from TEXT,
    rcpt_to TEXT,
    subject TEXT,
    message_id_header TEXT,
    smtp_reply TEXT
);
CREATE INDEX email_log_created ON email_log (created_at);
CREATE INDEX email_log_message ON email_log (message_id);
CREATE INDEX email_log_notification ON email_log (notification_id);
