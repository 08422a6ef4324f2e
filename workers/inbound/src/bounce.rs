//! Bounces: marking the email a delivery status notification proves it reports on as `bounced`
//! (log and delivery status), and suppressing the address after a hard bounce or the third soft
//! one.

use diesel::prelude::*;
use tidings_common::db::models::{Direction, LogStatus, NotificationState, OutboxState};
use tidings_common::db::schema::{email_log, notifications};
use tidings_common::db::unsubscribe;
use tidings_common::inbound::{BounceReport, InboundReport};
use tidings_common::mail::{self, SentEmail, UnsubscribeScope, UnsubscribeToken};
use tidings_common::rules::MessageKind;
use tidings_common::{Config, Result};

use crate::set::{Disposition, Envelope};

/// A bounce, honoured only when it proves which of our emails failed: it came back to that
/// email's signed envelope sender (VERP), or it cites the Message-ID of an email we sent. Then
/// that email is marked `bounced` (log and delivery status) and the address *it was sent to*
/// counts a bounce (suppressed after a hard one or the third soft one). The addresses a report
/// names are never trusted on their own: anything else that looks like a bounce is logged and
/// suppresses nobody. A report that says `delivered`, `relayed`, `expanded` or `delayed` is
/// logged as what it is and changes nothing.
pub(crate) fn record_bounce(
    conn: &mut PgConnection,
    config: &Config,
    report: &InboundReport,
    envelope: &Envelope,
    bounced: &mut Vec<i64>,
) -> Result<Disposition> {
    let bounce = report.bounce.clone().unwrap_or_default();
    if let Some(what) = bounce.not_a_failure() {
        return Ok(Disposition::Ignored(format!(
            "a delivery report saying {what}; no delivery state changed, nobody suppressed"
        )));
    }
    let status = bounce
        .status
        .clone()
        .unwrap_or_else(|| if bounce.permanent { "5.0.0" } else { "4.0.0" }.into());
    let (originals, proof) = proven_originals(conn, config, &bounce, envelope)?;
    if originals.is_empty() {
        return Ok(Disposition::Ignored(
            "looks like a bounce but proves nothing about our mail (not sent to a signed bounce address, cites no Message-ID of ours); nobody suppressed".into(),
        ));
    }
    let mut addresses = Vec::new();
    for original in &originals {
        addresses.extend(mark_bounced(conn, original, &status, bounced)?);
    }
    if addresses.is_empty() {
        return Ok(Disposition::Ignored(format!(
            "a bounce about no email we sent (by {proof}); nobody suppressed"
        )));
    }
    let mut suppressed = Vec::new();
    for address in &addresses {
        if count_bounce(conn, address, bounce.permanent, &status)? {
            suppressed.push(mail::mask_address(address));
        }
    }
    let masked: Vec<String> = addresses.iter().map(|a| mail::mask_address(a)).collect();
    Ok(Disposition::Ignored(format!(
        "bounce {status} ({}) for {}, proven by {proof}{}",
        if bounce.permanent { "hard" } else { "soft" },
        masked.join(", "),
        if suppressed.is_empty() {
            String::new()
        } else {
            format!("; suppressed: {}", suppressed.join(", "))
        },
    )))
}

/// The Message-IDs of our emails a report proves it concerns, and how: the signed bounce
/// address it was sent to, then signed bounce addresses it quotes (the returned copy's
/// `Return-Path`), then a Message-ID of ours it cites.
fn proven_originals(
    conn: &mut PgConnection,
    config: &Config,
    report: &BounceReport,
    envelope: &Envelope,
) -> Result<(Vec<String>, &'static str)> {
    let mut originals = Vec::new();
    let signed = |local: &str| SentEmail::from_bounce_local(local, &config.token_secret);
    for rcpt in &envelope.rcpts {
        if let Some((local, domain)) = rcpt.rsplit_once('@')
            && domain.eq_ignore_ascii_case(&config.reply_domain)
            && let Some(email) = signed(local)
        {
            originals.extend(message_id_of(conn, email)?);
        }
    }
    if !originals.is_empty() {
        return Ok((originals, "its signed bounce address"));
    }
    for local in &report.signed {
        if let Some(email) = signed(local) {
            originals.extend(message_id_of(conn, email)?);
        }
    }
    if !originals.is_empty() {
        return Ok((originals, "the signed bounce address it quotes"));
    }
    originals.extend(report.original_message_id.clone());
    Ok((originals, "the Message-ID it cites"))
}

