//! The notification source of the send pipeline: when a batch comes due, claim its
//! notifications ([`claim`]), load what the send-time checks and the template need ([`load`]),
//! decide and send one email per recipient and conversation ([`decide`]), and record how each
//! claim ended ([`record`]).
//!
//! The database work is set-based: a handful of statements for the whole set, so the cost per
//! notification stays small however many arrive together.

mod claim;
mod decide;
mod load;
mod record;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::Value;
use tidings_common::Result;
use tidings_common::db::models::{Notification, NotificationState, Person};
use tidings_common::rules::{MessageFacts, Verdict};

/// How handling one notification ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Sent, skipped, failed, or already handled by someone else: nothing more to do.
    Done,
    /// Try again after retry tier `tier`.
    RetryLater { tier: usize },
    /// Claimed by another worker; look again after one seen window.
    Busy,
}

impl Delivered {
    /// What a notification this worker could not claim needs, given its state (`None`: no
    /// such notification).
    fn unclaimed(state: Option<NotificationState>) -> Self {
        match state {
            // Claimed by another worker, alone or as a companion: look again in one window.
            // `pending` here means that worker released it between this claim's update and its
            // read of the states (a released companion); it too needs another look.
            Some(NotificationState::Sending | NotificationState::Pending) => Delivered::Busy,
            _ => Delivered::Done,
        }
    }
}

/// A notification this worker has claimed, and the claim time that proves it still holds it.
#[derive(Clone)]
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

/// One email to decide on: a recipient in a conversation, the notification that came due
/// first, and the recipient's other unsent notifications there (coalesced into it).
struct SendUnit {
    recipient: Person,
    primary: Checked,
    companions: Vec<Checked>,
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
    /// Back to `pending` untouched: it was claimed only to be coalesced, and did not go out.
    Released,
    /// Back to `pending`, due at `until`: A1, when the recipient's pause ends (the sweep
    /// wakes it then); A3, when its conversation should have gone quiet (it is looked at again
    /// one window later, through the delay).
    Held {
        until: DateTime<Utc>,
        detail: String,
        rule: &'static str,
    },
}

/// One recorded end of a claim.
struct Ended {
    claim: Claim,
    rcpt_to: Option<String>,
    subject: Option<String>,
    finish: Finish,
    /// The email as accepted, on the claim that sent it.
    source: Option<crate::pipeline::Source>,
}

impl Ended {
    /// The end of a claim whose message or recipient no longer exists.
    fn gone(claim: Claim) -> Self {
        Ended {
            claim,
            rcpt_to: None,
            subject: None,
            source: None,
            finish: Finish::Failed {
                reason: "message or recipient no longer exists".into(),
                reply: None,
            },
        }
    }
}

/// The notification source: claims due notifications, decides each at send time, hands the
/// emails to the pipeline and records how each ended.
pub struct Notifications<'a> {
    pub db: &'a tidings_common::db::Db,
    pub config: &'a tidings_common::Config,
    pub topology: &'a tidings_common::amqp::Topology,
    pub pipeline: &'a crate::pipeline::Pipeline,
}

impl Notifications<'_> {
    /// Handles a set of due notifications; says for each id what happens next.
    pub async fn deliver_all(
        &self,
        ids: Vec<i64>,
        publisher: &tidings_common::amqp::Publisher,
    ) -> Result<HashMap<i64, Delivered>> {
        let lease = self.config.send_lease;
        let domain = self.config.reply_domain.clone();
        let quiet = load::Quiet {
            window: self.config.seen_window,
            max: self.config.quiet_max,
            by_default: self.config.wait_for_quiet,
        };
        let (units, gone, unclaimed) = self
            .db
            .run(move |conn| {
                let claimed = claim::claim_all(conn, &ids, lease)?;
                let (units, gone) = load::load_units(conn, claimed.groups, &domain, quiet)?;
                Ok((units, gone, claimed.unclaimed))
            })
            .await?;
        let mut next: HashMap<i64, Delivered> = unclaimed
            .into_iter()
            .map(|(id, state)| (id, Delivered::unclaimed(state)))
            .collect();
        let mut ended: Vec<Ended> = gone.into_iter().map(Ended::gone).collect();
        // As many units at once as there are SMTP slots: an email is rendered only when it
        // can go, so memory holds the emails in flight, not the whole set.
        let mut sends = futures_util::stream::iter(units)
            .map(|unit| self.decide_and_send(unit))
            .buffer_unordered(self.config.smtp_concurrency.max(1));
        while let Some((unit_ended, retry)) = sends.next().await {
            next.extend(retry);
            ended.extend(unit_ended);
        }
        for e in &ended {
            // A released notification that was itself due in this set goes back into the delay
            // and is looked at again in one window; its own batch is being acknowledged now.
            // A pause may last days: the sweep wakes what it holds (A1). Waiting for quiet is
            // a window at a time: back into the delay (A3).
            let after = match e.finish {
                Finish::Released | Finish::Held { rule: "A3", .. } => Delivered::Busy,
                _ => Delivered::Done,
            };
            next.entry(e.claim.notification.id).or_insert(after);
        }
        self.record_all(ended, publisher).await?;
        Ok(next)
    }
}
