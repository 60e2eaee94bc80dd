//! `rewrite`: changes the path the upstream receives. `pattern` is a regex matched against
//! that path (canonical, after `strip_prefix`, without the query); on a match the path
//! becomes `replace` with the pattern's groups filled in (`$1`, `${name}`), the query kept
//! as the client sent it. No match: the path is left as it is.

use super::path_template::{PathTemplate, TemplateError};
use crate::pipeline::{Facts, Hooks, Step};
use crate::problems::Problems;
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType};
use serde::Deserialize;

/// The `rewrite:` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    /// A regex (the `regex` crate's syntax) over the path the upstream would receive.
    pub pattern: Option<String>,
    /// The new path: text and the pattern's groups (`$1`, `${name}`, `$$` for a `$`).
    pub replace: Option<String>,
}

/// A route's compiled path rewrite.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrite {
    template: PathTemplate,
}

/// Validates the section at `place`.
pub fn validate(raw: RawRewrite, place: &str, p: &mut Problems) -> Option<Rewrite> {
    let (Some(pattern), Some(replace)) = (raw.pattern, raw.replace) else {
        p.push(
            place,
            "set both pattern and replace (or `false` to switch the server-wide default off)",
        );
        return None;
    };
    let template = match PathTemplate::new(&pattern, &replace) {
        Ok(template) => template,
        Err(e @ TemplateError::Pattern(_)) => {
            p.push(format!("{place}.pattern"), e);
            return None;
        }
        Err(e) => {
            p.push(format!("{place}.replace"), e);
            return None;
        }
    };
    let leading = template.leading_text();
    let starts_with_group = leading.is_empty() && template.has_groups();
    if !leading.starts_with('/') && !starts_with_group {
        p.push(
            format!("{place}.replace"),
            "must start with '/' (or with a group that does)",
        );
        return None;
    }
    if template.text_contains('?') || template.text_contains('#') {
        p.push(
            format!("{place}.replace"),
            "is a path: the query is kept as the client sent it (no '?' or '#')",
        );
        return None;
    }
    Some(Rewrite { template })
}

impl Rewrite {
    /// The request-target for the upstream when the pattern matches `path`; `query` is
    /// kept. `Err`: the filled template is not a path (a group that starts it was empty or
    /// did not start with '/').
    fn target(&self, path: &str, query: Option<&str>) -> pingora::Result<Option<String>> {
        let mut target = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
        if !self
            .template
            .fill(path, &mut target, |group, out| out.push_str(group))
        {
            return Ok(None);
        }
        if !target.starts_with('/') {
            return Error::e_explain(
                ErrorType::InternalError,
                "rewrite: the new path does not start with '/'",
            );
        }
        if let Some(query) = query {
            target.push('?');
            target.push_str(query);
        }
        Ok(Some(target))
    }
}

impl Step for Rewrite {
    fn name(&self) -> &'static str {
        "rewrite"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            upstream_request: true,
            ..Hooks::default()
        }
    }

    fn upstream_request(
        &self,
        _client: &RequestHeader,
        upstream: &mut RequestHeader,
        _facts: &Facts,
    ) -> pingora::Result<()> {
        let Some(target) = self.target(upstream.uri.path(), upstream.uri.query())? else {
            return Ok(());
        };
        // The path and query came from a valid URI, the template's text was checked at load.
        let uri = http::Uri::try_from(target)
            .or_else(|e| Error::e_explain(ErrorType::InternalError, format!("rewrite: {e}")))?;
        upstream.set_uri(uri);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(yaml: &str) -> Result<Rewrite, Vec<String>> {
        let raw: RawRewrite = serde_yaml::from_str(yaml).unwrap();
        let mut p = Problems::default();
        validate(raw, "routes[1].rewrite", &mut p).ok_or_else(|| p.into_vec())
    }

    fn upstream_target(r: &Rewrite, target: &str) -> String {
        let mut upstream = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        let client = upstream.clone();
        let facts = Facts {
            request_id: &http::HeaderValue::from_static("rid"),
            client_ip: None,
            consumer: None,
            route: "r",
            tls: false,
        };
        r.upstream_request(&client, &mut upstream, &facts).unwrap();
        upstream.uri.to_string()
    }

    #[test]
    fn a_matching_path_is_rewritten_and_its_query_kept() {
        let r = rewrite(r#"{pattern: "^/api/v1/(?P<rest>.*)$", replace: "/v2/${rest}"}"#).unwrap();
        assert_eq!(
            upstream_target(&r, "/api/v1/users/7?x=1&y"),
            "/v2/users/7?x=1&y"
        );
        assert_eq!(upstream_target(&r, "/api/v1/"), "/v2/");
        assert_eq!(upstream_target(&r, "/api/v2/users"), "/api/v2/users");
        let by_group = rewrite(r#"{pattern: "^/old(/.*)$", replace: "$1"}"#).unwrap();
        assert_eq!(upstream_target(&by_group, "/old/a?q"), "/a?q");
    }

    #[test]
    fn a_result_that_is_not_a_path_is_an_error_not_a_panic() {
        let r = rewrite(r#"{pattern: "^/x/(.*)$", replace: "$1"}"#).unwrap();
        let err = r.target("/x/abc", None).unwrap_err();
        assert_eq!(err.etype(), &ErrorType::InternalError);
        assert!(r.target("/x/", Some("q")).is_err());
        assert_eq!(r.target("/y", None).unwrap(), None);
    }

    #[test]
    fn bad_sections_are_refused_with_their_place() {
        let problems = |yaml| rewrite(yaml).unwrap_err();
        assert!(problems("{}")[0].starts_with("routes[1].rewrite: set both"));
        assert!(problems(r#"{pattern: "^/(", replace: "/"}"#)[0]
            .starts_with("routes[1].rewrite.pattern: not a valid regex"));
        assert_eq!(
            problems(r#"{pattern: "^/(a)$", replace: "/$2"}"#),
            ["routes[1].rewrite.replace: names the group \"2\", which the pattern does not have"]
        );
        assert_eq!(
            problems(r#"{pattern: "^/(a)$", replace: "v2/$1"}"#),
            ["routes[1].rewrite.replace: must start with '/' (or with a group that does)"]
        );
        assert_eq!(
            problems(r#"{pattern: "^/a$", replace: ""}"#),
            ["routes[1].rewrite.replace: must start with '/' (or with a group that does)"]
        );
        assert!(problems(r#"{pattern: "^/(a)$", replace: "/b?c=$1"}"#)[0]
            .starts_with("routes[1].rewrite.replace: is a path"));
        assert!(problems(r#"{pattern: "^/(a)$", replace: "/b c"}"#)[0]
            .starts_with("routes[1].rewrite.replace: ' ' cannot appear in a URI"));
    }
}