/// A complaint (SPEC T5): when it proves which of our emails it concerns (as a bounce does, or
/// by the signed unsubscribe link it quotes), the emails of that kind stop for the person that
/// email went to, as their unsubscribe link would; the log says what stopped. Never posted.
/// Unproven complaints change nothing and are logged as ignored.
pub(crate) fn record_complaint(
    conn: &mut PgConnection,
    config: &Config,
    report: &InboundReport,
    envelope: &Envelope,
) -> Result<Disposition> {
    let complaint = report.bounce.clone().unwrap_or_default();
    let kind = complaint.feedback_type.as_deref().unwrap_or("abuse");
    let mut stops: Vec<(i64, UnsubscribeScope)> = Vec::new();
    let mut proof = "the signed unsubscribe link it quotes";
    for token in &complaint.unsubscribe {
        // An expired link still proves which email it came in.
        if let Ok(t) = UnsubscribeToken::decode(token, &config.token_secret, i64::MIN) {
            stops.push((t.person_id, t.scope));
        }
    }
    let mut stopped = Vec::new();
    if stops.is_empty() {
        let (originals, how) = proven_originals(conn, config, &complaint, envelope)?;
        proof = how;
        for original in originals.iter().take(10) {
            stops.extend(scope_of(conn, original, &mut stopped)?);
        }
    }
    stops.sort_by_key(|(person, scope)| (*person, format!("{scope:?}")));
    stops.dedup();
    if stops.is_empty() && stopped.is_empty() {
        return Ok(Disposition::Ignored(format!(
            "a complaint report ({kind}) that proves nothing about our mail (no signed address, unsubscribe link or Message-ID of ours); nothing changed"
        )));
    }
    for (person_id, scope) in stops.into_iter().take(10) {
        let exists: Option<i64> = tidings_common::db::schema::people::table
            .find(person_id)
            .select(tidings_common::db::schema::people::id)
            .first(conn)
            .optional()?;
        if exists.is_none() {
            continue;
        }
        unsubscribe::apply(conn, person_id, scope, "complaint")?;
        tracing::info!(
            person.id = person_id,
            complaint = kind,
            "complaint: emails stopped"
        );
        stopped.push(format!(
            "{} for person {person_id}",
            unsubscribe::describe(scope)
        ));
    }
    if stopped.is_empty() {
        return Ok(Disposition::Ignored(format!(
            "a complaint report ({kind}) about people who no longer exist; nothing changed"
        )));
    }
    Ok(Disposition::Ignored(format!(
        "complaint ({kind}), proven by {proof}: stopped {}",
        stopped.join("; ")
    )))
}

/// Who the email with Message-ID `original` went to, and what turning its kind off means for
/// them: a user's emails of that message kind, a customer's emails about that conversation.
/// A system email that has a switch (assignments, project members) turns that switch off here,
/// said in `stopped`.
fn scope_of(
    conn: &mut PgConnection,
    original: &str,
    stopped: &mut Vec<String>,
) -> Result<Vec<(i64, UnsubscribeScope)>> {
    use tidings_common::db::schema::{messages, outbox_emails as o, people};
    let notified: Option<(i64, i64, bool, String, String)> = notifications::table
        .inner_join(messages::table.on(messages::id.eq(notifications::message_id)))
        .inner_join(people::table.on(people::id.eq(notifications::recipient_id)))
        .filter(notifications::email_message_id.eq(original))
        .select((
            notifications::recipient_id,
            notifications::conversation_id,
            messages::internal,
            people::kind,
            diesel::dsl::sql::<diesel::sql_types::Text>(
                "(SELECT kind FROM people a WHERE a.id = messages.author_id)",
            ),
        ))
        .first(conn)
        .optional()?;
    if let Some((person, conversation, internal, kind, author_kind)) = notified {
        let scope = if kind == "customer" {
            UnsubscribeScope::CustomerConversation(conversation)
        } else if internal {
            UnsubscribeScope::UserKind(MessageKind::Internal)
        } else if author_kind == "customer" {
            UnsubscribeScope::UserKind(MessageKind::FromCustomer)
        } else {
            UnsubscribeScope::UserKind(MessageKind::ToCustomer)
        };
        return Ok(vec![(person, scope)]);
    }
    let outbox: Option<(i64, Option<String>)> = o::table
        .filter(o::email_message_id.eq(original))
        .select((o::recipient_id, o::system_event))
        .first(conn)
        .optional()?;
    let Some((person, event)) = outbox else {
        return Ok(Vec::new());
    };
    let field = match event.as_deref() {
        Some("item_assigned" | "item_unassigned") => "email_assignments",
        Some("project_member_added") => "email_project_members",
        _ => return Ok(Vec::new()),
    };
    use tidings_common::db::schema::{preference_changes as c, user_preferences as u};
    diesel::insert_into(u::table)
        .values(u::person_id.eq(person))
        .on_conflict_do_nothing()
        .execute(conn)?;
    let row = u::table.find(person);
    if field == "email_assignments" {
        diesel::update(row)
            .set(u::email_assignments.eq(false))
            .execute(conn)?;
    } else {
        diesel::update(row)
            .set(u::email_project_members.eq(false))
            .execute(conn)?;
    }
    diesel::insert_into(c::table)
        .values((
            c::person_id.eq(person),
            c::field.eq(field),
            c::new_value.eq("false"),
            c::source.eq("complaint"),
        ))
        .execute(conn)?;
    stopped.push(format!("{field} for person {person}"));
    Ok(Vec::new())
}

