//! `tidings check`: validate the configuration, templates and DKIM keys, and print the
//! effective settings. `tidings check dns`: look up and judge SPF, DKIM, DMARC, MX and PTR.

use clap::Subcommand;
use tidings_common::Config;
use tidings_common::dkim::Dkim;

#[derive(Subcommand)]
pub enum CheckCommand {
    /// Look up SPF, DKIM (the published key is the configured one), DMARC alignment, MX for
    /// the reply domain and PTR, judge each, and print what to publish where something is
    /// missing. Exits 1 when anything is wrong.
    Dns {
        /// The address mail leaves from (the relay's): SPF is evaluated for it and its PTR
        /// checked.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
    },
}

fn dkim(config: &Config) -> anyhow::Result<Option<Dkim>> {
    let own = config.own_address();
    let from_domain = own.rsplit_once('@').map(|(_, d)| d).unwrap_or(&own);
    Dkim::from_config(&config.mail_auth, from_domain).map_err(|e| anyhow::anyhow!(e))
}

pub async fn check(config: &Config, what: Option<CheckCommand>) -> anyhow::Result<()> {
    match what {
        None => {
            tidings_common::templates::Templates::load(
                &config.templates_dir,
                &config.default_locale,
                &tidings_common::REQUIRED_TEMPLATES,
            )?;
            let dkim = dkim(config)?;
            println!("configuration and templates are valid");
            println!("seen window: {:?}", config.seen_window);
            println!("queue type: {}", config.queue_type.as_str());
            println!("queue prefix: {}", config.queue_prefix);
            println!("http: {}", config.http_addr);
            match dkim {
                Some(dkim) => {
                    for key in dkim.published() {
                        println!(
                            "dkim: signing as {} (publish: {} TXT \"{}\")",
                            dkim.domain(),
                            key.name,
                            key.record
                        );
                    }
                }
                None => println!("dkim: left to the relay"),
            }
            Ok(())
        }
        Some(CheckCommand::Dns { ip }) => {
            let dkim = dkim(config)?;
            let auth = tidings_common::dns::authenticator(config.mail_auth.dns_server)
                .map_err(|e| anyhow::anyhow!(e))?;
            let findings = tidings_common::dns::check(config, dkim.as_ref(), &auth, ip).await;
            let mut wrong = 0;
            for finding in &findings {
                let mark = if finding.ok { "ok     " } else { "MISSING" };
                println!("{mark} {:<5} {}", finding.what, finding.detail);
                if let Some(publish) = &finding.publish {
                    println!("        publish: {publish}");
                }
                wrong += usize::from(!finding.ok);
            }
            if wrong > 0 {
                anyhow::bail!("{wrong} DNS check(s) failed");
            }
            Ok(())
        }
    }
}
