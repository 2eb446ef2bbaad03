//! Route rules: what a route costs, or that it is exempt.
//!
//! A rule matches a method (or `*` for any) and an axum-style path pattern whose `{param}` segments
//! match any one segment and whose trailing `{*rest}` matches the rest of the path. The same pattern
//! matches a raw request path (`/v1/files/42`) and the route template axum reports as `MatchedPath`
//! (`/v1/files/{id}`), so a rule works whether the layer sits before or after routing.
//!
//! # Example
//!
//! ```
//! use tollhouse_core::{RouteRule, Treatment};
//!
//! let files = RouteRule::parse("GET /v1/files/{id}", Treatment::Exempt { billable: true })?;
//! assert!(files.matches("GET", "/v1/files/42"));
//! assert!(files.matches("GET", "/v1/files/{file_id}"));
//! assert!(!files.matches("POST", "/v1/files/42"));
//! # Ok::<(), tollhouse_core::PolicyError>(())
//! ```

use std::fmt;
use std::sync::Arc;

use crate::error::PolicyError;

/// What the layer does with requests to a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Treatment {
    /// Metered, charging this many points to `points` limits (1 is the default for unmatched routes).
    Cost(u64),
    /// Not limited and not charged; recorded in usage, and billable unless `billable` is false.
    Exempt {
        /// Whether calls count as billable.
        billable: bool,
    },
}

impl Default for Treatment {
    fn default() -> Self {
        Treatment::Cost(1)
    }
}

/// The most points one request can cost, declared or reported by its handler: a higher cost is
/// taken as this, so no route or handler can make the counts overflow.
pub const MAX_COST: u64 = 1_000_000;

impl Treatment {
    /// A cost, refusing zero and more than [`MAX_COST`].
    pub fn cost(points: u64) -> Result<Self, PolicyError> {
        if points == 0 {
            return Err(PolicyError::invalid(
                "cost",
                "a cost of 0 would make the route free but still limited",
                "set a cost of at least 1, or mark the route exempt = true",
            ));
        }
        if points > MAX_COST {
            return Err(PolicyError::invalid(
                "cost",
                format!("a cost of {points} points is more than one request can cost"),
                "set a cost of at most 1000000",
            ));
        }
        Ok(Treatment::Cost(points))
    }

    /// A cost of `points`, at least 1 and at most [`MAX_COST`].
    pub const fn clamped_cost(points: u64) -> Self {
        Treatment::Cost(if points == 0 {
            1
        } else if points > MAX_COST {
            MAX_COST
        } else {
            points
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    Literal(Box<str>),
    Param,
    Rest,
}

/// An axum-style path pattern.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RoutePattern {
    text: Arc<str>,
    segments: Vec<Segment>,
    /// The literal segments before the first parameter, as `/a/b` (empty if it starts with one):
    /// every matching path starts with them.
    prefix: Box<str>,
    /// No parameters: a path matches when it is the text itself.
    literal: bool,
}

impl RoutePattern {
    /// Parses `/a/{param}/b` or `/files/{*rest}`.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let bad = |problem: String| {
            PolicyError::invalid(
                "match",
                problem,
                "write the path as axum does, such as \"/v1/files/{id}\" or \"/v1/blobs/{*path}\"",
            )
        };
        let Some(rest) = text.strip_prefix('/') else {
            return Err(bad(format!("path {text:?} does not start with '/'")));
        };
        // Patterns that would load but never match a request.
        if let Some(at) = text.find(['?', '#']) {
            return Err(PolicyError::invalid(
                "match",
                format!("path {text:?} has a query or fragment, which routes never match on"),
                format!("match the path alone: \"{}\"", &text[..at]),
            ));
        }
        if text.contains(char::is_whitespace) {
            return Err(PolicyError::invalid(
                "match",
                format!("path {text:?} has a space in it"),
                "write the method, one space and a path without spaces, such as \"GET /v1/items\"",
            ));
        }
        let mut names: Vec<&str> = Vec::new();
        let mut segments = Vec::new();
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let count = parts.len();
        for (index, part) in parts.into_iter().enumerate() {
            let segment = if let Some(inner) =
                part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                if let Some(name) = inner.strip_prefix('*') {
                    if index + 1 != count || name.is_empty() {
                        return Err(bad(format!(
                            "{{*{name}}} in {text:?} must be the last segment and have a name"
                        )));
                    }
                    Segment::Rest
                } else if inner.is_empty() || inner.contains(['{', '}']) {
                    return Err(bad(format!(
                        "segment {part:?} of {text:?} is not a {{name}} parameter"
                    )));
                } else if names.contains(&inner) {
                    return Err(bad(format!(
                        "parameter {{{inner}}} appears twice in {text:?}"
                    )));
                } else {
                    names.push(inner);
                    Segment::Param
                }
            } else if let Some(name) = part.strip_prefix([':', '*']) {
                return Err(PolicyError::invalid(
                    "match",
                    format!("segment {part:?} of {text:?} is the old axum syntax for a parameter"),
                    format!("write it as axum 0.8 does: {{{name}}}, or {{*{name}}} for the rest"),
                ));
            } else if part.contains(['{', '}']) {
                return Err(bad(format!(
                    "segment {part:?} of {text:?} mixes text and a parameter"
                )));
            } else {
                Segment::Literal(part.into())
            };
            segments.push(segment);
        }
        let mut prefix = String::new();
        for segment in &segments {
            let Segment::Literal(literal) = segment else {
                break;
            };
            prefix.push('/');
            prefix.push_str(literal);
        }
        let literal = segments
            .iter()
            .all(|segment| matches!(segment, Segment::Literal(_)));
        Ok(Self {
            text: text.into(),
            segments,
            prefix: prefix.into(),
            literal,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The pattern as written, as a shared string.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.text
    }

    /// Whether a raw path or a route template matches this pattern.
    pub fn matches(&self, path: &str) -> bool {
        let path = path
            .bytes()
            .position(|byte| byte == b'?' || byte == b'#')
            .map_or(path, |end| &path[..end]);
        if self.literal {
            return path == &*self.text;
        }
        // Most rules are told apart by their leading literal segments: one comparison.
        match path.strip_prefix(&*self.prefix) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {}
            _ => return false,
        }
        self.matches_segments(path)
    }

