//! Project invitations (SPEC E3): inviting a user, and the signed accept link.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use tidings_common::announce::Announcements;
use tidings_common::db::schema::*;
use tidings_common::events::{self, DomainEvent};
use tidings_common::{clock, mail};
use tracing::info;

use crate::error::{ApiError, ApiResult, Body};
use crate::lookup::*;
use crate::queries::members::add_member;
use crate::state::{AppState, with_db};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationBody {
    person_id: i64,
}

/// An invitation to a project.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Invitation {
    id: i64,
    project_id: i64,
    person_id: i64,
    /// `pending`, or `accepted_automatically` when the user accepts all invitations (E3).
    status: &'static str,
    accepted_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The answer to following an accept link.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Accepted {
    invitation_id: i64,
    /// `accepted`, or the status it already had.
    status: String,
    /// The project joined, when this acceptance made them a member.
    #[serde(skip_serializing_if = "Option::is_none")]
    project_id: Option<i64>,
}

/// Days an invitation link stays valid.
const INVITATION_DAYS: i64 = 14;

/// Invites a user to a project (E3): with "accept all invitations" on, they are added at once
/// and the invitation is recorded as accepted automatically; otherwise they get an invitation
/// email with a signed accept link.
#[utoipa::path(
    post,
    path = "/projects/{id}/invitations",
    tag = "invitations",
    params(("id" = i64, Path, description = "the id")),
    request_body = InvitationBody,
    responses(
        (status = 201, description = "the invitation (accepted at once when the user accepts all)", body = Invitation),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
        (status = 409, description = "conflicts with the current state", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn invite(
    State(state): State<AppState>,
    Path(project): Path<i64>,
    Body(body): Body<InvitationBody>,
) -> ApiResult<(StatusCode, Json<Invitation>)> {
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
                return Err(ApiError::conflict(
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
                        project_invitations::accepted_at.eq(accept_all.then(clock::now)),
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
                let expires = clock::now().timestamp() + INVITATION_DAYS * 86_400;
                let token = mail::sign_link(&secret, "invite", id, expires);
                recorded.push(events::record(
                    conn,
                    &DomainEvent::InvitationCreated {
                        invitation_id: id,
                        person_id: p.id,
                        project_id: project,
                        accept_url: format!("{base}/invitations/{token}"),
                    },
                )?);
            }
            let invitation = Invitation {
                id,
                project_id: project,
                person_id: p.id,
                status,
                accepted_at,
            };
            Ok((invitation, recorded))
        })
    })
    .await?;
    state.announce(Announcements::events(recorded)).await;
    Ok((StatusCode::CREATED, Json(invitation)))
}

fn verify_invitation(state: &AppState, token: &str) -> ApiResult<i64> {
    mail::verify_link(
        &state.config.token_secret,
        "invite",
        token,
        clock::now().timestamp(),
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
#[utoipa::path(
    get,
    path = "/invitations/{token}",
    tag = "invitations",
    params(("token" = String, Path, description = "the signed link token")),
    responses(
        (status = 200, description = "an HTML page with the accept button; changes nothing", body = String, content_type = "text/html"),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 410, description = "the link has expired", body = crate::error::ErrorBody),
    ),
)]
pub async fn invitation_page(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match verify_invitation(&state, &token) {
        Ok(_) => crate::messenger::link_page(
            "Invitation",
            "<p>Join the project?</p>\
             <form method=\"post\"><button type=\"submit\">Accept the invitation</button></form>",
        ),
        Err(e) => e.into_response(),
    }
}

/// Accepts an invitation through its signed link.
#[utoipa::path(
    post,
    path = "/invitations/{token}",
    tag = "invitations",
    params(("token" = String, Path, description = "the signed link token")),
    responses(
        (status = 200, description = "accepted, or the status it already had", body = Accepted),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
        (status = 410, description = "the link has expired", body = crate::error::ErrorBody),
    ),
)]
pub async fn accept_invitation(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> ApiResult<Json<Accepted>> {
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
                let answer = Accepted {
                    invitation_id: id,
                    status,
                    project_id: None,
                };
                return Ok((answer, Vec::new()));
            }
            diesel::update(project_invitations::table.find(id))
                .set((
                    project_invitations::status.eq("accepted"),
                    project_invitations::accepted_at.eq(diesel::dsl::now),
                ))
                .execute(conn)?;
            let recorded = add_member(conn, project, person)?;
            Ok((
                Accepted {
                    invitation_id: id,
                    status: "accepted".into(),
                    project_id: Some(project),
                },
                recorded.into_iter().collect(),
            ))
        })
    })
    .await?;
    state.announce(Announcements::events(recorded)).await;
    Ok(Json(result))
}
