//! The error type of the shared library, and whether a failure is worth retrying.

use crate::templates::TemplateError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("database connection: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker refused the publish to {exchange} ({routing_key}): {reason}")]
    PublishRefused {
        exchange: String,
        routing_key: String,
        reason: String,
    },
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("building email: {0}")]
    EmailBuild(String),
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("payload: {0}")]
    Payload(#[from] serde_json::Error),
    #[error("background task: {0}")]
    Task(String),
}

impl Error {
    /// True when the same operation may succeed later (a service down or overloaded);
    /// false when retrying cannot help (bad data, a bug, a refused address).
    pub fn is_transient(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error as Diesel};
        match self {
            Error::Database(Diesel::DatabaseError(kind, _)) => matches!(
                kind,
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::SerializationFailure
            ),
            Error::Database(Diesel::BrokenTransactionManager) => true,
            Error::Database(_) => false,
            Error::Pool(_) | Error::Broker(_) | Error::PublishRefused { .. } | Error::Task(_) => {
                true
            }
            Error::Template(_) => true,
            Error::Smtp(e) => !e.is_permanent(),
            Error::EmailBuild(_) | Error::Payload(_) => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
