//! Threading an inbound email and posting it (SPEC I2–I6, L2): a signed reply address first,
//! then In-Reply-To and References against Message-IDs we sent or received, and otherwise a
//! customer's first mail to a support mailbox starts a conversation. Loop defence caps posts
//! per sender and per conversation.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Interval, Text};
use tidings_common::db::models::PersonKind;
use tidings_common::db::schema::{
    conversation_participants, conversations, inbound_emails, item_follows, items, notifications,
    people,
};
use tidings_common::inbound::{InboundReport, InboundVerdict};
use tidings_common::mail::ReplyToken;
use tidings_common::{Config, Result, clock, posting};

use crate::bounce::record_bounce;
use crate::process::{Disposition, Envelope};

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Posts recently made from this sender, or into this conversation (loop defence, SPEC L2).
/// Takes a transaction-scoped lock on the sender or conversation first, so concurrent emails
/// are counted one after another and cannot all slip under the limit together.
fn recent_posts(
    conn: &mut PgConnection,
    column: &str,
    value: &str,
    window: std::time::Duration,
) -> QueryResult<i64> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<Text, _>(format!("tidings-inbound {column} {value}"))
        .execute(conn)?;
    let sql = format!(
        "SELECT count(*) AS n FROM inbound_emails
         WHERE {column} = $1 AND posted_message_id IS NOT NULL AND received_at > now() - $2"
    );
    let window = diesel::pg::data_types::PgInterval::from_microseconds(window.as_micros() as i64);
    let n = diesel::sql_query(sql)
        .bind::<Text, _>(value)
        .bind::<Interval, _>(window)
        .get_result::<Count>(conn)?
        .n;

    Ok(n)
}

fn person_by_email(
    conn: &mut PgConnection,
    email: &str,
) -> QueryResult<Vec<(i64, PersonKind, Option<String>)>> {
    people::table
        .filter(
            diesel::dsl::sql::<diesel::sql_types::Bool>("lower(email) = ")
                .bind::<Text, _>(email.to_ascii_lowercase()),
        )
        .filter(people::active.eq(true))
        .select((people::id, people::kind, people::email))
        .load(conn)
}

/// Decides where the email goes and posts it.
pub(crate) fn decide(
    conn: &mut PgConnection,
    config: &Config,
    report: &InboundReport,
    envelope: &Envelope,
) -> Result<Disposition> {
    match report.verdict {
        InboundVerdict::Reply | InboundVerdict::NewConversation => {}
        InboundVerdict::Bounce => return record_bounce(conn, config, report, envelope),
        InboundVerdict::Rejected => {
            return Ok(Disposition::Rejected(
                report.reason.clone().unwrap_or_else(|| "unreadable".into()),
            ));
        }
        other => {
            let reason = report.reason.clone().unwrap_or_default();
            return Ok(Disposition::Ignored(format!(
                "{}: {reason}",
                other.as_str()
            )));
        }
    }
    let Some(sender) = report.from.as_deref() else {
        return Ok(Disposition::Rejected("no sender address".into()));
    };
    if let Some(failure) = &report.auth_failure {
        return Ok(Disposition::Rejected(format!(
            "the relay reports failed authentication ({failure})"
        )));
    }
    // Never empty for a human mail: extraction falls back to the whole text or the subject.
    let text = report.reply_text.clone().unwrap_or_default();
    let (count, window) = config.inbound_rate;
    if recent_posts(conn, "sender", sender, window)? >= i64::from(count) {
        return Ok(Disposition::Rejected(format!(
            "rate limit: {count} posts from this sender within {window:?}"
        )));
    }
    let token = match reply_token(config, report, envelope) {
        Ok(token) => token,
        Err(rejected) => return Ok(rejected),
    };
    let target = match token {
        Some(token) => by_token(conn, &token, sender)?,
        None => by_headers(conn, report, sender)?,
    };
    match target {
        Err(rejected) => Ok(rejected),
        Ok(Some((conversation_id, person))) => {
            post_into(conn, config, report, conversation_id, person, &text)
        }
        Ok(None) => start_conversation(conn, config, report, envelope, sender, &text),
    }
}

/// Where an email goes: a conversation and the person posting (`None`: no conversation it
/// answers), or why it is refused.
type Target = std::result::Result<Option<(i64, i64)>, Disposition>;

/// First choice: a signed reply address, from the envelope first (what the relay delivered to).
/// `Err` when the address is ours but has expired.
fn reply_token(
    config: &Config,
    report: &InboundReport,
    envelope: &Envelope,
) -> std::result::Result<Option<ReplyToken>, Disposition> {
    let token = envelope
        .rcpts
        .iter()
        .chain(report.thread.token.iter())
        .find_map(|r| {
            let local = r.rsplit_once('@').map_or(r.as_str(), |(l, _)| l);
            let token = local.strip_prefix("reply+").unwrap_or(local);
            ReplyToken::decode(token, &config.token_secret).ok()
        });
    let lifetime_days = (config.threading_retention.as_secs() / 86_400) as i64;
    match token {
        Some(token)
            if tidings_common::mail::epoch_day(clock::now()) - token.issued_day > lifetime_days =>
        {
            Err(Disposition::Rejected(format!(
                "the reply address has expired (older than {lifetime_days} days)"
            )))
        }
        other => Ok(other),
    }
}

