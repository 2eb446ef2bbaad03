//! Places in the policy file: the policy-terms name of every value (`plans.build.limits[0]`), the
//! span it came from, and plain words for the TOML parser's messages.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Span;

/// Where the validated values came from, for errors the model reports by place alone.
#[derive(Default)]
pub(super) struct Places(Vec<(String, Span)>);

impl Places {
    pub(super) fn note(&mut self, place: String, span: Span) {
        self.0.push((place, span));
    }

    /// The span of `place`, or of the closest enclosing place noted.
    pub(super) fn find(&self, place: &str) -> Option<Span> {
        let mut place = place;
        loop {
            if let Some((_, span)) = self.0.iter().find(|(noted, _)| noted == place) {
                return Some(span.clone());
            }
            let cut = place.rfind(['.', '['])?;
            place = &place[..cut];
        }
    }
}

/// `plans.NAME`, quoting a name that is not a bare TOML key.
pub(super) fn plan_place(name: &str) -> String {
    let mut place = "plans".to_owned();
    push_key(&mut place, name);
    place
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        path.push_str(key);
    } else {
        path.push_str(&format!("{key:?}"));
    }
}

/// `3` for place `tiers[3]` (or `tiers[3].window`) and field `tiers`.
pub(super) fn index_in(place: &str, field: &str) -> Option<usize> {
    let rest = place.strip_prefix(field)?.strip_prefix('[')?;
    let end = rest.find(']')?;
    rest[..end].parse().ok()
}

/// One key or value of the parsed document, by its place.
pub(super) struct Node {
    pub(super) span: Span,
    pub(super) place: String,
    pub(super) depth: usize,
    pub(super) table: bool,
}

pub(super) fn collect_nodes(table: &DeTable<'_>, path: &mut String, out: &mut Vec<Node>) {
    for (key, value) in table.iter() {
        let mark = path.len();
        push_key(path, key.get_ref());
        out.push(Node {
            span: key.span(),
            place: path.clone(),
            depth: out_depth(path),
            table: false,
        });
        collect_value(value, path, out);
        path.truncate(mark);
    }
}

fn collect_value(value: &Spanned<DeValue<'_>>, path: &mut String, out: &mut Vec<Node>) {
    out.push(Node {
        span: value.span(),
        place: path.clone(),
        depth: out_depth(path),
        table: matches!(value.get_ref(), DeValue::Table(_)),
    });
    match value.get_ref() {
        DeValue::Table(table) => collect_nodes(table, path, out),
        DeValue::Array(array) => {
            for (index, item) in array.iter().enumerate() {
                let mark = path.len();
                path.push_str(&format!("[{index}]"));
                collect_value(item, path, out);
                path.truncate(mark);
            }
        }
        _ => {}
    }
}

fn out_depth(path: &str) -> usize {
    path.matches(['.', '[']).count()
}

fn holds(span: &Span, offset: usize) -> bool {
    span.start == offset || (span.start <= offset && offset < span.end)
}

/// The innermost key or value at `offset`.
pub(super) fn deepest_at(nodes: &[Node], offset: usize) -> Option<&Node> {
    nodes
        .iter()
        .filter(|node| holds(&node.span, offset))
        .min_by_key(|node| (node.span.len(), std::cmp::Reverse(node.depth)))
}

/// For a syntax error at `offset`: the value it is in, else the key its line starts with, else the
/// `[table]` whose body it is in.
pub(super) fn syntax_place(nodes: &[Node], text: &str, offset: usize) -> Option<String> {
    let line_start = text
        .get(..offset)
        .and_then(|before| before.rfind('\n'))
        .map_or(0, |newline| newline + 1);
    let on_the_line = |node: &&Node| node.span.start >= line_start && node.span.start <= offset;
    if let Some(node) = deepest_at(nodes, offset).filter(on_the_line) {
        return Some(node.place.clone());
    }
    if let Some(node) = nodes
        .iter()
        .filter(on_the_line)
        .min_by_key(|node| (node.span.start, node.depth))
    {
        return Some(node.place.clone());
    }
    // A `[header]` table's span is its header; implicit parents span only their key inside it.
    nodes
        .iter()
        .filter(|node| {
            node.table
                && node.span.start <= offset
                && text.as_bytes().get(node.span.start) == Some(&b'[')
        })
        .max_by_key(|node| (node.span.start, node.depth))
        .map(|node| node.place.clone())
}

/// Rewrites serde's wording (`unknown field`, `invalid type`, ...) in policy-file terms.
pub(super) fn describe(message: &str) -> (String, String) {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (field, expected) = rest.split_once(", ").unwrap_or((rest, ""));
        let fix = match expected.strip_prefix("expected ") {
            Some(expected) => {
                let expected = expected.strip_prefix("one of ").unwrap_or(expected);
                format!("remove it, or write one of the keys allowed here: {expected}")
            }
            None => "remove it".to_owned(),
        };
        return (format!("unknown key {field}"), fix);
    }
    if let Some(field) = message.strip_prefix("missing field ") {
        return (
            format!("the required key {field} is missing"),
            format!("add {field}"),
        );
    }
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            let expected = plain(expected);
            // TOML integers are 64-bit: a larger one is read as a wider integer and refused.
            if expected == "an integer"
                && let Some(number) = found
                    .strip_prefix("integer `")
                    .and_then(|rest| rest.split('`').next())
            {
                return (
                    format!("{number} is too large"),
                    format!(
                        "write a smaller number (a capacity is at most {})",
                        crate::plan::MAX_CAPACITY
                    ),
                );
            }
            return (
                format!("found {}, but this must be {expected}", plain(found)),
                format!("write {expected} here"),
            );
        }
    }
    (
        message.to_owned(),
        "correct this value (see the policy file format)".to_owned(),
    )
}

/// Serde's and Rust's type names as a policy author knows them.
fn plain(text: &str) -> String {
    match text {
        "i64" | "u64" | "i32" | "u32" | "usize" => "an integer".to_owned(),
        "f64" | "f32" => "a number".to_owned(),
        "a sequence" => "an array".to_owned(),
        "sequence" => "an array".to_owned(),
        "a map" => "a table".to_owned(),
        "map" => "a table".to_owned(),
        "any valid TOML value" => "a value".to_owned(),
        other => other
            .replace("floating point", "number")
            .replace("string \"", "the string \""),
    }
}
