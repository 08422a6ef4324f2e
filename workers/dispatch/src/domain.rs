//! Handling domain events: system notifications (SPEC M4), assignment and project-member
//! emails (E1, E2), and automations (M1, M3) with their loop cap.
//!
//! Each event is handled in one transaction that first marks it handled by a conditional
//! update, so a redelivered event does nothing twice.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Interval, Text};
use serde_json::{Value, json};
use tidings_common::db::models::{Automation, Item, Person};
use tidings_common::db::schema::*;
use tidings_common::events;
use tidings_common::outbox::{self, NewOutboxEmail};
use tidings_common::{Config, Result, posting};
use tracing::{info, warn};

/// What handling one event produced, to publish after commit.
#[derive(Debug, Default)]
pub struct Handled {
    pub outbox_ids: Vec<i64>,
    /// Messages automations posted; each needs its `message.posted`.
    pub messages: Vec<i64>,
}

/// Handles event `event_id`; `None` if there is no such event (a poison delivery).
pub fn handle_event(
    conn: &mut PgConnection,
    config: &Config,
    event_id: i64,
) -> Result<Option<Handled>> {
    conn.transaction(|conn| {
        let claimed: Option<(String, Value)> = diesel::update(
            domain_events::table
                .find(event_id)
                .filter(domain_events::handled_at.is_null()),
        )
        .set(domain_events::handled_at.eq(diesel::dsl::now))
        .returning((domain_events::kind, domain_events::payload))
        .get_result(conn)
        .optional()?;
        let Some((kind, payload)) = claimed else {
            let exists: bool =
                diesel::select(diesel::dsl::exists(domain_events::table.find(event_id)))
                    .get_result(conn)?;
            return Ok(exists.then(Handled::default));
        };
        let mut work = Work {
            conn,
            config,
            event_id,
            emails: Vec::new(),
            handled: Handled::default(),
        };
        let id = |field: &str| payload.get(field).and_then(Value::as_i64);
        match kind.as_str() {
            events::USER_CREATED => {
                if let Some(person) = id("person_id") {
                    work.system(events::USER_CREATED, person, json!({}))?;
                }
            }
            events::PASSWORD_RESET_REQUESTED => {
                if let Some(person) = id("person_id") {
                    let data = json!({
                        "reset_url": payload["reset_url"],
                        "expires_in_minutes": payload["expires_in_minutes"],
                    });
                    work.system(events::PASSWORD_RESET_REQUESTED, person, data)?;
                }
            }
            events::INVITATION_CREATED => {
                if let (Some(person), Some(project)) = (id("person_id"), id("project_id")) {
                    let data = json!({
                        "project": project_json(work.conn, project)?,
                        "accept_url": payload["accept_url"],
                    });
                    work.system(events::INVITATION_CREATED, person, data)?;
                }
            }
            events::PROJECT_MEMBER_ADDED => {
                match (id("project_id"), id("person_id"), id("team_id")) {
                    (Some(project), Some(person), _) => {
                        work.project_member_added(project, Joined::User(person))?
                    }
                    (Some(project), None, Some(team)) => {
                        work.project_member_added(project, Joined::Team(team))?
                    }
                    _ => {}
                }
            }
            events::ITEM_ASSIGNED => {
                if let Some(item) = id("item_id") {
                    work.assignment(item, id("previous_id"), id("assignee_id"))?;
                    if id("assignee_id").is_some() {
                        work.automations("assigned", item, &payload)?;
                    }
                }
            }
            events::ITEM_CREATED => {
                if let Some(item) = id("item_id") {
                    work.automations("item_created", item, &payload)?;
                }
            }
            events::ITEM_STATUS_CHANGED => {
                if let Some(item) = id("item_id") {
                    work.automations("status_changed", item, &payload)?;
                    if payload["status"] == "closed" {
                        work.automations("item_closed", item, &payload)?;
                    }
                }
            }
            events::MESSAGE_POSTED => {
                if let Some(item) = id("item_id") {
                    work.automations("message_posted", item, &payload)?;
                }
            }
            other => warn!(
                event.id = event_id,
                kind = other,
                "unknown domain event kind; ignored"
            ),
        }
        let Work {
            conn,
            emails,
            mut handled,
            ..
        } = work;
        handled.outbox_ids = outbox::enqueue(conn, emails, &config.reply_domain)?;
        Ok(Some(handled))
    })
}

