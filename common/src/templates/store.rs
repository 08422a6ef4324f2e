//! Loading and validating a templates folder ([`Templates`]), and serving the last good set
//! with hot reload ([`TemplateStore`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use handlebars::Handlebars;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::guard::{Bounded, PartialGraph, Unsafe, check_nesting};
use super::versions::{Merged, Overlay};
use super::{PARTS, RenderedEmail, TemplateError, sample_data};

/// The templates of one locale: the default locale's, overlaid with the locale's own.
struct Locale {
    html: Handlebars<'static>,
    plain: Handlebars<'static>,
    /// Template name → the folder its files came from.
    sources: BTreeMap<String, PathBuf>,
}

/// Every template under one folder, parsed and validated.
pub struct Templates {
    default_locale: String,
    locales: BTreeMap<String, Locale>,
}

/// What one folder of the templates tree holds.
#[derive(Default)]
struct Tree {
    partials: Vec<PathBuf>,
    templates: BTreeMap<String, PathBuf>,
}

fn scan(dir: &Path, top: bool) -> Result<(Tree, BTreeMap<String, Tree>), TemplateError> {
    let mut tree = Tree::default();
    let mut locales = BTreeMap::new();
    for path in sorted_entries(dir)? {
        if !path.is_dir() {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == "partials" {
            tree.partials = sorted_entries(&path)?
                .into_iter()
                .filter(|p| hbs_stem(p).is_some())
                .collect();
        } else if path.join("subject.hbs").exists() {
            tree.templates.insert(name, path);
        } else if top && is_locale_name(&name) {
            locales.insert(name, scan(&path, false)?.0);
        } else {
            return Err(TemplateError::new(
                &path,
                None,
                "neither a template (no subject.hbs), nor partials, nor a locale folder",
            ));
        }
    }
    Ok((tree, locales))
}

/// `en`, `sv`, `pt-BR`, `zh-Hant`.
pub(super) fn locale_name(name: &str) -> bool {
    is_locale_name(name)
}

fn is_locale_name(name: &str) -> bool {
    let mut parts = name.split('-');
    let language = parts.next().unwrap_or_default();
    (2..=3).contains(&language.len())
        && language.chars().all(|c| c.is_ascii_lowercase())
        && parts.all(|p| (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

impl Templates {
    /// Loads and validates every template under `dir`. `default_locale` is the locale of the
    /// top-level template folders and the fallback of every other; `required` names templates
    /// the default locale must have.
    pub fn load(
        dir: impl AsRef<Path>,
        default_locale: &str,
        required: &[&str],
    ) -> Result<Self, TemplateError> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(TemplateError::new(
                dir,
                None,
                "the templates folder does not exist",
            ));
        }
        let templates = Templates::load_unchecked(dir, default_locale, required)?;
        match templates.render_samples().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(templates),
        }
    }

    /// Loads `dir` with `overlay`'s versions in place of the files of the same templates
    /// (the console's saved versions); errors name the files as if the versions were there.
    pub fn load_overlaid(
        dir: impl AsRef<Path>,
        overlay: &Overlay,
        default_locale: &str,
        required: &[&str],
    ) -> Result<Self, TemplateError> {
        let dir = dir.as_ref();
        if overlay.versions.is_empty() {
            return Templates::load(dir, default_locale, required);
        }
        let merged = Merged::build(dir, overlay, default_locale)?;
        match Templates::load(merged.path(), default_locale, required) {
            Ok(mut templates) => {
                for l in templates.locales.values_mut() {
                    for folder in l.sources.values_mut() {
                        *folder = merged.original(folder);
                    }
                }
                Ok(templates)
            }
            Err(e) => Err(TemplateError {
                file: merged.original(&e.file),
                ..e
            }),
        }
    }

    /// Every problem of `dir` with `overlay` in place (see [`Templates::check`]).
    pub fn check_overlaid(
        dir: impl AsRef<Path>,
        overlay: &Overlay,
        default_locale: &str,
        required: &[&str],
    ) -> Vec<TemplateError> {
        let dir = dir.as_ref();
        let merged = match Merged::build(dir, overlay, default_locale) {
            Ok(merged) => merged,
            Err(e) => return vec![e],
        };
        Templates::check(merged.path(), default_locale, required)
            .into_iter()
            .map(|e| TemplateError {
                file: merged.original(&e.file),
                ..e
            })
            .collect()
    }

    /// Every problem in the templates under `dir`, one per broken file where possible: each
    /// file's syntax on its own first, then each template rendered with its sample data.
    pub fn check(
        dir: impl AsRef<Path>,
        default_locale: &str,
        required: &[&str],
    ) -> Vec<TemplateError> {
        let dir = dir.as_ref();
        let mut errors = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        let mut files = Vec::new();
        while let Some(d) = stack.pop() {
            for path in sorted_entries(&d).unwrap_or_default() {
                if path.is_dir() {
                    stack.push(path);
                } else if hbs_stem(&path).is_some() {
                    files.push(path);
                }
            }
        }
        files.sort();
        for file in files {
            match read(&file) {
                Ok(source) => {
                    if let Err(e) = handlebars::Template::compile(&source) {
                        errors.push(syntax_error(&file, e));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return errors;
        }
        let mut strict = Vec::new();
        match Templates::load_unchecked(dir, default_locale, required) {
            Err(e) => errors.push(e),
            Ok(t) => strict = t.render_samples(),
        }
        for e in strict {
            if !errors
                .iter()
                .any(|seen: &TemplateError| seen.file == e.file)
            {
                errors.push(e);
            }
        }
        errors
    }

    /// Parses and registers every file, without rendering the samples.
    fn load_unchecked(
        dir: &Path,
        default_locale: &str,
        required: &[&str],
    ) -> Result<Self, TemplateError> {
        let (top, mut trees) = scan(dir, true)?;
        let default_tree = trees.remove(default_locale).unwrap_or_default();
        let mut base_templates = top.templates.clone();
        base_templates.extend(default_tree.templates);
        let mut base_partials = top.partials.clone();
        base_partials.extend(default_tree.partials);
        for name in required {
            if !base_templates.contains_key(*name) {
                return Err(TemplateError::new(
                    &dir.join(name),
                    None,
                    format!("required template is missing for the default locale {default_locale}"),
                ));
            }
        }
        let mut locales = BTreeMap::new();
        locales.insert(
            default_locale.to_string(),
            build_locale(&base_partials, &base_templates)?,
        );
        for (locale, tree) in trees {
            let mut partials = base_partials.clone();
            partials.extend(tree.partials);
            let mut templates = base_templates.clone();
            templates.extend(tree.templates);
            locales.insert(locale, build_locale(&partials, &templates)?);
        }
        Ok(Templates {
            default_locale: default_locale.to_string(),
            locales,
        })
    }

    /// Renders every template of every locale with its sample data; returns the failures.
    fn render_samples(&self) -> Vec<TemplateError> {
        let mut errors = Vec::new();
        for (locale, l) in &self.locales {
            for name in l.sources.keys() {
                if let Err(e) = self.render(name, Some(locale), &sample_data(name))
                    && !errors
                        .iter()
                        .any(|seen: &TemplateError| seen.file == e.file)
                {
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// The locale `requested` resolves to: itself, its language (`sv-FI` → `sv`), or the
    /// default locale.
    pub fn resolve_locale(&self, requested: Option<&str>) -> &str {
        let Some(requested) = requested else {
            return &self.default_locale;
        };
        let language = requested.split('-').next().unwrap_or_default();
        for candidate in [requested, language] {
            if let Some((key, _)) = self.locales.get_key_value(candidate) {
                return key;
            }
        }
        &self.default_locale
    }

    /// Every locale and the templates it has (its own and inherited).
    pub fn catalogue(&self) -> BTreeMap<String, Vec<String>> {
        self.locales
            .iter()
            .map(|(locale, l)| (locale.clone(), l.sources.keys().cloned().collect()))
            .collect()
    }

    /// Whether the default locale has a template called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.locales
            .get(&self.default_locale)
            .is_some_and(|l| l.sources.contains_key(name))
    }

    /// Renders the template `name` in `locale` (with fallback) with `data`.
    pub fn render(
        &self,
        name: &str,
        locale: Option<&str>,
        data: &impl Serialize,
    ) -> Result<RenderedEmail, TemplateError> {
        let locale = self.resolve_locale(locale).to_string();
        let l = &self.locales[&locale];
        let Some(folder) = l.sources.get(name) else {
            return Err(TemplateError::new(
                Path::new(name),
                None,
                "no such template",
            ));
        };
        // One copy of the data for all three parts (each render_to_write would copy it).
        let context = handlebars::Context::wraps(data).map_err(|e| TemplateError {
            file: folder.clone(),
            line: None,
            column: None,
            reason: e.reason().to_string(),
        })?;
        let part = |part: &str| {
            let registry = if part == "html" { &l.html } else { &l.plain };
            let mut out = Bounded::default();
            registry
                .render_with_context_to_write(&format!("{name}/{part}"), &context, &mut out)
                .map(|()| out.into_string())
                .map_err(|e| TemplateError {
                    file: e
                        .template_name
                        .as_deref()
                        .filter(|t| !t.contains('/'))
                        .map(|partial| PathBuf::from(format!("partials/{partial}.hbs")))
                        .unwrap_or_else(|| folder.join(format!("{part}.hbs"))),
                    line: e.line_no,
                    column: e.column_no,
                    reason: e.reason().to_string(),
                })
        };
        let subject = part("subject")?;
        Ok(RenderedEmail {
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            text: part("text")?,
            html: part("html")?,
            locale,
        })
    }
}

fn build_locale(
    partials: &[PathBuf],
    templates: &BTreeMap<String, PathBuf>,
) -> Result<Locale, TemplateError> {
    let mut html = Handlebars::new();
    html.set_strict_mode(true);
    let mut plain = Handlebars::new();
    plain.set_strict_mode(true);
    plain.register_escape_fn(handlebars::no_escape);
    for partial in partials {
        let Some(stem) = hbs_stem(partial) else {
            continue;
        };
        let source = read(partial)?;
        check_nesting(&stem, &source).map_err(|e| TemplateError::new(partial, e.line, e.reason))?;
        for registry in [&mut html, &mut plain] {
            registry
                .register_partial(&stem, &source)
                .map_err(|e| syntax_error(partial, e))?;
        }
    }
    for (name, folder) in templates {
        for part in PARTS {
            let file = folder.join(format!("{part}.hbs"));
            let source = read(&file)?;
            check_nesting(name, &source)
                .map_err(|e| TemplateError::new(&file, e.line, e.reason))?;
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
    for registry in [&html, &plain] {
        let mut graph = PartialGraph::default();
        for (name, template) in registry.get_templates() {
            graph
                .add(name, template)
                .map_err(|e| unsafe_template(&e, templates))?;
        }
        if let Some(cycle) = graph.cycle() {
            return Err(unsafe_template(&cycle, templates));
        }
    }
    Ok(Locale {
        html,
        plain,
        sources: templates.clone(),
    })
}

/// The file a registered template name comes from: `name/part` is a template's part, anything
/// else a partial.
fn file_of(name: &str, templates: &BTreeMap<String, PathBuf>) -> PathBuf {
    match name.split_once('/') {
        Some((template, part)) => templates
            .get(template)
            .map(|folder| folder.join(format!("{part}.hbs")))
            .unwrap_or_else(|| PathBuf::from(name)),
        None => PathBuf::from(format!("partials/{name}.hbs")),
    }
}

fn unsafe_template(e: &Unsafe, templates: &BTreeMap<String, PathBuf>) -> TemplateError {
    TemplateError::new(&file_of(&e.template, templates), e.line, e.reason.clone())
}

fn read(file: &Path) -> Result<String, TemplateError> {
    std::fs::read_to_string(file)
        .map_err(|e| TemplateError::new(file, None, format!("cannot read: {e}")))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, TemplateError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| TemplateError::new(dir, None, format!("cannot read: {e}")))?;
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
        column: e.pos().map(|(_, column)| column),
        ..TemplateError::new(file, e.pos().map(|(line, _)| line), e.reason().to_string())
    }
}

/// The current good set of templates, reloaded when files change or a new version is saved
/// from the console.
pub struct TemplateStore {
    dir: PathBuf,
    default_locale: String,
    required: Vec<String>,
    current: RwLock<Arc<Templates>>,
    /// Fingerprint of the files last looked at, and whether they were good.
    seen: Mutex<u64>,
    /// The console's versions over the files (see [`super::versions`]).
    overlay: Mutex<Overlay>,
}

impl TemplateStore {
    /// Loads the templates; fails on a broken set (a role must not start without good templates).
    pub fn open(
        dir: impl AsRef<Path>,
        default_locale: &str,
        required: &[&str],
    ) -> Result<Self, TemplateError> {
        let dir = dir.as_ref().to_path_buf();
        let fingerprint = fingerprint(&dir);
        let templates = Templates::load(&dir, default_locale, required)?;
        Ok(TemplateStore {
            dir,
            default_locale: default_locale.to_string(),
            required: required.iter().map(|s| s.to_string()).collect(),
            current: RwLock::new(Arc::new(templates)),
            seen: Mutex::new(fingerprint),
            overlay: Mutex::new(Overlay::default()),
        })
    }

    /// The shipped templates folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn default_locale(&self) -> &str {
        &self.default_locale
    }

    /// The templates the default locale must have.
    pub fn required(&self) -> Vec<&str> {
        self.required.iter().map(String::as_str).collect()
    }

    /// The console's versions serving now.
    pub fn overlay(&self) -> Overlay {
        self.overlay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The newest version id this store has looked at (0: none).
    pub fn overlay_marker(&self) -> i64 {
        self.overlay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .marker
    }

    /// Serves `overlay`'s versions over the files from now on, if they load; returns its
    /// marker. A set that fails keeps the previous one serving (and is not tried again until
    /// a newer version or a file changes).
    pub fn set_overlay(&self, overlay: Overlay) -> Result<i64, TemplateError> {
        let marker = overlay.marker;
        let loaded =
            Templates::load_overlaid(&self.dir, &overlay, &self.default_locale, &self.required());
        *self.overlay.lock().unwrap_or_else(|p| p.into_inner()) = overlay;
        let templates = loaded?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(templates);
        Ok(marker)
    }

    /// The set serving now.
    pub fn current(&self) -> Arc<Templates> {
        self.current
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Looks for changed files; loads them if so. Returns `None` when nothing changed,
    /// `Some(Ok)` when a new set now serves, `Some(Err)` when the change was rejected and the
    /// previous set keeps serving. A rejected change is reported once, not on every look.
    pub fn reload_if_changed(&self) -> Option<Result<(), TemplateError>> {
        let now = fingerprint(&self.dir);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        let overlay = self.overlay();
        Some(
            Templates::load_overlaid(&self.dir, &overlay, &self.default_locale, &self.required())
                .map(|templates| {
                    let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                    *current = Arc::new(templates);
                }),
        )
    }

    /// Watches the folder every `interval` until `shutdown`, logging each reload or rejection.
    pub fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                let this = self.clone();
                let outcome = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
                match outcome {
                    Ok(Some(Ok(()))) => {
                        crate::observe::template_reload(true);
                        info!(dir = %self.dir.display(), "templates reloaded")
                    }
                    Ok(Some(Err(e))) => {
                        crate::observe::template_reload(false);
                        error!(
                            file = %e.file.display(),
                            line = e.line,
                            reason = %e.reason,
                            "template change rejected; the last good version keeps serving"
                        )
                    }
                    _ => {}
                }
            }
        });
    }
}

/// A hash of every file's path, size and modification time under `dir`.
fn fingerprint(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = BTreeSet::new();
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else {
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .unwrap_or_default();
                files.insert((path, meta.len(), modified));
            }
        }
    }
    files.hash(&mut hasher);
    hasher.finish()
}
