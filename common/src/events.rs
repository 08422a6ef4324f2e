//! Domain events (user created, item assigned, invitation, …): written in the transaction of
//! the change they describe, published after commit, handled once by dispatch. A publish lost
//! between commit and broker is found again by the sweep of unhandled events.

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

pub const USER_CREATED: &str = "user_created";
pub const PASSWORD_RESET_REQUESTED: &str = "password_reset_requested";
pub const INVITATION_CREATED: &str = "invitation_created";
pub const PROJECT_MEMBER_ADDED: &str = "project_member_added";
pub const ITEM_CREATED: &str = "item_created";
pub const ITEM_ASSIGNED: &str = "item_assigned";
pub const ITEM_STATUS_CHANGED: &str = "item_status_changed";
pub const MESSAGE_POSTED: &str = "message_posted";

/// Routing key of an event of `kind`.
pub fn routing_key(kind: &str) -> String {
    format!("{ROUTING_PREFIX}{kind}")
}

/// Writes an event row; publish it after the transaction commits.
pub fn record(conn: &mut PgConnection, kind: &str, payload: Value) -> QueryResult<(i64, String)> {
    let id = diesel::insert_into(domain_events::table)
        .values((
            domain_events::kind.eq(kind),
            domain_events::payload.eq(payload),
        ))
        .returning(domain_events::id)
        .get_result(conn)?;
    Ok((id, kind.to_string()))
}
