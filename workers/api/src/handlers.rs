//! Request handlers. Each runs its database work in one blocking call on the pool.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tidings_common::db::models::*;
use tidings_common::db::schema::*;
use tidings_common::posting;
use tracing::{info, warn};

use crate::AppState;
use crate::error::{ApiError, Body};

type ApiResult<T> = Result<T, ApiError>;

/// Runs `work` on the pool, mapping its errors (including [`ApiError`]s it raises) to responses.
pub(crate) async fn with_db<T, F>(state: &AppState, work: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(&mut PgConnection) -> ApiResult<T> + Send + 'static,
{
    // The closure's ApiError rides inside Ok so that pool and task errors stay typed.
    state.db.run(move |conn| Ok(work(conn))).await?
}

fn exists<T>(found: Option<T>, what: &str, id: i64) -> ApiResult<T> {
    found.ok_or_else(|| ApiError::not_found(what, id))
}

fn required_text(field: &str, value: &str) -> ApiResult<String> {
    let value = value.trim();
    if value.is_empty() {
        Err(ApiError::bad_field(
            field,
            format!("{field}: must not be empty"),
        ))
    } else {
        Ok(value.to_string())
    }
}

pub(crate) fn find_person(conn: &mut PgConnection, id: i64) -> ApiResult<Person> {
    let person = people::table
        .find(id)
        .select(Person::as_select())
        .first(conn)
        .optional()?;
    exists(person, "person", id)
}

// ---- people ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPersonBody {
    name: String,
    email: Option<String>,
    /// Language of their emails (`en`, `sv`, …); unset means the default locale.
    locale: Option<String>,
}

fn valid_locale(locale: &Option<String>) -> ApiResult<()> {
    match locale {
        Some(l)
            if l.is_empty()
                || l.len() > 16
                || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            Err(ApiError::bad_field(
                "locale",
                format!("locale: {l:?} is not a locale such as en, sv or pt-BR"),
            ))
        }
        _ => Ok(()),
    }
}

fn valid_email(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && value.parse::<lettre::Address>().is_ok()
}

