-- Messaging center: locales, email preferences E1-E3, item status, domain events, system
-- notifications (M4), automations (M1-M3), the outbox of non-message emails, invitations,
-- and the scheduler's record of job ticks.

ALTER TABLE people ADD COLUMN locale TEXT;

ALTER TABLE user_preferences ADD COLUMN email_assignments BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE user_preferences ADD COLUMN email_project_members BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE user_preferences ADD COLUMN accept_all_invitations BOOLEAN NOT NULL DEFAULT true;

ALTER TABLE items ADD COLUMN status TEXT NOT NULL DEFAULT 'open';
ALTER TABLE items ADD COLUMN requester_id BIGINT REFERENCES people (id);

-- Domain events are written in the transaction of the change they describe, published after
-- commit, and handled once (handled_at is set by a conditional update).
CREATE TABLE domain_events (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    payload JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    handled_at TIMESTAMPTZ
);
CREATE INDEX domain_events_unhandled ON domain_events (created_at) WHERE handled_at IS NULL;

CREATE TABLE system_notifications (
    event TEXT PRIMARY KEY,
    template TEXT NOT NULL,
    description TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT true,
    can_disable BOOLEAN NOT NULL DEFAULT true,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (can_disable OR enabled)
);
INSERT INTO system_notifications (event, template, description, can_disable) VALUES
    ('user_created', 'welcome', 'welcome email to a new user', true),
    ('password_reset_requested', 'password_reset', 'password reset link', false),
    ('invitation_created', 'invitation', 'project invitation with an accept link (E3 off)', true),
    ('item_assigned', 'assignment', 'the user was assigned to an item (E1)', true),
    ('item_unassigned', 'unassignment', 'the user was unassigned from an item (E1)', true),
    ('project_member_added', 'project_member_added',
     'a user joined a project the recipient follows (E2)', true);

INSERT INTO people (kind, name) VALUES ('bot', 'Tidings automations');

CREATE TABLE automations (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    trigger TEXT NOT NULL CHECK (trigger IN
        ('item_created', 'status_changed', 'item_closed', 'assigned', 'message_posted')),
    condition JSONB,
    action TEXT NOT NULL CHECK (action IN ('post_message', 'send_email', 'notify_followers')),
    template TEXT,
    body TEXT,
    audience TEXT CHECK (audience IN ('followers', 'assignee', 'requester')),
    bot_id BIGINT REFERENCES people (id),
    enabled BOOLEAN NOT NULL DEFAULT true,
    critical BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (NOT critical OR enabled),
    CHECK (action <> 'post_message' OR (body IS NOT NULL AND bot_id IS NOT NULL)),
    CHECK (action <> 'send_email' OR (template IS NOT NULL AND audience IS NOT NULL))
);
-- M2: the critical automation exists from the start; its template is the notification one.
INSERT INTO automations (name, trigger, action, template, enabled, critical)
VALUES ('New message in an item conversation: notify all followers', 'message_posted',
        'notify_followers', 'notification', true, true);
CREATE UNIQUE INDEX automations_one_critical ON automations (critical) WHERE critical;

-- One row per automation run (or capped attempt); the unique key makes a redelivered event
-- run an automation once.
CREATE TABLE automation_runs (
    id BIGSERIAL PRIMARY KEY,
    automation_id BIGINT NOT NULL REFERENCES automations (id) ON DELETE CASCADE,
    event_id BIGINT NOT NULL,
    item_id BIGINT NOT NULL,
    recipient_id BIGINT NOT NULL DEFAULT 0,
    capped BOOLEAN NOT NULL DEFAULT false,
    message_id BIGINT REFERENCES messages (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (automation_id, event_id, recipient_id)
);
CREATE INDEX automation_runs_window ON automation_runs (automation_id, item_id, recipient_id, created_at);

-- Emails that are not message notifications: system notifications and automation emails.
CREATE TABLE outbox_emails (
    id BIGSERIAL PRIMARY KEY,
    template TEXT NOT NULL,
    source TEXT NOT NULL,
    system_event TEXT REFERENCES system_notifications (event),
    automation_id BIGINT REFERENCES automations (id) ON DELETE SET NULL,
    recipient_id BIGINT NOT NULL REFERENCES people (id),
    conversation_id BIGINT REFERENCES conversations (id),
    data JSONB NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sending', 'sent', 'skipped', 'failed')),
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_at TIMESTAMPTZ,
    email_message_id TEXT NOT NULL,
    smtp_reply TEXT,
    sent_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX outbox_emails_open ON outbox_emails (due_at) WHERE state IN ('pending', 'sending');
CREATE INDEX outbox_emails_message_id ON outbox_emails (email_message_id);

CREATE TABLE project_invitations (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects (id),
    person_id BIGINT NOT NULL REFERENCES people (id),
    status TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'accepted_automatically')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    accepted_at TIMESTAMPTZ,
    UNIQUE (project_id, person_id)
);

ALTER TABLE email_log ADD COLUMN outbox_id BIGINT REFERENCES outbox_emails (id) ON DELETE SET NULL;
ALTER TABLE email_log ADD COLUMN action TEXT;

-- Each scheduled job runs once per tick, whichever scheduler process gets there first.
CREATE TABLE scheduler_runs (
    job TEXT NOT NULL,
    tick TIMESTAMPTZ NOT NULL,
    runner TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    outcome TEXT,
    PRIMARY KEY (job, tick)
);
