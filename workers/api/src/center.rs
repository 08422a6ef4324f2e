//! The messaging center (SPEC M1–M5, E1–E3): system notifications, automations and the
//! templates they send, plus the events that produce emails: password resets, invitations,
//! project members, item assignment and status.
//!
//! Every change that produces email records a domain event in its own transaction; the event
//! is published after commit (dispatch's sweep publishes any that did not make it).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use diesel::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};
use tidings_common::db::models::*;
use tidings_common::db::schema::*;
use tidings_common::{events, mail};
use tracing::{info, warn};

use crate::AppState;
use crate::error::{ApiError, Body};
use crate::handlers::{find_person, with_db};

type ApiResult<T> = Result<T, ApiError>;

fn conflict(message: impl Into<String>, field: Option<&str>) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        message: message.into(),
        field: field.map(str::to_string),
    }
}

/// Publishes events a committed transaction recorded; a failure is left to the sweep.
pub async fn publish(state: &AppState, recorded: Vec<(i64, String)>) {
    if recorded.is_empty() {
        return;
    }
    let published = match state.broker.get() {
        Ok(publisher) => {
            tidings_common::sweep::publish_events(&publisher, &state.topology, &recorded).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = published {
        warn!(error = %e, count = recorded.len(), "domain events not published; the dispatch sweep will publish them");
    }
}

fn require_user(conn: &mut PgConnection, id: i64, field: &str) -> ApiResult<Person> {
    let p = find_person(conn, id)?;
    if p.kind() != PersonKind::User {
        return Err(ApiError::bad_field(
            field,
            format!("{field}: person {id} is a {}, not a user", p.kind),
        ));
    }
    Ok(p)
}

// ---- system notifications (M4) ----

pub async fn list_system_notifications(
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<Value>>> {
    with_db(&state, move |conn| {
        let rows: Vec<SystemNotification> = system_notifications::table
            .order(system_notifications::event.asc())
            .select(SystemNotification::as_select())
            .load(conn)?;
        Ok(Json(rows.into_iter().map(system_json).collect()))
    })
    .await
}

fn system_json(n: SystemNotification) -> Value {
    let mut v = serde_json::to_value(&n).unwrap_or_default();
    if !n.can_disable {
        v["warning"] = json!(
            "security-sensitive: cannot be disabled; edit its template with care and keep the link and its expiry"
        );
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemPatch {
    enabled: bool,
}

pub async fn update_system_notification(
    State(state): State<AppState>,
    Path(event): Path<String>,
    Body(patch): Body<SystemPatch>,
) -> ApiResult<Json<Value>> {
    with_db(&state, move |conn| {
        let found: Option<SystemNotification> = system_notifications::table
            .find(&event)
            .select(SystemNotification::as_select())
            .first(conn)
            .optional()?;
        let Some(found) = found else {
            let known: Vec<String> = system_notifications::table
                .select(system_notifications::event)
                .load(conn)?;
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "system notification {event:?} not found; known: {}",
                    known.join(", ")
                ),
                field: None,
            });
        };
        if !patch.enabled && !found.can_disable {
            return Err(conflict(
                format!(
                    "the {event} notification cannot be disabled: people must always be able to reset their password"
                ),
                Some("enabled"),
            ));
        }
        let updated = diesel::update(system_notifications::table.find(&event))
            .set((
                system_notifications::enabled.eq(patch.enabled),
                system_notifications::updated_at.eq(diesel::dsl::now),
            ))
            .returning(SystemNotification::as_returning())
            .get_result(conn)?;
        info!(event, enabled = patch.enabled, "system notification changed");
        Ok(Json(system_json(updated)))
    })
    .await
}

// ---- automations (M1–M3) ----

const TRIGGERS: [&str; 5] = [
    "item_created",
    "status_changed",
    "item_closed",
    "assigned",
    "message_posted",
];
const ACTIONS: [&str; 2] = ["post_message", "send_email"];
const AUDIENCES: [&str; 3] = ["followers", "assignee", "requester"];
const CONDITION_FIELDS: [&str; 6] = [
    "id",
    "kind",
    "status",
    "title",
    "assignee_id",
    "requester_id",
];

fn automation_json(conn: &mut PgConnection, a: &Automation) -> QueryResult<Value> {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    let runs: Vec<(bool, Option<i64>)> = automation_runs::table
        .filter(automation_runs::automation_id.eq(a.id))
        .order(automation_runs::id.desc())
        .limit(100)
        .select((automation_runs::capped, automation_runs::message_id))
        .load(conn)?;
    v["recent_messages"] = json!(runs.iter().filter_map(|r| r.1).collect::<Vec<_>>());
    v["recent_capped_runs"] = json!(runs.iter().filter(|r| r.0).count());
    if a.critical {
        v["note"] = json!(
            "critical: cannot be disabled or deleted; edit its template files (notification) to change the emails"
        );
    }
    Ok(v)
}

pub async fn list_automations(State(state): State<AppState>) -> ApiResult<Json<Vec<Value>>> {
    with_db(&state, move |conn| {
        let all: Vec<Automation> = automations::table
            .order(automations::id.asc())
            .select(Automation::as_select())
            .load(conn)?;
        let mut out = Vec::new();
        for a in &all {
            out.push(automation_json(conn, a)?);
        }
        Ok(Json(out))
    })
    .await
}

pub async fn get_automation(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    with_db(&state, move |conn| {
        let a = find_automation(conn, id)?;
        Ok(Json(automation_json(conn, &a)?))
    })
    .await
}

fn find_automation(conn: &mut PgConnection, id: i64) -> ApiResult<Automation> {
    automations::table
        .find(id)
        .select(Automation::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| ApiError::not_found("automation", id))
}

/// A new automation, or the fields of one to change (all optional when editing).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AutomationBody {
    name: Option<String>,
    trigger: Option<String>,
    #[serde(default, deserialize_with = "some_value")]
    condition: Option<Value>,
    action: Option<String>,
    template: Option<String>,
    body: Option<String>,
    audience: Option<String>,
    bot_id: Option<i64>,
    enabled: Option<bool>,
}

/// Keeps an explicit `null` as `Some(Null)`, so a condition can be removed.
fn some_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn one_of(field: &str, value: &str, allowed: &[&str]) -> ApiResult<()> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(ApiError::bad_field(
            field,
            format!("{field}: {value:?} is not one of {}", allowed.join(", ")),
        ))
    }
}

