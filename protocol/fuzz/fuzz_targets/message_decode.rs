//! Postcard decoding of arbitrary bytes as a `Message` (and as the polling bodies).
//!
//! Checks: no panic; whatever decodes re-encodes, decodes back equal, and re-encodes to the
//! same bytes (the encoding of a value is canonical); it also survives a frame round trip and
//! a JSON round trip (RFC 3339 timestamps for every i64, digest strings...).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_protocol::{
    decode_body, encode_frame, from_body, to_body, FrameDecoder, Message, PollRequest, PollResponse,
};

fn round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let body = to_body(value).expect("every value encodes");
    let back: T = from_body(&body).expect("an encoded value decodes");
    assert_eq!(&back, value);
    assert_eq!(to_body(&back).unwrap(), body, "encoding is not canonical");
    let json = serde_json::to_string(value).expect("every value has a JSON form");
    let back: T = serde_json::from_str(&json).expect("the JSON form decodes");
    assert_eq!(&back, value, "JSON round trip changed {json}");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode_body(data) {
        round_trip::<Message>(&m);
        let frame = encode_frame(&m).expect("fits the default limit");
        let mut d = FrameDecoder::new();
        d.push(&frame);
        assert_eq!(d.decode().unwrap(), Some(m));
        assert!(d.finish().is_ok());
    }
    if let Ok(r) = from_body::<PollRequest>(data) {
        round_trip(&r);
    }
    if let Ok(r) = from_body::<PollResponse>(data) {
        round_trip(&r);
    }
});
