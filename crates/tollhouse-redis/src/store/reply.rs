//! Reading Redis's replies: counts, lists and names, or a protocol error saying what was wrong.

use redis::Value;
use tollhouse_core::StoreError;

pub(super) fn protocol(what: &str) -> StoreError {
    StoreError::Protocol(what.to_owned())
}

pub(super) fn int(value: &Value) -> Result<i64, StoreError> {
    match value {
        Value::Int(n) => Ok(*n),
        Value::Nil => Ok(0),
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| protocol("a count that is not a number")),
        Value::SimpleString(text) => text
            .parse()
            .map_err(|_| protocol("a count that is not a number")),
        _ => Err(protocol("a count that is not a number")),
    }
}

pub(super) fn array(value: Value) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(protocol("a reply that is not a list")),
    }
}

pub(super) fn text(value: &Value) -> Result<&str, StoreError> {
    match value {
        Value::BulkString(bytes) => {
            std::str::from_utf8(bytes).map_err(|_| protocol("a name that is not UTF-8"))
        }
        Value::SimpleString(text) => Ok(text),
        _ => Err(protocol("a name that is not a string")),
    }
}
