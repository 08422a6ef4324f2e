//! Deciding one unit (a recipient in a conversation) at send time, and sending its email
//! through the pipeline: the primary notification carries every included message.

use serde_json::{Value, json};
use tidings_common::db::models::PersonKind;
use tidings_common::mail::{self, ReplyToken, SentEmail, UnsubscribeScope, UnsubscribeToken};
use tidings_common::{NOTIFICATION_TEMPLATE, clock};
use tracing::Instrument;

use super::Notifications;
use super::{Checked, Claim, Delivered, Ended, Finish, SendUnit};
use crate::pipeline::{Letter, Sent};
use crate::retry::{self, Retry};

/// Collects the ends of the claims of one unit.
struct Ends {
    rcpt_to: Option<String>,
    ended: Vec<Ended>,
}

impl Ends {
    fn push(&mut self, claim: &Claim, subject: Option<&str>, finish: Finish) {
        self.ended.push(Ended {
            claim: claim.clone(),
            rcpt_to: self.rcpt_to.clone(),
            subject: subject.map(str::to_string),
            finish,
        });
    }

    fn release(&mut self, checked: &[&Checked]) {
        for c in checked {
            self.push(&c.claim, None, Finish::Released);
        }
    }
}

impl Notifications<'_> {
    /// Decides one unit and sends its email if it is due. Returns the end of every claim in
    /// it, and what the primary notification needs next when that is a retry.
    pub(super) async fn decide_and_send(
        &self,
        unit: SendUnit,
    ) -> (Vec<Ended>, Option<(i64, Delivered)>) {
        let mut ends = Ends {
            rcpt_to: unit.recipient.email.clone(),
            ended: Vec::new(),
        };
        let primary = &unit.primary.claim;
        if !unit.primary.verdict.yes {
            // The companions go back to wait for their own batches.
            ends.push(primary, None, Finish::Skipped(unit.primary.verdict.clone()));
            ends.release(&unit.companions.iter().collect::<Vec<_>>());
            return (ends.ended, None);
        }
        // Companions the rules now exclude are skipped on their own account.
        let mut included = vec![&unit.primary];
        for c in &unit.companions {
            if c.verdict.yes {
                included.push(c);
            } else {
                ends.push(&c.claim, None, Finish::Skipped(c.verdict.clone()));
            }
        }
        let span = tracing::info_span!(
            "email",
            notification.id = primary.notification.id,
            messages = included.len()
        );
        let posted = self
            .pipeline
            .post(self.letter(&unit, &included))
            .instrument(span)
            .await;
        let subject = posted.subject.as_deref();
        let mut retry = None;
        match posted.sent {
            Sent::Accepted { reply } => {
                ends.push(primary, subject, Finish::Sent { reply });
                let into = primary.notification.id;
                for c in &included[1..] {
                    ends.push(&c.claim, subject, Finish::Coalesced { into });
                }
            }
            Sent::Failed { reason, reply } => {
                ends.push(primary, subject, Finish::Failed { reason, reply });
                ends.release(&included[1..]);
            }
            Sent::Temporary { reason, reply } => {
                ends.release(&included[1..]);
                let attempts = primary.notification.attempts;
                let finish = match retry::after_attempt(attempts, &self.config.retry_tiers) {
                    Retry::GiveUp => Finish::Failed {
                        reason: format!("{reason}; gave up after {attempts} attempts"),
                        reply,
                    },
                    Retry::After { tier, delay } => {
                        retry = Some((primary.notification.id, Delivered::RetryLater { tier }));
                        Finish::Deferred {
                            reason,
                            reply,
                            retry_in: delay,
                        }
                    }
                };
                ends.push(primary, subject, finish);
            }
        }
        (ends.ended, retry)
    }

    /// The email of a unit: every included message, oldest first, with the recipient's reply
    /// address and unsubscribe link.
    fn letter<'a>(&self, unit: &'a SendUnit, included: &[&Checked]) -> Letter<'a> {
        let primary = included[0];
        let recipient = &unit.recipient;
        let conversation_id = primary.message.conversation_id;
        let today = mail::epoch_day(clock::now());
        let reply_address = ReplyToken {
            conversation_id,
            person_id: recipient.id,
            issued_day: today,
        }
        .address(&self.config.token_secret, &self.config.reply_domain);
        let scope = match recipient.kind {
            PersonKind::Customer => UnsubscribeScope::CustomerConversation(conversation_id),
            _ => UnsubscribeScope::UserKind(primary.message.kind()),
        };
        let token = UnsubscribeToken {
            person_id: recipient.id,
            scope,
            expires_day: today + mail::UNSUBSCRIBE_LINK_DAYS,
        };
        let unsubscribe_url = format!(
            "{}/unsubscribe/{}",
            self.config.public_url,
            token.encode(&self.config.token_secret)
        );
        let mut messages: Vec<&Checked> = included.to_vec();
        messages.sort_by_key(|c| c.message.message_id);
        let mut data = unit.data.clone();
        data["message"] = primary.data.clone();
        data["messages"] = Value::Array(messages.iter().map(|c| c.data.clone()).collect());
        data["reply_address"] = json!(reply_address);
        data["unsubscribe_url"] = json!(unsubscribe_url);
        Letter {
            recipient,
            template: NOTIFICATION_TEMPLATE,
            data,
            message_id: primary.claim.notification.email_message_id.clone(),
            references: unit.references.clone(),
            reply_to: reply_address,
            unsubscribe_url: Some(unsubscribe_url),
            email: SentEmail::Notification(primary.claim.notification.id),
        }
    }
}
