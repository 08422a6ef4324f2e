//! Rows as the roles read them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use super::schema::*;
pub use super::states::{
    Direction, LogStatus, NotificationState, OutboxState, PersonKind, SendState, SkipReason,
};

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = people)]
pub struct Person {
    pub id: i64,
    pub kind: PersonKind,
    pub name: String,
    pub email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub active: bool,
    /// Preferred language of emails (`en`, `sv`, …); unset means the default locale.
    pub locale: Option<String>,
    /// An admin may use the admin routes (and the console at `/admin`) with their own session.
    pub admin: bool,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = projects)]
pub struct Project {
    pub id: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = items)]
pub struct Item {
    pub id: i64,
    pub project_id: i64,
    pub kind: String,
    pub title: String,
    pub assignee_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub status: String,
    /// The customer (or user) who asked for the item; automations can email them.
    pub requester_id: Option<i64>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = conversations)]
pub struct Conversation {
    pub id: i64,
    pub project_id: Option<i64>,
    pub item_id: Option<i64>,
    pub subject: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = messages)]
pub struct Message {
    pub id: i64,
    pub conversation_id: i64,
    pub author_id: i64,
    pub body: String,
    pub internal: bool,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub edited_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = notifications)]
pub struct Notification {
    pub id: i64,
    pub message_id: i64,
    pub recipient_id: i64,
    pub conversation_id: i64,
    pub state: NotificationState,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub email_message_id: String,
    pub sent_at: Option<DateTime<Utc>>,
    pub smtp_reply: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub rule: Option<String>,
    pub coalesced_into: Option<i64>,
}

/// A row of the email log as read back: its id and time, and what was written.
#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = email_log)]
pub struct EmailLogEntry {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    #[diesel(embed)]
    #[serde(flatten)]
    pub entry: NewEmailLogEntry,
}

/// A row to append to the email log; see [`crate::db::email_log`].
#[derive(Debug, Clone, Insertable, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = email_log)]
pub struct NewEmailLogEntry {
    pub direction: Direction,
    pub status: LogStatus,
    pub reason: Option<String>,
    pub notification_id: Option<i64>,
    pub message_id: Option<i64>,
    pub conversation_id: Option<i64>,
    pub mail_from: Option<String>,
    pub rcpt_to: Option<String>,
    pub subject: Option<String>,
    pub message_id_header: Option<String>,
    pub smtp_reply: Option<String>,
    pub rule: Option<String>,
    pub outbox_id: Option<i64>,
    /// For inbound email: what it caused (posted a message, started a conversation, …).
    pub action: Option<String>,
    /// For inbound email: its record (its source, while the log keeps it).
    pub inbound_email_id: Option<i64>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = automations)]
pub struct Automation {
    pub id: i64,
    pub name: String,
    pub trigger: String,
    pub condition: Option<serde_json::Value>,
    pub action: String,
    pub template: Option<String>,
    pub body: Option<String>,
    pub audience: Option<String>,
    pub bot_id: Option<i64>,
    pub enabled: bool,
    pub critical: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = system_notifications)]
pub struct SystemNotification {
    pub event: String,
    pub template: String,
    pub description: String,
    pub enabled: bool,
    pub can_disable: bool,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = outbox_emails)]
pub struct OutboxEmail {
    pub id: i64,
    pub template: String,
    pub source: String,
    pub system_event: Option<String>,
    pub automation_id: Option<i64>,
    pub recipient_id: i64,
    pub conversation_id: Option<i64>,
    pub data: serde_json::Value,
    pub state: OutboxState,
    pub reason: Option<String>,
    pub attempts: i32,
    pub due_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub email_message_id: String,
    pub smtp_reply: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}
