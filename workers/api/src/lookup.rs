//! Every find-or-404 helper of the api, in one idiom: [`found`] turns a row that may be
//! missing into the row or a 404 naming what was missing; each helper loads its row with
//! `find(id) … .optional()` inside the caller's transaction.

use diesel::prelude::*;
use tidings_common::db::models::{Automation, Conversation, Item, Message, Person, PersonKind};
use tidings_common::db::schema::{
    automations, conversations, items, messages, people, projects, teams,
};

use crate::error::{ApiError, ApiResult};

/// The row, or 404 naming `what` and `id`.
pub fn found<T>(row: Option<T>, what: &str, id: i64) -> ApiResult<T> {
    row.ok_or_else(|| ApiError::not_found(what, id))
}

pub fn find_person(conn: &mut PgConnection, id: i64) -> ApiResult<Person> {
    let row = people::table
        .find(id)
        .select(Person::as_select())
        .first(conn)
        .optional()?;
    found(row, "person", id)
}

/// A person who must be a user (not a customer or bot); 400 naming `field` otherwise.
pub fn require_user(conn: &mut PgConnection, id: i64, field: &str) -> ApiResult<Person> {
    let person = find_person(conn, id)?;
    if person.kind != PersonKind::User {
        return Err(ApiError::bad_field(
            field,
            format!("{field}: person {id} is a {}, not a user", person.kind),
        ));
    }
    Ok(person)
}

pub fn find_conversation(conn: &mut PgConnection, id: i64) -> ApiResult<Conversation> {
    let row = conversations::table
        .find(id)
        .select(Conversation::as_select())
        .first(conn)
        .optional()?;
    found(row, "conversation", id)
}

pub fn find_message(conn: &mut PgConnection, id: i64) -> ApiResult<Message> {
    let row = messages::table
        .find(id)
        .select(Message::as_select())
        .first(conn)
        .optional()?;
    found(row, "message", id)
}

/// The item, locked for update until the transaction ends.
pub fn lock_item(conn: &mut PgConnection, id: i64) -> ApiResult<Item> {
    let row = items::table
        .find(id)
        .select(Item::as_select())
        .for_update()
        .first(conn)
        .optional()?;
    found(row, "item", id)
}

pub fn find_automation(conn: &mut PgConnection, id: i64) -> ApiResult<Automation> {
    let row = automations::table
        .find(id)
        .select(Automation::as_select())
        .first(conn)
        .optional()?;
    found(row, "automation", id)
}

pub fn require_project(conn: &mut PgConnection, id: i64) -> ApiResult<()> {
    let row = projects::table
        .find(id)
        .select(projects::id)
        .first::<i64>(conn)
        .optional()?;
    found(row, "project", id).map(drop)
}

pub fn require_team(conn: &mut PgConnection, id: i64) -> ApiResult<()> {
    let row = teams::table
        .find(id)
        .select(teams::id)
        .first::<i64>(conn)
        .optional()?;
    found(row, "team", id).map(drop)
}

pub fn require_item(conn: &mut PgConnection, id: i64) -> ApiResult<()> {
    let row = items::table
        .find(id)
        .select(items::id)
        .first::<i64>(conn)
        .optional()?;
    found(row, "item", id).map(drop)
}