    /// Whether this pattern matches every path and template that `later` matches.
    fn covers(&self, later: &RoutePattern) -> bool {
        let mut theirs = later.segments.iter();
        for segment in &self.segments {
            match (segment, theirs.next()) {
                // What follows, however much (none included, as in `matches_segments`).
                (Segment::Rest, _) => return true,
                // A parameter matches any one segment but an empty one.
                (Segment::Param, Some(Segment::Param)) => {}
                (Segment::Param, Some(Segment::Literal(their))) if !their.is_empty() => {}
                (Segment::Literal(mine), Some(Segment::Literal(their))) if mine == their => {}
                _ => return false,
            }
        }
        theirs.next().is_none()
    }

    /// Matches `path` (without its query) segment by segment.
    fn matches_segments(&self, path: &str) -> bool {
        let Some(path) = path.strip_prefix('/') else {
            return false;
        };
        // The root path has no segments at all; any other path has one per '/'.
        let mut parts = path.split('/').skip(usize::from(path.is_empty()));
        for segment in &self.segments {
            match segment {
                Segment::Rest => return true,
                Segment::Param => match parts.next() {
                    Some(part) if !part.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(literal) => match parts.next() {
                    Some(part) if part == &**literal => {}
                    _ => return false,
                },
            }
        }
        // A trailing slash is one empty segment too many; it does not match.
        parts.next().is_none()
    }
}

impl fmt::Debug for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

/// A method (or any), a path pattern and what requests matching them cost.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteRule {
    method: Option<Arc<str>>,
    pattern: RoutePattern,
    treatment: Treatment,
}

impl RouteRule {
    /// A rule for `method` (`None` for any) and `pattern`.
    pub fn new(method: Option<&str>, pattern: RoutePattern, treatment: Treatment) -> Self {
        Self {
            method: method.map(|m| Arc::from(m.to_ascii_uppercase())),
            pattern,
            treatment,
        }
    }

    /// Parses `"GET /v1/reports"` or `"* /v1/{*rest}"`.
    pub fn parse(spec: &str, treatment: Treatment) -> Result<Self, PolicyError> {
        let Some((method, path)) = spec.trim().split_once(' ') else {
            return Err(PolicyError::invalid(
                "match",
                format!("{spec:?} has no method"),
                "write the method, a space and the path, such as \"GET /v1/reports\" or \"* /v1/items\"",
            ));
        };
        let method = method.trim();
        if method != "*" && (method.is_empty() || !method.chars().all(|c| c.is_ascii_alphabetic()))
        {
            return Err(PolicyError::invalid(
                "match",
                format!("{method:?} is not an HTTP method"),
                "start with a method such as GET, POST, or * for any",
            ));
        }
        let pattern = RoutePattern::parse(path.trim())?;
        Ok(Self::new(
            (method != "*").then_some(method),
            pattern,
            treatment,
        ))
    }

