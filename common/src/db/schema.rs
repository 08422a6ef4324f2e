//! Diesel table definitions, matching `migrations/`.

diesel::table! {
    people (id) {
        id -> Int8,
        kind -> Text,
        name -> Text,
        email -> Nullable<Text>,
        created_at -> Timestamptz,
        active -> Bool,
        locale -> Nullable<Text>,
        admin -> Bool,
    }
}

diesel::table! {
    projects (id) {
        id -> Int8,
        name -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    items (id) {
        id -> Int8,
        project_id -> Int8,
        kind -> Text,
        title -> Text,
        assignee_id -> Nullable<Int8>,
        created_at -> Timestamptz,
        status -> Text,
        requester_id -> Nullable<Int8>,
    }
}

diesel::table! {
    project_follows (project_id, person_id) {
        project_id -> Int8,
        person_id -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    item_follows (item_id, person_id) {
        item_id -> Int8,
        person_id -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    conversations (id) {
        id -> Int8,
        project_id -> Nullable<Int8>,
        item_id -> Nullable<Int8>,
        subject -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    conversation_participants (conversation_id, person_id) {
        conversation_id -> Int8,
        person_id -> Int8,
        added_at -> Timestamptz,
    }
}

diesel::table! {
    messages (id) {
        id -> Int8,
        conversation_id -> Int8,
        author_id -> Int8,
        body -> Text,
        internal -> Bool,
        created_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
        dispatched_at -> Nullable<Timestamptz>,
        edited_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    seen_cursors (person_id, conversation_id) {
        person_id -> Int8,
        conversation_id -> Int8,
        last_seen_message_id -> Int8,
        seen_at -> Timestamptz,
    }
}

diesel::table! {
    notifications (id) {
        id -> Int8,
        message_id -> Int8,
        recipient_id -> Int8,
        conversation_id -> Int8,
        state -> Text,
        reason -> Nullable<Text>,
        created_at -> Timestamptz,
        due_at -> Timestamptz,
        claimed_at -> Nullable<Timestamptz>,
        attempts -> Int4,
        email_message_id -> Text,
        sent_at -> Nullable<Timestamptz>,
        smtp_reply -> Nullable<Text>,
        updated_at -> Timestamptz,
        rule -> Nullable<Text>,
        coalesced_into -> Nullable<Int8>,
        is_open -> Bool,
    }
}

diesel::table! {
    email_log (id) {
        id -> Int8,
        created_at -> Timestamptz,
        direction -> Text,
        status -> Text,
        reason -> Nullable<Text>,
        notification_id -> Nullable<Int8>,
        message_id -> Nullable<Int8>,
        conversation_id -> Nullable<Int8>,
        mail_from -> Nullable<Text>,
        rcpt_to -> Nullable<Text>,
        subject -> Nullable<Text>,
        message_id_header -> Nullable<Text>,
        smtp_reply -> Nullable<Text>,
        rule -> Nullable<Text>,
        outbox_id -> Nullable<Int8>,
        action -> Nullable<Text>,
        inbound_email_id -> Nullable<Int8>,
    }
}

diesel::table! {
    user_preferences (person_id) {
        person_id -> Int8,
        see_conversations -> Text,
        show_customer_conversations -> Bool,
        from_customers -> Text,
        from_users -> Text,
        followed_internal -> Bool,
        email_customer_messages -> Bool,
        email_replies -> Bool,
        email_internal -> Bool,
        updated_at -> Timestamptz,
        email_assignments -> Bool,
        email_project_members -> Bool,
        accept_all_invitations -> Bool,
    }
}

diesel::table! {
    attention (person_id) {
        person_id -> Int8,
        dnd_until -> Nullable<Timestamptz>,
        wait_for_quiet -> Nullable<Bool>,
        updated_at -> Timestamptz,
        work_days -> Nullable<Int2>,
        work_start -> Nullable<Time>,
        work_end -> Nullable<Time>,
        time_zone -> Nullable<Text>,
    }
}

diesel::table! {
    attention_defaults (only_row) {
        only_row -> Bool,
        work_days -> Int2,
        work_start -> Time,
        work_end -> Time,
        time_zone -> Text,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    conversation_mutes (person_id, conversation_id) {
        person_id -> Int8,
        conversation_id -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    preference_changes (id) {
        id -> Int8,
        person_id -> Int8,
        conversation_id -> Nullable<Int8>,
        field -> Text,
        old_value -> Nullable<Text>,
        new_value -> Text,
        source -> Text,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(items -> projects (project_id));
diesel::joinable!(item_follows -> items (item_id));
diesel::joinable!(item_follows -> people (person_id));
diesel::joinable!(project_follows -> projects (project_id));
diesel::joinable!(project_follows -> people (person_id));
diesel::joinable!(conversation_participants -> conversations (conversation_id));
diesel::joinable!(conversation_participants -> people (person_id));
diesel::joinable!(messages -> conversations (conversation_id));
diesel::joinable!(messages -> people (author_id));
diesel::joinable!(notifications -> messages (message_id));
diesel::joinable!(notifications -> people (recipient_id));

diesel::allow_tables_to_appear_in_same_query!(
    people,
    projects,
    items,
    project_follows,
    item_follows,
    conversations,
    conversation_participants,
    messages,
    seen_cursors,
    notifications,
    email_log,
    user_preferences,
    conversation_mutes,
    preference_changes,
    attention,
);

diesel::table! {
    inbound_emails (id) {
        id -> Int8,
        dedupe_key -> Text,
        message_id_header -> Nullable<Text>,
        received_at -> Timestamptz,
        mail_from -> Nullable<Text>,
        rcpt_to -> Nullable<Text>,
        sender -> Nullable<Text>,
        verdict -> Text,
        reason -> Nullable<Text>,
        conversation_id -> Nullable<Int8>,
        posted_message_id -> Nullable<Int8>,
        quoted_text -> Nullable<Text>,
    }
}

diesel::table! {
    email_suppressions (address) {
        address -> Text,
        suppressed -> Bool,
        hard_bounces -> Int4,
        soft_bounces -> Int4,
        last_status -> Nullable<Text>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    domain_events (id) {
        id -> Int8,
        kind -> Text,
        payload -> Jsonb,
        created_at -> Timestamptz,
        handled_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    system_notifications (event) {
        event -> Text,
        template -> Text,
        description -> Text,
        enabled -> Bool,
        can_disable -> Bool,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    automations (id) {
        id -> Int8,
        name -> Text,
        trigger -> Text,
        condition -> Nullable<Jsonb>,
        action -> Text,
        template -> Nullable<Text>,
        body -> Nullable<Text>,
        audience -> Nullable<Text>,
        bot_id -> Nullable<Int8>,
        enabled -> Bool,
        critical -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    automation_runs (id) {
        id -> Int8,
        automation_id -> Int8,
        event_id -> Int8,
        item_id -> Int8,
        recipient_id -> Int8,
        capped -> Bool,
        message_id -> Nullable<Int8>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    outbox_emails (id) {
        id -> Int8,
        template -> Text,
        source -> Text,
        system_event -> Nullable<Text>,
        automation_id -> Nullable<Int8>,
        recipient_id -> Int8,
        conversation_id -> Nullable<Int8>,
        data -> Jsonb,
        state -> Text,
        reason -> Nullable<Text>,
        attempts -> Int4,
        due_at -> Timestamptz,
        claimed_at -> Nullable<Timestamptz>,
        email_message_id -> Text,
        smtp_reply -> Nullable<Text>,
        sent_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    project_invitations (id) {
        id -> Int8,
        project_id -> Int8,
        person_id -> Int8,
        status -> Text,
        created_at -> Timestamptz,
        accepted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    scheduler_runs (job, tick) {
        job -> Text,
        tick -> Timestamptz,
        runner -> Text,
        started_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        outcome -> Nullable<Text>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    automations,
    automation_runs,
    outbox_emails,
    system_notifications,
);

diesel::table! {
    teams (id) {
        id -> Int8,
        name -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    team_members (team_id, person_id) {
        team_id -> Int8,
        person_id -> Int8,
    }
}

diesel::table! {
    project_teams (project_id, team_id) {
        project_id -> Int8,
        team_id -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    admin_changes (id) {
        id -> Int8,
        at -> Timestamptz,
        actor_id -> Int8,
        method -> Text,
        path -> Text,
        status -> Int2,
        body -> Nullable<Jsonb>,
    }
}

diesel::table! {
    template_versions (id) {
        id -> Int8,
        name -> Text,
        locale -> Text,
        subject -> Nullable<Text>,
        text -> Nullable<Text>,
        html -> Nullable<Text>,
        created_at -> Timestamptz,
        author_id -> Nullable<Int8>,
    }
}

diesel::table! {
    inbound_raw (inbound_email_id) {
        inbound_email_id -> Int8,
        created_at -> Timestamptz,
        mail_from -> Text,
        rcpt_to -> Text,
        subject -> Nullable<Text>,
        raw -> Bytea,
        set_aside -> Nullable<Text>,
        recovered_at -> Nullable<Timestamptz>,
        recovered_by -> Nullable<Int8>,
        recovered_message_id -> Nullable<Int8>,
    }
}

diesel::table! {
    outbound_sources (message_id_header) {
        message_id_header -> Text,
        created_at -> Timestamptz,
        raw -> Bytea,
        cut -> Bool,
    }
}
