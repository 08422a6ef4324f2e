//! Processing queued inbound email: the pure path (parse, classify, extract), then threading
//! and posting in one transaction (SPEC I2–I6, L2). The posted message then flows through
//! dispatch like any other.

use diesel::prelude::*;
use tidings_common::attachments;
use tidings_common::db::email_log;
use tidings_common::db::models::NewEmailLogEntry;
use tidings_common::db::schema::{inbound_emails, inbound_raw};
use tidings_common::{Config, Result};

use crate::set::{Disposition, Envelope, Inbound};
use crate::thread;

/// The key a redelivery repeats: the Message-ID *and* the sender (another sender reusing the
/// id is a different email), or the text's digest when there is no Message-ID.
fn dedupe_key(inbound: &Inbound) -> String {
    match &inbound.report.message_id {
        Some(id) => format!(
            "{id} from {}",
            inbound.report.from.as_deref().unwrap_or("<no sender>")
        ),
        None => format!("sha256:{}", attachments::sha256_hex(&inbound.raw)),
    }
}

/// Threads and posts a set of inspected emails in one transaction, each exactly once per
/// Message-ID and sender; one disposition per email, in order. The bookkeeping (recording
/// each email, the loop defence's locks and counts, linking what was posted, the email log)
/// costs the same few statements whatever the set's size; only finding and posting into each
/// email's conversation is per email. If the set fails, nothing of it is kept.
pub fn process_set(conn: &mut PgConnection, config: &Config, set: &[Inbound]) -> Result<Processed> {
    let envelopes: Vec<Envelope> = set
        .iter()
        .map(|inbound| {
            let mut mail_from = inbound.envelope.mail_from.clone();
            tidings_common::inbound::without_nul(&mut mail_from);
            let mut rcpts = inbound.envelope.rcpts.clone();
            rcpts
                .iter_mut()
                .for_each(tidings_common::inbound::without_nul);
            Envelope {
                mail_from,
                rcpts,
                client: inbound.envelope.client.clone(),
            }
        })
        .collect();
    let keys: Vec<String> = set.iter().map(dedupe_key).collect();
    conn.transaction(|conn| {
        let rows: Vec<_> = set
            .iter()
            .zip(&envelopes)
            .zip(&keys)
            .map(|((inbound, envelope), key)| {
                let report = &inbound.report;
                (
                    inbound_emails::dedupe_key.eq(key),
                    inbound_emails::message_id_header.eq(&report.message_id),
                    inbound_emails::mail_from.eq(&envelope.mail_from),
                    inbound_emails::rcpt_to.eq(envelope.rcpts.join(",")),
                    inbound_emails::sender.eq(&report.from),
                    inbound_emails::verdict.eq(report.verdict.as_str()),
                    inbound_emails::reason
                        .eq(report.reason.as_ref().or(report.extraction_note.as_ref())),
                    inbound_emails::quoted_text.eq(&report.quoted_text),
                )
            })
            .collect();
        let inserted: Vec<(i64, String)> = diesel::insert_into(inbound_emails::table)
            .values(rows)
            .on_conflict_do_nothing()
            .returning((inbound_emails::id, inbound_emails::dedupe_key))
            .get_results(conn)?;
        // The row of each email that is new; an email already recorded (or repeated within
        // the set) has none.
        let mut new_rows: std::collections::HashMap<&str, i64> = inserted
            .iter()
            .map(|(id, key)| (key.as_str(), *id))
            .collect();
        let rows: Vec<Option<i64>> = keys.iter().map(|k| new_rows.remove(k.as_str())).collect();
        // Emails already recorded (or repeated within the set) are duplicates; the others
        // are planned, locked, counted and posted as a set.
        let fresh: Vec<thread::Email<'_>> = set
            .iter()
            .zip(&envelopes)
            .zip(&rows)
            .filter(|(_, row)| row.is_some())
            .map(|((inbound, envelope), _)| (&inbound.report, envelope))
            .collect();
        let mut bounced = Vec::new();
        let plans = thread::plan_set(conn, config, &fresh, &mut bounced)?;
        thread::lock(conn, &plans)?;
        let mut recent = thread::RecentPosts::load(conn, &plans, config.inbound_rate.1)?;
        let mut posted = thread::execute_set(conn, config, &fresh, plans, &mut recent)?.into_iter();
        let dispositions: Vec<Disposition> = rows
            .iter()
            .map(|row| match row {
                Some(_) => posted.next().expect("one disposition per fresh email"),
                None => {
                    Disposition::Ignored("duplicate delivery of an email already processed".into())
                }
            })
            .collect();
        // Each posted email's files, with the message they came with (I9).
        for ((inbound, row), disposition) in set.iter().zip(&rows).zip(&dispositions) {
            if let (Some(_), Some((conversation, message))) = (row, disposition.posted_into())
                && !inbound.report.files.is_empty()
            {
                attachments::attach(conn, message, conversation, &inbound.report.files)?;
            }
        }
        let (mut ids, mut conversations, mut messages) = (Vec::new(), Vec::new(), Vec::new());
        for (row, disposition) in rows.iter().zip(&dispositions) {
            if let (Some(row), Some((conversation, message))) = (row, disposition.posted_into()) {
                ids.push(*row);
                conversations.push(conversation);
                messages.push(message);
            }
        }
        if !ids.is_empty() {
            use diesel::sql_types::{Array, BigInt};
            diesel::sql_query(
                "UPDATE inbound_emails e SET conversation_id = u.c, posted_message_id = u.m
                 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(id, c, m)
                 WHERE e.id = u.id",
            )
            .bind::<Array<BigInt>, _>(&ids)
            .bind::<Array<BigInt>, _>(&conversations)
            .bind::<Array<BigInt>, _>(&messages)
            .execute(conn)?;
        }
        // Each new email's source as received, with why it was set aside if it was not posted
        // (for the console: the Incoming log's source, and "post it anyway").
        let raws: Vec<_> = set
            .iter()
            .zip(&envelopes)
            .zip(&rows)
            .zip(&dispositions)
            .filter_map(|(((inbound, envelope), row), disposition)| {
                let row = (*row)?;
                let set_aside = match disposition {
                    Disposition::Ignored(r) | Disposition::Rejected(r) => Some(r.as_str()),
                    _ => None,
                };
                // Mail set aside is kept whole (it may be posted later); a posted email's
                // start only (its text and files are kept as the message).
                let kept = match set_aside {
                    Some(_) => &inbound.raw[..],
                    None if config.keep_source == 0 => return None,
                    None => &inbound.raw[..inbound.raw.len().min(config.keep_source)],
                };
                Some((
                    inbound_raw::inbound_email_id.eq(row),
                    inbound_raw::mail_from.eq(&envelope.mail_from),
                    inbound_raw::rcpt_to.eq(envelope.rcpts.join(",")),
                    inbound_raw::raw.eq(kept),
                    inbound_raw::set_aside.eq(set_aside),
                    inbound_raw::subject.eq(&inbound.report.subject),
                ))
            })
            .collect();
        if !raws.is_empty() {
            diesel::insert_into(inbound_raw::table)
                .values(raws)
                .execute(conn)?;
        }
        let entries: Vec<NewEmailLogEntry> = set
            .iter()
            .zip(&envelopes)
            .zip(&rows)
            .zip(&dispositions)
            .map(|(((inbound, envelope), row), disposition)| {
                let report = &inbound.report;
                let posted = disposition.posted_into();
                let reason = match disposition {
                    Disposition::Ignored(r) | Disposition::Rejected(r) => Some(r.clone()),
                    _ => report.extraction_note.clone(),
                };
                NewEmailLogEntry {
                    reason,
                    message_id: posted.map(|p| p.1),
                    conversation_id: posted.map(|p| p.0),
                    mail_from: report.from.clone(),
                    rcpt_to: Some(envelope.rcpts.join(",")),
                    subject: report.subject.clone(),
                    message_id_header: report.message_id.clone(),
                    rule: Some(report.verdict.as_str().into()),
                    action: Some(match posted {
                        Some(_) => disposition.action() + &files_summary(report),
                        None => disposition.action(),
                    }),
                    inbound_email_id: *row,
                    ..NewEmailLogEntry::inbound(disposition.status())
                }
            })
            .collect();
        email_log::write(conn, &entries)?;
        // Last, so the feed locks are held for the shortest time (see `live`).
        let bounced: Vec<(i64, &str)> = bounced.into_iter().map(|id| (id, "bounced")).collect();
        let live = tidings_common::live::emailed(conn, &bounced)?;
        Ok(Processed { dispositions, live })
    })
}

