//! The api's database reads and writes that more than one route needs, each in one place:
//! route files call these and never each other.

pub mod conversation;
pub mod deliveries;
pub mod inbox;
pub mod members;
pub mod password_resets;
pub mod preferences;
pub mod seen;
pub mod visibility;
