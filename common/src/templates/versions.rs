//! Template versions saved from the admin console. The newest version of a template in a
//! locale overrides the shipped files of that template (the files stay the defaults, and what
//! `git` holds); a version without parts is a revert to the files. Every process serves the
//! same set: each looks for a newer version when the api announces one on the broker
//! (`templates.changed`), and every `TIDINGS_TEMPLATES_RELOAD` in case an announcement was
//! lost; a version is loaded after the same validation as the files, and one that fails was
//! never saved (the api validates before it inserts).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{PARTS, TemplateError, TemplateStore};
use crate::amqp::Topology;
use crate::db::Db;

/// Routing key (on the events exchange) announcing a new template version.
pub const TEMPLATES_ROUTING_KEY: &str = "templates.changed";

/// The announcement: the newest version id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplatesChanged {
    pub marker: i64,
}

/// One template's parts as saved from the console, for one locale (`""`: the default
/// locale).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, QueryableByName)]
pub struct Version {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Text)]
    pub locale: String,
    #[diesel(sql_type = Text)]
    pub subject: String,
    #[diesel(sql_type = Text)]
    pub text: String,
    #[diesel(sql_type = Text)]
    pub html: String,
}

impl Version {
    /// The source of `part` (`subject`, `text` or `html`).
    pub fn part(&self, part: &str) -> &str {
        match part {
            "subject" => &self.subject,
            "text" => &self.text,
            _ => &self.html,
        }
    }
}

/// The versions that override files now: the newest of each template and locale, unless
/// that newest one is a revert. `marker` is the newest version id of all (0: none), which
/// says whether anything changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    pub marker: i64,
    pub versions: Vec<Version>,
}

impl Overlay {
    /// This overlay with `version` in place of the one of the same template and locale.
    pub fn with(&self, version: Version) -> Overlay {
        let mut out = self.without(&version.name, &version.locale);
        out.versions.push(version);
        out
    }

    /// This overlay without a version of `name` in `locale`.
    pub fn without(&self, name: &str, locale: &str) -> Overlay {
        Overlay {
            marker: self.marker,
            versions: self
                .versions
                .iter()
                .filter(|v| !(v.name == name && v.locale == locale))
                .cloned()
                .collect(),
        }
    }
}

/// Whether `name` can be a template's name: lower-case letters, digits, `_` and `-`, up to
/// 64 characters, starting with a letter or digit (it becomes a folder name), and neither
/// `partials` nor a name a locale folder could have (`en`, `sv`, `faq`).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name != "partials"
        && !super::store::locale_name(name)
}

/// The newest version id of all (0: none).
pub fn marker(conn: &mut PgConnection) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Marker {
        #[diesel(sql_type = BigInt)]
        marker: i64,
    }
    Ok(
        diesel::sql_query("SELECT COALESCE(max(id), 0) AS marker FROM template_versions")
            .get_result::<Marker>(conn)?
            .marker,
    )
}

/// The overlay in force now.
pub fn current(conn: &mut PgConnection) -> QueryResult<Overlay> {
    let marker = marker(conn)?;
    let versions = diesel::sql_query(
        "SELECT id, name, locale, subject, text, html FROM (
             SELECT DISTINCT ON (name, locale) id, name, locale, subject, text, html
             FROM template_versions ORDER BY name, locale, id DESC) newest
         WHERE subject IS NOT NULL ORDER BY name, locale",
    )
    .load::<Version>(conn)?;
    Ok(Overlay { marker, versions })
}

/// A copy of a templates folder with an overlay's versions written over it, removed when
/// dropped. Loading it is loading the files as they would be with the versions in place.
pub(super) struct Merged {
    path: PathBuf,
    original: PathBuf,
}

static MERGED: AtomicU64 = AtomicU64::new(0);

