//! The long-connection frame codec (DESIGN contract 3), shared by gateways and clients.
//!
//! A frame on a byte stream is a `u32` big-endian length `N` of what follows, one kind byte,
//! then `N - 1` payload bytes. Over WebSocket one binary message carries one frame without
//! the length prefix ([`Frame::decode_body`], [`Frame::encode_body`]). The decoder checks
//! length, kind and payload before allocating anything for them: an oversized length is
//! refused from the 5-byte header alone.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

use crate::v1;

pub use crate::limits::{DEFAULT_MAX_FRAME, MAX_PING_PAYLOAD};

/// Frame kinds, the byte after the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Client's first frame.
    Hello = 0x01,
    /// Login accepted.
    Welcome = 0x02,
    /// Heartbeat.
    Ping = 0x03,
    /// Heartbeat answer.
    Pong = 0x04,
    /// Application data with a sequence number.
    Data = 0x05,
    /// Terminal: do not reconnect.
    Kick = 0x06,
    /// Move elsewhere within a window.
    GoAway = 0x07,
    /// HELLO refused.
    Reject = 0x08,
    /// Cumulative acknowledgement.
    Ack = 0x09,
}

impl Kind {
    /// The kind for a byte, if it is one.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::Hello,
            0x02 => Self::Welcome,
            0x03 => Self::Ping,
            0x04 => Self::Pong,
            0x05 => Self::Data,
            0x06 => Self::Kick,
            0x07 => Self::GoAway,
            0x08 => Self::Reject,
            0x09 => Self::Ack,
            _ => return None,
        })
    }

    /// Lower-case name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Welcome => "welcome",
            Self::Ping => "ping",
            Self::Pong => "pong",
            Self::Data => "data",
            Self::Kick => "kick",
            Self::GoAway => "goaway",
            Self::Reject => "reject",
            Self::Ack => "ack",
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// 0x01 HELLO.
    Hello(v1::Hello),
    /// 0x02 WELCOME.
    Welcome(v1::Welcome),
    /// 0x03 PING with an optional opaque payload (≤ 64 bytes).
    Ping(Bytes),
    /// 0x04 PONG echoing the PING payload.
    Pong(Bytes),
    /// 0x05 DATA: sequence number (0 = not acknowledged) and application bytes.
    Data {
        /// Sender's sequence number; 0 asks for no acknowledgement.
        seq: u64,
        /// Application bytes.
        payload: Bytes,
    },
    /// 0x06 KICK.
    Kick(v1::Kick),
    /// 0x07 GOAWAY.
    GoAway(v1::GoAway),
    /// 0x08 REJECT.
    Reject(v1::Reject),
    /// 0x09 ACK: highest sequence received in order.
    Ack(u64),
}

/// Why a frame was refused. Every variant closes that connection and nothing else.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Length field over the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// Length field 0: no kind byte.
    #[error("empty frame (length 0, no kind byte)")]
    Empty,
    /// Kind byte not in the protocol.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// Payload does not fit the kind.
    #[error("bad {kind} payload: {reason}")]
    BadPayload {
        /// Kind name.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The byte stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Short reason label for metrics (`too_large`, `empty`, `unknown_kind`, `bad_payload`, `io`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Empty => "empty",
            Self::UnknownKind(_) => "unknown_kind",
            Self::BadPayload { .. } => "bad_payload",
            Self::Io(_) => "io",
        }
    }
}

fn bad(kind: Kind, reason: impl Into<String>) -> FrameError {
    FrameError::BadPayload {
        kind: kind.name(),
        reason: reason.into(),
    }
}

fn proto<M: Message + Default>(kind: Kind, body: Bytes) -> Result<M, FrameError> {
    M::decode(body).map_err(|e| bad(kind, e.to_string()))
}

fn seq(kind: Kind, mut body: Bytes, exact: bool) -> Result<(u64, Bytes), FrameError> {
    if body.len() < 8 || (exact && body.len() != 8) {
        return Err(bad(
            kind,
            format!(
                "needs {} 8-byte sequence number, got {} bytes",
                if exact { "exactly an" } else { "an" },
                body.len()
            ),
        ));
    }
    let n = body.get_u64();
    Ok((n, body))
}

