//! The one source of the current time in the code. Every lease, claim, due time, retry time
//! and token expiry is computed from [`now`], the application clock, and compared with it.
//! The database's `now()` stamps audit columns (`created_at`, `updated_at`, `received_at`,
//! `started_at`, …), and the windows measured on those columns (the purges, the inbound rate
//! limits, the automation loop cap) use the database's `now()` too, so both ends of each
//! comparison come from one clock. `clippy.toml` forbids reading the time any other way.

use chrono::{DateTime, Utc};

/// The current time.
#[allow(clippy::disallowed_methods)]
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// `now()` plus a standard duration, saturating instead of overflowing.
pub fn after(duration: std::time::Duration) -> DateTime<Utc> {
    now() + chrono_duration(duration)
}

/// `now()` minus a standard duration, saturating instead of overflowing.
pub fn before(duration: std::time::Duration) -> DateTime<Utc> {
    now() - chrono_duration(duration)
}

/// A standard duration as a chrono one; durations beyond chrono's range become its maximum.
pub fn chrono_duration(duration: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}
