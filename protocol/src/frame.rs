//! Framing: a `u32` big-endian body length, then a postcard body (design §2).
//!
//! Three ways in, one set of rules:
//!
//! - [`FrameDecoder`]: sans-IO, push bytes as they arrive and pop whole messages;
//! - [`read_frame`] / [`write_frame`]: async, over any tokio `AsyncRead` / `AsyncWrite`
//!   (e.g. a quinn stream);
//! - [`encode_frame`] / [`decode_body`]: plain functions.
//!
//! A length above the limit is refused as soon as the 4 header bytes are seen, before any
//! body byte is read or any memory is set aside for it. Bodies are buffered only as their
//! bytes actually arrive, so a peer that claims 4 GiB and sends nothing costs nothing.
//! No input makes any of these panic.

use bytes::{Buf, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::messages::Message;
use crate::DEFAULT_MAX_FRAME;

/// Size of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;

/// The first read of a body sets aside at most this much; later reads grow the buffer no
/// faster than the data already received, so memory follows the bytes that arrived.
const FIRST_READ_CHUNK: usize = 8 * 1024;

/// QUIC application error codes used when a stream or connection is closed because of the
/// protocol (`quinn::VarInt::from_u32(code)`).
pub mod error_code {
    /// Normal close.
    pub const NO_ERROR: u32 = 0;
    /// Stream: a frame's length was over the limit ([`super::FrameError::TooLarge`]).
    pub const FRAME_TOO_LARGE: u32 = 0x10;
    /// Stream: a frame's body did not decode ([`super::FrameError::Decode`],
    /// [`super::FrameError::TrailingBytes`]).
    pub const DECODE_ERROR: u32 = 0x11;
    /// Stream: a well-formed message that is not allowed at this point (a second `Hello`,
    /// a `Result` for another task, a stream that ends inside a frame...).
    pub const PROTOCOL_VIOLATION: u32 = 0x12;
    /// Connection: closed after a [`crate::Reject`] (version skew, unknown agent...).
    pub const REJECTED: u32 = 0x20;
    /// Connection: the agent's certificate was revoked.
    pub const REVOKED: u32 = 0x21;
    /// Connection: core or the agent is shutting down.
    pub const SHUTDOWN: u32 = 0x22;
    /// Stream or connection: an unexpected local failure.
    pub const INTERNAL_ERROR: u32 = 0x2f;
}

/// Why a frame could not be read, decoded or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame's length is over the limit. When decoding, it is detected from the 4 header
    /// bytes alone; when encoding, from the encoded body. Code
    /// [`error_code::FRAME_TOO_LARGE`].
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The length claimed by the header, or the size of the encoded body.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// The body is not a valid postcard encoding of the expected type. The frame was
    /// consumed, so a [`FrameDecoder`] stays in sync. Code [`error_code::DECODE_ERROR`].
    #[error("frame body does not decode: {0}")]
    Decode(#[source] postcard::Error),
    /// The body decoded but bytes were left over. Code [`error_code::DECODE_ERROR`].
    #[error("frame body has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// The stream ended inside a frame (header or body). Code
    /// [`error_code::PROTOCOL_VIOLATION`].
    #[error("stream ended inside a frame: {received} of {expected} bytes received")]
    Truncated {
        /// Bytes of the frame (header included) that were expected.
        expected: u64,
        /// Bytes of the frame that arrived.
        received: u64,
    },
    /// The message could not be encoded (a bug: every protocol type encodes).
    #[error("message could not be encoded: {0}")]
    Encode(#[source] postcard::Error),
    /// The underlying stream failed.
    #[error("frame I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The QUIC application error code to close the stream with.
    pub fn error_code(&self) -> u32 {
        match self {
            FrameError::TooLarge { .. } => error_code::FRAME_TOO_LARGE,
            FrameError::Decode(_) | FrameError::TrailingBytes(_) => error_code::DECODE_ERROR,
            FrameError::Truncated { .. } => error_code::PROTOCOL_VIOLATION,
            FrameError::Encode(_) | FrameError::Io(_) => error_code::INTERNAL_ERROR,
        }
    }
}

/// Encodes a value as a bare postcard body (no length prefix), e.g. a
/// [`PollRequest`](crate::PollRequest) for an HTTP body.
pub fn to_body<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, FrameError> {
    postcard::to_allocvec(value).map_err(FrameError::Encode)
}

/// Decodes a bare postcard body; the whole input must be used.
pub fn from_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(FrameError::Decode)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(FrameError::TrailingBytes(rest.len()))
    }
}

