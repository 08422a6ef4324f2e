DROP FUNCTION tidings_audiences(BIGINT[], BIGINT[]);
DROP FUNCTION tidings_messages_facts(BIGINT[]);
DROP INDEX user_preferences_all_customers;
DROP INDEX user_preferences_all_users;

CREATE FUNCTION tidings_message_facts(p_message BIGINT)
RETURNS TABLE (id BIGINT, conversation_id BIGINT, author_id BIGINT, author_kind TEXT,
               internal BOOLEAN, deleted BOOLEAN, customer_conversation BOOLEAN)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH msg AS (
    SELECT m.id, m.conversation_id, m.author_id, a.kind AS author_kind, m.internal,
    (m.deleted_at IS NOT NULL OR btrim(m.body) = '') AS deleted
    FROM messages m JOIN people a ON a.id = m.author_id WHERE m.id = p_message),
    conv AS (
    SELECT c.id, c.item_id, COALESCE(i.project_id, c.project_id) AS project_id, i.assignee_id
    FROM conversations c JOIN msg ON msg.conversation_id = c.id
    LEFT JOIN items i ON i.id = c.item_id),
    participants AS (
    SELECT cp.person_id FROM conversation_participants cp, conv WHERE cp.conversation_id = conv.id),
    followers AS (
    SELECT person_id FROM participants
    UNION SELECT f.person_id FROM item_follows f, conv WHERE f.item_id = conv.item_id
    UNION SELECT f.person_id FROM project_follows f, conv
    WHERE conv.item_id IS NULL AND f.project_id = conv.project_id
    UNION SELECT assignee_id FROM conv WHERE assignee_id IS NOT NULL)
    SELECT msg.id, msg.conversation_id, msg.author_id, msg.author_kind, msg.internal, msg.deleted,
    EXISTS (SELECT 1 FROM followers f JOIN people p ON p.id = f.person_id
    WHERE p.kind = 'customer') AS customer_conversation
    FROM msg;
END
$$;

CREATE FUNCTION tidings_audience(p_message BIGINT, p_only BIGINT[])
RETURNS TABLE (id BIGINT, kind TEXT, active BOOLEAN, has_email BOOLEAN,
               follows_conversation BOOLEAN, follows_project BOOLEAN, participant BOOLEAN,
               muted BOOLEAN, seen_up_to BIGINT, last_posted BIGINT, see_conversations TEXT,
               show_customer_conversations BOOLEAN, from_customers TEXT, from_users TEXT,
               followed_internal BOOLEAN, email_customer_messages BOOLEAN, email_replies BOOLEAN,
               email_internal BOOLEAN, suppressed BOOLEAN)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH msg AS (
    SELECT m.id, m.conversation_id, m.author_id, a.kind AS author_kind, m.internal,
    (m.deleted_at IS NOT NULL OR btrim(m.body) = '') AS deleted
    FROM messages m JOIN people a ON a.id = m.author_id WHERE m.id = p_message),
    conv AS (
    SELECT c.id, c.item_id, COALESCE(i.project_id, c.project_id) AS project_id, i.assignee_id
    FROM conversations c JOIN msg ON msg.conversation_id = c.id
    LEFT JOIN items i ON i.id = c.item_id),
    participants AS (
    SELECT cp.person_id FROM conversation_participants cp, conv WHERE cp.conversation_id = conv.id),
    followers AS (
    SELECT person_id FROM participants
    UNION SELECT f.person_id FROM item_follows f, conv WHERE f.item_id = conv.item_id
    UNION SELECT f.person_id FROM project_follows f, conv
    WHERE conv.item_id IS NULL AND f.project_id = conv.project_id
    UNION SELECT assignee_id FROM conv WHERE assignee_id IS NOT NULL)
    SELECT p.id, p.kind, p.active, p.email IS NOT NULL AS has_email,
    p.id IN (SELECT person_id FROM followers) AS follows_conversation,
    EXISTS (SELECT 1 FROM project_follows pf, conv
    WHERE pf.person_id = p.id AND pf.project_id = conv.project_id) AS follows_project,
    p.id IN (SELECT person_id FROM participants) AS participant,
    EXISTS (SELECT 1 FROM conversation_mutes cm, conv
    WHERE cm.person_id = p.id AND cm.conversation_id = conv.id) AS muted,
    (SELECT sc.last_seen_message_id FROM seen_cursors sc, conv
    WHERE sc.person_id = p.id AND sc.conversation_id = conv.id) AS seen_up_to,
    (SELECT max(m2.id) FROM messages m2, conv
    WHERE m2.conversation_id = conv.id AND m2.author_id = p.id) AS last_posted,
    up.see_conversations, up.show_customer_conversations, up.from_customers,
    up.from_users, up.followed_internal, up.email_customer_messages,
    up.email_replies, up.email_internal,
    EXISTS (SELECT 1 FROM email_suppressions s
    WHERE s.address = lower(p.email) AND s.suppressed) AS suppressed
    FROM people p LEFT JOIN user_preferences up ON up.person_id = p.id
    WHERE CASE WHEN p_only IS NULL
    THEN (p.kind = 'user' AND p.active) OR p.id IN (SELECT person_id FROM followers)
    ELSE p.id = ANY(p_only) END
    ORDER BY p.id;
END
$$;
