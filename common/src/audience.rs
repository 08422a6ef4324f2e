//! Reads the facts the rules decide on, for a whole set of messages and their possible
//! audiences, in two queries (the PL/pgSQL functions `tidings_messages_facts` and
//! `tidings_audiences`, defined in the migrations, so each session plans them once). Dispatch
//! (who is notified), the mailer (send-time re-check) and explain all use it, so the three can
//! never disagree about the facts.
//!
//! Only people some rule could notify are read: the followers of the conversation, and the
//! users whose P3 or P4 setting is `all` for that kind of message. Every other person is
//! refused by every rule (see `rules::notify`), so leaving them out changes no verdict.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text};
use serde::Serialize;

use crate::db::models::PersonKind;
use crate::error::Result;
use crate::rules::{
    self, FromCustomers, FromUsers, MessageFacts, PersonFacts, Preferences, Verdict, Visibility,
};

#[derive(QueryableByName)]
struct MessageRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    conversation_id: i64,
    #[diesel(sql_type = BigInt)]
    author_id: i64,
    #[diesel(sql_type = Text)]
    author_kind: String,
    #[diesel(sql_type = Bool)]
    internal: bool,
    #[diesel(sql_type = Bool)]
    deleted: bool,
    #[diesel(sql_type = Bool)]
    customer_conversation: bool,
}

#[derive(QueryableByName)]
struct PersonRow {
    #[diesel(sql_type = BigInt)]
    message_id: i64,
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Bool)]
    active: bool,
    #[diesel(sql_type = Bool)]
    has_email: bool,
    #[diesel(sql_type = Bool)]
    follows_conversation: bool,
    #[diesel(sql_type = Bool)]
    follows_project: bool,
    #[diesel(sql_type = Bool)]
    participant: bool,
    #[diesel(sql_type = Bool)]
    muted: bool,
    #[diesel(sql_type = Nullable<BigInt>)]
    seen_up_to: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    last_posted: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    see_conversations: Option<String>,
    #[diesel(sql_type = Nullable<Bool>)]
    show_customer_conversations: Option<bool>,
    #[diesel(sql_type = Nullable<Text>)]
    from_customers: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    from_users: Option<String>,
    #[diesel(sql_type = Nullable<Bool>)]
    followed_internal: Option<bool>,
    #[diesel(sql_type = Nullable<Bool>)]
    email_customer_messages: Option<bool>,
    #[diesel(sql_type = Nullable<Bool>)]
    email_replies: Option<bool>,
    #[diesel(sql_type = Nullable<Bool>)]
    email_internal: Option<bool>,
    #[diesel(sql_type = Bool)]
    suppressed: bool,
    #[diesel(sql_type = Nullable<diesel::sql_types::Timestamptz>)]
    held_until: Option<chrono::DateTime<chrono::Utc>>,
    #[diesel(sql_type = Nullable<Bool>)]
    wait_for_quiet: Option<bool>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Timestamptz>)]
    work_held_until: Option<chrono::DateTime<chrono::Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    work_held_local: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    held_local: Option<String>,
}

impl PersonRow {
    fn preferences(&self) -> Preferences {
        let d = Preferences::default();
        Preferences {
            see_conversations: self
                .see_conversations
                .as_deref()
                .and_then(Visibility::parse)
                .unwrap_or(d.see_conversations),
            show_customer_conversations: self
                .show_customer_conversations
                .unwrap_or(d.show_customer_conversations),
            from_customers: self
                .from_customers
                .as_deref()
                .and_then(FromCustomers::parse)
                .unwrap_or(d.from_customers),
            from_users: self
                .from_users
                .as_deref()
                .and_then(FromUsers::parse)
                .unwrap_or(d.from_users),
            followed_internal: self.followed_internal.unwrap_or(d.followed_internal),
            email_customer_messages: self
                .email_customer_messages
                .unwrap_or(d.email_customer_messages),
            email_replies: self.email_replies.unwrap_or(d.email_replies),
            email_internal: self.email_internal.unwrap_or(d.email_internal),
        }
    }
}

impl MessageRow {
    fn facts(self) -> MessageFacts {
        MessageFacts {
            message_id: self.id,
            conversation_id: self.conversation_id,
            author_id: self.author_id,
            author_kind: PersonKind::parse(&self.author_kind).unwrap_or(PersonKind::Bot),
            internal: self.internal,
            deleted: self.deleted,
            customer_conversation: self.customer_conversation,
        }
    }
}

impl PersonRow {
    fn facts(self) -> PersonFacts {
        PersonFacts {
            preferences: self.preferences(),
            person_id: self.id,
            kind: PersonKind::parse(&self.kind).unwrap_or(PersonKind::Bot),
            active: self.active,
            has_email: self.has_email,
            follows_conversation: self.follows_conversation,
            follows_project: self.follows_project,
            participant: self.participant,
            muted_conversation: self.muted,
            seen_up_to: self.seen_up_to,
            last_posted: self.last_posted,
            suppressed: self.suppressed,
            held_until: self.held_until,
            held_local: self.held_local,
            wait_for_quiet: self.wait_for_quiet,
            off_hours: self.work_held_until.map(|until| rules::OffHours {
                until,
                local: self.work_held_local.unwrap_or_default(),
            }),
        }
    }
}

