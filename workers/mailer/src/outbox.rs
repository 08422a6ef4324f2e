//! Sending outbox emails: system notifications (SPEC M4, E1–E3) and automation emails (M3).
//!
//! Like notifications, each row moves `pending → sending → sent | skipped | failed` by
//! conditional updates, so a redelivered announcement never sends twice. Every check is made
//! again at send time: a system notification or automation disabled since, a preference
//! turned off, an inactive or suppressed recipient.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use lettre::AsyncTransport;
use serde_json::{Value, json};
use tidings_common::db::models::{OutboxEmail, Person};
use tidings_common::db::schema::*;
use tidings_common::mail::{self, OutboundEmail};
use tidings_common::{Error, Result};
use tracing::{info, warn};

use crate::Mailer;

/// A claimed outbox email and what the send-time checks found.
struct Claimed {
    email: OutboxEmail,
    claimed_at: DateTime<Utc>,
    recipient: Option<Person>,
    /// Why it must not go, if it must not.
    skip: Option<String>,
}

/// How sending one ended.
struct Finished {
    id: i64,
    claimed_at: DateTime<Utc>,
    state: &'static str,
    log_status: &'static str,
    reason: Option<String>,
    smtp_reply: Option<String>,
    retry_at: Option<DateTime<Utc>>,
    rcpt_to: Option<String>,
    subject: Option<String>,
}

impl Mailer {
    /// Claims, checks, renders, sends and records the outbox emails `ids`.
    pub async fn deliver_outbox(&self, ids: Vec<i64>) -> Result<usize> {
        let lease =
            chrono::Duration::from_std(self.config.send_lease).unwrap_or(chrono::Duration::MAX);
        let claimed = self.db.run(move |conn| claim(conn, &ids, lease)).await?;
        let count = claimed.len();
        let sends = claimed.into_iter().map(|c| self.finish(c));
        let finished = futures_util::future::join_all(sends).await;
        self.record_outbox(finished).await?;
        Ok(count)
    }

