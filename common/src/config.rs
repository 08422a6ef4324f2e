//! Configuration, read once at start from environment variables.
//!
//! Every variable has a default suited to a single development machine. A value that cannot be
//! parsed stops the start with an error naming the variable.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TIDINGS_DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/tidings` | PostgreSQL connection URL |
//! | `TIDINGS_AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672/%2f` | RabbitMQ connection URL |
//! | `TIDINGS_AMQP_CA` | unset | PEM file of the CA certificates that sign the broker's certificate, for `amqps://` (trusted besides the system's roots) |
//! | `TIDINGS_AMQP_CLIENT_CERT`, `TIDINGS_AMQP_CLIENT_KEY` | unset | PEM client certificate and key for a broker that asks for one |
//! | `TIDINGS_SMTP_URL` | `smtp://127.0.0.1:2525` | outbound SMTP server (`smtp://`, `smtps://`, `smtp://…?tls=required`) |
//! | `TIDINGS_SMTP_CA` | unset | PEM file of CA certificates trusted for the outbound SMTP server's TLS, besides the public web roots |
//! | `TIDINGS_HTTP_ADDR` | `127.0.0.1:8080` | address the api role listens on |
//! | `TIDINGS_HTTP_MAX_CONNECTIONS` | `1024` | open HTTP connections at once |
//! | `TIDINGS_HTTP_HEADER_TIMEOUT` | `10s` | headers must arrive within this; idle keep-alive connections close after it |
//! | `TIDINGS_HTTP_REQUEST_TIMEOUT` | `30s` | longest request (503 beyond) |
//! | `TIDINGS_PUBLIC_URL` | `http://<TIDINGS_HTTP_ADDR>` | base URL of the api as recipients and browsers reach it (links; the only origin whose pages may write with the session cookie; `https://` gives the `__Host-` cookie) |
//! | `TIDINGS_POST_RATE` | `60/1m` | most messages one person may post (messenger, or the API on their behalf) in a window; 429 with `Retry-After` beyond |
//! | `TIDINGS_READ_BUDGET` | `1048576` | most bytes of message text one conversation read answers (64 KiB to 64 MiB); longer bodies come truncated and are fetched whole on demand |
//! | `TIDINGS_API_TOKEN` | `tidings-dev-token` | bearer token every API call must carry |
//! | `TIDINGS_SEEN_WINDOW` | `60s` | how long a notification waits for the recipient to see it before it is emailed |
//! | `TIDINGS_WAIT_FOR_QUIET` | `no` | `yes`: by default an unseen message's email waits until its conversation has been quiet for the seen window (A3); each person may choose otherwise |
//! | `TIDINGS_QUIET_MAX` | `10m` | the longest an email waits for its conversation to go quiet, counted from when it fell due |
//! | `TIDINGS_CLOCK_OFFSET` | `0` | whole seconds added to the application clock (drills and tests of another time); the same in every process |
//! | `TIDINGS_REPLY_DOMAIN` | `reply.tidings.localhost` | domain of reply addresses and outbound Message-IDs |
//! | `TIDINGS_TOKEN_SECRET` | `tidings-dev-secret` | HMAC secret signing reply and bounce addresses |
//! | `TIDINGS_ALLOW_DEV_SECRETS` | `no` | `yes`: listen beyond loopback even with a development secret |
//! | `TIDINGS_QUEUE_TYPE` | `quorum` | `quorum` or `classic` RabbitMQ queues |
//! | `TIDINGS_QUEUE_PREFIX` | `tidings` | prefix of every exchange and queue name |
//! | `TIDINGS_MAIL_FROM` | `Tidings <notifications@tidings.localhost>` | From of outbound notification mail |
//! | `TIDINGS_TEMPLATES_DIR` | `templates` | folder holding the handlebars templates |
//! | `TIDINGS_RETRY_TIERS` | `1m,5m,30m` | back-off delays after a temporary SMTP failure; after the last the send fails |
//! | `TIDINGS_SEND_LEASE` | `2m` | after this long a send claimed by a worker that vanished may be claimed again |
//! | `TIDINGS_SMTP_CONCURRENCY` | `32` | simultaneous SMTP transactions per mailer process |
//! | `TIDINGS_PREFETCH` | `256` | unacknowledged broker deliveries per consumer (dispatch handles up to 2 groups of 64 at once from the bulk lane and 1 from the interactive one, the mailer 4) |
//! | `TIDINGS_DB_POOL_SIZE` | `10` | PostgreSQL connections per process |
//! | `TIDINGS_INBOUND_ADDR` | `127.0.0.1:2526` | address the inbound SMTP listener binds (the MX relay delivers here) |
//! | `TIDINGS_MAIL_MAX` | `36700160` | largest inbound message accepted, announced as SMTP `SIZE` (552 beyond); older name `TIDINGS_INBOUND_MAX_BYTES` |
//! | `TIDINGS_EMAIL_ATTACH_MAX` | `10485760` | most bytes of files attached to one notification email; the other files are links (0: links only) |
//! | `TIDINGS_FILE_LINK_TTL` | `30d` | how long a file link in a notification email opens its file (for its recipient only, no sign-in) |
//! | `TIDINGS_KEEP_SOURCE` | `16384` | most bytes of each sent email, and of each posted inbound email, kept for the log's raw view (0: none); mail set aside is kept whole |
//! | `TIDINGS_ATTACHMENT_MAX` | `26214400` | largest file kept from an inbound email or an upload; a larger one is named in a note of its message, not kept |
//! | `TIDINGS_INBOUND_TLS_CERT`, `TIDINGS_INBOUND_TLS_KEY` | unset | PEM certificate (chain) and key the listener offers with STARTTLS; read again when either file changes |
//! | `TIDINGS_INBOUND_REQUIRE_TLS` | `no` | `yes`: refuse MAIL until the client has started TLS (530) |
//! | `TIDINGS_INBOUND_MAX_SESSIONS` | `100` | concurrent SMTP sessions (421 beyond) |
//! | `TIDINGS_INBOUND_SESSION_TIMEOUT` | `10m` | longest SMTP session |
//! | `TIDINGS_INBOUND_MIN_RATE` | `1024` | bytes per second a message must average after 10 s |
//! | `TIDINGS_INBOUND_MEMORY` | `268435456` | bytes of all messages being received at once (452 beyond) |
//! | `TIDINGS_INBOUND_AUTHSERV_ID` | unset | the relay's authserv-id; only its topmost `Authentication-Results` is read |
//! | `TIDINGS_INBOUND_VERIFY` | `off` | `on`: check DKIM, SPF and DMARC of inbound mail in-process when the relay gives no verdict |
//! | `TIDINGS_DKIM_KEYS` | unset | `selector:path` pairs (PEM private keys, RSA or Ed25519); each outbound email is signed with every key |
//! | `TIDINGS_DKIM_DOMAIN` | the domain of `TIDINGS_MAIL_FROM` | the DKIM signing domain (`d=`) |
//! | `TIDINGS_DNS_SERVER` | the system's | resolver (`IP[:PORT]`) for inbound checks and `tidings check dns` |
//! | `TIDINGS_INBOUND_MAILBOXES` | `support` | local parts at the reply domain that accept new conversations |
//! | `TIDINGS_INBOUND_PROJECT` | `Support` | name of the project a customer's new email becomes a ticket in (created by `tidings migrate`) |
//! | `TIDINGS_INBOUND_RATE` | `10/10m` | most posts per sender and per conversation in a window; beyond it mail is logged, not posted |
//! | `TIDINGS_SWEEP_INTERVAL` | `15s` | how often dispatch republishes messages whose event was not confirmed |
//! | `TIDINGS_DEFAULT_LOCALE` | `en` | locale of emails to people without one, and the fallback of every other |
//! | `TIDINGS_TEMPLATES_RELOAD` | `2s` | how often running roles look for edited template files |
//! | `TIDINGS_AUTOMATION_LIMITS` | `3/10m,20/24h` | most runs of one automation per item and recipient in each window (loop cap) |
//! | `TIDINGS_ATTACHMENT_GRACE` | `24h` | how long a file no message shows any more (its message deleted, its post never committed) is kept before `purge_log` removes it |
//! | `TIDINGS_LOG_RETENTION` | `72h` | age after which the scheduler purges email log rows |
//! | `TIDINGS_THREADING_RETENTION` | `365d` | lifetime of reply addresses and stored Message-IDs of received mail |
//! | `TIDINGS_SCHEDULE_PURGE_LOG` | `0 */5 * * * *` | cron (with seconds) of the email log purge |
//! | `TIDINGS_SCHEDULE_EXPIRE_THREADING` | `0 30 3 * * *` | cron of expiring threading data past its lifetime |
//! | `TIDINGS_SCHEDULE_SWEEP` | `*/30 * * * * *` | cron of the sweep republishing stuck notifications, emails and events |
//!
//! Durations are written `1500ms`, `90s`, `5m`, `1h`, `7d`, or a bare number of seconds. Cron
//! expressions have six fields, seconds first (`sec min hour day-of-month month day-of-week`).