/// The Message-ID of the email a signed bounce address stands for.
fn message_id_of(conn: &mut PgConnection, email: SentEmail) -> Result<Option<String>> {
    use tidings_common::db::schema::outbox_emails as o;
    Ok(match email {
        SentEmail::Notification(id) => notifications::table
            .find(id)
            .select(notifications::email_message_id)
            .first(conn)
            .optional()?,
        SentEmail::Outbox(id) => o::table
            .find(id)
            .select(o::email_message_id)
            .first(conn)
            .optional()?,
    })
}

/// Marks the sent email with Message-ID `original` as bounced, in the log and on its
/// notification or outbox row; returns the addresses it was sent to (none if we never sent it).
/// The bounced notifications are added to `bounced`, for their live `delivery` events.
fn mark_bounced(
    conn: &mut PgConnection,
    original: &str,
    status: &str,
    bounced: &mut Vec<i64>,
) -> Result<Vec<String>> {
    use tidings_common::db::schema::outbox_emails as o;
    let reply = format!("DSN {status}");
    let ours = email_log::table
        .filter(email_log::message_id_header.eq(original))
        .filter(email_log::direction.eq(Direction::Outbound));
    // A later report on the same email (a delay notice, then the failure) counts again.
    let sent_to: Vec<Option<String>> = ours
        .filter(email_log::status.eq_any([LogStatus::Sent, LogStatus::Bounced]))
        .select(email_log::rcpt_to)
        .load(conn)?;
    diesel::update(ours.filter(email_log::status.eq(LogStatus::Sent)))
        .set((
            email_log::status.eq(LogStatus::Bounced),
            email_log::smtp_reply.eq(&reply),
        ))
        .execute(conn)?;
    let before = bounced.len();
    bounced.extend(
        diesel::update(
            notifications::table
                .filter(notifications::email_message_id.eq(original))
                .filter(notifications::state.eq(NotificationState::Sent)),
        )
        .set((
            notifications::reason.eq("bounced"),
            notifications::smtp_reply.eq(&reply),
        ))
        .returning(notifications::id)
        .get_results::<i64>(conn)?,
    );
    for _ in before..bounced.len() {
        tidings_common::observe::email("notification", "bounced");
    }
    diesel::update(
        o::table
            .filter(o::email_message_id.eq(original))
            .filter(o::state.eq(OutboxState::Sent)),
    )
    .set((o::reason.eq("bounced"), o::smtp_reply.eq(&reply)))
    .returning(o::source)
    .get_results::<String>(conn)?
    .iter()
    .for_each(|source| {
        use tidings_common::observe;
        observe::email(observe::outbox_source(source), "bounced");
    });
    let mut addresses: Vec<String> = sent_to
        .into_iter()
        .flatten()
        .map(|a| a.to_ascii_lowercase())
        .collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

/// Counts one bounce for `address`; returns whether the address is now suppressed (after a
/// hard bounce, or the third soft one).
fn count_bounce(
    conn: &mut PgConnection,
    address: &str,
    permanent: bool,
    status: &str,
) -> Result<bool> {
    use tidings_common::db::schema::email_suppressions as s;
    let hard = i32::from(permanent);
    let soft = i32::from(!permanent);
    Ok(diesel::insert_into(s::table)
        .values((
            s::address.eq(address),
            s::hard_bounces.eq(hard),
            s::soft_bounces.eq(soft),
            s::suppressed.eq(permanent),
            s::last_status.eq(status),
        ))
        .on_conflict(s::address)
        .do_update()
        .set((
            s::hard_bounces.eq(s::hard_bounces + hard),
            s::soft_bounces.eq(s::soft_bounces + soft),
            s::suppressed.eq(s::suppressed.or(diesel::dsl::sql::<diesel::sql_types::Bool>(
                &format!(
                    "{permanent} OR email_suppressions.soft_bounces + {soft} >= {SOFT_BOUNCES_TO_SUPPRESS}"
                ),
            ))),
            s::last_status.eq(status),
            s::updated_at.eq(diesel::dsl::now),
        ))
        .returning(s::suppressed)
        .get_result(conn)?)
}

/// Soft bounces in a row after which an address is suppressed.
const SOFT_BOUNCES_TO_SUPPRESS: i32 = 3;
