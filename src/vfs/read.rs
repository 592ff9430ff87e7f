//! Read streams: ranged GETs with an adaptive read-ahead window.
//!
//! A handle never downloads a whole file on open. Reads are served from one open GET whose
//! body is consumed as the application reads:
//!
//! - Sequential reads (each starting where the previous ended, or slightly ahead, as the
//!   kernel's asynchronous read-ahead delivers them out of order) continue the same response.
//!   When a ranged response is used up, the next range is requested with a window twice as
//!   large (from 4 MiB on four times, see `grown`), up to `max_window`.
//! - A seek outside the retained bytes drops the response and starts a new range with the
//!   window reset to `min_window`, so random reads fetch small ranges.
//! - A few MiB behind the read position are retained so that reads arriving slightly out of
//!   order cost no request. Memory per handle is bounded by `keep_behind` plus one chunk.
//! - Versions are never mixed: every range after the first carries `If-Range` with the
//!   entity tag of the first response (and the size is checked against `Content-Range`);
//!   a server answering 200 to it means the file changed, and the read fails with `Stale`.
//!   The first response is checked against the version the listing described.
//! - Servers that ignore Range (Orthanc answers 200 with the whole body) are detected on the
//!   first response; sequential reads then use that one body for the whole pass, skipping
//!   forward as needed, and only a backward seek starts a new GET.
//! - A broken transfer resumes where its bytes stopped, as often as the resumed transfers
//!   make progress (a reader may live for hours); after `MAX_RESUMES` resumes in a row of
//!   transfers that broke without progress, the next break fails the read.
//! - A handle left unread for `ReadTuning::idle` lets its transfer go (its connection is
//!   closed and its buffers freed, see [`ReadHandle::release_if_idle`]); the next read goes on
//!   with a new request, so a paused reader holds no server connection and is never cut by
//!   the server's own send timeout.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::time::Instant;

use super::error::{VfsError, VfsResult};
use super::inode::{Ino, Meta};
use crate::dav::multistatus::etags_match;
use crate::dav::{ByteRange, DavClient, DavError, DavPath, ErrorKind, GetStream};

/// The window of a sequential reader's next range after one of `window` (then bounded by
/// `ReadTuning::max_window`). Every new range costs a round trip with nothing arriving (the
/// next is asked for when the current is used up): over 30 ms, doubling from 1 MiB took seven
/// requests for 64 MiB, about 0.2 s of a 5.6 s `cat`. From 4 MiB on each is four times as
/// large (five requests); below, doubling, since a reader that stops early (`head`) has had
/// up to a TCP window of the range sent anyway: quadrupling from 1 MiB fetched 5 MiB for a
/// `head -c 1M` over 30 ms instead of 3.
fn grown(window: u64) -> u64 {
    if window >= 4 << 20 {
        window.saturating_mul(4)
    } else {
        window.saturating_mul(2)
    }
}

/// Read-ahead settings.
#[derive(Debug, Clone)]
pub struct ReadTuning {
    /// The window of a handle's first request from the start of the file. Default 64 KiB:
    /// file managers open every file of a folder to sniff its type from the first 4 KiB
    /// (GIO's `standard::content-type`), and a 1 MiB first window downloaded whole any file
    /// up to 1 MiB for that; a reader that goes on gets larger ones (see `grown`).
    pub first_window: u64,
    /// The window after a seek. Default 1 MiB.
    pub min_window: u64,
    /// Largest window. Default 64 MiB.
    pub max_window: u64,
    /// Bytes retained behind the read position. Default 4 MiB.
    pub keep_behind: u64,
    /// A forward gap up to this size is read through rather than a new request, also past the
    /// end of the response's range (its rest is on the way already, and a response given up
    /// midway costs its connection: the next one starts in slow start). Default 1 MiB.
    /// Within the window already asked for, gaps up to `keep_behind` are read through too:
    /// the kernel's read-ahead asks for several places at once, and over a slow link a
    /// read arriving before the one in front of it must not start a second response (a new
    /// connection, slow start again: a 64 MiB `cat` over 30 ms took 6.4 s instead of 6.2).
    pub max_skip: u64,
    /// Bytes of a response received ahead of the reader, within the requested window.
    /// Default 2 MiB (8 MiB was no faster and took the daemon's peak RSS during a 1 GiB read
    /// from about 32 to 45 MiB).
    pub ahead: u32,
    /// A handle not read for this long lets its transfer go (zero: never). Default 20 s,
    /// below the usual servers' send timeouts (Apache's `Timeout` and nginx's `send_timeout`
    /// are 60 s).
    pub idle: Duration,
}

