//! Reading what the send-time checks and the template need for every claimed group, with one
//! query per table (and the audience functions once for the rules' facts).

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};
use serde_json::{Value, json};
use tidings_common::Result;
use tidings_common::audience;
use tidings_common::db::models::*;
use tidings_common::db::schema::*;
use tidings_common::mail;
use tidings_common::rules::{self, MessageFacts, Verdict};

use super::{Checked, Claim, SendUnit};

/// A3's settings: the seen window, the longest wait and the organisation's default.
#[derive(Debug, Clone, Copy)]
pub(super) struct Quiet {
    pub window: std::time::Duration,
    pub max: std::time::Duration,
    pub by_default: bool,
}

/// Earlier emails of a thread kept in References, besides the conversation's root id.
const REFERENCES_KEPT: usize = 10;

/// (message, Message-ID) of earlier emails, oldest first, by (recipient, conversation).
type EarlierEmails = HashMap<(i64, i64), Vec<(i64, String)>>;

/// The rows every unit of a set draws on, keyed by id.
struct Context {
    verdicts: HashMap<(i64, i64), (MessageFacts, Verdict)>,
    messages: HashMap<i64, Value>,
    recipients: HashMap<i64, Person>,
    conversations: HashMap<i64, Conversation>,
    items: HashMap<i64, Item>,
    projects: HashMap<i64, Project>,
    /// (message, Message-ID) of earlier emails per (recipient, conversation), oldest first.
    sent: EarlierEmails,
}