use std::net::SocketAddr;
use std::time::Duration;

use crate::secret::Secret;

/// A configuration value that could not be used; names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {reason} (got {value:?})")]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub reason: String,
}

/// Kind of RabbitMQ queue every Tidings queue is declared as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated, at-least-once dead-lettering; the default.
    Quorum,
    /// Single-node; faster, but dead-lettering out of the delay is at-most-once.
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// Every setting. Secrets (the API token, the token secret, and the URLs' passwords) print
/// as a mask: the `Debug` of a configuration shows no secret.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Secret<String>,
    /// One broker node's URL, or a comma-separated list of a cluster's.
    pub amqp_url: Secret<String>,
    /// How `amqps://` nodes are verified, and the client certificate if any.
    pub amqp_tls: crate::tls::AmqpTls,
    pub smtp_url: Secret<String>,
    /// `TIDINGS_SMTP_CA`: CA certificates trusted for the SMTP server, besides the web roots.
    pub smtp_ca: Option<std::path::PathBuf>,
    pub http_addr: SocketAddr,
    /// Where the process serves `/metrics`, `/livez` and `/readyz` (`TIDINGS_METRICS_ADDR`);
    /// `None` (unset or empty) serves none.
    pub metrics_addr: Option<SocketAddr>,
    /// Bounds of the HTTP listener.
    pub http_limits: HttpLimits,
    /// Base URL of the api as email recipients reach it, without a trailing slash.
    pub public_url: String,
    /// Bearer token every API request must present.
    pub api_token: Secret<String>,
    /// Time a notification waits for the recipient to see it (SPEC D2).
    pub seen_window: Duration,
    /// A3: whether emails wait for their conversation to go quiet, for people who did not
    /// choose (`TIDINGS_WAIT_FOR_QUIET`).
    pub wait_for_quiet: bool,
    /// A3: the longest such a wait, from when the email fell due (`TIDINGS_QUIET_MAX`).
    pub quiet_max: Duration,
    /// Seconds added to the system time by the application clock (`TIDINGS_CLOCK_OFFSET`,
    /// default 0): for drills and tests of what happens at a later or earlier time, such as a
    /// daylight-saving change in someone's working hours. Every process of a deployment must
    /// have the same value.
    pub clock_offset: i64,
    pub reply_domain: String,
    /// Secret for reply-token HMACs; rotating it invalidates outstanding reply addresses.
    pub token_secret: Secret<Vec<u8>>,
    pub queue_type: QueueType,
    /// Prefix of every exchange and queue, so several deployments (or tests) share one broker.
    pub queue_prefix: String,
    pub mail_from: String,
    pub templates_dir: String,
    /// Delays before each retry of a temporarily failed send.
    pub retry_tiers: Vec<Duration>,
    /// How long a claimed send belongs to its worker before another may take it over.
    pub send_lease: Duration,
    pub smtp_concurrency: usize,
    pub prefetch: u16,
    pub db_pool_size: u32,
    pub sweep_interval: Duration,
    pub inbound_addr: SocketAddr,
    /// `TIDINGS_MAIL_MAX`: the largest inbound message.
    pub inbound_max_bytes: usize,
    /// `TIDINGS_ATTACHMENT_MAX`: the largest file kept (inbound or uploaded).
    pub attachment_max: usize,
    /// `TIDINGS_EMAIL_ATTACH_MAX`: most bytes of files attached to one notification email;
    /// the others are linked.
    pub email_attach_max: usize,
    /// `TIDINGS_FILE_LINK_TTL`: how long a file link in an email opens its file.
    pub file_link_ttl: Duration,
    /// `TIDINGS_KEEP_SOURCE`: most bytes of each sent email, and of each inbound email that
    /// was posted, kept for the email log's raw view (0: none). Mail set aside is kept whole.
    pub keep_source: usize,
    /// Bounds of the SMTP listener: concurrent sessions, the length of one session, the lowest
    /// average rate a client may send at (after a grace period), and the bytes of all messages
    /// being received at once.
    pub inbound_limits: InboundLimits,
    /// The certificate the listener offers with STARTTLS; `None` offers no STARTTLS.
    pub inbound_tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
    /// `TIDINGS_INBOUND_REQUIRE_TLS=yes`: MAIL is refused until the client started TLS.
    pub inbound_require_tls: bool,
    /// The relay's authserv-id: only `Authentication-Results` headers it wrote are read.
    pub inbound_authserv_id: Option<String>,
    /// DKIM signing of outbound mail and checking of inbound mail in-process.
    pub mail_auth: MailAuth,
    /// `TIDINGS_ALLOW_DEV_SECRETS=yes`: listen beyond loopback even with development secrets.
    pub allow_dev_secrets: bool,
    /// Local parts at the reply domain that accept mail starting a conversation.
    pub inbound_mailboxes: Vec<String>,
    /// The project a customer's first email becomes a ticket in (`TIDINGS_INBOUND_PROJECT`).
    pub inbound_project: String,
    /// Most inbound posts per sender and per conversation within the window (loop defence).
    pub inbound_rate: (u32, Duration),
    pub default_locale: String,
    pub templates_reload: Duration,
    /// Loop cap of automations: at most `count` runs per automation, item and recipient in
    /// each `window`.
    pub automation_limits: Vec<(u32, Duration)>,
    pub log_retention: Duration,
    /// Age at which the scheduler purges live events (`TIDINGS_EVENT_RETENTION`).
    pub event_retention: Duration,
    /// How long a file no message shows any more is kept before the scheduler removes it
    /// (`TIDINGS_ATTACHMENT_GRACE`).
    pub attachment_grace: Duration,
    /// How long a person token minted by `POST /people/{id}/sessions` is valid
    /// (`TIDINGS_SESSION_TTL`).
    pub session_ttl: Duration,
    pub threading_retention: Duration,
    pub schedule_purge_log: String,
    pub schedule_expire_threading: String,
    pub schedule_sweep: String,
}

