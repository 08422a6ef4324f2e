//! Sending a set of due notifications: claim, re-check at send time, coalesce, render, send,
//! record. The database work is set-based: a handful of statements for the whole set (one
//! claim transaction, one read per table, one record transaction), so the cost per
//! notification stays small however many arrive together.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
use lettre::AsyncTransport;
use serde_json::{Value, json};
use tidings_common::audience;
use tidings_common::db::models::*;
use tidings_common::db::schema::*;
use tidings_common::mail::{self, OutboundEmail, ReplyToken, UnsubscribeScope, UnsubscribeToken};
use tidings_common::rules::{self, MessageFacts, Verdict};
use tidings_common::{Error, NOTIFICATION_TEMPLATE, Result};
use tracing::{info, warn};

use crate::Mailer;

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
}

/// One recorded end of a claim.
struct Outcome {
    claim: Claim,
    rcpt_to: Option<String>,
    subject: Option<String>,
    finish: Finish,
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

/// What the claim step found.
struct Claimed {
    /// Grouped by (recipient, conversation); the first of each group came due first.
    groups: Vec<Vec<Claim>>,
    /// Ids that could not be claimed, with their state (`None`: no such notification).
    unclaimed: Vec<(i64, Option<String>)>,
}

impl Mailer {
    /// Handles a set of due notifications; says for each id what happens next.
    pub async fn deliver_all(&self, ids: Vec<i64>) -> Result<HashMap<i64, Delivered>> {
        let lease =
            chrono::Duration::from_std(self.config.send_lease).unwrap_or(chrono::Duration::MAX);
        let domain = self.config.reply_domain.clone();
        let started = std::time::Instant::now();
        let count = ids.len();
        let (units, gone, unclaimed) = self
            .db
            .run(move |conn| {
                let claimed = claim_all(conn, &ids, lease)?;
                let (units, gone) = load_units(conn, claimed.groups, &domain)?;
                Ok((units, gone, claimed.unclaimed))
            })
            .await?;
        let loaded = started.elapsed();
        let mut result: HashMap<i64, Delivered> = HashMap::new();
        for (id, state) in unclaimed {
            let next = match state.as_deref() {
                // Claimed by another worker, alone or as a companion: look again in one window.
                // `pending` here means that worker released it between this claim's update and
                // its read of the states (a released companion); it too needs another look.
                Some("sending" | "pending") => Delivered::Busy,
                _ => Delivered::Done,
            };
            result.insert(id, next);
        }
        let mut outcomes: Vec<Outcome> = gone
            .into_iter()
            .map(|claim| Outcome {
                claim,
                rcpt_to: None,
                subject: None,
                finish: Finish::Failed {
                    reason: "message or recipient no longer exists".into(),
                    reply: None,
                },
            })
            .collect();
        let sends = units.into_iter().map(|unit| async move {
            let mut out = Vec::new();
            let next = self.decide_and_send(unit, &mut out).await;
            (out, next)
        });
        for (unit_outcomes, next) in futures_util::future::join_all(sends).await {
            if let Some((id, next)) = next {
                result.insert(id, next);
            }
            outcomes.extend(unit_outcomes);
        }
        for o in &outcomes {
            // A released notification that was itself due in this set goes back into the delay
            // and is looked at again in one window; its own batch is being acknowledged now.
            let next = match o.finish {
                Finish::Released => Delivered::Busy,
                _ => Delivered::Done,
            };
            result.entry(o.claim.notification.id).or_insert(next);
        }
        let sent = started.elapsed();
        self.record_all(outcomes).await?;
        tracing::debug!(
            count,
            load_ms = loaded.as_millis() as u64,
            send_ms = (sent - loaded).as_millis() as u64,
            record_ms = (started.elapsed() - sent).as_millis() as u64,
            "set handled"
        );
        Ok(result)
    }

