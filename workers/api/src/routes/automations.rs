//! Automations (SPEC M1–M3): listing, creating, editing and deleting them, with validation of
//! their trigger, condition, action and template.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidings_common::clock;
use tidings_common::db::models::*;
use tidings_common::db::schema::*;
use tracing::info;

use crate::error::{ApiError, ApiResult, Body};
use crate::lookup::*;
use crate::state::{AppState, with_db};
use crate::validate::*;

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

/// An automation as the api shows it: its row, and what it did lately.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AutomationView {
    #[serde(flatten)]
    automation: Automation,
    /// Messages its last 100 runs posted.
    recent_messages: Vec<i64>,
    /// How many of its last 100 runs the loop cap stopped.
    recent_capped_runs: usize,
    /// Set on the critical automation: what may and may not change.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'static str>,
}

fn automation_json(conn: &mut PgConnection, a: &Automation) -> QueryResult<AutomationView> {
    let runs: Vec<(bool, Option<i64>)> = automation_runs::table
        .filter(automation_runs::automation_id.eq(a.id))
        .order(automation_runs::id.desc())
        .limit(100)
        .select((automation_runs::capped, automation_runs::message_id))
        .load(conn)?;
    Ok(AutomationView {
        automation: a.clone(),
        recent_messages: runs.iter().filter_map(|r| r.1).collect(),
        recent_capped_runs: runs.iter().filter(|r| r.0).count(),
        note: a.critical.then_some(
            "critical: cannot be disabled or deleted; edit its template files (notification) to change the emails",
        ),
    })
}

#[utoipa::path(
    get,
    path = "/automations",
    tag = "automations",
    responses(
        (status = 200, description = "every automation", body = Vec<AutomationView>),
    ),
    security(("bearer" = [])),
)]
pub async fn list_automations(
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<AutomationView>>> {
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

#[utoipa::path(
    get,
    path = "/automations/{id}",
    tag = "automations",
    params(("id" = i64, Path, description = "the id")),
    responses(
        (status = 200, description = "the automation", body = AutomationView),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get_automation(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<AutomationView>> {
    with_db(&state, move |conn| {
        let a = find_automation(conn, id)?;
        Ok(Json(automation_json(conn, &a)?))
    })
    .await
}

/// A new automation, or the fields of one to change (all optional when editing).
#[derive(Deserialize, Default, utoipa::ToSchema)]
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

/// Checks the automation as it would be after the change.
fn validate_automation(state: &AppState, a: &Automation, conn: &mut PgConnection) -> ApiResult<()> {
    single_line("name", &a.name, NAME_MAX)?;
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
            if let Err(e) = tidings_common::templates::guard::check_source(body) {
                let at = e.line.map(|l| format!(" (line {l})")).unwrap_or_default();
                return Err(ApiError::bad_field(
                    "body",
                    format!("body: not a valid template{at}: {}", e.reason),
                ));
            }
            if let Some(bot) = a.bot_id {
                let p = find_person(conn, bot)?;
                if p.kind != PersonKind::Bot {
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

#[utoipa::path(
    post,
    path = "/automations",
    tag = "automations",
    request_body = AutomationBody,
    responses(
        (status = 201, description = "the automation", body = AutomationView),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_automation(
    State(state): State<AppState>,
    Body(body): Body<AutomationBody>,
) -> ApiResult<(StatusCode, Json<AutomationView>)> {
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
            created_at: clock::now(),
            updated_at: clock::now(),
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

#[utoipa::path(
    patch,
    path = "/automations/{id}",
    tag = "automations",
    params(("id" = i64, Path, description = "the id")),
    request_body = AutomationBody,
    responses(
        (status = 200, description = "the automation after the change", body = AutomationView),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
        (status = 409, description = "conflicts with the current state", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn update_automation(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Body(body): Body<AutomationBody>,
) -> ApiResult<Json<AutomationView>> {
    let st = state.clone();
    with_db(&state, move |conn| {
        let mut a = find_automation(conn, id)?;
        if a.critical {
            if body.enabled == Some(false) {
                return Err(ApiError::conflict(
                    format!("automation {id} is the critical automation (new message → notify all followers); it cannot be disabled. People opt out through their own preferences"),
                    Some("enabled"),
                ));
            }
            if body.trigger.is_some() || body.action.is_some() || body.condition.is_some()
                || body.audience.is_some() || body.template.is_some() || body.body.is_some()
                || body.bot_id.is_some()
            {
                return Err(ApiError::conflict(
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

#[utoipa::path(
    delete,
    path = "/automations/{id}",
    tag = "automations",
    params(("id" = i64, Path, description = "the id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
        (status = 409, description = "conflicts with the current state", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_automation(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        let a = find_automation(conn, id)?;
        if a.critical {
            return Err(ApiError::conflict(
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
