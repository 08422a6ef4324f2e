//! The one send pipeline both sources feed (notifications, and outbox emails): render the
//! template for the recipient, build the email with its threading, anti-loop and envelope
//! headers, send it over SMTP and say how it went. Each source claims, decides and records on
//! its own; everything between a decided email and its SMTP reply happens here.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::Value;
use tidings_common::Config;
use tidings_common::db::models::Person;
use tidings_common::mail::{self, OutboundEmail, SentEmail};
use tidings_common::templates::TemplateStore;
use tracing::{error, info, warn};

use crate::smtp::{Smtp, SmtpOutcome};

/// The send pipeline: the templates, the SMTP transport and the addresses every email is
/// sent with. The mailer builds one and gives it to both sources.
pub struct Pipeline {
    templates: Arc<TemplateStore>,
    smtp: Smtp,
    mail_from: String,
    token_secret: tidings_common::secret::Secret<Vec<u8>>,
    reply_domain: String,
    /// The memory files of emails in flight may take, in KiB permits ([`FILE_BUDGET`]).
    files: Arc<tokio::sync::Semaphore>,
    /// `TIDINGS_KEEP_SOURCE`.
    keep_source: usize,
}

/// Most memory the files of emails in flight take at once: each file is held about five times
/// over while its email is built and sent (its bytes, the base64 part, the formatted message,
/// the SMTP buffer), so this bounds the mailer's memory whatever the files, at the cost of
/// sending fewer emails with big files at once. An email bigger than the budget takes all of it.
const FILE_BUDGET: usize = 32 << 20;
/// How many times over a file is held while its email is built and sent.
const FILE_COPIES: usize = 5;

/// One decided email.
pub struct Letter<'a> {
    pub recipient: &'a Person,
    pub template: &'a str,
    /// What the template is given.
    pub data: Value,
    /// This email's Message-ID, chosen when its row was written.
    pub message_id: String,
    /// Earlier Message-IDs of its thread, oldest first.
    pub references: Vec<String>,
    pub reply_to: String,
    /// One-click unsubscribe link; `None` for mail that must not be unsubscribed from.
    pub unsubscribe_url: Option<String>,
    /// The row this email is sent for; its envelope sender (VERP) names it, signed.
    pub email: SentEmail,
    /// The files attached to it (read by the caller within the mailer's file budget).
    pub files: Vec<mail::OutFile>,
}

/// How sending one email ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Accepted by the SMTP server, with its reply.
    Accepted { reply: String },
    /// It can never go: a refused address, an email that cannot be built.
    Failed {
        reason: String,
        reply: Option<String>,
    },
    /// Worth another attempt later: a temporary SMTP failure, a template that does not render.
    Temporary {
        reason: String,
        reply: Option<String>,
    },
}

/// The result of the pipeline: the subject, once rendered, and how the send ended.
pub struct Posted {
    pub subject: Option<String>,
    pub sent: Sent,
    /// The email as it was accepted (its first `TIDINGS_KEEP_SOURCE` bytes), for the log.
    pub source: Option<Source>,
}

/// A sent email's bytes as kept for the log: its first `TIDINGS_KEEP_SOURCE` bytes (16 KiB: a
/// notification or system email whole; of one with big attachments, its head and text).
#[derive(Debug, Clone)]
pub struct Source {
    pub raw: Vec<u8>,
    /// The email was longer: only its start is kept.
    pub cut: bool,
}

impl Source {
    /// What is kept of `raw`, at most `max` bytes; nothing when `max` is 0. A longer email's
    /// start is copied out, so the whole (its files, base64) is freed at once.
    fn of(raw: Vec<u8>, max: usize) -> Option<Source> {
        if max == 0 {
            return None;
        }
        if raw.len() <= max {
            return Some(Source { raw, cut: false });
        }
        Some(Source {
            raw: raw[..max].to_vec(),
            cut: true,
        })
    }
}

impl Pipeline {
    /// A pipeline sending with `templates` through the SMTP server of `config`; fails with a
    /// clear error on a bad SMTP URL.
    pub fn new(config: &Config, templates: Arc<TemplateStore>) -> anyhow::Result<Self> {
        Ok(Pipeline {
            templates,
            smtp: Smtp::from_config(config)?,
            mail_from: config.mail_from.clone(),
            token_secret: config.token_secret.clone(),
            reply_domain: config.reply_domain.clone(),
            files: Arc::new(tokio::sync::Semaphore::new(FILE_BUDGET / 1024)),
            keep_source: config.keep_source,
        })
    }

