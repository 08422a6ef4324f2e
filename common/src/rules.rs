//! Who is notified about a message, and whether a notification has been seen: pure functions
//! over facts read from the database.

use crate::db::models::PersonKind;

/// A person who follows the conversation (SPEC F1), with their kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub person_id: i64,
    pub kind: PersonKind,
}

/// Recipients of a new message among the conversation's followers: never the author (D3),
/// never a bot, and no customer for an internal message (D5). Sorted and without repeats.
pub fn recipients(candidates: &[Candidate], author_id: i64, internal: bool) -> Vec<i64> {
    let mut ids: Vec<i64> = candidates
        .iter()
        .filter(|c| c.person_id != author_id)
        .filter(|c| match c.kind {
            PersonKind::Bot => false,
            PersonKind::Customer => !internal,
            PersonKind::User => true,
        })
        .map(|c| c.person_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Why a notification's email was not sent; the text is what the log and API show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The recipient saw the message in the app within the window (D2, D4).
    Seen,
    /// The recipient wrote the message (D3).
    OwnMessage,
    /// A customer and an internal message (D5).
    InternalMessage,
    /// The message was deleted during the window (D9).
    Deleted,
    /// The recipient has no email address.
    NoAddress,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Seen => "seen",
            SkipReason::OwnMessage => "own message",
            SkipReason::InternalMessage => "internal message",
            SkipReason::Deleted => "deleted",
            SkipReason::NoAddress => "no email address",
        }
    }
}

/// What the mailer knows at send time about one notification.
#[derive(Debug, Clone)]
pub struct SendTimeFacts {
    pub recipient_id: i64,
    pub recipient_kind: PersonKind,
    pub recipient_has_email: bool,
    pub author_id: i64,
    pub message_id: i64,
    pub internal: bool,
    pub deleted: bool,
    /// The recipient's read cursor in the conversation, if any.
    pub seen_up_to: Option<i64>,
    /// The newest message the recipient posted in the conversation, if any.
    pub last_posted: Option<i64>,
}

/// True when the recipient has seen the message: their cursor is at or past it, or they
/// posted later in the same conversation (D4).
pub fn has_seen(message_id: i64, seen_up_to: Option<i64>, last_posted: Option<i64>) -> bool {
    seen_up_to.is_some_and(|id| id >= message_id) || last_posted.is_some_and(|id| id > message_id)
}

/// Decides at send time whether the email goes out; `None` means send.
pub fn skip_reason(facts: &SendTimeFacts) -> Option<SkipReason> {
    if facts.deleted {
        Some(SkipReason::Deleted)
    } else if facts.recipient_id == facts.author_id {
        Some(SkipReason::OwnMessage)
    } else if facts.internal && facts.recipient_kind != PersonKind::User {
        Some(SkipReason::InternalMessage)
    } else if has_seen(facts.message_id, facts.seen_up_to, facts.last_posted) {
        Some(SkipReason::Seen)
    } else if !facts.recipient_has_email {
        Some(SkipReason::NoAddress)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(person_id: i64, kind: PersonKind) -> Candidate {
        Candidate { person_id, kind }
    }

    #[test]
    fn d3_author_is_never_a_recipient() {
        let people = [c(1, PersonKind::User), c(2, PersonKind::User)];
        assert_eq!(recipients(&people, 1, false), vec![2]);
        assert_eq!(recipients(&people, 1, true), vec![2]);
    }

    #[test]
    fn d5_customers_get_external_messages_only() {
        let people = [
            c(1, PersonKind::User),
            c(2, PersonKind::Customer),
            c(3, PersonKind::User),
        ];
        assert_eq!(recipients(&people, 3, true), vec![1]);
        assert_eq!(recipients(&people, 3, false), vec![1, 2]);
    }

    #[test]
    fn bots_never_receive_and_duplicates_collapse() {
        let people = [
            c(5, PersonKind::Bot),
            c(4, PersonKind::User),
            c(4, PersonKind::User),
            c(2, PersonKind::Customer),
        ];
        assert_eq!(recipients(&people, 9, false), vec![2, 4]);
    }

    fn facts() -> SendTimeFacts {
        SendTimeFacts {
            recipient_id: 2,
            recipient_kind: PersonKind::User,
            recipient_has_email: true,
            author_id: 1,
            message_id: 10,
            internal: false,
            deleted: false,
            seen_up_to: None,
            last_posted: None,
        }
    }

    #[test]
    fn d2_unseen_message_is_sent() {
        assert_eq!(skip_reason(&facts()), None);
        let earlier_cursor = SendTimeFacts {
            seen_up_to: Some(9),
            last_posted: Some(10),
            ..facts()
        };
        assert_eq!(skip_reason(&earlier_cursor), None);
    }

    #[test]
    fn d4_cursor_at_or_past_or_a_later_post_counts_as_seen() {
        for (seen_up_to, last_posted) in [(Some(10), None), (Some(11), None), (None, Some(11))] {
            let f = SendTimeFacts {
                seen_up_to,
                last_posted,
                ..facts()
            };
            assert_eq!(skip_reason(&f), Some(SkipReason::Seen));
        }
    }

    #[test]
    fn send_time_rechecks() {
        assert_eq!(
            skip_reason(&SendTimeFacts {
                deleted: true,
                ..facts()
            }),
            Some(SkipReason::Deleted)
        );
        assert_eq!(
            skip_reason(&SendTimeFacts {
                author_id: 2,
                ..facts()
            }),
            Some(SkipReason::OwnMessage)
        );
        let customer_internal = SendTimeFacts {
            recipient_kind: PersonKind::Customer,
            internal: true,
            ..facts()
        };
        assert_eq!(
            skip_reason(&customer_internal),
            Some(SkipReason::InternalMessage)
        );
        assert_eq!(
            skip_reason(&SendTimeFacts {
                recipient_has_email: false,
                ..facts()
            }),
            Some(SkipReason::NoAddress)
        );
    }
}