    /// Whether a request with this method and path (raw or template) is covered. A `GET` rule
    /// also covers `HEAD`, which servers (axum among them) answer with the `GET` handler.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| covers_method(m, method))
            && self.pattern.matches(path)
    }

    /// The method, or `None` for any.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// The path pattern.
    pub fn pattern(&self) -> &RoutePattern {
        &self.pattern
    }

    /// What matching requests cost.
    pub const fn treatment(&self) -> Treatment {
        self.treatment
    }

    /// Whether every request `later` matches is matched by this rule first: this rule's pattern
    /// matches every path `later`'s does (the same shape, parameter names aside, or a wider one:
    /// a parameter where `later` has text, `{*rest}` for what follows), and this rule's method is
    /// `later`'s, any, or `GET` when `later`'s is `HEAD`.
    pub fn covers(&self, later: &RouteRule) -> bool {
        self.pattern.covers(&later.pattern)
            && self.method.as_deref().is_none_or(|method| {
                later
                    .method
                    .as_deref()
                    .is_some_and(|theirs| covers_method(method, theirs))
            })
    }
}

/// `GET /v1/reports`, or `* /v1/items` for any method: the policy file's `match` syntax.
impl fmt::Display for RouteRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.method.as_deref().unwrap_or("*"),
            self.pattern.as_str()
        )
    }
}