impl Default for ReadTuning {
    fn default() -> Self {
        ReadTuning {
            first_window: 64 << 10,
            min_window: 1 << 20,
            max_window: 64 << 20,
            keep_behind: 4 << 20,
            max_skip: 1 << 20,
            ahead: 2 << 20,
            idle: Duration::from_secs(20),
        }
    }
}

/// Bytes of one read, as the received chunks they lie in. A large read usually spans several
/// chunks of the response (the HTTP layer hands out what each socket read brought, up to about
/// 400 KiB); joining them would copy every byte once more, so adapters write them out with one
/// vectored write instead.
#[derive(Debug, Clone, Default)]
pub struct ReadData {
    chunks: Vec<Bytes>,
    len: usize,
}

impl ReadData {
    /// The chunks, in order; none of them is empty.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All the bytes in one buffer (a copy unless they lie in one chunk).
    pub fn to_bytes(&self) -> Bytes {
        match self.chunks.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = BytesMut::with_capacity(self.len);
                for c in many {
                    out.extend_from_slice(c);
                }
                out.freeze()
            }
        }
    }

    pub(super) fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push(chunk);
        }
    }
}

impl From<Bytes> for ReadData {
    fn from(b: Bytes) -> Self {
        let mut d = ReadData::default();
        d.push(b);
        d
    }
}

/// A response body received by a task of its own, up to `ahead` bytes before the reader, so
/// that receiving from the network overlaps with handing bytes to the application. Dropping
/// it stops the task (and so the response).
struct Prefetch {
    rx: mpsc::UnboundedReceiver<Result<Bytes, DavError>>,
    budget: Arc<Semaphore>,
    ahead: u32,
    task: tokio::task::JoinHandle<()>,
    /// Dropped once all its bytes were taken: the task is let run to the body's end.
    finishing: bool,
}

impl Prefetch {
    fn spawn(mut get: GetStream, ahead: u32) -> Self {
        let ahead = ahead.max(1);
        let budget = Arc::new(Semaphore::new(ahead as usize));
        let (tx, rx) = mpsc::unbounded_channel();
        let room = budget.clone();
        let task = tokio::spawn(async move {
            loop {
                let chunk = match get.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                match room.acquire_many(cost(&chunk, ahead)).await {
                    Ok(p) => p.forget(),
                    Err(_) => return,
                }
                if tx.send(Ok(chunk)).is_err() {
                    return;
                }
            }
        });
        Prefetch {
            rx,
            budget,
            ahead,
            task,
            finishing: false,
        }
    }

    /// The next chunk; `None` at the end of the body (or if the task died: the caller checks
    /// the length it got).
    async fn chunk(&mut self) -> Result<Option<Bytes>, DavError> {
        match self.rx.recv().await {
            Some(Ok(c)) => {
                self.budget.add_permits(cost(&c, self.ahead) as usize);
                Ok(Some(c))
            }
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }
}

/// A chunk's share of the read-ahead budget (a chunk larger than the budget takes all of it).
fn cost(chunk: &Bytes, ahead: u32) -> u32 {
    u32::try_from(chunk.len()).unwrap_or(u32::MAX).min(ahead)
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        if !self.finishing {
            self.task.abort();
        }
    }
}

struct Active {
    get: Prefetch,
    /// Offset of the next byte the response will yield.
    pos: u64,
    /// Exclusive end of what this response covers.
    end: u64,
}

impl Drop for Active {
    /// A response whose bytes were all taken is left to its task, which reads the body's end
    /// (at once: the bytes are in) and so hands the connection back for the next request.
    /// Aborting the task there raced with it: when the end was not yet read, the HTTP layer
    /// closed the connection, and the next range of a sequential reader waited for a new one
    /// (a handshake and TCP's slow start again: over 30 ms, `head -c 1M` took 0.41 s instead
    /// of 0.31 s in 6 of 16 runs; 6 of 40 after, each time because the request went out
    /// before the connection was back and took another one, idle and cold, from the pool).
    fn drop(&mut self) {
        if self.pos >= self.end {
            self.get.finishing = true;
        }
    }
}

