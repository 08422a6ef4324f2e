//! Who is notified about a message and who is emailed: pure functions over facts read from the
//! database. Every verdict names the rule that decided it, so any (message, person) pair can
//! be explained.
//!
//! The order of the checks is the order of precedence: a person who may not see a conversation
//! (P1) is never notified, whatever their other preferences say.

use serde::Serialize;

use crate::db::models::{PersonKind, SkipReason};

/// P1: which conversations a user may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Only conversations in projects the user follows (plus ones they were added to).
    FollowedProjects,
    AllProjects,
}

/// P3: new messages from customers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FromCustomers {
    /// Every new customer message.
    All,
    /// Customer messages in conversations the user follows.
    Mine,
    None,
}

/// P4: messages from users and bots to customers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FromUsers {
    /// Every message from a user or bot to a customer.
    All,
    /// Only in conversations the user follows.
    Followed,
    None,
}

macro_rules! text_enum {
    ($ty:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALLOWED: &'static [&'static str] = &[$($text),+];
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
            pub fn parse(value: &str) -> Option<Self> {
                match value { $($text => Some($ty::$variant),)+ _ => None }
            }
        }
    };
}

text_enum!(Visibility { FollowedProjects = "followed_projects", AllProjects = "all_projects" });
text_enum!(FromCustomers { All = "all", Mine = "mine", None = "none" });
text_enum!(FromUsers { All = "all", Followed = "followed", None = "none" });

/// A user's notification and email preferences (SPEC P1–P5, plus per-kind email switches
/// that one-click unsubscribe turns off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Preferences {
    /// P1
    pub see_conversations: Visibility,
    /// P2
    pub show_customer_conversations: bool,
    /// P3
    pub from_customers: FromCustomers,
    /// P4
    pub from_users: FromUsers,
    /// P5
    pub followed_internal: bool,
    /// Email (not in-app) for customer messages.
    pub email_customer_messages: bool,
    /// Email (not in-app) for replies to customers.
    pub email_replies: bool,
    /// Email (not in-app) for internal messages.
    pub email_internal: bool,
}

impl Default for Preferences {
    /// A new user: the SPEC's "support team member" (mine / followed / on), allowed to see
    /// every project, every email on.
    fn default() -> Self {
        Preferences {
            see_conversations: Visibility::AllProjects,
            show_customer_conversations: true,
            from_customers: FromCustomers::Mine,
            from_users: FromUsers::Followed,
            followed_internal: true,
            email_customer_messages: true,
            email_replies: true,
            email_internal: true,
        }
    }
}

/// What kind of message this is for the preference rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Written by a customer (P3).
    FromCustomer,
    /// External, written by a user or a bot: a reply to customers (P4).
    ToCustomer,
    /// Internal, between users only (P5, D5).
    Internal,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::FromCustomer => "customer_message",
            MessageKind::ToCustomer => "reply_to_customer",
            MessageKind::Internal => "internal",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [
            MessageKind::FromCustomer,
            MessageKind::ToCustomer,
            MessageKind::Internal,
        ]
        .into_iter()
        .find(|k| k.as_str() == value)
    }
}

/// Facts about the message, read when deciding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFacts {
    pub message_id: i64,
    pub conversation_id: i64,
    pub author_id: i64,
    pub author_kind: PersonKind,
    pub internal: bool,
    /// Deleted, or edited down to nothing.
    pub deleted: bool,
    /// A customer follows the conversation (P2 hides these).
    pub customer_conversation: bool,
}

impl MessageFacts {
    pub fn kind(&self) -> MessageKind {
        if self.internal {
            MessageKind::Internal
        } else if self.author_kind == PersonKind::Customer {
            MessageKind::FromCustomer
        } else {
            MessageKind::ToCustomer
        }
    }
}

