//! Reads the facts the rules decide on, for one message and its possible audience, in two
//! queries (the PL/pgSQL functions `tidings_message_facts` and `tidings_audience`, defined in
//! the migrations, so each session plans them once). Dispatch (who is notified), the mailer (send-time re-check) and explain all use it,
//! so the three can never disagree about the facts.

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

/// Loads the message's facts and those of `only` (or, when `None`, of everyone who could be
/// notified: every active user and every follower of the conversation). `None` when the
/// message does not exist.
pub fn load(
    conn: &mut PgConnection,
    message_id: i64,
    only: Option<Vec<i64>>,
) -> Result<Option<(MessageFacts, Vec<PersonFacts>)>> {
    let message: Option<MessageRow> = diesel::sql_query("SELECT * FROM tidings_message_facts($1)")
        .bind::<BigInt, _>(message_id)
        .get_result(conn)
        .optional()?;
    let Some(m) = message else {
        return Ok(None);
    };
    let message = MessageFacts {
        message_id: m.id,
        conversation_id: m.conversation_id,
        author_id: m.author_id,
        author_kind: PersonKind::parse(&m.author_kind).unwrap_or(PersonKind::Bot),
        internal: m.internal,
        deleted: m.deleted,
        customer_conversation: m.customer_conversation,
    };
    let rows: Vec<PersonRow> = diesel::sql_query("SELECT * FROM tidings_audience($1, $2)")
        .bind::<BigInt, _>(message_id)
        .bind::<Nullable<Array<BigInt>>, _>(only)
        .load(conn)?;
    let people = rows
        .into_iter()
        .map(|r| PersonFacts {
            person_id: r.id,
            kind: PersonKind::parse(&r.kind).unwrap_or(PersonKind::Bot),
            active: r.active,
            has_email: r.has_email,
            preferences: r.preferences(),
            follows_conversation: r.follows_conversation,
            follows_project: r.follows_project,
            participant: r.participant,
            muted_conversation: r.muted,
            seen_up_to: r.seen_up_to,
            last_posted: r.last_posted,
            suppressed: r.suppressed,
        })
        .collect();
    Ok(Some((message, people)))
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
    let Some((message, people)) = load(conn, message_id, Some(vec![person_id]))? else {
        return Ok(None);
    };
    let Some(person) = people.first() else {
        return Ok(None);
    };
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