impl Frame {
    /// The frame's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Hello(_) => Kind::Hello,
            Self::Welcome(_) => Kind::Welcome,
            Self::Ping(_) => Kind::Ping,
            Self::Pong(_) => Kind::Pong,
            Self::Data { .. } => Kind::Data,
            Self::Kick(_) => Kind::Kick,
            Self::GoAway(_) => Kind::GoAway,
            Self::Reject(_) => Kind::Reject,
            Self::Ack(_) => Kind::Ack,
        }
    }

    /// Decodes a kind byte and payload (a WebSocket message, or a stream frame without its
    /// length). `body` excludes the kind byte.
    pub fn decode_body(kind: u8, body: Bytes) -> Result<Self, FrameError> {
        let k = Kind::from_byte(kind).ok_or(FrameError::UnknownKind(kind))?;
        Ok(match k {
            Kind::Hello => Self::Hello(proto(k, body)?),
            Kind::Welcome => Self::Welcome(proto(k, body)?),
            Kind::Kick => Self::Kick(proto(k, body)?),
            Kind::GoAway => Self::GoAway(proto(k, body)?),
            Kind::Reject => Self::Reject(proto(k, body)?),
            Kind::Ping | Kind::Pong => {
                if body.len() > MAX_PING_PAYLOAD {
                    return Err(bad(
                        k,
                        format!("{} bytes, at most {MAX_PING_PAYLOAD}", body.len()),
                    ));
                }
                if k == Kind::Ping {
                    Self::Ping(body)
                } else {
                    Self::Pong(body)
                }
            }
            Kind::Data => {
                let (seq, payload) = seq(k, body, false)?;
                Self::Data { seq, payload }
            }
            Kind::Ack => Self::Ack(seq(k, body, true)?.0),
        })
    }

    /// Decodes one WebSocket binary message (kind byte + payload).
    pub fn decode_message(mut message: Bytes, max_frame: usize) -> Result<Self, FrameError> {
        if message.is_empty() {
            return Err(FrameError::Empty);
        }
        if message.len() > max_frame {
            return Err(FrameError::TooLarge {
                len: message.len(),
                max: max_frame,
            });
        }
        let kind = message.get_u8();
        Self::decode_body(kind, message)
    }

    /// Length of kind byte + payload (the value of the length field).
    pub fn body_len(&self) -> usize {
        1 + match self {
            Self::Hello(m) => m.encoded_len(),
            Self::Welcome(m) => m.encoded_len(),
            Self::Kick(m) => m.encoded_len(),
            Self::GoAway(m) => m.encoded_len(),
            Self::Reject(m) => m.encoded_len(),
            Self::Ping(b) | Self::Pong(b) => b.len(),
            Self::Data { payload, .. } => 8 + payload.len(),
            Self::Ack(_) => 8,
        }
    }

    /// Writes kind byte + payload (a WebSocket message).
    pub fn encode_body(&self, dst: &mut BytesMut) {
        dst.reserve(self.body_len());
        dst.put_u8(self.kind() as u8);
        // Encoding into a BytesMut with reserved room cannot fail.
        match self {
            Self::Hello(m) => m.encode_raw(dst),
            Self::Welcome(m) => m.encode_raw(dst),
            Self::Kick(m) => m.encode_raw(dst),
            Self::GoAway(m) => m.encode_raw(dst),
            Self::Reject(m) => m.encode_raw(dst),
            Self::Ping(b) | Self::Pong(b) => dst.put_slice(b),
            Self::Data { seq, payload } => {
                dst.put_u64(*seq);
                dst.put_slice(payload);
            }
            Self::Ack(n) => dst.put_u64(*n),
        }
    }

    /// The frame as one WebSocket binary message.
    pub fn to_message(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.body_len());
        self.encode_body(&mut b);
        b.freeze()
    }

    /// Writes the whole stream frame: length, kind byte, payload.
    pub fn encode(&self, dst: &mut BytesMut) {
        let len = self.body_len();
        dst.reserve(4 + len);
        dst.put_u32(len as u32);
        self.encode_body(dst);
    }
}

/// tokio-util codec for length-prefixed frames on a byte stream.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    /// Largest accepted length field; larger frames are refused from the header alone.
    max_frame: usize,
}

impl FrameCodec {
    /// A codec refusing frames whose length field exceeds `max_frame`.
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    /// The configured limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if src.len() < 5 {
            return Ok(None);
        }
        // Check the kind before waiting for (and buffering) the payload.
        if Kind::from_byte(src[4]).is_none() {
            return Err(FrameError::UnknownKind(src[4]));
        }
        // No reserve for the announced length: the buffer grows only as bytes arrive, so a
        // header that promises 64 KiB and sends nothing costs nothing.
        if src.len() < 4 + len {
            return Ok(None);
        }
        src.advance(4);
        let mut body = src.split_to(len).freeze();
        let kind = body.get_u8();
        Frame::decode_body(kind, body).map(Some)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(&frame, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = frame.body_len();
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        frame.encode(dst);
        Ok(())
    }
}

