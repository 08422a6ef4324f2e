//! Sending one notification: claim, re-check at send time, coalesce, render, send, record.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use lettre::AsyncTransport;
use serde_json::{Value, json};
use tidings_common::audience;
use tidings_common::db::models::*;
use tidings_common::db::schema::*;
use tidings_common::mail::{self, OutboundEmail, ReplyToken, UnsubscribeScope, UnsubscribeToken};
use tidings_common::rules::{self, MessageFacts, Verdict};
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
    /// Claimed by another worker; look again after one seen window.
    Busy,
}

/// A notification this worker has claimed, and the claim time that proves it still holds it.
struct Claim {
    notification: Notification,
    claimed_at: DateTime<Utc>,
}

/// One claimed notification with the send-time verdict on it.
struct Checked {
    claim: Claim,
    message: MessageFacts,
    verdict: Verdict,
    /// The message as the template shows it.
    data: Value,
}

/// Everything read at send time for one recipient in one conversation.
struct SendContext {
    recipient: Person,
    /// The due notification first, then the recipient's other pending notifications in the
    /// conversation (claimed too, for coalescing).
    checked: Vec<Checked>,
    /// Recipient, conversation, item and project as the template shows them.
    data: Value,
    references: Vec<String>,
}

/// How a claimed notification ends, for the conditional update that records it.
enum Finish {
    Sent {
        reply: String,
    },
    Skipped(Verdict),
    /// Its message went out in the email of notification `into`.
    Coalesced {
        into: i64,
    },
    Failed {
        reason: String,
        reply: Option<String>,
    },
    Deferred {
        reason: String,
        reply: Option<String>,
        retry_in: std::time::Duration,
    },
    /// Back to `pending` untouched: it was claimed only to be coalesced, and the send failed.
    Released,
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
        let domain = self.config.reply_domain.clone();
        // Claim and read in one trip to the blocking pool.
        let claimed = self
            .db
            .run(move |conn| match claim(conn, notification_id, lease)? {
                Ok((claim, companions)) => Ok(Ok(load_context(conn, claim, companions, &domain)?)),
                Err(state) => Ok(Err(state)),
            })
            .await?;
        let context = match claimed {
            Ok(context) => context,
            // Claimed by another worker, alone or as a companion: look again in one window.
            Err(Some(state)) if state == "sending" => return Ok(Delivered::Busy),
            Err(_) => return Ok(Delivered::Done),
        };
        let mut context = match context {
            Ok(context) => context,
            Err(claim) => {
                let how = Finish::Failed {
                    reason: "message or recipient no longer exists".into(),
                    reply: None,
                };
                self.record(&claim, None, None, how).await?;
                return Ok(Delivered::Done);
            }
        };
        let mut checked = std::mem::take(&mut context.checked).into_iter();
        let primary = checked
            .next()
            .expect("the claimed notification is checked first");
        let recipient = Some(&context.recipient);
        if !primary.verdict.yes {
            // The companions go back to wait for their own batches.
            let how = Finish::Skipped(primary.verdict.clone());
            self.record(&primary.claim, recipient, None, how).await?;
            for companion in checked {
                self.record(&companion.claim, recipient, None, Finish::Released)
                    .await?;
            }
            return Ok(Delivered::Done);
        }
        // Companions the rules now exclude are skipped on their own account.
        let mut included = vec![primary];
        for companion in checked {
            if companion.verdict.yes {
                included.push(companion);
            } else {
                let how = Finish::Skipped(companion.verdict.clone());
                self.record(&companion.claim, recipient, None, how).await?;
            }
        }
        let result = self.send(&context, &included).await;
        let primary = &included[0].claim;
        let companions = included[1..].iter().map(|c| &c.claim);
        let recipient = Some(&context.recipient);
        match result {
            SendResult::Sent { subject, reply } => {
                self.record(
                    primary,
                    recipient,
                    Some(subject.clone()),
                    Finish::Sent { reply },
                )
                .await?;
                for claim in companions {
                    let how = Finish::Coalesced {
                        into: primary.notification.id,
                    };
                    self.record(claim, recipient, Some(subject.clone()), how)
                        .await?;
                }
                Ok(Delivered::Done)
            }
            SendResult::Failed {
                subject,
                reason,
                reply,
            } => {
                self.record(
                    primary,
                    recipient,
                    subject,
                    Finish::Failed { reason, reply },
                )
                .await?;
                for claim in companions {
                    self.record(claim, recipient, None, Finish::Released)
                        .await?;
                }
                Ok(Delivered::Done)
            }
            SendResult::Temporary {
                subject,
                reason,
                reply,
            } => {
                for claim in companions {
                    self.record(claim, recipient, None, Finish::Released)
                        .await?;
                }
                self.retry_or_fail(primary, recipient, subject, reason, reply)
                    .await
            }
        }
    }

    /// Renders and sends one email carrying every included message, oldest first.
    async fn send(&self, context: &SendContext, included: &[Checked]) -> SendResult {
        let primary = &included[0];
        let recipient = &context.recipient;
        let conversation_id = primary.message.conversation_id;
        let today = mail::epoch_day(Utc::now());
        let reply_address = ReplyToken {
            conversation_id,
            person_id: recipient.id,
            issued_day: today,
        }
        .address(&self.config.token_secret, &self.config.reply_domain);
        let scope = match recipient.kind() {
            PersonKind::Customer => UnsubscribeScope::CustomerConversation(conversation_id),
            _ => UnsubscribeScope::UserKind(primary.message.kind()),
        };
        let unsubscribe_url = format!(
            "{}/unsubscribe/{}",
            self.config.public_url,
            UnsubscribeToken {
                person_id: recipient.id,
                scope,
                expires_day: today + mail::UNSUBSCRIBE_LINK_DAYS,
            }
            .encode(&self.config.token_secret)
        );
        let mut messages: Vec<&Checked> = included.iter().collect();
        messages.sort_by_key(|c| c.message.message_id);
        let mut data = context.data.clone();
        data["message"] = primary.data.clone();
        data["messages"] = Value::Array(messages.iter().map(|c| c.data.clone()).collect());
        data["reply_address"] = json!(reply_address);
        data["unsubscribe_url"] = json!(unsubscribe_url);
        let content = match self.templates.render(NOTIFICATION_TEMPLATE, &data) {
            Ok(content) => content,
            Err(e) => {
                warn!(error = %e, "template failed to render");
                return SendResult::Temporary {
                    subject: None,
                    reason: e.to_string(),
                    reply: None,
                };
            }
        };
        let subject = content.subject.clone();
        let email = OutboundEmail {
            from: self.config.mail_from.clone(),
            to_name: recipient.name.clone(),
            to_address: recipient.email.clone().unwrap_or_default(),
            reply_to: reply_address,
            message_id: primary.claim.notification.email_message_id.clone(),
            references: context.references.clone(),
            unsubscribe_url: Some(unsubscribe_url),
            content,
        };
        let built = match mail::build_email(&email) {
            Ok(built) => built,
            Err(e) => {
                return SendResult::Failed {
                    subject: Some(subject),
                    reason: e.to_string(),
                    reply: None,
                };
            }
        };
        let sent = match self.smtp_slots.acquire().await {
            Ok(_slot) => self.transport.send(built).await,
            Err(e) => {
                return SendResult::Temporary {
                    subject: Some(subject),
                    reason: e.to_string(),
                    reply: None,
                };
            }
        };
        let to = mail::mask_address(&email.to_address);
        match sent {
            Ok(response) => {
                let reply = format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                );
                info!(to, messages = included.len(), "email sent");
                SendResult::Sent { subject, reply }
            }
            Err(e) if e.is_permanent() => {
                warn!(to, error = %e, "email refused");
                SendResult::Failed {
                    subject: Some(subject),
                    reason: "refused by the SMTP server".into(),
                    reply: Some(e.to_string()),
                }
            }
            Err(e) => {
                warn!(to, error = %e, "email deferred");
                SendResult::Temporary {
                    subject: Some(subject),
                    reason: "temporary SMTP failure".into(),
                    reply: Some(e.to_string()),
                }
            }
        }
    }

    /// Returns the notification to `pending` for the next retry tier, or fails it after the last.
    async fn retry_or_fail(
        &self,
        claim: &Claim,
        recipient: Option<&Person>,
        subject: Option<String>,
        reason: String,
        reply: Option<String>,
    ) -> Result<Delivered> {
        let attempts = claim.notification.attempts as usize;
        let tiers = &self.config.retry_tiers;
        if attempts > tiers.len() {
            let reason = format!("{reason}; gave up after {attempts} attempts");
            self.record(claim, recipient, subject, Finish::Failed { reason, reply })
                .await?;
            return Ok(Delivered::Done);
        }
        let tier = attempts.saturating_sub(1);
        let how = Finish::Deferred {
            reason,
            reply,
            retry_in: tiers[tier],
        };
        self.record(claim, recipient, subject, how).await?;
        Ok(Delivered::RetryLater { tier })
    }

    /// Records the end of a claim: the state change (only if the claim still holds) and the
    /// log row, in one transaction.
    async fn record(
        &self,
        claim: &Claim,
        recipient: Option<&Person>,
        subject: Option<String>,
        how: Finish,
    ) -> Result<()> {
        let n = &claim.notification;
        let mut coalesced_into = None;
        let mut rule = None;
        let (state, status, reason, reply, retry_in) = match how {
            Finish::Sent { reply } => ("sent", Some("sent"), None, Some(reply), None),
            Finish::Skipped(v) => {
                rule = Some(v.rule.to_string());
                (
                    "skipped",
                    Some("skipped"),
                    Some(v.reason.to_string()),
                    None,
                    None,
                )
            }
            Finish::Coalesced { into } => {
                coalesced_into = Some(into);
                (
                    "skipped",
                    Some("skipped"),
                    Some("coalesced".to_string()),
                    None,
                    None,
                )
            }
            Finish::Failed { reason, reply } => {
                ("failed", Some("failed"), Some(reason), reply, None)
            }
            Finish::Deferred {
                reason,
                reply,
                retry_in,
            } => (
                "pending",
                Some("deferred"),
                Some(reason),
                reply,
                Some(retry_in),
            ),
            Finish::Released => ("pending", None, None, None, None),
        };
        let entry = status.map(|status| NewEmailLogEntry {
            direction: "outbound".into(),
            status: status.into(),
            reason: reason.clone(),
            notification_id: Some(n.id),
            message_id: Some(n.message_id),
            conversation_id: Some(n.conversation_id),
            mail_from: Some(self.config.mail_from.clone()),
            rcpt_to: recipient.and_then(|r| r.email.clone()),
            subject,
            message_id_header: Some(n.email_message_id.clone()),
            smtp_reply: reply.clone(),
            rule: rule.clone(),
        });
        let released = matches!(state, "pending") && entry.is_none();
        let (id, claimed_at) = (n.id, claim.claimed_at);
        let updated = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let now = Utc::now();
                    let target = notifications::table
                        .find(id)
                        .filter(notifications::state.eq("sending"))
                        .filter(notifications::claimed_at.eq(claimed_at));
                    let updated = if released {
                        diesel::update(target)
                            .set((
                                notifications::state.eq("pending"),
                                notifications::updated_at.eq(now),
                            ))
                            .execute(conn)?
                    } else {
                        let due_at = match retry_in {
                            Some(d) => {
                                now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
                            }
                            None => now,
                        };
                        let sent = matches!(state, "sent") || coalesced_into.is_some();
                        diesel::update(target)
                            .set((
                                notifications::state.eq(state),
                                notifications::reason.eq(&reason),
                                notifications::rule.eq(&rule),
                                notifications::smtp_reply.eq(&reply),
                                notifications::updated_at.eq(now),
                                notifications::due_at.eq(due_at),
                                notifications::sent_at.eq(sent.then_some(now)),
                                notifications::coalesced_into.eq(coalesced_into),
                            ))
                            .execute(conn)?
                    };
                    if let (1, Some(entry)) = (updated, entry) {
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

enum SendResult {
    Sent {
        subject: String,
        reply: String,
    },
    Failed {
        subject: Option<String>,
        reason: String,
        reply: Option<String>,
    },
    Temporary {
        subject: Option<String>,
        reason: String,
        reply: Option<String>,
    },
}

/// Claims a notification for sending: `pending`, or `sending` whose lease ran out. Returns the
/// current state instead when it cannot be claimed (`None` if it does not exist).
///
/// The recipient's other `pending` notifications in the same conversation are claimed in the
/// same transaction, for coalescing. A transaction-scoped advisory lock per (recipient,
/// conversation) makes batches that come due together take turns, so the first claims them
/// all and the others find their notification already taken.
fn claim(conn: &mut PgConnection, id: i64, lease: chrono::Duration) -> Result<ClaimOutcome> {
    conn.transaction(|conn| {
        let key: Option<(i64, i64)> = notifications::table
            .find(id)
            .select((notifications::recipient_id, notifications::conversation_id))
            .first(conn)
            .optional()?;
        let Some((recipient_id, conversation_id)) = key else {
            return Ok(Err(None));
        };
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(coalescing_lock_key(
                recipient_id,
                conversation_id,
            ))
            .execute(conn)?;
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
        let Some(notification) = claimed else {
            let state: Option<String> = notifications::table
                .find(id)
                .select(notifications::state)
                .first(conn)
                .optional()?;
            return Ok(Err(state));
        };
        // The stored claim time (microseconds) is what later conditional updates compare.
        let claimed_at = notification.claimed_at.unwrap_or(now);
        let companions: Vec<Notification> = diesel::update(
            notifications::table
                .filter(notifications::recipient_id.eq(recipient_id))
                .filter(notifications::conversation_id.eq(conversation_id))
                .filter(notifications::state.eq("pending"))
                .filter(notifications::id.ne(id)),
        )
        .set((
            notifications::state.eq("sending"),
            notifications::claimed_at.eq(claimed_at),
            notifications::updated_at.eq(now),
        ))
        .returning(Notification::as_returning())
        .get_results(conn)?;
        Ok(Ok((
            Claim {
                notification,
                claimed_at,
            },
            companions,
        )))
    })
}

/// The claim and its companions, or the notification's current state (`None`: no such row).
type ClaimOutcome = std::result::Result<(Claim, Vec<Notification>), Option<String>>;

/// One advisory-lock key per (recipient, conversation); a collision only serialises two
/// unrelated claims.
fn coalescing_lock_key(recipient_id: i64, conversation_id: i64) -> i64 {
    recipient_id.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as i64) ^ conversation_id
}

/// Reads what the send-time check and the template need, for the claimed notification and its
/// companions. Gives the claim back when the message or the recipient is gone.
fn load_context(
    conn: &mut PgConnection,
    primary: Claim,
    companions: Vec<Notification>,
    reply_domain: &str,
) -> Result<Result<SendContext, Claim>> {
    let message_id = primary.notification.message_id;
    let (recipient_id, conversation_id) = (
        primary.notification.recipient_id,
        primary.notification.conversation_id,
    );
    let recipient: Option<Person> = people::table
        .find(recipient_id)
        .select(Person::as_select())
        .first(conn)
        .optional()?;
    let (Some(recipient), Some(checked)) = (recipient, check(conn, &primary.notification)?) else {
        return Ok(Err(primary));
    };
    let conversation = conversations::table
        .find(conversation_id)
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
        Some(id) => projects::table
            .find(id)
            .select(Project::as_select())
            .first(conn)
            .optional()?,
        None => None,
    };
    let mut references: Vec<String> = notifications::table
        .filter(notifications::recipient_id.eq(recipient_id))
        .filter(notifications::conversation_id.eq(conversation_id))
        .filter(notifications::message_id.lt(message_id))
        .filter(notifications::state.eq("sent"))
        .order(notifications::message_id.desc())
        .select(notifications::email_message_id)
        .limit(10)
        .load(conn)?;
    references.push(mail::conversation_root_id(conversation_id, reply_domain));
    references.reverse();

    let claimed_at = primary.claimed_at;
    let mut all = vec![(checked, primary)];
    for companion in companions {
        match check(conn, &companion)? {
            Some(checked) => all.push((
                checked,
                Claim {
                    notification: companion,
                    claimed_at,
                },
            )),
            None => {
                diesel::update(notifications::table.find(companion.id))
                    .set(notifications::state.eq("pending"))
                    .execute(conn)?;
            }
        }
    }
    let data = json!({
        "recipient": { "id": recipient.id, "name": recipient.name, "email": recipient.email, "kind": recipient.kind },
        "conversation": { "id": conversation.id, "subject": conversation.subject },
        "item": item.as_ref().map(|i| json!({ "id": i.id, "kind": i.kind, "title": i.title })),
        "project": project.as_ref().map(|p| json!({ "id": p.id, "name": p.name })),
    });
    let checked = all
        .into_iter()
        .map(|((message, verdict, data), claim)| Checked {
            claim,
            message,
            verdict,
            data,
        })
        .collect();
    Ok(Ok(SendContext {
        recipient,
        checked,
        data,
        references,
    }))
}

type CheckedFacts = (MessageFacts, Verdict, Value);

/// The send-time verdict on one notification (SPEC D2, D4, D9), with its message's template data.
fn check(conn: &mut PgConnection, n: &Notification) -> Result<Option<CheckedFacts>> {
    let Some((message, mut facts)) =
        audience::load(conn, n.message_id, Some(vec![n.recipient_id]))?
    else {
        return Ok(None);
    };
    let Some(person) = facts.pop() else {
        return Ok(None);
    };
    let verdict = rules::email(&message, &person);
    let row: Option<(Message, String)> = messages::table
        .inner_join(people::table)
        .filter(messages::id.eq(n.message_id))
        .select((Message::as_select(), people::name))
        .first(conn)
        .optional()?;
    let Some((m, author_name)) = row else {
        return Ok(None);
    };
    let data = json!({
        "id": m.id,
        "body": m.body,
        "internal": m.internal,
        "edited": m.edited_at.is_some(),
        "posted_at": m.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        "author": { "id": m.author_id, "name": author_name },
    });
    Ok(Some((message, verdict, data)))
}
