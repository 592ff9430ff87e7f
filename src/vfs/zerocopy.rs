//! Zero-copy reads (Linux): a ranged GET's body goes from the server's socket to the
//! application without being copied through user space.
//!
//! A read at the stream's position puts the adapter's reply header into a pipe, moves the
//! next bytes of the body from the socket into the same pipe with `splice` (the kernel hands
//! over references to the received pages, no copy), and the adapter's [`SpliceSink`] splices
//! the whole answer on (the FUSE frontend: into `/dev/fuse`, which copies the bytes once, into
//! the reader's buffer). The socket's receive buffer is the read-ahead.
//!
//! A pipe holds a number of pieces, not of bytes: where a response arrives in small packets
//! (a real network's 1500-byte frames rather than loopback's 64 KiB), an answer may not fit.
//! It is then copied after all, and the handle's later responses take the ordinary path of
//! `read.rs`, which also takes over whenever a transfer breaks or stalls.
//!
//! Used for read-only handles with `--direct-io` on plain-HTTP mounts (`dav::client::RawBody`
//! says when the server's answer allows it).

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;

use crate::dav::client::RawBody;
use crate::sys::pipe::{SPLICE_MOVE_NONBLOCK, has_room, read_exact_fd, splice};

/// The adapter's end of a zero-copy answer.
pub trait SpliceSink: Send + Sync {
    /// What must precede an answer of `n` bytes (the reply header).
    fn header(&self, n: usize) -> io::Result<Vec<u8>>;
    /// Delivers the answer: `total` bytes (header and data) waiting in `pipe`. On error the
    /// answer was not delivered (the caller answers the request with an error), and the pipe
    /// may still hold some of it.
    fn deliver(&self, pipe: BorrowedFd<'_>, total: usize) -> io::Result<()>;
}

/// Largest read answered by splicing; the mount's `max_read`. Half the pipe (`PIPE_SIZE`), so that an
/// answer fits even when its bytes lie in twice as many pages as their size needs.
pub const RAW_MAX_READ: usize = 512 << 10;

/// How a zero-copy answer went.
pub(super) enum Answer {
    /// Delivered through the sink (or the request is gone: nobody waits for it).
    Sent,
    /// The bytes did not fit in the pipe: here they are, to be answered the ordinary way.
    Copied(Bytes),
    /// The transfer broke or stalled after `got` bytes of the answer.
    Broken { got: Bytes, why: String },
    /// The answer was in the pipe but the sink could not deliver it (typically the request
    /// was interrupted meanwhile). The stream cannot go on: its pipe may hold some of it.
    Undelivered(io::Error),
}

/// A response body left in its socket.
pub(super) struct RawStream {
    socket: TcpStream,
    pipe: (OwnedFd, std::fs::File),
    /// File offset of the next byte in the socket.
    pub(super) pos: u64,
    /// Exclusive end of what the response covers.
    pub(super) end: u64,
}

impl RawStream {
    /// A stream of `body` through `pipe` (made before the request, see `sys::pipe::pipe`).
    pub(super) fn new(body: RawBody, pipe: (OwnedFd, std::fs::File)) -> Self {
        RawStream {
            pipe,
            pos: body.range.start,
            end: body.range.end + 1,
            socket: body.socket,
        }
    }

    /// Answers a read of the next `n` bytes (at most `RAW_MAX_READ`) through `sink`. A
    /// transfer with no progress for `stall` is broken.
    pub(super) async fn answer(
        &mut self,
        sink: &dyn SpliceSink,
        n: usize,
        stall: Duration,
    ) -> Answer {
        let header = match sink.header(n) {
            Ok(h) => h,
            Err(e) => return self.broken(0, 0, e.to_string()),
        };
        // The pipe is empty between answers: the header fits without waiting.
        if let Err(e) = self.pipe.1.write_all(&header) {
            return self.broken(0, 0, e.to_string());
        }
        let h = header.len();
        let mut moved = 0;
        while moved < n {
            if !has_room(self.pipe.1.as_fd()) {
                return self.copy_rest(h, moved, n, stall).await;
            }
            let (sock, pipe) = (&self.socket, &self.pipe.1);
            let flags = SPLICE_MOVE_NONBLOCK;
            let r = sock.try_io(Interest::READABLE, || {
                splice(sock.as_fd(), pipe.as_fd(), n - moved, flags)
            });
            match r {
                Ok(0) => return self.broken(h, moved, "the server ended the body early".into()),
                Ok(k) => moved += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match tokio::time::timeout(stall, self.socket.readable()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return self.broken(h, moved, e.to_string()),
                        Err(_) => {
                            let why = "no progress within the timeout (--timeout)".to_owned();
                            return self.broken(h, moved, why);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.broken(h, moved, e.to_string()),
            }
        }
        // The socket is past these bytes whatever happens to them now.
        self.pos += n as u64;
        match sink.deliver(self.pipe.0.as_fd(), h + n) {
            Ok(()) => Answer::Sent,
            Err(e) => Answer::Undelivered(e),
        }
    }

    /// The pipe is full before the answer is in: takes the `moved` bytes back out of it and
    /// reads the rest from the socket.
    async fn copy_rest(&mut self, h: usize, moved: usize, n: usize, stall: Duration) -> Answer {
        let mut buf = BytesMut::zeroed(h + n);
        if let Err(e) = read_exact_fd(self.pipe.0.as_fd(), &mut buf[..h + moved]) {
            return Answer::Broken {
                got: Bytes::new(),
                why: e.to_string(),
            };
        }
        let rest = self.socket.read_exact(&mut buf[h + moved..]);
        match tokio::time::timeout(stall, rest).await {
            Ok(Ok(_)) => {
                self.pos += n as u64;
                Answer::Copied(buf.freeze().slice(h..))
            }
            // What arrived of the rest is lost with the socket; the caller resumes after
            // the bytes from the pipe.
            Ok(Err(e)) => self.broken_with(buf.freeze().slice(h..h + moved), e.to_string()),
            Err(_) => self.broken_with(
                buf.freeze().slice(h..h + moved),
                "no progress within the timeout (--timeout)".into(),
            ),
        }
    }

    /// The transfer broke with the header (`h` bytes) and `moved` bytes of the answer in the
    /// pipe: takes them out.
    fn broken(&mut self, h: usize, moved: usize, why: String) -> Answer {
        let mut buf = vec![0u8; h + moved];
        let got = match read_exact_fd(self.pipe.0.as_fd(), &mut buf) {
            Ok(()) => Bytes::from(buf).slice(h..),
            Err(_) => Bytes::new(),
        };
        self.broken_with(got, why)
    }

    fn broken_with(&mut self, got: Bytes, why: String) -> Answer {
        self.pos += got.len() as u64;
        Answer::Broken { got, why }
    }
}