/// Runs the decoder over arbitrary bytes the way a gateway would, for the fuzz target
/// (`fuzz/`) and the corpus replay test: as a byte stream (frames until an error or the end)
/// and as one WebSocket message. Every frame decoded must re-encode to the same frame.
/// Panics only on a decoder bug; malformed input is just an error.
#[doc(hidden)]
pub fn exercise_decoder(data: &[u8]) -> usize {
    let mut codec = FrameCodec::new(4096);
    let mut buf = BytesMut::from(data);
    let mut frames = 0;
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        let mut again = BytesMut::new();
        frame.encode(&mut again);
        let back = FrameCodec::new(usize::MAX)
            .decode(&mut again)
            .expect("re-encoded frame decodes")
            .expect("re-encoded frame is whole");
        assert_eq!(back, frame, "round trip");
        frames += 1;
    }
    if let Ok(frame) = Frame::decode_message(Bytes::copy_from_slice(data), 4096) {
        assert_eq!(
            Frame::decode_message(frame.to_message(), usize::MAX).expect("round trip"),
            frame
        );
        frames += 1;
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(&f, &mut buf).unwrap();
        assert_eq!(buf.len(), 4 + f.body_len());
        // Byte by byte: partial input never yields a frame early.
        let mut partial = BytesMut::new();
        let bytes = buf.to_vec();
        for (i, b) in bytes.iter().enumerate() {
            partial.put_u8(*b);
            let got = codec.decode(&mut partial).unwrap();
            if i + 1 < bytes.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(got.as_ref(), Some(&f));
            }
        }
        assert_eq!(
            Frame::decode_message(f.to_message(), DEFAULT_MAX_FRAME).unwrap(),
            f
        );
    }

    #[test]
    fn every_kind_roundtrips() {
        roundtrip(Frame::Hello(v1::Hello {
            client_id: "u1".into(),
            token: "t".into(),
            session_id: String::new(),
            client_version: "0.1".into(),
        }));
        roundtrip(Frame::Welcome(v1::Welcome {
            gateway_id: "gw-1".into(),
            session_id: "s".into(),
            heartbeat_interval_ms: 30_000,
            idle_timeout_ms: 75_000,
        }));
        roundtrip(Frame::Ping(Bytes::new()));
        roundtrip(Frame::Pong(Bytes::from_static(b"abc")));
        roundtrip(Frame::Data {
            seq: 7,
            payload: Bytes::from_static(b"hello"),
        });
        roundtrip(Frame::Data {
            seq: 0,
            payload: Bytes::new(),
        });
        roundtrip(Frame::Kick(v1::Kick {
            code: v1::KickCode::LoggedInElsewhere as i32,
            reason: "x".into(),
        }));
        roundtrip(Frame::GoAway(v1::GoAway {
            reason: "drain".into(),
            reconnect_within_ms: 30_000,
        }));
        roundtrip(Frame::Reject(v1::Reject {
            code: v1::RejectCode::Overloaded as i32,
            reason: "full".into(),
            retry_after_ms: 1000,
        }));
        roundtrip(Frame::Ack(u64::MAX));
    }

    #[test]
    fn empty_ping_is_five_bytes() {
        let mut buf = BytesMut::new();
        Frame::Ping(Bytes::new()).encode(&mut buf);
        assert_eq!(&buf[..], &[0, 0, 0, 1, 0x03]);
    }

    #[test]
    fn oversized_length_is_refused_from_the_header() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0u8, 0x10, 0, 0][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge {
                len: 0x100000,
                max: 1024
            })
        ));
    }

    #[test]
    fn a_header_alone_reserves_nothing_for_its_payload() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::with_capacity(64);
        buf.put_slice(&[0, 1, 0, 0, 0x05]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= 64, "reserved {} bytes", buf.capacity());
    }

    #[test]
    fn malformed_frames_are_refused_with_a_reason() {
        let mut codec = FrameCodec::default();
        let cases: [(&[u8], &str); 6] = [
            (&[0, 0, 0, 0], "empty"),
            (&[0, 0, 0, 1, 0x7f], "unknown_kind"),
            (&[0, 0, 0, 3, 0x09, 1, 2], "bad_payload"),
            (&[0, 0, 0, 4, 0x05, 1, 2, 3], "bad_payload"),
            (&[0, 0, 0, 3, 0x01, 0xff, 0xff], "bad_payload"),
            (&[0, 0, 0, 2, 0x00, 0], "unknown_kind"),
        ];
        for (bytes, reason) in cases {
            let err = codec.decode(&mut BytesMut::from(bytes)).unwrap_err();
            assert_eq!(err.reason(), reason, "{bytes:?}: {err}");
        }
        let long_ping = Frame::Ping(Bytes::from(vec![0u8; 65])).to_message();
        assert_eq!(
            Frame::decode_message(long_ping, DEFAULT_MAX_FRAME)
                .unwrap_err()
                .reason(),
            "bad_payload"
        );
        assert_eq!(
            Frame::decode_message(Bytes::new(), DEFAULT_MAX_FRAME)
                .unwrap_err()
                .reason(),
            "empty"
        );
    }

    #[test]
    fn fuzz_corpus_replays_cleanly() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode");
        let mut files = 0;
        let mut frames = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/decode exists") {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("read corpus file");
            frames += exercise_decoder(&data);
            files += 1;
        }
        assert!(files >= 10, "corpus has only {files} files");
        assert!(frames > 0, "the corpus holds valid frames too");
    }
}