/// What the email log adds to a posted email's action: the files it brought, kept or not.
fn files_summary(report: &tidings_common::inbound::InboundReport) -> String {
    let mut out = String::new();
    if !report.files.is_empty() {
        let names: Vec<&str> = report.files.iter().map(|f| f.name.as_str()).collect();
        out.push_str(&format!(
            "; {} file{} kept: {}",
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        ));
    }
    for not_kept in &report.not_kept {
        out.push_str(&format!(
            "; not kept: {} ({})",
            not_kept.name, not_kept.reason
        ));
    }
    out
}

/// What a set became: one disposition per email, in order, and the people with new live
/// events (the bounces' `delivery` events), to announce after commit.
pub struct Processed {
    pub dispositions: Vec<Disposition>,
    pub live: Vec<i64>,
}

/// Why an email set aside could not be posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRecovered {
    /// No source is kept for it (an unknown id, or past the log's retention).
    NotKept,
    /// It was posted when it came in.
    WasPosted,
    /// An admin already posted it (as this message).
    Already(Option<i64>),
    /// Posting it failed for this reason (no sender, no conversation to post into, …).
    Refused(String),
}

impl std::fmt::Display for NotRecovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotRecovered::NotKept => write!(f, "no source is kept for this email"),
            NotRecovered::WasPosted => write!(f, "this email was posted when it came in"),
            NotRecovered::Already(Some(m)) => {
                write!(
                    f,
                    "this email was already posted by an admin, as message {m}"
                )
            }
            NotRecovered::Already(None) => write!(f, "this email was already posted by an admin"),
            NotRecovered::Refused(why) => write!(f, "it cannot be posted: {why}"),
        }
    }
}