struct State {
    active: Option<Active>,
    /// Retained bytes, contiguous, ending at `active.pos` (or at `buf_end` after it closed).
    buf: VecDeque<Bytes>,
    buf_start: u64,
    buf_end: u64,
    window: u64,
    /// The entity tag of the version this handle reads.
    etag: Option<String>,
    /// Learned from the first ranged response: does the server honour Range?
    ranges: Option<bool>,
    /// `Last-Modified` of the first response: the validator when there is no strong ETag.
    modified: Option<std::time::SystemTime>,
    /// Broken transfers resumed in a row without progress (see `resumed`).
    resumes: u32,
    /// Where the bytes of the current transfer begin to count (its first byte not already
    /// retained): how far a broken transfer got is measured from here.
    transfer_start: u64,
    /// When a read last ended (or the handle opened): see [`ReadHandle::release_if_idle`].
    last_used: Instant,
    /// End of the last read answered: where a sequential reader goes on.
    read_end: u64,
    /// A response read by splicing (zero-copy reads), instead of `active`.
    #[cfg(target_os = "linux")]
    raw: Option<super::zerocopy::RawStream>,
    /// Zero-copy reads are not tried again for this handle: responses arrive in pieces too
    /// small for them, or the server did not answer one with a plain `206`.
    #[cfg(target_os = "linux")]
    no_zero_copy: bool,
}

/// How often in a row one open file may resume a broken transfer without progress before
/// reads fail.
const MAX_RESUMES: u32 = 8;
/// Bytes a resumed transfer must bring for its resume not to count against `MAX_RESUMES`.
const RESUME_PROGRESS: u64 = 256 << 10;

pub(super) struct ReadHandle {
    ino: Ino,
    /// The version opened: a descriptor of it may fill the kernel's page cache with its
    /// bytes (see `Vfs::open`), also with direct I/O (a mapping of the file is cached).
    version: Meta,
    /// Where the file is now: a rename while it is open moves it (`moved_to`).
    path: super::lock::Ranked<DavPath>,
    size: u64,
    tuning: ReadTuning,
    state: Mutex<State>,
    /// Where the bytes read are kept, and later reads found (see `data_cache`).
    stored: Option<Arc<super::data_cache::Stored>>,
}

impl ReadHandle {
    pub(super) fn new(
        ino: Ino,
        path: DavPath,
        version: Meta,
        tuning: ReadTuning,
        stored: Option<Arc<super::data_cache::Stored>>,
    ) -> Self {
        let (size, etag) = (version.size, version.etag.clone());
        ReadHandle {
            ino,
            version,
            path: super::lock::Ranked::new(super::lock::Rank::HandleInner, path),
            size,
            state: Mutex::new(State {
                active: None,
                buf: VecDeque::new(),
                buf_start: 0,
                buf_end: 0,
                window: tuning.min_window,
                etag,
                ranges: None,
                modified: None,
                resumes: 0,
                transfer_start: 0,
                last_used: Instant::now(),
                read_end: 0,
                #[cfg(target_os = "linux")]
                raw: None,
                #[cfg(target_os = "linux")]
                no_zero_copy: false,
            }),
            tuning,
            stored,
        }
    }

    pub(super) fn ino(&self) -> Ino {
        self.ino
    }

    /// Whether this descriptor may fill the kernel's page cache with bytes of a version other
    /// than `current` (any version, when `current` has no entity tag to tell). Descriptors
    /// with direct I/O count too: a mapping of the file goes through the cache, and kernels
    /// before 6.6 ignore direct I/O.
    pub(super) fn may_cache_other_than(&self, current: &Meta) -> bool {
        current.etag.is_none() || !self.version.same_version(current)
    }

    pub(super) fn path(&self) -> DavPath {
        self.path.lock().clone()
    }

    /// The open file was renamed (or a directory above it): later requests go to `to`.
    pub(super) fn moved_to(&self, to: &DavPath) {
        let mut p = self.path.lock();
        if *p != *to {
            *p = to.clone();
        }
    }

