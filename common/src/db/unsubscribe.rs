//! Turning a kind of email off for a person, as an unsubscribe link does (RFC 8058) and as a
//! complaint report does (SPEC T5): one place, so both stop exactly the same email.

use diesel::prelude::*;

use crate::db::schema::{conversation_mutes, preference_changes, user_preferences};
use crate::mail::UnsubscribeScope;
use crate::rules::MessageKind;

/// The preference switch that turns a user's emails of `kind` off.
pub fn email_field(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::FromCustomer => "email_customer_messages",
        MessageKind::ToCustomer => "email_replies",
        MessageKind::Internal => "email_internal",
    }
}

/// What `scope` turns off, in words.
pub fn describe(scope: UnsubscribeScope) -> String {
    match scope {
        UnsubscribeScope::UserKind(MessageKind::FromCustomer) => {
            "emails about customer messages".into()
        }
        UnsubscribeScope::UserKind(MessageKind::ToCustomer) => {
            "emails about replies to customers".into()
        }
        UnsubscribeScope::UserKind(MessageKind::Internal) => {
            "emails about internal messages".into()
        }
        UnsubscribeScope::CustomerConversation(id) => format!("emails about conversation {id}"),
    }
}

/// Turns the emails of `scope` off for `person_id` and records the change with its `source`
/// (`unsubscribe`, `complaint`). Returns the switch changed and, for a customer, the
/// conversation muted. Doing it twice changes nothing more.
pub fn apply(
    conn: &mut PgConnection,
    person_id: i64,
    scope: UnsubscribeScope,
    source: &str,
) -> QueryResult<(&'static str, Option<i64>)> {
    let (field, conversation_id) = match scope {
        UnsubscribeScope::UserKind(kind) => {
            let field = email_field(kind);
            diesel::insert_into(user_preferences::table)
                .values(user_preferences::person_id.eq(person_id))
                .on_conflict_do_nothing()
                .execute(conn)?;
            let row = user_preferences::table.find(person_id);
            let now = user_preferences::updated_at.eq(diesel::dsl::now);
            match kind {
                MessageKind::FromCustomer => diesel::update(row)
                    .set((user_preferences::email_customer_messages.eq(false), now))
                    .execute(conn)?,
                MessageKind::ToCustomer => diesel::update(row)
                    .set((user_preferences::email_replies.eq(false), now))
                    .execute(conn)?,
                MessageKind::Internal => diesel::update(row)
                    .set((user_preferences::email_internal.eq(false), now))
                    .execute(conn)?,
            };
            (field, None)
        }
        UnsubscribeScope::CustomerConversation(conversation_id) => {
            diesel::insert_into(conversation_mutes::table)
                .values((
                    conversation_mutes::person_id.eq(person_id),
                    conversation_mutes::conversation_id.eq(conversation_id),
                ))
                .on_conflict_do_nothing()
                .execute(conn)?;
            ("conversation_emails", Some(conversation_id))
        }
    };
    diesel::insert_into(preference_changes::table)
        .values((
            preference_changes::person_id.eq(person_id),
            preference_changes::conversation_id.eq(conversation_id),
            preference_changes::field.eq(field),
            preference_changes::new_value.eq("false"),
            preference_changes::source.eq(source),
        ))
        .execute(conn)?;
    Ok((field, conversation_id))
}
