//! `tidings inbound inspect|enqueue`: the pure inbound path on files, and queueing one message
//! from a pipe.

use clap::Subcommand;
use tidings_common::Config;

#[derive(Subcommand)]
pub enum InboundCommand {
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

/// A sysexits code to end the process with; what went wrong is already on standard error.
#[derive(Debug)]
pub struct ExitWith(pub u8);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitWith {}

/// Runs an inbound subcommand.
pub async fn inbound(config: &Config, command: InboundCommand) -> anyhow::Result<()> {
    match command {
        InboundCommand::Inspect { files } => inspect(config, &files),
        InboundCommand::Enqueue { from, recipients } => {
            tidings_inbound::enqueue_stdin(config, &from, &recipients)
                .await
                .map_err(|code| ExitWith(code.clamp(1, 255) as u8).into())
        }
    }
}

fn inspect(config: &Config, files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let context = tidings_common::inbound::InboundContext::from_config(config);
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
