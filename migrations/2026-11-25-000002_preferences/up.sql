-- Deactivated people keep their history but receive nothing (SPEC D9).
ALTER TABLE people ADD COLUMN active BOOLEAN NOT NULL DEFAULT true;

ALTER TABLE messages ADD COLUMN edited_at TIMESTAMPTZ;

-- Notification and email preferences of a user (SPEC P1-P5) and per-kind email switches that
-- one-click unsubscribe turns off. One row per user, created with the user.
CREATE TABLE user_preferences (
    person_id BIGINT PRIMARY KEY REFERENCES people (id),
    see_conversations TEXT NOT NULL DEFAULT 'all_projects'
        CHECK (see_conversations IN ('followed_projects', 'all_projects')),
    show_customer_conversations BOOLEAN NOT NULL DEFAULT true,
    from_customers TEXT NOT NULL DEFAULT 'mine' CHECK (from_customers IN ('all', 'mine', 'none')),
    from_users TEXT NOT NULL DEFAULT 'followed' CHECK (from_users IN ('all', 'followed', 'none')),
    followed_internal BOOLEAN NOT NULL DEFAULT true,
    email_customer_messages BOOLEAN NOT NULL DEFAULT true,
    email_replies BOOLEAN NOT NULL DEFAULT true,
    email_internal BOOLEAN NOT NULL DEFAULT true,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO user_preferences (person_id) SELECT id FROM people WHERE kind = 'user';

-- A customer who unsubscribed from one conversation's emails.
CREATE TABLE conversation_mutes (
    person_id BIGINT NOT NULL REFERENCES people (id),
    conversation_id BIGINT NOT NULL REFERENCES conversations (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (person_id, conversation_id)
);

-- Every preference change, from the API or from an unsubscribe link.
CREATE TABLE preference_changes (
    id BIGSERIAL PRIMARY KEY,
    person_id BIGINT NOT NULL REFERENCES people (id),
    conversation_id BIGINT REFERENCES conversations (id),
    field TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('api', 'unsubscribe')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX preference_changes_person ON preference_changes (person_id, id);

-- The rule that decided a skip, and the notification whose email carried this one.
ALTER TABLE notifications ADD COLUMN rule TEXT;
ALTER TABLE notifications ADD COLUMN coalesced_into BIGINT REFERENCES notifications (id);
ALTER TABLE email_log ADD COLUMN rule TEXT;
