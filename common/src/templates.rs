//! Email templates: handlebars files admins edit, `<dir>/<name>/{subject,text,html}.hbs`
//! plus shared partials in `<dir>/partials/*.hbs`.
//!
//! Strict mode is on, so a misspelt variable is an error rather than an empty string. The HTML
//! part is HTML-escaped; the subject and the text part are not.

use std::path::{Path, PathBuf};

use handlebars::Handlebars;
use serde::Serialize;

/// The three parts every email template has.
pub const PARTS: [&str; 3] = ["subject", "text", "html"];

/// A template file that could not be loaded or rendered: names the file, line and reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("template {file}{}: {reason}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct TemplateError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub reason: String,
}

/// An email rendered from a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Every template under one folder, parsed and validated.
pub struct Templates {
    dir: PathBuf,
    html: Handlebars<'static>,
    plain: Handlebars<'static>,
}

impl Templates {
    /// Loads every template under `dir`; `required` names templates that must exist.
    pub fn load(dir: impl AsRef<Path>, required: &[&str]) -> Result<Self, TemplateError> {
        let dir = dir.as_ref().to_path_buf();
        let mut html = Handlebars::new();
        html.set_strict_mode(true);
        let mut plain = Handlebars::new();
        plain.set_strict_mode(true);
        plain.register_escape_fn(handlebars::no_escape);

        let entries = std::fs::read_dir(&dir).map_err(|e| TemplateError {
            file: dir.clone(),
            line: None,
            reason: format!("cannot read the templates folder: {e}"),
        })?;
        let mut names = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "partials" {
                for partial in sorted_files(&path)? {
                    let Some(stem) = hbs_stem(&partial) else {
                        continue;
                    };
                    let source = read(&partial)?;
                    for registry in [&mut html, &mut plain] {
                        registry
                            .register_partial(&stem, &source)
                            .map_err(|e| syntax_error(&partial, e))?;
                    }
                }
            } else {
                names.push((name, path));
            }
        }
        for (name, path) in &names {
            for part in PARTS {
                let file = path.join(format!("{part}.hbs"));
                let source = read(&file)?;
                let registry = if part == "html" {
                    &mut html
                } else {
                    &mut plain
                };
                registry
                    .register_template_string(&format!("{name}/{part}"), source)
                    .map_err(|e| syntax_error(&file, e))?;
            }
        }
        for name in required {
            if !names.iter().any(|(n, _)| n == name) {
                return Err(TemplateError {
                    file: dir.join(name),
                    line: None,
                    reason: "required template folder is missing".into(),
                });
            }
        }
        Ok(Templates { dir, html, plain })
    }

    /// Renders the template `name` with `data`.
    pub fn render(
        &self,
        name: &str,
        data: &impl Serialize,
    ) -> Result<RenderedEmail, TemplateError> {
        let part = |part: &str| {
            let registry = if part == "html" {
                &self.html
            } else {
                &self.plain
            };
            registry
                .render(&format!("{name}/{part}"), data)
                .map_err(|e| TemplateError {
                    file: self.dir.join(name).join(format!("{part}.hbs")),
                    line: e.line_no,
                    reason: e.reason().to_string(),
                })
        };
        let subject = part("subject")?;
        Ok(RenderedEmail {
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            text: part("text")?,
            html: part("html")?,
        })
    }
}

fn read(file: &Path) -> Result<String, TemplateError> {
    std::fs::read_to_string(file).map_err(|e| TemplateError {
        file: file.to_path_buf(),
        line: None,
        reason: format!("cannot read: {e}"),
    })
}

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>, TemplateError> {
    let entries = std::fs::read_dir(dir).map_err(|e| TemplateError {
        file: dir.to_path_buf(),
        line: None,
        reason: format!("cannot read: {e}"),
    })?;
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    Ok(files)
}

fn hbs_stem(path: &Path) -> Option<String> {
    (path.extension()? == "hbs")
        .then(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))?
}

fn syntax_error(file: &Path, e: handlebars::TemplateError) -> TemplateError {
    TemplateError {
        file: file.to_path_buf(),
        line: e.pos().map(|(line, _)| line),
        reason: e.reason().to_string(),
    }
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
        for (path, content) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        dir
    }

    #[test]
    fn m5_html_is_escaped_text_is_not() {
        let dir = folder(&[
            ("partials/footer.hbs", "-- {{product}}"),
            ("note/subject.hbs", "Hi {{name}}\n"),
            ("note/text.hbs", "{{body}}\n{{> footer}}"),
            ("note/html.hbs", "<p>{{body}}</p>"),
        ]);
        let t = Templates::load(&dir, &["note"]).unwrap();
        let out = t
            .render(
                "note",
                &json!({"name": "A & B", "body": "<b>x</b>", "product": "T"}),
            )
            .unwrap();
        assert_eq!(out.subject, "Hi A & B");
        assert_eq!(out.text, "<b>x</b>\n-- T");
        assert_eq!(out.html, "<p>&lt;b&gt;x&lt;/b&gt;</p>");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn m5_broken_file_is_named_with_its_line() {
        let dir = folder(&[
            ("note/subject.hbs", "ok"),
            ("note/text.hbs", "line one\n{{#if x}}never closed\n"),
            ("note/html.hbs", "ok"),
        ]);
        let err = Templates::load(&dir, &["note"]).err().unwrap();
        assert!(err.file.ends_with("note/text.hbs"), "{err}");
        assert!(err.line.is_some(), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_part_or_template_is_an_error() {
        let dir = folder(&[("note/subject.hbs", "ok"), ("note/text.hbs", "ok")]);
        let err = Templates::load(&dir, &["note"]).err().unwrap();
        assert!(err.file.ends_with("note/html.hbs"), "{err}");
        let err = Templates::load(&dir, &["other"]).err().unwrap();
        assert!(err.to_string().contains("html.hbs") || err.to_string().contains("other"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn strict_mode_rejects_unknown_variables() {
        let dir = folder(&[
            ("note/subject.hbs", "{{subjetc}}"),
            ("note/text.hbs", "ok"),
            ("note/html.hbs", "ok"),
        ]);
        let t = Templates::load(&dir, &[]).unwrap();
        let err = t.render("note", &json!({"subject": "x"})).unwrap_err();
        assert!(err.file.ends_with("note/subject.hbs"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
