//! `tidings templates check|preview`: validate every template, or render one with sample data.

use clap::Subcommand;
use tidings_common::Config;

#[derive(Subcommand)]
pub enum TemplatesCommand {
    /// Render every template of every locale with sample data; exits 1 naming each broken
    /// file (with line and reason).
    Check {
        /// Templates folder (default: TIDINGS_TEMPLATES_DIR).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Write the templates as they serve now (the folder's files with the versions saved in
    /// the admin console in their place) to a folder, for keeping in version control.
    Export {
        /// Where to write them (created if missing; files of the same name are replaced).
        to: std::path::PathBuf,
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

pub fn templates(config: &Config, command: TemplatesCommand) -> anyhow::Result<()> {
    use tidings_common::templates::{Templates, sample_data};
    let folder = |dir: Option<std::path::PathBuf>| {
        dir.unwrap_or_else(|| std::path::PathBuf::from(&config.templates_dir))
    };
    match command {
        TemplatesCommand::Export { to } => {
            use diesel::Connection;
            let dir = std::path::PathBuf::from(&config.templates_dir);
            let (from, into) = (dir.canonicalize()?, std::path::absolute(&to)?);
            if into.starts_with(&from) {
                anyhow::bail!(
                    "{} is inside the templates folder {}; export somewhere else",
                    to.display(),
                    dir.display()
                );
            }
            let mut conn = diesel::PgConnection::establish(&config.database_url)?;
            let overlay = tidings_common::templates::versions::current(&mut conn)?;
            tidings_common::templates::versions::write_tree(
                &dir,
                &overlay,
                &config.default_locale,
                &to,
            )?;
            for v in &overlay.versions {
                let locale = if v.locale.is_empty() {
                    config.default_locale.as_str()
                } else {
                    v.locale.as_str()
                };
                println!("{locale}/{}: version {}", v.name, v.id);
            }
            println!(
                "wrote {} with {} console version(s) over the files of {}",
                to.display(),
                overlay.versions.len(),
                dir.display()
            );
            Ok(())
        }
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
