//! A regex over a request path and a template filled from its capture groups (`$1`,
//! `${name}`, `$$` for a `$`), shared by `rewrite` and `redirect`. Both halves are compiled
//! and checked against each other once per config snapshot: a template never names a group
//! its pattern lacks, and its text holds only characters a URI may carry.

use regex::Regex;
use std::fmt::Write;

/// A compiled pattern and the template its matches fill.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    pattern: Regex,
    parts: Box<[Part]>,
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    /// Text copied as written.
    Text(Box<str>),
    /// The text of a capture group (empty when the group took no part in the match).
    Group(usize),
}

impl PartialEq for PathTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.pattern.as_str() == other.pattern.as_str() && self.parts == other.parts
    }
}

/// Why a pattern and its template do not compile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    /// The pattern is not a regex (the `regex` crate's own explanation).
    #[error("not a valid regex: {0}")]
    Pattern(String),
    /// A `$` that names nothing.
    #[error("a '$' must name a group ($1, ${{name}}); write $$ for a '$'")]
    LoneDollar,
    /// `${` without its `}`.
    #[error("'${{' is not closed by '}}'")]
    Unclosed,
    /// A reference to a group the pattern does not have.
    #[error("names the group {0:?}, which the pattern does not have")]
    NoSuchGroup(String),
    /// A character no URI may hold, or a `%` not followed by two hex digits.
    #[error("{0:?} cannot appear in a URI (percent-encode it)")]
    NotUri(char),
}

impl PathTemplate {
    /// Compiles `pattern` and checks `template` against it. The error is the pattern's
    /// ([`TemplateError::Pattern`]) or the template's (every other kind).
    pub fn new(pattern: &str, template: &str) -> Result<Self, TemplateError> {
        let pattern = Regex::new(pattern).map_err(|e| TemplateError::Pattern(e.to_string()))?;
        let parts = parse(template, &pattern)?;
        Ok(PathTemplate { pattern, parts })
    }

    /// The template's text before its first group reference.
    pub fn leading_text(&self) -> &str {
        match self.parts.first() {
            Some(Part::Text(text)) => text,
            _ => "",
        }
    }

    /// Whether the template names any group.
    pub fn has_groups(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Group(_)))
    }

    /// Whether any text the template copies as written contains `c`.
    pub fn text_contains(&self, c: char) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Text(text) if text.contains(c)))
    }

    /// When the pattern matches `path`, appends the filled template to `out`, each group's
    /// text through `group` (which may escape it), and returns `true`.
    pub fn fill(&self, path: &str, out: &mut String, group: impl Fn(&str, &mut String)) -> bool {
        let Some(captures) = self.pattern.captures(path) else {
            return false;
        };
        for part in self.parts.iter() {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Group(i) => group(captures.get(*i).map_or("", |m| m.as_str()), out),
            }
        }
        true
    }
}

/// The parts of `template`, whose references must name groups of `pattern`.
fn parse(template: &str, pattern: &Regex) -> Result<Box<[Part]>, TemplateError> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        text.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            text.push('$');
            rest = after;
            continue;
        }
        let (name, after) = match rest.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').ok_or(TemplateError::Unclosed)?;
                (&braced[..end], &braced[end + 1..])
            }
            None => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                rest.split_at(end)
            }
        };
        if name.is_empty() {
            return Err(TemplateError::LoneDollar);
        }
        let index = match name.parse::<usize>() {
            Ok(n) if n < pattern.captures_len() => n,
            Ok(_) => return Err(TemplateError::NoSuchGroup(name.into())),
            Err(_) => pattern
                .capture_names()
                .position(|n| n == Some(name))
                .ok_or_else(|| TemplateError::NoSuchGroup(name.into()))?,
        };
        if !text.is_empty() {
            parts.push(Part::Text(std::mem::take(&mut text).into()));
        }
        parts.push(Part::Group(index));
        rest = after;
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text.into()));
    }
    for part in &parts {
        if let Part::Text(text) = part {
            uri_text(text)?;
        }
    }
    Ok(parts.into_boxed_slice())
}

