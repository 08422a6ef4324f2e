//! `tidings explain MESSAGE PERSON`: why a person was or was not notified and emailed.

use tidings_common::Config;

pub async fn explain(
    config: &Config,
    message: i64,
    person: i64,
    as_json: bool,
) -> anyhow::Result<()> {
    let db = tidings_common::db::Db::new(&config.database_url, 1);
    let explanation = db
        .run(move |conn| tidings_common::audience::explain(conn, message, person))
        .await?
        .ok_or_else(|| anyhow::anyhow!("message {message} or person {person} does not exist"))?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
        return Ok(());
    }
    let e = &explanation;
    println!(
        "message {} ({}) and person {}",
        e.message_id, e.message_kind, e.person_id
    );
    let verdict = |v: &tidings_common::rules::Verdict, yes: &str, no: &str| {
        format!("{} [{}] {}", if v.yes { yes } else { no }, v.rule, v.detail)
    };
    println!(
        "  in-app now:   {}",
        verdict(&e.notify_now, "notified", "not notified")
    );
    println!(
        "  email now:    {}",
        verdict(&e.email_now, "would be emailed", "would not be emailed")
    );
    match &e.notification {
        None => println!("  outcome:      no notification was written when the message was posted"),
        Some(n) => {
            let mut line = format!("notification {} is {}", n.notification_id, n.state);
            if let Some(reason) = &n.reason {
                line += &format!(": {reason}");
            }
            if let Some(rule) = &n.rule {
                line += &format!(" [{rule}]");
            }
            if let Some(into) = n.coalesced_into {
                line += &format!(" (sent inside the email of notification {into})");
            }
            if let Some(at) = n.sent_at {
                line += &format!(", emailed at {}", at.format("%Y-%m-%d %H:%M:%S UTC"));
            }
            if let Some(reply) = &n.smtp_reply {
                line += &format!(", SMTP: {reply}");
            }
            println!("  outcome:      {line}");
        }
    }
    Ok(())
}
