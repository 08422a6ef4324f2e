//! Sending one notification: claim, re-check, render, send, record.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use lettre::AsyncTransport;
use serde_json::{Value, json};
use tidings_common::db::models::*;
use tidings_common::db::schema::*;
use tidings_common::mail::{self, OutboundEmail, ReplyToken};
use tidings_common::rules::{self, SendTimeFacts, SkipReason};
use tidings_common::templates::RenderedEmail;
use tidings_common::{Error, NOTIFICATION_TEMPLATE, Result};
use tracing::{Instrument, info, warn};

use crate::Mailer;

/// How handling one notification ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Sent, skipped, failed, or already handled by someone else: nothing more to do.
    Done,
    /// Try again after retry tier `tier`.
    RetryLater { tier: usize },
}

/// A notification this worker has claimed, and the claim time that proves it still holds it.
struct Claim {
    notification: Notification,
    claimed_at: DateTime<Utc>,
}

/// Facts read at send time for one claimed notification.
struct Context {
    facts: SendTimeFacts,
    recipient: Person,
    data: Value,
    references: Vec<String>,
    conversation_id: i64,
}

/// How a claimed notification ends, for the conditional update that records it.
enum Finish {
    Sent {
        reply: String,
    },
    Skipped(SkipReason),
    Failed {
        reason: String,
        reply: Option<String>,
    },
    Deferred {
        reason: String,
        reply: Option<String>,
        retry_in: std::time::Duration,
    },
}

impl Mailer {
    /// Handles one notification of a due batch.
    pub async fn deliver(&self, notification_id: i64) -> Result<Delivered> {
        let span = tracing::info_span!("notification", notification.id = notification_id);
        self.deliver_inner(notification_id).instrument(span).await
    }