pub const DEV_API_TOKEN: &str = "tidings-dev-token";
pub const DEV_TOKEN_SECRET: &str = "tidings-dev-secret";
/// Bounds of the HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// `TIDINGS_HTTP_MAX_CONNECTIONS`: open connections; more wait in the listen backlog.
    pub max_connections: usize,
    /// `TIDINGS_HTTP_HEADER_TIMEOUT`: a request's headers must arrive within this, and an idle
    /// keep-alive connection is closed after it.
    pub header_timeout: Duration,
    /// `TIDINGS_HTTP_REQUEST_TIMEOUT`: the longest a request may take, body included (503).
    pub request_timeout: Duration,
    /// `TIDINGS_POST_RATE`: most messages one person may post (through `/me`, or the API on
    /// their behalf) in a window; beyond it, 429 with `Retry-After`.
    pub post_rate: (u32, Duration),
    /// `TIDINGS_READ_BUDGET`: most bytes of message text one conversation read answers.
    pub read_budget: usize,
}

/// Bounds of the inbound SMTP listener (see [`Config::inbound_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundLimits {
    /// `TIDINGS_INBOUND_MAX_SESSIONS`: more concurrent sessions get 421 at once.
    pub max_sessions: usize,
    /// `TIDINGS_INBOUND_SESSION_TIMEOUT`: a session is closed (421) after this long.
    pub session_timeout: Duration,
    /// `TIDINGS_INBOUND_MIN_RATE`: bytes per second a client must average once the grace
    /// period is over, or be closed (421).
    pub min_rate: usize,
    /// `TIDINGS_INBOUND_MEMORY`: bytes of all messages being received at once; a message that
    /// would go over gets 452 (try again later).
    pub memory: usize,
}