/// Decodes the body of one frame (without its length prefix) as a [`Message`].
pub fn decode_body(body: &[u8]) -> Result<Message, FrameError> {
    from_body(body)
}

/// Encodes a message as one frame (header and body), refusing a body over
/// [`DEFAULT_MAX_FRAME`].
pub fn encode_frame(msg: &Message) -> Result<Vec<u8>, FrameError> {
    encode_frame_with_max(msg, DEFAULT_MAX_FRAME)
}

/// Encodes a message as one frame (header and body), refusing a body over `max` bytes.
pub fn encode_frame_with_max(msg: &Message, max: u32) -> Result<Vec<u8>, FrameError> {
    let out = postcard::to_extend(msg, vec![0u8; FRAME_HEADER_LEN]).map_err(FrameError::Encode)?;
    let len = out.len() - FRAME_HEADER_LEN;
    let too_large = || FrameError::TooLarge {
        len: len as u64,
        max,
    };
    let len32 = u32::try_from(len).map_err(|_| too_large())?;
    if len32 > max {
        return Err(too_large());
    }
    let mut out = out;
    out[..FRAME_HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(out)
}

/// A sans-IO frame decoder: [`push`](FrameDecoder::push) bytes as they arrive, then call
/// [`decode`](FrameDecoder::decode) until it returns `Ok(None)`.
///
/// Memory held is the bytes pushed and not yet consumed: the claimed length of a frame is
/// never allocated up front. A [`FrameError::TooLarge`] is reported as soon as the header is
/// complete and is sticky (the stream cannot be resynchronised: every later `decode` returns
/// it again, and pushed bytes are dropped). A [`FrameError::Decode`] or
/// [`FrameError::TrailingBytes`] consumes the bad frame; the caller normally closes the
/// stream anyway (design §2).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: u32,
    /// Set once a header over the limit was seen: the claimed length.
    oversized: Option<u32>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with the [`DEFAULT_MAX_FRAME`] limit.
    pub fn new() -> Self {
        Self::with_max(DEFAULT_MAX_FRAME)
    }

    /// A decoder refusing bodies over `max` bytes.
    pub fn with_max(max: u32) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            max,
            oversized: None,
        }
    }

    /// The body size limit.
    pub fn max_frame_len(&self) -> u32 {
        self.max
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.oversized.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes buffered and not yet consumed.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Capacity of the internal buffer (for tests and metrics: it follows the bytes pushed,
    /// never a claimed frame length).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Pops the next complete message: `Ok(None)` when more bytes are needed.
    pub fn decode(&mut self) -> Result<Option<Message>, FrameError> {
        if let Some(len) = self.oversized {
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                max: self.max,
            });
        }
        let Some(header) = self.buf.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header);
        if len > self.max {
            self.oversized = Some(len);
            self.buf = BytesMut::new();
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                max: self.max,
            });
        }
        // `len <= max <= u32::MAX` fits usize on every supported target.
        let total = FRAME_HEADER_LEN + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        let body = self.buf.split_to(len as usize);
        decode_body(&body).map(Some)
    }

    /// Checks the end of the stream: an error if a frame was cut short (or the stream had
    /// already failed with a too-large frame), `Ok(())` if it ended between frames.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(len) = self.oversized {
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                max: self.max,
            });
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let expected = match self.buf.first_chunk::<FRAME_HEADER_LEN>() {
            Some(h) => FRAME_HEADER_LEN as u64 + u64::from(u32::from_be_bytes(*h)),
            None => FRAME_HEADER_LEN as u64,
        };
        Err(FrameError::Truncated {
            expected,
            received: self.buf.len() as u64,
        })
    }
}

/// Reads one frame: `Ok(None)` on a clean end of stream between frames, an error if the
/// stream ends inside one. Not cancel-safe (a dropped future loses a partial frame); for a
/// `select!` loop, use a [`FrameDecoder`] over the raw reads instead.
pub async fn read_frame<R>(r: &mut R, max: u32) -> Result<Option<Message>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut body = Vec::new();
    read_frame_with_buf(r, max, &mut body).await
}