    /// Waits until the files of an email, `bytes` in all, may be held (at most the whole
    /// budget).
    pub async fn file_budget(&self, bytes: i64) -> tokio::sync::OwnedSemaphorePermit {
        let kib = (bytes.max(0) as usize * FILE_COPIES)
            .div_ceil(1024)
            .clamp(1, FILE_BUDGET / 1024);
        self.files
            .clone()
            .acquire_many_owned(kib as u32)
            .await
            .expect("the file budget is never closed")
    }

    /// The templates it renders with (watched for edits by the role).
    pub fn templates(&self) -> &Arc<TemplateStore> {
        &self.templates
    }

    /// Renders, builds and sends `letter`. Logs inside the caller's span, which names the row.
    ///
    /// A panic anywhere in that (a header a library cannot format, say) fails this one email
    /// with the reason; the emails sent beside it are not touched.
    pub async fn post(&self, letter: Letter<'_>) -> Posted {
        match AssertUnwindSafe(self.post_unguarded(letter))
            .catch_unwind()
            .await
        {
            Ok(posted) => posted,
            Err(panic) => {
                let reason = format!(
                    "this email could not be built or sent: {}",
                    panic_text(&panic)
                );
                error!(reason = %mail::mask_addresses(&reason), "email failed");
                Posted {
                    subject: None,
                    sent: Sent::Failed {
                        reason,
                        reply: None,
                    },
                    source: None,
                }
            }
        }
    }

    async fn post_unguarded(&self, letter: Letter<'_>) -> Posted {
        let recipient = letter.recipient;
        let rendered = self.templates.current().render(
            letter.template,
            recipient.locale.as_deref(),
            &letter.data,
        );
        let content = match rendered {
            Ok(content) => content,
            Err(e) => {
                warn!(error = %e, "template failed to render");
                return Posted {
                    subject: None,
                    sent: Sent::Temporary {
                        reason: e.to_string(),
                        reply: None,
                    },
                    source: None,
                };
            }
        };
        let subject = Some(content.subject.clone());
        let email = OutboundEmail {
            from: self.mail_from.clone(),
            to_name: recipient.name.clone(),
            to_address: recipient.email.clone().unwrap_or_default(),
            reply_to: letter.reply_to,
            message_id: letter.message_id,
            references: letter.references,
            unsubscribe_url: letter.unsubscribe_url,
            envelope_from: Some(
                letter
                    .email
                    .bounce_address(&self.token_secret, &self.reply_domain),
            ),
            content,
            files: letter.files,
        };
        let built = match mail::build_email(&email) {
            Ok(built) => built,
            Err(e) => {
                warn!(error = %mail::mask_addresses(&e.to_string()), "email cannot be built");
                let reason = e.to_string();
                return Posted {
                    subject,
                    sent: Sent::Failed {
                        reason,
                        reply: None,
                    },
                    source: None,
                };
            }
        };
        let to = mail::mask_address(&email.to_address);
        let (outcome, bytes) = self.smtp.send(built).await;
        let mut source = None;
        let sent = match outcome {
            SmtpOutcome::Accepted(reply) => {
                info!(to, reply = %mail::mask_addresses(&reply), "email sent");
                source = bytes.and_then(|b| Source::of(b, self.keep_source));
                Sent::Accepted { reply }
            }
            SmtpOutcome::Refused(reply) => {
                warn!(to, error = %mail::mask_addresses(&reply), "email refused");
                Sent::Failed {
                    reason: "refused by the SMTP server".into(),
                    reply: Some(reply),
                }
            }
            SmtpOutcome::Deferred(reply) => {
                warn!(to, error = %mail::mask_addresses(&reply), "email deferred");
                Sent::Temporary {
                    reason: "temporary SMTP failure".into(),
                    reply: Some(reply),
                }
            }
        };
        Posted {
            subject,
            sent,
            source,
        }
    }
}

/// The message a panic carried.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "a panic without a message"
    }
}