    fn stale(&self, why: &str) -> VfsError {
        VfsError::new(
            ErrorKind::Stale,
            format!(
                "{}: changed on the server while reading ({why})",
                self.path()
            ),
        )
    }

    pub(super) async fn read(
        &self,
        client: &DavClient,
        offset: u64,
        size: u32,
    ) -> VfsResult<ReadData> {
        if offset >= self.size || size == 0 {
            return Ok(ReadData::default());
        }
        let end = (offset + u64::from(size)).min(self.size);
        if let Some(s) = &self.stored
            && s.covers(offset, end)
            && let Some(d) = s.read(offset, end)
        {
            return Ok(ReadData::from(d));
        }
        super::lock::before_await();
        let mut st = self.state.lock().await;
        let r = self.read_locked(client, &mut st, offset, size).await;
        st.last_used = Instant::now();
        if let Ok(d) = &r {
            st.read_end = offset + d.len() as u64;
            if let Some(s) = &self.stored {
                s.store(offset, d.chunks());
            }
        }
        r
    }

    /// Counts a broken transfer that stopped at `at` (its first byte not received): after
    /// `MAX_RESUMES` resumes in a row of transfers that broke before bringing
    /// `RESUME_PROGRESS` bytes, the next break is an error.
    fn resumed(&self, st: &mut State, at: u64, why: &str) -> VfsResult<()> {
        if at.saturating_sub(st.transfer_start) >= RESUME_PROGRESS {
            st.resumes = 0;
        }
        if st.resumes >= MAX_RESUMES {
            return Err(VfsError::new(
                ErrorKind::Io,
                format!(
                    "{}: {why} (after {MAX_RESUMES} resumed transfers without progress)",
                    self.path()
                ),
            ));
        }
        st.resumes += 1;
        tracing::debug!(path = %self.path(), at, "{why}; resuming");
        Ok(())
    }

    /// Lets the transfer of a handle go if it was not read for `idle` (and is not being read
    /// now): its connection is closed, its read-ahead and retained bytes are freed. The next
    /// read goes on at the same place with a new request, carrying the same version checks.
    /// Not for servers that ignore Range (a new request would start over at the beginning).
    pub(super) fn release_if_idle(&self, now: Instant, idle: Duration) -> bool {
        let Ok(mut st) = self.state.try_lock() else {
            return false;
        };
        if st.ranges == Some(false) || now.saturating_duration_since(st.last_used) < idle {
            return false;
        }
        let raw_pos = drop_raw(&mut st);
        // Where the reader goes on: after its last read, if the retained bytes reach it.
        let at = raw_pos.unwrap_or(if (st.buf_start..=st.buf_end).contains(&st.read_end) {
            st.read_end
        } else {
            st.buf_end
        });
        let released = raw_pos.is_some() | st.active.take().is_some() | !st.buf.is_empty();
        if !released {
            return false;
        }
        st.buf.clear();
        st.buf_start = at;
        st.buf_end = at;
        // A reader that pauses is not streaming: the next request starts small again.
        st.window = self.tuning.min_window;
        tracing::debug!(path = %self.path(), at, "not read for {idle:?}: transfer let go");
        true
    }

