//! Phase: the admin console over a busy log. 72 hours of a busy help desk's email log (100,000
//! rows, a quarter inbound) and 2,000 emails set aside are written straight into the database;
//! then each call a console page makes is timed through the api (20 times each, p50 and
//! slowest), against the console's static page in the same run, and the plans of the log's
//! queries are read with EXPLAIN.

use super::*;

/// Rows of the busy log.
const LOG_ROWS: i64 = 100_000;
/// Emails set aside among them.
const SET_ASIDE: i64 = 2_000;
/// Times each call is made.
const TIMES: usize = 20;

pub(crate) struct Console {
    /// The static page: (p50, slowest) in ms.
    pub(crate) baseline: (f64, f64),
    /// Each page's call: what, (p50, slowest) in ms.
    pub(crate) calls: Vec<(String, (f64, f64))>,
    /// Each log query: what, its plan's first line and the time PostgreSQL reports.
    pub(crate) plans: Vec<(String, String)>,
}

/// Writes the busy log: 100,000 rows over 72 hours, 5,000 addresses, 2,000 conversations.
fn seed_log(db: &mut PgConnection) -> anyhow::Result<()> {
    diesel::sql_query(format!(
        "INSERT INTO email_log (created_at, direction, status, reason, conversation_id, mail_from,
                                rcpt_to, subject, message_id_header, smtp_reply, rule, action)
         SELECT now() - i * interval '2.592 seconds',
                CASE WHEN i % 4 = 0 THEN 'inbound' ELSE 'outbound' END,
                CASE WHEN i % 4 = 0 THEN (ARRAY['threaded','threaded','created','ignored','rejected'])[1 + (i / 4) % 5]
                     ELSE (ARRAY['sent','sent','sent','sent','skipped','deferred','failed','bounced'])[1 + i % 8] END,
                CASE WHEN i % 8 = 4 THEN 'seen' END,
                1 + i % 2000,
                'person' || (i % 5000) || '@example.com',
                'person' || ((i * 7) % 5000) || '@example.com',
                'Ticket ' || (i % 2000) || ': the printer is on fire again',
                '<bench.' || i || '@reply.example.com>',
                CASE WHEN i % 4 <> 0 THEN '250 2.0.0 Ok: queued as ' || i END,
                CASE WHEN i % 4 <> 0 THEN 'D2' ELSE 'reply' END,
                CASE WHEN i % 4 = 0 THEN 'posted message ' || i || ' into conversation ' || (1 + i % 2000) END
         FROM generate_series(1, {LOG_ROWS}) AS i"
    ))
    .execute(db)?;
    diesel::sql_query(format!(
        "WITH e AS (
             INSERT INTO inbound_emails (dedupe_key, message_id_header, received_at, mail_from,
                                         rcpt_to, sender, verdict, reason)
             SELECT '<aside.' || i || '@example.com> from a' || i || '@example.com',
                    '<aside.' || i || '@example.com>', now() - i * interval '2 minutes',
                    'a' || i || '@example.com', 'support@example.com', 'a' || i || '@example.com',
                    'auto_reply', 'Auto-Submitted: auto-replied'
             FROM generate_series(1, {SET_ASIDE}) AS i
             RETURNING id, mail_from)
         INSERT INTO inbound_raw (inbound_email_id, mail_from, rcpt_to, subject, raw, set_aside)
         SELECT id, mail_from, 'support@example.com', 'Out of office',
                convert_to('From: ' || mail_from || E'\\r\\nSubject: Out of office\\r\\n\\r\\nAway until Monday.\\r\\n', 'UTF8'),
                'auto_reply: Auto-Submitted: auto-replied'
         FROM e"
    ))
    .execute(db)?;
    diesel::sql_query("ANALYZE email_log").execute(db)?;
    diesel::sql_query("ANALYZE inbound_raw").execute(db)?;
    Ok(())
}

/// The first line of a query's plan and the execution time PostgreSQL reports.
fn plan(db: &mut PgConnection, query: &str) -> anyhow::Result<String> {
    #[derive(QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text)]
        #[diesel(column_name = "QUERY PLAN")]
        line: String,
    }
    let lines: Vec<Line> =
        diesel::sql_query(format!("EXPLAIN (ANALYZE, BUFFERS) {query}")).load(db)?;
    let nodes: Vec<&str> = lines
        .iter()
        .map(|l| l.line.trim())
        .filter(|l| l.contains("Scan") || l.starts_with("Limit"))
        .map(|l| l.split("  (").next().unwrap_or(l).trim_start_matches("-> "))
        .collect();
    let time = lines
        .iter()
        .find_map(|l| l.line.strip_prefix("Execution Time: "))
        .unwrap_or("?");
    Ok(format!("{} ({time})", nodes.join(" / ")))
}

