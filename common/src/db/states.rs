//! The states and kinds stored as text columns, as Rust enums that map to them. No state
//! string is written by hand anywhere else: queries compare against these values, and a row
//! holding a value not listed here fails to load with an error naming the column's type.

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;
use serde::{Deserialize, Serialize};

/// Declares an enum stored as text: its variants and their column values.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            AsExpression, FromSqlRow, Serialize, Deserialize, utoipa::ToSchema,
        )]
        #[diesel(sql_type = Text)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] #[schema(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value stored in the column.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The variant stored as `value`, if any.
            pub fn parse(value: &str) -> Option<Self> {
                match value {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl ToSql<Text, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
            }
        }

        impl FromSql<Text, Pg> for $name {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
                $name::parse(&text).ok_or_else(|| {
                    format!("{:?} is not a {}", text, stringify!($name)).into()
                })
            }
        }
    };
}

text_enum! {
    /// Where an email to send stands, for a notification and for an outbox email alike:
    /// `pending → sending → sent | skipped | failed`, each step a conditional update.
    SendState {
        /// Waiting for its window to end (or for a retry tier).
        Pending => "pending",
        /// Claimed by a mailer; `claimed_at` is the lease.
        Sending => "sending",
        Sent => "sent",
        /// Not emailed, for the reason recorded beside it (seen, preference, coalesced, …).
        Skipped => "skipped",
        Failed => "failed",
    }
}

/// `notifications.state`.
pub type NotificationState = SendState;
/// `outbox_emails.state`.
pub type OutboxState = SendState;

text_enum! {
    /// Status of one email-log row (SPEC L1).
    LogStatus {
        Sent => "sent",
        Skipped => "skipped",
        /// A temporary failure; another attempt is scheduled.
        Deferred => "deferred",
        /// Waiting to go (its seen window, or a retry); never stored, read from the
        /// notification or outbox row itself (see `email_log::query`).
        Queued => "queued",
        Failed => "failed",
        /// Sent, then bounced back.
        Bounced => "bounced",
        /// Inbound: posted into an existing conversation.
        Threaded => "threaded",
        /// Inbound: started a new conversation.
        Created => "created",
        /// Inbound: automatic mail (auto-reply, bounce, list) recorded and dropped.
        Ignored => "ignored",
        /// Inbound: refused, with the reason beside it.
        Rejected => "rejected",
    }
}

text_enum! {
    /// Which way an email in the log went.
    Direction {
        Inbound => "inbound",
        Outbound => "outbound",
    }
}

text_enum! {
    /// Kind of person, stored in `people.kind`.
    PersonKind {
        User => "user",
        Customer => "customer",
        Bot => "bot",
    }
}

text_enum! {
    /// Why a notification was not emailed, as stored on it and in the email log. The rule
    /// that decided it is stored beside it.
    SkipReason {
        /// D3: nobody is notified about their own message.
        OwnMessage => "own message",
        Bot => "bot",
        /// D9: the recipient was deactivated.
        Deactivated => "deactivated",
        /// D9: the message was deleted (or edited down to nothing).
        Deleted => "deleted",
        /// D5: customers never get internal messages.
        InternalMessage => "internal message",
        /// F1, P3–P5: the recipient does not follow the conversation.
        NotFollowing => "not following",
        /// P1: the recipient may not see the conversation.
        NoAccess => "no access",
        /// P2–P5: a preference of the recipient turns it off.
        Preference => "preference",
        /// D4: seen in the app within the window.
        Seen => "seen",
        Unsubscribed => "unsubscribed",
        NoAddress => "no email address",
        /// The address bounced and is suppressed.
        Suppressed => "suppressed",
        /// It went out inside the email of another notification.
        Coalesced => "coalesced",
        /// A4: the recipient muted the conversation.
        Muted => "muted",
    }
}

impl Direction {
    /// Reads the short forms users type (`in`, `out`) as well as the stored names.
    pub fn parse_loose(value: &str) -> Option<Self> {
        match value {
            "in" => Some(Direction::Inbound),
            "out" => Some(Direction::Outbound),
            other => Direction::parse(other),
        }
    }
}

impl From<SendState> for LogStatus {
    /// The log status of an email whose send attempt left it in `state` (`pending` after an
    /// attempt means it was deferred).
    fn from(state: SendState) -> Self {
        match state {
            SendState::Sent => LogStatus::Sent,
            SendState::Skipped => LogStatus::Skipped,
            SendState::Failed => LogStatus::Failed,
            SendState::Pending | SendState::Sending => LogStatus::Deferred,
        }
    }
}

/// Filters selecting the rows a mailer may claim: `pending`, or `sending` under a lease
/// that lapsed before `lapsed`. The same rule for notifications and outbox emails, used by
/// the claims and the sweeps alike.
pub mod claimable {
    use chrono::{DateTime, Utc};
    use diesel::pg::Pg;
    use diesel::prelude::*;
    use diesel::sql_types::{Bool, Nullable};

