//! Email templates: handlebars files admins edit (SPEC M5).
//!
//! ```text
//! templates/
//!   partials/*.hbs                      shared partials (the HTML layout, the footer)
//!   <name>/{subject,text,html}.hbs      templates of the default locale
//!   <locale>/<name>/{subject,text,html}.hbs
//!   <locale>/partials/*.hbs             a locale's own partials, overriding the shared ones
//! ```
//!
//! A folder holding `subject.hbs` is a template; `partials` holds partials; any other folder is
//! a locale (`en`, `sv`, `pt-BR`). A locale sees every template of the default locale unless it
//! has its own, so a missing translation falls back to the default locale.
//!
//! Strict mode is on, so a misspelt variable is an error rather than an empty string. The HTML
//! part is HTML-escaped; the subject and the text part are not. Loading validates everything:
//! each file must parse, and each template must render with sample data of its kind
//! ([`sample_data`]), so a broken file is caught before any email needs it.
//!
//! [`TemplateStore`] serves the last good set and reloads it when a file changes; a broken
//! edit is logged with its file, line and reason, and the previous version keeps serving.

pub mod guard;
mod samples;
mod store;
pub mod versions;

use std::path::{Path, PathBuf};

pub use samples::sample_data;
pub use store::{TemplateStore, Templates};
pub use versions::{Overlay, Version};

/// The three parts every email template has.
pub const PARTS: [&str; 3] = ["subject", "text", "html"];

/// A template file that could not be loaded or rendered: names the file, line and reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("template {file}{}: {reason}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct TemplateError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// The column on `line`, where the parser or renderer says.
    pub column: Option<usize>,
    pub reason: String,
}

impl TemplateError {
    fn new(file: &Path, line: Option<usize>, reason: impl Into<String>) -> Self {
        TemplateError {
            file: file.to_path_buf(),
            line,
            column: None,
            reason: reason.into(),
        }
    }
}

