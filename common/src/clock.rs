//! The one source of the current time in the code. Every lease, claim, due time, retry time
//! and token expiry is computed from [`now`], the application clock, and compared with it.
//! The database's `now()` stamps audit columns (`created_at`, `updated_at`, `received_at`,
//! `started_at`, …), and the windows measured on those columns (the purges, the inbound rate
//! limits, the automation loop cap) use the database's `now()` too, so both ends of each
//! comparison come from one clock. `clippy.toml` forbids reading the time any other way.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// Seconds the application clock runs ahead of (or, negative, behind) the system's.
static OFFSET: AtomicI64 = AtomicI64::new(0);

/// The current time: the system's, moved by [`shift`].
#[allow(clippy::disallowed_methods)]
pub fn now() -> DateTime<Utc> {
    let offset = OFFSET.load(Ordering::Relaxed);
    let system = Utc::now();
    if offset == 0 {
        return system;
    }
    system
        .checked_add_signed(chrono::TimeDelta::seconds(offset))
        .unwrap_or(system)
}

/// Moves the application clock by `seconds` from the system's (`TIDINGS_CLOCK_OFFSET`, set
/// once at start): drills and tests of a later or earlier time, with every deadline, due time
/// and working-hours judgement following it. The database's `now()` keeps the real time, so
/// audit columns stay true.
pub fn shift(seconds: i64) {
    OFFSET.store(seconds, Ordering::Relaxed);
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
