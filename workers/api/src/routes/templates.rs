//! The email templates (SPEC M3, M5) and who sends them.

use axum::Json;
use axum::extract::State;
use diesel::prelude::*;
use serde_json::{Value, json};
use tidings_common::db::schema::*;

use crate::error::ApiResult;
use crate::state::{AppState, with_db};

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
