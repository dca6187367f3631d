//! etcdctl 3.4 sends an endpoint given as a URL (`--endpoints http://HOST:PORT`)
//! whole as the HTTP/2 `:authority` of its per-endpoint calls (`endpoint status`,
//! `endpoint hashkv`, `defrag`). etcd's Go server takes it; the h2 crate under
//! tonic refuses it as malformed (a stream reset with PROTOCOL_ERROR) before any
//! handler runs. [`FixAuthority`] wraps a plaintext connection and reads the
//! client's first header block: when its `:authority` names a scheme, every header
//! block of the connection is passed on with the scheme dropped; otherwise it
//! steps aside and passes the bytes through untouched.
//!
//! A header block is HPACK-compressed against a table that the client's encoder
//! and the server's decoder keep in step. A rewritten block is decoded with the
//! client's table ([`loona_hpack::Decoder`]) and encoded again as literals that do
//! not enter the server's table, so both tables stay consistent whatever the
//! client indexes. Every other frame passes unchanged.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The client connection preface of HTTP/2.
const PREFACE_LEN: usize = 24;
/// A frame's head: length (24 bits), type, flags, stream id.
const HEAD_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload a peer must accept (SETTINGS_MAX_FRAME_SIZE's
/// default, which tonic's server keeps): rewritten blocks are cut to it.
const MAX_PAYLOAD: usize = 16_384;
/// How much is read from the connection at a time while frames are looked at.
const READ_CHUNK: usize = 16 * 1024;

/// What the wrapper does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before the client's connection preface has passed.
    Preface,
    /// Looking at frames: rewriting header blocks, or not yet knowing whether to.
    Frames { rewrite: bool },
    /// Out of the way for good.
    Pass,
}

/// A header block being gathered (a HEADERS frame and its CONTINUATIONs).
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as they came, to pass on unchanged.
    original: Vec<u8>,
}

/// A connection whose header blocks get their `:authority` mended; see the
/// module docs.
pub struct FixAuthority<S> {
    inner: S,
    mode: Mode,
    /// Read from `inner`, not yet looked at.
    raw: BytesMut,
    /// Ready for the reader.
    out: BytesMut,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
}

impl<S> FixAuthority<S> {
    /// Wraps the plaintext HTTP/2 connection `inner`.
    pub fn new(inner: S) -> Self {
        FixAuthority {
            inner,
            mode: Mode::Preface,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            block: None,
            decoder: loona_hpack::Decoder::new(),
        }
    }

    /// Wraps `inner` and passes every byte as it is (a TLS connection, whose
    /// bytes here are encrypted).
    pub fn passing(inner: S) -> Self {
        FixAuthority {
            mode: Mode::Pass,
            ..Self::new(inner)
        }
    }

    /// Moves what can be dealt with from `raw` to `out`; whether anything moved.
    fn process(&mut self) -> bool {
        match self.mode {
            Mode::Pass => {
                let moved = !self.raw.is_empty();
                let raw = self.raw.split();
                self.out.extend_from_slice(&raw);
                moved
            }
            Mode::Preface => {
                if self.raw.len() < PREFACE_LEN {
                    return false;
                }
                let preface = self.raw.split_to(PREFACE_LEN);
                self.out.extend_from_slice(&preface);
                self.mode = Mode::Frames { rewrite: false };
                true
            }
            Mode::Frames { .. } => {
                if self.raw.len() < HEAD_LEN {
                    return false;
                }
                let len = (usize::from(self.raw[0]) << 16)
                    | (usize::from(self.raw[1]) << 8)
                    | usize::from(self.raw[2]);
                if self.raw.len() < HEAD_LEN + len {
                    return false;
                }
                let frame = self.raw.split_to(HEAD_LEN + len);
                self.frame(&frame);
                true
            }
        }
    }