    async fn deliver_inner(&self, notification_id: i64) -> Result<Delivered> {
        let lease =
            chrono::Duration::from_std(self.config.send_lease).unwrap_or(chrono::Duration::MAX);
        let claim = self
            .db
            .run(move |conn| claim(conn, notification_id, lease))
            .await?;
        let claim = match claim {
            Ok(claim) => claim,
            // Another worker holds a live claim: look again once it has had time to finish.
            Err(Some(state)) if state == "sending" => return Ok(Delivered::RetryLater { tier: 0 }),
            Err(_) => return Ok(Delivered::Done),
        };
        let id = claim.notification.id;
        let message_id = claim.notification.message_id;
        let recipient_id = claim.notification.recipient_id;
        let domain = self.config.reply_domain.clone();
        let context = self
            .db
            .run(move |conn| load_context(conn, message_id, recipient_id, &domain))
            .await?;
        let context = match context {
            Some(context) => context,
            None => {
                self.finish(
                    &claim,
                    None,
                    Finish::Failed {
                        reason: "message or recipient no longer exists".into(),
                        reply: None,
                    },
                )
                .await?;
                return Ok(Delivered::Done);
            }
        };
        if let Some(reason) = rules::skip_reason(&context.facts) {
            self.finish(&claim, Some(&context), Finish::Skipped(reason))
                .await?;
            return Ok(Delivered::Done);
        }
        let reply_address = ReplyToken {
            conversation_id: context.conversation_id,
            person_id: recipient_id,
            issued_day: Utc::now().timestamp().div_euclid(86_400),
        }
        .address(&self.config.token_secret, &self.config.reply_domain);
        let mut data = context.data.clone();
        data["reply_address"] = json!(reply_address);
        let content = match self.templates.render(NOTIFICATION_TEMPLATE, &data) {
            Ok(content) => content,
            Err(e) => {
                warn!(error = %e, "template failed to render");
                return self
                    .retry_or_fail(&claim, &context, e.to_string(), None)
                    .await;
            }
        };
        let email = OutboundEmail {
            from: self.config.mail_from.clone(),
            to_name: context.recipient.name.clone(),
            to_address: context.recipient.email.clone().unwrap_or_default(),
            reply_to: reply_address,
            message_id: claim.notification.email_message_id.clone(),
            references: context.references.clone(),
            content: content.clone(),
        };
        let built = match mail::build_email(&email) {
            Ok(built) => built,
            Err(e) => {
                self.finish(
                    &claim,
                    Some(&context),
                    Finish::Failed {
                        reason: e.to_string(),
                        reply: None,
                    },
                )
                .await?;
                return Ok(Delivered::Done);
            }
        };
        let sent = {
            let _slot = self
                .smtp_slots
                .acquire()
                .await
                .map_err(|e| Error::Task(e.to_string()))?;
            self.transport.send(built).await
        };
        let to = mail::mask_address(&email.to_address);
        match sent {
            Ok(response) => {
                let reply = format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                );
                info!(notification.id = id, to, "email sent");
                self.finish_with_subject(&claim, &context, &content, Finish::Sent { reply })
                    .await?;
                Ok(Delivered::Done)
            }
            Err(e) if e.is_permanent() => {
                warn!(notification.id = id, to, error = %e, "email refused");
                self.finish_with_subject(
                    &claim,
                    &context,
                    &content,
                    Finish::Failed {
                        reason: "refused by the SMTP server".into(),
                        reply: Some(e.to_string()),
                    },
                )
                .await?;
                Ok(Delivered::Done)
            }
            Err(e) => {
                warn!(notification.id = id, to, error = %e, "email deferred");
                self.retry_or_fail(
                    &claim,
                    &context,
                    "temporary SMTP failure".into(),
                    Some(e.to_string()),
                )
                .await
            }
        }
    }

    /// Returns the notification to `pending` for the next retry tier, or fails it after the last.
    async fn retry_or_fail(
        &self,
        claim: &Claim,
        context: &Context,
        reason: String,
        reply: Option<String>,
    ) -> Result<Delivered> {
        let attempts = claim.notification.attempts as usize;
        let tiers = &self.config.retry_tiers;
        if attempts > tiers.len() {
            self.finish(
                claim,
                Some(context),
                Finish::Failed {
                    reason: format!("{reason}; gave up after {attempts} attempts"),
                    reply,
                },
            )
            .await?;
            return Ok(Delivered::Done);
        }
        let tier = attempts.saturating_sub(1);
        self.finish(
            claim,
            Some(context),
            Finish::Deferred {
                reason,
                reply,
                retry_in: tiers[tier],
            },
        )
        .await?;
        Ok(Delivered::RetryLater { tier })
    }

    async fn finish_with_subject(
        &self,
        claim: &Claim,
        context: &Context,
        content: &RenderedEmail,
        how: Finish,
    ) -> Result<()> {
        self.record(claim, Some(context), Some(content.subject.clone()), how)
            .await
    }

    async fn finish(&self, claim: &Claim, context: Option<&Context>, how: Finish) -> Result<()> {
        self.record(claim, context, None, how).await
    }

    /// Records the end of a claim: the state change (only if the claim still holds) and the
    /// log row, in one transaction.
    async fn record(
        &self,
        claim: &Claim,
        context: Option<&Context>,
        subject: Option<String>,
        how: Finish,
    ) -> Result<()> {
        let n = &claim.notification;
        let (state, status, reason, reply, retry_in) = match how {
            Finish::Sent { reply } => ("sent", "sent", None, Some(reply), None),
            Finish::Skipped(r) => (
                "skipped",
                "skipped",
                Some(r.as_str().to_string()),
                None,
                None,
            ),
            Finish::Failed { reason, reply } => ("failed", "failed", Some(reason), reply, None),
            Finish::Deferred {
                reason,
                reply,
                retry_in,
            } => ("pending", "deferred", Some(reason), reply, Some(retry_in)),
        };
        let entry = NewEmailLogEntry {
            direction: "outbound".into(),
            status: status.into(),
            reason: reason.clone(),
            notification_id: Some(n.id),
            message_id: Some(n.message_id),
            conversation_id: Some(n.conversation_id),
            mail_from: Some(self.config.mail_from.clone()),
            rcpt_to: context.and_then(|c| c.recipient.email.clone()),
            subject,
            message_id_header: Some(n.email_message_id.clone()),
            smtp_reply: reply.clone(),
        };
        let id = n.id;
        let claimed_at = claim.claimed_at;
        let updated = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let now = Utc::now();
                    let due_at = match retry_in {
                        Some(d) => {
                            now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
                        }
                        None => now,
                    };
                    let updated = diesel::update(
                        notifications::table
                            .find(id)
                            .filter(notifications::state.eq("sending"))
                            .filter(notifications::claimed_at.eq(claimed_at)),
                    )
                    .set((
                        notifications::state.eq(state),
                        notifications::reason.eq(&reason),
                        notifications::smtp_reply.eq(&reply),
                        notifications::updated_at.eq(now),
                        notifications::due_at.eq(due_at),
                        notifications::sent_at.eq((state == "sent").then_some(now)),
                    ))
                    .execute(conn)?;
                    if updated == 1 {
                        diesel::insert_into(email_log::table)
                            .values(&entry)
                            .execute(conn)?;
                    }
                    Ok::<_, Error>(updated)
                })
            })
            .await?;
        if updated == 0 {
            warn!(
                notification.id = id,
                "claim was taken over before it finished; leaving it to the new owner"
            );
        }
        Ok(())
    }
}

