//! `tidings log`: the email log (SPEC L1) of the last hours, as a table or JSON lines.

use tidings_common::Config;

pub async fn log(
    config: &Config,
    since: &str,
    direction: Option<String>,
    status: Option<String>,
    limit: i64,
    as_json: bool,
) -> anyhow::Result<()> {
    use tidings_common::db::email_log::{self, LogFilter};
    use tidings_common::db::models::{Direction, EmailLogEntry, LogStatus};
    let since = tidings_common::config::parse_positive_duration(since)
        .map_err(|e| anyhow::anyhow!("--since: {e}, got {since:?}"))?;
    let status = status
        .map(|s| {
            LogStatus::parse(&s)
                .ok_or_else(|| anyhow::anyhow!("--status: {s:?} is not a log status"))
        })
        .transpose()?;
    let filter = LogFilter {
        since: Some(tidings_common::clock::before(since)),
        direction: direction.as_deref().and_then(Direction::parse_loose),
        status,
        ..LogFilter::latest(limit)
    };
    let db = tidings_common::db::Db::new(&config.database_url, 1);
    let rows: Vec<EmailLogEntry> = db
        .run(move |conn| Ok(email_log::query(conn, &filter)?))
        .await?;
    if as_json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(());
    }
    print_table(&rows);
    println!("{} row(s)", rows.len());
    Ok(())
}

/// Prints the rows as a table whose columns line up.
fn print_table(rows: &[tidings_common::db::models::EmailLogEntry]) {
    use tidings_common::db::models::{Direction, EmailLogEntry};
    // The address columns are as wide as their longest value, so every row lines up.
    let width = |column: fn(&EmailLogEntry) -> Option<&str>| {
        rows.iter()
            .map(|r| column(r).map_or(1, |v| v.chars().count()))
            .max()
            .unwrap_or(1)
            .max(4)
    };
    let from_w = width(|r| r.entry.mail_from.as_deref());
    let to_w = width(|r| r.entry.rcpt_to.as_deref());
    println!(
        "{:<19}  {:<3}  {:<9}  {:<from_w$}  {:<to_w$}  {:<5}  {:<40}  detail",
        "time", "dir", "status", "from", "to", "conv", "subject"
    );
    for row in rows {
        let r = &row.entry;
        let detail: Vec<String> = [
            r.reason.clone(),
            r.action.clone(),
            r.smtp_reply.clone(),
            r.rule.clone().map(|rule| format!("[{rule}]")),
        ]
        .into_iter()
        .flatten()
        .collect();
        println!(
            "{:<19}  {:<3}  {:<9}  {:<from_w$}  {:<to_w$}  {:<5}  {:<40}  {}",
            row.created_at.format("%Y-%m-%d %H:%M:%S"),
            match r.direction {
                Direction::Inbound => "in",
                Direction::Outbound => "out",
            },
            r.status,
            r.mail_from.as_deref().unwrap_or("-"),
            r.rcpt_to.as_deref().unwrap_or("-"),
            r.conversation_id
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            r.subject
                .as_deref()
                .unwrap_or("-")
                .chars()
                .take(40)
                .collect::<String>(),
            detail.join("; ")
        );
    }
}