/// Facts about one person in relation to the message's conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonFacts {
    pub person_id: i64,
    pub kind: PersonKind,
    pub active: bool,
    pub has_email: bool,
    /// Users only; others use the defaults, which they never consult.
    pub preferences: Preferences,
    /// Follows the conversation (SPEC F1).
    pub follows_conversation: bool,
    /// Follows the project the conversation belongs to.
    pub follows_project: bool,
    /// Posted in the conversation or was added to it.
    pub participant: bool,
    /// The person muted the conversation (A4); for a customer, also what unsubscribing from
    /// its emails does.
    pub muted_conversation: bool,
    /// The person's read cursor in the conversation.
    pub seen_up_to: Option<i64>,
    /// The newest message the person posted in the conversation.
    pub last_posted: Option<i64>,
    /// The person's address bounced (hard, or soft repeatedly) and is suppressed.
    pub suppressed: bool,
    /// A1: the person paused (do not disturb) until then; `None` when no pause is on now.
    pub held_until: Option<chrono::DateTime<chrono::Utc>>,
    /// A1: the same end in words in the zone of the person's working hours, when they have one
    /// ("Tue 2026-12-08 08:00 Europe/Berlin").
    pub held_local: Option<String>,
    /// A3: the person's own choice to wait for quiet; `None` takes the organisation's default.
    pub wait_for_quiet: Option<bool>,
    /// A2: now is outside the person's working hours; `None` inside them or without any.
    pub off_hours: Option<OffHours>,
}

/// A2: when the person's next working period starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffHours {
    pub until: chrono::DateTime<chrono::Utc>,
    /// The same instant in words in the person's time zone ("Mon 2027-03-29 09:00
    /// Europe/Berlin").
    pub local: String,
}

/// A decision and the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Verdict {
    pub yes: bool,
    /// The deciding rule: `D3`, `D5`, `P1`…`P5`, `F1`, `D4`, `D9`, `A4`, `bot`, `unsubscribe`,
    /// `address`.
    pub rule: &'static str,
    /// Why, in words.
    pub detail: String,
    /// The reason stored on a skipped notification and in the email log (`None` for yes).
    #[serde(skip)]
    pub reason: Option<SkipReason>,
    /// A1: not now but at this time (the end of a pause); with `yes` false and no reason.
    pub held_until: Option<chrono::DateTime<chrono::Utc>>,
}

fn no(rule: &'static str, reason: SkipReason, detail: impl Into<String>) -> Verdict {
    Verdict {
        yes: false,
        rule,
        detail: detail.into(),
        reason: Some(reason),
        held_until: None,
    }
}

fn yes(rule: &'static str, detail: impl Into<String>) -> Verdict {
    Verdict {
        yes: true,
        rule,
        detail: detail.into(),
        reason: None,
        held_until: None,
    }
}

/// May this user see the conversation at all (P1)?
pub fn may_see(person: &PersonFacts) -> bool {
    person.preferences.see_conversations == Visibility::AllProjects
        || person.follows_project
        || person.participant
}

