//! Raw framing of tagged messages: `tag: u8, len: i32 (includes itself), body`.
//!
//! A frame keeps the whole message (header included) as one `Bytes`, so relaying it
//! is a reference-counted slice, never a copy or a re-encode. The length is checked
//! against a limit before any buffer grows for it (cf. pgwire's codec bounds checks).

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes in a tagged message header (tag + length).
pub const HEADER_LEN: usize = 5;

/// One whole protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte.
    pub tag: u8,
    /// The whole message as received: tag, length, body.
    pub raw: Bytes,
}

impl Frame {
    /// The body after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        &self.raw[HEADER_LEN..]
    }

    /// Builds a frame from a tag and body (used for messages pgrouter synthesises).
    pub fn from_parts(tag: u8, body: &[u8]) -> Frame {
        let mut raw = BytesMut::with_capacity(HEADER_LEN + body.len());
        raw.extend_from_slice(&[tag]);
        raw.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        raw.extend_from_slice(body);
        Frame {
            tag,
            raw: raw.freeze(),
        }
    }
}

/// A framing error: the peer sent something that is not a valid message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("message {tag:?} declares length {len}, below the minimum of 4")]
    BadLength { tag: char, len: i32 },
    #[error("message {tag:?} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { tag: char, len: usize, limit: usize },
}

/// Takes one complete frame off the front of `buf`, if one is there.
///
/// Returns `Ok(None)` when more bytes are needed. Reserves room for a large frame
/// only after its length passed the limit check.
pub fn try_decode(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let declared = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if declared < 4 {
        return Err(FrameError::BadLength {
            tag: tag as char,
            len: declared,
        });
    }
    let total = declared as usize + 1;
    if total > max_len {
        return Err(FrameError::TooLarge {
            tag: tag as char,
            len: total,
            limit: max_len,
        });
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let raw = buf.split_to(total).freeze();
    Ok(Some(Frame { tag, raw }))
}

/// Errors reading frames from a peer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Frame(#[from] FrameError),
}

/// Buffered frame reader over one half of a socket.
///
/// `fill` is cancel-safe (bytes read stay in the buffer), so it can sit in a
/// `tokio::select!` beside other sources.
pub struct FramedReader<R> {
    inner: R,
    buf: BytesMut,
    max_len: usize,
    /// What an empty buffer is shrunk back to (after a large message), so an
    /// idle connection holds little memory: thousands of idle clients are the
    /// point of pooling.
    idle_capacity: usize,
}

/// How much the buffer grows by when it runs short.
const READ_CHUNK: usize = 16 * 1024;
/// Read buffer an idle client keeps (its next query usually fits).
pub const CLIENT_IDLE_BUFFER: usize = 1024;
/// Read buffer an idle server connection keeps (results arrive in bursts).
pub const SERVER_IDLE_BUFFER: usize = 64 * 1024;
/// Less free space than this before a read: grow first.
const MIN_SPARE: usize = 256;

impl<R: AsyncRead + Unpin> FramedReader<R> {
    /// A reader whose buffer shrinks back to `idle_capacity` when drained.
    pub fn new(inner: R, max_len: usize, idle_capacity: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(idle_capacity.min(READ_CHUNK)),
            max_len,
            idle_capacity,
        }
    }

    /// The next frame already in the buffer, without I/O.
    pub fn try_next(&mut self) -> Result<Option<Frame>, FrameError> {
        try_decode(&mut self.buf, self.max_len)
    }

    /// Whether a whole frame is buffered.
    pub fn has_frame(&self) -> bool {
        if self.buf.len() < HEADER_LEN {
            return false;
        }
        let declared = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        // A bad length counts as "ready" so the caller surfaces the error.
        declared < 4 || self.buf.len() > declared as usize
    }

    /// Reads once from the socket. Returns 0 at end of stream.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.is_empty() && self.buf.capacity() > self.idle_capacity {
            self.buf = BytesMut::with_capacity(self.idle_capacity);
        } else if self.buf.capacity() - self.buf.len() < MIN_SPARE {
            self.buf.reserve(READ_CHUNK);
        }
        self.inner.read_buf(&mut self.buf).await
    }

    /// Waits for the next frame. `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.try_next()? {
                return Ok(Some(frame));
            }
            if self.fill().await? == 0 {
                if self.buf.has_remaining() {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
                return Ok(None);
            }
        }
    }

    /// Bytes buffered but not yet framed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Gives back the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_whole_frames_and_waits_for_partial() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[b'Q', 0, 0, 0, 9, b's', b'e', b'l']);
        assert_eq!(try_decode(&mut buf, 1024), Ok(None));
        buf.extend_from_slice(&[b'1', 0, b'Z']);
        let frame = try_decode(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(frame.tag, b'Q');
        assert_eq!(frame.body(), b"sel1\0");
        assert_eq!(&buf[..], b"Z");
    }

    #[test]
    fn rejects_bad_and_oversized_lengths_before_allocating() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert!(matches!(
            try_decode(&mut buf, 1024),
            Err(FrameError::BadLength { .. })
        ));
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            try_decode(&mut buf, 1024),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(buf.capacity() < 1024);
        let mut buf = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            try_decode(&mut buf, 1024),
            Err(FrameError::BadLength { .. })
        ));
    }

    #[tokio::test]
    async fn an_idle_buffer_shrinks_back_after_growing() {
        let body = vec![b'x'; 200_000];
        let large = Frame::from_parts(b'D', &body);
        let small = Frame::from_parts(b'Z', b"I");
        let wire = [&large.raw[..], &small.raw[..]].concat();
        let mut reader = FramedReader::new(&wire[..], 1 << 20, CLIENT_IDLE_BUFFER);
        assert_eq!(reader.next().await.unwrap(), Some(large));
        let after_large = reader.buf.capacity();
        // Reading on grows the buffer by a read chunk (16 KB) again.
        assert_eq!(reader.next().await.unwrap(), Some(small));
        // Drained: the next read starts from a buffer of the idle size.
        assert_eq!(reader.fill().await.unwrap(), 0);
        let idle = reader.buf.capacity();
        assert!(idle <= CLIENT_IDLE_BUFFER, "{after_large} -> {idle}");
    }

    #[test]
    fn from_parts_round_trips() {
        let frame = Frame::from_parts(b'S', b"");
        assert_eq!(&frame.raw[..], &[b'S', 0, 0, 0, 4]);
        let mut buf = BytesMut::from(&frame.raw[..]);
        assert_eq!(try_decode(&mut buf, 64).unwrap(), Some(frame));
    }
}
