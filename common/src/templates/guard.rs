//! Guards against a template that would never finish rendering: partials that include each
//! other (directly, through inline partials, or through a chain) are found before a template
//! is accepted, and one render may write only so much.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};

use handlebars::Template;
use handlebars::template::{Parameter, TemplateElement};
use serde_json::Value;

/// Most bytes one render of one part may write. A template that writes more (a partial
/// repeated exponentially, say) fails to render instead of filling memory.
pub const RENDER_LIMIT: usize = 1 << 20;

/// Partial name handlebars gives the content of a partial block.
const PARTIAL_BLOCK: &str = "@partial-block";

/// Which partial each template and inline partial includes, and on which line.
#[derive(Debug, Default)]
pub struct PartialGraph {
    includes: BTreeMap<String, BTreeMap<String, usize>>,
    /// The registered template each inline partial is written in.
    owners: BTreeMap<String, String>,
}

/// A partial cycle or an include the guard cannot follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsafe {
    /// The template (or inline partial) holding the include.
    pub template: String,
    pub line: Option<usize>,
    pub reason: String,
}

impl PartialGraph {
    /// Adds `template`, registered as `name`, and the inline partials it defines.
    pub fn add(&mut self, name: &str, template: &Template) -> Result<(), Unsafe> {
        let mut uses = BTreeMap::new();
        self.walk(name, template, &mut uses)?;
        self.includes
            .entry(name.to_string())
            .or_default()
            .extend(uses);
        Ok(())
    }