/// Fewest characters in the API token and the token secret.
pub const SECRET_MIN: usize = 16;

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`, which returns a variable's value if set.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let r = Reader { lookup: &lookup };
        let Connections {
            database_url,
            amqp_url,
            amqp_tls,
            smtp_url,
            smtp_ca,
        } = connections(&r)?;
        let Http {
            http_addr,
            metrics_addr,
            http_limits,
            public_url,
        } = http(&r)?;
        let Secrets {
            api_token,
            token_secret,
            allow_dev_secrets,
        } = secrets(&r)?;
        let Email {
            seen_window,
            wait_for_quiet,
            quiet_max,
            clock_offset,
            reply_domain,
            mail_from,
            templates_dir,
            default_locale,
            templates_reload,
            retry_tiers,
            send_lease,
            smtp_concurrency,
        } = email(&r)?;
        let Work {
            queue_type,
            queue_prefix,
            prefetch,
            db_pool_size,
            sweep_interval,
        } = work(&r)?;
        let Inbound {
            inbound_addr,
            inbound_max_bytes,
            attachment_max,
            email_attach_max,
            file_link_ttl,
            keep_source,
            inbound_limits,
            inbound_tls,
            inbound_require_tls,
            inbound_authserv_id,
            inbound_project,
            inbound_mailboxes,
            inbound_rate,
        } = inbound(&r)?;
        let mail_auth = mail_auth(&r)?;
        let Schedule {
            automation_limits,
            log_retention,
            event_retention,
            attachment_grace,
            session_ttl,
            threading_retention,
            schedule_purge_log,
            schedule_expire_threading,
            schedule_sweep,
        } = schedule(&r)?;
        Ok(Config {
            default_locale,
            templates_reload,
            automation_limits,
            log_retention,
            event_retention,
            attachment_grace,
            session_ttl,
            threading_retention,
            schedule_purge_log,
            schedule_expire_threading,
            schedule_sweep,
            database_url: Secret::url(database_url),
            amqp_url: Secret::url(amqp_url),
            amqp_tls,
            smtp_url: Secret::url(smtp_url),
            smtp_ca,
            http_addr,
            metrics_addr,
            public_url,
            api_token: Secret::new(api_token),
            seen_window,
            wait_for_quiet,
            quiet_max,
            clock_offset,
            reply_domain,
            token_secret: Secret::new(token_secret),
            queue_type,
            queue_prefix,
            mail_from,
            templates_dir,
            retry_tiers,
            send_lease,
            smtp_concurrency,
            prefetch,
            db_pool_size,
            sweep_interval,
            inbound_addr,
            inbound_max_bytes,
            attachment_max,
            email_attach_max,
            file_link_ttl,
            keep_source,
            inbound_limits,
            inbound_tls,
            inbound_require_tls,
            http_limits,
            inbound_authserv_id,
            mail_auth,
            allow_dev_secrets,
            inbound_mailboxes,
            inbound_project,
            inbound_rate,
        })
    }

    /// Our own sender address: the address part of `TIDINGS_MAIL_FROM`.
    pub fn own_address(&self) -> String {
        self.mail_from
            .parse::<lettre::message::Mailbox>()
            .map(|m| m.email.to_string())
            .unwrap_or_else(|_| self.mail_from.clone())
    }

    /// The envelope sender of our mail: the bounce mailbox at the reply domain, so the MX
    /// relay brings bounces back to the inbound listener.
    pub fn bounce_address(&self) -> String {
        format!("{}@{}", crate::mail::BOUNCE_MAILBOX, self.reply_domain)
    }

    /// True when the API token or reply secret is the shipped development value.
    pub fn uses_development_secrets(&self) -> bool {
        *self.api_token == DEV_API_TOKEN || *self.token_secret == DEV_TOKEN_SECRET.as_bytes()
    }

    /// Why starting listeners on `addrs` would be unsafe: one is reachable beyond this machine
    /// while a secret still has its development value (anyone could call the api or forge
    /// reply addresses). `TIDINGS_ALLOW_DEV_SECRETS=yes` allows it, for development only.
    pub fn exposure_problem(&self, addrs: &[SocketAddr]) -> Option<String> {
        if !self.uses_development_secrets() || self.allow_dev_secrets {
            return None;
        }
        let exposed: Vec<String> = addrs
            .iter()
            .filter(|a| !a.ip().is_loopback())
            .map(|a| a.to_string())
            .collect();
        (!exposed.is_empty()).then(|| {
            format!(
                "refusing to listen on {} with the development TIDINGS_API_TOKEN or TIDINGS_TOKEN_SECRET: \
                 set both (at least {SECRET_MIN} characters), bind to 127.0.0.1, or set \
                 TIDINGS_ALLOW_DEV_SECRETS=yes for development",
                exposed.join(", ")
            )
        })
    }
}

/// Reads variables through a lookup: unset or blank gives the default, except for secrets.
struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Reader<'_> {
    /// A variable's value, or `default` when it is unset or blank.
    fn get(&self, name: &'static str, default: &str) -> (&'static str, String) {
        (
            name,
            (self.lookup)(name)
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_string()),
        )
    }

    /// A file named by a variable, or `None` when it is unset or blank.
    fn path(&self, name: &'static str) -> Option<std::path::PathBuf> {
        (self.lookup)(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().into())
    }

    /// A secret's value, or `default` when unset: a secret set to nothing is a mistake, not a
    /// request for the development default.
    fn secret(&self, name: &'static str, default: &str) -> (&'static str, String) {
        (
            name,
            (self.lookup)(name).unwrap_or_else(|| default.to_string()),
        )
    }
}

/// The services Tidings connects to: PostgreSQL, RabbitMQ (one node or a cluster's list) and
/// the outbound SMTP server.
struct Connections {
    database_url: String,
    amqp_url: String,
    amqp_tls: crate::tls::AmqpTls,
    smtp_url: String,
    smtp_ca: Option<std::path::PathBuf>,
}

fn connections(r: &Reader<'_>) -> Result<Connections, ConfigError> {
    let get = |name: &'static str, default: &str| r.get(name, default);
    let (n, database_url) = get(
        "TIDINGS_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/tidings",
    );
    require_scheme(n, &database_url, &["postgres", "postgresql"])?;
    let (n, amqp_url) = get("TIDINGS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    require_scheme(n, &amqp_url, &["amqp", "amqps"])?;
    let path = |name: &'static str| r.path(name);
    let amqp_tls = crate::tls::AmqpTls::load(
        path("TIDINGS_AMQP_CA").as_deref(),
        path("TIDINGS_AMQP_CLIENT_CERT").as_deref(),
        path("TIDINGS_AMQP_CLIENT_KEY").as_deref(),
    )
    .map_err(|(variable, reason)| ConfigError {
        variable,
        value: r.get(variable, "").1,
        reason,
    })?;
    let (n, smtp_url) = get("TIDINGS_SMTP_URL", "smtp://127.0.0.1:2525");
    require_scheme(n, &smtp_url, &["smtp", "smtps"])?;
    let smtp_ca = path("TIDINGS_SMTP_CA");
    if let Some(ca) = &smtp_ca {
        crate::tls::read_certificates(ca).map_err(|reason| ConfigError {
            variable: "TIDINGS_SMTP_CA",
            value: ca.display().to_string(),
            reason,
        })?;
    }
    Ok(Connections {
        database_url,
        amqp_url,
        amqp_tls,
        smtp_url,
        smtp_ca,
    })
}

/// The api's listener, its bounds, the metrics listener and the public URL.
struct Http {
    http_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    http_limits: HttpLimits,
    public_url: String,
}

fn http(r: &Reader<'_>) -> Result<Http, ConfigError> {
    let get = |name: &'static str, default: &str| r.get(name, default);
    let http_addr = parse_with(get("TIDINGS_HTTP_ADDR", "127.0.0.1:8080"), |v| {
        v.parse::<SocketAddr>()
            .map_err(|_| "expected IP:PORT, e.g. 127.0.0.1:8080".to_string())
    })?;
    let metrics_addr = parse_with(get("TIDINGS_METRICS_ADDR", ""), |v| {
        if v.trim().is_empty() {
            return Ok(None);
        }
        v.trim()
            .parse::<SocketAddr>()
            .map(Some)
            .map_err(|_| "expected IP:PORT, e.g. 127.0.0.1:9464, or nothing".to_string())
    })?;
    let http_limits = HttpLimits {
        max_connections: parse_with(get("TIDINGS_HTTP_MAX_CONNECTIONS", "1024"), |v| {
            parse_range(v, 1, 1_000_000)
        })?,
        header_timeout: parse_with(
            get("TIDINGS_HTTP_HEADER_TIMEOUT", "10s"),
            parse_positive_duration,
        )?,
        request_timeout: parse_with(
            get("TIDINGS_HTTP_REQUEST_TIMEOUT", "30s"),
            parse_positive_duration,
        )?,
        post_rate: parse_with(get("TIDINGS_POST_RATE", "60/1m"), parse_rate)?,
        read_budget: parse_with(get("TIDINGS_READ_BUDGET", "1048576"), |v| {
            parse_range(v, 65_536, 64 << 20)
        })?,
    };
    let public_url = parse_with(
        get("TIDINGS_PUBLIC_URL", &format!("http://{http_addr}")),
        |v| {
            if (v.starts_with("http://") || v.starts_with("https://"))
                && !v.contains(char::is_whitespace)
            {
                Ok(v.trim_end_matches('/').to_string())
            } else {
                Err("expected an http:// or https:// URL".to_string())
            }
        },
    )?;
    Ok(Http {
        http_addr,
        metrics_addr,
        http_limits,
        public_url,
    })
}

/// The API token, the token secret, and whether development values may listen beyond loopback.
struct Secrets {
    api_token: String,
    token_secret: Vec<u8>,
    allow_dev_secrets: bool,
}

fn secrets(r: &Reader<'_>) -> Result<Secrets, ConfigError> {
    let get = |name: &'static str, default: &str| r.get(name, default);
    let secret = |name: &'static str, default: &str| r.secret(name, default);
    let api_token = parse_secret(secret("TIDINGS_API_TOKEN", DEV_API_TOKEN), |v| {
        if v.chars().count() < SECRET_MIN || v.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            Err(format!(
                "must be at least {SECRET_MIN} characters without spaces (unset it for the development default)"
            ))
        } else {
            Ok(v.to_string())
        }
    })?;
    let token_secret = parse_secret(secret("TIDINGS_TOKEN_SECRET", DEV_TOKEN_SECRET), |v| {
        if v.len() < SECRET_MIN {
            Err(format!(
                "must be at least {SECRET_MIN} characters (unset it for the development default)"
            ))
        } else {
            Ok(v.as_bytes().to_vec())
        }
    })?;
    let allow_dev_secrets = parse_with(get("TIDINGS_ALLOW_DEV_SECRETS", "no"), |v| match v {
        "yes" | "true" | "1" => Ok(true),
        "no" | "false" | "0" => Ok(false),
        _ => Err("expected yes or no".to_string()),
    })?;
    Ok(Secrets {
        api_token,
        token_secret,
        allow_dev_secrets,
    })
}

/// What emails are and when they go: the seen window, addresses, templates and locales,
/// retries, the send lease and SMTP concurrency.
struct Email {
    seen_window: Duration,
    wait_for_quiet: bool,
    quiet_max: Duration,
    clock_offset: i64,
    reply_domain: String,
    mail_from: String,
    templates_dir: String,
    default_locale: String,
    templates_reload: Duration,
    retry_tiers: Vec<Duration>,
    send_lease: Duration,
    smtp_concurrency: usize,
}

fn email(r: &Reader<'_>) -> Result<Email, ConfigError> {
    let get = |name: &'static str, default: &str| r.get(name, default);
    let seen_window = parse_with(get("TIDINGS_SEEN_WINDOW", "60s"), parse_positive_duration)?;
    let wait_for_quiet = parse_with(get("TIDINGS_WAIT_FOR_QUIET", "no"), |v| match v.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err("expected yes or no".to_string()),
    })?;
    let quiet_max = parse_with(get("TIDINGS_QUIET_MAX", "10m"), parse_positive_duration)?;
    let clock_offset = parse_with(get("TIDINGS_CLOCK_OFFSET", "0"), |v| {
        v.trim()
            .parse::<i64>()
            .ok()
            .filter(|s| s.unsigned_abs() <= 100 * 366 * 86_400)
            .ok_or_else(|| {
                "expected whole seconds, such as 0, 3600 or -86400 (at most 100 years)".to_string()
            })
    })?;
    let reply_domain = parse_with(
        get("TIDINGS_REPLY_DOMAIN", "reply.tidings.localhost"),
        |v| {
            let ok = v.contains('.')
                && v.split('.').all(|label| {
                    !label.is_empty()
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if ok {
                Ok(v.to_ascii_lowercase())
            } else {
                Err("expected a domain name such as reply.example.com".to_string())
            }
        },
    )?;
    let mail_from = parse_with(
        get(
            "TIDINGS_MAIL_FROM",
            "Tidings <notifications@tidings.localhost>",
        ),
        |v| {
            v.parse::<lettre::message::Mailbox>()
                .map(|_| v.to_string())
                .map_err(|e| format!("not a mailbox: {e}"))
        },
    )?;
    let (_, templates_dir) = get("TIDINGS_TEMPLATES_DIR", "templates");
    let default_locale = parse_with(get("TIDINGS_DEFAULT_LOCALE", "en"), |v| {
        let ok = v.len() <= 16
            && v.split('-').enumerate().all(|(i, p)| {
                (2..=8).contains(&p.len())
                    && p.chars().all(|c| c.is_ascii_alphanumeric())
                    && (i > 0 || p.chars().all(|c| c.is_ascii_lowercase()))
            });
        if ok {
            Ok(v.to_string())
        } else {
            Err("expected a locale such as en, sv or pt-BR".to_string())
        }
    })?;
    let templates_reload = parse_with(
        get("TIDINGS_TEMPLATES_RELOAD", "2s"),
        parse_positive_duration,
    )?;
    let retry_tiers = parse_with(get("TIDINGS_RETRY_TIERS", "1m,5m,30m"), |v| {
        v.split(',')
            .map(|part| parse_positive_duration(part.trim()))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let send_lease = parse_with(get("TIDINGS_SEND_LEASE", "2m"), parse_positive_duration)?;
    let smtp_concurrency = parse_with(get("TIDINGS_SMTP_CONCURRENCY", "32"), |v| {
        parse_range(v, 1, 1024)
    })?;
    Ok(Email {
        seen_window,
        wait_for_quiet,
        quiet_max,
        clock_offset,
        reply_domain,
        mail_from,
        templates_dir,
        default_locale,
        templates_reload,
        retry_tiers,
        send_lease,
        smtp_concurrency,
    })
}

/// How roles take their work: queue type and prefix, prefetch, database pool and the sweeps'
/// interval.
struct Work {
    queue_type: QueueType,
    queue_prefix: String,
    prefetch: u16,
    db_pool_size: u32,
    sweep_interval: Duration,
}

fn work(r: &Reader<'_>) -> Result<Work, ConfigError> {
    let get = |name: &'static str, default: &str| r.get(name, default);
    let queue_type = parse_with(get("TIDINGS_QUEUE_TYPE", "quorum"), |v| match v {
        "quorum" => Ok(QueueType::Quorum),
        "classic" => Ok(QueueType::Classic),
        _ => Err("expected quorum or classic".to_string()),
    })?;
    let queue_prefix = parse_with(get("TIDINGS_QUEUE_PREFIX", "tidings"), |v| {
        if v.len() <= 64
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            Ok(v.to_string())
        } else {
            Err("expected at most 64 of A-Z a-z 0-9 - _ .".to_string())
        }
    })?;
    let prefetch = parse_with(get("TIDINGS_PREFETCH", "256"), |v| {
        parse_range(v, 1, 65535).map(|n| n as u16)
    })?;
    let db_pool_size = parse_with(get("TIDINGS_DB_POOL_SIZE", "10"), |v| {
        parse_range(v, 1, 1000).map(|n| n as u32)
    })?;
    let sweep_interval = parse_with(
        get("TIDINGS_SWEEP_INTERVAL", "15s"),
        parse_positive_duration,
    )?;
    Ok(Work {
        queue_type,
        queue_prefix,
        prefetch,
        db_pool_size,
        sweep_interval,
    })
}

/// The inbound SMTP listener and its bounds, the relay's authserv-id, mailboxes, the support
/// project and the rate limit.
struct Inbound {
    inbound_addr: SocketAddr,
    inbound_max_bytes: usize,
    attachment_max: usize,
    email_attach_max: usize,
    file_link_ttl: Duration,
    keep_source: usize,
    inbound_limits: InboundLimits,
    inbound_tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
    inbound_require_tls: bool,
    inbound_authserv_id: Option<String>,
    inbound_project: String,
    inbound_mailboxes: Vec<String>,
    inbound_rate: (u32, Duration),
}

fn inbound(r: &Reader<'_>) -> Result<Inbound, ConfigError> {
    let get = |name: &'static str, default: &str| r.get(name, default);
    let inbound_addr = parse_with(get("TIDINGS_INBOUND_ADDR", "127.0.0.1:2526"), |v| {
        v.parse::<SocketAddr>()
            .map_err(|_| "expected IP:PORT, e.g. 127.0.0.1:2526".to_string())
    })?;
    // TIDINGS_MAIL_MAX, or its older name TIDINGS_INBOUND_MAX_BYTES.
    let older = get("TIDINGS_INBOUND_MAX_BYTES", "36700160").1;
    let inbound_max_bytes = parse_with(get("TIDINGS_MAIL_MAX", &older), |v| {
        parse_range(v, 1024, 1 << 30)
    })?;
    let attachment_max = parse_with(get("TIDINGS_ATTACHMENT_MAX", "26214400"), |v| {
        parse_range(v, 1, 1 << 30)
    })?;
    let email_attach_max = parse_with(get("TIDINGS_EMAIL_ATTACH_MAX", "10485760"), |v| {
        parse_range(v, 0, 100 << 20)
    })?;
    let file_link_ttl = parse_with(get("TIDINGS_FILE_LINK_TTL", "30d"), parse_positive_duration)?;
    let keep_source = parse_with(get("TIDINGS_KEEP_SOURCE", "16384"), |v| {
        parse_range(v, 0, 1 << 30)
    })?;
    let inbound_limits = InboundLimits {
        max_sessions: parse_with(get("TIDINGS_INBOUND_MAX_SESSIONS", "100"), |v| {
            parse_range(v, 1, 100_000)
        })?,
        session_timeout: parse_with(
            get("TIDINGS_INBOUND_SESSION_TIMEOUT", "10m"),
            parse_positive_duration,
        )?,
        min_rate: parse_with(get("TIDINGS_INBOUND_MIN_RATE", "1024"), |v| {
            parse_range(v, 1, 1 << 30)
        })?,
        memory: parse_with(get("TIDINGS_INBOUND_MEMORY", "268435456"), |v| {
            let memory = parse_range(v, 1 << 20, 1 << 40)?;
            if memory < inbound_max_bytes {
                Err(format!(
                    "must be at least TIDINGS_MAIL_MAX ({inbound_max_bytes})"
                ))
            } else {
                Ok(memory)
            }
        })?,
    };
    let (inbound_tls, inbound_require_tls) = inbound_tls(r)?;
    let inbound_authserv_id = parse_with(get("TIDINGS_INBOUND_AUTHSERV_ID", ""), |v| {
        let v = v.trim();
        if v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        {
            Ok((!v.is_empty()).then(|| v.to_ascii_lowercase()))
        } else {
            Err("an authserv-id such as mx.example.com (letters, digits, dots, dashes)".into())
        }
    })?;
    let inbound_project = parse_with(get("TIDINGS_INBOUND_PROJECT", "Support"), |v| {
        let name = v.trim();
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
            Err("a project name: 1 to 200 characters, no control characters".into())
        } else {
            Ok(name.to_string())
        }
    })?;
    let inbound_mailboxes = parse_with(get("TIDINGS_INBOUND_MAILBOXES", "support"), |v| {
        let boxes: Vec<String> = v
            .split(',')
            .map(|b| b.trim().to_ascii_lowercase())
            .collect();
        if boxes.iter().all(|b| {
            !b.is_empty()
                && !b.contains('@')
                && !b.starts_with("reply+")
                && !b.contains(char::is_whitespace)
        }) {
            Ok(boxes)
        } else {
            Err("expected comma-separated local parts such as support,help".to_string())
        }
    })?;
    let inbound_rate = parse_with(get("TIDINGS_INBOUND_RATE", "10/10m"), parse_rate)?;
    Ok(Inbound {
        inbound_addr,
        inbound_max_bytes,
        attachment_max,
        email_attach_max,
        file_link_ttl,
        keep_source,
        inbound_limits,
        inbound_tls,
        inbound_require_tls,
        inbound_authserv_id,
        inbound_project,
        inbound_mailboxes,
        inbound_rate,
    })
}

/// The listener's STARTTLS certificate and whether TLS is required.
#[allow(clippy::type_complexity)]
fn inbound_tls(
    r: &Reader<'_>,
) -> Result<(Option<std::sync::Arc<crate::tls::ServerTls>>, bool), ConfigError> {
    let fail = |variable: &'static str, reason: String| ConfigError {
        variable,
        value: r.get(variable, "").1,
        reason,
    };
    let tls = match (
        r.path("TIDINGS_INBOUND_TLS_CERT"),
        r.path("TIDINGS_INBOUND_TLS_KEY"),
    ) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(fail(
                "TIDINGS_INBOUND_TLS_KEY",
                "a certificate needs its key".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(fail(
                "TIDINGS_INBOUND_TLS_CERT",
                "a key needs its certificate".into(),
            ));
        }
        (Some(cert), Some(key)) => Some(std::sync::Arc::new(
            crate::tls::ServerTls::load(&cert, &key)
                .map_err(|e| fail("TIDINGS_INBOUND_TLS_CERT", e))?,
        )),
    };
    let require = parse_with(r.get("TIDINGS_INBOUND_REQUIRE_TLS", "no"), |v| {
        match v.trim() {
            "yes" => Ok(true),
            "no" => Ok(false),
            _ => Err("expected yes or no".to_string()),
        }
    })?;
    if require && tls.is_none() {
        return Err(fail(
            "TIDINGS_INBOUND_REQUIRE_TLS",
            "TLS cannot be required without TIDINGS_INBOUND_TLS_CERT and TIDINGS_INBOUND_TLS_KEY"
                .into(),
        ));
    }
    Ok((tls, require))
}

/// One DKIM key: the selector it is published under and the file holding the private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKeyFile {
    pub selector: String,
    pub path: std::path::PathBuf,
}

/// DKIM signing of outbound mail, in-process checking of inbound mail, and the DNS server
/// both use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailAuth {
    /// `TIDINGS_DKIM_KEYS`: `selector:path` pairs; every outbound email is signed with each
    /// (an RSA and an Ed25519 key side by side is the usual pair). Empty: the relay signs.
    pub dkim_keys: Vec<DkimKeyFile>,
    /// `TIDINGS_DKIM_DOMAIN`: the signing domain (`d=`); by default the domain of
    /// `TIDINGS_MAIL_FROM`, which DMARC alignment needs.
    pub dkim_domain: Option<String>,
    /// `TIDINGS_INBOUND_VERIFY=on`: check DKIM, SPF and DMARC of inbound mail in-process
    /// where the relay gives no verdict (`TIDINGS_INBOUND_AUTHSERV_ID` unset).
    pub inbound_verify: bool,
    /// `TIDINGS_DNS_SERVER`: the resolver (`IP:PORT`) for these checks and `tidings check
    /// dns`; unset, the system's (`/etc/resolv.conf`).
    pub dns_server: Option<SocketAddr>,
}