/// The conversation a reply token names, if the sender is the person it was issued to.
fn by_token(conn: &mut PgConnection, token: &ReplyToken, sender: &str) -> QueryResult<Target> {
    let owner: Option<(i64, Option<String>, bool)> = people::table
        .find(token.person_id)
        .select((people::id, people::email, people::active))
        .first(conn)
        .optional()?;
    Ok(match owner {
        Some((_, Some(email), false)) if email.eq_ignore_ascii_case(sender) => {
            Err(Disposition::Rejected(
                "the person this reply address was issued to is deactivated".into(),
            ))
        }
        Some((id, Some(email), true)) if email.eq_ignore_ascii_case(sender) => {
            Ok(Some((token.conversation_id, id)))
        }
        Some(_) => Err(Disposition::Rejected(
            "the sender is not the person this reply address was issued to".into(),
        )),
        None => Err(Disposition::Rejected(
            "the reply address names an unknown person".into(),
        )),
    })
}

/// Second choice: In-Reply-To / References against Message-IDs we sent to the sender, or received in a
/// conversation the sender takes part in.
fn by_headers(
    conn: &mut PgConnection,
    report: &InboundReport,
    sender: &str,
) -> QueryResult<Target> {
    let mut ids: Vec<String> = report.thread.references.clone();
    ids.extend(report.thread.in_reply_to.iter().cloned());
    if ids.is_empty() {
        return Ok(Ok(None));
    }
    let sender_ids: Vec<i64> = person_by_email(conn, sender)?
        .iter()
        .map(|(id, _, _)| *id)
        .collect();
    let sent: Option<i64> = notifications::table
        .filter(notifications::email_message_id.eq_any(&ids))
        .filter(notifications::recipient_id.eq_any(&sender_ids))
        .select(notifications::conversation_id)
        .first(conn)
        .optional()?;
    let conversation = match sent {
        Some(c) => Some(c),
        None => inbound_emails::table
            .filter(inbound_emails::message_id_header.eq_any(&ids))
            .filter(inbound_emails::conversation_id.is_not_null())
            .select(inbound_emails::conversation_id)
            .first::<Option<i64>>(conn)
            .optional()?
            .flatten(),
    };
    let (Some(conversation), Some(&person)) = (conversation, sender_ids.first()) else {
        return Ok(match conversation {
            Some(_) => Err(Disposition::Rejected(
                "the sender is not a known person".into(),
            )),
            None => Ok(None),
        });
    };
    let participant: i64 = conversation_participants::table
        .filter(conversation_participants::conversation_id.eq(conversation))
        .filter(conversation_participants::person_id.eq_any(&sender_ids))
        .count()
        .get_result(conn)?;
    if sent.is_none() && participant == 0 {
        return Ok(Err(Disposition::Rejected(
            "the sender is not a participant of the conversation the email answers".into(),
        )));
    }
    Ok(Ok(Some((conversation, person))))
}

/// Posts the reply into its conversation, within the per-conversation rate limit.
fn post_into(
    conn: &mut PgConnection,
    config: &Config,
    report: &InboundReport,
    conversation_id: i64,
    person: i64,
    text: &str,
) -> Result<Disposition> {
    let exists: Option<i64> = conversations::table
        .find(conversation_id)
        .select(conversations::id)
        .first(conn)
        .optional()?;
    if exists.is_none() {
        return Ok(Disposition::Rejected(format!(
            "conversation {conversation_id} does not exist"
        )));
    }
    let (count, window) = config.inbound_rate;
    let key = conversation_id.to_string();
    if recent_posts(conn, "conversation_id::text", &key, window)? >= i64::from(count) {
        return Ok(Disposition::Rejected(format!(
            "rate limit: {count} posts into conversation {conversation_id} within {window:?}"
        )));
    }
    let internal = reply_is_internal(conn, report, conversation_id, person)?;
    let message = posting::insert_message(conn, conversation_id, person, text, internal)?;
    Ok(Disposition::Threaded {
        conversation_id,
        message_id: message.id,
    })
}

