//! Handling domain events: system notifications (SPEC M4), assignment and project-member
//! emails (E1, E2), and automations (M1, M3, see [`automations`]) with their loop cap.
//!
//! Each event is handled in one transaction that first marks it handled by a conditional
//! update, so a redelivered event does nothing twice.

mod automations;

use diesel::prelude::*;
use serde_json::{Value, json};
use tidings_common::announce::Announcements;
use tidings_common::db::models::{Item, Person, PersonKind};
use tidings_common::db::schema::*;
use tidings_common::events::{self, DomainEvent, Joined};
use tidings_common::outbox::{self, NewOutboxEmail};
use tidings_common::{Config, Result};
use tracing::error;

pub use automations::condition_holds;

/// Handles event `event_id`; returns what it produced, to announce after commit (`None` if
/// there is no such event: a poison delivery).
pub fn handle_event(
    conn: &mut PgConnection,
    config: &Config,
    event_id: i64,
) -> Result<Option<Announcements>> {
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
            return Ok(exists.then(Announcements::default));
        };
        let mut work = Work {
            conn,
            config,
            event_id,
            emails: Vec::new(),
            handled: Announcements::default(),
        };
        match DomainEvent::from_row(&kind, payload) {
            Ok(event) => work.handle(&event)?,
            Err(reason) => error!(event.id = event_id, reason, "domain event ignored"),
        }
        let Work {
            conn,
            emails,
            mut handled,
            ..
        } = work;
        handled.outbox = outbox::enqueue(conn, emails, &config.reply_domain, &config.mail_from)?;
        Ok(Some(handled))
    })
}

struct Work<'a> {
    conn: &'a mut PgConnection,
    config: &'a Config,
    event_id: i64,
    emails: Vec<NewOutboxEmail>,
    /// Messages automations posted, each needing its `message.posted`.
    handled: Announcements,
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
    /// Does what `event` asks for.
    fn handle(&mut self, event: &DomainEvent) -> Result<()> {
        let kind = event.kind();
        match event {
            DomainEvent::UserCreated { person_id } => self.system(kind, *person_id, json!({})),
            DomainEvent::PasswordResetRequested {
                person_id,
                reset_url,
                expires_in_minutes,
            } => {
                let data =
                    json!({"reset_url": reset_url, "expires_in_minutes": expires_in_minutes});
                self.system(kind, *person_id, data)
            }
            DomainEvent::InvitationCreated {
                person_id,
                project_id,
                accept_url,
                ..
            } => {
                let data = json!({
                    "project": project_json(self.conn, *project_id)?,
                    "accept_url": accept_url,
                });
                self.system(kind, *person_id, data)
            }
            DomainEvent::ProjectMemberAdded { project_id, joined } => {
                self.project_member_added(*project_id, *joined)
            }
            DomainEvent::ItemAssigned {
                item_id,
                assignee_id,
                previous_id,
            } => {
                self.assignment(*item_id, *previous_id, *assignee_id)?;
                if assignee_id.is_some() {
                    self.automations("assigned", *item_id, None)?;
                }
                Ok(())
            }
            DomainEvent::ItemCreated {
                item_id,
                auto_forwarded,
            } => {
                if *auto_forwarded {
                    tracing::info!(
                        item.id = item_id,
                        "no automation runs on a ticket from auto-forwarded mail (RFC 3834)"
                    );
                    return Ok(());
                }
                self.automations("item_created", *item_id, None)
            }
            DomainEvent::ItemStatusChanged {
                item_id, status, ..
            } => {
                self.automations("status_changed", *item_id, Some(status))?;
                if status == "closed" {
                    self.automations("item_closed", *item_id, Some(status))?;
                }
                Ok(())
            }
            DomainEvent::MessagePosted { item_id, .. } => {
                self.automations("message_posted", *item_id, None)
            }
        }
    }

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
            (assignee, "item_assigned"),
            (previous, events::ITEM_UNASSIGNED),
        ] {
            if let Some(person) = person
                && assignment_emails_on(self.conn, person)?
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
            Joined::User { person_id: person } => (
                people::table
                    .find(person)
                    .select(Person::as_select())
                    .first(self.conn)
                    .optional()?
                    .map(|p| json!({"id": p.id, "name": p.name, "kind": p.kind})),
                vec![person],
            ),
            Joined::Team { team_id: team } => (
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
            .filter(people::kind.eq(PersonKind::User))
            .filter(people::active.eq(true))
            .filter(people::id.ne_all(joiners))
            .filter(user_preferences::email_project_members.eq(true))
            .select(people::id)
            .load(self.conn)?;
        let data = json!({"project": project_json(self.conn, project)?, "member": member_json});
        for person in recipients {
            self.system("project_member_added", person, data.clone())?;
        }
        Ok(())
    }
}

/// Whether a user's assignment emails are on (E1); people without preferences (customers)
/// count as off.
fn assignment_emails_on(conn: &mut PgConnection, person: i64) -> QueryResult<bool> {
    Ok(user_preferences::table
        .find(person)
        .select(user_preferences::email_assignments)
        .first(conn)
        .optional()?
        .unwrap_or(false))
}
