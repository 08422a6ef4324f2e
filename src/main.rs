//! `tidings`: one binary for every role. Configuration comes from `TIDINGS_*` environment
//! variables (see the README); this file only parses the command line, sets up logging and
//! starts what was asked for.

mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tidings_common::Config;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "Notification and email pipeline of a help-desk messenger"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if needed and apply pending schema migrations (safe to run twice).
    Migrate,
    /// Run one or more roles in this process until SIGINT or SIGTERM.
    Run {
        /// Roles to run: api, dispatch, mailer, inbound, scheduler, or all.
        #[arg(required = true, value_enum)]
        roles: Vec<Role>,
    },
    /// Seed a tiny organisation through the API, post messages, mark some seen, wait for the
    /// seen window and print which emails went out, which were skipped, and why.
    Demo {
        /// Base URL of a running api role.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        api: String,
    },
    /// Check the configuration and templates, and print the effective settings.
    Check,
    /// Email templates: validate them, or render one with sample data.
    Templates {
        #[command(subcommand)]
        command: TemplatesCommand,
    },
    /// The email log (SPEC L1): inbound and outbound email of the last 72 hours, newest first,
    /// with full addresses.
    Log {
        /// How far back, e.g. 30m, 6h, 72h.
        #[arg(long, default_value = "72h")]
        since: String,
        /// Only inbound or only outbound email.
        #[arg(long, value_parser = ["in", "out"])]
        direction: Option<String>,
        /// Only this status (sent, skipped, deferred, failed, bounced, threaded, created, ignored, rejected).
        #[arg(long)]
        status: Option<String>,
        /// Most rows to print.
        #[arg(long, default_value_t = 200)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run one scheduler job now (purge_log, expire_threading, sweep), once, whatever its schedule.
    Schedule {
        /// The job to run.
        #[arg(value_parser = tidings_scheduler::JOBS)]
        job: String,
    },
    /// Inbound email tools.
    Inbound {
        #[command(subcommand)]
        command: InboundCommand,
    },
    /// Say why a person was or was not notified and emailed about a message, naming the rule
    /// that decided it.
    Explain {
        /// Message id.
        message: i64,
        /// Person id.
        person: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TemplatesCommand {
    /// Render every template of every locale with sample data; exits 1 naming each broken
    /// file (with line and reason).
    Check {
        /// Templates folder (default: TIDINGS_TEMPLATES_DIR).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Render one template with sample data: subject and text part to standard output, or
    /// the HTML part to a file with --html.
    Preview {
        /// Template name, e.g. notification, welcome, password_reset.
        name: String,
        /// Locale, e.g. sv (falls back to the default locale).
        #[arg(long)]
        locale: Option<String>,
        /// Write the HTML part to this file (e.g. preview.html) instead of printing text.
        #[arg(long)]
        html: Option<std::path::PathBuf>,
        /// Templates folder (default: TIDINGS_TEMPLATES_DIR).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum InboundCommand {
    /// Run the pure inbound path (parse, classify, extract the reply, read thread hints) on
    /// raw email files, with no database and no broker; prints one JSON object per file.
    Inspect {
        /// Raw RFC 5322 message files.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// Queue one raw message from standard input, for relays that deliver through a pipe
    /// (Postfix `pipe`: `tidings inbound enqueue --from ${sender} ${recipient}`). Exits 0 once
    /// the broker confirmed it, 75 (EX_TEMPFAIL, the relay retries) if it could not be
    /// queued, 67 (EX_NOUSER) for a recipient that is not ours.
    Enqueue {
        /// Envelope sender.
        #[arg(long, default_value = "")]
        from: String,
        /// Envelope recipients.
        #[arg(required = true)]
        recipients: Vec<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Api,
    Dispatch,
    Mailer,
    Inbound,
    Scheduler,
    /// Every role in one process (the default for a single machine).
    All,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TIDINGS_LOG")
                .unwrap_or_else(|_| "info,lapin=warn,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            error!("bad configuration: {e}");
            eprintln!("tidings: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Migrate => migrate(&config),
            Command::Run { roles } => run(config, roles).await,
            Command::Demo { api } => demo::run(&api, &config).await,
            Command::Check => check(&config),
            Command::Templates { command } => templates(&config, command),
            Command::Log {
                since,
                direction,
                status,
                limit,
                json,
            } => log(&config, &since, direction, status, limit, json).await,
            Command::Schedule { job } => {
                let scheduler = tidings_scheduler::Scheduler::new(config.clone());
                println!("{}", scheduler.run_job(&job).await?);
                Ok(())
            }
            Command::Inbound {
                command: InboundCommand::Inspect { files },
            } => inspect(&config, &files),
            Command::Inbound {
                command: InboundCommand::Enqueue { from, recipients },
            } => match tidings_inbound::enqueue_stdin(&config, &from, &recipients).await {
                Ok(()) => Ok(()),
                Err(code) => std::process::exit(code),
            },
            Command::Explain {
                message,
                person,
                json,
            } => explain(&config, message, person, json).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("tidings: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn migrate(config: &Config) -> anyhow::Result<()> {
    let applied = tidings_common::db::migrate(&config.database_url)
        .map_err(|e| anyhow::anyhow!("TIDINGS_DATABASE_URL: migration failed: {e}"))?;
    if applied.is_empty() {
        println!("database schema is up to date");
    } else {
        println!("applied migrations: {}", applied.join(", "));
    }
    Ok(())
}

fn inspect(config: &Config, files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let context = tidings_common::inbound::InboundContext {
        reply_domain: config.reply_domain.clone(),
        own_address: config
            .mail_from
            .parse::<lettre::message::Mailbox>()
            .ok()
            .map(|m| m.email.to_string()),
    };
    let mut unreadable = 0;
    for file in files {
        let raw = match std::fs::read(file) {
            Ok(raw) => raw,
            Err(e) => {
                eprintln!("tidings: {}: {e}", file.display());
                unreadable += 1;
                continue;
            }
        };
        let report = tidings_common::inbound::inspect(&raw, &context);
        let mut line = serde_json::to_value(&report)?;
        line["file"] = serde_json::json!(file.display().to_string());
        println!("{line}");
    }
    if unreadable > 0 {
        anyhow::bail!("{unreadable} file(s) could not be read");
    }
    Ok(())
}

fn check(config: &Config) -> anyhow::Result<()> {
    tidings_common::templates::Templates::load(
        &config.templates_dir,
        &config.default_locale,
        &tidings_common::REQUIRED_TEMPLATES,
    )?;
    println!("configuration and templates are valid");
    println!("seen window: {:?}", config.seen_window);
    println!("queue type: {}", config.queue_type.as_str());
    println!("queue prefix: {}", config.queue_prefix);
    println!("http: {}", config.http_addr);
    Ok(())
}

fn templates(config: &Config, command: TemplatesCommand) -> anyhow::Result<()> {
    use tidings_common::templates::{Templates, sample_data};
    let folder = |dir: Option<std::path::PathBuf>| {
        dir.unwrap_or_else(|| std::path::PathBuf::from(&config.templates_dir))
    };
    match command {
        TemplatesCommand::Check { dir } => {
            let dir = folder(dir);
            let errors = Templates::check(
                &dir,
                &config.default_locale,
                &tidings_common::REQUIRED_TEMPLATES,
            );
            if errors.is_empty() {
                let t = Templates::load(
                    &dir,
                    &config.default_locale,
                    &tidings_common::REQUIRED_TEMPLATES,
                )?;
                for (locale, names) in t.catalogue() {
                    println!("{locale}: {}", names.join(", "));
                }
                println!("all templates render with sample data");
                return Ok(());
            }
            for e in &errors {
                println!("{e}");
            }
            anyhow::bail!("{} broken template file(s)", errors.len());
        }
        TemplatesCommand::Preview {
            name,
            locale,
            html,
            dir,
        } => {
            let t = Templates::load(folder(dir), &config.default_locale, &[])?;
            let out = t.render(&name, locale.as_deref(), &sample_data(&name))?;
            match html {
                Some(file) => {
                    std::fs::write(&file, &out.html)?;
                    println!(
                        "wrote the HTML part of {name} ({}) to {}",
                        out.locale,
                        file.display()
                    );
                }
                None => {
                    println!("Subject: {}", out.subject);
                    println!("Locale: {}", out.locale);
                    println!();
                    print!("{}", out.text);
                }
            }
            Ok(())
        }
    }
}

async fn log(
    config: &Config,
    since: &str,
    direction: Option<String>,
    status: Option<String>,
    limit: i64,
    as_json: bool,
) -> anyhow::Result<()> {
    use diesel::prelude::*;
    use tidings_common::db::models::EmailLogEntry;
    use tidings_common::db::schema::email_log;
    let since = tidings_common::config::parse_positive_duration(since)
        .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let from = chrono::Utc::now() - chrono::Duration::from_std(since)?;
    let db = tidings_common::db::Db::new(&config.database_url, 1);
    let rows: Vec<EmailLogEntry> = db
        .run(move |conn| {
            let mut q = email_log::table
                .filter(email_log::created_at.ge(from))
                .select(EmailLogEntry::as_select())
                .order(email_log::id.desc())
                .limit(limit)
                .into_boxed();
            if let Some(d) = direction {
                let d = if d == "in" { "inbound" } else { "outbound" };
                q = q.filter(email_log::direction.eq(d));
            }
            if let Some(s) = status {
                q = q.filter(email_log::status.eq(s));
            }
            Ok(q.load(conn)?)
        })
        .await?;
    if as_json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(());
    }
    println!(
        "{:<19}  {:<3}  {:<9}  {:<30}  {:<30}  {:<5}  {:<40}  detail",
        "time", "dir", "status", "from", "to", "conv", "subject"
    );
    for r in &rows {
        let detail: Vec<String> = [
            r.reason.clone(),
            r.action.clone(),
            r.smtp_reply.clone(),
            r.rule.clone().map(|rule| format!("[{rule}]")),
        ]
        .into_iter()
        .flatten()
        .collect();
        println!(
            "{:<19}  {:<3}  {:<9}  {:<30}  {:<30}  {:<5}  {:<40}  {}",
            r.created_at.format("%Y-%m-%d %H:%M:%S"),
            if r.direction == "inbound" {
                "in"
            } else {
                "out"
            },
            r.status,
            r.mail_from.as_deref().unwrap_or("-"),
            r.rcpt_to.as_deref().unwrap_or("-"),
            r.conversation_id
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            r.subject
                .as_deref()
                .unwrap_or("-")
                .chars()
                .take(40)
                .collect::<String>(),
            detail.join("; ")
        );
    }
    println!("{} row(s)", rows.len());
    Ok(())
}

async fn explain(config: &Config, message: i64, person: i64, as_json: bool) -> anyhow::Result<()> {
    let db = tidings_common::db::Db::new(&config.database_url, 1);
    let explanation = db
        .run(move |conn| tidings_common::audience::explain(conn, message, person))
        .await?
        .ok_or_else(|| anyhow::anyhow!("message {message} or person {person} does not exist"))?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
        return Ok(());
    }
    let e = &explanation;
    println!(
        "message {} ({}) and person {}",
        e.message_id, e.message_kind, e.person_id
    );
    let verdict = |v: &tidings_common::rules::Verdict, yes: &str, no: &str| {
        format!("{} [{}] {}", if v.yes { yes } else { no }, v.rule, v.detail)
    };
    println!(
        "  in-app now:   {}",
        verdict(&e.notify_now, "notified", "not notified")
    );
    println!(
        "  email now:    {}",
        verdict(&e.email_now, "would be emailed", "would not be emailed")
    );
    match &e.notification {
        None => println!("  outcome:      no notification was written when the message was posted"),
        Some(n) => {
            let mut line = format!("notification {} is {}", n.notification_id, n.state);
            if let Some(reason) = &n.reason {
                line += &format!(": {reason}");
            }
            if let Some(rule) = &n.rule {
                line += &format!(" [{rule}]");
            }
            if let Some(into) = n.coalesced_into {
                line += &format!(" (sent inside the email of notification {into})");
            }
            if let Some(at) = n.sent_at {
                line += &format!(", emailed at {}", at.format("%Y-%m-%d %H:%M:%S UTC"));
            }
            if let Some(reply) = &n.smtp_reply {
                line += &format!(", SMTP: {reply}");
            }
            println!("  outcome:      {line}");
        }
    }
    Ok(())
}

async fn run(config: Config, mut roles: Vec<Role>) -> anyhow::Result<()> {
    if roles.contains(&Role::All) {
        roles = vec![
            Role::Api,
            Role::Dispatch,
            Role::Mailer,
            Role::Inbound,
            Role::Scheduler,
        ];
    }
    roles.dedup();
    if config.uses_development_secrets() {
        warn!(
            "TIDINGS_API_TOKEN or TIDINGS_TOKEN_SECRET has its development default; set both in production"
        );
    }
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for role in roles {
        let (config, token) = (config.clone(), shutdown.clone());
        let name = match role {
            Role::Api => "api",
            Role::Dispatch => "dispatch",
            Role::Mailer => "mailer",
            Role::Inbound => "inbound",
            Role::Scheduler => "scheduler",
            Role::All => unreachable!("expanded above"),
        };
        // Start-up errors (a broken template, an address in use) stop the whole process.
        tasks.spawn(async move {
            let result = match role {
                Role::Api => tidings_api::run(config, token).await,
                Role::Dispatch => tidings_dispatch::run(config, token).await,
                Role::Mailer => tidings_mailer::run(config, token).await,
                Role::Inbound => tidings_inbound::run(config, token).await,
                Role::Scheduler => tidings_scheduler::run(config, token).await,
                Role::All => Ok(()),
            };
            (name, result)
        });
    }
    info!("tidings running; send SIGTERM or press Ctrl-C to stop");
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("stopping: finishing work in flight");
        signal.cancel();
    });
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(e))) => {
                error!(role = name, error = %format!("{e:#}"), "role stopped with an error");
                failure.get_or_insert(anyhow::anyhow!("{name}: {e:#}"));
                shutdown.cancel();
            }
            Err(e) => {
                failure.get_or_insert(anyhow::anyhow!("role task failed: {e}"));
                shutdown.cancel();
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