fn sorted_unique(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Loads the units of `groups`. Returns them, and the claims whose message or recipient no
/// longer exists.
pub(super) fn load_units(
    conn: &mut PgConnection,
    groups: Vec<Vec<Claim>>,
    reply_domain: &str,
    quiet: Quiet,
) -> Result<(Vec<SendUnit>, Vec<Claim>)> {
    if groups.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let context = Context::load(conn, &groups, quiet)?;
    let mut units = Vec::new();
    let mut gone = Vec::new();
    for group in groups {
        let (unit, lost) = context.unit(group, reply_domain);
        units.extend(unit);
        gone.extend(lost);
    }
    Ok((units, gone))
}

impl Context {
    fn load(conn: &mut PgConnection, groups: &[Vec<Claim>], quiet: Quiet) -> Result<Self> {
        let all: Vec<&Notification> = groups.iter().flatten().map(|c| &c.notification).collect();
        let people = sorted_unique(all.iter().map(|n| n.recipient_id).collect());
        let message_ids = sorted_unique(all.iter().map(|n| n.message_id).collect());
        let conversation_ids = sorted_unique(all.iter().map(|n| n.conversation_id).collect());
        let verdicts = verdicts(conn, &all, quiet)?;
        let messages = message_data(conn, &message_ids)?;
        let recipients: HashMap<i64, Person> = people::table
            .filter(people::id.eq_any(&people))
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
            .filter_map(|c| project_of(c, &items))
            .collect();
        let projects: HashMap<i64, Project> = projects::table
            .filter(projects::id.eq_any(&project_ids))
            .select(Project::as_select())
            .load(conn)?
            .into_iter()
            .map(|p| (p.id, p))
            .collect();
        let sent = earlier_emails(conn, groups)?;
        Ok(Context {
            verdicts,
            messages,
            recipients,
            conversations,
            items,
            projects,
            sent,
        })
    }

    /// The unit of one group (`None` when nothing in it is left to decide), and the claims
    /// whose message or recipient is gone.
    fn unit(&self, group: Vec<Claim>, reply_domain: &str) -> (Option<SendUnit>, Vec<Claim>) {
        let lead = &group[0].notification;
        let (Some(recipient), Some(conversation)) = (
            self.recipients.get(&lead.recipient_id),
            self.conversations.get(&lead.conversation_id),
        ) else {
            return (None, group);
        };
        let mut checked = Vec::new();
        let mut gone = Vec::new();
        for claim in group {
            let n = &claim.notification;
            let key = (n.message_id, n.recipient_id);
            match (self.verdicts.get(&key), self.messages.get(&key.0)) {
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
            return (None, gone);
        }
        let primary = checked.remove(0);
        let references = self.references(recipient.id, conversation.id, &primary, reply_domain);
        let item = conversation.item_id.and_then(|i| self.items.get(&i));
        let project = project_of(conversation, &self.items).and_then(|p| self.projects.get(&p));
        let data = json!({
            "recipient": { "id": recipient.id, "name": recipient.name, "email": recipient.email, "kind": recipient.kind },
            "conversation": { "id": conversation.id, "subject": conversation.subject },
            "item": item.map(|i| json!({ "id": i.id, "kind": i.kind, "title": i.title })),
            "project": project.map(|p| json!({ "id": p.id, "name": p.name })),
        });
        let unit = SendUnit {
            recipient: recipient.clone(),
            primary,
            companions: checked,
            data,
            references,
        };
        (Some(unit), gone)
    }

    /// The conversation's root id, then the last earlier emails to this recipient there.
    fn references(
        &self,
        recipient: i64,
        conversation: i64,
        primary: &Checked,
        reply_domain: &str,
    ) -> Vec<String> {
        let before = primary.claim.notification.message_id;
        let mut references: Vec<String> = self
            .sent
            .get(&(recipient, conversation))
            .into_iter()
            .flatten()
            .filter(|(m, _)| *m < before)
            .map(|(_, id)| id.clone())
            .collect();
        let keep_from = references.len().saturating_sub(REFERENCES_KEPT);
        references.drain(..keep_from);
        references.insert(0, mail::conversation_root_id(conversation, reply_domain));
        references
    }
}

/// (message, Message-ID) of the last emails sent to each group's recipient in its
/// conversation before the group's messages, oldest first, by (recipient, conversation): one
/// index lookup per group, however long the history.
fn earlier_emails(conn: &mut PgConnection, groups: &[Vec<Claim>]) -> QueryResult<EarlierEmails> {
    #[derive(QueryableByName)]
    struct Earlier {
        #[diesel(sql_type = BigInt)]
        recipient_id: i64,
        #[diesel(sql_type = BigInt)]
        conversation_id: i64,
        #[diesel(sql_type = BigInt)]
        message_id: i64,
        #[diesel(sql_type = Text)]
        email_message_id: String,
    }
    let (mut recipients, mut conversations, mut before) = (Vec::new(), Vec::new(), Vec::new());
    let mut most = 0;
    for group in groups {
        let lead = &group[0].notification;
        recipients.push(lead.recipient_id);
        conversations.push(lead.conversation_id);
        before.push(
            group
                .iter()
                .map(|c| c.notification.message_id)
                .max()
                .unwrap_or(0),
        );
        most = most.max(group.len());
    }
    let rows: Vec<Earlier> = diesel::sql_query(
        "SELECT g.recipient_id, g.conversation_id, e.message_id, e.email_message_id
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])
              AS g(recipient_id, conversation_id, before)
         CROSS JOIN LATERAL (
             SELECT n.message_id, n.email_message_id FROM notifications n
             WHERE n.recipient_id = g.recipient_id AND n.conversation_id = g.conversation_id
               AND n.message_id < g.before AND n.state = $4
             ORDER BY n.message_id DESC LIMIT $5) e
         ORDER BY e.message_id",
    )
    .bind::<Array<BigInt>, _>(&recipients)
    .bind::<Array<BigInt>, _>(&conversations)
    .bind::<Array<BigInt>, _>(&before)
    .bind::<Text, _>(NotificationState::Sent)
    // The primary may come after other messages of its group: enough to keep
    // REFERENCES_KEPT before it.
    .bind::<BigInt, _>((REFERENCES_KEPT + most) as i64)
    .load(conn)?;
    let mut sent = EarlierEmails::new();
    for r in rows {
        sent.entry((r.recipient_id, r.conversation_id))
            .or_default()
            .push((r.message_id, r.email_message_id));
    }
    Ok(sent)
}

/// The project a conversation belongs to, through its item or directly.
fn project_of(conversation: &Conversation, items: &HashMap<i64, Item>) -> Option<i64> {
    conversation
        .item_id
        .and_then(|i| items.get(&i))
        .map(|i| i.project_id)
        .or(conversation.project_id)
}

