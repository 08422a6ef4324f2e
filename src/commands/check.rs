//! `tidings check`: validate the configuration and templates, and print the effective settings.

use tidings_common::Config;

pub fn check(config: &Config) -> anyhow::Result<()> {
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
