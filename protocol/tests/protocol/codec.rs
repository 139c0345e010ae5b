//! Frame codec edge cases: partial input, empty and garbage bodies, the exact limit and one
//! past it, a 4 GiB claim, and the end of a stream in every position.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use wharf_protocol::*;

fn reject(reason_len: usize) -> Message {
    Message::Reject(Reject {
        reason: "r".repeat(reason_len),
    })
}

/// A `Reject` whose encoded body is exactly `len` bytes (for `len >= 2`).
fn message_with_body_len(len: usize) -> Message {
    // variant tag (1 byte) + varint string length + the string
    let mut reason = len - 2;
    while to_body(&reject(reason)).unwrap().len() > len {
        reason -= 1;
    }
    let m = reject(reason);
    assert_eq!(to_body(&m).unwrap().len(), len);
    m
}

fn sample() -> Message {
    Message::Heartbeat(Heartbeat {
        running_tasks: vec![uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2)],
        load: Load {
            load1_milli: 1250,
            cpus: 2,
            mem_total_bytes: 24 << 30,
            mem_available_bytes: 12 << 30,
        },
    })
}

#[test]
fn byte_by_byte_input_waits_then_decodes() {
    let frame = encode_frame(&sample()).unwrap();
    let mut d = FrameDecoder::new();
    for (i, b) in frame.iter().enumerate() {
        assert_eq!(d.decode().unwrap(), None, "after {i} bytes");
        d.push(&[*b]);
    }
    assert_eq!(d.decode().unwrap(), Some(sample()));
    assert_eq!(d.decode().unwrap(), None);
    assert_eq!(d.buffered_len(), 0);
    assert!(d.finish().is_ok());
}

#[test]
fn empty_push_and_empty_stream() {
    let mut d = FrameDecoder::new();
    d.push(&[]);
    assert_eq!(d.decode().unwrap(), None);
    assert!(d.finish().is_ok());
}

#[test]
fn zero_length_frame_is_a_decode_error() {
    let mut d = FrameDecoder::new();
    d.push(&[0, 0, 0, 0]);
    let e = d.decode().unwrap_err();
    assert!(matches!(e, FrameError::Decode(_)), "{e:?}");
    assert_eq!(e.error_code(), error_code::DECODE_ERROR);
    // The empty frame was consumed; the decoder is back between frames.
    assert_eq!(d.buffered_len(), 0);
    assert!(d.finish().is_ok());
}

#[test]
fn garbage_bodies_are_decode_errors() {
    let bodies: &[&[u8]] = &[
        &[0xff; 10],                                 // variant index that is no varint
        &[0x7f],                                     // variant 127 does not exist
        &[0x02, 0x05, b'a'],                         // Reject whose string is cut short
        &[0x02, 0x02, 0xc3, 0x28],                   // Reject with invalid UTF-8
        &[0x05, 1, 2, 3],                            // Accepted with a short uuid
        &[0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], // Heartbeat followed by junk
    ];
    // One past the last variant.
    let past_last = [crate::gen::MESSAGE_VARIANTS as u8];
    let bodies: Vec<&[u8]> = bodies.iter().copied().chain([&past_last[..]]).collect();
    for body in bodies {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        let mut d = FrameDecoder::new();
        d.push(&frame);
        match d.decode() {
            Err(FrameError::Decode(_) | FrameError::TrailingBytes(_)) => {}
            other => panic!("{body:?}: {other:?}"),
        }
        assert_eq!(d.buffered_len(), 0);
    }
}

#[test]
fn exactly_max_passes_and_max_plus_one_is_refused_small_limit() {
    let max = 100u32;
    let m = message_with_body_len(max as usize);
    let frame = encode_frame_with_max(&m, max).unwrap();
    assert_eq!(frame.len(), max as usize + 4);
    let mut d = FrameDecoder::with_max(max);
    d.push(&frame);
    assert_eq!(d.decode().unwrap(), Some(m));

    let over = message_with_body_len(max as usize + 1);
    assert!(matches!(
        encode_frame_with_max(&over, max),
        Err(FrameError::TooLarge { len: 101, max: 100 })
    ));
    let mut d = FrameDecoder::with_max(max);
    d.push(&(max + 1).to_be_bytes());
    assert!(matches!(
        d.decode(),
        Err(FrameError::TooLarge { len: 101, max: 100 })
    ));
}