    use super::SendState;
    use crate::db::schema::{notifications, outbox_emails};

    /// Claims after which a row still `sending` under a lapsed lease is given up as failed: a
    /// row whose processing stops its worker every time would otherwise be retried forever.
    pub const MAX_UNFINISHED_CLAIMS: i32 = 10;

    /// Why a row is given up.
    pub fn gave_up_reason() -> String {
        format!(
            "gave up after {MAX_UNFINISHED_CLAIMS} claims that never finished (its worker stopped each time)"
        )
    }

    /// Rows to give up: `sending` under a lapsed lease, claimed too often. For statements
    /// that name their rows by id; see [`notifications_by_id`].
    pub fn poisoned_notifications(
        lapsed: DateTime<Utc>,
    ) -> Box<dyn BoxableExpression<notifications::table, Pg, SqlType = Bool>> {
        use notifications::{attempts, claimed_at, state};
        Box::new(
            state
                .eq(SendState::Sending)
                .and(claimed_at.lt(lapsed).assume_not_null())
                .and(attempts.ge(MAX_UNFINISHED_CLAIMS)),
        )
    }

    /// Outbox rows to give up, as [`poisoned_notifications`].
    pub fn poisoned_outbox_emails(
        lapsed: DateTime<Utc>,
    ) -> Box<dyn BoxableExpression<outbox_emails::table, Pg, SqlType = Bool>> {
        use outbox_emails::{attempts, claimed_at, state};
        Box::new(
            state
                .eq(SendState::Sending)
                .and(claimed_at.lt(lapsed).assume_not_null())
                .and(attempts.ge(MAX_UNFINISHED_CLAIMS)),
        )
    }

    /// [`notifications`], for statements that name their rows by id (a claim). It does not
    /// name `is_open`, so the planner cannot pick the partial index of open notifications
    /// (`notifications_open`, whose predicate is `is_open`) and reads the rows by their key.
    /// Given that index, it may pick it when the statistics were taken while little was open
    /// (they then estimate it at one row), and read every open notification for each claim:
    /// during a backlog of 20,000 that was 7 ms per claim of 64 instead of 1, growing with the
    /// backlog.
    pub fn notifications_by_id(
        lapsed: DateTime<Utc>,
    ) -> Box<dyn BoxableExpression<notifications::table, Pg, SqlType = Nullable<Bool>>> {
        use notifications::{claimed_at, state};
        Box::new(
            state
                .eq(SendState::Pending)
                .nullable()
                .or(state.eq(SendState::Sending).and(claimed_at.lt(lapsed))),
        )
    }

    /// Notifications a worker may claim: [`notifications_by_id`], and open (`is_open`, which
    /// both are), so the sweep reads them through `notifications_open`.
    pub fn notifications(
        lapsed: DateTime<Utc>,
    ) -> Box<dyn BoxableExpression<notifications::table, Pg, SqlType = Nullable<Bool>>> {
        Box::new(
            notifications::is_open
                .nullable()
                .and(notifications_by_id(lapsed)),
        )
    }

    /// Notifications claimed (`sending`) before `lapsed` and never finished: their worker died
    /// or stalled. The sweep hands them on; `tidings status` counts them as stuck claims (read
    /// through `notifications_open`).
    pub fn lapsed_notification_claims(
        lapsed: DateTime<Utc>,
    ) -> Box<dyn BoxableExpression<notifications::table, Pg, SqlType = Nullable<Bool>>> {
        use notifications::{claimed_at, is_open, state};
        Box::new(
            is_open
                .and(state.eq(SendState::Sending))
                .nullable()
                .and(claimed_at.lt(lapsed)),
        )
    }

    /// Outbox emails a worker may claim, as [`notifications`].
    pub fn outbox_emails(
        lapsed: DateTime<Utc>,
    ) -> Box<dyn BoxableExpression<outbox_emails::table, Pg, SqlType = Nullable<Bool>>> {
        Box::new(
            outbox_emails::state
                .eq(SendState::Pending)
                .nullable()
                .or(lapsed_outbox_claims(lapsed)),
        )
    }

    /// Outbox emails claimed before `lapsed` and never finished, as
    /// [`lapsed_notification_claims`].
    pub fn lapsed_outbox_claims(
        lapsed: DateTime<Utc>,
    ) -> Box<dyn BoxableExpression<outbox_emails::table, Pg, SqlType = Nullable<Bool>>> {
        use outbox_emails::{claimed_at, state};
        Box::new(state.eq(SendState::Sending).and(claimed_at.lt(lapsed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_through_its_text() {
        for s in SendState::ALL {
            assert_eq!(SendState::parse(s.as_str()), Some(*s));
        }
        for s in LogStatus::ALL {
            assert_eq!(LogStatus::parse(s.as_str()), Some(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(Direction::parse_loose("in"), Some(Direction::Inbound));
        assert_eq!(Direction::parse_loose("sideways"), None);
        assert_eq!(PersonKind::parse("robot"), None);
    }
}