fn mail_auth(r: &Reader<'_>) -> Result<MailAuth, ConfigError> {
    let get = |name: &'static str, default: &str| r.get(name, default);
    let dkim_keys = parse_with(get("TIDINGS_DKIM_KEYS", ""), |v| {
        v.split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (selector, path) = pair.split_once(':').ok_or_else(|| {
                    format!(
                        "{pair:?}: expected selector:path, e.g. tidings2026:/etc/tidings/dkim.pem"
                    )
                })?;
                let selector = selector.trim();
                let valid = !selector.is_empty()
                    && selector.len() <= 63
                    && selector.split('.').all(|l| {
                        !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    });
                if !valid {
                    return Err(format!(
                        "{selector:?}: a selector is a DNS label (letters, digits, dashes)"
                    ));
                }
                Ok(DkimKeyFile {
                    selector: selector.to_ascii_lowercase(),
                    path: std::path::PathBuf::from(path.trim()),
                })
            })
            .collect::<Result<Vec<_>, String>>()
    })?;
    let dkim_domain = parse_with(get("TIDINGS_DKIM_DOMAIN", ""), |v| {
        let v = v.trim().to_ascii_lowercase();
        if v.is_empty() {
            Ok(None)
        } else if v.contains('.')
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            Ok(Some(v))
        } else {
            Err("a domain name such as example.com".into())
        }
    })?;
    let inbound_verify = parse_with(get("TIDINGS_INBOUND_VERIFY", "off"), |v| {
        match v.trim().to_ascii_lowercase().as_str() {
            "on" | "yes" | "true" => Ok(true),
            "off" | "no" | "false" => Ok(false),
            _ => Err("on or off".to_string()),
        }
    })?;
    let dns_server = parse_with(get("TIDINGS_DNS_SERVER", ""), |v| {
        if v.trim().is_empty() {
            return Ok(None);
        }
        v.trim()
            .parse::<SocketAddr>()
            .map(Some)
            .or_else(|_| {
                v.trim()
                    .parse::<std::net::IpAddr>()
                    .map(|ip| Some(SocketAddr::new(ip, 53)))
            })
            .map_err(|_| "expected IP or IP:PORT, e.g. 127.0.0.1:53".to_string())
    })?;
    Ok(MailAuth {
        dkim_keys,
        dkim_domain,
        inbound_verify,
        dns_server,
    })
}