/// Is the person notified in the app about the message (D1)?
pub fn notify(message: &MessageFacts, person: &PersonFacts) -> Verdict {
    if person.person_id == message.author_id {
        return no(
            "D3",
            SkipReason::OwnMessage,
            "nobody is notified about a message they sent",
        );
    }
    match person.kind {
        PersonKind::Bot => return no("bot", SkipReason::Bot, "bots never receive notifications"),
        _ if !person.active => {
            return no("D9", SkipReason::Deactivated, "the person is deactivated");
        }
        _ if message.deleted => return no("D9", SkipReason::Deleted, "the message was deleted"),
        PersonKind::Customer => {
            return if message.internal {
                no(
                    "D5",
                    SkipReason::InternalMessage,
                    "customers are never notified about internal messages",
                )
            } else if person.follows_conversation {
                yes("F1", "the customer follows the conversation")
            } else {
                no(
                    "F1",
                    SkipReason::NotFollowing,
                    "the customer does not follow the conversation",
                )
            };
        }
        PersonKind::User => {}
    }
    let prefs = &person.preferences;
    if !may_see(person) {
        return no(
            "P1",
            SkipReason::NoAccess,
            "the user may only see conversations in projects they follow, and does not follow this one",
        );
    }
    if message.customer_conversation && !prefs.show_customer_conversations {
        return no(
            "P2",
            SkipReason::Preference,
            "\"Show From customers\" is off",
        );
    }
    let follows = person.follows_conversation;
    match message.kind() {
        MessageKind::Internal => match (prefs.followed_internal, follows) {
            (true, true) => yes("P5", "internal message in a followed conversation, P5 on"),
            (true, false) => no(
                "P5",
                SkipReason::NotFollowing,
                "internal messages notify followers only",
            ),
            (false, _) => no(
                "P5",
                SkipReason::Preference,
                "\"Followed internal messages\" is off",
            ),
        },
        MessageKind::FromCustomer => match (prefs.from_customers, follows) {
            (FromCustomers::All, _) => yes("P3", "\"From customers\" is all"),
            (FromCustomers::Mine, true) => yes(
                "P3",
                "\"From customers\" is mine and the user follows the conversation",
            ),
            (FromCustomers::Mine, false) => no(
                "P3",
                SkipReason::NotFollowing,
                "\"From customers\" is mine and the user does not follow the conversation",
            ),
            (FromCustomers::None, _) => {
                no("P3", SkipReason::Preference, "\"From customers\" is none")
            }
        },
        MessageKind::ToCustomer => match (prefs.from_users, follows) {
            (FromUsers::All, _) => yes("P4", "\"From users & bots\" is all"),
            (FromUsers::Followed, true) => yes(
                "P4",
                "\"From users & bots\" is followed and the user follows the conversation",
            ),
            (FromUsers::Followed, false) => no(
                "P4",
                SkipReason::NotFollowing,
                "\"From users & bots\" is followed and the user does not follow the conversation",
            ),
            (FromUsers::None, _) => no(
                "P4",
                SkipReason::Preference,
                "\"From users & bots\" is none",
            ),
        },
    }
}

/// True when the person has seen the message: their cursor is at or past it, or they posted
/// later in the same conversation (D4).
pub fn has_seen(message_id: i64, seen_up_to: Option<i64>, last_posted: Option<i64>) -> bool {
    seen_up_to.is_some_and(|id| id >= message_id) || last_posted.is_some_and(|id| id > message_id)
}

/// A3: until when an email that would go now waits for its conversation to go quiet: one
/// `window` after the conversation's last message, but never later than `max` after the
/// email first fell due (`due`). `None`: it goes now.
pub fn quiet_until(
    last_message_at: chrono::DateTime<chrono::Utc>,
    due: chrono::DateTime<chrono::Utc>,
    window: std::time::Duration,
    max: std::time::Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let span =
        |d: std::time::Duration| chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX);
    let quiet = last_message_at.checked_add_signed(span(window))?;
    let latest = due.checked_add_signed(span(max))?;
    let until = quiet.min(latest);
    (until > now).then_some(until)
}

