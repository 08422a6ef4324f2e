//! Domain events (user created, item assigned, invitation, …): written in the transaction of
//! the change they describe, published after commit (see [`crate::announce`]), handled once by
//! dispatch. A publish lost between commit and broker is found again by the sweep of unhandled
//! events.
//!
//! [`DomainEvent`] is the one definition of every event and its fields: the row's `kind`
//! column and JSON payload are written and read only through it.

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::db::schema::domain_events;

/// The AMQP payload announcing a domain event; the row holds the rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRecorded {
    pub event_id: i64,
}

/// Prefix of the routing key of every domain event (`domain.<kind>`).
pub const ROUTING_PREFIX: &str = "domain.";

/// Name of the system notification sent to the previous assignee (E1); it has no domain
/// event of its own: an [`DomainEvent::ItemAssigned`] causes it.
pub const ITEM_UNASSIGNED: &str = "item_unassigned";

/// Who joined a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Joined {
    User { person_id: i64 },
    Team { team_id: i64 },
}

/// Every domain event and what it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DomainEvent {
    /// A user was created: the welcome email (M4).
    UserCreated { person_id: i64 },
    /// A password reset was asked for: the reset email with its signed link (M4).
    PasswordResetRequested {
        person_id: i64,
        reset_url: String,
        expires_in_minutes: i64,
    },
    /// A user was invited to a project and must accept (E3).
    InvitationCreated {
        invitation_id: i64,
        person_id: i64,
        project_id: i64,
        accept_url: String,
    },
    /// A user or a team joined a project (E2).
    ProjectMemberAdded {
        project_id: i64,
        #[serde(flatten)]
        joined: Joined,
    },
    /// An item was created (automation trigger). `auto_forwarded`: the ticket comes from a
    /// person's mail that a rule forwarded (`Auto-Submitted: auto-forwarded`); such mail is
    /// never answered automatically (RFC 3834), so no automation runs on it.
    ItemCreated {
        item_id: i64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        auto_forwarded: bool,
    },
    /// An item's assignee changed (E1, automation trigger).
    ItemAssigned {
        item_id: i64,
        assignee_id: Option<i64>,
        previous_id: Option<i64>,
    },
    /// An item's status changed (automation triggers).
    ItemStatusChanged {
        item_id: i64,
        status: String,
        previous: String,
    },
    /// A message was posted in an item's conversation while an automation listens for it.
    MessagePosted { message_id: i64, item_id: i64 },
}

impl DomainEvent {
    /// The stored kind, also the last part of the routing key.
    pub fn kind(&self) -> &'static str {
        match self {
            DomainEvent::UserCreated { .. } => "user_created",
            DomainEvent::PasswordResetRequested { .. } => "password_reset_requested",
            DomainEvent::InvitationCreated { .. } => "invitation_created",
            DomainEvent::ProjectMemberAdded { .. } => "project_member_added",
            DomainEvent::ItemCreated { .. } => "item_created",
            DomainEvent::ItemAssigned { .. } => "item_assigned",
            DomainEvent::ItemStatusChanged { .. } => "item_status_changed",
            DomainEvent::MessagePosted { .. } => "message_posted",
        }
    }

    /// Reads an event back from its row.
    pub fn from_row(kind: &str, payload: Value) -> Result<Self, String> {
        let mut payload = match payload {
            Value::Object(fields) => fields,
            other => {
                return Err(format!(
                    "payload of a {kind} event is not an object: {other}"
                ));
            }
        };
        payload.insert("kind".into(), Value::String(kind.to_string()));
        serde_json::from_value(Value::Object(payload))
            .map_err(|e| format!("a {kind} event cannot be read: {e}"))
    }

    fn payload(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Value::Object(fields) = &mut value {
            fields.remove("kind");
        }
        value
    }
}

/// A domain event a transaction wrote, to publish after it commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub id: i64,
    pub kind: String,
}

impl RecordedEvent {
    /// Routing key of this event.
    pub fn routing_key(&self) -> String {
        format!("{ROUTING_PREFIX}{}", self.kind)
    }
}

/// Writes an event row; publish it after the transaction commits.
pub fn record(conn: &mut PgConnection, event: &DomainEvent) -> QueryResult<RecordedEvent> {
    let kind = event.kind();
    let id = diesel::insert_into(domain_events::table)
        .values((
            domain_events::kind.eq(kind),
            domain_events::payload.eq(event.payload()),
        ))
        .returning(domain_events::id)
        .get_result(conn)?;
    Ok(RecordedEvent {
        id,
        kind: kind.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_their_row() {
        for event in [
            DomainEvent::UserCreated { person_id: 1 },
            DomainEvent::ProjectMemberAdded {
                project_id: 2,
                joined: Joined::Team { team_id: 3 },
            },
            DomainEvent::ProjectMemberAdded {
                project_id: 2,
                joined: Joined::User { person_id: 4 },
            },
            DomainEvent::ItemAssigned {
                item_id: 5,
                assignee_id: None,
                previous_id: Some(6),
            },
        ] {
            let back = DomainEvent::from_row(event.kind(), event.payload()).unwrap();
            assert_eq!(back, event);
        }
        let err = DomainEvent::from_row("item_created", serde_json::json!({"item": 1}));
        assert!(err.unwrap_err().contains("item_created"));
        assert!(DomainEvent::from_row("no_such_event", serde_json::json!({})).is_err());
    }
}