/// [`read_frame`] reusing `buf` for the body (cleared first). The buffer grows only as body
/// bytes arrive: after an error its capacity shows how much was really set aside.
pub async fn read_frame_with_buf<R>(
    r: &mut R,
    max: u32,
    buf: &mut Vec<u8>,
) -> Result<Option<Message>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    buf.clear();
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut got = 0;
    while got < FRAME_HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                expected: FRAME_HEADER_LEN as u64,
                received: got as u64,
            });
        }
        got += n;
    }
    let len = u32::from_be_bytes(header);
    if len > max {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max,
        });
    }
    let len = len as usize;
    while buf.len() < len {
        let filled = buf.len();
        let step = (len - filled).min(filled.max(FIRST_READ_CHUNK));
        buf.resize(filled + step, 0);
        let n = match r.read(&mut buf[filled..]).await {
            Ok(n) => n,
            Err(e) => {
                buf.truncate(filled);
                return Err(e.into());
            }
        };
        buf.truncate(filled + n);
        if n == 0 {
            return Err(FrameError::Truncated {
                expected: (FRAME_HEADER_LEN + len) as u64,
                received: (FRAME_HEADER_LEN + filled) as u64,
            });
        }
    }
    decode_body(buf).map(Some)
}

/// Encodes `msg` as one frame (refusing a body over `max`), writes it and flushes.
pub async fn write_frame<W>(w: &mut W, msg: &Message, max: u32) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let frame = encode_frame_with_max(msg, max)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Accepted, Reject};
    use uuid::Uuid;

    fn sample() -> Message {
        Message::Reject(Reject {
            reason: "upgrade required".into(),
        })
    }

    #[test]
    fn round_trip_through_decoder() {
        let frame = encode_frame(&sample()).unwrap();
        assert_eq!(
            u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
            frame.len() - 4
        );
        let mut d = FrameDecoder::new();
        d.push(&frame);
        assert_eq!(d.decode().unwrap(), Some(sample()));
        assert_eq!(d.decode().unwrap(), None);
        assert!(d.finish().is_ok());
    }

    #[test]
    fn oversized_header_is_sticky_and_drops_input() {
        let mut d = FrameDecoder::with_max(10);
        d.push(&[0, 0, 0, 11]);
        assert!(matches!(
            d.decode(),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        ));
        d.push(&[0; 100]);
        assert_eq!(d.buffered_len(), 0);
        assert!(matches!(d.decode(), Err(FrameError::TooLarge { .. })));
        assert!(matches!(d.finish(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn decode_error_keeps_sync() {
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 0, 1, 0xff]);
        let good = Message::Accepted(Accepted {
            task_id: Uuid::from_u128(7),
            attempt: 1,
        });
        d.push(&encode_frame(&good).unwrap());
        let err = d.decode().unwrap_err();
        assert_eq!(err.error_code(), error_code::DECODE_ERROR);
        assert_eq!(d.decode().unwrap(), Some(good));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut body = to_body(&sample()).unwrap();
        body.push(0);
        assert!(matches!(
            decode_body(&body),
            Err(FrameError::TrailingBytes(1))
        ));
    }

    #[test]
    fn encode_refuses_over_max() {
        let body_len = to_body(&sample()).unwrap().len() as u32;
        assert!(encode_frame_with_max(&sample(), body_len).is_ok());
        let err = encode_frame_with_max(&sample(), body_len - 1).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert_eq!(err.error_code(), error_code::FRAME_TOO_LARGE);
    }

    #[test]
    fn finish_reports_truncation() {
        let frame = encode_frame(&sample()).unwrap();
        let mut d = FrameDecoder::new();
        d.push(&frame[..2]);
        assert!(matches!(
            d.finish(),
            Err(FrameError::Truncated {
                expected: 4,
                received: 2
            })
        ));
        d.push(&frame[2..frame.len() - 1]);
        assert_eq!(d.decode().unwrap(), None);
        let err = d.finish().unwrap_err();
        assert_eq!(err.error_code(), error_code::PROTOCOL_VIOLATION);
        assert!(matches!(err, FrameError::Truncated { expected, received }
            if expected == frame.len() as u64 && received == frame.len() as u64 - 1));
    }
}
