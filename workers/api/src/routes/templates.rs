//! The email templates (SPEC M3, M5) and who sends them.

use axum::Json;
use axum::extract::State;
use diesel::prelude::*;
use serde::Serialize;
use tidings_common::db::schema::*;

use crate::error::ApiResult;
use crate::state::{AppState, with_db};

/// Every template and what sends it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Catalogue {
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
        Ok(Json(Catalogue { templates }))
    })
    .await
}
