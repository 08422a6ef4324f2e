//! Property tests of the delivery rules over random organisations: random people (users,
//! customers, bots) with random preferences and activity, random follows and participation,
//! random conversations and messages. Whatever the organisation:
//! - nobody is notified or emailed about their own message (D3);
//! - no customer is notified or emailed about an internal message (D5);
//! - nobody is notified or emailed about a conversation they may not see (P1; for a customer,
//!   one they do not follow);
//! - an email is only ever sent for a notification (D1, D2);
//! - bots and deactivated people receive nothing.

use proptest::prelude::*;
use tidings_common::db::models::PersonKind;
use tidings_common::rules::{
    self, FromCustomers, FromUsers, MessageFacts, PersonFacts, Preferences, Visibility,
};

fn kind() -> impl Strategy<Value = PersonKind> {
    prop_oneof![
        6 => Just(PersonKind::User),
        3 => Just(PersonKind::Customer),
        1 => Just(PersonKind::Bot),
    ]
}

fn preferences() -> impl Strategy<Value = Preferences> {
    (
        prop_oneof![
            Just(Visibility::AllProjects),
            Just(Visibility::FollowedProjects)
        ],
        any::<bool>(),
        prop_oneof![
            Just(FromCustomers::All),
            Just(FromCustomers::Mine),
            Just(FromCustomers::None)
        ],
        prop_oneof![
            Just(FromUsers::All),
            Just(FromUsers::Followed),
            Just(FromUsers::None)
        ],
        any::<[bool; 4]>(),
    )
        .prop_map(
            |(see, show, from_customers, from_users, flags)| Preferences {
                see_conversations: see,
                show_customer_conversations: show,
                from_customers,
                from_users,
                followed_internal: flags[0],
                email_customer_messages: flags[1],
                email_replies: flags[2],
                email_internal: flags[3],
            },
        )
}

/// One person's relation to the conversation, before consistency rules are applied.
type RawPerson = (PersonKind, Preferences, [bool; 7], Option<i64>, Option<i64>);

fn person() -> impl Strategy<Value = RawPerson> {
    (
        kind(),
        preferences(),
        any::<[bool; 7]>(),
        proptest::option::of(0i64..20),
        proptest::option::of(0i64..20),
    )
}

/// An organisation around one conversation and one new message in it.
#[derive(Debug)]
struct Organisation {
    message: MessageFacts,
    people: Vec<PersonFacts>,
}

fn organisation() -> impl Strategy<Value = Organisation> {
    (
        proptest::collection::vec(person(), 1..16),
        any::<usize>(),
        any::<[bool; 2]>(),
        0i64..20,
    )
        .prop_map(|(raw, author_pick, [internal, deleted], message_id)| {
            let people: Vec<PersonFacts> = raw
                .into_iter()
                .enumerate()
                .map(|(i, (kind, preferences, flags, seen_up_to, last_posted))| {
                    let [
                        active,
                        has_email,
                        follows_item,
                        follows_project,
                        participant,
                        muted,
                        _,
                    ] = flags;
                    PersonFacts {
                        person_id: i as i64 + 1,
                        kind,
                        active: active || i % 3 != 0,
                        has_email: has_email || kind == PersonKind::User,
                        preferences,
                        // F1: a participant follows the conversation.
                        follows_conversation: follows_item || participant,
                        follows_project: follows_project && kind == PersonKind::User,
                        participant,
                        muted_conversation: muted && kind == PersonKind::Customer,
                        seen_up_to,
                        last_posted,
                        suppressed: muted && kind == PersonKind::User,
                        held_until: None,
                        held_local: None,
                        wait_for_quiet: None,
                        off_hours: None,
                    }
                })
                .collect();
            let author = &people[author_pick % people.len()];
            let customer_conversation = people
                .iter()
                .any(|p| p.kind == PersonKind::Customer && p.follows_conversation);
            Organisation {
                message: MessageFacts {
                    message_id,
                    conversation_id: 1,
                    author_id: author.person_id,
                    author_kind: author.kind,
                    // Customers cannot post internal messages.
                    internal: internal && author.kind != PersonKind::Customer,
                    deleted,
                    customer_conversation,
                },
                people,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn nobody_receives_what_they_must_not(org in organisation()) {
        let m = &org.message;
        for p in &org.people {
            let notified = rules::notify(m, p);
            let emailed = rules::email(m, p);
            let receives = notified.yes || emailed.yes;
            if p.person_id == m.author_id {
                prop_assert!(!receives, "D3: author received own message: {notified:?}");
            }
            if p.kind == PersonKind::Customer {
                if m.internal {
                    prop_assert!(!receives, "D5: customer received an internal message");
                }
                if !p.follows_conversation {
                    prop_assert!(!receives, "customer received a conversation they do not follow");
                }
            }
            if p.kind == PersonKind::User && !rules::may_see(p) {
                prop_assert!(!receives, "P1: user received a conversation they may not see");
            }
            if p.kind == PersonKind::Bot || !p.active || m.deleted {
                prop_assert!(!receives, "bot, deactivated person or deleted message");
            }
            if emailed.yes {
                prop_assert!(notified.yes, "an email without a notification");
                prop_assert!(!rules::has_seen(m.message_id, p.seen_up_to, p.last_posted), "D4: emailed a seen message");
            }
            if !notified.yes {
                prop_assert_eq!(emailed.rule, notified.rule, "the email verdict names the same rule");
            }
        }
    }
}