    fn walk(
        &mut self,
        name: &str,
        template: &Template,
        uses: &mut BTreeMap<String, usize>,
    ) -> Result<(), Unsafe> {
        for (i, element) in template.elements.iter().enumerate() {
            let line = template.mapping.get(i).map(|m| m.0);
            match element {
                TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d) => {
                    let Some(partial) = d.name.as_name() else {
                        return Err(Unsafe {
                            template: name.to_string(),
                            line,
                            reason: "a partial's name must be written out, not computed".into(),
                        });
                    };
                    if partial != PARTIAL_BLOCK {
                        uses.entry(partial.to_string()).or_insert(line.unwrap_or(0));
                    }
                    if let Some(inner) = &d.template {
                        self.walk(name, inner, uses)?;
                    }
                }
                TemplateElement::DecoratorBlock(d) | TemplateElement::DecoratorExpression(d)
                    if d.name.as_name() == Some("inline") =>
                {
                    let Some(Parameter::Literal(Value::String(inline))) = d.params.first() else {
                        return Err(Unsafe {
                            template: name.to_string(),
                            line,
                            reason: "an inline partial's name must be a quoted string".into(),
                        });
                    };
                    let owner = self.owner(name);
                    self.owners.insert(inline.clone(), owner);
                    let mut inner_uses = BTreeMap::new();
                    if let Some(body) = &d.template {
                        self.walk(inline, body, &mut inner_uses)?;
                    }
                    self.includes
                        .entry(inline.clone())
                        .or_default()
                        .extend(inner_uses);
                }
                TemplateElement::DecoratorBlock(d) => {
                    if let Some(inner) = &d.template {
                        self.walk(name, inner, uses)?;
                    }
                }
                TemplateElement::HelperBlock(h) => {
                    for inner in [&h.template, &h.inverse].into_iter().flatten() {
                        self.walk(name, inner, uses)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The registered template `node` is written in.
    fn owner(&self, node: &str) -> String {
        self.owners
            .get(node)
            .cloned()
            .unwrap_or_else(|| node.to_string())
    }

    /// The first cycle of partials including each other, if there is one; it names the
    /// registered template holding the include that closes it.
    pub fn cycle(&self) -> Option<Unsafe> {
        let mut done = BTreeSet::new();
        for start in self.includes.keys() {
            let mut path = Vec::new();
            if let Some(found) = self.visit(start, &mut path, &mut done) {
                return Some(found);
            }
        }
        None
    }

    fn visit<'a>(
        &'a self,
        node: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Unsafe> {
        if done.contains(node) {
            return None;
        }
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut chain: Vec<&str> = path[at..].to_vec();
            chain.push(node);
            let from = path[path.len() - 1];
            return Some(Unsafe {
                template: self.owner(from),
                line: self.includes[from].get(node).copied(),
                reason: format!(
                    "partials include each other without end: {}",
                    chain.join(" > ")
                ),
            });
        }
        path.push(node);
        for next in self.includes.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(found) = self.visit(next, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
}

/// The name a template source rendered on its own is registered under, so an include of that
/// name is seen as the template including itself.
const LONE: &str = "template";

/// Deepest nesting of blocks a template may have: parsing and rendering recurse once per
/// level, and a few thousand levels overflow a thread's stack.
pub const MAX_NESTING: usize = 64;

/// Refuses a source whose blocks nest deeper than [`MAX_NESTING`], before it is parsed. Every
/// `{{#`, `{{^` (not `{{^}}`) and `{{~#` opens a level and every `{{/` closes one; counting a
/// little generously only ever refuses more.
pub fn check_nesting(name: &str, source: &str) -> Result<(), Unsafe> {
    let bytes = source.as_bytes();
    let (mut depth, mut line, mut i) = (0usize, 1usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => line += 1,
            b'{' if bytes[i..].starts_with(b"{{") => {
                let mut j = i + 2;
                if bytes.get(j) == Some(&b'~') {
                    j += 1;
                }
                match bytes.get(j) {
                    Some(b'#') => depth += 1,
                    Some(b'^') if !bytes[j..].starts_with(b"^}}") => depth += 1,
                    Some(b'/') => depth = depth.saturating_sub(1),
                    _ => {}
                }
                if depth > MAX_NESTING {
                    return Err(Unsafe {
                        template: name.to_string(),
                        line: Some(line),
                        reason: format!("blocks nest deeper than {MAX_NESTING} levels"),
                    });
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// A template source that is safe to render on its own: its blocks nest at most
/// [`MAX_NESTING`] deep, it compiles, and no partial it defines includes itself, nor does it
/// include itself.
pub fn check_source(source: &str) -> Result<Template, Unsafe> {
    check_nesting(LONE, source)?;
    let template = Template::compile(source).map_err(|e| Unsafe {
        template: LONE.into(),
        line: e.pos().map(|(line, _)| line),
        reason: e.reason().to_string(),
    })?;
    let mut graph = PartialGraph::default();
    graph.add(LONE, &template)?;
    match graph.cycle() {
        Some(found) => Err(found),
        None => Ok(template),
    }
}

/// Renders a template source on its own (an automation's message body): checked by
/// [`check_source`], strict, without HTML escaping, and bounded by [`RENDER_LIMIT`].
pub fn render_source(source: &str, data: &impl serde::Serialize) -> Result<String, String> {
    let template = check_source(source).map_err(|e| e.to_string())?;
    let mut registry = handlebars::Handlebars::new();
    registry.set_strict_mode(true);
    registry.register_escape_fn(handlebars::no_escape);
    registry.register_template(LONE, template);
    let mut out = Bounded::default();
    registry
        .render_to_write(LONE, data, &mut out)
        .map_err(|e| e.to_string())?;
    Ok(out.into_string())
}

/// Collects rendered output up to [`RENDER_LIMIT`] bytes.
#[derive(Default)]
pub struct Bounded(pub Vec<u8>);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > RENDER_LIMIT {
            return Err(io::Error::other(format!(
                "the rendered text is over {RENDER_LIMIT} bytes"
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Bounded {
    pub fn into_string(self) -> String {
        // Handlebars writes only UTF-8 strings, each whole.
        String::from_utf8(self.0).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }
}

impl std::fmt::Display for Unsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} (line {line}): {}", self.template, self.reason),
            None => write!(f, "{}: {}", self.template, self.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recursive_inline_partial_is_found() {
        let found = check_source(r#"{{#*inline "p"}}x{{> p}}{{/inline}}{{> p}}"#).unwrap_err();
        assert!(found.reason.contains("p > p"), "{found}");
    }

    #[test]
    fn partials_including_each_other_are_found_with_the_line() {
        let mut graph = PartialGraph::default();
        let a = Template::compile("a\n{{#if x}}{{> b}}{{/if}}").unwrap();
        let b = Template::compile("{{#each y}}\n\n{{> a}}{{/each}}").unwrap();
        let top = Template::compile("{{> a}}").unwrap();
        graph.add("top", &top).unwrap();
        graph.add("a", &a).unwrap();
        graph.add("b", &b).unwrap();
        let found = graph.cycle().unwrap();
        assert_eq!(
            found.reason,
            "partials include each other without end: a > b > a"
        );
        assert_eq!((found.template.as_str(), found.line), ("b", Some(3)));
    }

    #[test]
    fn a_partial_used_twice_is_not_a_cycle_and_a_computed_name_is_refused() {
        assert!(check_source(r#"{{#*inline "p"}}x{{/inline}}{{> p}}{{> p}}"#).is_ok());
        assert!(check_source(r#"{{> (lookup . "name")}}"#).is_err());
    }

    #[test]
    fn a_template_including_itself_by_its_own_name_is_refused() {
        // Found by fuzzing: the name the source is registered under is a partial name too.
        let found = check_source(r#"x{{> template}}"#).unwrap_err();
        assert!(found.reason.contains("template > template"), "{found}");
        assert!(render_source(r#"{{#*inline "p"}}{{> template}}{{/inline}}{{> p}}"#, &()).is_err());
        assert_eq!(
            render_source("Hi {{name}}", &serde_json::json!({"name": "Ann"})).unwrap(),
            "Hi Ann"
        );
    }

    #[test]
    fn deep_nesting_is_refused_before_it_can_overflow_the_stack() {
        let nested = |n: usize| "{{#each items}}".repeat(n) + "x" + &"{{/each}}".repeat(n);
        assert!(check_source(&nested(MAX_NESTING)).is_ok());
        // The deepest allowed template renders all the way down on a 2 MiB stack (a tokio
        // worker's), in a debug build.
        let deepest = "{{#if a}}".repeat(MAX_NESTING) + "x" + &"{{/if}}".repeat(MAX_NESTING);
        let rendered = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || render_source(&deepest, &serde_json::json!({"a": true})))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(rendered.as_deref(), Ok("x"));
        let found = check_source(&("\n".to_string() + &nested(5000))).unwrap_err();
        assert_eq!(found.line, Some(2));
        assert!(found.reason.contains("deeper than 64"), "{found}");
        // Siblings are not nesting, and an else is no block.
        let siblings = "{{#if a}}x{{else}}y{{/if}}{{^}}".repeat(500);
        assert!(check_nesting("t", &siblings).is_ok());
    }

    #[test]
    fn output_over_the_limit_is_an_error() {
        let mut out = Bounded::default();
        assert!(out.write_all(&vec![b'x'; RENDER_LIMIT]).is_ok());
        assert!(out.write_all(b"y").is_err());
    }
}