#[test]
fn exactly_default_max_passes_and_one_more_is_refused() {
    let max = DEFAULT_MAX_FRAME;
    assert_eq!(max, 16 * 1024 * 1024);
    let m = message_with_body_len(max as usize);
    let frame = encode_frame(&m).unwrap();
    assert_eq!(frame.len(), max as usize + 4);
    let mut d = FrameDecoder::new();
    d.push(&frame);
    assert_eq!(d.decode().unwrap(), Some(m));
    drop(frame);

    let over = message_with_body_len(max as usize + 1);
    let e = encode_frame(&over).unwrap_err();
    assert!(
        matches!(e, FrameError::TooLarge { len, max: m } if len == u64::from(max) + 1 && m == max)
    );
    let mut d = FrameDecoder::new();
    d.push(&(max + 1).to_be_bytes());
    assert!(matches!(d.decode(), Err(FrameError::TooLarge { .. })));
}

#[test]
fn four_gib_claim_is_refused_without_allocating() {
    let mut d = FrameDecoder::new();
    d.push(&[0xff, 0xff, 0xff, 0xff]);
    let e = d.decode().unwrap_err();
    assert!(
        matches!(
            e,
            FrameError::TooLarge {
                len: 0xffff_ffff,
                max: DEFAULT_MAX_FRAME
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.error_code(), error_code::FRAME_TOO_LARGE);
    assert!(d.buffer_capacity() < 64, "capacity {}", d.buffer_capacity());
    // More input after the refusal is dropped, not buffered.
    d.push(&[0u8; 4096]);
    assert_eq!(d.buffered_len(), 0);
    assert!(d.buffer_capacity() < 64, "capacity {}", d.buffer_capacity());
    assert!(matches!(d.decode(), Err(FrameError::TooLarge { .. })));
}

#[test]
fn decoder_memory_follows_pushed_bytes_not_the_claim() {
    // A legal 16 MiB claim with only a few body bytes: the buffer holds those bytes only.
    let mut d = FrameDecoder::new();
    d.push(&DEFAULT_MAX_FRAME.to_be_bytes());
    d.push(&[1, 2, 3]);
    assert_eq!(d.decode().unwrap(), None);
    assert!(
        d.buffer_capacity() < 1024,
        "capacity {}",
        d.buffer_capacity()
    );
    assert!(matches!(
        d.finish(),
        Err(FrameError::Truncated { expected, received: 7 }) if expected == 4 + u64::from(DEFAULT_MAX_FRAME)
    ));
}

#[tokio::test]
async fn async_four_gib_claim_fails_right_after_the_header() {
    let (mut tx, mut rx) = tokio::io::duplex(64);
    tx.write_all(&[0xff; 4]).await.unwrap();
    // The writer stays open: the reader must not wait for a body.
    let mut buf = Vec::new();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        read_frame_with_buf(&mut rx, DEFAULT_MAX_FRAME, &mut buf),
    )
    .await
    .expect("refused without waiting for the body");
    assert!(
        matches!(
            r,
            Err(FrameError::TooLarge {
                len: 0xffff_ffff,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(buf.capacity(), 0);
    drop(tx);
}

#[tokio::test]
async fn async_memory_follows_received_bytes() {
    let mut input = (DEFAULT_MAX_FRAME - 1).to_be_bytes().to_vec();
    input.extend_from_slice(&[7u8; 10]);
    let mut reader = &input[..];
    let mut buf = Vec::new();
    let r = read_frame_with_buf(&mut reader, DEFAULT_MAX_FRAME, &mut buf).await;
    assert!(
        matches!(r, Err(FrameError::Truncated { received: 14, .. })),
        "{r:?}"
    );
    assert!(buf.capacity() <= 16 * 1024, "capacity {}", buf.capacity());
    assert_eq!(buf, [7u8; 10]);
}

#[tokio::test]
async fn async_end_of_stream_positions() {
    let frame = encode_frame(&sample()).unwrap();
    // Clean EOF before any frame.
    let mut empty: &[u8] = &[];
    assert!(read_frame(&mut empty, DEFAULT_MAX_FRAME)
        .await
        .unwrap()
        .is_none());
    // Clean EOF after a whole frame.
    let mut one = &frame[..];
    assert_eq!(
        read_frame(&mut one, DEFAULT_MAX_FRAME).await.unwrap(),
        Some(sample())
    );
    assert!(read_frame(&mut one, DEFAULT_MAX_FRAME)
        .await
        .unwrap()
        .is_none());
    // EOF at every position inside the frame is an error.
    for cut in 1..frame.len() {
        let mut part = &frame[..cut];
        let r = read_frame(&mut part, DEFAULT_MAX_FRAME).await;
        match r {
            Err(e @ FrameError::Truncated { .. }) => {
                assert_eq!(e.error_code(), error_code::PROTOCOL_VIOLATION)
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn async_limits_and_bad_bodies() {
    let m = message_with_body_len(50);
    let frame = encode_frame(&m).unwrap();
    let mut r = &frame[..];
    assert_eq!(read_frame(&mut r, 50).await.unwrap(), Some(m.clone()));
    let mut r = &frame[..];
    assert!(matches!(
        read_frame(&mut r, 49).await,
        Err(FrameError::TooLarge { len: 50, max: 49 })
    ));
    // write_frame refuses and writes nothing.
    let mut out = Vec::new();
    assert!(matches!(
        write_frame(&mut out, &m, 49).await,
        Err(FrameError::TooLarge { .. })
    ));
    assert!(out.is_empty());
    write_frame(&mut out, &m, 50).await.unwrap();
    assert_eq!(out, frame);
    // Zero-length and garbage bodies.
    let mut r: &[u8] = &[0, 0, 0, 0];
    assert!(matches!(
        read_frame(&mut r, 50).await,
        Err(FrameError::Decode(_))
    ));
    let mut r: &[u8] = &[0, 0, 0, 3, 0xff, 0xff, 0xff];
    assert!(matches!(
        read_frame(&mut r, 50).await,
        Err(FrameError::Decode(_))
    ));
}

/// A reader that hands out one byte per poll and then fails.
struct Dribble<'a> {
    data: &'a [u8],
    pending: bool,
}

impl AsyncRead for Dribble<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Alternate Pending and one byte, to exercise partial reads.
        if self.pending {
            self.pending = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pending = true;
        match self.data.split_first() {
            Some((b, rest)) => {
                buf.put_slice(&[*b]);
                self.data = rest;
                Poll::Ready(Ok(()))
            }
            None => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            ))),
        }
    }
}

#[tokio::test]
async fn async_partial_reads_and_io_errors() {
    let frame = encode_frame(&sample()).unwrap();
    let mut r = Dribble {
        data: &frame,
        pending: false,
    };
    assert_eq!(
        read_frame(&mut r, DEFAULT_MAX_FRAME).await.unwrap(),
        Some(sample())
    );
    let e = read_frame(&mut r, DEFAULT_MAX_FRAME).await.unwrap_err();
    assert!(matches!(e, FrameError::Io(_)), "{e:?}");
    assert_eq!(e.error_code(), error_code::INTERNAL_ERROR);
    let mut r = Dribble {
        data: &frame[..frame.len() - 2],
        pending: false,
    };
    assert!(matches!(
        read_frame(&mut r, DEFAULT_MAX_FRAME).await,
        Err(FrameError::Io(_))
    ));
}

#[test]
fn protocol_constants() {
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!(ALPN, b"wharf/1");
    assert_eq!(Limits::default().max_frame_len, DEFAULT_MAX_FRAME);
    let codes = [
        error_code::NO_ERROR,
        error_code::FRAME_TOO_LARGE,
        error_code::DECODE_ERROR,
        error_code::PROTOCOL_VIOLATION,
        error_code::REJECTED,
        error_code::REVOKED,
        error_code::SHUTDOWN,
        error_code::INTERNAL_ERROR,
    ];
    let mut unique = codes.to_vec();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), codes.len());
}

#[test]
fn hello_welcome_reject_exchange() {
    // What core does with a Hello: negotiate, then answer Welcome or Reject.
    let answer = |hello: &Hello| -> Message {
        match negotiate("1.4.2", &hello.agent_version, hello.protocol_version) {
            Ok(()) => Message::Welcome(Welcome {
                core_version: "1.4.2".into(),
                heartbeat_interval: DurationMs::from_secs(5),
                limits: Limits::default(),
            }),
            Err(r) => Message::Reject(r.to_reject()),
        }
    };
    let hello = |v: &str| Hello {
        agent_version: v.into(),
        protocol_version: PROTOCOL_VERSION,
        capabilities: vec![capability::DOCKER.into()],
        pending_results: vec![],
    };
    assert!(matches!(answer(&hello("1.3.0")), Message::Welcome(_)));
    let Message::Reject(r) = answer(&hello("1.1.0")) else {
        panic!("expected a reject")
    };
    assert_eq!(r.reason, "upgrade required");
}