    async fn read_locked(
        &self,
        client: &DavClient,
        st: &mut State,
        offset: u64,
        size: u32,
    ) -> VfsResult<ReadData> {
        if offset >= self.size || size == 0 {
            return Ok(ReadData::default());
        }
        let end = (offset + u64::from(size)).min(self.size);
        #[cfg(target_os = "linux")]
        if let Some(raw) = st.raw.take() {
            // The ordinary path takes over where the zero-copy response stopped; the rest of
            // that response is dropped with its connection.
            st.buf.clear();
            st.buf_start = raw.pos;
            st.buf_end = raw.pos;
        }

        // Served entirely from retained bytes?
        if offset >= st.buf_start && end <= st.buf_end {
            return Ok(copy_range(st, offset, end));
        }

        let sequential = offset >= st.buf_start && offset <= st.buf_end + self.tuning.max_skip;
        let can_continue = match &st.active {
            Some(a) => {
                a.pos <= st.buf_end
                    && offset >= st.buf_start
                    && (offset <= a.pos + self.tuning.max_skip
                        || st.ranges == Some(false)
                        || (offset < a.end && offset <= a.pos + self.tuning.keep_behind))
            }
            None => false,
        };
        if !can_continue {
            let (start, window) = if sequential && st.active.is_none() && st.buf_end > 0 {
                // The previous range was used up: continue at its end with a larger window.
                (st.buf_end, self.next_window(st.window, st.buf_end))
            } else if sequential && st.buf_end > 0 {
                (st.buf_end, st.window)
            } else {
                // A seek: start afresh with a small window (smaller still for a first read
                // from the start, maybe the only one: a type sniff).
                let first = st.ranges.is_none() && offset == 0;
                st.buf.clear();
                st.buf_start = offset;
                st.buf_end = offset;
                let w = if first {
                    self.tuning.first_window
                } else {
                    self.tuning.min_window
                };
                (offset, w)
            };
            st.window = window.max(end - start);
            let win = st.window;
            self.start_get(client, st, start, win).await?;
        }

        // Pull from the response until `end` is retained.
        while st.buf_end < end {
            let need_new = match &st.active {
                Some(a) => a.pos >= a.end,
                None => true,
            };
            if need_new {
                st.window = self
                    .next_window(st.window, st.buf_end)
                    .max(end - st.buf_end);
                let (from, win) = (st.buf_end, st.window);
                self.start_get(client, st, from, win).await?;
            }
            let Some(active) = st.active.as_mut() else {
                return Err(VfsError::new(ErrorKind::Io, "no response to read from"));
            };
            let chunk = match active.get.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) if active.pos >= active.end => {
                    st.active = None;
                    continue;
                }
                // The connection broke or the body ended early: resume from the byte where it
                // stopped (the next request carries the version checks), a few times.
                broken => {
                    let why = match broken {
                        Err(e) => e.to_string(),
                        _ => "the server ended the body early".to_owned(),
                    };
                    // The rest of the same range: later responses keep their boundaries
                    // (zero-copy reads start only where a response ended between two reads).
                    let until = st.active.as_ref().map_or(0, |a| a.end);
                    st.active = None;
                    let from = st.buf_end;
                    self.resumed(st, from, &why)?;
                    let win = if until > from {
                        until - from
                    } else {
                        st.window
                    };
                    self.start_get(client, st, from, win).await?;
                    continue;
                }
            };
            let chunk = if active.pos + chunk.len() as u64 > active.end {
                chunk.slice(..(active.end - active.pos) as usize)
            } else {
                chunk
            };
            let chunk_start = active.pos;
            active.pos += chunk.len() as u64;
            let chunk_end = active.pos;
            // Bytes before `buf_end` (skipping forward on a 200 response) are dropped.
            let keep_from = st.buf_end.max(chunk_start);
            if keep_from < chunk_end {
                let piece = chunk.slice((keep_from - chunk_start) as usize..);
                if st.buf_end < keep_from {
                    st.buf.clear();
                    st.buf_start = keep_from;
                }
                st.buf_end = chunk_end;
                st.buf.push_back(piece);
            }
            trim(st, self.tuning.keep_behind, offset);
        }
        if st.active.as_ref().is_some_and(|a| a.pos >= a.end) {
            st.active = None;
        }
        Ok(copy_range(st, offset, end))
    }

    /// Reads like [`ReadHandle::read`], but may answer through `sink` by splicing the bytes
    /// from the server's socket (`Ok(None)`: answered). See `zerocopy.rs`.
    #[cfg(target_os = "linux")]
    pub(super) async fn read_to(
        &self,
        client: &DavClient,
        offset: u64,
        size: u32,
        sink: &dyn super::zerocopy::SpliceSink,
    ) -> VfsResult<Option<ReadData>> {
        if offset >= self.size || size == 0 {
            return Ok(Some(ReadData::default()));
        }
        super::lock::before_await();
        let mut st = self.state.lock().await;
        let r = self
            .read_to_locked(client, &mut st, offset, size, sink)
            .await;
        st.last_used = Instant::now();
        match &r {
            // Answered by splicing: all of it.
            Ok(None) => st.read_end = (offset + u64::from(size)).min(self.size),
            Ok(Some(d)) => st.read_end = offset + d.len() as u64,
            Err(_) => {}
        }
        r
    }

    #[cfg(target_os = "linux")]
    async fn read_to_locked(
        &self,
        client: &DavClient,
        st: &mut State,
        offset: u64,
        size: u32,
        sink: &dyn super::zerocopy::SpliceSink,
    ) -> VfsResult<Option<ReadData>> {
        use super::zerocopy::{Answer, RAW_MAX_READ};
        let end = (offset + u64::from(size)).min(self.size);
        let n = usize::try_from(end - offset).unwrap_or(usize::MAX);
        let retained = offset >= st.buf_start && end <= st.buf_end;
        // Only a sequential read's next response goes zero-copy: it takes a connection of its
        // own, which pays off over the larger windows, not for the small ranges of random
        // reads (and the first response of a read says whether the server honours Range).
        let continuing = st.buf_end > 0 && offset == st.buf_end && st.ranges == Some(true);
        let fresh = st.raw.is_none() && st.active.is_none() && !st.no_zero_copy;
        if fresh && continuing && !retained {
            self.start_raw(client, st, offset, end).await?;
        }
        let usable = n <= RAW_MAX_READ
            && st
                .raw
                .as_ref()
                .is_some_and(|r| r.pos == offset && end <= r.end);
        if !usable {
            return self.read_locked(client, st, offset, size).await.map(Some);
        }
        let stall = client.progress_timeout();
        let Some(raw) = st.raw.as_mut() else {
            return self.read_locked(client, st, offset, size).await.map(Some);
        };
        let answer = raw.answer(sink, n, stall).await;
        let (pos, raw_end) = (raw.pos, raw.end);
        let used_up = pos >= raw_end;
        let out = match answer {
            Answer::Sent => None,
            Answer::Undelivered(e) => {
                // The ordinary path goes on from the stream's position at the next read.
                st.raw = None;
                st.buf.clear();
                st.buf_start = pos;
                st.buf_end = pos;
                return Err(VfsError::new(
                    ErrorKind::Io,
                    format!("{}: answer not delivered: {e}", self.path()),
                ));
            }
            Answer::Copied(b) => {
                // The pipe was too small for the answer's pieces: small packets.
                tracing::debug!(path = %self.path(), "small packets: no more zero-copy reads");
                st.no_zero_copy = true;
                Some(ReadData::from(b))
            }
            Answer::Broken { got, why } => {
                // The connection broke or stalled: the ordinary path resumes after the bytes
                // that did arrive (with the version checks), as for any broken transfer.
                st.raw = None;
                self.resumed(st, pos, &why)?;
                st.buf.clear();
                st.buf_start = offset;
                st.buf_end = pos;
                if !got.is_empty() {
                    st.buf.push_back(got);
                }
                // The rest of the same range, the ordinary way.
                if raw_end > pos {
                    self.start_get(client, st, pos, raw_end - pos).await?;
                }
                return self.read_locked(client, st, offset, size).await.map(Some);
            }
        };
        if used_up {
            // The next read continues after it with a larger window.
            st.raw = None;
            st.buf.clear();
            st.buf_start = pos;
            st.buf_end = pos;
        }
        Ok(out)
    }

    /// Starts a zero-copy response at `offset`, with the window the ordinary path would use.
    /// Leaves `st.raw` empty where the server's answer does not allow one.
    #[cfg(target_os = "linux")]
    async fn start_raw(
        &self,
        client: &DavClient,
        st: &mut State,
        offset: u64,
        end: u64,
    ) -> VfsResult<()> {
        let window = self.next_window(st.window, offset).max(end - offset);
        let want_end = (offset + window).min(self.size);
        let if_range = self.if_range(st);
        let range = ByteRange {
            start: offset,
            end: Some(want_end - 1),
        };
        // The pipe first: without one, no request is spent.
        let pipe = match crate::sys::pipe::pipe() {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(path = %self.path(), "no zero-copy read: {e}");
                st.no_zero_copy = true;
                return Ok(());
            }
        };
        let got = client
            .get_raw(&self.path(), range, if_range.as_deref())
            .await;
        let got = got.map_err(|e| {
            st.no_zero_copy = true;
            VfsError::from(e)
        })?;
        let Some(body) = got else {
            // Not for this server, or not for this handle: the ordinary way from now on.
            st.no_zero_copy = true;
            return Ok(());
        };
        // The same version checks as for any response.
        if let (Some(ours), Some(theirs)) = (&st.etag, &body.meta.etag)
            && !etags_match(ours, theirs)
        {
            return Err(self.stale("entity tag differs"));
        }
        if body.range.total.is_some_and(|t| t != self.size) {
            return Err(self.stale("size differs"));
        }
        if body.range.start != offset || body.range.end >= want_end {
            st.no_zero_copy = true;
            return Ok(());
        }
        self.same_dates(st, &body.meta)?;
        st.ranges = Some(true);
        tracing::debug!(path = %self.path(), offset, window, "zero-copy GET");
        st.window = window;
        st.buf.clear();
        st.buf_start = offset;
        st.buf_end = offset;
        st.transfer_start = offset;
        st.raw = Some(super::zerocopy::RawStream::new(body, pipe));
        Ok(())
    }

    /// A response's modification date must be the one this handle reads (the first response
    /// sets it), and its entity tag becomes the handle's if it had none.
    fn same_dates(&self, st: &mut State, meta: &crate::dav::ResponseMeta) -> VfsResult<()> {
        match (st.modified, meta.last_modified) {
            (Some(ours), Some(theirs)) if ours != theirs => {
                return Err(self.stale("modification date differs"));
            }
            (None, Some(theirs)) => st.modified = Some(theirs),
            _ => {}
        }
        if st.etag.is_none() {
            st.etag = meta.etag.clone();
        }
        Ok(())
    }

    /// The `If-Range` validator for the next request: the entity tag, else a modification
    /// date old enough for the server to trust it. Without one (Apache gives files changed in
    /// the last second a weak tag), no If-Range is sent and every response is checked instead:
    /// entity tag, total size and date must all still agree.
    fn if_range(&self, st: &State) -> Option<String> {
        let old_enough = |m: std::time::SystemTime| {
            std::time::SystemTime::now()
                .duration_since(m)
                .is_ok_and(|d| d > std::time::Duration::from_secs(2))
        };
        match (&st.etag, st.modified) {
            (Some(t), _) if !t.starts_with("W/") => Some(t.clone()),
            (_, Some(m)) if old_enough(m) => Some(httpdate::fmt_http_date(m)),
            _ => None,
        }
    }

    /// The window of a sequential reader's next range, at `from`, after one of `window`:
    /// larger (see `grown`), within `min_window` and `max_window`, and reaching at least
    /// `2 x min_window` into the file. A reader going on past the first small window (a
    /// type sniff reads no further) often stops at about 1 MiB (`head`, `file`, headers of
    /// media files), and the kernel's read-ahead runs ahead of it: up to 2016 KiB for a
    /// reader of the first 1 MiB with the 512 KiB set as root (`fs::fuse::READ_AHEAD_KIB`),
    /// about 1152 KiB with the kernel's default 128 KiB. A second
    /// range of 1 MiB after the first 64 KiB ended at 1088 KiB: the read-ahead asked past it,
    /// the reader's last pages waited for a third request (a round trip), and the third
    /// range's 2 MiB were sent for nothing; over 30 ms, `head -c 1M` took 1.32x curl's time
    /// and fetched 3.06 MiB. Ending the second range at 2 MiB costs no request more for a
    /// reader that goes on.
    fn next_window(&self, window: u64, from: u64) -> u64 {
        let w = grown(window)
            .max(self.tuning.min_window)
            .min(self.tuning.max_window);
        let reach = self.tuning.min_window.saturating_mul(2);
        if from < reach { w.max(reach - from) } else { w }
    }

    async fn start_get(
        &self,
        client: &DavClient,
        st: &mut State,
        start: u64,
        window: u64,
    ) -> VfsResult<()> {
        st.active = None;
        // Bytes before `buf_end` are already retained (a server that ignores Range sends
        // them again).
        st.transfer_start = start.max(st.buf_end);
        let want_end = (start + window).min(self.size);
        let first = st.ranges.is_none();
        let range = ByteRange {
            start,
            end: Some(want_end - 1),
        };
        // A range that covers the whole file asks nothing of Range support.
        let range = if start == 0 && want_end == self.size && first {
            None
        } else {
            Some(range)
        };
        let if_range = self.if_range(st);
        tracing::trace!(path = %self.path(), ?range, ?if_range, "ranged GET");
        let get = client
            .get(&self.path(), range, if_range.as_deref())
            .await
            .map_err(VfsError::from)?;
        // Version checks against what we believe.
        if let (Some(ours), Some(theirs)) = (&st.etag, &get.meta.etag)
            && !etags_match(ours, theirs)
        {
            return Err(self.stale("entity tag differs"));
        }
        let (pos, end) = match get.range {
            Some(cr) => {
                if cr.total.is_some_and(|t| t != self.size) {
                    return Err(self.stale("size differs"));
                }
                let end = cr.end.checked_add(1).filter(|e| *e <= self.size);
                let Some(end) = end.filter(|_| cr.start == start) else {
                    return Err(VfsError::new(
                        ErrorKind::Protocol,
                        format!(
                            "{}: asked for bytes {start}-{}, got {}-{}",
                            self.path(),
                            want_end - 1,
                            cr.start,
                            cr.end
                        ),
                    ));
                };
                st.ranges = Some(true);
                (cr.start, end)
            }
            None => {
                // Apache marks the ETag of a file modified in the last second as weak, and a
                // weak tag cannot satisfy If-Range: the answer is the whole entity. If tag
                // (weakly), size and date all agree, it is the same version: use it.
                let same_entity = matches!(
                    (&st.etag, &get.meta.etag),
                    (Some(a), Some(b)) if etags_match(a, b)
                ) && get.meta.content_length == Some(self.size)
                    && (st.modified.is_none() || st.modified == get.meta.last_modified);
                if range.is_some() && st.ranges == Some(true) && !same_entity {
                    // 200 to a request with If-Range: the entity changed.
                    return Err(self.stale("If-Range failed"));
                }
                if get.meta.content_length.is_some_and(|l| l != self.size) {
                    return Err(self.stale("size differs"));
                }
                if range.is_some() {
                    st.ranges = Some(false);
                }
                (0, self.size)
            }
        };
        self.same_dates(st, &get.meta)?;
        // A response starting after the retained bytes leaves a gap: start over. One starting
        // before them (a whole body, from a server that ignores Range or answers 200 to
        // If-Range for the same entity) is read through up to `buf_end`, and the retained
        // bytes stay: the reader may still want them (clearing them here once made a read
        // resumed this way return the wrong bytes).
        if pos > st.buf_end {
            st.buf.clear();
            st.buf_start = start;
            st.buf_end = start;
        }
        st.active = Some(Active {
            get: Prefetch::spawn(get, self.tuning.ahead),
            pos,
            end,
        });
        Ok(())
    }
}