/// Who joined a project.
enum Joined {
    User(i64),
    Team(i64),
}

struct Work<'a> {
    conn: &'a mut PgConnection,
    config: &'a Config,
    event_id: i64,
    emails: Vec<NewOutboxEmail>,
    handled: Handled,
}

fn project_json(conn: &mut PgConnection, project: i64) -> QueryResult<Value> {
    let name: Option<String> = projects::table
        .find(project)
        .select(projects::name)
        .first(conn)
        .optional()?;
    Ok(name.map_or(Value::Null, |name| json!({"id": project, "name": name})))
}

fn item_json(item: &Item) -> Value {
    json!({"id": item.id, "kind": item.kind, "title": item.title, "status": item.status,
           "assignee_id": item.assignee_id, "requester_id": item.requester_id})
}

impl Work<'_> {
    /// Queues system notification `event` to `person` (skipped, and logged, when disabled).
    fn system(&mut self, event: &str, person: i64, data: Value) -> Result<()> {
        let (template, enabled): (String, bool) = system_notifications::table
            .find(event)
            .select((
                system_notifications::template,
                system_notifications::enabled,
            ))
            .first(self.conn)?;
        self.emails.push(NewOutboxEmail {
            template,
            source: format!("system:{event}"),
            system_event: Some(event.to_string()),
            automation_id: None,
            recipient_id: person,
            conversation_id: None,
            data,
            skipped: (!enabled).then(|| format!("system notification {event} is disabled")),
        });
        Ok(())
    }

    /// E1: the new assignee and the previous one, each if their assignment emails are on.
    fn assignment(
        &mut self,
        item: i64,
        previous: Option<i64>,
        assignee: Option<i64>,
    ) -> Result<()> {
        let Some(item) = items::table
            .find(item)
            .select(Item::as_select())
            .first(self.conn)
            .optional()?
        else {
            return Ok(());
        };
        let data =
            json!({"item": item_json(&item), "project": project_json(self.conn, item.project_id)?});
        if assignee == previous {
            return Ok(());
        }
        for (person, event) in [
            (assignee, events::ITEM_ASSIGNED),
            (previous, "item_unassigned"),
        ] {
            if let Some(person) = person
                && user_pref(self.conn, person, "email_assignments")?
            {
                self.system(event, person, data.clone())?;
            }
        }
        Ok(())
    }

    /// E2: every user following the project whose "new users and teams" emails are on, other
    /// than whoever joined.
    fn project_member_added(&mut self, project: i64, joined: Joined) -> Result<()> {
        let (member_json, joiners): (Option<Value>, Vec<i64>) = match joined {
            Joined::User(person) => (
                people::table
                    .find(person)
                    .select(Person::as_select())
                    .first(self.conn)
                    .optional()?
                    .map(|p| json!({"id": p.id, "name": p.name, "kind": p.kind})),
                vec![person],
            ),
            Joined::Team(team) => (
                teams::table
                    .find(team)
                    .select(teams::name)
                    .first::<String>(self.conn)
                    .optional()?
                    .map(|name| json!({"id": team, "name": name, "kind": "team"})),
                team_members::table
                    .filter(team_members::team_id.eq(team))
                    .select(team_members::person_id)
                    .load(self.conn)?,
            ),
        };
        let Some(member_json) = member_json else {
            return Ok(());
        };
        let recipients: Vec<i64> = project_follows::table
            .inner_join(people::table)
            .inner_join(user_preferences::table.on(user_preferences::person_id.eq(people::id)))
            .filter(project_follows::project_id.eq(project))
            .filter(people::kind.eq("user"))
            .filter(people::active.eq(true))
            .filter(people::id.ne_all(joiners))
            .filter(user_preferences::email_project_members.eq(true))
            .select(people::id)
            .load(self.conn)?;
        let data = json!({"project": project_json(self.conn, project)?, "member": member_json});
        for person in recipients {
            self.system(events::PROJECT_MEMBER_ADDED, person, data.clone())?;
        }
        Ok(())
    }

    /// Runs every enabled automation with `trigger` whose condition the item meets.
    fn automations(&mut self, trigger: &str, item_id: i64, payload: &Value) -> Result<()> {
        let found: Vec<Automation> = automations::table
            .filter(automations::trigger.eq(trigger))
            .filter(automations::enabled.eq(true))
            .filter(automations::critical.eq(false))
            .order(automations::id.asc())
            .select(Automation::as_select())
            .load(self.conn)?;
        if found.is_empty() {
            return Ok(());
        }
        let Some(item) = items::table
            .find(item_id)
            .select(Item::as_select())
            .first(self.conn)
            .optional()?
        else {
            return Ok(());
        };
        let mut item_now = item_json(&item);
        // The item as the event saw it: a later change must not make an earlier event match.
        if let Some(status) = payload.get("status").filter(|s| s.is_string()) {
            item_now["status"] = status.clone();
        }
        let context = json!({
            "item": item_now,
            "project": project_json(self.conn, item.project_id)?,
            "event": {"kind": trigger},
        });
        for automation in found {
            if !condition_holds(automation.condition.as_ref(), &context["item"]) {
                continue;
            }
            let mut context = context.clone();
            context["automation"] = json!({"id": automation.id, "name": automation.name});
            match automation.action.as_str() {
                "post_message" => self.post_message(&automation, &item, &context)?,
                "send_email" => {
                    for person in audience(self.conn, &automation, &item)? {
                        if self.run_allowed(&automation, item.id, person)? {
                            self.emails.push(NewOutboxEmail {
                                template: automation.template.clone().unwrap_or_default(),
                                source: format!("automation:{}", automation.id),
                                system_event: None,
                                automation_id: Some(automation.id),
                                recipient_id: person,
                                conversation_id: None,
                                data: context.clone(),
                                skipped: None,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// M1: a message from the automation's bot in the item's conversation (created if the
    /// item has none), which then goes through the same pipeline as any other message.
    fn post_message(
        &mut self,
        automation: &Automation,
        item: &Item,
        context: &Value,
    ) -> Result<()> {
        let (Some(body), Some(bot)) = (&automation.body, automation.bot_id) else {
            return Ok(());
        };
        let mut registry = handlebars::Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        let body = match registry.render_template(body, context) {
            Ok(body) if !body.trim().is_empty() => body,
            Ok(_) => return Ok(()),
            Err(e) => {
                warn!(automation.id = automation.id, error = %e, "automation message body does not render; nothing posted");
                return Ok(());
            }
        };
        if !self.run_allowed(automation, item.id, 0)? {
            return Ok(());
        }
        let conversation: Option<i64> = conversations::table
            .filter(conversations::item_id.eq(item.id))
            .order(conversations::id.asc())
            .select(conversations::id)
            .first(self.conn)
            .optional()?;
        let conversation = match conversation {
            Some(c) => c,
            None => diesel::insert_into(conversations::table)
                .values((
                    conversations::item_id.eq(item.id),
                    conversations::subject.eq(&item.title),
                ))
                .returning(conversations::id)
                .get_result(self.conn)?,
        };
        let message = posting::insert_message(self.conn, conversation, bot, &body, false)?.id;
        diesel::update(
            automation_runs::table
                .filter(automation_runs::automation_id.eq(automation.id))
                .filter(automation_runs::event_id.eq(self.event_id))
                .filter(automation_runs::recipient_id.eq(0)),
        )
        .set(automation_runs::message_id.eq(message))
        .execute(self.conn)?;
        info!(
            automation.id = automation.id,
            item.id = item.id,
            message.id = message,
            "automation posted a message"
        );
        self.handled.messages.push(message);
        Ok(())
    }

    /// Records a run of `automation` for this event, item and recipient (0 for a posted
    /// message), unless this event ran it already or the loop cap bites. A capped attempt is
    /// recorded too, and logged.
    fn run_allowed(&mut self, automation: &Automation, item: i64, recipient: i64) -> Result<bool> {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind::<Text, _>(format!(
                "tidings-automation {} {item} {recipient}",
                automation.id
            ))
            .execute(self.conn)?;
        let mut capped = None;
        for (limit, window) in &self.config.automation_limits {
            let window =
                diesel::pg::data_types::PgInterval::from_microseconds(window.as_micros() as i64);
            let n = diesel::sql_query(
                "SELECT count(*) AS n FROM automation_runs WHERE automation_id = $1 AND item_id = $2
                 AND recipient_id = $3 AND NOT capped AND created_at > now() - $4",
            )
            .bind::<BigInt, _>(automation.id)
            .bind::<BigInt, _>(item)
            .bind::<BigInt, _>(recipient)
            .bind::<Interval, _>(window)
            .get_result::<Count>(self.conn)?
            .n;
            if n >= i64::from(*limit) {
                capped = Some(*limit);
                break;
            }
        }
        let inserted = diesel::insert_into(automation_runs::table)
            .values((
                automation_runs::automation_id.eq(automation.id),
                automation_runs::event_id.eq(self.event_id),
                automation_runs::item_id.eq(item),
                automation_runs::recipient_id.eq(recipient),
                automation_runs::capped.eq(capped.is_some()),
            ))
            .on_conflict_do_nothing()
            .execute(self.conn)?;
        if inserted == 0 {
            return Ok(false);
        }
        if let Some(limit) = capped {
            warn!(
                automation.id = automation.id,
                item.id = item,
                recipient.id = recipient,
                limit,
                "automation loop cap reached; this run is skipped"
            );
            return Ok(false);
        }
        Ok(true)
    }
}

/// A condition is an object of item fields and the values they must have, e.g.
/// `{"status": "closed", "kind": "ticket"}`; no condition always holds.
pub fn condition_holds(condition: Option<&Value>, item: &Value) -> bool {
    match condition {
        None | Some(Value::Null) => true,
        Some(Value::Object(fields)) => fields
            .iter()
            .all(|(field, want)| item.get(field) == Some(want)),
        Some(_) => false,
    }
}

/// Recipients of an automation email: the item's followers (with its assignee and
/// requester), its assignee, or its requester; active people with an address only.
fn audience(
    conn: &mut PgConnection,
    automation: &Automation,
    item: &Item,
) -> QueryResult<Vec<i64>> {
    let mut ids: Vec<i64> = match automation.audience.as_deref() {
        Some("assignee") => item.assignee_id.into_iter().collect(),
        Some("requester") => item.requester_id.into_iter().collect(),
        _ => {
            let mut ids: Vec<i64> = item_follows::table
                .filter(item_follows::item_id.eq(item.id))
                .select(item_follows::person_id)
                .load(conn)?;
            ids.extend(item.assignee_id);
            ids.extend(item.requester_id);
            ids
        }
    };
    ids.sort_unstable();
    ids.dedup();
    people::table
        .filter(people::id.eq_any(ids))
        .filter(people::active.eq(true))
        .filter(people::email.is_not_null())
        .filter(people::kind.ne("bot"))
        .select(people::id)
        .order(people::id.asc())
        .load(conn)
}

/// A user's email preference (a `user_preferences` column); people without preferences
/// (customers) count as off.
fn user_pref(conn: &mut PgConnection, person: i64, column: &str) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Flag {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        flag: bool,
    }
    Ok(diesel::sql_query(format!(
        "SELECT {column} AS flag FROM user_preferences WHERE person_id = $1"
    ))
    .bind::<BigInt, _>(person)
    .get_result::<Flag>(conn)
    .optional()?
    .is_some_and(|f| f.flag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m1_conditions_match_item_fields() {
        let item = json!({"id": 4, "kind": "ticket", "status": "closed", "assignee_id": null});
        assert!(condition_holds(None, &item));
        assert!(condition_holds(Some(&Value::Null), &item));
        assert!(condition_holds(Some(&json!({"status": "closed"})), &item));
        assert!(condition_holds(
            Some(&json!({"status": "closed", "kind": "ticket"})),
            &item
        ));
        assert!(!condition_holds(
            Some(&json!({"status": "closed", "kind": "task"})),
            &item
        ));
        assert!(condition_holds(Some(&json!({"assignee_id": null})), &item));
        assert!(!condition_holds(Some(&json!({"priority": "high"})), &item));
        assert!(!condition_holds(Some(&json!(["status"])), &item));
    }
}