/// Times `path` through the api `TIMES` times: (p50, slowest) in ms.
async fn timed(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
) -> anyhow::Result<(f64, f64)> {
    let mut ms = Vec::with_capacity(TIMES);
    for _ in 0..TIMES {
        let started = Instant::now();
        let response = http
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await?;
        let status = response.status();
        response.bytes().await?;
        if !status.is_success() {
            bail!("GET {path}: {status}");
        }
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[ms.len() - 1]))
}

pub(crate) async fn console_phase(env: &BenchEnv, config: &Config) -> anyhow::Result<Console> {
    let mut db = PgConnection::establish(&env.database_url)?;
    seed_log(&mut db)?;
    let base = format!("http://{}", config.http_addr);
    let token = config.api_token.expose().clone();
    let http = reqwest::Client::new();
    let baseline = timed(&http, &base, &token, "/admin").await?;
    let oldest: i64 = {
        #[derive(QueryableByName)]
        struct Id {
            #[diesel(sql_type = BigInt)]
            id: i64,
        }
        diesel::sql_query(
            "SELECT min(id) AS id FROM (SELECT id FROM email_log WHERE direction = 'outbound' \
             ORDER BY id DESC LIMIT 50) page",
        )
        .get_result::<Id>(&mut db)?
        .id
    };
    let calls = [
        (
            "Outgoing, first page",
            "/email-log?direction=out&limit=50".to_string(),
        ),
        (
            "Outgoing, next page",
            format!("/email-log?direction=out&limit=50&before={oldest}"),
        ),
        (
            "Outgoing, failed only",
            "/email-log?direction=out&status=failed&limit=50".into(),
        ),
        (
            "Outgoing, to one address",
            "/email-log?direction=out&address=person4999%40example.com&limit=50".into(),
        ),
        (
            "Incoming, one conversation",
            "/email-log?direction=in&conversation_id=1999&limit=50".into(),
        ),
        (
            "Incoming, the last hour",
            "/email-log?direction=in&since=1h&limit=50".into(),
        ),
        ("Set aside (2,000)", "/set-aside?limit=100".into()),
        ("Automated messages", "/automations".into()),
        ("Automated emails", "/templates".into()),
        (
            "the notification template",
            "/templates/notification".into(),
        ),
        ("System notifications", "/system-notifications".into()),
        ("Suppressions", "/suppressions".into()),
        ("People", "/people?kind=user&limit=50".into()),
        ("Status", "/status".into()),
        ("History", "/admin-changes?limit=200".into()),
    ];
    let mut timings = Vec::new();
    for (what, path) in calls {
        timings.push((what.to_string(), timed(&http, &base, &token, &path).await?));
    }
    let queries = [
        ("first page", "SELECT id FROM email_log WHERE direction = 'outbound' ORDER BY id DESC LIMIT 50".to_string()),
        ("failed only", "SELECT id FROM email_log WHERE direction = 'outbound' AND status = 'failed' ORDER BY id DESC LIMIT 50".into()),
        ("one address", "SELECT id FROM email_log WHERE direction = 'outbound' AND (lower(mail_from) = 'person4999@example.com' OR lower(rcpt_to) = 'person4999@example.com') ORDER BY id DESC LIMIT 50".into()),
        ("one conversation", "SELECT id FROM email_log WHERE direction = 'inbound' AND conversation_id = 1999 ORDER BY id DESC LIMIT 50".into()),
        ("the last hour", "SELECT id FROM email_log WHERE direction = 'inbound' AND created_at >= now() - interval '1 hour' ORDER BY id DESC LIMIT 50".into()),
        ("set aside", "SELECT inbound_email_id FROM inbound_raw WHERE set_aside IS NOT NULL ORDER BY inbound_email_id DESC LIMIT 100".into()),
    ];
    let mut plans = Vec::new();
    for (what, query) in queries {
        plans.push((what.to_string(), plan(&mut db, &query)?));
    }
    Ok(Console {
        baseline,
        calls: timings,
        plans,
    })
}

pub(crate) fn print_console(c: &Console) {
    let ms = |(p50, max): (f64, f64)| format!("{p50:.1} / {max:.1} ms");
    row(
        "baseline: the console's static page (p50 / slowest)".into(),
        ms(c.baseline),
        String::new(),
    );
    for (what, t) in &c.calls {
        row(
            format!("console: {what} (100,000 log rows)"),
            ms(*t),
            format!("{:.1}x", t.0 / c.baseline.0.max(0.001)),
        );
    }
    println!("plans of the log's queries (EXPLAIN ANALYZE):");
    for (what, plan) in &c.plans {
        println!("  {what}: {plan}");
    }
}