/// Claims a notification for sending: `pending`, or `sending` whose lease ran out. Returns the
/// current state instead when it cannot be claimed (`None` if it does not exist).
fn claim(
    conn: &mut PgConnection,
    id: i64,
    lease: chrono::Duration,
) -> Result<Result<Claim, Option<String>>> {
    let now = Utc::now();
    let claimed: Option<Notification> = diesel::update(
        notifications::table.find(id).filter(
            notifications::state.eq("pending").or(notifications::state
                .eq("sending")
                .and(notifications::claimed_at.lt(now - lease))),
        ),
    )
    .set((
        notifications::state.eq("sending"),
        notifications::claimed_at.eq(now),
        notifications::attempts.eq(notifications::attempts + 1),
        notifications::updated_at.eq(now),
    ))
    .returning(Notification::as_returning())
    .get_result(conn)
    .optional()?;
    match claimed {
        Some(notification) => {
            // Re-read the stored claim time: PostgreSQL keeps microseconds, so the value
            // compared later must be the stored one, not the nanosecond original.
            let claimed_at = notification.claimed_at.unwrap_or(now);
            Ok(Ok(Claim {
                notification,
                claimed_at,
            }))
        }
        None => {
            let state: Option<String> = notifications::table
                .find(id)
                .select(notifications::state)
                .first(conn)
                .optional()?;
            Ok(Err(state))
        }
    }
}

/// Reads what the send-time check and the template need. `None` if the message or a person is gone.
fn load_context(
    conn: &mut PgConnection,
    message_id: i64,
    recipient_id: i64,
    reply_domain: &str,
) -> Result<Option<Context>> {
    let Some(message) = messages::table
        .find(message_id)
        .select(Message::as_select())
        .first(conn)
        .optional()?
    else {
        return Ok(None);
    };
    let found: Vec<Person> = people::table
        .filter(people::id.eq_any([recipient_id, message.author_id]))
        .select(Person::as_select())
        .load(conn)?;
    let (Some(recipient), Some(author)) = (
        found.iter().find(|p| p.id == recipient_id).cloned(),
        found.iter().find(|p| p.id == message.author_id).cloned(),
    ) else {
        return Ok(None);
    };
    let conversation = conversations::table
        .find(message.conversation_id)
        .select(Conversation::as_select())
        .first(conn)?;
    let item: Option<Item> = match conversation.item_id {
        Some(item_id) => items::table
            .find(item_id)
            .select(Item::as_select())
            .first(conn)
            .optional()?,
        None => None,
    };
    let project_id = item
        .as_ref()
        .map(|i| i.project_id)
        .or(conversation.project_id);
    let project: Option<Project> = match project_id {
        Some(project_id) => projects::table
            .find(project_id)
            .select(Project::as_select())
            .first(conn)
            .optional()?,
        None => None,
    };
    let seen_up_to: Option<i64> = seen_cursors::table
        .find((recipient_id, conversation.id))
        .select(seen_cursors::last_seen_message_id)
        .first(conn)
        .optional()?;
    let last_posted: Option<i64> = messages::table
        .filter(messages::conversation_id.eq(conversation.id))
        .filter(messages::author_id.eq(recipient_id))
        .select(diesel::dsl::max(messages::id))
        .first(conn)?;
    let mut references: Vec<String> = notifications::table
        .filter(notifications::recipient_id.eq(recipient_id))
        .filter(notifications::conversation_id.eq(conversation.id))
        .filter(notifications::message_id.lt(message.id))
        .filter(notifications::state.eq("sent"))
        .order(notifications::message_id.desc())
        .select(notifications::email_message_id)
        .limit(10)
        .load(conn)?;
    references.push(mail::conversation_root_id(conversation.id, reply_domain));
    references.reverse();
    let facts = SendTimeFacts {
        recipient_id,
        recipient_kind: recipient.kind(),
        recipient_has_email: recipient.email.is_some(),
        author_id: author.id,
        message_id: message.id,
        internal: message.internal,
        deleted: message.deleted_at.is_some(),
        seen_up_to,
        last_posted,
    };
    let data = json!({
        "recipient": { "id": recipient.id, "name": recipient.name, "email": recipient.email, "kind": recipient.kind },
        "author": { "id": author.id, "name": author.name, "kind": author.kind },
        "conversation": { "id": conversation.id, "subject": conversation.subject },
        "item": item.as_ref().map(|i| json!({ "id": i.id, "kind": i.kind, "title": i.title })),
        "project": project.as_ref().map(|p| json!({ "id": p.id, "name": p.name })),
        "message": {
            "id": message.id,
            "body": message.body,
            "internal": message.internal,
            "posted_at": message.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        },
    });
    Ok(Some(Context {
        facts,
        recipient,
        data,
        references,
        conversation_id: conversation.id,
    }))
}
