//! Shared library of every Tidings role: configuration, database, broker topology and
//! publishing, delivery rules, outbound mail building and templates.

/// The authentication crate, for the roles that hold its resolver.
pub use mail_auth;
pub mod amqp;
pub mod announce;
pub mod attachments;
pub mod attention;
pub mod audience;
pub mod clock;
pub mod config;
pub mod db;
pub mod dkim;
pub mod dns;
pub mod error;
pub mod events;
pub mod inbound;
pub mod live;
pub mod mail;
pub mod observe;
pub mod outbox;
pub mod people_first;
pub mod posting;
pub mod rules;
pub mod secret;
pub mod status;
pub mod sweep;
pub mod templates;
pub mod tls;

pub use config::Config;
pub use error::{Error, Result};

/// Name of the template used for message notifications.
pub const NOTIFICATION_TEMPLATE: &str = "notification";

/// Templates the default locale must have: message notifications and the system
/// notifications (SPEC M4, E1–E3).
pub const REQUIRED_TEMPLATES: [&str; 7] = [
    NOTIFICATION_TEMPLATE,
    "welcome",
    "password_reset",
    "invitation",
    "assignment",
    "unassignment",
    "project_member_added",
];