impl Merged {
    pub(super) fn build(
        dir: &Path,
        overlay: &Overlay,
        default_locale: &str,
    ) -> Result<Merged, TemplateError> {
        let path = std::env::temp_dir().join(format!(
            "tidings-templates-{}-{}",
            std::process::id(),
            MERGED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        let merged = Merged {
            path,
            original: dir.to_path_buf(),
        };
        write_tree(dir, overlay, default_locale, &merged.path)?;
        Ok(merged)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// `file` under the copy, as the same path under the original folder.
    pub(super) fn original(&self, file: &Path) -> PathBuf {
        match file.strip_prefix(&self.path) {
            Ok(rel) => self.original.join(rel),
            Err(_) => file.to_path_buf(),
        }
    }
}

/// Writes a copy of the templates folder `dir` to `to`, with `overlay`'s versions in place of
/// the files of the same templates: a folder that serves as the files and versions do
/// together (`tidings templates export`).
pub fn write_tree(
    dir: &Path,
    overlay: &Overlay,
    default_locale: &str,
    to: &Path,
) -> Result<(), TemplateError> {
    let failed = |e: std::io::Error| TemplateError::new(to, None, format!("cannot write: {e}"));
    copy_tree(dir, to).map_err(failed)?;
    for v in &overlay.versions {
        if !valid_name(&v.name) || !(v.locale.is_empty() || super::store::locale_name(&v.locale)) {
            return Err(TemplateError::new(
                Path::new(&v.name),
                None,
                format!("version {}: not a template name or locale", v.id),
            ));
        }
        // The default locale's templates live at the top level, or in its own folder.
        let folder = if v.locale.is_empty() {
            let own = to.join(default_locale).join(&v.name);
            if own.join("subject.hbs").exists() {
                own
            } else {
                to.join(&v.name)
            }
        } else {
            to.join(&v.locale).join(&v.name)
        };
        std::fs::create_dir_all(&folder).map_err(failed)?;
        for part in PARTS {
            std::fs::write(folder.join(format!("{part}.hbs")), v.part(part)).map_err(failed)?;
        }
    }
    Ok(())
}

impl Drop for Merged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Brings `store` to the newest versions now; returns whether it looked (a process calls it
/// before it serves, so its first email already uses them).
pub async fn look(store: &Arc<TemplateStore>, db: &Db) -> bool {
    let store = store.clone();
    let looked = db
        .run(move |conn| {
            let now = marker(conn)?;
            if now == store.overlay_marker() {
                return Ok(None);
            }
            let overlay = current(conn)?;
            Ok(Some(store.set_overlay(overlay)))
        })
        .await;
    match looked {
        Ok(Some(Ok(marker))) => {
            crate::observe::template_reload(true);
            info!(version = marker, "template versions loaded");
            true
        }
        Ok(Some(Err(e))) => {
            crate::observe::template_reload(false);
            error!(file = %e.file.display(), line = e.line, reason = %e.reason,
                "template versions rejected; the last good set keeps serving");
            true
        }
        Ok(None) => true,
        Err(e) => {
            warn!(error = %e, "template versions not read; trying again");
            false
        }
    }
}

/// Keeps `store` on the newest versions until `shutdown`: at once when a
/// `templates.changed` announcement arrives, and every `interval` in case one was lost.
pub fn follow(
    store: Arc<TemplateStore>,
    db: Db,
    amqp_url: String,
    topology: Topology,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let (wake, mut woken) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(listen(amqp_url, topology, wake, shutdown.clone()));
    tokio::spawn(async move {
        loop {
            look(&store, &db).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
                _ = woken.recv() => {}
            }
        }
    });
}

/// Listens for `templates.changed` on the events exchange and wakes [`follow`]; reconnects
/// after a failure (the periodic look covers the gap).
async fn listen(
    url: String,
    topology: Topology,
    wake: tokio::sync::mpsc::Sender<()>,
    shutdown: CancellationToken,
) {
    use futures_util::StreamExt;
    loop {
        let listened = async {
            let (_connection, _, mut consumer) = crate::amqp::subscribe(
                &url,
                "templates",
                &topology.events_exchange(),
                TEMPLATES_ROUTING_KEY,
            )
            .await?;
            // A version saved before this queue was bound was not heard: look once now.
            let _ = wake.try_send(());
            while let Some(delivery) = consumer.next().await {
                delivery?;
                let _ = wake.try_send(());
            }
            Ok::<_, crate::Error>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listened => if let Err(e) = r {
                warn!(error = %e, "template announcements not heard; looking periodically");
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_name_is_a_safe_folder_name_and_no_locale() {
        for good in ["notification", "survey_invite", "item-update", "a1b2", "x"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            "en",
            "sv",
            "faq",
            "pt-br",
            "partials",
            "../etc",
            "a/b",
            "Notification",
            "_x",
            "-x",
            "a b",
            "a\0b",
            &"x".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
