//! Processing queued inbound email: the pure path (parse, classify, extract), then threading
//! and posting in one transaction (SPEC I2–I6, L2). The posted message then flows through
//! dispatch like any other.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Interval, Text};
use tidings_common::db::models::{NewEmailLogEntry, PersonKind};
use tidings_common::db::schema::{conversations, email_log, inbound_emails, notifications, people};
use tidings_common::inbound::{InboundReport, Verdict};
use tidings_common::mail::ReplyToken;
use tidings_common::{Config, Result, posting};

/// What became of one inbound email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Posted into an existing conversation.
    Threaded {
        conversation_id: i64,
        message_id: i64,
    },
    /// Started a new conversation.
    Created {
        conversation_id: i64,
        message_id: i64,
    },
    /// Logged, never posted (automatic mail, a duplicate delivery).
    Ignored(String),
    /// Not posted; the reason says why.
    Rejected(String),
}

impl Disposition {
    /// The conversation and message it was posted as, if it was posted.
    pub fn posted_into(&self) -> Option<(i64, i64)> {
        match self {
            Disposition::Threaded {
                conversation_id,
                message_id,
            }
            | Disposition::Created {
                conversation_id,
                message_id,
            } => Some((*conversation_id, *message_id)),
            _ => None,
        }
    }

    /// The message it was posted as, if it was posted.
    pub fn posted(&self) -> Option<i64> {
        self.posted_into().map(|(_, message)| message)
    }

    /// What the email caused, as the email log shows it (SPEC L1).
    pub fn action(&self) -> String {
        match self {
            Disposition::Threaded {
                conversation_id,
                message_id,
            } => format!("posted message {message_id} into conversation {conversation_id}"),
            Disposition::Created {
                conversation_id,
                message_id,
            } => format!("started conversation {conversation_id} with message {message_id}"),
            Disposition::Ignored(_) => "nothing posted (logged only)".into(),
            Disposition::Rejected(_) => "nothing posted (rejected)".into(),
        }
    }

    fn status(&self) -> &'static str {
        match self {
            Disposition::Threaded { .. } => "threaded",
            Disposition::Created { .. } => "created",
            Disposition::Ignored(_) => "ignored",
            Disposition::Rejected(_) => "rejected",
        }
    }
}

/// The envelope the relay gave.
pub struct Envelope {
    pub mail_from: String,
    pub rcpts: Vec<String>,
}

fn sha256_hex(raw: &[u8]) -> String {
    use std::fmt::Write;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(raw);
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Threads and posts one inspected email, in one transaction, exactly once per Message-ID.
pub fn process(
    conn: &mut PgConnection,
    config: &Config,
    report: &InboundReport,
    raw: &[u8],
    envelope: &Envelope,
) -> Result<Disposition> {
    conn.transaction(|conn| {
        let dedupe_key = report
            .message_id
            .clone()
            .unwrap_or_else(|| format!("sha256:{}", sha256_hex(raw)));
        let sender = report.from.clone();
        let inserted: Option<i64> = diesel::insert_into(inbound_emails::table)
            .values((
                inbound_emails::dedupe_key.eq(&dedupe_key),
                inbound_emails::message_id_header.eq(&report.message_id),
                inbound_emails::mail_from.eq(&envelope.mail_from),
                inbound_emails::rcpt_to.eq(envelope.rcpts.join(",")),
                inbound_emails::sender.eq(&sender),
                inbound_emails::verdict.eq(verdict_name(report.verdict)),
                inbound_emails::reason.eq(&report.reason),
                inbound_emails::quoted_text.eq(&report.quoted_text),
            ))
            .on_conflict_do_nothing()
            .returning(inbound_emails::id)
            .get_result(conn)
            .optional()?;
        let disposition = match inserted {
            None => Disposition::Ignored("duplicate delivery of an email already processed".into()),
            Some(row) => {
                let disposition = decide(conn, config, report, envelope)?;
                let posted = disposition.posted_into();
                let (conversation_id, message_id) = (posted.map(|p| p.0), posted.map(|p| p.1));
                diesel::update(inbound_emails::table.find(row))
                    .set((
                        inbound_emails::conversation_id.eq(conversation_id),
                        inbound_emails::posted_message_id.eq(message_id),
                    ))
                    .execute(conn)?;
                disposition
            }
        };
        let posted = disposition.posted_into();
        let (conversation_id, message_id) = (posted.map(|p| p.0), posted.map(|p| p.1));
        let reason = match &disposition {
            Disposition::Ignored(r) | Disposition::Rejected(r) => Some(r.clone()),
            _ => None,
        };
        diesel::insert_into(email_log::table)
            .values(&NewEmailLogEntry {
                direction: "inbound".into(),
                status: disposition.status().into(),
                reason,
                notification_id: None,
                message_id,
                conversation_id,
                mail_from: sender,
                rcpt_to: Some(envelope.rcpts.join(",")),
                subject: report.subject.clone(),
                message_id_header: report.message_id.clone(),
                smtp_reply: None,
                rule: Some(verdict_name(report.verdict).into()),
                action: Some(disposition.action()),
                ..Default::default()
            })
            .execute(conn)?;
        Ok(disposition)
    })
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Reply => "reply",
        Verdict::NewConversation => "new_conversation",
        Verdict::AutoReply => "auto_reply",
        Verdict::Bounce => "bounce",
        Verdict::Bulk => "bulk",
        Verdict::Loop => "loop",
        Verdict::Rejected => "rejected",
    }
}

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
) -> QueryResult<Vec<(i64, String, Option<String>)>> {
    people::table
        .filter(
            diesel::dsl::sql::<diesel::sql_types::Bool>("lower(email) = ")
                .bind::<Text, _>(email.to_ascii_lowercase()),
        )
        .filter(people::active.eq(true))
        .select((people::id, people::kind, people::email))
        .load(conn)
}

