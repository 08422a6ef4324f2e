//! A user's preferences (SPEC P1–P5 and the per-kind email switches): read, update, and the
//! audit trail of every change.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use diesel::prelude::*;
use serde_json::{Map, Value, json};
use tidings_common::db::models::PersonKind;
use tidings_common::db::schema::{people, preference_changes, user_preferences};
use tidings_common::rules::{FromCustomers, FromUsers, Visibility};

use crate::AppState;
use crate::error::{ApiError, Body};

/// Every preference field: its name and the values it accepts (`None` means true/false).
const FIELDS: &[(&str, Option<&[&str]>)] = &[
    ("see_conversations", Some(Visibility::ALLOWED)),
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

type Row = (
    String,
    bool,
    String,
    String,
    bool,
    bool,
    bool,
    bool,
    (bool, bool, bool),
);

fn to_json(row: Row) -> Value {
    let (see, show, from_customers, from_users, internal, email_c, email_r, email_i, e) = row;
    json!({
        "email_assignments": e.0,
        "email_project_members": e.1,
        "accept_all_invitations": e.2,
        "see_conversations": see,
        "show_customer_conversations": show,
        "from_customers": from_customers,
        "from_users": from_users,
        "followed_internal": internal,
        "email_customer_messages": email_c,
        "email_replies": email_r,
        "email_internal": email_i,
    })
}

fn load(conn: &mut PgConnection, person_id: i64) -> Result<Value, ApiError> {
    let kind: Option<String> = people::table
        .find(person_id)
        .select(people::kind)
        .first(conn)
        .optional()?;
    match kind.as_deref().and_then(PersonKind::parse) {
        None => return Err(ApiError::not_found("person", person_id)),
        Some(PersonKind::User) => {}
        Some(other) => {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                message: format!(
                    "person {person_id} is a {}; preferences belong to users",
                    other.as_str()
                ),
                field: None,
            });
        }
    }
    // A user created before preferences existed gets the defaults now.
    diesel::insert_into(user_preferences::table)
        .values(user_preferences::person_id.eq(person_id))
        .on_conflict_do_nothing()
        .execute(conn)?;
    let row: Row = user_preferences::table
        .find(person_id)
        .select((
            user_preferences::see_conversations,
            user_preferences::show_customer_conversations,
            user_preferences::from_customers,
            user_preferences::from_users,
            user_preferences::followed_internal,
            user_preferences::email_customer_messages,
            user_preferences::email_replies,
            user_preferences::email_internal,
            (
                user_preferences::email_assignments,
                user_preferences::email_project_members,
                user_preferences::accept_all_invitations,
            ),
        ))
        .first(conn)?;
    Ok(to_json(row))
}

pub async fn get_preferences(
    State(state): State<AppState>,
    Path(person_id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    state
        .db
        .run(move |conn| Ok(load(conn, person_id).map(Json)))
        .await?
}

/// Validates a partial update, naming the field and its allowed values on error.
fn validate(patch: &Map<String, Value>) -> Result<Vec<(&'static str, Value)>, ApiError> {
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

/// Updates some preferences (a partial JSON object) and logs each change.
pub async fn update_preferences(
    State(state): State<AppState>,
    Path(person_id): Path<i64>,
    Body(patch): Body<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let changes = validate(&patch)?;
    state
        .db
        .run(move |conn| {
            Ok(conn.transaction(|conn| {
                let before = load(conn, person_id)?;
                for (field, value) in &changes {
                    apply(conn, person_id, field, value)?;
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
                load(conn, person_id).map(Json)
            }))
        })
        .await?
}

/// Writes one validated preference value.
pub fn apply(
    conn: &mut PgConnection,
    person_id: i64,
    field: &str,
    value: &Value,
) -> QueryResult<usize> {
    use user_preferences as up;
    let target = up::table.find(person_id);
    let text = || value.as_str().unwrap_or_default().to_string();
    let flag = || value.as_bool().unwrap_or_default();
    let now = up::updated_at.eq(diesel::dsl::now);
    match field {
        "see_conversations" => diesel::update(target)
            .set((up::see_conversations.eq(text()), now))
            .execute(conn),
        "show_customer_conversations" => diesel::update(target)
            .set((up::show_customer_conversations.eq(flag()), now))
            .execute(conn),
        "from_customers" => diesel::update(target)
            .set((up::from_customers.eq(text()), now))
            .execute(conn),
        "from_users" => diesel::update(target)
            .set((up::from_users.eq(text()), now))
            .execute(conn),
        "followed_internal" => diesel::update(target)
            .set((up::followed_internal.eq(flag()), now))
            .execute(conn),
        "email_customer_messages" => diesel::update(target)
            .set((up::email_customer_messages.eq(flag()), now))
            .execute(conn),
        "email_replies" => diesel::update(target)
            .set((up::email_replies.eq(flag()), now))
            .execute(conn),
        "email_internal" => diesel::update(target)
            .set((up::email_internal.eq(flag()), now))
            .execute(conn),
        "email_assignments" => diesel::update(target)
            .set((up::email_assignments.eq(flag()), now))
            .execute(conn),
        "email_project_members" => diesel::update(target)
            .set((up::email_project_members.eq(flag()), now))
            .execute(conn),
        "accept_all_invitations" => diesel::update(target)
            .set((up::accept_all_invitations.eq(flag()), now))
            .execute(conn),
        _ => Ok(0),
    }
}
