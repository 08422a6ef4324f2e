//! `tidings run ROLE…`: run roles in this process until SIGINT or SIGTERM.

use clap::ValueEnum;
use tidings_common::Config;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Api,
    Dispatch,
    Mailer,
    Inbound,
    Scheduler,
    /// Every role in one process (the default for a single machine).
    All,
}

pub async fn run(config: Config, mut roles: Vec<Role>) -> anyhow::Result<()> {
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
    let mut listeners = Vec::new();
    if roles.contains(&Role::Api) {
        listeners.push(config.http_addr);
    }
    if roles.contains(&Role::Inbound) {
        listeners.push(config.inbound_addr);
    }
    listeners.extend(config.metrics_addr);
    if let Some(problem) = config.exposure_problem(&listeners) {
        anyhow::bail!(problem);
    }
    if config.uses_development_secrets() {
        warn!(
            "TIDINGS_API_TOKEN or TIDINGS_TOKEN_SECRET has its development default; set both in production"
        );
    }
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = config.metrics_addr {
        let (config, token) = (config.clone(), shutdown.clone());
        tasks.spawn(async move { ("metrics", crate::observe::serve(addr, config, token).await) });
    }
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
        // Every line a role logs carries its name.
        let span = tracing::info_span!("role", role = name);
        tasks.spawn(tracing::Instrument::instrument(
            async move {
                let result = match role {
                    Role::Api => tidings_api::run(config, token).await,
                    Role::Dispatch => tidings_dispatch::run(config, token).await,
                    Role::Mailer => tidings_mailer::run(config, token).await,
                    Role::Inbound => tidings_inbound::run(config, token).await,
                    Role::Scheduler => tidings_scheduler::run(config, token).await,
                    Role::All => Ok(()),
                };
                (name, result)
            },
            span,
        ));
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
