//! The SMTP side of the mailer, and the only file that touches lettre: the pooled transport,
//! the slots that bound simultaneous transactions, and the classification of a send result.

use std::time::Duration;

use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tidings_common::Config;
use tokio::sync::Semaphore;

/// How one SMTP transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmtpOutcome {
    /// Accepted; the server's reply (`250 …`).
    Accepted(String),
    /// Refused for good (5xx): retrying cannot help.
    Refused(String),
    /// A temporary failure (4xx, a dropped connection, a timeout): try again later.
    Deferred(String),
}

/// The transport to the SMTP server and the slots bounding concurrent sends.
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// Bounds simultaneous SMTP transactions (lettre's pool only bounds idle connections).
    slots: Semaphore,
}

impl Smtp {
    /// Builds the transport from `TIDINGS_SMTP_URL`; fails naming the variable on a bad URL.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
            .map_err(|e| anyhow::anyhow!("TIDINGS_SMTP_URL: {e}"))?
            .pool_config(PoolConfig::new().max_size(config.smtp_concurrency as u32))
            .timeout(Some(Duration::from_secs(30)))
            .build();
        Ok(Smtp {
            transport,
            slots: Semaphore::new(config.smtp_concurrency),
        })
    }

    /// Sends one email once a slot is free, and says how it went.
    pub async fn send(&self, email: lettre::Message) -> SmtpOutcome {
        let _slot = match self.slots.acquire().await {
            Ok(slot) => slot,
            Err(e) => return SmtpOutcome::Deferred(e.to_string()),
        };
        match self.transport.send(email).await {
            Ok(response) => SmtpOutcome::Accepted(format!(
                "{} {}",
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            )),
            Err(e) if e.is_permanent() => SmtpOutcome::Refused(e.to_string()),
            Err(e) => SmtpOutcome::Deferred(e.to_string()),
        }
    }
}
