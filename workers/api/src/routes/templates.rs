//! The email templates (SPEC M3, M5) and who sends them.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use tidings_common::announce::Announcements;
use tidings_common::db::schema::*;
use tidings_common::templates::{Templates, Version, sample_data, versions};

use crate::error::{ApiError, ApiResult, Body, Params};
use crate::session::Actor;
use crate::state::{AppState, with_db};

/// Every template and what sends it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Catalogue {
    /// The locale of the top-level template folders, and every other's fallback.
    default_locale: String,
    templates: Vec<TemplateUse>,
}

/// One template: the locales that have it and who sends it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TemplateUse {
    name: String,
    locales: Vec<String>,
    automations: Vec<Sender>,
    /// Events of the system notifications that send it.
    system_notifications: Vec<String>,
}

/// An automation that sends a template.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Sender {
    id: i64,
    name: String,
}

/// Every template by locale, with the automations and system notifications that send it.
#[utoipa::path(
    get,
    path = "/templates",
    tag = "templates",
    responses(
        (status = 200, description = "templates, their locales and senders", body = Catalogue),
    ),
    security(("bearer" = [])),
)]
pub async fn list_templates(State(state): State<AppState>) -> ApiResult<Json<Catalogue>> {
    let catalogue = state.templates.current().catalogue();
    let default_locale = state.config.default_locale.clone();
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
        let templates = names
            .into_iter()
            .map(|name| TemplateUse {
                name: name.clone(),
                locales: catalogue
                    .iter()
                    .filter(|(_, n)| n.contains(name))
                    .map(|(l, _)| l.clone())
                    .collect(),
                automations: senders
                    .iter()
                    .filter(|s| s.0.as_deref() == Some(name.as_str()))
                    .map(|s| Sender {
                        id: s.1,
                        name: s.2.clone(),
                    })
                    .collect(),
                system_notifications: system
                    .iter()
                    .filter(|s| &s.0 == name)
                    .map(|s| s.1.clone())
                    .collect(),
            })
            .collect();
        Ok(Json(Catalogue {
            default_locale,
            templates,
        }))
    })
    .await
}

/// A template's three parts, as edited in the console.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    /// The locale folder (`sv`, …); empty or missing for the default locale.
    #[serde(default)]
    locale: String,
    subject: String,
    text: String,
    html: String,
}

/// One problem of a template: the file (relative to the templates folder), line and column
/// where known, and what is wrong.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    file: String,
    line: Option<usize>,
    column: Option<usize>,
    reason: String,
}

/// One locale's rendering of a template with its sample data.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Preview {
    locale: String,
    subject: String,
    text: String,
    html: String,
}

/// What a draft would send: a rendering in each locale, or its problems.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Previewed {
    previews: Vec<Preview>,
    problems: Vec<Problem>,
}

/// A template's parts in one locale as they serve now.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TemplateSource {
    name: String,
    /// `""`: the default locale.
    locale: String,
    subject: String,
    text: String,
    html: String,
    /// The console version serving (none: the shipped file).
    version: Option<i64>,
    /// Whether the templates folder has files for it (a revert goes back to them).
    shipped: bool,
    /// Whether the parts come from the default locale (the locale has none of its own).
    inherited: bool,
}

/// One saved version in a template's history.
#[derive(Serialize, utoipa::ToSchema, QueryableByName)]
pub struct VersionEntry {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    created_at: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    author: Option<String>,
    /// A revert to the shipped files.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    revert: bool,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LocaleQuery {
    /// The locale folder; missing for the default locale.
    locale: Option<String>,
}

/// A test send.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSend {
    /// The locale to render; missing for the default locale.
    locale: Option<String>,
    /// Who receives it: with an admin's session, always the admin themself; with the API
    /// token, this person (a user).
    person_id: Option<i64>,
}

/// `locale` as stored: `""` for the default locale (or its own name), else a known locale.
fn locale_of(state: &AppState, locale: Option<&str>) -> ApiResult<String> {
    let locale = locale.unwrap_or_default().trim();
    if locale.is_empty() || locale == state.config.default_locale {
        return Ok(String::new());
    }
    if state.templates.current().catalogue().contains_key(locale) {
        Ok(locale.to_string())
    } else {
        Err(ApiError::bad_field(
            "locale",
            format!("locale: {locale:?} has no templates folder"),
        ))
    }
}

