//! How a [`CallRecord`] is written into the call log: length-prefixed fields, so any byte in a path
//! or a limit name survives the round trip.

use std::sync::Arc;

use tollhouse_core::{CallRecord, Outcome, StoreError, Timestamp};

/// The format's version, the first field of every entry.
const VERSION: &str = "1";

fn field(out: &mut String, value: &str) {
    out.push_str(&value.len().to_string());
    out.push(':');
    out.push_str(value);
}

/// Encodes a call for the log.
pub fn encode(call: &CallRecord) -> String {
    let mut out = String::with_capacity(64 + call.path.len() + call.key.len());
    field(&mut out, VERSION);
    field(&mut out, &call.at.as_millis().to_string());
    field(&mut out, &call.key);
    field(&mut out, &call.method);
    field(&mut out, &call.path);
    match &call.route {
        Some(route) => {
            field(&mut out, "1");
            field(&mut out, route);
        }
        None => {
            field(&mut out, "0");
            field(&mut out, "");
        }
    }
    field(&mut out, &call.status.to_string());
    field(&mut out, &call.cost.to_string());
    field(&mut out, &call.latency_ms.to_string());
    match &call.outcome {
        Outcome::Admitted => {
            field(&mut out, "admitted");
            field(&mut out, "");
        }
        Outcome::Rejected { limit } => {
            field(&mut out, "rejected");
            field(&mut out, limit);
        }
        Outcome::Exempt => {
            field(&mut out, "exempt");
            field(&mut out, "");
        }
    }
    field(&mut out, if call.billable { "1" } else { "0" });
    // Added after the first entries were written: a missing field reads as "not cut".
    match call.path_len {
        Some(len) => field(&mut out, &len.to_string()),
        None => field(&mut out, ""),
    }
    out
}

struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn next(&mut self) -> Result<&'a str, StoreError> {
        let colon = self
            .rest
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("a field without its length"))?;
        let len: usize = std::str::from_utf8(&self.rest[..colon])
            .ok()
            .and_then(|len| len.parse().ok())
            .ok_or_else(|| bad("a field length that is not a number"))?;
        let start = colon + 1;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.rest.len())
            .ok_or_else(|| bad("a field longer than the entry"))?;
        let value =
            std::str::from_utf8(&self.rest[start..end]).map_err(|_| bad("a field not in UTF-8"))?;
        self.rest = &self.rest[end..];
        Ok(value)
    }

    fn number<T: std::str::FromStr>(&mut self) -> Result<T, StoreError> {
        self.next()?
            .parse()
            .map_err(|_| bad("a number field that is not a number"))
    }
}

fn bad(what: &str) -> StoreError {
    StoreError::Protocol(format!("call log entry with {what}"))
}

/// Decodes an entry of the call log.
pub fn decode(entry: &[u8]) -> Result<CallRecord, StoreError> {
    let mut fields = Fields { rest: entry };
    if fields.next()? != VERSION {
        return Err(bad("an unknown version"));
    }
    let at = Timestamp::from_millis(fields.number()?);
    let key: Arc<str> = fields.next()?.into();
    let method: Arc<str> = fields.next()?.into();
    let path: Arc<str> = fields.next()?.into();
    let has_route = fields.next()? == "1";
    let route = fields.next()?;
    let route = has_route.then(|| Arc::from(route));
    let status = fields.number()?;
    let cost = fields.number()?;
    let latency_ms = fields.number()?;
    let outcome = match (fields.next()?, fields.next()?) {
        ("admitted", _) => Outcome::Admitted,
        ("rejected", limit) => Outcome::Rejected {
            limit: limit.into(),
        },
        ("exempt", _) => Outcome::Exempt,
        _ => return Err(bad("an unknown outcome")),
    };
    let billable = fields.next()? == "1";
    let path_len = match fields.rest {
        [] => None,
        _ => match fields.next()? {
            "" => None,
            len => Some(
                len.parse()
                    .map_err(|_| bad("a path length that is not a number"))?,
            ),
        },
    };
    Ok(CallRecord {
        at,
        key,
        method,
        path,
        path_len,
        route,
        status,
        cost,
        latency_ms,
        outcome,
        billable,
        logged: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_survives() {
        let mut call = CallRecord::new(Timestamp::from_millis(-5), "GET", "/v1/a:b?x=1:2&y=%20")
            .with_route("/v1/{id}")
            .with_key("…ey-1")
            .with_outcome(Outcome::Rejected {
                limit: "per:minute".into(),
            });
        call.status = 429;
        call.cost = 12;
        call.latency_ms = 345;
        call.billable = false;
        assert_eq!(decode(encode(&call).as_bytes()).ok(), Some(call.clone()));
        call.route = None;
        call.outcome = Outcome::Exempt;
        assert_eq!(decode(encode(&call).as_bytes()).ok(), Some(call));
        let long = CallRecord::new(Timestamp::from_millis(1), "GET", &"/a".repeat(300));
        assert_eq!(long.path_len, Some(600));
        assert_eq!(decode(encode(&long).as_bytes()).ok(), Some(long));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        for entry in [&b""[..], b"1:1", b"1:2", b"x:1", b"99:abc", b"1:9"] {
            assert!(matches!(decode(entry), Err(StoreError::Protocol(_))));
        }
    }
}