/// Retention, lifetimes, the automation loop cap and the scheduler's cron schedules.
struct Schedule {
    automation_limits: Vec<(u32, Duration)>,
    log_retention: Duration,
    event_retention: Duration,
    attachment_grace: Duration,
    session_ttl: Duration,
    threading_retention: Duration,
    schedule_purge_log: String,
    schedule_expire_threading: String,
    schedule_sweep: String,
}

fn schedule(r: &Reader<'_>) -> Result<Schedule, ConfigError> {
    let get = |name: &'static str, default: &str| r.get(name, default);
    let automation_limits = parse_with(get("TIDINGS_AUTOMATION_LIMITS", "3/10m,20/24h"), |v| {
        v.split(',').map(|part| parse_rate(part.trim())).collect()
    })?;
    let log_retention = parse_with(get("TIDINGS_LOG_RETENTION", "72h"), parse_positive_duration)?;
    let event_retention = parse_with(
        get("TIDINGS_EVENT_RETENTION", "7d"),
        parse_positive_duration,
    )?;
    let attachment_grace = parse_with(
        get("TIDINGS_ATTACHMENT_GRACE", "24h"),
        parse_positive_duration,
    )?;
    let session_ttl = parse_with(get("TIDINGS_SESSION_TTL", "12h"), parse_positive_duration)?;
    let threading_retention = parse_with(
        get("TIDINGS_THREADING_RETENTION", "365d"),
        parse_positive_duration,
    )?;
    let schedule_purge_log = parse_with(
        get("TIDINGS_SCHEDULE_PURGE_LOG", "0 */5 * * * *"),
        parse_cron,
    )?;
    let schedule_expire_threading = parse_with(
        get("TIDINGS_SCHEDULE_EXPIRE_THREADING", "0 30 3 * * *"),
        parse_cron,
    )?;
    let schedule_sweep = parse_with(get("TIDINGS_SCHEDULE_SWEEP", "*/30 * * * * *"), parse_cron)?;
    Ok(Schedule {
        automation_limits,
        log_retention,
        event_retention,
        attachment_grace,
        session_ttl,
        threading_retention,
        schedule_purge_log,
        schedule_expire_threading,
        schedule_sweep,
    })
}