async fn create_person(
    state: AppState,
    kind: PersonKind,
    body: NewPersonBody,
) -> ApiResult<(StatusCode, Json<Person>)> {
    let name = required_text("name", &body.name)?;
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
                recorded.push(tidings_common::events::record(
                    conn,
                    tidings_common::events::USER_CREATED,
                    json!({"person_id": person.id}),
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
    crate::center::publish(&state, recorded).await;
    Ok(created)
}

pub async fn create_user(
    State(state): State<AppState>,
    Body(body): Body<NewPersonBody>,
) -> ApiResult<(StatusCode, Json<Person>)> {
    create_person(state, PersonKind::User, body).await
}

pub async fn create_customer(
    State(state): State<AppState>,
    Body(body): Body<NewPersonBody>,
) -> ApiResult<(StatusCode, Json<Person>)> {
    create_person(state, PersonKind::Customer, body).await
}

pub async fn create_bot(
    State(state): State<AppState>,
    Body(body): Body<NewPersonBody>,
) -> ApiResult<(StatusCode, Json<Person>)> {
    create_person(state, PersonKind::Bot, body).await
}

pub async fn get_person(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Person>> {
    with_db(&state, move |conn| find_person(conn, id).map(Json)).await
}

// ---- projects, items, follows ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProjectBody {
    name: String,
}

pub async fn create_project(
    State(state): State<AppState>,
    Body(body): Body<NewProjectBody>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    let name = required_text("name", &body.name)?;
    with_db(&state, move |conn| {
        let project = diesel::insert_into(projects::table)
            .values(projects::name.eq(name))
            .returning(Project::as_returning())
            .get_result(conn)?;
        Ok((StatusCode::CREATED, Json(project)))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItemBody {
    project_id: i64,
    kind: String,
    title: String,
    assignee_id: Option<i64>,
    /// Who asked for it (the customer who opened a ticket); they follow the item.
    requester_id: Option<i64>,
}

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
    let title = required_text("title", &body.title)?;
    let (created, recorded) = with_db(&state, move |conn| {
        conn.transaction(|conn| {
            if let Some(requester) = body.requester_id {
                let person = find_person(conn, requester)?;
                if person.kind() == PersonKind::Bot {
                    return Err(ApiError::bad_field(
                        "requester_id",
                        format!("requester_id: person {requester} is a bot"),
                    ));
                }
            }
            let project: Option<i64> = projects::table
                .find(body.project_id)
                .select(projects::id)
                .first(conn)
                .optional()?;
            exists(project, "project", body.project_id)?;
            if let Some(assignee) = body.assignee_id {
                let person = find_person(conn, assignee)?;
                if person.kind() != PersonKind::User {
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
                events::ITEM_CREATED,
                json!({"item_id": item.id}),
            )?];
            if item.assignee_id.is_some() {
                recorded.push(events::record(
                    conn,
                    events::ITEM_ASSIGNED,
                    json!({"item_id": item.id, "assignee_id": item.assignee_id, "previous_id": null}),
                )?);
            }
            Ok(((StatusCode::CREATED, Json(item)), recorded))
        })
    })
    .await?;
    crate::center::publish(&state, recorded).await;
    Ok(created)
}

pub async fn follow_project(
    State(state): State<AppState>,
    Path((project_id, person_id)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        let found: Option<i64> = projects::table
            .find(project_id)
            .select(projects::id)
            .first(conn)
            .optional()?;
        exists(found, "project", project_id)?;
        find_person(conn, person_id)?;
        diesel::insert_into(project_follows::table)
            .values((
                project_follows::project_id.eq(project_id),
                project_follows::person_id.eq(person_id),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

pub async fn unfollow_project(
    State(state): State<AppState>,
    Path((project_id, person_id)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        let deleted =
            diesel::delete(project_follows::table.find((project_id, person_id))).execute(conn)?;
        if deleted == 0 {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("person {person_id} does not follow project {project_id}"),
                field: None,
            });
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

pub async fn follow_item(
    State(state): State<AppState>,
    Path((item_id, person_id)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        let found: Option<i64> = items::table
            .find(item_id)
            .select(items::id)
            .first(conn)
            .optional()?;
        exists(found, "item", item_id)?;
        find_person(conn, person_id)?;
        diesel::insert_into(item_follows::table)
            .values((
                item_follows::item_id.eq(item_id),
                item_follows::person_id.eq(person_id),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

pub async fn unfollow_item(
    State(state): State<AppState>,
    Path((item_id, person_id)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        let deleted =
            diesel::delete(item_follows::table.find((item_id, person_id))).execute(conn)?;
        if deleted == 0 {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("person {person_id} does not follow item {item_id}"),
                field: None,
            });
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

// ---- conversations and messages ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConversationBody {
    subject: String,
    item_id: Option<i64>,
    project_id: Option<i64>,
}

pub async fn create_conversation(
    State(state): State<AppState>,
    Body(body): Body<NewConversationBody>,
) -> ApiResult<(StatusCode, Json<Conversation>)> {
    let subject = required_text("subject", &body.subject)?;
    if body.item_id.is_some() && body.project_id.is_some() {
        return Err(ApiError::bad_field(
            "project_id",
            "project_id: a conversation links to an item or a project, not both",
        ));
    }
    with_db(&state, move |conn| {
        if let Some(item_id) = body.item_id {
            let found: Option<i64> = items::table
                .find(item_id)
                .select(items::id)
                .first(conn)
                .optional()?;
            exists(found, "item", item_id)?;
        }
        if let Some(project_id) = body.project_id {
            let found: Option<i64> = projects::table
                .find(project_id)
                .select(projects::id)
                .first(conn)
                .optional()?;
            exists(found, "project", project_id)?;
        }
        let conversation = diesel::insert_into(conversations::table)
            .values((
                conversations::subject.eq(subject),
                conversations::item_id.eq(body.item_id),
                conversations::project_id.eq(body.project_id),
            ))
            .returning(Conversation::as_returning())
            .get_result(conn)?;
        Ok((StatusCode::CREATED, Json(conversation)))
    })
    .await
}

fn find_conversation(conn: &mut PgConnection, id: i64) -> ApiResult<Conversation> {
    let found = conversations::table
        .find(id)
        .select(Conversation::as_select())
        .first(conn)
        .optional()?;
    exists(found, "conversation", id)
}

pub async fn get_conversation(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    with_db(&state, move |conn| {
        let conversation = find_conversation(conn, id)?;
        let messages: Vec<Message> = messages::table
            .filter(messages::conversation_id.eq(id))
            .filter(messages::deleted_at.is_null())
            .order(messages::id.asc())
            .select(Message::as_select())
            .load(conn)?;
        let participants: Vec<i64> = conversation_participants::table
            .filter(conversation_participants::conversation_id.eq(id))
            .select(conversation_participants::person_id)
            .order(conversation_participants::person_id.asc())
            .load(conn)?;
        Ok(Json(json!({
            "conversation": conversation,
            "participants": participants,
            "messages": messages,
        })))
    })
    .await
}

pub async fn add_participant(
    State(state): State<AppState>,
    Path((conversation_id, person_id)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        find_conversation(conn, conversation_id)?;
        find_person(conn, person_id)?;
        posting::add_participant(conn, conversation_id, person_id)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessageBody {
    author_id: i64,
    body: String,
    internal: bool,
}

/// Posts a message: stores it, makes the author a participant who has seen it (D4), commits,
/// then publishes `message.posted`. If the publish fails the message is still stored, and
/// dispatch's sweep publishes it later.
pub async fn post_message(
    State(state): State<AppState>,
    Path(conversation_id): Path<i64>,
    Body(body): Body<NewMessageBody>,
) -> ApiResult<(StatusCode, Json<Message>)> {
    if body.body.trim().is_empty() {
        return Err(ApiError::bad_field("body", "body: must not be empty"));
    }
    let message = with_db(&state, move |conn| {
        conn.transaction(|conn| {
            find_conversation(conn, conversation_id)?;
            let author = find_person(conn, body.author_id)?;
            if body.internal && author.kind() == PersonKind::Customer {
                return Err(ApiError::bad_field(
                    "internal",
                    "internal: a customer cannot post an internal message",
                ));
            }
            Ok(posting::insert_message(
                conn,
                conversation_id,
                author.id,
                &body.body,
                body.internal,
            )?)
        })
    })
    .await?;
    if let Err(e) = crate::broker::message_posted(&state.broker, &state.topology, message.id).await
    {
        warn!(message.id = message.id, error = %e, "message.posted not published; the dispatch sweep will publish it");
    } else {
        info!(message.id = message.id, "message posted");
    }
    Ok((StatusCode::CREATED, Json(message)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeenBody {
    person_id: i64,
    message_id: i64,
}

/// Marks every message of the conversation up to `message_id` seen by `person_id`.
pub async fn mark_seen(
    State(state): State<AppState>,
    Path(conversation_id): Path<i64>,
    Body(body): Body<SeenBody>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        find_conversation(conn, conversation_id)?;
        find_person(conn, body.person_id)?;
        let message_conversation: Option<i64> = messages::table
            .find(body.message_id)
            .select(messages::conversation_id)
            .first(conn)
            .optional()?;
        match message_conversation {
            None => return Err(ApiError::not_found("message", body.message_id)),
            Some(c) if c != conversation_id => {
                return Err(ApiError::bad_field(
                    "message_id",
                    format!(
                        "message_id: message {} belongs to conversation {c}, not {conversation_id}",
                        body.message_id
                    ),
                ));
            }
            Some(_) => {}
        }
        posting::advance_cursor(conn, body.person_id, conversation_id, body.message_id)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

// ---- inbox, delivery status, log ----

#[derive(Debug, QueryableByName, Serialize)]
pub struct InboxEntry {
    #[diesel(sql_type = BigInt)]
    conversation_id: i64,
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = BigInt)]
    unread: i64,
    #[diesel(sql_type = BigInt)]
    last_message_id: i64,
    #[diesel(sql_type = Timestamptz)]
    last_message_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<BigInt>)]
    seen_up_to: Option<i64>,
}

/// A person's inbox (D1): every conversation they were notified in, with its unread count,
/// the conversation with the newest message first.
pub async fn inbox(
    State(state): State<AppState>,
    Path(person_id): Path<i64>,
) -> ApiResult<Json<Value>> {
    with_db(&state, move |conn| {
        find_person(conn, person_id)?;
        let entries: Vec<InboxEntry> = diesel::sql_query(
            "SELECT c.id AS conversation_id, c.subject,
                    COUNT(*) FILTER (WHERE m.deleted_at IS NULL
                                       AND m.id > COALESCE(sc.last_seen_message_id, 0)) AS unread,
                    MAX(m.id) AS last_message_id, MAX(m.created_at) AS last_message_at,
                    sc.last_seen_message_id AS seen_up_to
             FROM notifications n
             JOIN messages m ON m.id = n.message_id
             JOIN conversations c ON c.id = n.conversation_id
             LEFT JOIN seen_cursors sc
               ON sc.person_id = n.recipient_id AND sc.conversation_id = n.conversation_id
             LEFT JOIN user_preferences up ON up.person_id = n.recipient_id
             WHERE n.recipient_id = $1
               AND (COALESCE(up.show_customer_conversations, true) OR NOT EXISTS (
                    SELECT 1 FROM conversation_participants cp JOIN people p ON p.id = cp.person_id
                     WHERE cp.conversation_id = c.id AND p.kind = 'customer'
                    UNION ALL
                    SELECT 1 FROM item_follows f JOIN people p ON p.id = f.person_id
                     WHERE f.item_id = c.item_id AND p.kind = 'customer'))
             GROUP BY c.id, c.subject, sc.last_seen_message_id
             ORDER BY last_message_at DESC, c.id DESC",
        )
        .bind::<BigInt, _>(person_id)
        .load(conn)?;
        let total: i64 = entries.iter().map(|e| e.unread).sum();
        Ok(Json(
            json!({ "person_id": person_id, "unread": total, "conversations": entries }),
        ))
    })
    .await
}

#[derive(Debug, QueryableByName, Serialize)]
pub struct Delivery {
    #[diesel(sql_type = BigInt)]
    notification_id: i64,
    #[diesel(sql_type = BigInt)]
    recipient_id: i64,
    #[diesel(sql_type = Text)]
    recipient_name: String,
    #[diesel(sql_type = Text)]
    recipient_kind: String,
    #[diesel(sql_type = Timestamptz)]
    notified_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    seen_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Text)]
    email_state: String,
    #[diesel(sql_type = Nullable<Text>)]
    email_reason: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    email_rule: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    coalesced_into: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    emailed_to: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    emailed_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    smtp_reply: Option<String>,
    #[diesel(sql_type = Text)]
    email_message_id: String,
    #[diesel(sql_type = Timestamptz)]
    due_at: DateTime<Utc>,
}

/// Delivery status of one message per recipient (D8): notified, seen, emailed or skipped.
pub async fn deliveries(
    State(state): State<AppState>,
    Path(message_id): Path<i64>,
) -> ApiResult<Json<Value>> {
    with_db(&state, move |conn| {
        let message = messages::table
            .find(message_id)
            .select(Message::as_select())
            .first(conn)
            .optional()?;
        let message = exists(message, "message", message_id)?;
        let rows: Vec<Delivery> = diesel::sql_query(
            "SELECT n.id AS notification_id, n.recipient_id, p.name AS recipient_name,
                    p.kind AS recipient_kind, n.created_at AS notified_at,
                    CASE WHEN sc.last_seen_message_id >= n.message_id THEN sc.seen_at END AS seen_at,
                    n.state AS email_state, n.reason AS email_reason, n.rule AS email_rule,
                    n.coalesced_into,
                    CASE WHEN n.state = 'sent' OR n.coalesced_into IS NOT NULL THEN p.email END AS emailed_to,
                    n.sent_at AS emailed_at, COALESCE(n.smtp_reply, carrier.smtp_reply) AS smtp_reply,
                    COALESCE(carrier.email_message_id, n.email_message_id) AS email_message_id, n.due_at
             FROM notifications n
             JOIN people p ON p.id = n.recipient_id
             LEFT JOIN notifications carrier ON carrier.id = n.coalesced_into
             LEFT JOIN seen_cursors sc
               ON sc.person_id = n.recipient_id AND sc.conversation_id = n.conversation_id
             WHERE n.message_id = $1
             ORDER BY n.recipient_id",
        )
        .bind::<BigInt, _>(message_id)
        .load(conn)?;
        Ok(Json(json!({
            "message_id": message_id,
            "conversation_id": message.conversation_id,
            "dispatched": message.dispatched_at.is_some(),
            "recipients": rows,
        })))
    })
    .await
}

#[derive(Deserialize)]
pub struct LogQuery {
    message_id: Option<i64>,
    limit: Option<i64>,
    /// How far back, e.g. `72h` (default: the whole log, which the scheduler keeps to 72 h).
    since: Option<String>,
    /// `in` or `out`.
    direction: Option<String>,
    status: Option<String>,
}

/// The email log, newest first; `?message_id=` narrows it to one message.
pub async fn email_log(
    State(state): State<AppState>,
    Query(query): Query<LogQuery>,
) -> ApiResult<Json<Vec<EmailLogEntry>>> {
    let limit = query.limit.unwrap_or(200);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_field(
            "limit",
            "limit: must be from 1 to 10000",
        ));
    }
    let since = match &query.since {
        None => None,
        Some(v) => Some(
            tidings_common::config::parse_positive_duration(v)
                .map_err(|e| ApiError::bad_field("since", format!("since: {e}")))?,
        ),
    };
    let direction = match query.direction.as_deref() {
        None => None,
        Some("in" | "inbound") => Some("inbound"),
        Some("out" | "outbound") => Some("outbound"),
        Some(other) => {
            return Err(ApiError::bad_field(
                "direction",
                format!("direction: {other:?} is not one of in, out"),
            ));
        }
    };
    with_db(&state, move |conn| {
        let mut q = email_log::table
            .select(EmailLogEntry::as_select())
            .order(email_log::id.desc())
            .limit(limit)
            .into_boxed();
        if let Some(message_id) = query.message_id {
            q = q.filter(email_log::message_id.eq(message_id));
        }
        if let Some(since) = since {
            let from =
                Utc::now() - chrono::Duration::from_std(since).unwrap_or(chrono::Duration::MAX);
            q = q.filter(email_log::created_at.ge(from));
        }
        if let Some(direction) = direction {
            q = q.filter(email_log::direction.eq(direction));
        }
        if let Some(status) = query.status {
            q = q.filter(email_log::status.eq(status));
        }
        Ok(Json(q.load(conn)?))
    })
    .await
}

pub async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such endpoint".into(),
        field: None,
    }
}

// ---- people, messages: changes after the fact (SPEC D9) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonPatch {
    name: Option<String>,
    active: Option<bool>,
    locale: Option<String>,
}

/// Renames or (de)activates a person. A deactivated person receives nothing from then on,
/// including notifications already waiting out their window.
pub async fn update_person(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Body(patch): Body<PersonPatch>,
) -> ApiResult<Json<Person>> {
    let name = patch
        .name
        .as_deref()
        .map(|n| required_text("name", n))
        .transpose()?;
    valid_locale(&patch.locale)?;
    with_db(&state, move |conn| {
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
        if let Some(active) = patch.active {
            diesel::update(people::table.find(id))
                .set(people::active.eq(active))
                .execute(conn)?;
        }
        find_person(conn, id).map(Json)
    })
    .await
}

fn find_message(conn: &mut PgConnection, id: i64) -> ApiResult<Message> {
    let found = messages::table
        .find(id)
        .select(Message::as_select())
        .first(conn)
        .optional()?;
    exists(found, "message", id)
}

/// Deletes a message; its pending emails are skipped with reason `deleted`.
pub async fn delete_message(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        find_message(conn, id)?;
        diesel::update(
            messages::table
                .find(id)
                .filter(messages::deleted_at.is_null()),
        )
        .set(messages::deleted_at.eq(diesel::dsl::now))
        .execute(conn)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagePatch {
    body: String,
}

/// Edits a message's text. Emails not yet sent carry the new text; editing it down to nothing
/// counts as deleting it.
pub async fn edit_message(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Body(patch): Body<MessagePatch>,
) -> ApiResult<Json<Message>> {
    with_db(&state, move |conn| {
        let message = find_message(conn, id)?;
        if message.deleted_at.is_some() {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                message: format!("message {id} was deleted"),
                field: None,
            });
        }
        let edited = diesel::update(messages::table.find(id))
            .set((
                messages::body.eq(patch.body),
                messages::edited_at.eq(diesel::dsl::now),
            ))
            .returning(Message::as_returning())
            .get_result(conn)?;
        Ok(Json(edited))
    })
    .await
}

/// Why a person was or was not notified and emailed about a message, naming the deciding rule.
pub async fn explain(
    State(state): State<AppState>,
    Path((message_id, person_id)): Path<(i64, i64)>,
) -> ApiResult<Json<tidings_common::audience::Explanation>> {
    with_db(&state, move |conn| {
        find_message(conn, message_id)?;
        find_person(conn, person_id)?;
        let explanation = tidings_common::audience::explain(conn, message_id, person_id)?;
        Ok(Json(exists(explanation, "message", message_id)?))
    })
    .await
}

#[derive(Queryable, Serialize)]
pub struct Suppression {
    address: String,
    suppressed: bool,
    hard_bounces: i32,
    soft_bounces: i32,
    last_status: Option<String>,
    updated_at: DateTime<Utc>,
}

/// Addresses whose email is suppressed after bounces.
pub async fn suppressions(State(state): State<AppState>) -> ApiResult<Json<Vec<Suppression>>> {
    with_db(&state, move |conn| {
        let rows = email_suppressions::table
            .order(email_suppressions::updated_at.desc())
            .select((
                email_suppressions::address,
                email_suppressions::suppressed,
                email_suppressions::hard_bounces,
                email_suppressions::soft_bounces,
                email_suppressions::last_status,
                email_suppressions::updated_at,
            ))
            .load::<Suppression>(conn)?;
        Ok(Json(rows))
    })
    .await
}

/// Lets email flow to an address again after it was suppressed.
pub async fn reset_suppression(
    State(state): State<AppState>,
    Path(address): Path<String>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        let deleted = diesel::delete(email_suppressions::table.find(address.to_ascii_lowercase()))
            .execute(conn)?;
        if deleted == 0 {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("{address} is not suppressed"),
                field: None,
            });
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
