//! Which HTTP methods an axum [`MethodRouter`] serves, so that a cost declared beside it applies
//! to those methods only.
//!
//! axum does not expose the methods of a `MethodRouter`; its `Debug` form shows, for each method,
//! whether an endpoint is set, and whether a fallback of the user's serves every other method.
//! That form is read once per declared route, when the router is built. A form this module does not
//! recognise (a future axum) is taken as "every method", the behaviour of a rule for `*`, and a
//! unit test pins the form of the axum version in use.

use std::fmt::Debug;

use smallvec::SmallVec;

/// The methods a method router has endpoints for, in axum's field order.
const FIELDS: [(&str, &str); 9] = [
    ("get", "GET"),
    ("head", "HEAD"),
    ("delete", "DELETE"),
    ("options", "OPTIONS"),
    ("patch", "PATCH"),
    ("post", "POST"),
    ("put", "PUT"),
    ("trace", "TRACE"),
    ("connect", "CONNECT"),
];

/// What a method router serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Served {
    /// These methods, upper case; `GET` stands for `HEAD` too when both are served.
    Methods(SmallVec<[&'static str; 2]>),
    /// Every method (`any(..)`, or a fallback of the user's).
    Any,
}

/// The methods `router` serves, read from its `Debug` form.
pub(crate) fn served<R: Debug>(router: &R) -> Served {
    let form = format!("{router:?}");
    let Some(fallback) = field(&form, "fallback") else {
        return Served::Any;
    };
    // `any(..)` and `.fallback(..)` answer every method the endpoints do not.
    if !fallback.starts_with("Default(") {
        return Served::Any;
    }
    let mut methods = SmallVec::new();
    for (name, method) in FIELDS {
        match field(&form, name) {
            Some(value) if value.starts_with("None") => {}
            Some(_) => methods.push(method),
            None => return Served::Any,
        }
    }
    if methods.contains(&"GET") {
        methods.retain(|method| *method != "HEAD");
    }
    if methods.is_empty() {
        Served::Any
    } else {
        Served::Methods(methods)
    }
}

/// The text after `name: ` in a `Debug` struct form, if the field is there.
fn field<'a>(form: &'a str, name: &str) -> Option<&'a str> {
    let open = form.find(" { ")?;
    let fields = &form[open + 3..];
    let mut at = 0;
    while let Some(found) = fields[at..].find(name) {
        let start = at + found;
        let before_ok = start == 0 || fields[..start].ends_with(", ");
        let rest = &fields[start + name.len()..];
        if before_ok && let Some(value) = rest.strip_prefix(": ") {
            return Some(value);
        }
        at = start + name.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use axum::handler::HandlerWithoutStateExt;
    use axum::routing::{MethodFilter, MethodRouter, any, delete, get, on, post, put};
    use smallvec::smallvec;

    use super::*;

    async fn handler() {}

    fn methods(list: &[&'static str]) -> Served {
        Served::Methods(list.iter().copied().collect())
    }

    #[test]
    fn reads_the_methods_of_every_kind_of_method_router() {
        let cases: Vec<(MethodRouter, Served)> = vec![
            (get(handler), methods(&["GET"])),
            (post(handler), methods(&["POST"])),
            (get(handler).post(handler), methods(&["GET", "POST"])),
            (
                put(handler).delete(handler).patch(handler),
                methods(&["DELETE", "PATCH", "PUT"]),
            ),
            (delete(handler), methods(&["DELETE"])),
            (on(MethodFilter::HEAD, handler), methods(&["HEAD"])),
            (
                on(MethodFilter::GET.or(MethodFilter::POST), handler),
                methods(&["GET", "POST"]),
            ),
            (any(handler), Served::Any),
            (get(handler).fallback(handler), Served::Any),
            (
                axum::routing::get_service(handler.into_service()),
                methods(&["GET"]),
            ),
        ];
        for (router, expected) in cases {
            assert_eq!(served(&router), expected, "{router:?}");
        }
    }

    #[test]
    fn a_router_with_state_and_layers_reads_the_same() {
        let router: MethodRouter<u32> = get(|| async {})
            .post(|| async {})
            .route_layer(tower::layer::util::Identity::new());
        assert_eq!(served(&router), Served::Methods(smallvec!["GET", "POST"]));
    }

    #[test]
    fn an_unknown_form_is_every_method() {
        #[derive(Debug)]
        struct Other;
        assert_eq!(served(&Other), Served::Any);
    }
}
