-- The facts the delivery rules decide on (see common/src/audience.rs), for a whole set of
-- messages in one call each, instead of one call per message.
--
-- Both functions force a generic plan: planning these queries costs far more than running
-- them (about 10 ms against 0.5 ms for one message), and the plans, made of index lookups
-- per row, do not depend on the parameters. A session plans each function once.
--
-- Who can be notified about a message is narrowed here, exactly as the rules narrow it: a
-- follower of the conversation (any kind), or a user whose "From customers" (P3) or "From
-- users & bots" (P4) setting is `all` for a message of that kind. Everyone else is refused by
-- every rule, so they are never read. The partial indexes below find the `all` users without
-- scanning every user.

CREATE INDEX user_preferences_all_customers ON user_preferences (person_id)
    WHERE from_customers = 'all';
CREATE INDEX user_preferences_all_users ON user_preferences (person_id)
    WHERE from_users = 'all';

-- One row per existing message of p_messages. Every fact is an index lookup per message: a
-- LATERAL subquery with LIMIT 1, or a scalar subquery on a primary key, which the planner can
-- neither hash nor turn into a scan of a whole table, so the plan stays the same whatever the
-- size of the set and of the tables.
CREATE FUNCTION tidings_messages_facts(p_messages BIGINT[])
RETURNS TABLE (id BIGINT, conversation_id BIGINT, author_id BIGINT, author_kind TEXT,
               internal BOOLEAN, deleted BOOLEAN, customer_conversation BOOLEAN)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT m.id, m.conversation_id, m.author_id, (SELECT kind FROM people WHERE id = m.author_id),
    m.internal, (m.deleted_at IS NOT NULL OR btrim(m.body) = ''),
    (cp.yes IS NOT NULL OR itf.yes IS NOT NULL OR prf.yes IS NOT NULL
     OR (SELECT kind FROM people WHERE id = i.assignee_id) IS NOT DISTINCT FROM 'customer')
    FROM messages m
    JOIN conversations c ON c.id = m.conversation_id
    LEFT JOIN items i ON i.id = c.item_id
    LEFT JOIN LATERAL (SELECT 1 AS yes FROM conversation_participants cp
                       WHERE cp.conversation_id = c.id
                         AND (SELECT kind FROM people WHERE id = cp.person_id) = 'customer'
                       LIMIT 1) cp ON true
    LEFT JOIN LATERAL (SELECT 1 AS yes FROM item_follows f
                       WHERE f.item_id = c.item_id
                         AND (SELECT kind FROM people WHERE id = f.person_id) = 'customer'
                       LIMIT 1) itf ON true
    LEFT JOIN LATERAL (SELECT 1 AS yes FROM project_follows f
                       WHERE c.item_id IS NULL AND f.project_id = c.project_id
                         AND (SELECT kind FROM people WHERE id = f.person_id) = 'customer'
                       LIMIT 1) prf ON true
    WHERE m.id = ANY(p_messages)
    ORDER BY m.id;
END
$$;