fn template_name(name: &str) -> ApiResult<()> {
    if versions::valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_field(
            "name",
            format!(
                "name: {name:?} is not a template name (lower-case letters, digits, _ and -, \
                 up to 64; not partials, nor a 2- or 3-letter name a locale folder could have)"
            ),
        ))
    }
}

fn no_template(name: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no template {name:?}"),
        field: Some("name".into()),
    }
}

/// The shipped files of `name` in `locale` (`""`: default), if it has any of its own.
fn shipped(state: &AppState, name: &str, locale: &str) -> Option<[String; 3]> {
    let dir = state.templates.dir();
    let folders = if locale.is_empty() {
        vec![
            dir.join(&state.config.default_locale).join(name),
            dir.join(name),
        ]
    } else {
        vec![dir.join(locale).join(name)]
    };
    let folder = folders
        .into_iter()
        .find(|f| f.join("subject.hbs").is_file())?;
    let read = |part: &str| std::fs::read_to_string(folder.join(format!("{part}.hbs"))).ok();
    Some([read("subject")?, read("text")?, read("html")?])
}

fn problems(
    state: &AppState,
    errors: Vec<tidings_common::templates::TemplateError>,
) -> Vec<Problem> {
    let dir = state.templates.dir();
    errors
        .into_iter()
        .map(|e| Problem {
            file: e
                .file
                .strip_prefix(dir)
                .unwrap_or(&e.file)
                .display()
                .to_string(),
            line: e.line,
            column: e.column,
            reason: e.reason,
        })
        .collect()
}

/// The overlay with `draft` in place, checked: its problems, or the set it makes.
fn with_draft(
    state: &AppState,
    name: &str,
    draft: Draft,
) -> ApiResult<(Version, Result<Templates, Vec<Problem>>)> {
    template_name(name)?;
    let locale = locale_of(state, Some(&draft.locale))?;
    let version = Version {
        id: 0,
        name: name.to_string(),
        locale,
        subject: draft.subject,
        text: draft.text,
        html: draft.html,
    };
    let store = &state.templates;
    let overlay = store.overlay().with(version.clone());
    let required = store.required();
    let errors =
        Templates::check_overlaid(store.dir(), &overlay, store.default_locale(), &required);
    if !errors.is_empty() {
        return Ok((version, Err(problems(state, errors))));
    }
    let loaded = Templates::load_overlaid(store.dir(), &overlay, store.default_locale(), &required)
        .map_err(|e| problems(state, vec![e]));
    Ok((version, loaded))
}