    /// One whole frame (head and payload).
    fn frame(&mut self, frame: &[u8]) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[HEAD_LEN..];
        if let Some(block) = &mut self.block {
            if kind != CONTINUATION || stream != block.stream {
                // Not HTTP/2 as it must be: h2 will say so; pass it all on.
                self.give_up(Some(frame));
                return;
            }
            block.fragment.extend_from_slice(payload);
            block.original.extend_from_slice(frame);
            if flags & END_HEADERS != 0 {
                self.end_block();
            }
            return;
        }
        if kind != HEADERS {
            self.out.extend_from_slice(frame);
            return;
        }
        let mut body = payload;
        let mut pad = 0;
        if flags & PADDED != 0 {
            let Some((&n, rest)) = body.split_first() else {
                return self.give_up(Some(frame));
            };
            pad = usize::from(n);
            body = rest;
        }
        let mut priority = None;
        if flags & PRIORITY != 0 {
            let Some((head, rest)) = body.split_first_chunk::<5>() else {
                return self.give_up(Some(frame));
            };
            priority = Some(*head);
            body = rest;
        }
        let Some(fragment) = body.len().checked_sub(pad).map(|end| &body[..end]) else {
            return self.give_up(Some(frame));
        };
        self.block = Some(Block {
            stream,
            end_stream: flags & END_STREAM != 0,
            priority,
            fragment: fragment.to_vec(),
            original: frame.to_vec(),
        });
        if flags & END_HEADERS != 0 {
            self.end_block();
        }
    }

    /// A whole header block: decoded, then passed on as it came or rewritten.
    fn end_block(&mut self) {
        let Some(block) = self.block.take() else {
            return;
        };
        let mut fields = Vec::new();
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            fields.push((name.into_owned(), value.into_owned()));
        });
        if decoded.is_err() {
            self.out.extend_from_slice(&block.original);
            return self.give_up(None);
        }
        let Mode::Frames { rewrite } = self.mode else {
            return;
        };
        let mended = fields.iter().any(|(name, value)| {
            name.as_slice() == b":authority" && matches!(mend(value), Cow::Owned(_))
        });
        if !rewrite && !mended {
            // The usual case: the client names the authority as h2 wants it.
            self.out.extend_from_slice(&block.original);
            self.mode = Mode::Pass;
            return;
        }
        self.mode = Mode::Frames { rewrite: true };
        let mut encoded = Vec::new();
        for (name, value) in &fields {
            let value = match name.as_slice() {
                b":authority" => mend(value),
                _ => Cow::Borrowed(value.as_slice()),
            };
            literal(&mut encoded, name, &value);
        }
        self.write_block(&block, &encoded);
    }

    /// Frames carrying the header block `encoded` in place of `block`'s.
    fn write_block(&mut self, block: &Block, encoded: &[u8]) {
        let mut first = Vec::with_capacity(5 + encoded.len().min(MAX_PAYLOAD));
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if let Some(priority) = block.priority {
            first.extend_from_slice(&priority);
            flags |= PRIORITY;
        }
        let room = MAX_PAYLOAD - first.len();
        let (head, mut rest) = encoded.split_at(encoded.len().min(room));
        first.extend_from_slice(head);
        let last = rest.is_empty();
        self.push_frame(
            HEADERS,
            flags | if last { END_HEADERS } else { 0 },
            block.stream,
            &first,
        );
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(rest.len().min(MAX_PAYLOAD));
            rest = after;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            self.push_frame(CONTINUATION, flags, block.stream, chunk);
        }
    }

    fn push_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len().to_be_bytes();
        self.out.extend_from_slice(&len[len.len() - 3..]);
        self.out.extend_from_slice(&[kind, flags]);
        self.out.extend_from_slice(&stream.to_be_bytes());
        self.out.extend_from_slice(payload);
    }

    /// Stops looking: what is gathered (and `frame`) passes on unchanged, and so
    /// does everything after it.
    fn give_up(&mut self, frame: Option<&[u8]>) {
        if let Some(block) = self.block.take() {
            self.out.extend_from_slice(&block.original);
        }
        if let Some(frame) = frame {
            self.out.extend_from_slice(frame);
        }
        self.mode = Mode::Pass;
    }
}

/// The authority `value` names: without a scheme (`http://`, `https://`) and
/// anything after the host and port. Borrowed when there is nothing to mend.
fn mend(value: &[u8]) -> Cow<'_, [u8]> {
    let Some(at) = value.windows(3).position(|w| w == b"://") else {
        return Cow::Borrowed(value);
    };
    let rest = &value[at + 3..];
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    Cow::Owned(rest[..end].to_vec())
}

/// Appends the field `name: value` as a literal that is not indexed (RFC 7541
/// section 6.2.2, a new name), so that it leaves the decoder's table as it was.
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for string in [name, value] {
        integer(out, string.len(), 7, 0x00);
        out.extend_from_slice(string);
    }
}

/// Appends `n` as an HPACK integer with an `prefix`-bit prefix under `first`'s
/// high bits (RFC 7541 section 5.1).
fn integer(out: &mut Vec<u8>, mut n: usize, prefix: u32, first: u8) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Pass && this.raw.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.process() {
                continue;
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // The end: what is left passes on as it is.
                    this.give_up(None);
                    if !this.process() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => this.raw.extend_from_slice(read.filled()),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for FixAuthority<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_loses_its_scheme_and_path_and_keeps_host_and_port() {
        assert_eq!(&*mend(b"http://127.0.0.1:2379"), b"127.0.0.1:2379");
        assert_eq!(&*mend(b"https://etcd.example:2379/"), b"etcd.example:2379");
        assert!(matches!(mend(b"127.0.0.1:2379"), Cow::Borrowed(_)));
    }

    #[test]
    fn literals_decode_to_the_fields_they_were_made_of() {
        let long = vec![b'x'; 300];
        let mut block = Vec::new();
        literal(&mut block, b":authority", b"127.0.0.1:2379");
        literal(&mut block, b"x-long", &long);
        let mut decoder = loona_hpack::Decoder::new();
        let fields = decoder.decode(&block).expect("a valid block");
        assert_eq!(
            fields,
            vec![
                (b":authority".to_vec(), b"127.0.0.1:2379".to_vec()),
                (b"x-long".to_vec(), long)
            ]
        );
    }
}