/// A bounce: marks the email it reports on as `bounced` (log and delivery status), and
/// suppresses the address after a hard bounce or the third soft one.
fn record_bounce(conn: &mut PgConnection, report: &InboundReport) -> Result<Disposition> {
    use tidings_common::db::schema::email_suppressions as s;
    let bounce = report.bounce.clone().unwrap_or_default();
    let status = bounce.status.clone().unwrap_or_else(|| "5.0.0".into());
    let mut addresses = bounce.recipients.clone();
    if let Some(original) = &bounce.original_message_id {
        diesel::update(
            email_log::table
                .filter(email_log::message_id_header.eq(original))
                .filter(email_log::direction.eq("outbound"))
                .filter(email_log::status.eq("sent")),
        )
        .set((
            email_log::status.eq("bounced"),
            email_log::smtp_reply.eq(format!("DSN {status}")),
        ))
        .execute(conn)?;
        use tidings_common::db::schema::outbox_emails as o;
        let mut recipients: Vec<i64> = diesel::update(
            notifications::table
                .filter(notifications::email_message_id.eq(original))
                .filter(notifications::state.eq("sent")),
        )
        .set((
            notifications::reason.eq("bounced"),
            notifications::smtp_reply.eq(format!("DSN {status}")),
        ))
        .returning(notifications::recipient_id)
        .get_results::<i64>(conn)?;
        recipients.extend(
            diesel::update(
                o::table
                    .filter(o::email_message_id.eq(original))
                    .filter(o::state.eq("sent")),
            )
            .set((
                o::reason.eq("bounced"),
                o::smtp_reply.eq(format!("DSN {status}")),
            ))
            .returning(o::recipient_id)
            .get_results::<i64>(conn)?,
        );
        let bounced: Vec<Option<String>> = recipients
            .into_iter()
            .map(|id| {
                people::table
                    .find(id)
                    .select(people::email)
                    .first(conn)
                    .ok()
                    .flatten()
            })
            .collect();
        if addresses.is_empty() {
            addresses.extend(
                bounced
                    .into_iter()
                    .flatten()
                    .map(|a| a.to_ascii_lowercase()),
            );
        }
    }
    let mut suppressed = Vec::new();
    for address in &addresses {
        let hard = i32::from(bounce.permanent);
        let soft = i32::from(!bounce.permanent);
        let now_suppressed: bool = diesel::insert_into(s::table)
            .values((
                s::address.eq(address),
                s::hard_bounces.eq(hard),
                s::soft_bounces.eq(soft),
                s::suppressed.eq(bounce.permanent),
                s::last_status.eq(&status),
            ))
            .on_conflict(s::address)
            .do_update()
            .set((
                s::hard_bounces.eq(s::hard_bounces + hard),
                s::soft_bounces.eq(s::soft_bounces + soft),
                s::suppressed.eq(s::suppressed.or(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
                    "{} OR email_suppressions.soft_bounces + {soft} >= {SOFT_BOUNCES_TO_SUPPRESS}",
                    bounce.permanent
                )))),
                s::last_status.eq(&status),
                s::updated_at.eq(diesel::dsl::now),
            ))
            .returning(s::suppressed)
            .get_result(conn)?;
        if now_suppressed {
            suppressed.push(address.clone());
        }
    }
    Ok(Disposition::Ignored(format!(
        "bounce {status} ({}) for {}{}",
        if bounce.permanent { "hard" } else { "soft" },
        if addresses.is_empty() {
            "an unknown address".to_string()
        } else {
            addresses.join(", ")
        },
        if suppressed.is_empty() {
            String::new()
        } else {
            format!("; suppressed: {}", suppressed.join(", "))
        },
    )))
}

/// Soft bounces in a row after which an address is suppressed.
const SOFT_BOUNCES_TO_SUPPRESS: i32 = 3;

