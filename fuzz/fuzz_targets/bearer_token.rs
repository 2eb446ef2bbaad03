//! Arbitrary bytes as `Authorization` headers: `bearer_token` never panics, a key it returns is
//! non-empty visible ASCII taken from the end of a `Bearer` header, and two headers are refused.
//!
//! The input is one header value, or two separated by a newline (a byte no header value holds).

#![no_main]

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use tollhouse::Unidentified;
use tollhouse::identity::bearer_token;

fuzz_target!(|data: &[u8]| {
    let mut values = Vec::new();
    for value in data.splitn(2, |&byte| byte == b'\n') {
        let Ok(value) = HeaderValue::from_bytes(value) else {
            return;
        };
        values.push(value);
    }
    let mut request = Request::new(());
    for value in &values {
        request.headers_mut().append(AUTHORIZATION, value.clone());
    }
    let (parts, ()) = request.into_parts();
    let answer = bearer_token(&parts);
    if values.len() > 1 {
        assert_eq!(
            answer,
            Err(Unidentified::Malformed),
            "two headers: {values:?}"
        );
        return;
    }
    let Ok(key) = answer else {
        return;
    };
    let header = &values[0];
    assert!(!key.is_empty(), "an empty key from {header:?}");
    assert!(
        key.bytes().all(|byte| byte.is_ascii_graphic()),
        "key {key:?} from {header:?} is not visible ASCII"
    );
    let value = header.as_bytes().trim_ascii();
    assert!(
        value.len() > 7 && value[..6].eq_ignore_ascii_case(b"bearer") && value[6] == b' ',
        "key {key:?} from {header:?}, which is not a Bearer header"
    );
    assert!(
        value.ends_with(key.as_bytes()),
        "key {key:?} is not the end of {header:?}"
    );
});