/// Checks the automation as it would be after the change.
fn validate_automation(state: &AppState, a: &Automation, conn: &mut PgConnection) -> ApiResult<()> {
    if a.name.trim().is_empty() {
        return Err(ApiError::bad_field("name", "name: must not be empty"));
    }
    one_of("trigger", &a.trigger, &TRIGGERS)?;
    match &a.condition {
        None | Some(Value::Null) => {}
        Some(Value::Object(fields)) => {
            for field in fields.keys() {
                one_of("condition", field, &CONDITION_FIELDS)?;
            }
        }
        Some(_) => {
            return Err(ApiError::bad_field(
                "condition",
                "condition: expected an object of item fields and values, e.g. {\"status\": \"closed\"}",
            ));
        }
    }
    match a.action.as_str() {
        "post_message" => {
            let body = a.body.as_deref().unwrap_or_default();
            if body.trim().is_empty() {
                return Err(ApiError::bad_field(
                    "body",
                    "body: a post_message automation needs a message body",
                ));
            }
            if let Err(e) = handlebars::Template::compile(body) {
                return Err(ApiError::bad_field(
                    "body",
                    format!("body: not a valid template: {e}"),
                ));
            }
            if let Some(bot) = a.bot_id {
                let p = find_person(conn, bot)?;
                if p.kind() != PersonKind::Bot {
                    return Err(ApiError::bad_field(
                        "bot_id",
                        format!("bot_id: person {bot} is a {}, not a bot", p.kind),
                    ));
                }
            }
        }
        "send_email" => {
            let template = a.template.as_deref().unwrap_or_default();
            if !state.templates.current().has(template) {
                return Err(ApiError::bad_field(
                    "template",
                    format!(
                        "template: no template {template:?} in the templates folder; create templates/<locale>/{template}/{{subject,text,html}}.hbs first"
                    ),
                ));
            }
            one_of(
                "audience",
                a.audience.as_deref().unwrap_or_default(),
                &AUDIENCES,
            )?;
        }
        other => one_of("action", other, &ACTIONS)?,
    }
    Ok(())
}