    async fn finish(&self, c: Claimed) -> Finished {
        let mut done = Finished {
            id: c.email.id,
            claimed_at: c.claimed_at,
            state: "skipped",
            log_status: "skipped",
            reason: c.skip.clone(),
            smtp_reply: None,
            retry_at: None,
            rcpt_to: c.recipient.as_ref().and_then(|r| r.email.clone()),
            subject: None,
        };
        let (None, Some(recipient)) = (&c.skip, &c.recipient) else {
            return done;
        };
        let mut data = c.email.data.clone();
        if !data.is_object() {
            data = json!({});
        }
        data["recipient"] = json!({"id": recipient.id, "name": recipient.name,
                                   "email": recipient.email, "kind": recipient.kind});
        data["app_url"] = Value::String(self.config.public_url.clone());
        let retry = |done: &mut Finished, reason: String, reply: Option<String>| {
            let tiers = &self.config.retry_tiers;
            let attempt = usize::try_from(c.email.attempts).unwrap_or(1).max(1);
            done.reason = Some(reason);
            done.smtp_reply = reply;
            if attempt > tiers.len() {
                done.state = "failed";
                done.log_status = "failed";
            } else {
                done.state = "pending";
                done.log_status = "deferred";
                done.retry_at = Some(
                    Utc::now()
                        + chrono::Duration::from_std(tiers[attempt - 1])
                            .unwrap_or(chrono::Duration::MAX),
                );
            }
        };
        let content = match self.templates.current().render(
            &c.email.template,
            recipient.locale.as_deref(),
            &data,
        ) {
            Ok(content) => content,
            Err(e) => {
                warn!(outbox.id = c.email.id, error = %e, "template failed to render");
                retry(&mut done, e.to_string(), None);
                return done;
            }
        };
        done.subject = Some(content.subject.clone());
        let email = OutboundEmail {
            from: self.config.mail_from.clone(),
            to_name: recipient.name.clone(),
            to_address: recipient.email.clone().unwrap_or_default(),
            reply_to: self.config.mail_from.clone(),
            message_id: c.email.email_message_id.clone(),
            references: Vec::new(),
            unsubscribe_url: None,
            envelope_from: Some(format!(
                "{}@{}",
                mail::BOUNCE_MAILBOX,
                self.config.reply_domain
            )),
            content,
        };
        let built = match mail::build_email(&email) {
            Ok(built) => built,
            Err(e) => {
                done.state = "failed";
                done.log_status = "failed";
                done.reason = Some(e.to_string());
                return done;
            }
        };
        let sent = match self.smtp_slots.acquire().await {
            Ok(_slot) => self.transport.send(built).await,
            Err(e) => {
                retry(&mut done, e.to_string(), None);
                return done;
            }
        };
        let to = mail::mask_address(&email.to_address);
        match sent {
            Ok(response) => {
                info!(
                    outbox.id = c.email.id,
                    to,
                    source = c.email.source,
                    "email sent"
                );
                done.state = "sent";
                done.log_status = "sent";
                done.reason = None;
                done.smtp_reply = Some(format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                ));
            }
            Err(e) if e.is_permanent() => {
                warn!(outbox.id = c.email.id, to, error = %e, "email refused");
                done.state = "failed";
                done.log_status = "failed";
                done.reason = Some("refused by the SMTP server".into());
                done.smtp_reply = Some(e.to_string());
            }
            Err(e) => {
                warn!(outbox.id = c.email.id, to, error = %e, "email deferred");
                retry(
                    &mut done,
                    "temporary SMTP failure".into(),
                    Some(e.to_string()),
                );
            }
        }
        done
    }

    /// Records every end in one transaction, only where the claim still holds, with a log row
    /// for each; retried through a short database outage (the emails went out already).
    async fn record_outbox(&self, finished: Vec<Finished>) -> Result<()> {
        if finished.is_empty() {
            return Ok(());
        }
        let finished = std::sync::Arc::new(finished);
        let mail_from = self.config.mail_from.clone();
        let mut pause = std::time::Duration::from_millis(200);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (finished, mail_from) = (finished.clone(), mail_from.clone());
            let attempt = self
                .db
                .run(move |conn| {
                    conn.transaction(|conn| {
                        for f in finished.iter() {
                            let o = outbox_emails::table
                                .find(f.id)
                                .filter(outbox_emails::state.eq("sending"))
                                .filter(outbox_emails::claimed_at.eq(f.claimed_at));
                            let sent_at = (f.state == "sent").then(Utc::now);
                            let updated: Option<(Option<i64>, String, String)> = diesel::update(o)
                                .set((
                                    outbox_emails::state.eq(f.state),
                                    outbox_emails::reason.eq(&f.reason),
                                    outbox_emails::smtp_reply.eq(&f.smtp_reply),
                                    outbox_emails::sent_at.eq(sent_at),
                                    outbox_emails::due_at.eq(f.retry_at.unwrap_or_else(Utc::now)),
                                ))
                                .returning((
                                    outbox_emails::conversation_id,
                                    outbox_emails::source,
                                    outbox_emails::email_message_id,
                                ))
                                .get_result(conn)
                                .optional()?;
                            // Not updated: the claim was taken over; its new owner records it.
                            let Some((conversation_id, source, message_id_header)) = updated else {
                                continue;
                            };
                            diesel::insert_into(email_log::table)
                                .values((
                                    email_log::direction.eq("outbound"),
                                    email_log::status.eq(f.log_status),
                                    email_log::reason.eq(&f.reason),
                                    email_log::outbox_id.eq(f.id),
                                    email_log::conversation_id.eq(conversation_id),
                                    email_log::mail_from.eq(&mail_from),
                                    email_log::rcpt_to.eq(&f.rcpt_to),
                                    email_log::subject.eq(&f.subject),
                                    email_log::message_id_header.eq(message_id_header),
                                    email_log::smtp_reply.eq(&f.smtp_reply),
                                    email_log::rule.eq(source),
                                ))
                                .execute(conn)?;
                        }
                        Ok::<_, Error>(())
                    })
                })
                .await;
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && std::time::Instant::now() < deadline => {
                    warn!(error = %e, "recording outbox emails failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Claims the due ones of `ids` and makes the send-time checks, in one transaction.
fn claim(conn: &mut PgConnection, ids: &[i64], lease: chrono::Duration) -> Result<Vec<Claimed>> {
    conn.transaction(|conn| {
        let now = Utc::now();
        let rows: Vec<OutboxEmail> = diesel::update(
            outbox_emails::table
                .filter(outbox_emails::id.eq_any(ids))
                .filter(outbox_emails::due_at.le(now))
                .filter(
                    outbox_emails::state.eq("pending").or(outbox_emails::state
                        .eq("sending")
                        .and(outbox_emails::claimed_at.lt(now - lease))),
                ),
        )
        .set((
            outbox_emails::state.eq("sending"),
            outbox_emails::claimed_at.eq(diesel::dsl::now),
            outbox_emails::attempts.eq(outbox_emails::attempts + 1),
        ))
        .returning(OutboxEmail::as_returning())
        .get_results(conn)?;
        let mut claimed = Vec::with_capacity(rows.len());
        for email in rows {
            let recipient: Option<Person> = people::table
                .find(email.recipient_id)
                .select(Person::as_select())
                .first(conn)
                .optional()?;
            let skip = send_time_check(conn, &email, recipient.as_ref())?;
            claimed.push(Claimed {
                claimed_at: email.claimed_at.unwrap_or(now),
                email,
                recipient,
                skip,
            });
        }
        Ok(claimed)
    })
}

/// Why an outbox email must not go now, if it must not.
fn send_time_check(
    conn: &mut PgConnection,
    email: &OutboxEmail,
    recipient: Option<&Person>,
) -> QueryResult<Option<String>> {
    let Some(recipient) = recipient else {
        return Ok(Some("recipient no longer exists".into()));
    };
    if !recipient.active {
        return Ok(Some("recipient is inactive".into()));
    }
    let Some(address) = &recipient.email else {
        return Ok(Some("recipient has no email address".into()));
    };
    let suppressed: bool = email_suppressions::table
        .find(address.to_ascii_lowercase())
        .select(email_suppressions::suppressed)
        .first(conn)
        .optional()?
        .unwrap_or(false);
    if suppressed {
        return Ok(Some("address suppressed after bounces".into()));
    }
    if let Some(event) = &email.system_event {
        let (enabled, can_disable): (bool, bool) = system_notifications::table
            .find(event)
            .select((
                system_notifications::enabled,
                system_notifications::can_disable,
            ))
            .first(conn)?;
        if !enabled && can_disable {
            return Ok(Some(format!("system notification {event} is disabled")));
        }
        let preference = match event.as_str() {
            "item_assigned" | "item_unassigned" => Some(("email_assignments", "E1")),
            "project_member_added" => Some(("email_project_members", "E2")),
            _ => None,
        };
        if let Some((column, rule)) = preference {
            let on: Option<bool> = match column {
                "email_assignments" => user_preferences::table
                    .find(recipient.id)
                    .select(user_preferences::email_assignments)
                    .first(conn)
                    .optional()?,
                _ => user_preferences::table
                    .find(recipient.id)
                    .select(user_preferences::email_project_members)
                    .first(conn)
                    .optional()?,
            };
            if on != Some(true) {
                return Ok(Some(format!("{rule}: {column} is off")));
            }
        }
    }
    if email.source.starts_with("automation:") {
        let enabled: Option<bool> = match email.automation_id {
            Some(id) => automations::table
                .find(id)
                .select(automations::enabled)
                .first(conn)
                .optional()?,
            None => None,
        };
        match enabled {
            None => return Ok(Some("its automation was deleted".into())),
            Some(false) => return Ok(Some("its automation is disabled".into())),
            Some(true) => {}
        }
    }
    Ok(None)
}