fn parse_with<T>(
    (variable, value): (&'static str, String),
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    parse(value.trim()).map_err(|reason| ConfigError {
        variable,
        value,
        reason,
    })
}

/// Like [`parse_with`], for a secret: an error names the variable and what is wrong, and
/// shows the value's length, never the value.
fn parse_secret<T>(
    (variable, value): (&'static str, String),
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    let length = value.chars().count();
    parse_with((variable, value), parse).map_err(|e| ConfigError {
        value: format!("{length} characters, not shown"),
        ..e
    })
}

fn require_scheme(
    variable: &'static str,
    value: &str,
    schemes: &[&str],
) -> Result<(), ConfigError> {
    let scheme = value.split_once("://").map(|(s, _)| s);
    match scheme {
        Some(s) if schemes.contains(&s) => Ok(()),
        _ => Err(ConfigError {
            variable,
            value: crate::secret::mask_url_passwords(value),
            reason: format!(
                "expected a URL starting with {}://",
                schemes.join(":// or ")
            ),
        }),
    }
}

/// Parses `COUNT/WINDOW` such as `10/10m`.
fn parse_rate(v: &str) -> Result<(u32, Duration), String> {
    let (count, window) = v
        .split_once('/')
        .ok_or("expected COUNT/WINDOW such as 10/10m")?;
    let count = parse_range(count.trim(), 1, 1_000_000)? as u32;
    Ok((count, parse_positive_duration(window.trim())?))
}

/// Checks a six-field cron expression (seconds first).
pub fn parse_cron(v: &str) -> Result<String, String> {
    v.parse::<cron::Schedule>()
        .map(|_| v.to_string())
        .map_err(|e| format!("not a cron expression with seconds (sec min hour dom mon dow): {e}"))
}

fn parse_range(value: &str, min: usize, max: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

/// The longest duration any setting or query takes: 100 years.
const MAX_DURATION_MS: u64 = 36_500 * 86_400_000;

/// Parses `1500ms`, `90s`, `5m`, `1h`, `2d` or a bare number of seconds; zero, and anything
/// over 100 years, is refused.
pub fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    let bad = || "expected a duration such as 1500ms, 90s, 5m or 1h".to_string();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let millis = n
        .checked_mul(millis_per_unit)
        .filter(|&ms| ms <= MAX_DURATION_MS)
        .ok_or_else(|| "must be at most 100 years (36500d)".to_string())?;
    if millis == 0 {
        return Err("must be greater than zero".to_string());
    }
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config_with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    /// A secret with a comma, an `@`, a `%` and a newline: neither a configuration's `Debug`
    /// nor an error about it shows any part of it.
    #[test]
    fn secrets_never_print() {
        let secret = "pa,ss@w%rd\nmore-0123456789";
        let config = config_with(&[
            ("TIDINGS_API_TOKEN", "token,with@odd%chars-0123456789"),
            ("TIDINGS_TOKEN_SECRET", secret),
            (
                "TIDINGS_DATABASE_URL",
                &format!("postgres://app:{secret}@db/tidings"),
            ),
            (
                "TIDINGS_AMQP_URL",
                &format!("amqp://u:{secret}@n1/%2f, amqp://u:{secret}@n2/%2f"),
            ),
            (
                "TIDINGS_SMTP_URL",
                &format!("smtp://mailer:{secret}@relay:587"),
            ),
        ])
        .unwrap();
        let shown = format!("{config:?}");
        for part in ["pa,ss", "w%rd", "\nmore", "token,with", "odd%chars"] {
            assert!(!shown.contains(part), "{part} in {shown}");
        }
        assert!(
            shown.contains("amqp://u:***@n1/%2f, amqp://u:***@n2/%2f"),
            "{shown}"
        );
        assert_eq!(config.token_secret.expose(), secret.as_bytes());
        for (variable, value) in [
            ("TIDINGS_API_TOKEN", "short,@%\n"),
            ("TIDINGS_TOKEN_SECRET", "short,@%\n"),
            ("TIDINGS_DATABASE_URL", "mysql://app:pa,ss@w%rd@db/x"),
        ] {
            let error = config_with(&[(variable, value)]).unwrap_err().to_string();
            assert!(error.starts_with(variable), "{error}");
            for part in ["short", "pa,ss", "w%rd"] {
                assert!(!error.contains(part), "{part} in {error}");
            }
        }
    }

    #[test]
    fn defaults_are_sensible() {
        let config = config_with(&[]).unwrap();
        assert_eq!(config.seen_window, Duration::from_secs(60));
        assert_eq!(config.queue_type, QueueType::Quorum);
        assert_eq!(config.retry_tiers.len(), 3);
        assert!(config.uses_development_secrets());
    }

    #[test]
    fn development_secrets_never_listen_beyond_loopback_unless_allowed() {
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let dev = config_with(&[]).unwrap();
        assert_eq!(dev.exposure_problem(&[loopback]), None);
        let problem = dev.exposure_problem(&[loopback, public]).unwrap();
        assert!(problem.contains("0.0.0.0:8080"), "{problem}");
        let allowed = config_with(&[("TIDINGS_ALLOW_DEV_SECRETS", "yes")]).unwrap();
        assert_eq!(allowed.exposure_problem(&[public]), None);
        let set = config_with(&[
            ("TIDINGS_API_TOKEN", "a-real-token-0123456789"),
            ("TIDINGS_TOKEN_SECRET", "a-real-secret-0123456789"),
        ])
        .unwrap();
        assert_eq!(set.exposure_problem(&[public]), None);
    }

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(
            parse_positive_duration("1500ms"),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(parse_positive_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_positive_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_positive_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("soon").is_err());
        assert!(parse_positive_duration("5 days").is_err());
        assert_eq!(
            parse_positive_duration("36500d"),
            Ok(Duration::from_secs(36_500 * 86_400))
        );
        assert!(parse_positive_duration("36501d").is_err());
        assert!(parse_positive_duration("213503982334602d").is_err());
        assert!(parse_positive_duration("99999999999999999999").is_err());
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let cases = [
            ("TIDINGS_SEEN_WINDOW", "sixty"),
            ("TIDINGS_CLOCK_OFFSET", "1h"),
            ("TIDINGS_CLOCK_OFFSET", "99999999999"),
            ("TIDINGS_QUEUE_TYPE", "stream"),
            ("TIDINGS_HTTP_ADDR", "localhost"),
            ("TIDINGS_DATABASE_URL", "mysql://x"),
            ("TIDINGS_AMQP_URL", "127.0.0.1:5672"),
            ("TIDINGS_SMTP_URL", "http://x"),
            ("TIDINGS_TOKEN_SECRET", "short"),
            ("TIDINGS_TOKEN_SECRET", ""),
            ("TIDINGS_API_TOKEN", "x"),
            ("TIDINGS_API_TOKEN", ""),
            ("TIDINGS_API_TOKEN", "a token with spaces in it"),
            ("TIDINGS_ALLOW_DEV_SECRETS", "maybe"),
            ("TIDINGS_INBOUND_MAX_SESSIONS", "0"),
            ("TIDINGS_HTTP_MAX_CONNECTIONS", "none"),
            ("TIDINGS_HTTP_HEADER_TIMEOUT", "0s"),
            ("TIDINGS_HTTP_REQUEST_TIMEOUT", "long"),
            ("TIDINGS_INBOUND_SESSION_TIMEOUT", "forever"),
            ("TIDINGS_INBOUND_MIN_RATE", "fast"),
            ("TIDINGS_INBOUND_MEMORY", "2048"),
            ("TIDINGS_INBOUND_AUTHSERV_ID", "mx relay"),
            ("TIDINGS_DKIM_KEYS", "nocolon"),
            ("TIDINGS_DKIM_DOMAIN", "no_dots"),
            ("TIDINGS_INBOUND_VERIFY", "maybe"),
            ("TIDINGS_DNS_SERVER", "dns.example"),
            ("TIDINGS_REPLY_DOMAIN", "no_dots"),
            ("TIDINGS_RETRY_TIERS", "1m,,5m"),
            ("TIDINGS_PREFETCH", "0"),
            ("TIDINGS_MAIL_FROM", "not an address"),
            ("TIDINGS_QUEUE_PREFIX", "has space"),
            ("TIDINGS_PUBLIC_URL", "ftp://x"),
            ("TIDINGS_INBOUND_RATE", "ten"),
            ("TIDINGS_INBOUND_MAILBOXES", "support@x.com"),
            ("TIDINGS_INBOUND_PROJECT", "Sup\u{7}port"),
            ("TIDINGS_DEFAULT_LOCALE", "Swedish"),
            ("TIDINGS_AUTOMATION_LIMITS", "3/10m,lots"),
            ("TIDINGS_LOG_RETENTION", "three days"),
            ("TIDINGS_SCHEDULE_PURGE_LOG", "*/5 * * * *"),
            ("TIDINGS_SCHEDULE_SWEEP", "every minute"),
        ];
        for (variable, value) in cases {
            let err = config_with(&[(variable, value)]).unwrap_err();
            assert_eq!(err.variable, variable);
            assert!(err.to_string().starts_with(variable), "{err}");
        }
    }
}
