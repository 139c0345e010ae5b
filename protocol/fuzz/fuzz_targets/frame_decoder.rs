//! Arbitrary byte chunks fed to a `FrameDecoder` with a small limit.
//!
//! Checks: no panic; memory held follows the bytes pushed (never a claimed length);
//! decoding in chunks gives exactly the same messages and errors as decoding all the bytes
//! at once; every decoded message re-encodes within the limit and decodes back equal.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wharf_protocol::{encode_frame_with_max, FrameDecoder, FrameError, Message};

#[derive(Debug, Arbitrary)]
struct Input {
    /// The limit, reduced to 0..4096 so that "too large" is easy to reach.
    max: u16,
    /// The stream, as the network might split it.
    chunks: Vec<Vec<u8>>,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Message(Message),
    BadBody,
    TooLarge(u64),
}

/// Pops everything the decoder can give now; `true` once the stream is dead (too large).
fn drain(d: &mut FrameDecoder, out: &mut Vec<Outcome>) -> bool {
    loop {
        match d.decode() {
            Ok(Some(m)) => out.push(Outcome::Message(m)),
            Ok(None) => return false,
            Err(FrameError::Decode(_) | FrameError::TrailingBytes(_)) => out.push(Outcome::BadBody),
            Err(FrameError::TooLarge { len, max }) => {
                assert!(len > u64::from(max));
                out.push(Outcome::TooLarge(len));
                return true;
            }
            Err(e) => panic!("the decoder returned an unexpected error: {e:?}"),
        }
    }
}

fuzz_target!(|input: Input| {
    let max = u32::from(input.max) % 4096;
    let mut chunked = FrameDecoder::with_max(max);
    let mut all = Vec::new();
    let mut got = Vec::new();
    for chunk in &input.chunks {
        chunked.push(chunk);
        all.extend_from_slice(chunk);
        assert!(chunked.buffered_len() <= all.len());
        assert!(
            chunked.buffer_capacity() <= 2 * all.len() + 4096,
            "capacity {} after {} bytes",
            chunked.buffer_capacity(),
            all.len()
        );
        if drain(&mut chunked, &mut got) {
            break;
        }
    }

    let mut whole = FrameDecoder::with_max(max);
    whole.push(&all);
    let mut expected = Vec::new();
    drain(&mut whole, &mut expected);
    assert_eq!(got, expected, "chunked and whole decoding disagree");
    assert_eq!(chunked.finish().is_ok(), whole.finish().is_ok());

    for outcome in &got {
        if let Outcome::Message(m) = outcome {
            let frame = encode_frame_with_max(m, max).expect("a decoded message re-encodes");
            let mut again = FrameDecoder::with_max(max);
            again.push(&frame);
            assert_eq!(again.decode().unwrap().as_ref(), Some(m));
        }
    }
});