/// The verdict of an email held by A3 until `until`.
pub fn waiting_for_quiet(until: chrono::DateTime<chrono::Utc>) -> Verdict {
    Verdict {
        yes: false,
        rule: "A3",
        detail: format!(
            "waiting for the conversation to go quiet (until {} at the latest)",
            until.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        reason: None,
        held_until: Some(until),
    }
}

/// Is the notification emailed now, at send time (D2, D4, D9)? Re-checks [`notify`] with the
/// current facts first.
pub fn email(message: &MessageFacts, person: &PersonFacts) -> Verdict {
    let notified = notify(message, person);
    if !notified.yes {
        return notified;
    }
    if has_seen(message.message_id, person.seen_up_to, person.last_posted) {
        return no(
            "D4",
            SkipReason::Seen,
            "the recipient saw the message in the app within the window",
        );
    }
    if person.muted_conversation && person.kind == PersonKind::User {
        return no(
            "A4",
            SkipReason::Muted,
            "the recipient muted the conversation",
        );
    }
    let prefs = &person.preferences;
    let unsubscribed = match person.kind {
        PersonKind::Customer => person.muted_conversation,
        _ => match message.kind() {
            MessageKind::FromCustomer => !prefs.email_customer_messages,
            MessageKind::ToCustomer => !prefs.email_replies,
            MessageKind::Internal => !prefs.email_internal,
        },
    };
    if unsubscribed {
        return no(
            "unsubscribe",
            SkipReason::Unsubscribed,
            "the recipient unsubscribed from this kind of email",
        );
    }
    if !person.has_email {
        return no(
            "address",
            SkipReason::NoAddress,
            "the recipient has no email address",
        );
    }
    if person.suppressed {
        return no(
            "bounce",
            SkipReason::Suppressed,
            "the recipient's address bounced and is suppressed until reset",
        );
    }
    // A1 and A2 together: held until the later of the two ends, under its rule.
    let paused = person.held_until.map(|until| Verdict {
        yes: false,
        rule: "A1",
        detail: match &person.held_local {
            Some(local) => format!(
                "held: do not disturb until {local} ({})",
                until.format("%Y-%m-%d %H:%M UTC")
            ),
            None => format!(
                "held: do not disturb until {}",
                until.format("%Y-%m-%d %H:%M UTC")
            ),
        },
        reason: None,
        held_until: Some(until),
    });
    let off_hours = person.off_hours.as_ref().map(|off| Verdict {
        yes: false,
        rule: "A2",
        detail: format!(
            "held: outside working hours until {} ({})",
            off.local,
            off.until.format("%Y-%m-%d %H:%M UTC")
        ),
        reason: None,
        held_until: Some(off.until),
    });
    match (paused, off_hours) {
        (Some(a1), Some(a2)) if a2.held_until > a1.held_until => a2,
        (Some(held), _) | (None, Some(held)) => held,
        (None, None) => yes("D2", "not seen within the window"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PersonKind::*;

    fn message(author_kind: PersonKind, internal: bool) -> MessageFacts {
        MessageFacts {
            message_id: 100,
            conversation_id: 1,
            author_id: 1,
            author_kind,
            internal,
            deleted: false,
            customer_conversation: true,
        }
    }

    fn person(
        kind: PersonKind,
        preferences: Preferences,
        follows: bool,
        follows_project: bool,
    ) -> PersonFacts {
        PersonFacts {
            person_id: 2,
            kind,
            active: true,
            has_email: true,
            preferences,
            follows_conversation: follows,
            follows_project,
            participant: false,
            muted_conversation: false,
            seen_up_to: None,
            last_posted: None,
            suppressed: false,
            held_until: None,
            held_local: None,
            wait_for_quiet: None,
            off_hours: None,
        }
    }

    fn prefs(
        from_customers: FromCustomers,
        from_users: FromUsers,
        internal: bool,
        see: Visibility,
    ) -> Preferences {
        Preferences {
            see_conversations: see,
            from_customers,
            from_users,
            followed_internal: internal,
            ..Preferences::default()
        }
    }

    /// The SPEC's reference configurations × every message kind × both P1 permissions.
    /// In the `followed_projects` half the conversation's project is not followed, so P1 must
    /// win over every other preference.
    #[test]
    fn reference_configurations_table() {
        use FromCustomers as C;
        use FromUsers as U;
        let configs = [
            ("quiet", C::None, U::None, false),
            ("support lead", C::All, U::All, true),
            ("support team member", C::Mine, U::Followed, true),
        ];
        // (message kind, author, internal, conversation followed)
        let kinds = [
            ("customer message, followed", Customer, false, true),
            ("customer message, unfollowed", Customer, false, false),
            ("reply to customer, followed", User, false, true),
            ("reply to customer, unfollowed", User, false, false),
            ("internal, followed", User, true, true),
            ("internal, unfollowed", User, true, false),
            ("bot message", Bot, false, true),
        ];
        // Expected notifications with P1 = all projects, in `kinds` order.
        let expected = [
            ("quiet", [false, false, false, false, false, false, false]),
            ("support lead", [true, true, true, true, true, false, true]),
            (
                "support team member",
                [true, false, true, false, true, false, true],
            ),
        ];
        let mut cases = 0;
        for ((name, c, u, i), (expected_name, row)) in configs.iter().zip(expected) {
            assert_eq!(*name, expected_name);
            for ((kind, author, internal, follows), want) in kinds.iter().zip(row) {
                for see in [Visibility::AllProjects, Visibility::FollowedProjects] {
                    let m = message(*author, *internal);
                    let p = person(User, prefs(*c, *u, *i, see), *follows, false);
                    let want = want && see == Visibility::AllProjects;
                    let got = notify(&m, &p);
                    assert_eq!(got.yes, want, "{name} / {kind} / {see:?}: {got:?}");
                    assert_eq!(email(&m, &p).yes, want, "{name} / {kind} / {see:?} email");
                    if see == Visibility::FollowedProjects {
                        assert_eq!(got.rule, "P1");
                    }
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 42);
    }

    #[test]
    fn d3_author_is_never_notified() {
        let m = message(User, false);
        let mut p = person(
            User,
            prefs(
                FromCustomers::All,
                FromUsers::All,
                true,
                Visibility::AllProjects,
            ),
            true,
            true,
        );
        p.person_id = m.author_id;
        assert_eq!(notify(&m, &p).rule, "D3");
    }

    #[test]
    fn d5_customers_only_get_external_messages_they_follow() {
        let p = person(Customer, Preferences::default(), true, false);
        assert_eq!(notify(&message(User, true), &p).rule, "D5");
        assert!(notify(&message(User, false), &p).yes);
        let stranger = person(Customer, Preferences::default(), false, false);
        assert!(!notify(&message(User, false), &stranger).yes);
    }

    #[test]
    fn bots_and_deactivated_people_get_nothing() {
        let lead = prefs(
            FromCustomers::All,
            FromUsers::All,
            true,
            Visibility::AllProjects,
        );
        assert_eq!(
            notify(&message(Customer, false), &person(Bot, lead, true, true)).rule,
            "bot"
        );
        let mut gone = person(User, lead, true, true);
        gone.active = false;
        assert_eq!(
            notify(&message(Customer, false), &gone).reason,
            Some(SkipReason::Deactivated)
        );
    }

    #[test]
    fn p1_participants_may_see_unfollowed_projects() {
        let member = prefs(
            FromCustomers::Mine,
            FromUsers::Followed,
            true,
            Visibility::FollowedProjects,
        );
        let mut p = person(User, member, true, false);
        assert_eq!(notify(&message(Customer, false), &p).rule, "P1");
        p.participant = true;
        assert!(notify(&message(Customer, false), &p).yes);
        p.participant = false;
        p.follows_project = true;
        assert!(notify(&message(Customer, false), &p).yes);
    }

    #[test]
    fn p2_hides_customer_conversations_only() {
        let mut lead = prefs(
            FromCustomers::All,
            FromUsers::All,
            true,
            Visibility::AllProjects,
        );
        lead.show_customer_conversations = false;
        let p = person(User, lead, true, true);
        assert_eq!(notify(&message(Customer, false), &p).rule, "P2");
        let mut internal_only = message(User, true);
        internal_only.customer_conversation = false;
        assert!(notify(&internal_only, &p).yes);
    }

    #[test]
    fn d4_seen_and_unsubscribe_stop_the_email_not_the_notification() {
        let m = message(Customer, false);
        let mut p = person(User, Preferences::default(), true, true);
        assert_eq!(email(&m, &p).rule, "D2");
        for (seen_up_to, last_posted) in [(Some(100), None), (Some(101), None), (None, Some(101))] {
            p.seen_up_to = seen_up_to;
            p.last_posted = last_posted;
            assert_eq!(email(&m, &p).reason, Some(SkipReason::Seen));
            assert!(notify(&m, &p).yes);
        }
        p.seen_up_to = Some(99);
        p.last_posted = Some(100);
        assert!(
            email(&m, &p).yes,
            "an earlier cursor or the message itself is not a later post"
        );
        p.preferences.email_customer_messages = false;
        assert_eq!(email(&m, &p).reason, Some(SkipReason::Unsubscribed));
        p.preferences.email_customer_messages = true;
        p.suppressed = true;
        assert_eq!(email(&m, &p).reason, Some(SkipReason::Suppressed));
        let mut customer = person(Customer, Preferences::default(), true, false);
        customer.muted_conversation = true;
        assert_eq!(
            email(&message(User, false), &customer).reason,
            Some(SkipReason::Unsubscribed)
        );
    }

    #[test]
    fn a1_a_pause_holds_what_would_be_sent_and_nothing_else() {
        let m = message(Customer, false);
        let mut p = person(User, Preferences::default(), true, true);
        let until = crate::clock::now() + chrono::Duration::hours(1);
        p.held_until = Some(until);
        let verdict = email(&m, &p);
        assert_eq!(
            (
                verdict.yes,
                verdict.rule,
                verdict.reason,
                verdict.held_until
            ),
            (false, "A1", None, Some(until))
        );
        assert!(verdict.detail.starts_with("held: do not disturb until "));
        // What would not be sent anyway is decided as before: seen, or muted.
        p.seen_up_to = Some(m.message_id);
        assert_eq!(email(&m, &p).reason, Some(SkipReason::Seen));
        assert!(notify(&m, &p).yes, "the badge still counts it");
    }

    #[test]
    fn a2_outside_working_hours_holds_until_the_next_start_and_the_later_hold_wins() {
        let m = message(Customer, false);
        let mut p = person(User, Preferences::default(), true, true);
        let now = crate::clock::now();
        let start = now + chrono::Duration::hours(10);
        p.off_hours = Some(OffHours {
            until: start,
            local: "Mon 2027-03-29 09:00 Europe/Berlin".into(),
        });
        let verdict = email(&m, &p);
        assert_eq!(
            (
                verdict.yes,
                verdict.rule,
                verdict.reason,
                verdict.held_until
            ),
            (false, "A2", None, Some(start))
        );
        assert!(
            verdict.detail.starts_with(
                "held: outside working hours until Mon 2027-03-29 09:00 Europe/Berlin"
            ),
            "{}",
            verdict.detail
        );
        // A pause that ends before work starts: work's start holds it.
        p.held_until = Some(now + chrono::Duration::hours(1));
        assert_eq!(email(&m, &p).rule, "A2");
        // A pause that ends later: the pause holds it.
        let later = now + chrono::Duration::hours(20);
        p.held_until = Some(later);
        assert_eq!(
            (email(&m, &p).rule, email(&m, &p).held_until),
            ("A1", Some(later))
        );
        // Seen meanwhile: skipped as before.
        p.seen_up_to = Some(m.message_id);
        assert_eq!(email(&m, &p).reason, Some(SkipReason::Seen));
    }

    #[test]
    fn a3_waits_a_window_after_the_last_message_but_never_past_the_maximum() {
        let t0 = crate::clock::now();
        let s = std::time::Duration::from_secs;
        let at = |secs: i64| t0 + chrono::Duration::seconds(secs);
        // Due at t0, the last message at t0+30 s, a 60 s window: quiet at t0+90 s.
        assert_eq!(quiet_until(at(30), t0, s(60), s(600), at(40)), Some(at(90)));
        // Quiet already: it goes now.
        assert_eq!(quiet_until(at(30), t0, s(60), s(600), at(91)), None);
        // A chat that never ends goes at the maximum.
        assert_eq!(
            quiet_until(at(590), t0, s(60), s(600), at(595)),
            Some(at(600))
        );
        assert_eq!(quiet_until(at(700), t0, s(60), s(600), at(601)), None);
        let v = waiting_for_quiet(at(90));
        assert_eq!((v.yes, v.rule, v.reason), (false, "A3", None));
    }

    #[test]
    fn a4_a_user_who_muted_the_conversation_is_not_emailed() {
        let m = message(Customer, false);
        let mut p = person(User, Preferences::default(), true, true);
        assert!(email(&m, &p).yes);
        p.muted_conversation = true;
        let verdict = email(&m, &p);
        assert_eq!(
            (verdict.rule, verdict.reason),
            ("A4", Some(SkipReason::Muted))
        );
        assert!(notify(&m, &p).yes, "the badge still counts it");
    }

    #[test]
    fn d9_deleted_message_is_not_sent() {
        let mut m = message(Customer, false);
        m.deleted = true;
        let p = person(User, Preferences::default(), true, true);
        assert_eq!(email(&m, &p).reason, Some(SkipReason::Deleted));
    }
}