/// A template's parts in one locale as they serve now (a console version, or the files).
#[utoipa::path(
    get,
    path = "/templates/{name}",
    tag = "templates",
    params(("name" = String, Path, description = "the template"), LocaleQuery),
    responses(
        (status = 200, description = "the parts serving now", body = TemplateSource),
        (status = 400, description = "a bad name or locale", body = crate::error::ErrorBody),
        (status = 404, description = "no such template", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get_template(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Params(query): Params<LocaleQuery>,
) -> ApiResult<Json<TemplateSource>> {
    template_name(&name)?;
    let locale = locale_of(&state, query.locale.as_deref())?;
    let overlay = state.templates.overlay();
    let version = |locale: &str| {
        overlay
            .versions
            .iter()
            .find(|v| v.name == name && v.locale == locale)
            .cloned()
    };
    let own = version(&locale)
        .map(|v| (Some(v.id), [v.subject, v.text, v.html]))
        .or_else(|| shipped(&state, &name, &locale).map(|p| (None, p)));
    let (inherited, found) = match own {
        Some(found) => (false, Some(found)),
        None if !locale.is_empty() => (
            true,
            version("")
                .map(|v| (Some(v.id), [v.subject, v.text, v.html]))
                .or_else(|| shipped(&state, &name, "").map(|p| (None, p))),
        ),
        None => (false, None),
    };
    let Some((version, [subject, text, html])) = found else {
        return Err(no_template(&name));
    };
    Ok(Json(TemplateSource {
        shipped: shipped(&state, &name, &locale).is_some()
            || (inherited && shipped(&state, &name, "").is_some()),
        name,
        locale,
        subject,
        text,
        html,
        version,
        inherited,
    }))
}

/// Renders a draft with each template's sample data in every locale, without saving it; or
/// its problems, with file, line and column.
#[utoipa::path(
    post,
    path = "/templates/{name}/preview",
    tag = "templates",
    params(("name" = String, Path, description = "the template")),
    request_body = Draft,
    responses(
        (status = 200, description = "the renderings, or the problems", body = Previewed),
        (status = 400, description = "a bad name or locale", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn preview_template(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(draft): Body<Draft>,
) -> ApiResult<Json<Previewed>> {
    let work = state.clone();
    let previewed = tokio::task::spawn_blocking(move || -> ApiResult<Previewed> {
        let state = work;
        let (_, loaded) = with_draft(&state, &name, draft)?;
        let templates = match loaded {
            Ok(t) => t,
            Err(problems) => {
                return Ok(Previewed {
                    previews: vec![],
                    problems,
                });
            }
        };
        let data = sample_data(&name);
        let mut previews = Vec::new();
        let mut problems_found = Vec::new();
        for locale in templates.catalogue().keys() {
            match templates.render(&name, Some(locale), &data) {
                Ok(r) => previews.push(Preview {
                    locale: locale.clone(),
                    subject: r.subject,
                    text: r.text,
                    html: r.html,
                }),
                Err(e) => problems_found.extend(problems(&state, vec![e])),
            }
        }
        Ok(Previewed {
            previews,
            problems: problems_found,
        })
    })
    .await
    .map_err(|e| ApiError::internal(format!("preview: {e}")))??;
    Ok(Json(previewed))
}

/// Saves a draft as the template's new version (creating the template when it is new),
/// after the same checks as the files: a draft with problems is refused (422, with them) and
/// nothing is saved. Every process serves it within seconds.
#[utoipa::path(
    put,
    path = "/templates/{name}",
    tag = "templates",
    params(("name" = String, Path, description = "the template")),
    request_body = Draft,
    responses(
        (status = 200, description = "saved: the template as it serves now", body = TemplateSource),
        (status = 400, description = "a bad name or locale", body = crate::error::ErrorBody),
        (status = 422, description = "the draft's problems; nothing saved", body = Previewed),
    ),
    security(("bearer" = [])),
)]
pub async fn save_template(
    State(state): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(name): Path<String>,
    Body(draft): Body<Draft>,
) -> ApiResult<Response> {
    let work = state.clone();
    let checked = {
        let name = name.clone();
        tokio::task::spawn_blocking(move || with_draft(&work, &name, draft))
            .await
            .map_err(|e| ApiError::internal(format!("save: {e}")))??
    };
    let version = match checked {
        (_, Err(problems)) => {
            return Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(Previewed {
                    previews: vec![],
                    problems,
                }),
            )
                .into_response());
        }
        (version, Ok(_)) => version,
    };
    let author = actor.map(|a| a.id);
    let locale = version.locale.clone();
    insert_version(&state, version, author).await?;
    get_template(
        State(state),
        Path(name),
        Params(LocaleQuery {
            locale: Some(locale),
        }),
    )
    .await
    .map(IntoResponse::into_response)
}

/// Writes a version (`None` parts: a revert), loads it here, and tells every process.
async fn insert_version(state: &AppState, version: Version, author: Option<i64>) -> ApiResult<()> {
    let revert = version.subject.is_empty() && version.text.is_empty() && version.html.is_empty();
    let id = with_db(state, move |conn| {
        use tidings_common::db::schema::template_versions as t;
        let parts = (!revert).then_some((version.subject, version.text, version.html));
        Ok(diesel::insert_into(t::table)
            .values((
                t::name.eq(version.name),
                t::locale.eq(version.locale),
                t::subject.eq(parts.as_ref().map(|p| p.0.clone())),
                t::text.eq(parts.as_ref().map(|p| p.1.clone())),
                t::html.eq(parts.map(|p| p.2)),
                t::author_id.eq(author),
            ))
            .returning(t::id)
            .get_result::<i64>(conn)?)
    })
    .await?;
    versions::look(&state.templates, &state.db).await;
    state.announce(Announcements::templates(id)).await;
    Ok(())
}