/// The editable columns of an automation.
#[derive(Insertable, AsChangeset)]
#[diesel(table_name = automations, treat_none_as_null = true)]
struct AutomationRow<'a> {
    name: &'a str,
    trigger: &'a str,
    condition: Option<&'a Value>,
    action: &'a str,
    template: Option<&'a str>,
    body: Option<&'a str>,
    audience: Option<&'a str>,
    bot_id: Option<i64>,
    enabled: bool,
}

impl<'a> AutomationRow<'a> {
    fn of(a: &'a Automation) -> Self {
        AutomationRow {
            name: &a.name,
            trigger: &a.trigger,
            condition: a.condition.as_ref(),
            action: &a.action,
            template: a.template.as_deref(),
            body: a.body.as_deref(),
            audience: a.audience.as_deref(),
            bot_id: a.bot_id,
            enabled: a.enabled,
        }
    }
}

fn default_bot(conn: &mut PgConnection) -> QueryResult<Option<i64>> {
    people::table
        .filter(people::kind.eq("bot"))
        .filter(people::name.eq("Tidings automations"))
        .order(people::id.asc())
        .select(people::id)
        .first(conn)
        .optional()
}

pub async fn create_automation(
    State(state): State<AppState>,
    Body(body): Body<AutomationBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let st = state.clone();
    with_db(&state, move |conn| {
        let required = |v: Option<String>, f: &str| {
            v.ok_or_else(|| ApiError::bad_field(f, format!("missing field `{f}`")))
        };
        let mut a = Automation {
            id: 0,
            name: required(body.name, "name")?,
            trigger: required(body.trigger, "trigger")?,
            condition: body.condition.filter(|c| !c.is_null()),
            action: required(body.action, "action")?,
            template: body.template,
            body: body.body,
            audience: body.audience,
            bot_id: body.bot_id,
            enabled: body.enabled.unwrap_or(true),
            critical: false,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        };
        if a.action == "post_message" && a.bot_id.is_none() {
            a.bot_id = default_bot(conn)?;
        }
        validate_automation(&st, &a, conn)?;
        let created: Automation = diesel::insert_into(automations::table)
            .values(AutomationRow::of(&a))
            .returning(Automation::as_returning())
            .get_result(conn)?;
        info!(automation.id = created.id, "automation created");
        Ok((StatusCode::CREATED, Json(automation_json(conn, &created)?)))
    })
    .await
}

