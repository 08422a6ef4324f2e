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
            source: None,
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
        if let Some(until) = unit.primary.verdict.held_until {
            // A1 (the recipient's pause) or A3 (the conversation is still active) holds this
            // email, and the companions the rules still let through; the rest are skipped on
            // their own account.
            let rule = unit.primary.verdict.rule;
            let held = |c: &Checked| Finish::Held {
                until: c.verdict.held_until.unwrap_or(until),
                detail: c.verdict.detail.clone(),
                rule: if c.verdict.held_until.is_some() {
                    c.verdict.rule
                } else {
                    rule
                },
            };
            ends.push(primary, None, held(&unit.primary));
            for c in &unit.companions {
                if c.verdict.reason.is_some() {
                    ends.push(&c.claim, None, Finish::Skipped(c.verdict.clone()));
                } else {
                    ends.push(&c.claim, None, held(c));
                }
            }
            return (ends.ended, None);
        }
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
        let (mut letter, attach) = self.letter(&unit, &included);
        // Files are read only when their email can go, within the mailer's file budget, so
        // memory holds the files of the emails in flight, never more than the budget.
        let _budget = match self.read_files(&attach).await {
            Ok((files, permit)) => {
                letter.files = files;
                permit
            }
            Err(e) => {
                // The files could not be read now: the email waits for its next attempt
                // rather than going without them.
                tracing::warn!(error = %e, "files of an email cannot be read");
                ends.push(
                    primary,
                    None,
                    Finish::Deferred {
                        reason: format!("its files cannot be read: {e}"),
                        reply: None,
                        retry_in: self.config.retry_tiers.first().copied().unwrap_or_default(),
                    },
                );
                ends.release(&included[1..]);
                let retry = Some((primary.notification.id, Delivered::RetryLater { tier: 0 }));
                return (ends.ended, retry);
            }
        };
        let posted = self.pipeline.post(letter).instrument(span).await;
        let subject = posted.subject.as_deref();
        let mut retry = None;
        match posted.sent {
            Sent::Accepted { reply } => {
                ends.push(primary, subject, Finish::Sent { reply });
                if let Some(last) = ends.ended.last_mut() {
                    last.source = posted.source;
                }
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

    /// Reads the files to attach, holding their bytes' worth of the pipeline's file budget
    /// until the returned permit is dropped.
    async fn read_files(
        &self,
        attach: &[Value],
    ) -> tidings_common::Result<(
        Vec<mail::OutFile>,
        Option<tokio::sync::OwnedSemaphorePermit>,
    )> {
        if attach.is_empty() {
            return Ok((Vec::new(), None));
        }
        let bytes: i64 = attach.iter().map(|f| f["size"].as_i64().unwrap_or(0)).sum();
        let permit = self.pipeline.file_budget(bytes).await;
        let ids: Vec<(i64, Option<String>)> = attach
            .iter()
            .map(|f| {
                (
                    f["id"].as_i64().unwrap_or_default(),
                    f["content_id"].as_str().map(str::to_string),
                )
            })
            .collect();
        let files = self
            .db
            .run(move |conn| {
                let mut files = Vec::new();
                for (id, content_id) in ids {
                    let Some(stored) = tidings_common::attachments::find(conn, id)? else {
                        continue;
                    };
                    files.push(mail::OutFile {
                        data: tidings_common::attachments::read_whole(
                            conn,
                            &stored.sha256,
                            stored.size,
                        )?,
                        name: stored.name,
                        content_type: stored.content_type,
                        content_id,
                    });
                }
                Ok(files)
            })
            .await?;
        Ok((files, Some(permit)))
    }

    /// The email of a unit: every included message, oldest first, with the recipient's reply
    /// address and unsubscribe link, and the files to attach. A message's files are attached
    /// while the email stays within `TIDINGS_EMAIL_ATTACH_MAX`; each other file is a link that
    /// opens it for this recipient only.
    fn letter<'a>(&self, unit: &'a SendUnit, included: &[&Checked]) -> (Letter<'a>, Vec<Value>) {
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
        let mut shown: Vec<Value> = messages.iter().map(|c| c.data.clone()).collect();
        let (mut room, mut attach) = (self.config.email_attach_max as i64, Vec::new());
        let expires = clock::now().timestamp() + self.config.file_link_ttl.as_secs() as i64;
        for message in &mut shown {
            let Some(files) = message["files"].as_array_mut() else {
                continue;
            };
            for file in files {
                let size = file["size"].as_i64().unwrap_or(i64::MAX);
                let id = file["id"].as_i64().unwrap_or_default();
                if size <= room {
                    room -= size;
                    file["attached"] = json!(true);
                    attach.push(file.clone());
                } else {
                    file["attached"] = json!(false);
                    file["url"] = json!(tidings_common::attachments::link_url(
                        &self.config.public_url,
                        &self.config.token_secret,
                        recipient.id,
                        id,
                        expires,
                    ));
                }
            }
        }
        data["message"] = shown
            .iter()
            .find(|m| m["id"] == primary.data["id"])
            .cloned()
            .unwrap_or_else(|| primary.data.clone());
        data["messages"] = Value::Array(shown);
        data["reply_address"] = json!(reply_address);
        data["unsubscribe_url"] = json!(unsubscribe_url);
        let letter = Letter {
            recipient,
            template: NOTIFICATION_TEMPLATE,
            data,
            message_id: primary.claim.notification.email_message_id.clone(),
            references: unit.references.clone(),
            reply_to: reply_address,
            unsubscribe_url: Some(unsubscribe_url),
            email: SentEmail::Notification(primary.claim.notification.id),
            files: Vec::new(),
        };
        (letter, attach)
    }
}