/// Whether a reply by email is posted internal (SPEC D5). A customer's reply is always external.
/// A user's reply keeps the visibility of the message whose notification it answers
/// (In-Reply-To, then References); when it answers none of our emails, it is internal, so staff
/// discussion never reaches a customer by accident.
fn reply_is_internal(
    conn: &mut PgConnection,
    report: &InboundReport,
    conversation_id: i64,
    person: i64,
) -> QueryResult<bool> {
    use tidings_common::db::schema::messages;
    let kind: PersonKind = people::table
        .find(person)
        .select(people::kind)
        .first(conn)?;
    if kind == PersonKind::Customer {
        return Ok(false);
    }
    let mut answered: Vec<String> = report.thread.in_reply_to.iter().cloned().collect();
    answered.extend(report.thread.references.iter().rev().cloned());
    for id in &answered {
        let internal: Option<bool> = notifications::table
            .inner_join(messages::table.on(messages::id.eq(notifications::message_id)))
            .filter(notifications::email_message_id.eq(id))
            .filter(notifications::conversation_id.eq(conversation_id))
            .select(messages::internal)
            .first(conn)
            .optional()?;
        if let Some(internal) = internal {
            return Ok(internal);
        }
    }
    Ok(true)
}

/// Last choice: a customer writing afresh to a support mailbox starts a conversation (SPEC I5).
fn start_conversation(
    conn: &mut PgConnection,
    config: &Config,
    report: &InboundReport,
    envelope: &Envelope,
    sender: &str,
    text: &str,
) -> Result<Disposition> {
    let to_mailbox = envelope.rcpts.iter().any(|r| {
        r.rsplit_once('@').is_some_and(|(local, domain)| {
            domain == config.reply_domain && config.inbound_mailboxes.iter().any(|m| m == local)
        })
    });
    if !to_mailbox {
        return Ok(Disposition::Rejected(
            "matches no conversation and was not sent to a support mailbox".into(),
        ));
    }
    let known = person_by_email(conn, sender)?;
    if known
        .iter()
        .any(|(_, kind, _)| *kind != PersonKind::Customer)
    {
        return Ok(Disposition::Rejected(
            "staff and bots start conversations in the app, not by email".into(),
        ));
    }
    let customer = match known.first() {
        Some((id, _, _)) => *id,
        None => diesel::insert_into(people::table)
            .values((
                people::kind.eq(PersonKind::Customer),
                people::name.eq(sender.split('@').next().unwrap_or(sender)),
                people::email.eq(sender),
            ))
            .returning(people::id)
            .get_result(conn)?,
    };
    let subject = ticket_title(report.subject.as_deref());
    // The ticket: in the inbound project, titled by the subject, the customer its requester and
    // follower, its conversation linked to it; `item_created` runs automations and dispatch
    // notifies the message like any new customer message (SPEC I5).
    let project_id = tidings_common::db::ensure_project(conn, &config.inbound_project)?;
    let item_id: i64 = diesel::insert_into(items::table)
        .values((
            items::project_id.eq(project_id),
            items::kind.eq("ticket"),
            items::title.eq(&subject),
            items::requester_id.eq(customer),
        ))
        .returning(items::id)
        .get_result(conn)?;
    diesel::insert_into(item_follows::table)
        .values((
            item_follows::item_id.eq(item_id),
            item_follows::person_id.eq(customer),
        ))
        .on_conflict_do_nothing()
        .execute(conn)?;
    let conversation_id: i64 = diesel::insert_into(conversations::table)
        .values((
            conversations::subject.eq(&subject),
            conversations::item_id.eq(item_id),
        ))
        .returning(conversations::id)
        .get_result(conn)?;
    let message = posting::insert_message(conn, conversation_id, customer, text, false)?;
    let item_event = tidings_common::events::record(
        conn,
        &tidings_common::events::DomainEvent::ItemCreated { item_id },
    )?;
    Ok(Disposition::Created {
        conversation_id,
        message_id: message.id,
        item_id,
        item_event,
    })
}

/// Most characters of a ticket title or conversation subject, as the api allows.
const TITLE_MAX: usize = 300;

/// The title of a ticket from an email's subject: one line (control characters and line
/// separators, which an encoded word can carry, become spaces), at most [`TITLE_MAX`]
/// characters, and "(no subject)" when there is none.
fn ticket_title(subject: Option<&str>) -> String {
    let line = tidings_common::mail::one_line(subject.unwrap_or_default());
    let line = line.trim();
    if line.is_empty() {
        return "(no subject)".into();
    }
    if line.chars().count() <= TITLE_MAX {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(TITLE_MAX - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::{TITLE_MAX, ticket_title};

    #[test]
    fn a_ticket_title_is_one_bounded_line() {
        assert_eq!(ticket_title(None), "(no subject)");
        assert_eq!(ticket_title(Some(" \r\n\t ")), "(no subject)");
        assert_eq!(
            ticket_title(Some("Invoice\r\nBcc: x@evil.test\u{0}\u{2028}wrong")),
            "Invoice Bcc: x@evil.test wrong"
        );
        let long = ticket_title(Some(&"é".repeat(10_000)));
        assert_eq!(long.chars().count(), TITLE_MAX);
        assert!(long.ends_with('…'));
    }
}
