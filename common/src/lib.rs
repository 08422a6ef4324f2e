//! Shared library of every Tidings role: configuration, database, broker topology and
//! publishing, delivery rules, outbound mail building and templates.

pub mod amqp;
pub mod audience;
pub mod config;
pub mod db;
pub mod error;
pub mod inbound;
pub mod mail;
pub mod posting;
pub mod rules;
pub mod templates;

pub use config::Config;
pub use error::{Error, Result};

/// Name of the template used for message notifications.
pub const NOTIFICATION_TEMPLATE: &str = "notification";