/// Checks that `text` may stand in a URI as written: printable ASCII other than space and
/// `"<>\^`{|}`, every `%` starting an escape.
fn uri_text(text: &str) -> Result<(), TemplateError> {
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        let fits = c.is_ascii_graphic() && !"\"<>\\^`{|}".contains(c);
        let escape_ok = c != '%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit));
        if !fits || !escape_ok {
            return Err(TemplateError::NotUri(c));
        }
    }
    Ok(())
}

/// What a URI built from request text escapes: controls, space, non-ASCII, `#` and the
/// characters RFC 3986 never allows (`"<>\^`{|}`); `%` escapes are already well-formed in
/// a canonical path, and `/?&=` keep their meaning.
const UNSAFE_IN_URI: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Appends `text` (from the request) to `out`, escaped so that `out` stays a valid URI.
pub fn escape_into(text: &str, out: &mut String) {
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "{}",
        percent_encoding::utf8_percent_encode(text, UNSAFE_IN_URI)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(t: &PathTemplate, path: &str) -> Option<String> {
        let mut out = String::new();
        t.fill(path, &mut out, |g, out| out.push_str(g))
            .then_some(out)
    }

    #[test]
    fn numbered_and_named_groups_and_dollars_are_filled() {
        let t = PathTemplate::new(r"^/api/v1/(?P<rest>.*)$", "/v2/${rest}/$1/$$x").unwrap();
        assert_eq!(filled(&t, "/api/v1/a/b").as_deref(), Some("/v2/a/b/a/b/$x"));
        assert_eq!(filled(&t, "/other"), None);
        assert_eq!(t.leading_text(), "/v2/");
        assert!(t.has_groups() && t.text_contains('$') && !t.text_contains('?'));
        let whole = PathTemplate::new("^.*$", "https://a.test$0").unwrap();
        assert_eq!(filled(&whole, "/x").as_deref(), Some("https://a.test/x"));
        // An optional group that did not take part fills in as nothing.
        let optional = PathTemplate::new("^/a(/b)?$", "/c$1").unwrap();
        assert_eq!(filled(&optional, "/a").as_deref(), Some("/c"));
    }

    #[test]
    fn bad_patterns_and_templates_are_refused() {
        let err = |p: &str, t: &str| PathTemplate::new(p, t).unwrap_err();
        assert!(matches!(err("^/(", "/"), TemplateError::Pattern(_)));
        assert_eq!(err("^/(a)$", "/$2"), TemplateError::NoSuchGroup("2".into()));
        assert_eq!(
            err("^/(a)$", "/${x}"),
            TemplateError::NoSuchGroup("x".into())
        );
        assert_eq!(
            err("^/(a)$", "/$1a"),
            TemplateError::NoSuchGroup("1a".into())
        );
        assert_eq!(err("^/(a)$", "/$"), TemplateError::LoneDollar);
        assert_eq!(err("^/(a)$", "/${1"), TemplateError::Unclosed);
        assert_eq!(err("^/(a)$", "/a b"), TemplateError::NotUri(' '));
        assert_eq!(err("^/(a)$", "/%zz"), TemplateError::NotUri('%'));
        assert_eq!(err("^/(a)$", "/é"), TemplateError::NotUri('é'));
        assert!(PathTemplate::new("^/(a)$", "/${1}a/%2F").is_ok());
    }

    #[test]
    fn request_text_is_escaped_into_a_valid_uri() {
        let mut out = String::from("/");
        escape_into("a b\"<>\\^`{|}#é%2F/?&=", &mut out);
        assert_eq!(out, "/a%20b%22%3C%3E%5C%5E%60%7B%7C%7D%23%C3%A9%2F/?&=");
        assert!(http::HeaderValue::from_str(&out).is_ok());
    }
}
