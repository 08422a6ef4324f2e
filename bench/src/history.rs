//! `BENCH_HISTORY`: a year of a busy help desk written into the benchmark's database, so the
//! rows can be measured again on top of it and compared with the same rows on the fresh
//! database of the same run.

use super::*;

/// What was written, and how long it took.
pub(crate) struct History {
    pub(crate) people: i64,
    pub(crate) conversations: i64,
    pub(crate) messages: i64,
    pub(crate) notifications: i64,
    pub(crate) email_log: i64,
    pub(crate) live_events: i64,
    pub(crate) seconds: f64,
    /// The database's size after it, in bytes.
    pub(crate) bytes: i64,
}

/// Writes, with set-based statements: `BENCH_HISTORY_PEOPLE` people (100,000; one in a
/// hundred an agent), conversations of ten messages each with one customer and five agents,
/// `BENCH_HISTORY_MESSAGES` messages (2,000,000) spread over the past year, five
/// notifications per message (10,000,000: 30 % emailed, the rest skipped as seen), each
/// conversation's participants and read cursors, 72 hours of outbound email log with a 3 kB
/// source per email (`BENCH_HISTORY_EMAILS`, 216,000), and 7 days of live events
/// (`BENCH_HISTORY_LIVE`, 2,000,000). None of it is notified about the benchmark's own
/// messages.
pub(crate) fn seed_history(database_url: &str, project: i64) -> anyhow::Result<History> {
    let people = knob("BENCH_HISTORY_PEOPLE", 100_000).max(200) as i64;
    let messages = (knob("BENCH_HISTORY_MESSAGES", 2_000_000).max(10) as i64 / 10) * 10;
    let emails = knob("BENCH_HISTORY_EMAILS", 216_000) as i64;
    let live = knob("BENCH_HISTORY_LIVE", 2_000_000) as i64;
    let agents = (people / 100).max(5);
    let conversations = messages / 10;
    let started = Instant::now();
    let mut db = PgConnection::establish(database_url)?;
    diesel::sql_query("SET maintenance_work_mem = '256MB'").execute(&mut db)?;
    // Each statement with the row ids it starts from: ids are consecutive within one
    // statement, so the rows that follow can name them by offset.
    let steps: [(&str, String); 10] = [
        (
            "people",
            format!(
                "INSERT INTO people (kind, name, email, created_at)
                 SELECT CASE WHEN g <= {agents} THEN 'user' ELSE 'customer' END,
                        'History ' || g, 'history' || g || '@history.example',
                        now() - interval '400 days'
                 FROM generate_series(1, {people}) g"
            ),
        ),
        (
            "their preferences",
            "INSERT INTO user_preferences (person_id)
             SELECT id FROM people WHERE kind = 'user' AND email LIKE '%@history.example'
             ON CONFLICT DO NOTHING"
                .into(),
        ),
        (
            "conversations",
            format!(
                "WITH i AS (INSERT INTO items (project_id, kind, title, created_at)
                            SELECT {project}, 'ticket', 'history',
                                   now() - interval '365 days' * (1 - g::float8 / {conversations})
                            FROM generate_series(1, {conversations}) g RETURNING id, created_at)
                 INSERT INTO conversations (item_id, subject, created_at)
                 SELECT id, 'History', created_at FROM i ORDER BY id"
            ),
        ),
        (
            "messages",
            format!(
                "WITH b AS (SELECT (SELECT min(id) FROM people WHERE email LIKE '%@history.example') AS p0,
                                   (SELECT min(id) FROM conversations WHERE subject = 'History') AS c0)
                 INSERT INTO messages (conversation_id, author_id, body, internal, created_at, dispatched_at)
                 SELECT b.c0 + g / 10,
                        CASE WHEN g % 2 = 0 THEN b.p0 + {agents} + (g / 10) % ({people} - {agents})
                             ELSE b.p0 + ((g / 10) * 7 + (g % 10) / 2) % {agents} END,
                        'History message ' || g || ': the printer on the third floor again.',
                        g % 10 = 9,
                        now() - interval '365 days' * (1 - g::float8 / {messages}),
                        now() - interval '365 days' * (1 - g::float8 / {messages})
                 FROM b, generate_series(0, {messages} - 1) g"
            ),
        ),
        (
            "participants",
            "INSERT INTO conversation_participants (conversation_id, person_id)
             SELECT DISTINCT m.conversation_id, m.author_id FROM messages m
             JOIN conversations c ON c.id = m.conversation_id AND c.subject = 'History'
             ON CONFLICT DO NOTHING"
                .into(),
        ),
        (
            "read cursors",
            "INSERT INTO seen_cursors (person_id, conversation_id, last_seen_message_id, seen_at)
             SELECT m.author_id, m.conversation_id, max(m.id), max(m.created_at) FROM messages m
             JOIN conversations c ON c.id = m.conversation_id AND c.subject = 'History'
             GROUP BY m.author_id, m.conversation_id ON CONFLICT DO NOTHING"
                .into(),
        ),
        (
            "notifications",
            format!(
                "WITH b AS (SELECT (SELECT min(id) FROM people WHERE email LIKE '%@history.example') AS p0,
                                   (SELECT min(id) FROM conversations WHERE subject = 'History') AS c0,
                                   (SELECT min(id) FROM messages WHERE body LIKE 'History message 0:%') AS m0)
                 INSERT INTO notifications (message_id, recipient_id, conversation_id, state, reason,
                                            created_at, due_at, claimed_at, attempts, email_message_id,
                                            sent_at, smtp_reply, updated_at, rule)
                 SELECT b.m0 + g, r, b.c0 + g / 10,
                        CASE WHEN (g + t) % 10 < 3 THEN 'sent' ELSE 'skipped' END,
                        CASE WHEN (g + t) % 10 < 3 THEN NULL ELSE 'seen before the window ended' END,
                        at, at + interval '60 seconds', at + interval '60 seconds', 1,
                        '<n' || g || '.' || t || '@history.example>',
                        CASE WHEN (g + t) % 10 < 3 THEN at + interval '61 seconds' END,
                        CASE WHEN (g + t) % 10 < 3 THEN '250 2.0.0 Ok: queued' END,
                        at + interval '61 seconds', 'F1'
                 FROM b, generate_series(0, {messages} - 1) g,
                      LATERAL (SELECT now() - interval '365 days' * (1 - g::float8 / {messages}) AS at) a,
                      LATERAL (SELECT t, CASE WHEN t = 0 THEN b.p0 + {agents} + (g / 10) % ({people} - {agents})
                                              ELSE b.p0 + ((g / 10) * 7 + t + 5) % {agents} END AS r
                               FROM generate_series(0, 4) t) rt"
            ),
        ),
        (
            "email log",
            format!(
                "INSERT INTO email_log (created_at, direction, status, conversation_id, mail_from,
                                        rcpt_to, subject, message_id_header, smtp_reply, rule)
                 SELECT now() - interval '72 hours' * (1 - g::float8 / {emails}), 'outbound', 'sent',
                        (SELECT min(id) FROM conversations WHERE subject = 'History') + g % {conversations},
                        'notifications@bench.example', 'history' || (g % {people}) || '@history.example',
                        'Re: History', '<log' || g || '@history.example>', '250 2.0.0 Ok: queued', 'F1'
                 FROM generate_series(1, {emails}) g"
            ),
        ),
        (
            "email sources",
            format!(
                "INSERT INTO outbound_sources (message_id_header, created_at, raw)
                 SELECT '<log' || g || '@history.example>',
                        now() - interval '72 hours' * (1 - g::float8 / {emails}),
                        convert_to(repeat('Subject: Re: History ' || g || E'\\r\\n', 128), 'UTF8')
                 FROM generate_series(1, {emails}) g"
            ),
        ),
        (
            "live events",
            format!(
                "WITH b AS (SELECT (SELECT min(id) FROM people WHERE email LIKE '%@history.example') AS p0,
                                   (SELECT min(id) FROM conversations WHERE subject = 'History') AS c0,
                                   (SELECT max(id) FROM messages WHERE body LIKE 'History message %') AS m1)
                 INSERT INTO live_events (person_id, kind, conversation_id, message_id, created_at)
                 SELECT b.p0 + g % {people}, 'notification', b.c0 + {conversations} - 1 - (g / 5) % 1000,
                        b.m1 - (g / 5) % 10000, now() - interval '7 days' * (1 - g::float8 / {live})
                 FROM b, generate_series(1, {live}) g"
            ),
        ),
    ];
    for (what, statement) in &steps {
        let step = Instant::now();
        diesel::sql_query(statement.as_str())
            .execute(&mut db)
            .with_context(|| format!("writing the history's {what}"))?;
        eprintln!(
            "bench: history: {what} written in {:.0} s",
            step.elapsed().as_secs_f64()
        );
    }
    diesel::sql_query("VACUUM ANALYZE").execute(&mut db)?;
    // A year of history is not the last minutes of writes: its pages are written out before
    // the rows are measured, as they long would be in production.
    diesel::sql_query("CHECKPOINT").execute(&mut db)?;
    let _ = Command::new("sync").status();
    #[derive(QueryableByName)]
    struct Size {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let bytes = diesel::sql_query("SELECT pg_database_size(current_database()) AS n")
        .get_result::<Size>(&mut db)?
        .n;
    Ok(History {
        people,
        conversations,
        messages,
        notifications: messages * 5,
        email_log: emails,
        live_events: live,
        seconds: started.elapsed().as_secs_f64(),
        bytes,
    })
}

pub(crate) fn print_history(history: &History) {
    row(
        format!(
            "history: {} people, {} conversations, {} messages",
            history.people, history.conversations, history.messages
        ),
        format!("{:.0} s", history.seconds),
        String::new(),
    );
    row(
        format!(
            "  {} notifications, {} log rows (72 h), {} live events (7 d)",
            history.notifications, history.email_log, history.live_events
        ),
        format!("{:.1} GiB", history.bytes as f64 / (1u64 << 30) as f64),
        String::new(),
    );
}
