//! Minimal contract-3 client connections for holding many idle sessions cheaply: connect
//! (optionally from a chosen loopback source address), send HELLO, read the answer's kind,
//! then send empty PINGs by hand. No codec and no read buffer is kept per connection, so
//! the client side of a 20 000-connection run stays small.

use std::io;
use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use switchyard_proto::v1;
use switchyard_proto::wire::{DEFAULT_MAX_FRAME, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// HELLO's kind byte.
pub const KIND_HELLO: u8 = 0x01;
/// WELCOME's kind byte.
pub const KIND_WELCOME: u8 = 0x02;
/// PING's kind byte.
pub const KIND_PING: u8 = 0x03;
/// PONG's kind byte.
pub const KIND_PONG: u8 = 0x04;
/// An empty PING on the wire: length 1, kind 0x03.
pub const PING: [u8; 5] = [0, 0, 0, 1, KIND_PING];

/// The length a frame header announces, refused when 0 or over the default frame limit.
pub fn frame_len(head: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_be_bytes(head) as usize;
    if len == 0 || len > DEFAULT_MAX_FRAME {
        return Err(io::Error::other(format!("frame length {len}")));
    }
    Ok(len)
}

/// Reads one length-prefixed frame and returns its kind byte (the payload is discarded).
pub async fn read_kind(s: &mut TcpStream) -> io::Result<u8> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    let mut body = vec![0u8; frame_len(head)?];
    s.read_exact(&mut body).await?;
    Ok(body[0])
}

/// Connects to `dst` (from `src` port 0 when given: each loopback source address has its
/// own ephemeral port range), sends HELLO as `client_id` and returns the stream with the
/// answer's kind byte.
pub async fn hello(
    dst: SocketAddr,
    src: Option<IpAddr>,
    client_id: String,
) -> io::Result<(TcpStream, u8)> {
    let socket = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = src {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut s = socket.connect(dst).await?;
    s.set_nodelay(true)?;
    let mut frame = BytesMut::new();
    Frame::Hello(v1::Hello {
        client_id,
        token: String::new(),
        session_id: String::new(),
        client_version: "switchyard-bench".into(),
    })
    .encode(&mut frame);
    s.write_all(&frame).await?;
    let kind = read_kind(&mut s).await?;
    Ok((s, kind))
}

/// [`hello`] that insists on WELCOME.
pub async fn login(
    dst: SocketAddr,
    src: Option<IpAddr>,
    client_id: String,
) -> io::Result<TcpStream> {
    match hello(dst, src, client_id).await? {
        (s, KIND_WELCOME) => Ok(s),
        (_, k) => Err(io::Error::other(format!(
            "answer to HELLO has kind {k:#04x}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths_are_checked() {
        assert_eq!(frame_len([0, 0, 0, 1]).unwrap(), 1);
        assert_eq!(frame_len([0, 1, 0, 0]).unwrap(), DEFAULT_MAX_FRAME);
        assert!(frame_len([0, 0, 0, 0]).is_err());
        assert!(frame_len([0, 1, 0, 1]).is_err());
        // The hand-made PING is what the codec would write.
        let mut b = BytesMut::new();
        Frame::Ping(bytes::Bytes::new()).encode(&mut b);
        assert_eq!(b.as_ref(), PING);
    }
}
