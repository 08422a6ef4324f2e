//! A user's preferences (SPEC P1–P5 and the per-kind email switches): the fields and their
//! allowed values, reading, validating, and writing with the audit trail of every change.
//! The admin routes and `/me` share it.

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tidings_common::db::models::PersonKind;
use tidings_common::db::schema::{people, preference_changes, user_preferences};
use tidings_common::rules::{FromCustomers, FromUsers, Visibility};

use crate::error::ApiError;

/// P1: a permission, not a preference. Admins change it; through `/me` a person only reads it.
pub const PERMISSION: &str = "see_conversations";

/// Every preference field: its name and the values it accepts (`None` means true/false).
const FIELDS: &[(&str, Option<&[&str]>)] = &[
    (PERMISSION, Some(Visibility::ALLOWED)),
    ("show_customer_conversations", None),
    ("from_customers", Some(FromCustomers::ALLOWED)),
    ("from_users", Some(FromUsers::ALLOWED)),
    ("followed_internal", None),
    ("email_customer_messages", None),
    ("email_replies", None),
    ("email_internal", None),
    ("email_assignments", None),
    ("email_project_members", None),
    ("accept_all_invitations", None),
];

/// Every preference of a user: read as one row, written as one changeset (only the fields
/// a patch names change).
#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = user_preferences)]
pub struct Preferences {
    see_conversations: String,
    show_customer_conversations: bool,
    from_customers: String,
    from_users: String,
    followed_internal: bool,
    email_customer_messages: bool,
    email_replies: bool,
    email_internal: bool,
    email_assignments: bool,
    email_project_members: bool,
    accept_all_invitations: bool,
}

/// A partial change: the fields it names, each already validated.
#[derive(Debug, Clone, Default, AsChangeset, Deserialize, utoipa::ToSchema)]
#[diesel(table_name = user_preferences)]
pub struct PreferencesPatch {
    see_conversations: Option<String>,
    show_customer_conversations: Option<bool>,
    from_customers: Option<String>,
    from_users: Option<String>,
    followed_internal: Option<bool>,
    email_customer_messages: Option<bool>,
    email_replies: Option<bool>,
    email_internal: Option<bool>,
    email_assignments: Option<bool>,
    email_project_members: Option<bool>,
    accept_all_invitations: Option<bool>,
}

/// Every preference of user `person_id` (404 for an unknown person, 409 for one who is not a
/// user).
pub fn read(conn: &mut PgConnection, person_id: i64) -> Result<Value, ApiError> {
    let kind: Option<PersonKind> = people::table
        .find(person_id)
        .select(people::kind)
        .first(conn)
        .optional()?;
    match kind {
        None => return Err(ApiError::not_found("person", person_id)),
        Some(PersonKind::User) => {}
        Some(other) => {
            return Err(ApiError::conflict(
                format!("person {person_id} is a {other}; preferences belong to users"),
                None,
            ));
        }
    }
    ensure_row(conn, person_id)?;
    let row: Preferences = user_preferences::table
        .find(person_id)
        .select(Preferences::as_select())
        .first(conn)?;
    Ok(serde_json::to_value(row).unwrap_or_default())
}

/// A user created before preferences existed gets the defaults now.
fn ensure_row(conn: &mut PgConnection, person_id: i64) -> QueryResult<usize> {
    diesel::insert_into(user_preferences::table)
        .values(user_preferences::person_id.eq(person_id))
        .on_conflict_do_nothing()
        .execute(conn)
}

/// Validates a partial update, naming the field and its allowed values on error.
pub fn validate(patch: &Map<String, Value>) -> Result<Vec<(&'static str, Value)>, ApiError> {
    let mut changes = Vec::new();
    for (field, value) in patch {
        let Some((name, allowed)) = FIELDS.iter().find(|(name, _)| name == field) else {
            let names: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
            return Err(ApiError::bad_field(
                field,
                format!(
                    "{field}: unknown preference; known preferences are {}",
                    names.join(", ")
                ),
            ));
        };
        match (allowed, value) {
            (Some(allowed), Value::String(s)) if allowed.contains(&s.as_str()) => {}
            (None, Value::Bool(_)) => {}
            (Some(allowed), _) => {
                return Err(ApiError::bad_field(
                    name,
                    format!("{name}: {value} is not one of {}", allowed.join(", ")),
                ));
            }
            (None, _) => {
                return Err(ApiError::bad_field(
                    name,
                    format!("{name}: {value} is not true or false"),
                ));
            }
        }
        changes.push((*name, value.clone()));
    }
    Ok(changes)
}

/// Applies validated `changes` in one transaction and records each one that changed a
/// value in `preference_changes`; returns every preference after the change.
pub fn update(
    conn: &mut PgConnection,
    person_id: i64,
    changes: &[(&'static str, Value)],
) -> Result<Value, ApiError> {
    conn.transaction(|conn| {
        let before = read(conn, person_id)?;
        let values: Map<String, Value> = changes
            .iter()
            .map(|(field, value)| (field.to_string(), value.clone()))
            .collect();
        apply(conn, person_id, Value::Object(values))?;
        for (field, value) in changes {
            if before[*field] != *value {
                diesel::insert_into(preference_changes::table)
                    .values((
                        preference_changes::person_id.eq(person_id),
                        preference_changes::field.eq(*field),
                        preference_changes::old_value.eq(before[*field].to_string()),
                        preference_changes::new_value.eq(value.to_string()),
                        preference_changes::source.eq("api"),
                    ))
                    .execute(conn)?;
            }
        }
        read(conn, person_id)
    })
}

/// Writes validated preference values (a JSON object of field names and values).
pub fn apply(conn: &mut PgConnection, person_id: i64, values: Value) -> Result<usize, ApiError> {
    let patch: PreferencesPatch = serde_json::from_value(values)
        .map_err(|e| ApiError::bad_field("preferences", format!("preferences: {e}")))?;
    ensure_row(conn, person_id)?;
    Ok(diesel::update(user_preferences::table.find(person_id))
        .set((&patch, user_preferences::updated_at.eq(diesel::dsl::now)))
        .execute(conn)?)
}