#[derive(QueryableByName)]
struct Kept {
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    raw: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    mail_from: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    rcpt_to: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    set_aside: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    recovered_at: Option<chrono::DateTime<chrono::Utc>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    recovered_message_id: Option<i64>,
}

/// Posts an email that was set aside (ignored or rejected) as the person's email it is, once:
/// inspected again as human mail (the automatic-mail checks skipped), its failed
/// authentication and the rate limit overruled, then threaded as any email (into the
/// conversation it answers, or a new ticket for a customer's fresh email). Recorded on its
/// row and in the email log with who did it (`admin`: their id and name; `None`: the API
/// token). Nothing is written when it cannot be posted.
pub fn recover(
    conn: &mut PgConnection,
    config: &Config,
    inbound_email_id: i64,
    admin: Option<(i64, &str)>,
) -> Result<std::result::Result<Disposition, NotRecovered>> {
    conn.transaction(|conn| {
        let kept: Option<Kept> = diesel::sql_query(
            "SELECT raw, mail_from, rcpt_to, set_aside, recovered_at, recovered_message_id
             FROM inbound_raw WHERE inbound_email_id = $1 FOR UPDATE",
        )
        .bind::<diesel::sql_types::BigInt, _>(inbound_email_id)
        .get_result(conn)
        .optional()?;
        let Some(kept) = kept else {
            return Ok(Err(NotRecovered::NotKept));
        };
        if kept.recovered_at.is_some() {
            return Ok(Err(NotRecovered::Already(kept.recovered_message_id)));
        }
        let Some(set_aside) = kept.set_aside else {
            return Ok(Err(NotRecovered::WasPosted));
        };
        let context = tidings_common::inbound::InboundContext::from_config(config);
        let mut report = tidings_common::inbound::inspect_as_human(&kept.raw, &context);
        if report.verdict == tidings_common::inbound::InboundVerdict::Rejected {
            return Ok(Err(NotRecovered::Refused(
                report.reason.unwrap_or_else(|| "unreadable".into()),
            )));
        }
        // The admin vouches for the sender.
        report.auth_failure = None;
        let envelope = Envelope {
            mail_from: kept.mail_from,
            rcpts: kept.rcpt_to.split(',').map(str::to_string).collect(),
            client: None,
        };
        let email = (&report, &envelope);
        let mut bounced = Vec::new();
        let plans = thread::plan_set(conn, config, &[email], &mut bounced)?;
        thread::lock(conn, &plans)?;
        // The rate limit does not hold back what an admin posts by hand.
        let mut recent = thread::RecentPosts::default();
        let disposition = thread::execute_set(conn, config, &[email], plans, &mut recent)?
            .into_iter()
            .next()
            .expect("one disposition for one email");
        let Some((conversation, message)) = disposition.posted_into() else {
            let why = match &disposition {
                Disposition::Ignored(r) | Disposition::Rejected(r) => r.clone(),
                other => other.action(),
            };
            return Ok(Err(NotRecovered::Refused(why)));
        };
        if !report.files.is_empty() {
            attachments::attach(conn, message, conversation, &report.files)?;
        }
        diesel::update(inbound_emails::table.find(inbound_email_id))
            .set((
                inbound_emails::conversation_id.eq(conversation),
                inbound_emails::posted_message_id.eq(message),
            ))
            .execute(conn)?;
        diesel::update(inbound_raw::table.find(inbound_email_id))
            .set((
                inbound_raw::recovered_at.eq(diesel::dsl::now),
                inbound_raw::recovered_by.eq(admin.map(|a| a.0)),
                inbound_raw::recovered_message_id.eq(message),
            ))
            .execute(conn)?;
        let entry = NewEmailLogEntry {
            reason: Some(format!("set aside ({set_aside}); posted by an admin")),
            message_id: Some(message),
            conversation_id: Some(conversation),
            mail_from: report.from.clone(),
            rcpt_to: Some(envelope.rcpts.join(",")),
            subject: report.subject.clone(),
            message_id_header: report.message_id.clone(),
            rule: Some("recovered".into()),
            action: Some(format!(
                "{} by {}{}",
                disposition.action(),
                match admin {
                    Some((id, name)) => format!("{name} (person {id})"),
                    None => "the host application (API token)".into(),
                },
                files_summary(&report)
            )),
            inbound_email_id: Some(inbound_email_id),
            ..NewEmailLogEntry::inbound(disposition.status())
        };
        email_log::write(conn, &[entry])?;
        Ok(Ok(disposition))
    })
}