/// The facts of each existing message of `message_ids`, by id.
fn message_facts(
    conn: &mut PgConnection,
    message_ids: &[i64],
) -> Result<HashMap<i64, MessageFacts>> {
    let rows: Vec<MessageRow> = diesel::sql_query("SELECT * FROM tidings_messages_facts($1)")
        .bind::<Array<BigInt>, _>(message_ids)
        .load(conn)?;
    Ok(rows.into_iter().map(|r| (r.id, r.facts())).collect())
}

/// The people rows of `tidings_audiences`: the possible audience of each message, or only the
/// given (message, person) pairs.
fn people_rows(
    conn: &mut PgConnection,
    message_ids: &[i64],
    people: Option<&[i64]>,
) -> Result<Vec<PersonRow>> {
    Ok(
        diesel::sql_query("SELECT * FROM tidings_audiences($1, $2, $3)")
            .bind::<Array<BigInt>, _>(message_ids)
            .bind::<Nullable<Array<BigInt>>, _>(people)
            .bind::<diesel::sql_types::Timestamptz, _>(crate::clock::now())
            .load(conn)?,
    )
}

/// Each existing message of `message_ids` with everyone who could be notified about it, in
/// two queries for the whole set. Unknown ids are left out.
///
/// The facts are those [`rules::notify`] decides on; the ones only [`rules::email`] reads
/// (`muted_conversation`, `seen_up_to`, `last_posted`, `suppressed`) are not read and come
/// back false or `None`. Use [`pairs`] for an email decision.
pub fn audiences(
    conn: &mut PgConnection,
    message_ids: &[i64],
) -> Result<Vec<(MessageFacts, Vec<PersonFacts>)>> {
    if message_ids.is_empty() {
        return Ok(Vec::new());
    }
    let facts = message_facts(conn, message_ids)?;
    let mut people: HashMap<i64, Vec<PersonFacts>> = HashMap::new();
    for row in people_rows(conn, message_ids, None)? {
        people.entry(row.message_id).or_default().push(row.facts());
    }
    let mut result: Vec<(MessageFacts, Vec<PersonFacts>)> = facts
        .into_values()
        .map(|m| {
            let audience = people.remove(&m.message_id).unwrap_or_default();
            (m, audience)
        })
        .collect();
    result.sort_by_key(|(m, _)| m.message_id);
    Ok(result)
}

/// The facts of each (message, person) pair of `pairs`, in two queries for the whole set.
/// Pairs whose message or person does not exist are left out.
pub fn pairs(
    conn: &mut PgConnection,
    pairs: &[(i64, i64)],
) -> Result<HashMap<(i64, i64), (MessageFacts, PersonFacts)>> {
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    let (messages, people): (Vec<i64>, Vec<i64>) = pairs.iter().copied().unzip();
    let mut unique = messages.clone();
    unique.sort_unstable();
    unique.dedup();
    let facts = message_facts(conn, &unique)?;
    let mut result = HashMap::with_capacity(pairs.len());
    for row in people_rows(conn, &messages, Some(&people))? {
        if let Some(message) = facts.get(&row.message_id) {
            result.insert((row.message_id, row.id), (message.clone(), row.facts()));
        }
    }
    Ok(result)
}

/// Why a person was or was not notified and emailed about a message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Explanation {
    pub message_id: i64,
    pub person_id: i64,
    pub message_kind: &'static str,
    /// What the rules say now about the in-app notification.
    pub notify_now: Verdict,
    /// What the rules say now about the email, if it were due now.
    pub email_now: Verdict,
    /// What actually happened, if the person had a notification.
    pub notification: Option<NotificationOutcome>,
}

/// The stored outcome of a notification.
#[derive(Debug, Serialize, Queryable, utoipa::ToSchema)]
pub struct NotificationOutcome {
    pub notification_id: i64,
    pub state: String,
    pub reason: Option<String>,
    pub rule: Option<String>,
    pub notified_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub smtp_reply: Option<String>,
    pub coalesced_into: Option<i64>,
}

/// Explains one (message, person) pair; `None` when either does not exist.
pub fn explain(
    conn: &mut PgConnection,
    message_id: i64,
    person_id: i64,
) -> Result<Option<Explanation>> {
    use crate::db::schema::notifications as n;
    let Some((message, person)) =
        pairs(conn, &[(message_id, person_id)])?.remove(&(message_id, person_id))
    else {
        return Ok(None);
    };
    let person = &person;
    let notification = n::table
        .filter(n::message_id.eq(message_id))
        .filter(n::recipient_id.eq(person_id))
        .select((
            n::id,
            n::state,
            n::reason,
            n::rule,
            n::created_at,
            n::sent_at,
            n::smtp_reply,
            n::coalesced_into,
        ))
        .first::<NotificationOutcome>(conn)
        .optional()?;
    Ok(Some(Explanation {
        message_id,
        person_id,
        message_kind: message.kind().as_str(),
        notify_now: rules::notify(&message, person),
        email_now: rules::email(&message, person),
        notification,
    }))
}