/// The rules' verdicts per (message, recipient), from the facts of every pair of the set read
/// at once. An email that would go now to someone who waits for quiet (A3) waits while its
/// conversation is still active: the conversations' last messages are read only then.
fn verdicts(
    conn: &mut PgConnection,
    all: &[&Notification],
    quiet: Quiet,
) -> Result<HashMap<(i64, i64), (MessageFacts, Verdict)>> {
    let mut pairs: Vec<(i64, i64)> = all.iter().map(|n| (n.message_id, n.recipient_id)).collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut waiting = Vec::new();
    let mut verdicts: HashMap<(i64, i64), (MessageFacts, Verdict)> = audience::pairs(conn, &pairs)?
        .into_iter()
        .map(|(key, (message, person))| {
            let verdict = rules::email(&message, &person);
            if verdict.yes && person.wait_for_quiet.unwrap_or(quiet.by_default) {
                waiting.push((key, message.conversation_id));
            }
            (key, (message, verdict))
        })
        .collect();
    if waiting.is_empty() {
        return Ok(verdicts);
    }
    let conversations = sorted_unique(waiting.iter().map(|(_, c)| *c).collect());
    let last = last_messages(conn, &conversations)?;
    let created: HashMap<(i64, i64), chrono::DateTime<chrono::Utc>> = all
        .iter()
        .map(|n| ((n.message_id, n.recipient_id), n.created_at))
        .collect();
    let now = tidings_common::clock::now();
    let window = chrono::TimeDelta::from_std(quiet.window).unwrap_or_default();
    for (key, conversation) in waiting {
        let (Some(last), Some(created)) = (last.get(&conversation), created.get(&key)) else {
            continue;
        };
        if let Some(until) =
            rules::quiet_until(*last, *created + window, quiet.window, quiet.max, now)
            && let Some(entry) = verdicts.get_mut(&key)
        {
            entry.1 = rules::waiting_for_quiet(until);
        }
    }
    Ok(verdicts)
}

/// When each conversation's last message was posted.
fn last_messages(
    conn: &mut PgConnection,
    conversations: &[i64],
) -> QueryResult<HashMap<i64, chrono::DateTime<chrono::Utc>>> {
    #[derive(QueryableByName)]
    struct Last {
        #[diesel(sql_type = BigInt)]
        conversation_id: i64,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
        at: Option<chrono::DateTime<chrono::Utc>>,
    }
    let rows: Vec<Last> = diesel::sql_query(
        "SELECT c AS conversation_id,
                (SELECT m.created_at FROM messages m WHERE m.conversation_id = c
                  ORDER BY m.id DESC LIMIT 1) AS at
         FROM unnest($1::bigint[]) AS c",
    )
    .bind::<Array<BigInt>, _>(conversations)
    .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.conversation_id, r.at?)))
        .collect())
}

/// Each message as the template shows it.
fn message_data(conn: &mut PgConnection, message_ids: &[i64]) -> QueryResult<HashMap<i64, Value>> {
    let rows: Vec<(Message, String)> = messages::table
        .inner_join(people::table)
        .filter(messages::id.eq_any(message_ids))
        .select((Message::as_select(), people::name))
        .load(conn)?;
    let mut files: HashMap<i64, Vec<Value>> = HashMap::new();
    for a in tidings_common::attachments::of_messages(conn, message_ids)? {
        files.entry(a.message_id).or_default().push(json!({
            "id": a.id,
            "name": a.name,
            "size": a.size,
            "size_text": tidings_common::attachments::human_size(a.size),
            "content_type": a.content_type,
            "inline": a.inline,
            "content_id": a.content_id,
        }));
    }
    Ok(rows
        .into_iter()
        .map(|(m, author)| {
            let data = json!({
                "id": m.id,
                "body": m.body,
                "internal": m.internal,
                "edited": m.edited_at.is_some(),
                "posted_at": m.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                "author": { "id": m.author_id, "name": author },
                "files": files.remove(&m.id).unwrap_or_default(),
            });
            (m.id, data)
        })
        .collect())
}