pub async fn update_automation(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Body(body): Body<AutomationBody>,
) -> ApiResult<Json<Value>> {
    let st = state.clone();
    with_db(&state, move |conn| {
        let mut a = find_automation(conn, id)?;
        if a.critical {
            if body.enabled == Some(false) {
                return Err(conflict(
                    format!("automation {id} is the critical automation (new message → notify all followers); it cannot be disabled. People opt out through their own preferences"),
                    Some("enabled"),
                ));
            }
            if body.trigger.is_some() || body.action.is_some() || body.condition.is_some()
                || body.audience.is_some() || body.template.is_some() || body.body.is_some()
                || body.bot_id.is_some()
            {
                return Err(conflict(
                    format!("automation {id} is the critical automation; only its name can change here. Edit its template files (templates/<locale>/notification/) to change its emails"),
                    None,
                ));
            }
        }
        if let Some(v) = body.name { a.name = v; }
        if let Some(v) = body.trigger { a.trigger = v; }
        if let Some(v) = body.condition { a.condition = (!v.is_null()).then_some(v); }
        if let Some(v) = body.action { a.action = v; }
        if let Some(v) = body.template { a.template = Some(v); }
        if let Some(v) = body.body { a.body = Some(v); }
        if let Some(v) = body.audience { a.audience = Some(v); }
        if let Some(v) = body.bot_id { a.bot_id = Some(v); }
        if let Some(v) = body.enabled { a.enabled = v; }
        if a.action == "post_message" && a.bot_id.is_none() {
            a.bot_id = default_bot(conn)?;
        }
        if !a.critical {
            validate_automation(&st, &a, conn)?;
        }
        let updated: Automation = diesel::update(automations::table.find(id))
            .set((
                AutomationRow::of(&a),
                automations::updated_at.eq(diesel::dsl::now),
            ))
            .returning(Automation::as_returning())
            .get_result(conn)?;
        info!(automation.id = id, enabled = updated.enabled, "automation changed");
        Ok(Json(automation_json(conn, &updated)?))
    })
    .await
}

pub async fn delete_automation(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        let a = find_automation(conn, id)?;
        if a.critical {
            return Err(conflict(
                format!("automation {id} is the critical automation (new message → notify all followers); it cannot be deleted"),
                None,
            ));
        }
        diesel::delete(automations::table.find(id)).execute(conn)?;
        info!(automation.id = id, "automation deleted");
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

// ---- templates (M3, M5) ----

/// Every template by locale, with the automations and system notifications that send it.
pub async fn list_templates(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let catalogue = state.templates.current().catalogue();
    with_db(&state, move |conn| {
        let senders: Vec<(Option<String>, i64, String)> = automations::table
            .select((automations::template, automations::id, automations::name))
            .load(conn)?;
        let system: Vec<(String, String)> = system_notifications::table
            .select((system_notifications::template, system_notifications::event))
            .load(conn)?;
        let mut names: Vec<&String> = catalogue.values().flatten().collect();
        names.sort();
        names.dedup();
        let templates: Vec<Value> = names
            .into_iter()
            .map(|name| {
                json!({
                    "name": name,
                    "locales": catalogue.iter().filter(|(_, n)| n.contains(name)).map(|(l, _)| l).collect::<Vec<_>>(),
                    "automations": senders.iter().filter(|s| s.0.as_deref() == Some(name.as_str()))
                        .map(|s| json!({"id": s.1, "name": s.2})).collect::<Vec<_>>(),
                    "system_notifications": system.iter().filter(|s| &s.0 == name).map(|s| &s.1).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(Json(json!({"templates": templates})))
    })
    .await
}

// ---- password reset (M4) ----

/// Minutes a password reset link stays valid.
const RESET_MINUTES: i64 = 60;

pub async fn request_password_reset(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let secret = state.config.token_secret.clone();
    let base = state.config.public_url.clone();
    let recorded = with_db(&state, move |conn| {
        conn.transaction(|conn| {
            let p = require_user(conn, id, "id")?;
            let expires = chrono::Utc::now().timestamp() + RESET_MINUTES * 60;
            let token = mail::sign_link(&secret, "reset", p.id, expires);
            Ok(events::record(
                conn,
                events::PASSWORD_RESET_REQUESTED,
                json!({"person_id": p.id, "reset_url": format!("{base}/password-reset/{token}"),
                       "expires_in_minutes": RESET_MINUTES}),
            )?)
        })
    })
    .await?;
    publish(&state, vec![recorded]).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"queued": "password_reset", "person_id": id})),
    ))
}