/// An email rendered from a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The locale whose files rendered it (after fallback).
    pub locale: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn folder(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tidings-templates-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        write(&dir, files);
        dir
    }

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (path, content) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
    }

    const WELCOME: [(&str, &str); 4] = [
        ("partials/footer.hbs", "-- {{recipient.name}}"),
        ("welcome/subject.hbs", "Welcome {{recipient.name}}\n"),
        ("welcome/text.hbs", "Hello {{recipient.name}}\n{{> footer}}"),
        ("welcome/html.hbs", "<p>Hello {{recipient.name}}</p>"),
    ];

    #[test]
    fn m5_html_is_escaped_text_is_not() {
        let dir = folder(&WELCOME);
        let t = Templates::load(&dir, "en", &["welcome"]).unwrap();
        let out = t
            .render("welcome", None, &json!({"recipient": {"name": "A & <B>"}}))
            .unwrap();
        assert_eq!(out.subject, "Welcome A & <B>");
        assert_eq!(out.text, "Hello A & <B>\n-- A & <B>");
        assert_eq!(out.html, "<p>Hello A &amp; &lt;B&gt;</p>");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn m5_broken_file_is_named_with_its_line() {
        let dir = folder(&WELCOME);
        write(
            &dir,
            &[("welcome/text.hbs", "line one\n{{#if x}}never closed\n")],
        );
        let err = Templates::load(&dir, "en", &[]).err().unwrap();
        assert!(err.file.ends_with("welcome/text.hbs"), "{err}");
        assert!(err.line.is_some(), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn m5_unknown_variable_is_caught_at_load() {
        let dir = folder(&WELCOME);
        write(
            &dir,
            &[
                ("sv/welcome/subject.hbs", "Välkommen {{recipient.nmae}}"),
                ("sv/welcome/text.hbs", "Hej"),
                ("sv/welcome/html.hbs", "Hej"),
            ],
        );
        let err = Templates::load(&dir, "en", &[]).err().unwrap();
        assert!(err.file.ends_with("sv/welcome/subject.hbs"), "{err}");
        assert!(err.reason.contains("nmae"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_part_or_required_template_is_an_error() {
        let dir = folder(&[("welcome/subject.hbs", "ok"), ("welcome/text.hbs", "ok")]);
        let err = Templates::load(&dir, "en", &[]).err().unwrap();
        assert!(err.file.ends_with("welcome/html.hbs"), "{err}");
        std::fs::write(dir.join("welcome/html.hbs"), "ok").unwrap();
        let err = Templates::load(&dir, "en", &["other"]).err().unwrap();
        assert!(err.file.ends_with("other"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn m5_locale_falls_back_to_language_then_default() {
        let dir = folder(&WELCOME);
        write(
            &dir,
            &[
                ("sv/welcome/subject.hbs", "Välkommen {{recipient.name}}"),
                (
                    "sv/welcome/text.hbs",
                    "Hej {{recipient.name}}\n{{> footer}}",
                ),
                ("sv/welcome/html.hbs", "<p>Hej {{recipient.name}}</p>"),
                ("sv/partials/footer.hbs", "-- hälsningar"),
                ("sv/other/subject.hbs", "Bara svenska"),
                ("sv/other/text.hbs", "x"),
                ("sv/other/html.hbs", "x"),
            ],
        );
        let t = Templates::load(&dir, "en", &["welcome"]).unwrap();
        let data = json!({"recipient": {"name": "Ada"}});
        let sv = t.render("welcome", Some("sv"), &data).unwrap();
        assert_eq!(
            (sv.subject.as_str(), sv.locale.as_str()),
            ("Välkommen Ada", "sv")
        );
        assert_eq!(sv.text, "Hej Ada\n-- hälsningar");
        let sv_fi = t.render("welcome", Some("sv-FI"), &data).unwrap();
        assert_eq!(sv_fi.locale, "sv");
        let de = t.render("welcome", Some("de"), &data).unwrap();
        assert_eq!(
            (de.subject.as_str(), de.locale.as_str()),
            ("Welcome Ada", "en")
        );
        assert_eq!(de.text, "Hello Ada\n-- Ada");
        // A template only Swedish has is not served to other locales.
        assert!(t.render("other", Some("sv"), &data).is_ok());
        assert!(t.render("other", Some("en"), &data).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn m5_broken_edit_keeps_the_last_good_version_serving() {
        let dir = folder(&WELCOME);
        let store = TemplateStore::open(&dir, "en", &["welcome"]).unwrap();
        let data = json!({"recipient": {"name": "Ada"}});
        assert_eq!(store.reload_if_changed().map(|r| r.is_ok()), None);

        // A good edit takes effect without a restart.
        std::fs::write(
            dir.join("welcome/subject.hbs"),
            "Hi {{recipient.name}}, welcome",
        )
        .unwrap();
        assert!(matches!(store.reload_if_changed(), Some(Ok(()))));
        let out = store.current().render("welcome", None, &data).unwrap();
        assert_eq!(out.subject, "Hi Ada, welcome");

        // A broken edit is rejected with its file and line; the previous version serves on.
        std::fs::write(dir.join("welcome/html.hbs"), "<p>\n{{#each}}</p>").unwrap();
        let err = store.reload_if_changed().unwrap().unwrap_err();
        assert!(err.file.ends_with("welcome/html.hbs"), "{err}");
        assert_eq!(err.line, Some(2), "{err}");
        let out = store.current().render("welcome", None, &data).unwrap();
        assert_eq!(out.html, "<p>Hello Ada</p>");
        assert_eq!(out.subject, "Hi Ada, welcome");
        // Reported once, not on every look.
        assert!(store.reload_if_changed().is_none());

        // Fixing it takes effect.
        std::fs::write(dir.join("welcome/html.hbs"), "<p>Hi {{recipient.name}}</p>").unwrap();
        assert!(matches!(store.reload_if_changed(), Some(Ok(()))));
        let out = store.current().render("welcome", None, &data).unwrap();
        assert_eq!(out.html, "<p>Hi Ada</p>");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn shipped_templates_load_in_every_locale() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
        let t = Templates::load(&dir, "en", &crate::REQUIRED_TEMPLATES).unwrap();
        let catalogue = t.catalogue();
        assert!(catalogue.contains_key("sv"), "{catalogue:?}");
        for name in crate::REQUIRED_TEMPLATES {
            let en = t.render(name, Some("en"), &sample_data(name)).unwrap();
            let sv = t.render(name, Some("sv"), &sample_data(name)).unwrap();
            assert_eq!(sv.locale, "sv");
            assert_ne!(en.subject, sv.subject, "{name} has no Swedish subject");
        }
    }
}