/// Decides where the email goes and posts it.
fn decide(
    conn: &mut PgConnection,
    config: &Config,
    report: &InboundReport,
    envelope: &Envelope,
) -> Result<Disposition> {
    match report.verdict {
        Verdict::Reply | Verdict::NewConversation => {}
        Verdict::Bounce => return record_bounce(conn, report),
        Verdict::Rejected => {
            return Ok(Disposition::Rejected(
                report.reason.clone().unwrap_or_else(|| "unreadable".into()),
            ));
        }
        other => {
            let reason = report.reason.clone().unwrap_or_default();
            return Ok(Disposition::Ignored(format!(
                "{}: {reason}",
                verdict_name(other)
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
    let text = report.reply_text.clone().unwrap_or_default();
    if text.trim().is_empty() {
        return Ok(Disposition::Rejected(
            "no new text above the quoted history".into(),
        ));
    }
    let (count, window) = config.inbound_rate;
    if recent_posts(conn, "sender", sender, window)? >= i64::from(count) {
        return Ok(Disposition::Rejected(format!(
            "rate limit: {count} posts from this sender within {window:?}"
        )));
    }

    // 1. A signed reply address, from the envelope first (what the relay delivered to).
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
    if let Some(token) = &token
        && tidings_common::mail::epoch_day(chrono::Utc::now()) - token.issued_day > lifetime_days
    {
        return Ok(Disposition::Rejected(format!(
            "the reply address has expired (older than {lifetime_days} days)"
        )));
    }
    let target: Option<(i64, i64)> = if let Some(token) = token {
        let owner: Option<(i64, Option<String>)> = people::table
            .find(token.person_id)
            .select((people::id, people::email))
            .first(conn)
            .optional()?;
        match owner {
            Some((id, Some(email))) if email.eq_ignore_ascii_case(sender) => {
                Some((token.conversation_id, id))
            }
            Some(_) => {
                return Ok(Disposition::Rejected(
                    "the sender is not the person this reply address was issued to".into(),
                ));
            }
            None => {
                return Ok(Disposition::Rejected(
                    "the reply address names an unknown person".into(),
                ));
            }
        }
    } else {
        // 2. In-Reply-To / References against Message-IDs we sent or received.
        let mut ids: Vec<String> = report.thread.references.clone();
        ids.extend(report.thread.in_reply_to.iter().cloned());
        let senders = person_by_email(conn, sender)?;
        let sender_ids: Vec<i64> = senders.iter().map(|(id, _, _)| *id).collect();
        let sent: Option<i64> = if ids.is_empty() {
            None
        } else {
            notifications::table
                .filter(notifications::email_message_id.eq_any(&ids))
                .filter(notifications::recipient_id.eq_any(&sender_ids))
                .select(notifications::conversation_id)
                .first(conn)
                .optional()?
        };
        let received: Option<i64> = match (sent, ids.is_empty()) {
            (Some(c), _) => Some(c),
            (None, true) => None,
            (None, false) => inbound_emails::table
                .filter(inbound_emails::message_id_header.eq_any(&ids))
                .filter(inbound_emails::conversation_id.is_not_null())
                .select(inbound_emails::conversation_id)
                .first::<Option<i64>>(conn)
                .optional()?
                .flatten(),
        };
        match (received, sender_ids.first()) {
            (Some(conversation), Some(&person)) => {
                let participant: i64 = tidings_common::db::schema::conversation_participants::table
                    .filter(
                        tidings_common::db::schema::conversation_participants::conversation_id
                            .eq(conversation),
                    )
                    .filter(
                        tidings_common::db::schema::conversation_participants::person_id
                            .eq_any(&sender_ids),
                    )
                    .count()
                    .get_result(conn)?;
                if sent.is_none() && participant == 0 {
                    return Ok(Disposition::Rejected(
                        "the sender is not a participant of the conversation the email answers"
                            .into(),
                    ));
                }
                Some((conversation, person))
            }
            (Some(_), None) => {
                return Ok(Disposition::Rejected(
                    "the sender is not a known person".into(),
                ));
            }
            (None, _) => None,
        }
    };
    if let Some((conversation_id, person)) = target {
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
        if recent_posts(
            conn,
            "conversation_id::text",
            &conversation_id.to_string(),
            window,
        )? >= i64::from(count)
        {
            return Ok(Disposition::Rejected(format!(
                "rate limit: {count} posts into conversation {conversation_id} within {window:?}"
            )));
        }
        let message = posting::insert_message(conn, conversation_id, person, &text, false)?;
        return Ok(Disposition::Threaded {
            conversation_id,
            message_id: message.id,
        });
    }

    // 3. A customer writing afresh starts a conversation (SPEC I5).
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
        .any(|(_, kind, _)| PersonKind::parse(kind) != Some(PersonKind::Customer))
    {
        return Ok(Disposition::Rejected(
            "staff and bots start conversations in the app, not by email".into(),
        ));
    }
    let customer = match known.first() {
        Some((id, _, _)) => *id,
        None => diesel::insert_into(people::table)
            .values((
                people::kind.eq("customer"),
                people::name.eq(sender.split('@').next().unwrap_or(sender)),
                people::email.eq(sender),
            ))
            .returning(people::id)
            .get_result(conn)?,
    };
    let subject = report
        .subject
        .clone()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "(no subject)".into());
    let conversation_id: i64 = diesel::insert_into(conversations::table)
        .values(conversations::subject.eq(subject))
        .returning(conversations::id)
        .get_result(conn)?;
    let message = posting::insert_message(conn, conversation_id, customer, &text, false)?;
    Ok(Disposition::Created {
        conversation_id,
        message_id: message.id,
    })
}
