//! `tidings`: one binary for every role. Configuration comes from `TIDINGS_*` environment
//! variables (see the README); this file only parses the command line, sets up logging and
//! starts what was asked for.

mod commands;
mod observe;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::inbound::InboundCommand;
use commands::run::Role;
use commands::templates::TemplatesCommand;
use tidings_common::Config;

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
    /// Check the configuration, templates and DKIM keys, and print the effective settings;
    /// `check dns` judges the DNS records mail depends on.
    Check {
        #[command(subcommand)]
        what: Option<commands::check::CheckCommand>,
    },
    /// The operator's first look: queue depths, notifications pending by how far past due,
    /// stuck claims, the last sweeps' recoveries, dead letters, and whether the templates
    /// load.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
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

/// Logs to stderr: text for people (`TIDINGS_LOG_FORMAT=text`, the default), or one JSON
/// object per line for a log pipeline (`json`), with the fields of every span the line is
/// in (the role, `notification.id`, `message.id`, `delivery.tag`…).
fn init_logging() -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIDINGS_LOG")
        .unwrap_or_else(|_| "info,lapin=warn,tower_http=warn".into());
    let format = std::env::var("TIDINGS_LOG_FORMAT").unwrap_or_default();
    match format.trim() {
        "" | "text" => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        "json" => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_current_span(false)
            .with_span_list(true)
            .flatten_event(true)
            .init(),
        other => {
            return Err(format!(
                "TIDINGS_LOG_FORMAT: {other:?} is not one of text, json"
            ));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Err(e) = init_logging() {
        eprintln!("tidings: bad configuration: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tidings: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    tidings_common::amqp::use_tls(config.amqp_tls.clone());
    tidings_common::clock::shift(config.clock_offset);
    if config.clock_offset != 0 {
        tracing::warn!(
            offset_seconds = config.clock_offset,
            now = %tidings_common::clock::now(),
            "the application clock is moved by TIDINGS_CLOCK_OFFSET; every process of this \
             deployment must use the same value"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Migrate => commands::migrate::migrate(&config),
            Command::Run { roles } => commands::run::run(config, roles).await,
            Command::Demo { api } => commands::demo::run(&api, &config).await,
            Command::Check { what } => commands::check::check(&config, what).await,
            Command::Status { json } => commands::status::status(&config, json).await,
            Command::Templates { command } => commands::templates::templates(&config, command),
            Command::Log {
                since,
                direction,
                status,
                limit,
                json,
            } => commands::log::log(&config, &since, direction, status, limit, json).await,
            Command::Schedule { job } => {
                let scheduler = tidings_scheduler::Scheduler::new(config.clone());
                println!("{}", scheduler.run_job(&job).await?);
                Ok(())
            }
            Command::Inbound { command } => commands::inbound::inbound(&config, command).await,
            Command::Explain {
                message,
                person,
                json,
            } => commands::explain::explain(&config, message, person, json).await,
        }
    });
    // Every pool is dropped with the runtime; then no connection may still be opening or
    // closing when the process exits (see `quiesce`).
    drop(runtime);
    tidings_common::db::quiesce(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A sysexits code (`tidings inbound enqueue`): its message is printed already.
        Err(e) => match e.downcast_ref::<commands::inbound::ExitWith>() {
            Some(code) => ExitCode::from(code.0),
            None => {
                eprintln!("tidings: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