    /// Decides one unit, sends its email if due, and pushes the outcome of every claim in it.
    /// Returns what the primary notification needs next when that is not `Done`.
    async fn decide_and_send(
        &self,
        unit: SendUnit,
        out: &mut Vec<Outcome>,
    ) -> Option<(i64, Delivered)> {
        let rcpt_to = unit.recipient.email.clone();
        let push =
            |out: &mut Vec<Outcome>, claim: &Claim, subject: Option<String>, finish: Finish| {
                out.push(Outcome {
                    claim: claim.clone(),
                    rcpt_to: rcpt_to.clone(),
                    subject,
                    finish,
                });
            };
        if !unit.primary.verdict.yes {
            // The companions go back to wait for their own batches.
            push(
                out,
                &unit.primary.claim,
                None,
                Finish::Skipped(unit.primary.verdict.clone()),
            );
            for c in &unit.companions {
                push(out, &c.claim, None, Finish::Released);
            }
            return None;
        }
        // Companions the rules now exclude are skipped on their own account.
        let mut included = vec![&unit.primary];
        for c in &unit.companions {
            if c.verdict.yes {
                included.push(c);
            } else {
                push(out, &c.claim, None, Finish::Skipped(c.verdict.clone()));
            }
        }
        let primary = &unit.primary.claim;
        match self.send(&unit, &included).await {
            SendResult::Sent { subject, reply } => {
                push(out, primary, Some(subject.clone()), Finish::Sent { reply });
                for c in &included[1..] {
                    let finish = Finish::Coalesced {
                        into: primary.notification.id,
                    };
                    push(out, &c.claim, Some(subject.clone()), finish);
                }
                None
            }
            SendResult::Failed {
                subject,
                reason,
                reply,
            } => {
                push(out, primary, subject, Finish::Failed { reason, reply });
                for c in &included[1..] {
                    push(out, &c.claim, None, Finish::Released);
                }
                None
            }
            SendResult::Temporary {
                subject,
                reason,
                reply,
            } => {
                for c in &included[1..] {
                    push(out, &c.claim, None, Finish::Released);
                }
                let attempts = primary.notification.attempts as usize;
                let tiers = &self.config.retry_tiers;
                if attempts > tiers.len() {
                    let reason = format!("{reason}; gave up after {attempts} attempts");
                    push(out, primary, subject, Finish::Failed { reason, reply });
                    return None;
                }
                let tier = attempts.saturating_sub(1);
                push(
                    out,
                    primary,
                    subject,
                    Finish::Deferred {
                        reason,
                        reply,
                        retry_in: tiers[tier],
                    },
                );
                Some((primary.notification.id, Delivered::RetryLater { tier }))
            }
        }
    }

    /// Renders and sends one email carrying every included message, oldest first.
    async fn send(&self, unit: &SendUnit, included: &[&Checked]) -> SendResult {
        let primary = included[0];
        let recipient = &unit.recipient;
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
        let mut messages: Vec<&Checked> = included.to_vec();
        messages.sort_by_key(|c| c.message.message_id);
        let mut data = unit.data.clone();
        data["message"] = primary.data.clone();
        data["messages"] = Value::Array(messages.iter().map(|c| c.data.clone()).collect());
        data["reply_address"] = json!(reply_address);
        data["unsubscribe_url"] = json!(unsubscribe_url);
        let rendered = self.templates.current().render(
            NOTIFICATION_TEMPLATE,
            recipient.locale.as_deref(),
            &data,
        );
        let content = match rendered {
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
            references: unit.references.clone(),
            unsubscribe_url: Some(unsubscribe_url),
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
        let notification = primary.claim.notification.id;
        match sent {
            Ok(response) => {
                let reply = format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                );
                info!(
                    notification.id = notification,
                    to,
                    messages = included.len(),
                    "email sent"
                );
                SendResult::Sent { subject, reply }
            }
            Err(e) if e.is_permanent() => {
                warn!(notification.id = notification, to, error = %e, "email refused");
                SendResult::Failed {
                    subject: Some(subject),
                    reason: "refused by the SMTP server".into(),
                    reply: Some(e.to_string()),
                }
            }
            Err(e) => {
                warn!(notification.id = notification, to, error = %e, "email deferred");
                SendResult::Temporary {
                    subject: Some(subject),
                    reason: "temporary SMTP failure".into(),
                    reply: Some(e.to_string()),
                }
            }
        }
    }

