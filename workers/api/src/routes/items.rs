//! Items (tickets and tasks): creating them, following them, assignment and status (E1,
//! automation triggers).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use diesel::prelude::*;
use serde::Deserialize;
use serde_json::Value;
use tidings_common::announce::Announcements;
use tidings_common::db::models::*;
use tidings_common::db::schema::*;
use tidings_common::events::{self, DomainEvent};

use crate::error::{ApiError, ApiResult, Body};
use crate::lookup::*;
use crate::state::{AppState, with_db};
use crate::validate::*;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItemBody {
    project_id: i64,
    kind: String,
    title: String,
    assignee_id: Option<i64>,
    /// Who asked for it (the customer who opened a ticket); they follow the item.
    requester_id: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/items",
    tag = "items",
    request_body = NewItemBody,
    responses(
        (status = 201, description = "the item", body = Item),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_item(
    State(state): State<AppState>,
    Body(body): Body<NewItemBody>,
) -> ApiResult<(StatusCode, Json<Item>)> {
    if !matches!(body.kind.as_str(), "ticket" | "task") {
        return Err(ApiError::bad_field(
            "kind",
            format!("kind: {:?} is not one of ticket, task", body.kind),
        ));
    }
    let title = single_line("title", &body.title, SUBJECT_MAX)?;
    let (created, recorded) = with_db(&state, move |conn| {
        conn.transaction(|conn| {
            if let Some(requester) = body.requester_id {
                let person = find_person(conn, requester)?;
                if person.kind == PersonKind::Bot {
                    return Err(ApiError::bad_field(
                        "requester_id",
                        format!("requester_id: person {requester} is a bot"),
                    ));
                }
            }
            require_project(conn, body.project_id)?;
            if let Some(assignee) = body.assignee_id {
                let person = find_person(conn, assignee)?;
                if person.kind != PersonKind::User {
                    return Err(ApiError::bad_field(
                        "assignee_id",
                        format!(
                            "assignee_id: person {assignee} is a {}, not a user",
                            person.kind
                        ),
                    ));
                }
            }
            let item = diesel::insert_into(items::table)
                .values((
                    items::project_id.eq(body.project_id),
                    items::kind.eq(body.kind),
                    items::title.eq(title),
                    items::assignee_id.eq(body.assignee_id),
                    items::requester_id.eq(body.requester_id),
                ))
                .returning(Item::as_returning())
                .get_result(conn)?;
            if let Some(requester) = body.requester_id {
                diesel::insert_into(item_follows::table)
                    .values((
                        item_follows::item_id.eq(item.id),
                        item_follows::person_id.eq(requester),
                    ))
                    .on_conflict_do_nothing()
                    .execute(conn)?;
            }
            use tidings_common::events;
            let mut recorded = vec![events::record(
                conn,
                &DomainEvent::ItemCreated {
                    item_id: item.id,
                    auto_forwarded: false,
                },
            )?];
            if item.assignee_id.is_some() {
                recorded.push(events::record(
                    conn,
                    &DomainEvent::ItemAssigned {
                        item_id: item.id,
                        assignee_id: item.assignee_id,
                        previous_id: None,
                    },
                )?);
            }
            Ok(((StatusCode::CREATED, Json(item)), recorded))
        })
    })
    .await?;
    state.announce(Announcements::events(recorded)).await;
    Ok(created)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemPatch {
    #[serde(default, deserialize_with = "some_value")]
    assignee_id: Option<Value>,
    status: Option<String>,
    title: Option<String>,
}

/// Item statuses; `closed` also fires the item-closed trigger.
const STATUSES: [&str; 4] = ["open", "pending", "resolved", "closed"];

#[utoipa::path(
    patch,
    path = "/items/{id}",
    tag = "items",
    params(("id" = i64, Path, description = "the id")),
    request_body = ItemPatch,
    responses(
        (status = 200, description = "the item after the change", body = Item),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
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
            let before = lock_item(conn, id)?;
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
                    &DomainEvent::ItemAssigned {
                        item_id: id,
                        assignee_id: after.assignee_id,
                        previous_id: before.assignee_id,
                    },
                )?);
            }
            if after.status != before.status {
                recorded.push(events::record(
                    conn,
                    &DomainEvent::ItemStatusChanged {
                        item_id: id,
                        status: after.status.clone(),
                        previous: before.status.clone(),
                    },
                )?);
            }
            Ok((after, recorded))
        })
    })
    .await?;
    state.announce(Announcements::events(recorded)).await;
    Ok(Json(item))
}