/// Whether a rule for `rule` (upper case) covers a request with `method`: the same method, or
/// `HEAD` under `GET`.
#[inline]
fn covers_method(rule: &str, method: &str) -> bool {
    rule.eq_ignore_ascii_case(method) || (rule == "GET" && method.eq_ignore_ascii_case("HEAD"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_paths_and_templates() {
        let p = RoutePattern::parse("/v1/connectors/{name}").expect("pattern");
        assert!(p.matches("/v1/connectors/forms"));
        assert!(p.matches("/v1/connectors/{connector}"));
        assert!(p.matches("/v1/connectors/forms?x=1"));
        assert!(!p.matches("/v1/connectors"));
        assert!(!p.matches("/v1/connectors/"));
        assert!(!p.matches("/v1/connectors/a/b"));
        let rest = RoutePattern::parse("/blobs/{*path}").expect("pattern");
        assert!(rest.matches("/blobs/a/b/c"));
        assert!(!rest.matches("/other/a"));
        let root = RoutePattern::parse("/").expect("pattern");
        assert!(root.matches("/"));
        assert!(!root.matches("/a"));
    }

    #[test]
    fn the_shortcuts_agree_with_matching_segment_by_segment() {
        let patterns = [
            "/",
            "/v1",
            "/v1/",
            "/v1/items",
            "/v1/items/",
            "/v1//items",
            "/{id}",
            "/v1/{id}",
            "/v1/{id}/parts",
            "/v1/items/{id}",
            "/blobs/{*path}",
            "/{*path}",
            "/v1/{a}/{b}",
        ];
        let paths = [
            "",
            "/",
            "//",
            "/v1",
            "/v1/",
            "/v1//",
            "/v1/items",
            "/v1/items/",
            "/v1//items",
            "/v1/itemsx",
            "/v1/items/7",
            "/v1/items/7/",
            "/v1/7/parts",
            "/v1/7/parts?x=1",
            "/v1/items?x=/y",
            "/v1/items#top",
            "/blobs",
            "/blobs/",
            "/blobs/a/b",
            "/blobsx/a",
            "/x",
            "/v1/{id}",
            "/v1/a/b",
            "/v1/a/b/c",
            "v1/items",
            "/v2/items",
        ];
        for text in patterns {
            let pattern = RoutePattern::parse(text).expect("pattern");
            for path in paths {
                let bare = path.split(['?', '#']).next().unwrap_or(path);
                assert_eq!(
                    pattern.matches(path),
                    pattern.matches_segments(bare),
                    "{text} against {path}"
                );
            }
        }
    }

    #[test]
    fn bad_patterns_say_how_to_write_them() {
        for bad in [
            "v1/items",
            "/v1/{}",
            "/v1/a{id}",
            "/{*rest}/more",
            "/v1/{id}/{id}",
        ] {
            let error = RoutePattern::parse(bad).expect_err(bad);
            assert!(
                error.to_string().contains("write the path as axum does"),
                "{error}"
            );
        }
        // Patterns that would never match a request are refused with a fix of their own.
        for (bad, fix) in [
            (
                "/v1/reports?page=1",
                "match the path alone: \"/v1/reports\"",
            ),
            ("/v1/reports#top", "match the path alone: \"/v1/reports\""),
            ("/v1/reports extra", "a path without spaces"),
            ("/v1/:id", "write it as axum 0.8 does: {id}"),
            ("/v1/*rest", "{*rest} for the rest"),
        ] {
            let error = RoutePattern::parse(bad).expect_err(bad);
            assert!(error.to_string().contains(fix), "{bad}: {error}");
        }
        let error = RouteRule::parse("GET /v1/reports extra", Treatment::Cost(1))
            .expect_err("a space in the path");
        assert!(error.to_string().contains("has a space"), "{error}");
    }

    #[test]
    fn a_parameter_does_not_cover_an_empty_segment() {
        let rule = |spec: &str| RouteRule::parse(spec, Treatment::Cost(1)).expect("rule");
        let (wide, narrow) = (rule("* /v1/{a}/{b}"), rule("POST /v1/items/"));
        assert!(narrow.matches("POST", "/v1/items/"));
        assert!(!wide.matches("POST", "/v1/items/"));
        assert!(!wide.covers(&narrow));
        assert!(!rule("GET /a/{id}/b").covers(&rule("GET /a//b")));
        assert!(rule("GET /a/{id}/b").covers(&rule("GET /a/x/b")));
    }

    #[test]
    fn rules_match_methods() {
        let rule = RouteRule::parse("GET /v1/reports", Treatment::Cost(10)).expect("rule");
        assert!(rule.matches("GET", "/v1/reports"));
        assert!(rule.matches("get", "/v1/reports"));
        assert!(!rule.matches("POST", "/v1/reports"));
        // HEAD runs the GET handler, so it costs what GET costs.
        assert!(rule.matches("HEAD", "/v1/reports"));
        let head = RouteRule::parse("HEAD /v1/reports", Treatment::Cost(1)).expect("rule");
        assert!(!head.matches("GET", "/v1/reports"));
        assert!(rule.covers(&head) && !head.covers(&rule));
        // Wider patterns cover narrower ones, not the other way round.
        let rule = |spec: &str| RouteRule::parse(spec, Treatment::Cost(1)).expect("rule");
        for (wide, narrow) in [
            ("GET /v1/{*rest}", "GET /v1/reports"),
            ("GET /v1/{*rest}", "GET /v1"),
            ("GET /v1/{*rest}", "GET /v1/files/{id}/{*more}"),
            ("GET /v1/{id}", "GET /v1/reports"),
            ("* /v1/files/{id}", "POST /v1/files/7"),
        ] {
            assert!(rule(wide).covers(&rule(narrow)), "{wide} covers {narrow}");
            assert!(
                !rule(narrow).covers(&rule(wide)),
                "{narrow} leaves {wide} some"
            );
        }
        // The same shape, parameter names aside, covers both ways.
        assert!(rule("GET /v1/{id}/meta").covers(&rule("GET /v1/{name}/meta")));
        assert!(rule("GET /v1/{name}/meta").covers(&rule("GET /v1/{id}/meta")));
        for (first, later) in [
            ("GET /v1/{id}", "GET /v1/{*rest}"),
            ("GET /v1/{id}", "GET /v1/a/b"),
            ("GET /v1/reports", "GET /v1/reports/{id}"),
            ("GET /v1/{*rest}", "GET /v2/items"),
        ] {
            assert!(
                !rule(first).covers(&rule(later)),
                "{first} leaves {later} some requests"
            );
        }
        let any = RouteRule::parse("* /v1/reports", Treatment::Cost(10)).expect("rule");
        assert!(any.matches("DELETE", "/v1/reports"));
        assert!(RouteRule::parse("/v1/reports", Treatment::Cost(1)).is_err());
        assert!(RouteRule::parse("G3T /v1/reports", Treatment::Cost(1)).is_err());
        assert!(Treatment::cost(0).is_err());
    }
}