    /// Records the end of every claim in one transaction: a conditional update per row (only
    /// where the claim still holds) in one statement, then the log rows of those updated.
    async fn record_all(&self, outcomes: Vec<Outcome>) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        let mut rows = RecordRows::default();
        let mut log: HashMap<i64, NewEmailLogEntry> = HashMap::new();
        for o in outcomes {
            let n = &o.claim.notification;
            let (state, status, reason, rule, reply, due_at, sent_at, coalesced_into) = match o
                .finish
            {
                Finish::Sent { reply } => (
                    "sent",
                    Some("sent"),
                    None,
                    None,
                    Some(reply),
                    None,
                    Some(now),
                    None,
                ),
                Finish::Skipped(v) => (
                    "skipped",
                    Some("skipped"),
                    Some(v.reason.to_string()),
                    Some(v.rule.to_string()),
                    None,
                    None,
                    None,
                    None,
                ),
                Finish::Coalesced { into } => (
                    "skipped",
                    Some("skipped"),
                    Some("coalesced".to_string()),
                    None,
                    None,
                    None,
                    Some(now),
                    Some(into),
                ),
                Finish::Failed { reason, reply } => (
                    "failed",
                    Some("failed"),
                    Some(reason),
                    None,
                    reply,
                    None,
                    None,
                    None,
                ),
                Finish::Deferred {
                    reason,
                    reply,
                    retry_in,
                } => (
                    "pending",
                    Some("deferred"),
                    Some(reason),
                    None,
                    reply,
                    Some(
                        now + chrono::Duration::from_std(retry_in).unwrap_or(chrono::Duration::MAX),
                    ),
                    None,
                    None,
                ),
                Finish::Released => (
                    "pending",
                    None,
                    n.reason.clone(),
                    n.rule.clone(),
                    n.smtp_reply.clone(),
                    None,
                    None,
                    None,
                ),
            };
            if let Some(status) = status {
                log.insert(
                    n.id,
                    NewEmailLogEntry {
                        direction: "outbound".into(),
                        status: status.into(),
                        reason: reason.clone(),
                        notification_id: Some(n.id),
                        message_id: Some(n.message_id),
                        conversation_id: Some(n.conversation_id),
                        mail_from: Some(self.config.mail_from.clone()),
                        rcpt_to: o.rcpt_to.clone(),
                        subject: o.subject.clone(),
                        message_id_header: Some(n.email_message_id.clone()),
                        smtp_reply: reply.clone(),
                        rule: rule.clone(),
                        ..Default::default()
                    },
                );
            }
            rows.id.push(n.id);
            rows.claimed_at.push(o.claim.claimed_at);
            rows.state.push(state.to_string());
            rows.reason.push(reason);
            rows.rule.push(rule);
            rows.smtp_reply.push(reply);
            rows.due_at.push(due_at);
            rows.sent_at.push(sent_at);
            rows.coalesced_into.push(coalesced_into);
        }
        // The emails went out already: keep trying to record that through a short database
        // outage, or a later worker would take the claims over and send them again.
        let mut pause = std::time::Duration::from_millis(200);
        let deadline = std::time::Instant::now() + RECORD_PATIENCE;
        let updated = loop {
            let (rows, mut log) = (rows.clone(), log.clone());
            let attempt = self
                .db
                .run(move |conn| {
                    conn.transaction(|conn| {
                    #[derive(QueryableByName)]
                    struct Updated {
                        #[diesel(sql_type = BigInt)]
                        id: i64,
                    }
                    let updated: Vec<Updated> = diesel::sql_query(
                        "WITH v AS (
                             SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[],
                                                  $5::text[], $6::text[], $7::timestamptz[],
                                                  $8::timestamptz[], $9::bigint[])
                               AS v(id, claimed_at, state, reason, rule, smtp_reply, due_at, sent_at, coalesced_into))
                         UPDATE notifications n
                            SET state = v.state, reason = v.reason, rule = v.rule, smtp_reply = v.smtp_reply,
                                due_at = COALESCE(v.due_at, n.due_at), sent_at = v.sent_at,
                                coalesced_into = v.coalesced_into, updated_at = now()
                           FROM v
                          WHERE n.id = v.id AND n.state = 'sending' AND n.claimed_at = v.claimed_at
                         RETURNING n.id",
                    )
                    .bind::<Array<BigInt>, _>(&rows.id)
                    .bind::<Array<Timestamptz>, _>(&rows.claimed_at)
                    .bind::<Array<Text>, _>(&rows.state)
                    .bind::<Array<Nullable<Text>>, _>(&rows.reason)
                    .bind::<Array<Nullable<Text>>, _>(&rows.rule)
                    .bind::<Array<Nullable<Text>>, _>(&rows.smtp_reply)
                    .bind::<Array<Nullable<Timestamptz>>, _>(&rows.due_at)
                    .bind::<Array<Nullable<Timestamptz>>, _>(&rows.sent_at)
                    .bind::<Array<Nullable<BigInt>>, _>(&rows.coalesced_into)
                    .load(conn)?;
                    let entries: Vec<NewEmailLogEntry> =
                        updated.iter().filter_map(|u| log.remove(&u.id)).collect();
                    if !entries.is_empty() {
                        diesel::insert_into(email_log::table).values(&entries).execute(conn)?;
                    }
                    Ok::<_, Error>((updated.len(), rows.id.len()))
                })
            })
            .await;
            match attempt {
                Ok(updated) => break updated,
                Err(e) if e.is_transient() && std::time::Instant::now() < deadline => {
                    warn!(error = %e, "recording sent emails failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        };
        if updated.0 < updated.1 {
            warn!(
                taken_over = updated.1 - updated.0,
                "claims were taken over before they finished; leaving them to their new owner"
            );
        }
        Ok(())
    }
}

/// How long the outcome of sent emails is retried through a database outage.
const RECORD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Columns of the record statement, one array per column.
#[derive(Default, Clone)]
struct RecordRows {
    id: Vec<i64>,
    claimed_at: Vec<DateTime<Utc>>,
    state: Vec<String>,
    reason: Vec<Option<String>>,
    rule: Vec<Option<String>>,
    smtp_reply: Vec<Option<String>>,
    due_at: Vec<Option<DateTime<Utc>>>,
    sent_at: Vec<Option<DateTime<Utc>>>,
    coalesced_into: Vec<Option<i64>>,
}

/// Claims the due notifications `ids` for sending (`pending`, or `sending` whose lease ran
/// out), and with each the same recipient's other `pending` notifications in the same
/// conversation, for coalescing; all in one transaction.
///
/// Transaction-scoped advisory locks per (recipient, conversation), taken in key order, make
/// workers whose batches come due together take turns, so the first claims them all and the
/// others find their notifications already taken.
fn claim_all(conn: &mut PgConnection, ids: &[i64], lease: chrono::Duration) -> Result<Claimed> {
    conn.transaction(|conn| {
        diesel::sql_query(
            "SELECT pg_advisory_xact_lock(k) FROM (
                 SELECT DISTINCT hashtextextended(recipient_id || ':' || conversation_id, 0) AS k
                 FROM notifications WHERE id = ANY($1) ORDER BY k) keys",
        )
        .bind::<Array<BigInt>, _>(ids)
        .execute(conn)?;
        let now = Utc::now();
        let claimed: Vec<Notification> = diesel::update(
            notifications::table
                .filter(notifications::id.eq_any(ids))
                .filter(
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
        .get_results(conn)?;
        let claimed_ids: Vec<i64> = claimed.iter().map(|n| n.id).collect();
        let unclaimed_ids: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !claimed_ids.contains(id))
            .collect();
        let states: Vec<(i64, String)> = if unclaimed_ids.is_empty() {
            Vec::new()
        } else {
            notifications::table
                .filter(notifications::id.eq_any(&unclaimed_ids))
                .select((notifications::id, notifications::state))
                .load(conn)?
        };
        let unclaimed = unclaimed_ids
            .iter()
            .map(|id| {
                (
                    *id,
                    states.iter().find(|(i, _)| i == id).map(|(_, s)| s.clone()),
                )
            })
            .collect();
        if claimed.is_empty() {
            return Ok(Claimed {
                groups: Vec::new(),
                unclaimed,
            });
        }
        // The stored claim time (microseconds) is what later conditional updates compare.
        let claimed_at = claimed[0].claimed_at.unwrap_or(now);
        let recipients: Vec<i64> = claimed.iter().map(|n| n.recipient_id).collect();
        let conversations: Vec<i64> = claimed.iter().map(|n| n.conversation_id).collect();
        let companions: Vec<Notification> = diesel::sql_query(
            "UPDATE notifications n SET state = 'sending', claimed_at = $3, updated_at = now()
             FROM unnest($1::bigint[], $2::bigint[]) AS p(recipient_id, conversation_id)
             WHERE n.recipient_id = p.recipient_id AND n.conversation_id = p.conversation_id
               AND n.state = 'pending'
             RETURNING n.*",
        )
        .bind::<Array<BigInt>, _>(&recipients)
        .bind::<Array<BigInt>, _>(&conversations)
        .bind::<Timestamptz, _>(claimed_at)
        .load(conn)?;
        let mut groups: BTreeMap<(i64, i64), Vec<Claim>> = BTreeMap::new();
        for n in claimed.into_iter().chain(companions) {
            groups
                .entry((n.recipient_id, n.conversation_id))
                .or_default()
                .push(Claim {
                    claimed_at,
                    notification: n,
                });
        }
        let groups = groups
            .into_values()
            .map(|mut group| {
                // The notification that came due first leads; claimed ones before companions.
                group.sort_by_key(|c| {
                    (c.notification.state == "pending", c.notification.message_id)
                });
                group
            })
            .collect();
        Ok(Claimed { groups, unclaimed })
    })
}

/// Reads what the send-time checks and the templates need for every claimed group, with one
/// query per table (and two per message for the rules' facts). Returns the units, and the
/// claims whose message or recipient no longer exists.
fn load_units(
    conn: &mut PgConnection,
    groups: Vec<Vec<Claim>>,
    reply_domain: &str,
) -> Result<(Vec<SendUnit>, Vec<Claim>)> {
    if groups.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let all: Vec<&Notification> = groups.iter().flatten().map(|c| &c.notification).collect();
    let mut person_ids: Vec<i64> = all.iter().map(|n| n.recipient_id).collect();
    let mut message_ids: Vec<i64> = all.iter().map(|n| n.message_id).collect();
    let mut conversation_ids: Vec<i64> = all.iter().map(|n| n.conversation_id).collect();
    message_ids.sort_unstable();
    message_ids.dedup();
    conversation_ids.sort_unstable();
    conversation_ids.dedup();

    // The rules' facts, per message for the recipients concerned.
    let mut verdicts: HashMap<(i64, i64), (MessageFacts, Verdict)> = HashMap::new();
    for &message_id in &message_ids {
        let mut recipients: Vec<i64> = all
            .iter()
            .filter(|n| n.message_id == message_id)
            .map(|n| n.recipient_id)
            .collect();
        recipients.sort_unstable();
        recipients.dedup();
        if let Some((message, people)) = audience::load(conn, message_id, Some(recipients))? {
            for person in people {
                let verdict = rules::email(&message, &person);
                verdicts.insert((message_id, person.person_id), (message.clone(), verdict));
            }
        }
    }
    let rows: Vec<(Message, String)> = messages::table
        .inner_join(people::table)
        .filter(messages::id.eq_any(&message_ids))
        .select((Message::as_select(), people::name))
        .load(conn)?;
    let message_data: HashMap<i64, Value> = rows
        .into_iter()
        .map(|(m, author)| {
            let data = json!({
                "id": m.id,
                "body": m.body,
                "internal": m.internal,
                "edited": m.edited_at.is_some(),
                "posted_at": m.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                "author": { "id": m.author_id, "name": author },
            });
            (m.id, data)
        })
        .collect();
    person_ids.sort_unstable();
    person_ids.dedup();
    let recipients: HashMap<i64, Person> = people::table
        .filter(people::id.eq_any(&person_ids))
        .select(Person::as_select())
        .load(conn)?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    let conversations: HashMap<i64, Conversation> = conversations::table
        .filter(conversations::id.eq_any(&conversation_ids))
        .select(Conversation::as_select())
        .load(conn)?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let item_ids: Vec<i64> = conversations.values().filter_map(|c| c.item_id).collect();
    let items: HashMap<i64, Item> = items::table
        .filter(items::id.eq_any(&item_ids))
        .select(Item::as_select())
        .load(conn)?
        .into_iter()
        .map(|i| (i.id, i))
        .collect();
    let project_ids: Vec<i64> = conversations
        .values()
        .filter_map(|c| {
            c.item_id
                .and_then(|i| items.get(&i))
                .map(|i| i.project_id)
                .or(c.project_id)
        })
        .collect();
    let projects: HashMap<i64, Project> = projects::table
        .filter(projects::id.eq_any(&project_ids))
        .select(Project::as_select())
        .load(conn)?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    // Earlier emails of each recipient in each conversation, for threading.
    let sent: Vec<(i64, i64, i64, String)> = notifications::table
        .filter(notifications::recipient_id.eq_any(&person_ids))
        .filter(notifications::conversation_id.eq_any(&conversation_ids))
        .filter(notifications::state.eq("sent"))
        .order(notifications::message_id.asc())
        .select((
            notifications::recipient_id,
            notifications::conversation_id,
            notifications::message_id,
            notifications::email_message_id,
        ))
        .load(conn)?;

    let mut units = Vec::new();
    let mut gone = Vec::new();
    for group in groups {
        let lead = &group[0].notification;
        let (Some(recipient), Some(conversation)) = (
            recipients.get(&lead.recipient_id),
            conversations.get(&lead.conversation_id),
        ) else {
            gone.extend(group);
            continue;
        };
        let mut checked = Vec::new();
        for claim in group {
            let key = (
                claim.notification.message_id,
                claim.notification.recipient_id,
            );
            match (verdicts.get(&key), message_data.get(&key.0)) {
                (Some((message, verdict)), Some(data)) => checked.push(Checked {
                    claim,
                    message: message.clone(),
                    verdict: verdict.clone(),
                    data: data.clone(),
                }),
                _ => gone.push(claim),
            }
        }
        if checked.is_empty() {
            continue;
        }
        let primary = checked.remove(0);
        let mut references: Vec<String> = sent
            .iter()
            .filter(|(r, c, m, _)| {
                *r == recipient.id
                    && *c == conversation.id
                    && *m < primary.claim.notification.message_id
            })
            .map(|(_, _, _, id)| id.clone())
            .collect();
        let keep_from = references.len().saturating_sub(10);
        references.drain(..keep_from);
        references.insert(0, mail::conversation_root_id(conversation.id, reply_domain));
        let item = conversation.item_id.and_then(|i| items.get(&i));
        let project = item
            .map(|i| i.project_id)
            .or(conversation.project_id)
            .and_then(|p| projects.get(&p));
        let data = json!({
            "recipient": { "id": recipient.id, "name": recipient.name, "email": recipient.email, "kind": recipient.kind },
            "conversation": { "id": conversation.id, "subject": conversation.subject },
            "item": item.map(|i| json!({ "id": i.id, "kind": i.kind, "title": i.title })),
            "project": project.map(|p| json!({ "id": p.id, "name": p.name })),
        });
        units.push(SendUnit {
            recipient: recipient.clone(),
            primary,
            companions: checked,
            data,
            references,
        });
    }
    Ok((units, gone))
}
