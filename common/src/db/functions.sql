-- The current text of every SQL function Tidings calls. `tidings migrate` applies this file
-- after the migrations whenever it differs from what the database holds (each function's
-- comment records the digest of the file that created it), so a function is changed here,
-- never in a new migration; migrations keep the tables. `CREATE OR REPLACE` cannot change a
-- function's arguments or result columns: for that, add `DROP FUNCTION IF EXISTS` before it.
-- tests/functions.rs checks that every function in a migrated database matches this file.

-- One row per existing message of p_messages. Every fact is an index lookup per message: a
-- LATERAL subquery with LIMIT 1, or a scalar subquery on a primary key, which the planner can
-- neither hash nor turn into a scan of a whole table, so the plan stays the same whatever the
-- size of the set and of the tables.
CREATE OR REPLACE FUNCTION tidings_messages_facts(p_messages BIGINT[])
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

-- A2: the start of the next working period when p_at falls outside working hours (p_days:
-- bits, Monday 1 … Sunday 64; each working day's hours run from p_start to p_end local time in
-- p_zone, into the next day when p_end is at or before p_start); NULL inside them or without
-- working days. Local times are turned into instants by PostgreSQL's time zone data, so a
-- period may last 23 or 25 hours across a daylight-saving change, and a start in the hour a
-- spring-forward change skips begins as long after the change as it was meant after the gap's
-- start (02:30 becomes 03:30).
CREATE OR REPLACE FUNCTION tidings_next_work_start(p_days SMALLINT, p_start TIME, p_end TIME,
                                                   p_zone TEXT, p_at TIMESTAMPTZ)
RETURNS TIMESTAMPTZ LANGUAGE plpgsql STABLE AS $$
DECLARE
    today DATE;
    d DATE;
    starts TIMESTAMPTZ;
    ends TIMESTAMPTZ;
BEGIN
    IF p_days IS NULL OR p_days = 0 OR p_start IS NULL OR p_end IS NULL OR p_zone IS NULL THEN
        RETURN NULL;
    END IF;
    today := (p_at AT TIME ZONE p_zone)::date;
    -- Periods in the order they start: yesterday's may still run past midnight.
    FOR i IN -1..7 LOOP
        d := today + i;
        IF p_days & (1 << (extract(isodow FROM d)::int - 1))::smallint <> 0 THEN
            starts := (d + p_start) AT TIME ZONE p_zone;
            ends := ((CASE WHEN p_end > p_start THEN d ELSE d + 1 END) + p_end) AT TIME ZONE p_zone;
            IF p_at < ends THEN
                RETURN CASE WHEN p_at >= starts THEN NULL ELSE starts END;
            END IF;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- A2 for person p_person at p_at: when their next working period starts, if p_at is outside