/// Goes back to the shipped files of a template in a locale (recorded as a version).
#[utoipa::path(
    post,
    path = "/templates/{name}/revert",
    tag = "templates",
    params(("name" = String, Path, description = "the template"), LocaleQuery),
    responses(
        (status = 200, description = "the template as it serves now", body = TemplateSource),
        (status = 400, description = "a bad name or locale", body = crate::error::ErrorBody),
        (status = 409, description = "no shipped files to go back to, or no version to undo", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn revert_template(
    State(state): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(name): Path<String>,
    Params(query): Params<LocaleQuery>,
) -> ApiResult<Json<TemplateSource>> {
    template_name(&name)?;
    let locale = locale_of(&state, query.locale.as_deref())?;
    if shipped(&state, &name, &locale).is_none() {
        return Err(ApiError::conflict(
            format!("template {name:?} has no shipped files in this locale to go back to"),
            Some("name"),
        ));
    }
    let overlay = state.templates.overlay();
    if !overlay
        .versions
        .iter()
        .any(|v| v.name == name && v.locale == locale)
    {
        return Err(ApiError::conflict(
            format!("template {name:?} already serves its shipped files"),
            Some("name"),
        ));
    }
    let version = Version {
        id: 0,
        name: name.clone(),
        locale: locale.clone(),
        subject: String::new(),
        text: String::new(),
        html: String::new(),
    };
    insert_version(&state, version, actor.map(|a| a.id)).await?;
    get_template(
        State(state),
        Path(name),
        Params(LocaleQuery {
            locale: Some(locale),
        }),
    )
    .await
}

/// A template's saved versions in a locale, newest first: when, by whom, and the reverts.
#[utoipa::path(
    get,
    path = "/templates/{name}/versions",
    tag = "templates",
    params(("name" = String, Path, description = "the template"), LocaleQuery),
    responses(
        (status = 200, description = "versions, newest first", body = Vec<VersionEntry>),
        (status = 400, description = "a bad name or locale", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn template_versions(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Params(query): Params<LocaleQuery>,
) -> ApiResult<Json<Vec<VersionEntry>>> {
    template_name(&name)?;
    let locale = locale_of(&state, query.locale.as_deref())?;
    with_db(&state, move |conn| {
        Ok(Json(
            diesel::sql_query(
                "SELECT v.id, v.created_at, p.name AS author, v.subject IS NULL AS revert
                 FROM template_versions v LEFT JOIN people p ON p.id = v.author_id
                 WHERE v.name = $1 AND v.locale = $2 ORDER BY v.id DESC LIMIT 200",
            )
            .bind::<diesel::sql_types::Text, _>(name)
            .bind::<diesel::sql_types::Text, _>(locale)
            .load(conn)?,
        ))
    })
    .await
}

/// Sends the template as it serves now, rendered with its sample data, to the admin's own
/// address (or, with the API token, to `person_id`), through the outbox like every email.
#[utoipa::path(
    post,
    path = "/templates/{name}/test",
    tag = "templates",
    params(("name" = String, Path, description = "the template")),
    request_body = TestSend,
    responses(
        (status = 202, description = "queued: the outbox email's id", body = serde_json::Value),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "no such template or person", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn test_template(
    State(state): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(name): Path<String>,
    Body(body): Body<TestSend>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    template_name(&name)?;
    if !state.templates.current().has(&name) {
        return Err(no_template(&name));
    }
    let recipient = match (actor, body.person_id) {
        (Some(actor), _) => actor.id,
        (None, Some(id)) => id,
        (None, None) => {
            return Err(ApiError::bad_field(
                "person_id",
                "person_id: who receives the test (with the API token)",
            ));
        }
    };
    let locale = locale_of(&state, body.locale.as_deref())?;
    let mut data = sample_data(&name);
    if !locale.is_empty() {
        data["locale"] = serde_json::Value::String(locale);
    }
    let config = state.config.clone();
    let (id, outbox) = with_db(&state, move |conn| {
        let person = crate::lookup::find_person(conn, recipient)?;
        if person.email.is_none() {
            return Err(ApiError::bad_field(
                "person_id",
                format!("person_id: person {recipient} has no email address"),
            ));
        }
        let ids = tidings_common::outbox::enqueue(
            conn,
            vec![tidings_common::outbox::NewOutboxEmail {
                template: name,
                source: format!("test:{recipient}"),
                system_event: None,
                automation_id: None,
                recipient_id: recipient,
                conversation_id: None,
                data,
                skipped: None,
            }],
            &config.reply_domain,
            &config.mail_from,
        )?;
        Ok((ids[0], ids))
    })
    .await?;
    state
        .announce(Announcements {
            outbox,
            ..Default::default()
        })
        .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"outbox_id": id, "person_id": recipient})),
    ))
}
