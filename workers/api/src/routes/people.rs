//! People: users, customers and bots, their inbox, and password resets (SPEC M4).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidings_common::announce::Announcements;
use tidings_common::db::models::*;
use tidings_common::db::schema::*;
use tidings_common::events::{self, DomainEvent};
use tidings_common::{clock, mail};

use crate::error::{ApiError, ApiResult, Body};
use crate::lookup::*;
use crate::queries::inbox::{Inbox, inbox_of};
use crate::queries::password_resets;
use crate::session::Me;
use crate::state::{AppState, with_db};
use crate::validate::*;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPersonBody {
    name: String,
    email: Option<String>,
    /// Language of their emails (`en`, `sv`, …); unset means the default locale.
    locale: Option<String>,
}

async fn create_person(
    state: AppState,
    kind: PersonKind,
    body: NewPersonBody,
) -> ApiResult<(StatusCode, Json<Person>)> {
    let name = single_line("name", &body.name, NAME_MAX)?;
    valid_locale(&body.locale)?;
    let locale = body.locale;
    let email = match (kind, body.email) {
        (_, Some(email)) => {
            let email = email.trim().to_string();
            if !valid_email(&email) {
                return Err(ApiError::bad_field(
                    "email",
                    format!("email: {email:?} is not an email address"),
                ));
            }
            Some(email)
        }
        (PersonKind::Bot, None) => None,
        (_, None) => return Err(ApiError::bad_field("email", "missing field `email`")),
    };
    let (created, recorded) = with_db(&state, move |conn| {
        let inserted = conn.transaction(|conn| {
            let person = diesel::insert_into(people::table)
                .values((
                    people::kind.eq(kind.as_str()),
                    people::name.eq(name),
                    people::email.eq(email.clone()),
                    people::locale.eq(locale),
                ))
                .returning(Person::as_returning())
                .get_result(conn)?;
            let mut recorded = Vec::new();
            if kind == PersonKind::User {
                // Preferences start at their defaults (the "support team member" profile).
                diesel::insert_into(user_preferences::table)
                    .values(user_preferences::person_id.eq(person.id))
                    .execute(conn)?;
                // The welcome email (SPEC M4).
                recorded.push(events::record(
                    conn,
                    &DomainEvent::UserCreated {
                        person_id: person.id,
                    },
                )?);
            }
            Ok::<_, diesel::result::Error>((person, recorded))
        });
        match inserted {
            Ok((person, recorded)) => Ok(((StatusCode::CREATED, Json(person)), recorded)),
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => Err(ApiError {
                status: StatusCode::CONFLICT,
                message: format!(
                    "a {} with email {:?} already exists",
                    kind.as_str(),
                    email.unwrap_or_default()
                ),
                field: Some("email".into()),
            }),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    state.announce(Announcements::events(recorded)).await;
    Ok(created)
}

#[utoipa::path(
    post,
    path = "/users",
    tag = "people",
    request_body = NewPersonBody,
    responses(
        (status = 201, description = "the user; their welcome email is queued", body = Person),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 409, description = "conflicts with the current state", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_user(
    State(state): State<AppState>,
    Body(body): Body<NewPersonBody>,
) -> ApiResult<(StatusCode, Json<Person>)> {
    create_person(state, PersonKind::User, body).await
}

#[utoipa::path(
    post,
    path = "/customers",
    tag = "people",
    request_body = NewPersonBody,
    responses(
        (status = 201, description = "the customer", body = Person),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 409, description = "conflicts with the current state", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_customer(
    State(state): State<AppState>,
    Body(body): Body<NewPersonBody>,
) -> ApiResult<(StatusCode, Json<Person>)> {
    create_person(state, PersonKind::Customer, body).await
}

#[utoipa::path(
    post,
    path = "/bots",
    tag = "people",
    request_body = NewPersonBody,
    responses(
        (status = 201, description = "the bot (email optional)", body = Person),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 409, description = "conflicts with the current state", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_bot(
    State(state): State<AppState>,
    Body(body): Body<NewPersonBody>,
) -> ApiResult<(StatusCode, Json<Person>)> {
    create_person(state, PersonKind::Bot, body).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeopleQuery {
    /// `user`, `customer` or `bot`.
    kind: Option<String>,
    /// Part of the name or email address, any case.
    q: Option<String>,
    /// Only people with an id below this (the next page of a long list).
    before: Option<i64>,
    limit: Option<i64>,
}

/// People, newest first: by kind, by part of their name or address, a page at a time.
#[utoipa::path(
    get,
    path = "/people",
    tag = "people",
    params(PeopleQuery),
    responses(
        (status = 200, description = "people, newest first", body = Vec<Person>),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list_people(
    State(state): State<AppState>,
    crate::error::Params(query): crate::error::Params<PeopleQuery>,
) -> ApiResult<Json<Vec<Person>>> {
    let limit = limit(query.limit, 50, 500)?;
    if let Some(kind) = &query.kind {
        one_of("kind", kind, &["user", "customer", "bot"])?;
    }
    let pattern = query
        .q
        .as_deref()
        .map(|q| single_line("q", q, NAME_MAX))
        .transpose()?
        .filter(|q| !q.is_empty())
        .map(|q| {
            let escaped = q
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
    with_db(&state, move |conn| {
        let mut rows = people::table
            .select(Person::as_select())
            .order(people::id.desc())
            .limit(limit)
            .into_boxed();
        if let Some(kind) = query.kind {
            rows = rows.filter(people::kind.eq(kind));
        }
        if let Some(before) = query.before {
            rows = rows.filter(people::id.lt(before));
        }
        if let Some(pattern) = pattern {
            rows = rows.filter(
                people::name
                    .ilike(pattern.clone())
                    .or(people::email.ilike(pattern)),
            );
        }
        Ok(Json(rows.load(conn)?))
    })
    .await
}

#[utoipa::path(
    get,
    path = "/people/{id}",
    tag = "people",
    params(("id" = i64, Path, description = "the id")),
    responses(
        (status = 200, description = "the person", body = Person),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get_person(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Person>> {
    with_db(&state, move |conn| find_person(conn, id).map(Json)).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PersonPatch {
    name: Option<String>,
    active: Option<bool>,
    locale: Option<String>,
    /// Makes the user an admin, or not (the API token only; users only).
    admin: Option<bool>,
}

/// Renames or (de)activates a person. A deactivated person receives nothing from then on,
/// including notifications already waiting out their window.
#[utoipa::path(
    patch,
    path = "/people/{id}",
    tag = "people",
    params(("id" = i64, Path, description = "the id")),
    request_body = PersonPatch,
    responses(
        (status = 200, description = "the person after the change", body = Person),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn update_person(
    State(state): State<AppState>,
    actor: Option<axum::Extension<crate::session::Actor>>,
    Path(id): Path<i64>,
    Body(patch): Body<PersonPatch>,
) -> ApiResult<Json<Person>> {
    if patch.admin.is_some() && actor.is_some() {
        return Err(ApiError::forbidden(
            "making someone an admin needs the host application's API token",
        ));
    }
    let name = patch
        .name
        .as_deref()
        .map(|n| single_line("name", n, NAME_MAX))
        .transpose()?;
    valid_locale(&patch.locale)?;
    let person = with_db(&state, move |conn| {
        find_person(conn, id)?;
        if let Some(locale) = patch.locale {
            diesel::update(people::table.find(id))
                .set(people::locale.eq(locale))
                .execute(conn)?;
        }
        if let Some(name) = name {
            diesel::update(people::table.find(id))
                .set(people::name.eq(name))
                .execute(conn)?;
        }
        if let Some(admin) = patch.admin {
            let person = find_person(conn, id)?;
            if admin && person.kind != PersonKind::User {
                return Err(ApiError::bad_field(
                    "admin",
                    format!(
                        "admin: person {id} is a {}; only users are admins",
                        person.kind
                    ),
                ));
            }
            diesel::update(people::table.find(id))
                .set(people::admin.eq(admin))
                .execute(conn)?;
        }
        if let Some(active) = patch.active {
            diesel::update(people::table.find(id))
                .set(people::active.eq(active))
                .execute(conn)?;
        }
        find_person(conn, id)
    })
    .await?;
    if !person.active {
        // Their open event streams check the session when woken, and end.
        state.announce(Announcements::live(vec![id])).await;
    }
    Ok(Json(person))
}

/// The answer to a password reset request: the email is queued.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Queued {
    /// The email queued (`password_reset`).
    queued: &'static str,
    person_id: i64,
}

/// A person's inbox as they see it (D1): every conversation they were notified in or take
/// part in, with its unread count and the last message they may see, newest first.
#[utoipa::path(
    get,
    path = "/people/{id}/inbox",
    tag = "people",
    params(("id" = i64, Path, description = "the id")),
    responses(
        (status = 200, description = "unread counts, newest conversation first", body = Inbox),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn inbox(
    State(state): State<AppState>,
    Path(person_id): Path<i64>,
) -> ApiResult<Json<Inbox>> {
    with_db(&state, move |conn| {
        let person = find_person(conn, person_id)?;
        inbox_of(conn, Me::of(&person)).map(Json)
    })
    .await
}

/// Minutes a password reset link stays valid.
const RESET_MINUTES: i64 = 60;
/// What reset link tokens are signed for.
const RESET_PURPOSE: &str = "reset";

/// A reset link's token, as the host application's page received it.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct ResetToken {
    token: String,
}

/// Whose password a verified reset link lets the host application set.
#[derive(Serialize, utoipa::ToSchema)]
pub struct VerifiedReset {
    person_id: i64,
}

/// Verifies a password reset link's token, once: the host application's reset page calls this
/// before letting the person choose a password. A token verifies a single time and only
/// within its hour.
#[utoipa::path(
    post,
    path = "/password-resets/verify",
    tag = "people",
    request_body = ResetToken,
    responses(
        (status = 200, description = "the token is good; this was its one use", body = VerifiedReset),
        (status = 400, description = "not a reset token", body = crate::error::ErrorBody),
        (status = 410, description = "the link has expired, was used already, or its person was deactivated", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn verify_password_reset(
    State(state): State<AppState>,
    Body(body): Body<ResetToken>,
) -> ApiResult<Json<VerifiedReset>> {
    let now = clock::now();
    let id = mail::verify_link(
        &state.config.token_secret,
        RESET_PURPOSE,
        body.token.trim(),
        now.timestamp(),
    )
    .map_err(|e| ApiError {
        status: match e {
            mail::LinkError::Expired => StatusCode::GONE,
            _ => StatusCode::BAD_REQUEST,
        },
        message: format!("token: {e}"),
        field: Some("token".into()),
    })?;
    with_db(&state, move |conn| {
        let used = password_resets::use_once(conn, id, now)?;
        match used {
            Some(reset) => Ok(Json(VerifiedReset {
                person_id: reset.person_id,
            })),
            None if password_resets::person_inactive(conn, id)? => Err(ApiError {
                status: StatusCode::GONE,
                message: "token: the person this reset link is for was deactivated".into(),
                field: Some("token".into()),
            }),
            None => Err(ApiError {
                status: StatusCode::GONE,
                message: "token: this reset link was used already (or has expired)".into(),
                field: Some("token".into()),
            }),
        }
    })
    .await
}

#[utoipa::path(
    post,
    path = "/people/{id}/password-reset",
    tag = "people",
    params(("id" = i64, Path, description = "the id")),
    responses(
        (status = 202, description = "the reset email is queued (it cannot be disabled)", body = Queued),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
        (status = 409, description = "the person is deactivated", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn request_password_reset(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<(StatusCode, Json<Queued>)> {
    let secret = state.config.token_secret.clone();
    let base = state.config.public_url.clone();
    let recorded = with_db(&state, move |conn| {
        conn.transaction(|conn| {
            let p = require_user(conn, id, "id")?;
            if !p.active {
                return Err(ApiError::conflict(
                    format!("id: person {id} is deactivated; a deactivated person gets no password reset"),
                    Some("id"),
                ));
            }
            let expires = clock::now() + chrono::Duration::minutes(RESET_MINUTES);
            let reset = password_resets::create(conn, p.id, expires)?;
            let token = mail::sign_link(&secret, RESET_PURPOSE, reset.id, expires.timestamp());
            Ok(events::record(
                conn,
                &DomainEvent::PasswordResetRequested {
                    person_id: p.id,
                    reset_url: format!("{base}/password-reset/{token}"),
                    expires_in_minutes: RESET_MINUTES,
                },
            )?)
        })
    })
    .await?;
    state.announce(Announcements::events(vec![recorded])).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(Queued {
            queued: "password_reset",
            person_id: id,
        }),
    ))
}

/// A person's attention settings: their pause (A1), their working hours (A2) and whether their
/// emails wait for quiet (A3).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Attention {
    /// When the pause ends; `null` when none is on. While it lasts: no ping, no desktop
    /// notification, no email (held until it ends; the unread count still counts).
    pub dnd_until: Option<chrono::DateTime<chrono::Utc>>,
    /// A3, the person's own choice; `null` takes the organisation's default
    /// (`TIDINGS_WAIT_FOR_QUIET`).
    pub wait_for_quiet: Option<bool>,
    /// A3 as it applies: the person's choice, else the default.
    pub waits_for_quiet: bool,
    /// A2, the person's own choice: `null` takes the organisation's default (users; customers
    /// have none), `"none"` is no working hours, or `{days, start, end, time_zone}`.
    #[schema(value_type = Object, nullable)]
    pub working_hours: Value,
    /// A2 as it applies: the person's own hours, else the organisation's; `null`: none.
    pub working_hours_in_effect: Option<tidings_common::attention::WorkingHours>,
    /// A2: now is outside those hours until then (emails held, no pings); `null` inside them.
    pub outside_hours_until: Option<chrono::DateTime<chrono::Utc>>,
    /// The same start in words in the hours' time zone.
    pub outside_hours_until_local: Option<String>,
}

/// A change of attention settings; a field left out is left as it is.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttentionChange {
    /// The pause's new end (RFC 3339), at most 30 days ahead; `null`, or a time already past,
    /// ends it and sends the held emails now.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<chrono::DateTime<chrono::Utc>>, nullable)]
    pub dnd_until: Option<Option<chrono::DateTime<chrono::Utc>>>,
    /// A3: `true` or `false`; `null` goes back to the organisation's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<bool>, nullable)]
    pub wait_for_quiet: Option<Option<bool>>,
    /// A2: `{"days": ["mon", …], "start": "09:00", "end": "17:00", "time_zone":
    /// "Europe/Berlin"}` (an end at or before the start ends the next day), `"none"` for no
    /// working hours, or `null` for the organisation's default. Emails held for the old hours
    /// are judged again under the new ones at once.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object, nullable)]
    pub working_hours: Option<Option<Value>>,
}

/// A field that is present, even as `null`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `person`'s attention settings as they are now.
pub fn attention_of(
    conn: &mut PgConnection,
    person: i64,
    by_default: bool,
) -> QueryResult<Attention> {
    use tidings_common::attention::{self as a, OwnHours};
    let wait_for_quiet = a::wait_for_quiet(conn, person)?;
    let own = a::own_hours(conn, person)?;
    let in_effect = match &own {
        OwnHours::Hours(hours) => Some(hours.clone()),
        OwnHours::None => None,
        OwnHours::Default => {
            let kind: String = tidings_common::db::schema::people::table
                .find(person)
                .select(tidings_common::db::schema::people::kind)
                .first(conn)?;
            if kind == "user" {
                a::default_hours(conn)?
            } else {
                None
            }
        }
    };
    let off = a::off_hours(conn, person)?;
    Ok(Attention {
        dnd_until: a::paused_until(conn, person)?,
        wait_for_quiet,
        waits_for_quiet: wait_for_quiet.unwrap_or(by_default),
        working_hours: hours_json(&own),
        working_hours_in_effect: in_effect,
        outside_hours_until: off.as_ref().map(|o| o.until),
        outside_hours_until_local: off.map(|o| o.local),
    })
}

/// A person's own choice of working hours as the API shows it.
fn hours_json(own: &tidings_common::attention::OwnHours) -> Value {
    use tidings_common::attention::OwnHours;
    match own {
        OwnHours::Default => Value::Null,
        OwnHours::None => Value::String("none".into()),
        OwnHours::Hours(hours) => serde_json::to_value(hours).unwrap_or(Value::Null),
    }
}

/// Working hours from a request: parsed, with the time zone checked against the database's
/// list and spelled as it spells it. 400 naming `field` otherwise.
fn checked_hours(
    conn: &mut PgConnection,
    value: &Value,
    field: &str,
) -> ApiResult<tidings_common::attention::OwnHours> {
    use tidings_common::attention::{self as a, OwnHours};
    let mut own = a::parse_hours(value)
        .map_err(|why| ApiError::bad_field(field, format!("{field}: {why}")))?;
    if let OwnHours::Hours(hours) = &mut own {
        hours.time_zone = a::canonical_zone(conn, &hours.time_zone)?
            .map_err(|why| ApiError::bad_field(field, format!("{field}: {why}")))?;
    }
    Ok(own)
}

/// Announces held emails released to be judged again now (a pause ended, working hours
/// changed).
async fn announce_released(
    state: &AppState,
    released: Vec<tidings_common::amqp::NotificationBatch>,
) {
    if !released.is_empty() {
        state
            .announce(Announcements {
                due: released,
                ..Default::default()
            })
            .await;
    }
}

/// Changes `person`'s attention settings and announces the emails a pause's end releases.
pub async fn set_attention(
    state: &AppState,
    person: i64,
    change: AttentionChange,
) -> ApiResult<Attention> {
    if let Some(why) = change
        .dnd_until
        .flatten()
        .and_then(tidings_common::attention::refuse)
    {
        return Err(ApiError::bad_field("dnd_until", why));
    }
    let by_default = state.config.wait_for_quiet;
    let (released, now) = with_db(state, move |conn| {
        find_person(conn, person)?;
        let hours = match &change.working_hours {
            Some(value) => Some(checked_hours(
                conn,
                value.as_ref().unwrap_or(&Value::Null),
                "working_hours",
            )?),
            None => None,
        };
        let mut released = Vec::new();
        if let Some(until) = change.dnd_until {
            released = tidings_common::attention::set(conn, person, until)?;
        }
        if let Some(hours) = hours {
            released.extend(tidings_common::attention::set_own_hours(
                conn, person, &hours,
            )?);
        }
        if let Some(choice) = change.wait_for_quiet {
            tidings_common::attention::set_wait_for_quiet(conn, person, choice)?;
        }
        Ok((released, attention_of(conn, person, by_default)?))
    })
    .await?;
    announce_released(state, released).await;
    Ok(now)
}

/// A person's attention settings as they are now.
#[utoipa::path(get, path = "/people/{id}/attention", tag = "people",
    params(("id" = i64, Path, description = "the person's id")),
    responses(
        (status = 200, description = "the settings", body = Attention),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_attention(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Attention>> {
    let by_default = state.config.wait_for_quiet;
    with_db(&state, move |conn| {
        find_person(conn, id)?;
        Ok(Json(attention_of(conn, id, by_default)?))
    })
    .await
}

/// The organisation's default working hours (A2), for users without their own.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttentionDefaults {
    /// `{"days": [...], "start": "09:00", "end": "17:00", "time_zone": "Europe/Berlin"}`, or
    /// `null`: users have no working hours unless they set their own.
    #[schema(value_type = Object, nullable)]
    pub working_hours: Value,
}

/// The organisation's default working hours (A2).
#[utoipa::path(get, path = "/attention/defaults", tag = "people",
    responses((status = 200, description = "the defaults", body = AttentionDefaults)),
    security(("bearer" = [])))]
pub async fn get_attention_defaults(
    State(state): State<AppState>,
) -> ApiResult<Json<AttentionDefaults>> {
    with_db(&state, move |conn| {
        let hours = tidings_common::attention::default_hours(conn)?;
        Ok(Json(AttentionDefaults {
            working_hours: serde_json::to_value(hours).unwrap_or(Value::Null),
        }))
    })
    .await
}

/// Sets the organisation's default working hours (A2), or removes them (`null`). Emails held
/// for working hours are judged again under the new ones at once.
#[utoipa::path(put, path = "/attention/defaults", tag = "people",
    request_body = AttentionDefaults,
    responses(
        (status = 200, description = "the defaults as they are now", body = AttentionDefaults),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn put_attention_defaults(
    State(state): State<AppState>,
    Body(change): Body<AttentionDefaults>,
) -> ApiResult<Json<AttentionDefaults>> {
    use tidings_common::attention::{self as a, OwnHours};
    let (released, now) = with_db(&state, move |conn| {
        let hours = match checked_hours(conn, &change.working_hours, "working_hours")? {
            OwnHours::Hours(hours) => Some(hours),
            OwnHours::Default => None,
            OwnHours::None => {
                return Err(ApiError::bad_field(
                    "working_hours",
                    "working_hours: the default is hours or null (none)",
                ));
            }
        };
        let released = a::set_default_hours(conn, hours.as_ref())?;
        Ok((released, a::default_hours(conn)?))
    })
    .await?;
    announce_released(&state, released).await;
    Ok(Json(AttentionDefaults {
        working_hours: serde_json::to_value(now).unwrap_or(Value::Null),
    }))
}

/// A person's pause (A1), working hours (A2) and wait for quiet (A3), set by an admin or the
/// host application.
#[utoipa::path(put, path = "/people/{id}/attention", tag = "people",
    params(("id" = i64, Path, description = "the person's id")),
    request_body = AttentionChange,
    responses(
        (status = 200, description = "the settings as they are now", body = Attention),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn put_attention(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Body(change): Body<AttentionChange>,
) -> ApiResult<Json<Attention>> {
    set_attention(&state, id, change).await.map(Json)
}