// ---- projects: members (E2) and invitations (E3) ----

/// Adds `person` to the project (as a follower) and records `project_member_added`, once.
fn add_member(
    conn: &mut PgConnection,
    project: i64,
    person: i64,
) -> ApiResult<Option<(i64, String)>> {
    let added = diesel::insert_into(project_follows::table)
        .values((
            project_follows::project_id.eq(project),
            project_follows::person_id.eq(person),
        ))
        .on_conflict_do_nothing()
        .execute(conn)?;
    if added == 0 {
        return Ok(None);
    }
    Ok(Some(events::record(
        conn,
        events::PROJECT_MEMBER_ADDED,
        json!({"project_id": project, "person_id": person}),
    )?))
}

/// Publishes the event of a join, if there was one: 201 when someone joined, 200 when they
/// were already in.
async fn announce_join(state: &AppState, recorded: Option<(i64, String)>) -> StatusCode {
    let joined = recorded.is_some();
    publish(state, recorded.into_iter().collect()).await;
    if joined {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

fn require_project(conn: &mut PgConnection, id: i64) -> ApiResult<()> {
    let found: bool =
        diesel::select(diesel::dsl::exists(projects::table.find(id))).get_result(conn)?;
    found
        .then_some(())
        .ok_or_else(|| ApiError::not_found("project", id))
}

/// Adds a user to a project: they follow it, and followers with E2 on are emailed.
pub async fn add_project_member(
    State(state): State<AppState>,
    Path((project, person_id)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    let recorded = with_db(&state, move |conn| {
        conn.transaction(|conn| {
            require_project(conn, project)?;
            require_user(conn, person_id, "person_id")?;
            add_member(conn, project, person_id)
        })
    })
    .await?;
    Ok(announce_join(&state, recorded).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamBody {
    name: String,
}

/// Creates a team (a group of users).
pub async fn create_team(
    State(state): State<AppState>,
    Body(body): Body<TeamBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = body.name.trim().to_string();
    if name.is_empty() {
        return Err(ApiError::bad_field("name", "name: must not be empty"));
    }
    with_db(&state, move |conn| {
        let id: i64 = diesel::insert_into(teams::table)
            .values(teams::name.eq(&name))
            .returning(teams::id)
            .get_result(conn)?;
        Ok((StatusCode::CREATED, Json(json!({"id": id, "name": name}))))
    })
    .await
}

fn require_team(conn: &mut PgConnection, id: i64) -> ApiResult<()> {
    let found: bool =
        diesel::select(diesel::dsl::exists(teams::table.find(id))).get_result(conn)?;
    found
        .then_some(())
        .ok_or_else(|| ApiError::not_found("team", id))
}

/// Adds a user to a team.
pub async fn add_team_member(
    State(state): State<AppState>,
    Path((team, person)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        require_team(conn, team)?;
        require_user(conn, person, "person_id")?;
        diesel::insert_into(team_members::table)
            .values((
                team_members::team_id.eq(team),
                team_members::person_id.eq(person),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Adds a team to a project: its members follow the project, and the project's followers
/// with E2 on are emailed once about the team.
pub async fn add_project_team(
    State(state): State<AppState>,
    Path((project, team)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    let recorded = with_db(&state, move |conn| {
        conn.transaction(|conn| {
            require_project(conn, project)?;
            require_team(conn, team)?;
            let added = diesel::insert_into(project_teams::table)
                .values((
                    project_teams::project_id.eq(project),
                    project_teams::team_id.eq(team),
                ))
                .on_conflict_do_nothing()
                .execute(conn)?;
            if added == 0 {
                return Ok(None);
            }
            diesel::sql_query(
                "INSERT INTO project_follows (project_id, person_id)
                 SELECT $1, person_id FROM team_members WHERE team_id = $2
                 ON CONFLICT DO NOTHING",
            )
            .bind::<diesel::sql_types::BigInt, _>(project)
            .bind::<diesel::sql_types::BigInt, _>(team)
            .execute(conn)?;
            Ok(Some(events::record(
                conn,
                events::PROJECT_MEMBER_ADDED,
                json!({"project_id": project, "team_id": team}),
            )?))
        })
    })
    .await?;
    Ok(announce_join(&state, recorded).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvitationBody {
    person_id: i64,
}

/// Days an invitation link stays valid.
const INVITATION_DAYS: i64 = 14;

/// Invites a user to a project (E3): with "accept all invitations" on, they are added at once
/// and the invitation is recorded as accepted automatically; otherwise they get an invitation
/// email with a signed accept link.
pub async fn invite(
    State(state): State<AppState>,
    Path(project): Path<i64>,
    Body(body): Body<InvitationBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let secret = state.config.token_secret.clone();
    let base = state.config.public_url.clone();
    let (invitation, recorded) = with_db(&state, move |conn| {
        conn.transaction(|conn| {
            require_project(conn, project)?;
            let p = require_user(conn, body.person_id, "person_id")?;
            let existing: Option<String> = project_invitations::table
                .filter(project_invitations::project_id.eq(project))
                .filter(project_invitations::person_id.eq(p.id))
                .select(project_invitations::status)
                .first(conn)
                .optional()?;
            if let Some(status) = existing {
                return Err(conflict(
                    format!(
                        "person {} was already invited to project {project} (invitation {status})",
                        p.id
                    ),
                    Some("person_id"),
                ));
            }
            let accept_all: bool = user_preferences::table
                .find(p.id)
                .select(user_preferences::accept_all_invitations)
                .first(conn)
                .optional()?
                .unwrap_or(true);
            let status = if accept_all {
                "accepted_automatically"
            } else {
                "pending"
            };
            let (id, accepted_at): (i64, Option<chrono::DateTime<chrono::Utc>>) =
                diesel::insert_into(project_invitations::table)
                    .values((
                        project_invitations::project_id.eq(project),
                        project_invitations::person_id.eq(p.id),
                        project_invitations::status.eq(status),
                        project_invitations::accepted_at.eq(accept_all.then(chrono::Utc::now)),
                    ))
                    .returning((project_invitations::id, project_invitations::accepted_at))
                    .get_result(conn)?;
            let mut recorded = Vec::new();
            if accept_all {
                info!(
                    invitation.id = id,
                    person.id = p.id,
                    project.id = project,
                    "invitation accepted automatically (E3: accept all invitations is on)"
                );
                recorded.extend(add_member(conn, project, p.id)?);
            } else {
                let expires = chrono::Utc::now().timestamp() + INVITATION_DAYS * 86_400;
                let token = mail::sign_link(&secret, "invite", id, expires);
                recorded.push(events::record(
                    conn,
                    events::INVITATION_CREATED,
                    json!({"invitation_id": id, "person_id": p.id, "project_id": project,
                           "accept_url": format!("{base}/invitations/{token}")}),
                )?);
            }
            let invitation = json!({"id": id, "project_id": project, "person_id": p.id,
                                    "status": status, "accepted_at": accepted_at});
            Ok((invitation, recorded))
        })
    })
    .await?;
    publish(&state, recorded).await;
    Ok((StatusCode::CREATED, Json(invitation)))
}

fn verify_invitation(state: &AppState, token: &str) -> ApiResult<i64> {
    mail::verify_link(
        &state.config.token_secret,
        "invite",
        token,
        chrono::Utc::now().timestamp(),
    )
    .map_err(|e| ApiError {
        status: match e {
            mail::LinkError::Expired => StatusCode::GONE,
            _ => StatusCode::BAD_REQUEST,
        },
        message: format!("{e}; nothing was changed"),
        field: None,
    })
}

/// The accept link's page: GET changes nothing (mail scanners follow links).
pub async fn invitation_page(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match verify_invitation(&state, &token) {
        Ok(_) => Html(
            "<!DOCTYPE html><html><body><p>Join the project?</p>\
             <form method=\"post\"><button type=\"submit\">Accept the invitation</button></form>\
             </body></html>",
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Accepts an invitation through its signed link.
pub async fn accept_invitation(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = verify_invitation(&state, &token)?;
    let (result, recorded) = with_db(&state, move |conn| {
        conn.transaction(|conn| {
            let found: Option<(i64, i64, String)> = project_invitations::table
                .find(id)
                .select((
                    project_invitations::project_id,
                    project_invitations::person_id,
                    project_invitations::status,
                ))
                .for_update()
                .first(conn)
                .optional()?;
            let (project, person, status) =
                found.ok_or_else(|| ApiError::not_found("invitation", id))?;
            if status != "pending" {
                return Ok((json!({"invitation_id": id, "status": status}), Vec::new()));
            }
            diesel::update(project_invitations::table.find(id))
                .set((
                    project_invitations::status.eq("accepted"),
                    project_invitations::accepted_at.eq(diesel::dsl::now),
                ))
                .execute(conn)?;
            let recorded = add_member(conn, project, person)?;
            Ok((
                json!({"invitation_id": id, "status": "accepted", "project_id": project}),
                recorded.into_iter().collect(),
            ))
        })
    })
    .await?;
    publish(&state, recorded).await;
    Ok(Json(result))
}

// ---- items: assignment and status (E1, automation triggers) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemPatch {
    #[serde(default, deserialize_with = "some_value")]
    assignee_id: Option<Value>,
    status: Option<String>,
    title: Option<String>,
}

/// Item statuses; `closed` also fires the item-closed trigger.
const STATUSES: [&str; 4] = ["open", "pending", "resolved", "closed"];

pub async fn update_item(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Body(patch): Body<ItemPatch>,
) -> ApiResult<Json<Item>> {
    if let Some(status) = &patch.status {
        one_of("status", status, &STATUSES)?;
    }
    let assignee: Option<Option<i64>> = match patch.assignee_id {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => Some(Some(v.as_i64().ok_or_else(|| {
            ApiError::bad_field("assignee_id", "assignee_id: expected a person id or null")
        })?)),
    };
    let (item, recorded) = with_db(&state, move |conn| {
        conn.transaction(|conn| {
            let before: Item = items::table
                .find(id)
                .select(Item::as_select())
                .for_update()
                .first(conn)
                .optional()?
                .ok_or_else(|| ApiError::not_found("item", id))?;
            if let Some(Some(a)) = assignee {
                require_user(conn, a, "assignee_id")?;
            }
            let title = match patch.title {
                Some(t) if t.trim().is_empty() => {
                    return Err(ApiError::bad_field("title", "title: must not be empty"));
                }
                Some(t) => t.trim().to_string(),
                None => before.title.clone(),
            };
            let after: Item = diesel::update(items::table.find(id))
                .set((
                    items::assignee_id.eq(assignee.unwrap_or(before.assignee_id)),
                    items::status.eq(patch.status.clone().unwrap_or(before.status.clone())),
                    items::title.eq(title),
                ))
                .returning(Item::as_returning())
                .get_result(conn)?;
            let mut recorded = Vec::new();
            if after.assignee_id != before.assignee_id {
                recorded.push(events::record(
                    conn,
                    events::ITEM_ASSIGNED,
                    json!({"item_id": id, "assignee_id": after.assignee_id, "previous_id": before.assignee_id}),
                )?);
            }
            if after.status != before.status {
                recorded.push(events::record(
                    conn,
                    events::ITEM_STATUS_CHANGED,
                    json!({"item_id": id, "status": after.status, "previous": before.status}),
                )?);
            }
            Ok((after, recorded))
        })
    })
    .await?;
    publish(&state, recorded).await;
    Ok(Json(item))
}
