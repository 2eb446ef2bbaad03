//! The Redis store's call-log codec: decoding arbitrary bytes never panics, an entry that decodes
//! encodes to one that decodes the same, and every call record survives encoding and decoding
//! unchanged (the codec's promise: any byte of a path or a limit name survives the round trip).

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tollhouse_core::{CallRecord, Outcome, Timestamp};
use tollhouse_redis::__fuzz::{decode, encode};

/// The fields of a call record.
#[derive(Arbitrary, Debug)]
struct Fields {
    at: i64,
    key: String,
    method: String,
    path: String,
    route: Option<String>,
    status: u16,
    cost: u64,
    latency_ms: u64,
    /// 0: admitted, 1: rejected by `limit`, 2: exempt (modulo 3).
    outcome: u8,
    limit: String,
    billable: bool,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(call) = decode(data) {
        let again = decode(encode(&call).as_bytes()).expect("a re-encoded entry decodes");
        assert_eq!(again, call, "re-encoding {data:?}");
    }
    let Ok(fields) = Fields::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let call = record(fields);
    let entry = encode(&call);
    match decode(entry.as_bytes()) {
        Ok(decoded) => assert_eq!(decoded, call, "entry {entry:?}"),
        Err(error) => panic!("{call:?} encoded as {entry:?} does not decode: {error}"),
    }
});

/// The record the fields describe.
fn record(fields: Fields) -> CallRecord {
    let mut call = CallRecord::new(
        Timestamp::from_millis(fields.at),
        fields.method.as_str(),
        fields.path.as_str(),
    );
    call.key = fields.key.into();
    call.route = fields.route.map(Into::into);
    call.status = fields.status;
    call.cost = fields.cost;
    call.latency_ms = fields.latency_ms;
    call.outcome = match fields.outcome % 3 {
        0 => Outcome::Admitted,
        1 => Outcome::Rejected {
            limit: fields.limit.into(),
        },
        _ => Outcome::Exempt,
    };
    call.billable = fields.billable;
    call
}