-- With p_people NULL: every person who may be notified about each message of p_messages.
-- Otherwise the pairs (p_messages[i], p_people[i]) only (the mailer's send-time re-check, and
-- explain). One row per (message, person), ordered by both. As above, every fact is an index
-- lookup per row.
CREATE FUNCTION tidings_audiences(p_messages BIGINT[], p_people BIGINT[])
RETURNS TABLE (message_id BIGINT, id BIGINT, kind TEXT, active BOOLEAN, has_email BOOLEAN,
               follows_conversation BOOLEAN, follows_project BOOLEAN, participant BOOLEAN,
               muted BOOLEAN, seen_up_to BIGINT, last_posted BIGINT, see_conversations TEXT,
               show_customer_conversations BOOLEAN, from_customers TEXT, from_users TEXT,
               followed_internal BOOLEAN, email_customer_messages BOOLEAN, email_replies BOOLEAN,
               email_internal BOOLEAN, suppressed BOOLEAN)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH msg AS MATERIALIZED (
        SELECT m.id, m.conversation_id, m.internal,
               (SELECT kind FROM people WHERE id = m.author_id) AS author_kind, c.item_id,
               COALESCE(i.project_id, c.project_id) AS project_id, i.assignee_id
        FROM messages m
        JOIN conversations c ON c.id = m.conversation_id
        LEFT JOIN items i ON i.id = c.item_id
        WHERE m.id = ANY(p_messages)),
    candidates AS MATERIALIZED (
        SELECT q.message_id, q.person_id
        FROM unnest(p_messages, p_people) AS q(message_id, person_id)
        WHERE p_people IS NOT NULL
        UNION
        SELECT msg.id, who.person_id FROM msg CROSS JOIN LATERAL (
            SELECT cp.person_id FROM conversation_participants cp
            WHERE cp.conversation_id = msg.conversation_id
            UNION ALL
            SELECT f.person_id FROM item_follows f WHERE f.item_id = msg.item_id
            UNION ALL
            SELECT f.person_id FROM project_follows f
            WHERE msg.item_id IS NULL AND f.project_id = msg.project_id
            UNION ALL
            SELECT msg.assignee_id WHERE msg.assignee_id IS NOT NULL
            UNION ALL
            SELECT up.person_id FROM user_preferences up
            WHERE up.from_customers = 'all' AND NOT msg.internal AND msg.author_kind = 'customer'
            UNION ALL
            SELECT up.person_id FROM user_preferences up
            WHERE up.from_users = 'all' AND NOT msg.internal AND msg.author_kind <> 'customer'
        ) who
        WHERE p_people IS NULL)
    SELECT msg.id, p.id, p.kind, p.active, p.email IS NOT NULL,
    (part.yes IS NOT NULL OR itf.yes IS NOT NULL
     OR (msg.item_id IS NULL AND prf.yes IS NOT NULL)
     OR msg.assignee_id IS NOT DISTINCT FROM p.id),
    prf.yes IS NOT NULL, part.yes IS NOT NULL, mute.yes IS NOT NULL,
    (SELECT sc.last_seen_message_id FROM seen_cursors sc
     WHERE sc.person_id = p.id AND sc.conversation_id = msg.conversation_id),
    (SELECT max(m2.id) FROM messages m2
     WHERE m2.author_id = p.id AND m2.conversation_id = msg.conversation_id),
    up.see_conversations, up.show_customer_conversations, up.from_customers,
    up.from_users, up.followed_internal, up.email_customer_messages,
    up.email_replies, up.email_internal, supp.yes IS NOT NULL
    FROM candidates c
    JOIN msg ON msg.id = c.message_id
    JOIN people p ON p.id = c.person_id
    LEFT JOIN user_preferences up ON up.person_id = p.id
    LEFT JOIN LATERAL (SELECT 1 AS yes FROM conversation_participants cp
                       WHERE cp.conversation_id = msg.conversation_id AND cp.person_id = p.id
                       LIMIT 1) part ON true
    LEFT JOIN LATERAL (SELECT 1 AS yes FROM item_follows f
                       WHERE f.item_id = msg.item_id AND f.person_id = p.id LIMIT 1) itf ON true
    LEFT JOIN LATERAL (SELECT 1 AS yes FROM project_follows pf
                       WHERE pf.project_id = msg.project_id AND pf.person_id = p.id
                       LIMIT 1) prf ON true
    LEFT JOIN LATERAL (SELECT 1 AS yes FROM conversation_mutes cm
                       WHERE cm.person_id = p.id AND cm.conversation_id = msg.conversation_id
                       LIMIT 1) mute ON true
    LEFT JOIN LATERAL (SELECT 1 AS yes FROM email_suppressions s
                       WHERE s.address = lower(p.email) AND s.suppressed LIMIT 1) supp ON true
    ORDER BY msg.id, p.id;
END
$$;

DROP FUNCTION tidings_audience(BIGINT, BIGINT[]);
DROP FUNCTION tidings_message_facts(BIGINT);
