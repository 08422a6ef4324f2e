//! Automations (SPEC M1, M3): the enabled automations a trigger fires whose condition the
//! item meets, the messages and emails they produce, and the loop cap on their runs.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Interval, Text};
use serde_json::{Value, json};
use tidings_common::db::models::{Automation, Item, PersonKind};
use tidings_common::db::schema::*;
use tidings_common::outbox::NewOutboxEmail;
use tidings_common::{Result, posting};
use tracing::{info, warn};

use super::{Work, item_json, project_json};

impl Work<'_> {
    /// Runs every enabled automation with `trigger` whose condition the item meets.
    /// `status` is the item's status as the event saw it.
    pub(super) fn automations(
        &mut self,
        trigger: &str,
        item_id: i64,
        status: Option<&str>,
    ) -> Result<()> {
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
        if let Some(status) = status {
            item_now["status"] = json!(status);
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
        let body = match render_body(body, context) {
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
        .filter(people::kind.ne(PersonKind::Bot))
        .select(people::id)
        .order(people::id.asc())
        .load(conn)
}

/// Renders an automation's message body. The body is checked again here (a row written before
/// the api checked for partial cycles must not overflow the stack) and its output is bounded.
fn render_body(source: &str, context: &Value) -> std::result::Result<String, String> {
    tidings_common::templates::guard::render_source(source, context)
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