/// Drops the zero-copy stream of `st`, if any: where it stood.
#[cfg(target_os = "linux")]
fn drop_raw(st: &mut State) -> Option<u64> {
    st.raw.take().map(|raw| raw.pos)
}

#[cfg(not(target_os = "linux"))]
fn drop_raw(_st: &mut State) -> Option<u64> {
    None
}

/// Drops retained bytes more than `keep` behind `offset`.
fn trim(st: &mut State, keep: u64, offset: u64) {
    let floor = offset.saturating_sub(keep);
    while let Some(front) = st.buf.front() {
        let len = front.len() as u64;
        if st.buf_start + len <= floor {
            st.buf_start += len;
            st.buf.pop_front();
        } else {
            break;
        }
    }
}

fn copy_range(st: &State, start: u64, end: u64) -> ReadData {
    // Slices of the retained chunks: no byte is copied.
    let mut out = ReadData::default();
    let mut pos = st.buf_start;
    for chunk in &st.buf {
        let (c_start, c_end) = (pos, pos + chunk.len() as u64);
        pos = c_end;
        if c_end <= start {
            continue;
        }
        if c_start >= end {
            break;
        }
        let from = start.max(c_start) - c_start;
        let to = end.min(c_end) - c_start;
        out.push(chunk.slice(from as usize..to as usize));
    }
    out
}