-- their working hours, and that start in words in their zone ('Mon 2027-03-29 09:00
-- Europe/Berlin'). Their own hours (work_days > 0; 0 is their choice of none), else the
-- organisation's default for users; customers have none by default. No row when they may be
-- emailed now. tidings_audiences and the live events' quiet mark (common/src/live.rs) judge
-- the same way for many people at once, with the default judged once.
CREATE OR REPLACE FUNCTION tidings_work_hold(p_person BIGINT, p_at TIMESTAMPTZ)
RETURNS TABLE (until TIMESTAMPTZ, until_local TEXT) LANGUAGE sql STABLE AS $$
    SELECT n.at, to_char(n.at AT TIME ZONE h.time_zone, 'Dy YYYY-MM-DD HH24:MI') || ' ' || h.time_zone
    FROM (SELECT a.work_days, a.work_start, a.work_end, a.time_zone
          FROM attention a WHERE a.person_id = p_person AND a.work_days IS NOT NULL
          UNION ALL
          SELECT d.work_days, d.work_start, d.work_end, d.time_zone
          FROM attention_defaults d
          WHERE (SELECT kind FROM people WHERE id = p_person) = 'user'
            AND (SELECT a.work_days FROM attention a WHERE a.person_id = p_person) IS NULL
          LIMIT 1) h
    CROSS JOIN LATERAL (SELECT tidings_next_work_start(h.work_days, h.work_start, h.work_end,
                                                       h.time_zone, p_at) AS at) n
    WHERE n.at IS NOT NULL
$$;

-- With p_people NULL: every person who may be notified about each message of p_messages,
-- with the facts in-app notification decides on (D1, P1-P5, F1); the facts only the email
-- decision reads (muted, seen_up_to, last_posted, suppressed, held_until, wait_for_quiet,
-- work_held_until, work_held_local, held_local) are left false or NULL, and
-- whether a candidate is a participant or an item follower comes from how it was found.
-- Otherwise the pairs (p_messages[i], p_people[i]) with every fact (the mailer's send-time
-- re-check, and explain). One row per (message, person), ordered by both. As above, every
-- fact is an index lookup per row; `(SELECT true … LIMIT 1) IS NOT NULL` rather than EXISTS,
-- which the planner may turn into a hashed scan of the whole table, and inside CASE so that
-- it runs only when the fact is needed.
-- Pauses and working hours are judged at p_at, the application's clock.
DROP FUNCTION IF EXISTS tidings_audiences(BIGINT[], BIGINT[]);
DROP FUNCTION IF EXISTS tidings_audiences(BIGINT[], BIGINT[], TIMESTAMPTZ);
CREATE OR REPLACE FUNCTION tidings_audiences(p_messages BIGINT[], p_people BIGINT[],
                                             p_at TIMESTAMPTZ)
RETURNS TABLE (message_id BIGINT, id BIGINT, kind TEXT, active BOOLEAN, has_email BOOLEAN,
               follows_conversation BOOLEAN, follows_project BOOLEAN, participant BOOLEAN,
               muted BOOLEAN, seen_up_to BIGINT, last_posted BIGINT, see_conversations TEXT,
               show_customer_conversations BOOLEAN, from_customers TEXT, from_users TEXT,
               followed_internal BOOLEAN, email_customer_messages BOOLEAN, email_replies BOOLEAN,
               email_internal BOOLEAN, suppressed BOOLEAN, held_until TIMESTAMPTZ,
               wait_for_quiet BOOLEAN, work_held_until TIMESTAMPTZ, work_held_local TEXT,
               held_local TEXT)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH dflt AS MATERIALIZED (
        -- A2: the organisation's default hours, judged once for the whole set.
        SELECT tidings_next_work_start(d.work_days, d.work_start, d.work_end, d.time_zone,
                                       p_at) AS off, d.time_zone AS zone
        FROM attention_defaults d),
    msg AS MATERIALIZED (
        SELECT m.id, m.conversation_id, m.internal,
               (SELECT kind FROM people WHERE id = m.author_id) AS author_kind, c.item_id,
               COALESCE(i.project_id, c.project_id) AS project_id, i.assignee_id
        FROM messages m
        JOIN conversations c ON c.id = m.conversation_id
        LEFT JOIN items i ON i.id = c.item_id
        WHERE m.id = ANY(p_messages)),
    candidates AS MATERIALIZED (
        SELECT q.message_id, q.person_id, NULL::boolean AS participant,
               NULL::boolean AS item_follower
        FROM unnest(p_messages, p_people) AS q(message_id, person_id)
        WHERE p_people IS NOT NULL
        UNION ALL
        SELECT msg.id, who.person_id, bool_or(who.participant), bool_or(who.item_follower)
        FROM msg CROSS JOIN LATERAL (
            SELECT cp.person_id, true AS participant, false AS item_follower
            FROM conversation_participants cp WHERE cp.conversation_id = msg.conversation_id
            UNION ALL
            SELECT f.person_id, false, true FROM item_follows f WHERE f.item_id = msg.item_id
            UNION ALL
            SELECT f.person_id, false, false FROM project_follows f
            WHERE msg.item_id IS NULL AND f.project_id = msg.project_id
            UNION ALL
            SELECT msg.assignee_id, false, false WHERE msg.assignee_id IS NOT NULL
            UNION ALL
            SELECT up.person_id, false, false FROM user_preferences up
            WHERE up.from_customers = 'all' AND NOT msg.internal AND msg.author_kind = 'customer'
            UNION ALL
            SELECT up.person_id, false, false FROM user_preferences up
            WHERE up.from_users = 'all' AND NOT msg.internal AND msg.author_kind <> 'customer'
        ) who
        WHERE p_people IS NULL
        GROUP BY msg.id, who.person_id),
    facts AS (
        SELECT c.message_id, c.person_id,
            CASE WHEN c.participant IS NOT NULL THEN c.participant
                 ELSE (SELECT true FROM conversation_participants cp
                       WHERE cp.conversation_id = msg.conversation_id AND cp.person_id = p.id
                       LIMIT 1) IS NOT NULL END AS participant,
            CASE WHEN c.item_follower IS NOT NULL THEN c.item_follower
                 ELSE (SELECT true FROM item_follows f
                       WHERE f.item_id = msg.item_id AND f.person_id = p.id
                       LIMIT 1) IS NOT NULL END AS item_follower,
            (SELECT true FROM project_follows pf
             WHERE pf.project_id = msg.project_id AND pf.person_id = p.id
             LIMIT 1) IS NOT NULL AS project_follower,
            CASE WHEN p_people IS NULL THEN false
                 ELSE (SELECT true FROM conversation_mutes cm
                       WHERE cm.person_id = p.id AND cm.conversation_id = msg.conversation_id
                       LIMIT 1) IS NOT NULL END AS muted,
            CASE WHEN p_people IS NULL THEN NULL
                 ELSE (SELECT sc.last_seen_message_id FROM seen_cursors sc
                       WHERE sc.person_id = p.id AND sc.conversation_id = msg.conversation_id)
                 END AS seen_up_to,
            CASE WHEN p_people IS NULL THEN NULL
                 ELSE (SELECT max(m2.id) FROM messages m2
                       WHERE m2.author_id = p.id AND m2.conversation_id = msg.conversation_id)
                 END AS last_posted,
            CASE WHEN p_people IS NULL THEN false
                 ELSE (SELECT true FROM email_suppressions s
                       WHERE s.address = lower(p.email) AND s.suppressed LIMIT 1) IS NOT NULL
                 END AS suppressed,
            CASE WHEN p_people IS NULL THEN NULL
                 ELSE (SELECT a.dnd_until FROM attention a
                       WHERE a.person_id = p.id AND a.dnd_until > p_at)
                 END AS held_until,
            CASE WHEN p_people IS NULL THEN NULL
                 ELSE (SELECT a.wait_for_quiet FROM attention a WHERE a.person_id = p.id)
                 END AS wait_for_quiet
        FROM candidates c
        JOIN msg ON msg.id = c.message_id
        JOIN people p ON p.id = c.person_id)
    SELECT msg.id, p.id, p.kind, p.active, p.email IS NOT NULL,
    (f.participant OR f.item_follower OR (msg.item_id IS NULL AND f.project_follower)
     OR msg.assignee_id IS NOT DISTINCT FROM p.id),
    f.project_follower, f.participant, f.muted, f.seen_up_to, f.last_posted,
    up.see_conversations, up.show_customer_conversations, up.from_customers,
    up.from_users, up.followed_internal, up.email_customer_messages,
    up.email_replies, up.email_internal, f.suppressed, f.held_until, f.wait_for_quiet,
    w.until, w.until_local,
    -- A pause's end in words in the zone of the person's working hours, when they have one.
    CASE WHEN f.held_until IS NOT NULL THEN
        (SELECT to_char(f.held_until AT TIME ZONE z.zone, 'Dy YYYY-MM-DD HH24:MI') || ' ' || z.zone
         FROM (SELECT COALESCE(
                   (SELECT CASE WHEN a.work_days > 0 THEN a.time_zone END
                    FROM attention a WHERE a.person_id = p.id),
                   CASE WHEN p.kind = 'user'
                         AND (SELECT a.work_days FROM attention a WHERE a.person_id = p.id) IS NULL
                        THEN (SELECT dflt.zone FROM dflt) END) AS zone) z
         WHERE z.zone IS NOT NULL)
    END
    FROM facts f
    JOIN msg ON msg.id = f.message_id
    JOIN people p ON p.id = f.person_id
    LEFT JOIN user_preferences up ON up.person_id = p.id
    LEFT JOIN LATERAL (
        SELECT x.at AS until,
               to_char(x.at AT TIME ZONE x.zone, 'Dy YYYY-MM-DD HH24:MI') || ' ' || x.zone
                   AS until_local
        FROM (SELECT tidings_next_work_start(a.work_days, a.work_start, a.work_end,
                                             a.time_zone, p_at) AS at, a.time_zone AS zone
              FROM attention a WHERE a.person_id = p.id AND a.work_days > 0
              UNION ALL
              SELECT dflt.off, dflt.zone FROM dflt
              WHERE dflt.off IS NOT NULL AND p.kind = 'user'
                AND (SELECT a.work_days FROM attention a WHERE a.person_id = p.id) IS NULL) x
        WHERE x.at IS NOT NULL AND p_people IS NOT NULL) w ON true
    ORDER BY msg.id, p.id;
END
$$;

-- Whether person p_person may see conversation p_conversation, now: an active customer where
-- they take part or follow its item (F1); an active user in all projects (P1), or in a
-- project they follow, or where they take part. Every read path of a person (the inbox, a
-- conversation, a message, delivery status, the live stream) asks this one question, so
-- losing access hides a conversation everywhere at once (T6).
CREATE OR REPLACE FUNCTION tidings_may_see(p_person BIGINT, p_conversation BIGINT)
RETURNS BOOLEAN LANGUAGE sql STABLE AS $$
    SELECT COALESCE((
        SELECT CASE p.kind
          WHEN 'customer' THEN
               (SELECT true FROM conversation_participants cp
                 WHERE cp.conversation_id = c.id AND cp.person_id = p.id) IS NOT NULL
            OR (SELECT true FROM item_follows f
                 WHERE f.item_id = c.item_id AND f.person_id = p.id) IS NOT NULL
          WHEN 'user' THEN
               COALESCE((SELECT see_conversations FROM user_preferences
                          WHERE person_id = p.id), 'all_projects') = 'all_projects'
            OR (SELECT true FROM conversation_participants cp
                 WHERE cp.conversation_id = c.id AND cp.person_id = p.id) IS NOT NULL
            OR (SELECT true FROM project_follows pf
                 WHERE pf.person_id = p.id
                   AND pf.project_id = COALESCE(i.project_id, c.project_id)) IS NOT NULL
          ELSE false END
        FROM conversations c LEFT JOIN items i ON i.id = c.item_id, people p
        WHERE c.id = p_conversation AND p.id = p_person AND p.active), false)
$$;
