//! The outbox source of the send pipeline: system notifications (SPEC M4, E1–E3) and
//! automation emails (M3).
//!
//! Like notifications, each row moves `pending → sending → sent | skipped | failed` by
//! conditional updates, so a redelivered announcement never sends twice. Every check is made
//! again at send time ([`claim`]): a system notification or automation disabled since, a
//! preference turned off, an inactive or suppressed recipient.

mod claim;
mod record;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tidings_common::db::models::OutboxState;
use tidings_common::mail::SentEmail;
use tidings_common::{Result, clock};
use tracing::Instrument;

use crate::pipeline::{Letter, Sent};
use crate::retry::{self, Retry};
use claim::Claimed;

/// How sending one outbox email ended.
struct OutboxEnd {
    id: i64,
    claimed_at: DateTime<Utc>,
    state: OutboxState,
    reason: Option<String>,
    smtp_reply: Option<String>,
    /// When the next attempt is due, after a temporary failure.
    retry_at: Option<DateTime<Utc>>,
    rcpt_to: Option<String>,
    subject: Option<String>,
    /// The email as accepted, once sent.
    source: Option<crate::pipeline::Source>,
}

/// The outbox source: claims outbox emails with their send-time checks, hands them to the
/// pipeline and records how each ended.
pub struct Outbox<'a> {
    pub db: &'a tidings_common::db::Db,
    pub config: &'a tidings_common::Config,
    pub pipeline: &'a crate::pipeline::Pipeline,
}

impl Outbox<'_> {
    /// Claims, checks, renders, sends and records the outbox emails `ids`.
    pub async fn deliver_outbox(&self, ids: Vec<i64>) -> Result<usize> {
        let lease = self.config.send_lease;
        let claimed = self
            .db
            .run(move |conn| claim::claim(conn, &ids, lease))
            .await?;
        let count = claimed.len();
        let sends = claimed.into_iter().map(|c| {
            let span =
                tracing::info_span!("email", outbox.id = c.email.id, source = %c.email.source);
            self.send_outbox(c).instrument(span)
        });
        let ended = futures_util::future::join_all(sends).await;
        self.record_outbox(ended).await?;
        Ok(count)
    }

    async fn send_outbox(&self, c: Claimed) -> OutboxEnd {
        let mut end = OutboxEnd {
            id: c.email.id,
            claimed_at: c.claimed_at,
            state: OutboxState::Skipped,
            reason: c.skip.clone(),
            smtp_reply: None,
            retry_at: None,
            rcpt_to: c.recipient.as_ref().and_then(|r| r.email.clone()),
            subject: None,
            source: None,
        };
        let (None, Some(recipient)) = (&c.skip, &c.recipient) else {
            return end;
        };
        let mut data = c.email.data.clone();
        if !data.is_object() {
            data = json!({});
        }
        data["recipient"] = json!({"id": recipient.id, "name": recipient.name,
                                   "email": recipient.email, "kind": recipient.kind});
        data["app_url"] = Value::String(self.config.public_url.clone());
        let posted = self
            .pipeline
            .post(Letter {
                recipient,
                template: &c.email.template,
                data,
                message_id: c.email.email_message_id.clone(),
                references: Vec::new(),
                reply_to: self.config.mail_from.clone(),
                unsubscribe_url: None,
                email: SentEmail::Outbox(c.email.id),
                files: Vec::new(),
            })
            .await;
        end.subject = posted.subject;
        end.source = posted.source;
        match posted.sent {
            Sent::Accepted { reply } => {
                end.state = OutboxState::Sent;
                end.reason = None;
                end.smtp_reply = Some(reply);
            }
            Sent::Failed { reason, reply } => {
                end.state = OutboxState::Failed;
                end.reason = Some(reason);
                end.smtp_reply = reply;
            }
            Sent::Temporary { reason, reply } => {
                end.reason = Some(reason);
                end.smtp_reply = reply;
                match retry::after_attempt(c.email.attempts, &self.config.retry_tiers) {
                    Retry::GiveUp => end.state = OutboxState::Failed,
                    Retry::After { delay, .. } => {
                        end.state = OutboxState::Pending;
                        end.retry_at = Some(clock::after(delay));
                    }
                }
            }
        }
        end
    }
}
