//! Write sessions: one per file opened for writing.
//!
//! Two ways to get bytes to the server:
//!
//! - **Streaming** (a file created or truncated and written from offset 0 onwards): a PUT
//!   starts at open and its body is fed as the application writes, through a small bounded
//!   channel, so a 10 GiB copy neither waits for a local spool nor sits in memory, and the
//!   writer's progress is the upload's progress. Every byte also goes to a journal file
//!   before it is sent, so a failed upload can be retried or recovered. Used only where the
//!   server was proven to store chunked bodies correctly (see `Vfs::can_stream`).
//! - **Spooling** (seek, pwrite, truncate to non-zero, append, open without O_TRUNC): the
//!   file lives in a local spool file, filled from the server's version (one GET) only when
//!   a byte of it is needed, and is PUT with Content-Length on flush/fsync/close.
//!
//! A streaming session that meets a non-sequential write, a read, or a broken connection
//! turns into a spooling session: the journal holds every byte written so far and becomes
//! the spool. `flush` (close, fsync) returns after the server acknowledged, or with the error.
//! A session whose data could not be uploaded leaves it in the recovery folder; `release`
//! says where in the log.
//!
//! Lost updates: a PUT over an existing file carries `If-Match` with the entity tag read at
//! open; a new file carries `If-None-Match: *`. A 412 is a conflict: nothing is overwritten.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use super::cache_dir::CacheDir;
use super::error::{VfsError, VfsResult};
use super::fileio::{read_at, write_at};
use super::inode::Ino;
use super::lock::{Rank, Ranked, RankedGuard};
use super::segments::{self, Follower, Local, Resume, Ring, SegmentPolicy};
use crate::dav::{
    ByteRange, DavClient, DavError, DavPath, ErrorKind, Preconditions, PutBody, ResponseMeta,
};

/// Chunks in flight between the writer and the HTTP body. With 1 MiB FUSE writes this keeps
/// at most ~16 MiB in memory per upload.
const CHANNEL_DEPTH: usize = 16;
/// Items queued for the journal thread, all uploads together.
const JOURNAL_DEPTH: usize = 8;

type Chunk = Result<Bytes, io::Error>;

struct Streaming {
    tx: mpsc::Sender<Chunk>,
    task: UploadTask,
    journal: JournalWriter,
    /// Set by [`Streaming::complete`] only: our body stream ends only when we say so; a
    /// dropped sender alone never ends it. Abandoning is [`abort_stream`]'s job, which also
    /// checks whether the server stored the upload anyway.
    complete: Arc<std::sync::atomic::AtomicBool>,
    /// Set by [`abort_stream`]: the body yields nothing more, not even what is queued.
    abandoned: Arc<std::sync::atomic::AtomicBool>,
    /// Where the upload goes, and the client to clean up with (see [`abort_stream`]).
    client: DavClient,
    path: DavPath,
}

impl Streaming {
    /// Ends the body: the server completes the file. Returns the upload's outcome.
    async fn complete(self) -> Result<Result<ResponseMeta, DavError>, tokio::task::JoinError> {
        self.complete
            .store(true, std::sync::atomic::Ordering::SeqCst);
        drop(self.tx);
        self.task.await
    }
}

/// The task running a streaming PUT; aborted when dropped, so that a session that ends
/// without completing its upload never leaves a request behind.
struct UploadTask(JoinHandle<Result<ResponseMeta, DavError>>);

impl UploadTask {
    fn abort(&self) {
        self.0.abort();
    }
}

impl std::future::Future for UploadTask {
    type Output = Result<Result<ResponseMeta, DavError>, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl Drop for UploadTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum JournalItem {
    Data(Arc<JournalFile>, u64, Bytes),
    /// Work off the uploads' path (creating spare journals, see `CacheDir::spare_maker`).
    Run(Box<dyn FnOnce() + Send>),
    Barrier(
        Arc<JournalFile>,
        tokio::sync::oneshot::Sender<Result<(), String>>,
    ),
}

/// One journal file and the first error writing it (only the journal thread writes).
struct JournalFile {
    file: std::fs::File,
    /// A segmented upload's last segments, for the follower (see [`Ring`]).
    ring: Option<Arc<Ring>>,
    /// Writes around the page cache; `None` once they failed (then through it).
    direct: Ranked<Option<Direct>>,
    error: Ranked<Option<String>>,
    /// How far the file is written (appends only: a streaming journal grows in order).
    written: tokio::sync::watch::Sender<u64>,
}

/// Journals are written by one thread for the whole process, in order, so that disk writes
/// overlap the network instead of sitting on the writer's critical path, and a copy of many
/// small files does not start a thread per file. Items of one journal keep their order; a
/// barrier waits until everything sent before it is on disk (or says why it is not). The
/// channel is bounded: a writer faster than the disk waits.
fn journal_thread() -> Result<mpsc::Sender<JournalItem>, String> {
    static THREAD: std::sync::OnceLock<mpsc::Sender<JournalItem>> = std::sync::OnceLock::new();
    if let Some(tx) = THREAD.get() {
        return Ok(tx.clone());
    }
    // Not cached on failure: a later upload tries again. Two first uploads at once may
    // start two threads; the one whose sender is not kept ends at once.
    let (tx, mut rx) = mpsc::channel::<JournalItem>(JOURNAL_DEPTH);
    std::thread::Builder::new()
        .name("davdrive-journal".into())
        .spawn(move || {
            while let Some(item) = rx.blocking_recv() {
                match item {
                    JournalItem::Data(j, off, data) => {
                        let mut error = j.error.lock();
                        if error.is_none() {
                            match j.write(&data, off) {
                                Ok(()) => {
                                    let end = off + data.len() as u64;
                                    j.written.send_if_modified(|w| {
                                        let grew = end > *w;
                                        *w = (*w).max(end);
                                        grew
                                    });
                                }
                                Err(e) => *error = Some(e.to_string()),
                            }
                        }
                    }
                    JournalItem::Run(work) => work(),
                    JournalItem::Barrier(j, done) => {
                        let error = j.error.lock();
                        let _ = done.send(match &*error {
                            None => Ok(()),
                            Some(e) => Err(e.clone()),
                        });
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the journal thread: {e}"))?;
    Ok(THREAD.get_or_init(|| tx).clone())
}

impl JournalFile {
    /// Writes `data` at `off`: into the ring where it has a slot, and into the journal.
    fn write(&self, data: &[u8], off: u64) -> io::Result<()> {
        if let Some(r) = &self.ring {
            let (mut at, mut rest) = (off, data);
            while !rest.is_empty() {
                let n = r.room(at).min(rest.len() as u64) as usize;
                if let Some((slot_at, _)) = r.place(at)
                    && let Err(e) = write_at(&r.file, &rest[..n], slot_at)
                {
                    tracing::debug!("the ring failed ({e}); segments go from the journal");
                    r.break_down();
                }
                rest = &rest[n..];
                at += n as u64;
            }
        }
        let mut direct = self.direct.lock();
        if let Some(d) = direct.as_mut() {
            match d.append(&self.file, data, off) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // Whatever part went out is in the file; the whole write goes again.
                    tracing::debug!("direct journal writes failed ({e}); through the page cache");
                    *direct = None;
                }
            }
        }
        write_at(&self.file, data, off)
    }
}

/// A segmented upload's journal written around the page cache (`O_DIRECT` on Linux: the
/// platform layer opens it, see [`segments::OpenDirect`]). A journal of the whole file must
/// be kept (it is what a failed upload is retried and recovered from), but nothing reads it
/// while the upload goes well: the follower sends from the [`Ring`]. Filling newly allocated
/// page-cache pages with it was the largest cost of a fast upload (docs/PERFORMANCE.md); a
/// direct write costs the disk's bandwidth instead.
///
/// Each write is in the file when it returns: its whole 4 KiB blocks (with the bytes of the
/// last block before it, kept here) go direct through an aligned buffer, the bytes of an
/// unfinished last block through the page cache; the next direct write covers that block
/// again (the kernel writes back and drops cached pages a direct write covers). Bytes must
/// come in order.
struct Direct {
    file: std::fs::File,
    buf: Vec<u8>,
    /// Where the aligned part of `buf` starts.
    base: usize,
    /// The file offset of the unfinished last block (aligned), and its bytes so far (at the
    /// start of the aligned part of `buf`).
    start: u64,
    len: usize,
    /// Whether those bytes were read in (they came through the page cache before).
    primed: bool,
}

impl Direct {
    const ALIGN: usize = 4096;
    const CHUNK: usize = 1 << 20;

    /// Direct writes to the journal at `path`, whose first `written` bytes are there.
    fn open(open: segments::OpenDirect, path: &std::path::Path, written: u64) -> io::Result<Self> {
        let file = open(path)?;
        let buf = vec![0u8; Self::CHUNK + Self::ALIGN];
        let base = buf.as_ptr().align_offset(Self::ALIGN);
        if base >= Self::ALIGN {
            return Err(io::Error::other("cannot align a buffer"));
        }
        let start = written - written % Self::ALIGN as u64;
        Ok(Direct {
            file,
            buf,
            base,
            start,
            len: (written - start) as usize,
            primed: false,
        })
    }

    /// Writes `data` at `off` (where the journal ends); `plain` is the journal through the
    /// page cache.
    fn append(&mut self, plain: &std::fs::File, mut data: &[u8], off: u64) -> io::Result<()> {
        if !self.primed {
            let head = self.base..self.base + self.len;
            if read_at(plain, &mut self.buf[head], self.start)? < self.len {
                return Err(io::Error::other("the journal is shorter than written"));
            }
            self.primed = true;
        }
        if off != self.start + self.len as u64 {
            return Err(io::Error::other("a journal write out of order"));
        }
        while !data.is_empty() {
            let n = (Self::CHUNK - self.len).min(data.len());
            let at = self.base + self.len;
            self.buf[at..at + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            let whole = self.len - self.len % Self::ALIGN;
            if whole > 0 {
                write_at(
                    &self.file,
                    &self.buf[self.base..self.base + whole],
                    self.start,
                )?;
            }
            let rest = self.len - whole;
            if rest > 0 {
                let tail = self.base + whole..self.base + self.len;
                write_at(plain, &self.buf[tail.clone()], self.start + whole as u64)?;
                self.buf.copy_within(tail, self.base);
            }
            self.start += whole as u64;
            self.len = rest;
        }
        Ok(())
    }
}

/// For a segmented upload of the journal at `path` (`written` bytes so far): direct writes to
/// the journal and a ring of segments to send from, both or neither.
fn around_page_cache(
    policy: &SegmentPolicy,
    path: &std::path::Path,
    written: u64,
) -> (Option<Arc<Ring>>, Option<Direct>) {
    let Some(open) = policy.open_direct() else {
        return (None, None);
    };
    let direct = match Direct::open(open, path, written) {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!("the journal goes through the page cache ({e})");
            return (None, None);
        }
    };
    // The ring needs no name: unlinked at once (where the OS allows), it goes with its last
    // descriptor.
    let ring_path = path.with_extension("ring");
    let ring = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&ring_path);
    let _ = std::fs::remove_file(&ring_path);
    match ring {
        Ok(f) => {
            tracing::debug!(journal = %path.display(), "segments go from a ring; the journal is written around the page cache");
            (
                Some(Arc::new(Ring::new(f, policy.size(), written))),
                Some(direct),
            )
        }
        Err(e) => {
            tracing::debug!("no ring for the upload ({e})");
            (None, None)
        }
    }
}

/// The journal of one streaming upload.
struct JournalWriter {
    tx: mpsc::Sender<JournalItem>,
    file: Arc<JournalFile>,
}

impl JournalWriter {
    /// A journal for `file`, whose first `written` bytes are already in place; with a ring
    /// and direct writes for a segmented upload (see [`around_page_cache`]).
    fn start(
        file: std::fs::File,
        written: u64,
        ring: Option<Arc<Ring>>,
        direct: Option<Direct>,
    ) -> io::Result<Self> {
        let tx = journal_thread().map_err(io::Error::other)?;
        let file = Arc::new(JournalFile {
            file,
            ring,
            direct: Ranked::new(Rank::Journal, direct),
            error: Ranked::new(Rank::JournalError, None),
            written: tokio::sync::watch::Sender::new(written),
        });
        Ok(JournalWriter { tx, file })
    }

    /// How far the journal is written, as it grows.
    fn watermark(&self) -> tokio::sync::watch::Receiver<u64> {
        self.file.written.subscribe()
    }

    fn item(&self, off: u64, data: Bytes) -> JournalItem {
        JournalItem::Data(self.file.clone(), off, data)
    }

    async fn push(&self, off: u64, data: Bytes) -> Result<(), String> {
        self.tx
            .send(self.item(off, data))
            .await
            .map_err(|_| "the journal writer stopped".to_owned())
    }

    async fn barrier(&self) -> Result<(), String> {
        // Every queued item holds a reference to the file, and the journal thread drops it
        // once the item is done: when ours is the only one left, everything sent is written
        // and no round trip to the thread is needed (a small file's close saves a wake-up).
        if Arc::strong_count(&self.file) == 1 {
            let error = self.file.error.lock();
            return match &*error {
                None => Ok(()),
                Some(e) => Err(e.clone()),
            };
        }
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(JournalItem::Barrier(self.file.clone(), done))
            .await
            .map_err(|_| "the journal writer stopped".to_owned())?;
        wait.await
            .map_err(|_| "the journal writer stopped".to_owned())?
    }
}

struct State {
    file: std::fs::File,
    file_path: PathBuf,
    stream: Option<Streaming>,
    /// Logical size of the file as written so far.
    size: u64,
    /// Whether `file` holds all of the file's bytes (false until the original is fetched).
    complete: bool,
    /// Size of the server's version, fetched into the spool when needed.
    original_size: u64,
    dirty: bool,
    pre: Preconditions,
    /// A failure that makes further writes pointless (403, 507, 413, 412, disk full).
    failed: Option<VfsError>,
    /// Where a copy of the data was kept after a failed flush, and whether the data changed
    /// since that copy was made.
    recovered: Option<PathBuf>,
    changed_since_recovery: bool,
    /// A local-only file (OS litter): `file` is its permanent home; nothing is uploaded.
    local: bool,
    /// A flush with nothing written ended the streaming upload (see `flush`): the next write
    /// from offset 0 starts a new one.
    restream: bool,
    /// A streaming session that outgrew one segment: uploaded in segments behind the writer.
    segmented: Option<Segmented>,
    /// An upload to a temporary name that has not finished: the next attempt resumes it.
    resume: Option<Resume>,
    /// Whether a streaming session may still switch to segments.
    may_segment: bool,
    /// When the last round of segment retries failed.
    failed_round: Option<std::time::Instant>,
    /// `pre` names a part of our own upload the server kept (see `adopt_partial`).
    adopted: bool,
}

/// What stands on the server after an upload of ours broke (see `adopt_partial`).
enum Partial {
    /// The part of our upload that arrived: its entity tag and length.
    Ours(Option<String>, u64),
    NotOurs(String),
    /// Changing as we look: the server is still writing it.
    Changing,
}

/// The journal of a segmented streaming session and the task uploading behind it.
struct Segmented {
    journal: JournalWriter,
    follower: Follower,
}

impl State {
    /// Replaces the preconditions of our next upload, keeping our lock token.
    fn expect(&mut self, pre: Preconditions) {
        self.pre = Preconditions {
            lock_token: self.pre.lock_token.take(),
            ..pre
        };
    }

    /// A session of `size` bytes in `file`, nothing streaming, nothing written yet, the
    /// server's version not fetched (unless the caller says otherwise).
    fn new(file: std::fs::File, file_path: PathBuf, size: u64, pre: Preconditions) -> Self {
        State {
            file,
            file_path,
            stream: None,
            size,
            complete: false,
            original_size: size,
            dirty: false,
            pre,
            failed: None,
            recovered: None,
            changed_since_recovery: false,
            local: false,
            restream: false,
            segmented: None,
            resume: None,
            may_segment: true,
            failed_round: None,
            adopted: false,
        }
    }
}

/// What a successful upload tells the caches.
#[derive(Debug, Clone)]
pub(super) struct Uploaded {
    pub size: u64,
    pub etag: Option<String>,
}

/// Who calls, as far as the kernel says: the lock owner (Linux: one per file-descriptor
/// table, so the same for every thread of a process and different in a forked child) where
/// the request carries one, and the calling thread's id (0: unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caller {
    pub owner: Option<u64>,
    pub pid: u32,
}

/// The process (thread group) a thread id belongs to, `None` when it cannot tell; the
/// platform layer knows how (Linux: `/proc`).
pub type ProcessOf = fn(u32) -> Option<u32>;

/// The callers that wrote through a handle since its data was last uploaded. Kept under the
/// session lock's order: recorded once a write holds the session, cleared by a flush that
/// holds it, so that a write waiting behind a flush is never forgotten.
#[derive(Debug, Default)]
struct Writers {
    /// Lock owners of writes that carried one (writes bypassing the page cache).
    owners: Vec<u64>,
    /// Processes of writes through the page cache (no lock owner), resolved when they wrote.
    procs: Vec<u32>,
    /// The last thread resolved, and its process.
    last: Option<(u32, u32)>,
    /// A change from a caller that cannot be told apart (a write with no lock owner whose
    /// process is unknown, a truncation, too many writers): every close uploads.
    unknown: bool,
}

impl Writers {
    /// Enough to tell a program from the children it starts; more means a crowd.
    const MAX: usize = 8;

    fn note(&mut self, c: Caller, process_of: Option<ProcessOf>) {
        match c.owner {
            Some(o) => {
                if !self.owners.contains(&o) {
                    self.owners.push(o);
                }
            }
            None => {
                let proc = match self.last {
                    Some((tid, p)) if tid == c.pid && c.pid != 0 => Some(p),
                    _ if c.pid == 0 => None,
                    _ => process_of.and_then(|f| f(c.pid)),
                };
                match proc {
                    Some(p) => {
                        self.last = Some((c.pid, p));
                        if !self.procs.contains(&p) {
                            self.procs.push(p);
                        }
                    }
                    None => self.unknown = true,
                }
            }
        }
        if self.owners.len() > Self::MAX || self.procs.len() > Self::MAX {
            self.unknown = true;
        }
    }

    /// Whether `c` is provably none of the writers (and so its close need not upload).
    fn foreign(&self, c: Caller, process_of: Option<ProcessOf>) -> bool {
        if self.unknown || (self.owners.is_empty() && self.procs.is_empty()) || c.pid == 0 {
            return false;
        }
        if c.owner.is_some_and(|o| self.owners.contains(&o)) {
            return false;
        }
        if !self.procs.is_empty() {
            match process_of.and_then(|f| f(c.pid)) {
                Some(p) if !self.procs.contains(&p) => {}
                _ => return false,
            }
        }
        true
    }
}

pub(super) struct WriteHandle {
    ino: Ino,
    /// Who wrote since the last upload (see [`WriteHandle::foreign_close`]).
    writers: Ranked<Writers>,
    process_of: Option<ProcessOf>,
    /// Where the data goes; changes when the open file is renamed.
    target: Ranked<DavPath>,
    /// `State::size`, readable without waiting for a running upload (getattr, stat).
    size_now: std::sync::atomic::AtomicU64,
    /// `State::dirty`, likewise: the session holds data the server does not have yet.
    dirty_now: std::sync::atomic::AtomicBool,
    /// When the session last changed the data (nanoseconds since the Unix epoch; 0: not yet).
    modified_now: std::sync::atomic::AtomicU64,
    /// The file was deleted (or replaced by a rename) while open: upload nothing.
    unlinked: std::sync::atomic::AtomicBool,
    /// How long a streaming upload may refuse more data before it is given up (and the data
    /// sent again from the journal at close).
    stall: std::time::Duration,
    /// The file did not exist before this session: if the upload fails for good, whatever
    /// stands on the server under its name (an empty placeholder, never a half file) goes.
    new_file: std::sync::atomic::AtomicBool,
    /// Segmented (resumable) uploads of large files, where the server takes them.
    segments: Option<Arc<SegmentPolicy>>,
    /// A streaming session switches to segments once its size passes this (see `segments`).
    switch_at: u64,
    state: Mutex<State>,
    /// Closes of this session that do not wait for their upload (`--async-close`), from
    /// their start to the end of that upload: the session ends only after them (see
    /// `Vfs::release`).
    behind_close: tokio::sync::watch::Sender<usize>,
}

/// A session held while a directory above its file moves (`WriteHandle::hold_for_move`).
/// Dropped without [`Moving::moved`] (the MOVE failed), the session goes on where it was;
/// its whole content is uploaded at close.
pub(super) struct Moving<'a> {
    w: &'a WriteHandle,
    st: tokio::sync::MutexGuard<'a, State>,
    /// The session holds data the server does not have (see `WriteHandle::rename`).
    written: bool,
}

impl Moving<'_> {
    /// The directory moved: the file is at `relocate(path)` now, and so is the temporary
    /// file of a segmented upload; the whole content goes there at close.
    pub(super) fn moved(mut self, relocate: impl Fn(&DavPath) -> Option<DavPath>) {
        let to = relocate(&self.w.path());
        if let Some(to) = to {
            *self.w.target.lock() = to;
        }
        if let Some(r) = &mut self.st.resume
            && let Some(t) = relocate(&r.temp)
        {
            r.temp = t;
        }
        if !self.st.local {
            self.st.dirty |= self.written;
            self.st.adopted = false;
            self.st.expect(Preconditions::default());
        }
    }
}

fn io_err(path: &DavPath, what: &str, e: &io::Error) -> VfsError {
    let kind = if e.raw_os_error() == Some(28) || e.kind() == io::ErrorKind::StorageFull {
        ErrorKind::NoSpace
    } else {
        ErrorKind::Io
    };
    VfsError::new(kind, format!("{path}: {what} in the cache directory: {e}"))
}

fn open_rw(p: &std::path::Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(true).write(true).open(p)
}

/// Starts a PUT whose body is fed through the returned sender.
fn start_stream(
    client: &DavClient,
    path: &DavPath,
    pre: &Preconditions,
    file: &std::fs::File,
) -> io::Result<Streaming> {
    let journal = JournalWriter::start(file.try_clone()?, 0, None, None)?;
    let (tx, rx) = mpsc::channel::<Chunk>(CHANNEL_DEPTH);
    let complete = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done, gone) = (complete.clone(), abandoned.clone());
    let body = futures_util::stream::unfold((rx, done, gone), |(mut rx, done, gone)| async move {
        let item = rx.recv().await;
        if gone.load(std::sync::atomic::Ordering::SeqCst) {
            // Abandoned: never end the body, never fail it (see `abort_stream`).
            drop(rx);
            return std::future::pending().await;
        }
        match item {
            Some(item) => Some((item, (rx, done, gone))),
            None if done.load(std::sync::atomic::Ordering::SeqCst) => None,
            None => std::future::pending().await,
        }
    });
    let (owner, target) = (client.clone(), path.clone());
    let client = client.clone();
    let path = path.clone();
    let pre = pre.clone();
    let task = tokio::spawn(async move {
        client
            .put(
                &path,
                PutBody::Stream {
                    stream: Box::new(body),
                    len: None,
                },
                &pre,
            )
            .await
    });
    Ok(Streaming {
        tx,
        task: UploadTask(task),
        journal,
        complete,
        abandoned,
        client: owner,
        path: target,
    })
}

fn client_stall() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

/// Abandons a streaming upload: the server must not keep what was sent so far. Returns
/// `true` when the server had stored it anyway and that version was deleted again.
///
/// The body is never ended and never failed: it yields nothing more, and the request is
/// dropped, which makes the HTTP library close the connection in the middle of the body.
/// Servers discard a body cut off like that (Apache answers 400 and keeps no file; servers
/// that write in place keep the part, see `adopt_partial`). A failed body is not used to
/// abandon: hyper, after a body error, can still write the final chunk when it next polls
/// the connection, and Apache then stored the truncated file. A PUT that had already
/// completed (the server answered before its body ended) is undone with a DELETE of exactly
/// the version it created (`If-Match` with its entity tag).
async fn abort_stream(s: Streaming) -> bool {
    let Streaming {
        tx,
        mut task,
        abandoned,
        client,
        path,
        ..
    } = s;
    abandoned.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(tx);
    // Already answered, or it ends at once now (an error): the outcome is known.
    let outcome = tokio::time::timeout(std::time::Duration::from_millis(50), &mut task).await;
    task.abort();
    let Ok(Ok(Ok(meta))) = outcome else {
        return false;
    };
    let Some(tag) = meta.etag else {
        tracing::error!(
            path = %path,
            "an abandoned upload was completed by the server, which gave no entity tag to \
             delete it safely: the file on the server is incomplete"
        );
        return false;
    };
    tracing::warn!(path = %path, "an abandoned upload was completed by the server; deleting it");
    delete_version(&client, &path, &tag).await
}

/// Deletes exactly the version of `path` with entity tag `tag` (`If-Match`), an incomplete
/// upload of ours. Returns whether it is gone.
///
/// If-Match compares strongly. Apache marks the tag of a file changed within the last second
/// as weak and the same tag becomes strong a second later: wait that second out, then name
/// the version by its strong tag (no other version can carry it).
async fn delete_version(client: &DavClient, path: &DavPath, tag: &str) -> bool {
    let tag = match tag.strip_prefix("W/") {
        Some(strong) => {
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            strong.to_owned()
        }
        None => tag.to_owned(),
    };
    let pre = Preconditions {
        if_match: Some(tag),
        ..Default::default()
    };
    match client.delete(path, false, &pre).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(path = %path, "cannot delete an incomplete upload: {e}");
            false
        }
    }
}

/// Stops a follower where it is; it never sent past `size` bytes (the file's size now).
fn stopped(f: Follower, size: u64) -> Resume {
    let mut r = f.stop();
    r.extent = r.extent.min(size);
    r
}

/// Whether a failed upload should be retried from the local copy rather than given up.
fn transient(e: &VfsError) -> bool {
    matches!(
        e.kind,
        ErrorKind::Io | ErrorKind::Unreachable | ErrorKind::TimedOut | ErrorKind::Busy
    )
}

impl WriteHandle {
    /// A new file, or an existing one truncated to 0 (`etag` of the replaced version).
    pub(super) fn new_empty(
        client: &DavClient,
        cache: &CacheDir,
        ino: Ino,
        path: DavPath,
        pre: Preconditions,
        stream: bool,
    ) -> VfsResult<Self> {
        if stream
            && cache.needs_spares()
            && let Ok(tx) = journal_thread()
        {
            // The next uploads' journals, made while this one's data is on the way.
            let _ = tx.try_send(JournalItem::Run(Box::new(cache.spare_maker())));
        }
        let (file_path, file) = if stream {
            cache.new_journal(&path)
        } else {
            cache.new_spool()
        }
        .map_err(|e| io_err(&path, "cannot create a journal", &e))?;
        let stream = if stream {
            match start_stream(client, &path, &pre, &file) {
                Ok(s) => Some(s),
                Err(e) => {
                    // The file still works: spooled and sent at close.
                    tracing::warn!(path = %path, "cannot stream this upload ({e}); spooling it");
                    None
                }
            }
        } else {
            None
        };
        Ok(Self::assemble(
            ino,
            path,
            State {
                stream,
                complete: true,
                dirty: true,
                ..State::new(file, file_path, 0, pre)
            },
        ))
    }

    /// An existing file opened for writing without truncation: spooled, original fetched
    /// when first needed.
    pub(super) fn new_existing(
        cache: &CacheDir,
        ino: Ino,
        path: DavPath,
        size: u64,
        pre: Preconditions,
    ) -> VfsResult<Self> {
        let (file_path, file) = cache
            .new_spool()
            .map_err(|e| io_err(&path, "cannot create a spool file", &e))?;
        Ok(Self::assemble(
            ino,
            path,
            State {
                complete: size == 0,
                ..State::new(file, file_path, size, pre)
            },
        ))
    }

    /// A local-only file kept at `data` (see `local.rs`).
    pub(super) fn new_local(
        ino: Ino,
        path: DavPath,
        data: PathBuf,
        truncate: bool,
    ) -> VfsResult<Self> {
        let file = open_rw(&data).map_err(|e| io_err(&path, "cannot open a local file", &e))?;
        if truncate {
            file.set_len(0)
                .map_err(|e| io_err(&path, "cannot truncate a local file", &e))?;
        }
        let size = file
            .metadata()
            .map_err(|e| io_err(&path, "cannot stat a local file", &e))?
            .len();
        Ok(Self::assemble(
            ino,
            path,
            State {
                complete: true,
                dirty: truncate,
                local: true,
                ..State::new(file, data, size, Preconditions::default())
            },
        ))
    }

    fn assemble(ino: Ino, path: DavPath, state: State) -> Self {
        WriteHandle {
            ino,
            writers: Ranked::new(Rank::HandleInner, Writers::default()),
            process_of: None,
            target: Ranked::new(Rank::HandleInner, path),
            size_now: state.size.into(),
            dirty_now: state.dirty.into(),
            modified_now: 0.into(),
            unlinked: false.into(),
            stall: client_stall(),
            new_file: false.into(),
            segments: None,
            switch_at: u64::MAX,
            state: Mutex::new(state),
            behind_close: tokio::sync::watch::channel(0).0,
        }
    }

    /// A close that does not wait for its upload starts (see `behind_close`)...
    pub(super) fn close_behind_started(&self) {
        self.behind_close.send_modify(|n| *n += 1);
    }

    /// ... and is over, its upload too.
    pub(super) fn close_behind_ended(&self) {
        self.behind_close.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Waits until no close of this session has an upload going on.
    pub(super) async fn uploads_behind_close(&self) {
        let mut rx = self.behind_close.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Large files of this session go in resumable segments where the server takes them.
    pub(super) fn with_segments(mut self, policy: Arc<SegmentPolicy>) -> Self {
        if policy.size() > 0 {
            self.switch_at = policy.size();
            self.segments = Some(policy);
        }
        self
    }

    pub(super) fn ino(&self) -> Ino {
        self.ino
    }

    /// How callers' processes are told apart (see [`WriteHandle::foreign_close`]).
    pub(super) fn with_process_of(mut self, f: Option<ProcessOf>) -> Self {
        self.process_of = f;
        self
    }

    fn writers(&self) -> RankedGuard<'_, Writers> {
        self.writers.lock()
    }

    /// Whether a close by `c` comes from a process that never wrote through this handle
    /// while data is waiting: a child that inherited the descriptor across `fork` and closes
    /// it at `exec` or exit (the kernel flushes at every close of a descriptor). Such a
    /// close must not end the writer's upload; the writer's own close or fsync does.
    pub(super) fn foreign_close(&self, c: Caller) -> bool {
        self.writers().foreign(c, self.process_of)
    }

    /// Where the data goes now.
    pub(super) fn path(&self) -> DavPath {
        self.target.lock().clone()
    }

    /// The size as written so far, without waiting for a running upload.
    pub(super) fn size_now(&self) -> u64 {
        self.size_now.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the session holds data the server does not have yet (and the file was not
    /// deleted or replaced meanwhile): what it shows is then the truth, not the server's copy.
    pub(super) fn dirty_now(&self) -> bool {
        self.dirty_now.load(std::sync::atomic::Ordering::Relaxed) && !self.is_unlinked()
    }

    /// When the session last changed the data, if it did.
    pub(super) fn modified_now(&self) -> Option<std::time::SystemTime> {
        match self.modified_now.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(n)),
        }
    }

    /// Mirrors the size and the dirty flag of `st` for readers that cannot wait for the
    /// session's lock (getattr, listings); a dirty session's data changed now.
    fn set_size_now(&self, st: &State) {
        use std::sync::atomic::Ordering::Relaxed;
        self.size_now.store(st.size, Relaxed);
        self.dirty_now.store(st.dirty, Relaxed);
        if st.dirty {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| {
                    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
                });
            self.modified_now.store(now, Relaxed);
        }
    }

    /// The file was replaced while open: nothing will be uploaded. Marked before waiting for
    /// the session, so that a flush already waiting for it does not upload over the file
    /// that replaced this one.
    pub(super) async fn mark_unlinked(&self) {
        self.unlinked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        super::lock::before_await();
        let mut st = self.state.lock().await;
        self.mark_unlinked_locked(&mut st).await;
    }

    /// The file is deleted while open: runs `delete` (the server's DELETE) holding the
    /// session, so that no upload of it completes around the DELETE, after giving up a
    /// streaming upload (its data stays in the journal, the spool from now on, as in
    /// `to_spool`). Once the
    /// DELETE succeeded nothing will be uploaded (see `mark_unlinked`). When it fails (a
    /// server that refuses deletes) the file stays, and everything written to it, before and
    /// after, is uploaded at close as after any stopped stream.
    pub(super) async fn unlink<E>(
        &self,
        delete: impl std::future::Future<Output = Result<(), E>>,
    ) -> Result<(), E> {
        super::lock::before_await();
        let mut st = self.state.lock().await;
        let given_up = self.stop_streaming(&mut st).await;
        if let Err(e) = delete.await {
            // The file stays: what the server kept of the given-up upload is looked at now
            // (see `to_spool`); after a DELETE it is gone anyway.
            if let Some(client) = given_up {
                self.adopt_partial(&client, &mut st).await;
            }
            return Err(e);
        }
        self.mark_unlinked_locked(&mut st).await;
        Ok(())
    }

    async fn mark_unlinked_locked(&self, st: &mut State) {
        self.unlinked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // The journal's queue is written out first: the program may go on using the file (it
        // is the spool from now on).
        let mut kept = Ok(());
        if let Some(s) = st.stream.take() {
            kept = s.journal.barrier().await;
            abort_stream(s).await;
        }
        if let Some(g) = st.segmented.take() {
            // Its temporary file goes at release.
            kept = kept.and(g.journal.barrier().await);
            st.resume = Some(stopped(g.follower, st.size));
        }
        if let Err(e) = kept {
            st.failed = Some(VfsError::new(
                ErrorKind::NoSpace,
                format!("{}: cannot keep the written data: {e}", self.path()),
            ));
        }
        st.dirty = false;
        // Nor does a write from offset 0 after an empty flush start a new upload.
        st.restream = false;
        self.dirty_now
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn mark_new_file(&self) {
        self.new_file
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn is_new_file(&self) -> bool {
        self.new_file.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn is_unlinked(&self) -> bool {
        self.unlinked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Renames the open file to `to` on the server (MOVE, replacing what is there when
    /// `overwrite`), and sends its data there from now on. Holding the session throughout, so
    /// that no upload of the old name (a flush, a streaming PUT) runs in between: a streaming
    /// upload is given up first, and a part of it the server kept under the old name goes
    /// (see `adopt_partial`). The whole file is sent to the new name at close.
    pub(super) async fn rename(
        &self,
        client: &DavClient,
        to: DavPath,
        overwrite: bool,
    ) -> VfsResult<()> {
        super::lock::before_await();
        let mut st = self.state.lock().await;
        let from = self.path();
        let written = st.dirty || st.stream.is_some() || st.segmented.is_some();
        if let Some(c) = self.stop_streaming(&mut st).await {
            self.remove_partial(&c, &from, &mut st).await;
        }
        if !st.local {
            match client.move_to(&from, &to, false, overwrite).await {
                Ok(()) => {}
                // Nothing uploaded under the old name yet.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        *self.target.lock() = to;
        if !st.local {
            // What was written goes to the new name whole. A session with nothing written
            // has nothing to send: the MOVE took the server's content along (uploading the
            // untouched local copy would have emptied the file - found by the reference
            // model).
            st.dirty |= written;
            st.adopted = false;
            st.expect(Preconditions::default());
        }
        Ok(())
    }

    /// Holds the session while a directory above its file is moved on the server (see
    /// [`Moving`]): a streaming upload is given up first, as for a rename of the file itself,
    /// so that no upload to the old path runs during the MOVE.
    pub(super) async fn hold_for_move(&self) -> Moving<'_> {
        super::lock::before_await();
        let mut st = self.state.lock().await;
        let from = self.path();
        let written = st.dirty || st.stream.is_some() || st.segmented.is_some();
        if let Some(c) = self.stop_streaming(&mut st).await {
            self.remove_partial(&c, &from, &mut st).await;
        }
        Moving {
            w: self,
            st,
            written,
        }
    }

    /// Stops streaming: the journal becomes the spool. Aborts the PUT so the server keeps
    /// nothing half-written (or adopts what it kept, see `adopt_partial`). A segmented upload
    /// stops where it is, to be resumed at flush.
    async fn to_spool(&self, st: &mut State) {
        if let Some(client) = self.stop_streaming(st).await {
            self.adopt_partial(&client, st).await;
        }
    }

    /// As `to_spool` without looking at what the server kept. Returns the client of a
    /// streaming upload that was given up without the server completing it.
    async fn stop_streaming(&self, st: &mut State) -> Option<DavClient> {
        if let Some(seg) = st.segmented.take() {
            tracing::debug!(path = %self.path(), size = st.size, "segmented streaming stops; spooling");
            if let Err(e) = seg.journal.barrier().await {
                st.failed = Some(VfsError::new(
                    ErrorKind::Io,
                    format!("{}: cannot keep the written data: {e}", self.path()),
                ));
            }
            st.resume = Some(stopped(seg.follower, st.size));
        }
        if let Some(s) = st.stream.take() {
            tracing::debug!(path = %self.path(), size = st.size, "streaming stops; spooling");
            if let Err(e) = s.journal.barrier().await {
                st.failed = Some(VfsError::new(
                    ErrorKind::Io,
                    format!("{}: cannot keep the written data: {e}", self.path()),
                ));
            }
            let client = s.client.clone();
            if abort_stream(s).await {
                // What the server had is gone: the whole file is created anew at close.
                st.expect(Preconditions {
                    if_none_match_any: true,
                    ..Default::default()
                });
            } else if st.failed.is_none() {
                return Some(client);
            }
        }
        None
    }

    /// Deletes the part of our given-up PUT that the server kept at `path` (see
    /// `look_at_partial`), if any; the session's preconditions then create the file anew.
    /// When it cannot be deleted (still changing, no usable tag, the DELETE failed), it is
    /// adopted instead, so that the next upload replaces it.
    async fn remove_partial(&self, client: &DavClient, path: &DavPath, st: &mut State) {
        // Only where we know which version we expected: anything else is not provably ours.
        if !(st.pre.if_none_match_any || st.pre.if_match.is_some()) || st.local {
            return;
        }
        match self.settled_partial(client, path, st).await {
            Partial::NotOurs(_) => return,
            Partial::Ours(Some(tag), len) if len > 0 => {
                tracing::debug!(path = %path, len, "deleting the part of a given-up upload");
                if delete_version(client, path, &tag).await {
                    st.adopted = false;
                    st.expect(Preconditions {
                        if_none_match_any: true,
                        ..Default::default()
                    });
                    return;
                }
            }
            Partial::Ours(..) | Partial::Changing => {}
        }
        self.adopt_partial(client, st).await;
    }

    /// `look_at_partial`, looked at again while the server is still writing the file (for
    /// at most about 3 s).
    async fn settled_partial(&self, client: &DavClient, path: &DavPath, st: &State) -> Partial {
        let mut pause = std::time::Duration::from_millis(25);
        for _ in 0..7 {
            match self.look_at_partial(client, path, st).await {
                Partial::Changing => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                settled => return settled,
            }
        }
        Partial::Changing
    }

    /// A PUT of ours ended without success and the data will be sent again. Servers that
    /// write a PUT body in place (dav-server's LocalFs and others) then hold the part that
    /// arrived, as a new version, and the retry's preconditions would call our own part a
    /// conflict. When the file on the server is no longer the version we expected, is no
    /// longer than what we wrote, and its last bytes are ours, it is our part: the retry
    /// replaces exactly that version. Anything else stays a conflict.
    ///
    /// Such a server may still be writing the body it received when we look: a file that
    /// changes between two looks is looked at again, for at most about 3 s.
    async fn adopt_partial(&self, client: &DavClient, st: &mut State) {
        let expects_version = st.pre.if_none_match_any || st.pre.if_match.is_some();
        if !expects_version || st.local {
            return;
        }
        let path = self.path();
        // A weak tag is looked at once more, a second later.
        for _ in 0..2 {
            match self.settled_partial(client, &path, st).await {
                // An empty file proves nothing: anyone may have emptied it. (For a new
                // file, an empty one at its name is taken as ours: in-place servers create
                // it before the first byte arrives. That includes a new file whose empty
                // placeholder we made at create and now expect by its tag: a given-up
                // streaming PUT replaced it with another empty version, and the next
                // upload failed with 412 - found by the reference model.)
                Partial::Ours(_, 0) if !st.pre.if_none_match_any && !self.is_new_file() => {
                    return;
                }
                Partial::Ours(Some(tag), _) if tag.starts_with("W/") => {
                    // A tag that is weak now (Apache: changed within the last second)
                    // becomes strong a second later; look again then.
                    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
                }
                Partial::Ours(etag, _) => {
                    if etag.is_none() && !st.pre.if_none_match_any {
                        // An overwrite must stay conditional: without a tag to name our part
                        // by, the conflict stands.
                        tracing::debug!(path = %path, "our part has no entity tag; not adopting it");
                        return;
                    }
                    tracing::debug!(path = %path, "the server kept part of our upload; replacing it");
                    st.adopted = true;
                    st.expect(Preconditions {
                        if_match: etag,
                        ..Default::default()
                    });
                    return;
                }
                Partial::NotOurs(why) => {
                    tracing::debug!(path = %path, "no partial upload to adopt: {why}");
                    return;
                }
                Partial::Changing => {
                    tracing::debug!(path = %path, "the file on the server keeps changing; not adopting it");
                    return;
                }
            }
        }
    }

    async fn look_at_partial(&self, client: &DavClient, path: &DavPath, st: &State) -> Partial {
        let meta = match client.head(path).await {
            Ok(m) => m,
            // Gone or unreachable: the preconditions stand.
            Err(e) => return Partial::NotOurs(e.to_string()),
        };
        let strong = |t: &str| t.trim_start_matches("W/").to_owned();
        if let (Some(have), Some(want)) = (&meta.etag, &st.pre.if_match)
            && strong(have) == strong(want)
        {
            return Partial::NotOurs("still the version we expected".into());
        }
        let Some(len) = meta.content_length.filter(|&n| n <= st.size) else {
            return Partial::NotOurs(format!("{:?} bytes, more than ours", meta.content_length));
        };
        let tail = len.saturating_sub(64 * 1024);
        let mut ours = vec![0u8; (len - tail) as usize];
        match read_at(&st.file, &mut ours, tail) {
            Ok(n) if n == ours.len() => {}
            _ => return Partial::NotOurs("our copy cannot be read".into()),
        }
        let mut theirs = Vec::with_capacity(ours.len());
        if len > 0 {
            let range = ByteRange {
                start: tail,
                end: Some(len - 1),
            };
            let mut get = match client.get(path, Some(range), meta.etag.as_deref()).await {
                Ok(g) => g,
                Err(e) => return Partial::NotOurs(e.to_string()),
            };
            if get.range.is_none() || get.meta.etag != meta.etag {
                return Partial::Changing;
            }
            loop {
                match get.chunk().await {
                    Ok(Some(c)) => theirs.extend_from_slice(&c),
                    Ok(None) => break,
                    Err(_) => return Partial::Changing,
                }
            }
        }
        if theirs != ours {
            return Partial::NotOurs("other bytes".into());
        }
        // Still the same version after we read it?
        match client.head(path).await {
            Ok(again) if again.etag == meta.etag && again.content_length == meta.content_length => {
                Partial::Ours(meta.etag, len)
            }
            Ok(_) => Partial::Changing,
            Err(e) => Partial::NotOurs(e.to_string()),
        }
    }

    /// Waits until the journal holds every byte written so far (streaming only).
    async fn journal_barrier(&self, st: &mut State) -> VfsResult<()> {
        let journal = match (&st.stream, &st.segmented) {
            (Some(s), _) => Some(&s.journal),
            (None, Some(g)) => Some(&g.journal),
            (None, None) => None,
        };
        if let Some(j) = journal
            && let Err(e) = j.barrier().await
        {
            let err = VfsError::new(
                ErrorKind::NoSpace,
                format!(
                    "{}: cannot keep the written data in the cache directory: {e}",
                    self.path()
                ),
            );
            if let Some(s) = st.stream.take() {
                abort_stream(s).await;
            }
            if let Some(g) = st.segmented.take() {
                st.resume = Some(stopped(g.follower, st.size));
            }
            st.failed = Some(err.clone());
            return Err(err);
        }
        Ok(())
    }

    /// A streaming session about to outgrow one segment switches to a segmented upload
    /// where the server takes one: the whole-file PUT is given up (the journal holds all of
    /// it) and a follower uploads the journal to a temporary name from offset 0 on.
    async fn start_segments(&self, client: &DavClient, st: &mut State) {
        st.may_segment = false;
        let Some(policy) = &self.segments else {
            return;
        };
        let path = self.path();
        let dir = path.parent().unwrap_or_default();
        if !policy.usable(client, &dir).await {
            return;
        }
        let Ok(temp) = segments::temp_for(&path) else {
            return;
        };
        let (ring, direct) = around_page_cache(policy, &st.file_path, st.size);
        let journal = match st
            .file
            .try_clone()
            .and_then(|f| JournalWriter::start(f, st.size, ring.clone(), direct))
        {
            Ok(j) => j,
            Err(e) => {
                tracing::debug!(path = %path, "cannot upload in segments ({e})");
                return;
            }
        };
        if let Some(c) = self.stop_streaming(st).await {
            // A server that writes bodies in place kept the start of the given-up PUT under
            // the real name: it goes, so that no reader sees a half file there. The name is
            // then free, and the MOVE at the end creates the file.
            self.remove_partial(&c, &path, st).await;
        }
        if st.failed.is_some() {
            return;
        }
        tracing::debug!(path = %path, temp = %temp, "the file outgrew one segment; uploading it in segments");
        let follower = Follower::start(
            client.clone(),
            Local {
                path: st.file_path.clone(),
                ring,
            },
            Resume::new(temp),
            journal.watermark(),
            policy.size(),
        );
        st.segmented = Some(Segmented { journal, follower });
    }

    /// A segmented session whose follower stopped (it gave up after its retries) goes on
    /// as a spooled one; the flush resumes the upload where it stopped.
    async fn check_follower(&self, st: &mut State) -> VfsResult<()> {
        if !st.segmented.as_ref().is_some_and(|g| g.follower.stopped()) {
            return Ok(());
        }
        let Some(g) = st.segmented.take() else {
            return Ok(());
        };
        let barrier = g.journal.barrier().await;
        let (resume, r) = g.follower.complete(st.size).await;
        st.resume = Some(resume);
        if let Err(e) = barrier {
            let err = VfsError::new(
                ErrorKind::NoSpace,
                format!("{}: cannot keep the written data: {e}", self.path()),
            );
            st.failed = Some(err.clone());
            return Err(err);
        }
        if let Err(e) = r {
            if !transient(&e) {
                st.failed = Some(e.clone());
                return Err(e);
            }
            tracing::info!(path = %self.path(), "segmented upload paused ({e}); the rest goes at close");
        }
        Ok(())
    }

    /// Waits while the writer is more than two segments ahead of a server that is taking
    /// the upload, so that the writer's progress stays the upload's progress. While the
    /// upload fails and pauses before trying again, the writer goes on into the journal: the
    /// upload catches up from there. Each wait is bounded by `stall`.
    async fn segment_backpressure(&self, st: &mut State) {
        let Some(g) = &mut st.segmented else {
            return;
        };
        let window = 2 * self.switch_at;
        let mut progress = g.follower.progress.clone();
        let wait = |p: segments::Progress| !p.failing && st.size.saturating_sub(p.acked) > window;
        if !wait(*progress.borrow()) {
            return;
        }
        let waited = tokio::time::timeout(self.stall, async {
            while wait(*progress.borrow_and_update()) {
                if progress.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        if waited.is_err() {
            // A slow link (a segment taking longer than `stall`): let this write through.
            // A stuck request fails by the client's progress timeout, and the follower then
            // reports `failing`.
            tracing::debug!(path = %self.path(), "the segmented upload is slow");
        }
    }

    /// Fetches the server's version into the spool, if not done yet.
    async fn load_original(&self, client: &DavClient, st: &mut State) -> VfsResult<()> {
        if st.complete {
            return Ok(());
        }
        let mut get = client.get(&self.path(), None, None).await?;
        let mut off = 0u64;
        while let Some(chunk) = get.chunk().await? {
            // Bytes the application already wrote beyond the original win: only fill below
            // the original size and never past what we have written since.
            let end = off + chunk.len() as u64;
            let limit = st.original_size.min(end);
            if off < limit {
                let piece = &chunk[..(limit - off) as usize];
                write_at(&st.file, piece, off).map_err(|e| io_err(&self.path(), "write", &e))?;
            }
            off = end;
        }
        if off != st.original_size {
            return Err(VfsError::new(
                ErrorKind::Stale,
                format!(
                    "{}: changed on the server (expected {} bytes, got {off})",
                    self.path(),
                    st.original_size
                ),
            ));
        }
        st.complete = true;
        Ok(())
    }

    /// The common case of a streaming upload, done without waiting: a sequential write
    /// while both the journal and the upload have room. `None`: take the general path.
    pub(super) fn try_write_now(&self, offset: u64, data: &Bytes, by: Caller) -> Option<u32> {
        let mut st = self.state.try_lock().ok()?;
        let n = self.try_write_locked(&mut st, offset, data)?;
        self.writers().note(by, self.process_of);
        Some(n)
    }

    fn try_write_locked(&self, st: &mut State, offset: u64, data: &Bytes) -> Option<u32> {
        if st.failed.is_some() || offset != st.size {
            return None;
        }
        let end = offset + data.len() as u64;
        if let Some(g) = &st.segmented {
            // Segmented: only the journal takes the data; the follower reads it from there.
            let p = *g.follower.progress.borrow();
            if g.follower.stopped()
                || (!p.failing && end.saturating_sub(p.acked) > 2 * self.switch_at)
                || g.journal.tx.capacity() == 0
            {
                return None;
            }
            g.journal
                .tx
                .try_send(g.journal.item(offset, data.clone()))
                .ok()?;
            st.size = end;
            st.dirty = true;
            st.changed_since_recovery = true;
            self.set_size_now(st);
            return Some(data.len() as u32);
        }
        if st.may_segment && end > self.switch_at {
            return None; // time to switch: the general path does it.
        }
        let s = st.stream.as_ref()?;
        if s.tx.capacity() == 0 || s.journal.tx.capacity() == 0 {
            return None;
        }
        // Both have room and we hold the session. The journal's queue is shared with other
        // uploads and may fill meanwhile: then nothing was sent and the general path waits.
        s.journal
            .tx
            .try_send(s.journal.item(offset, data.clone()))
            .ok()?;
        if s.tx.try_send(Ok(data.clone())).is_err() {
            // The upload ended; the general path finds out why (the journal write above is
            // repeated there, harmlessly: same bytes, same place).
            return None;
        }
        st.size += data.len() as u64;
        st.dirty = true;
        st.changed_since_recovery = true;
        self.set_size_now(st);
        Some(data.len() as u32)
    }

    pub(super) async fn write(
        &self,
        client: &DavClient,
        offset: u64,
        data: Bytes,
        by: Caller,
    ) -> VfsResult<u32> {
        super::lock::before_await();
        let mut st = self.state.lock().await;
        self.writers().note(by, self.process_of);
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        if st.restream && st.stream.is_none() && offset == 0 && st.size == 0 && !st.local {
            st.restream = false;
            match start_stream(client, &self.path(), &st.pre, &st.file) {
                Ok(s) => st.stream = Some(s),
                Err(e) => {
                    tracing::debug!(path = %self.path(), "cannot stream again ({e}); spooling")
                }
            }
        }
        if st.stream.is_some()
            && st.may_segment
            && offset == st.size
            && offset + data.len() as u64 > self.switch_at
        {
            self.start_segments(client, &mut st).await;
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
        }
        self.check_follower(&mut st).await?;
        if st.segmented.is_some() && offset != st.size {
            tracing::debug!(path = %self.path(), offset, size = st.size, "a write out of sequence");
            self.to_spool(&mut st).await;
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
        }
        let sequential = st.stream.is_some() && offset == st.size;
        if st.stream.is_some() && !sequential {
            tracing::debug!(path = %self.path(), offset, size = st.size, "a write out of sequence");
            self.to_spool(&mut st).await;
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
        }
        if st.stream.is_none() && !st.complete {
            // Writing into an existing file: the bytes around must come from the server.
            let covers_all = offset == 0 && data.len() as u64 >= st.original_size;
            if covers_all {
                st.complete = true;
            } else {
                self.load_original(client, &mut st).await?;
            }
        }
        let journaled = match (&st.stream, &st.segmented, sequential) {
            (Some(s), _, true) => s
                .journal
                .push(offset, data.clone())
                .await
                .map_err(io::Error::other),
            (None, Some(g), _) => g
                .journal
                .push(offset, data.clone())
                .await
                .map_err(io::Error::other),
            _ => write_at(&st.file, &data, offset),
        };
        if let Err(e) = journaled {
            let err = io_err(&self.path(), "cannot keep the written data", &e);
            // Never let the server complete a file we could not journal.
            self.to_spool(&mut st).await;
            st.failed = Some(err.clone());
            return Err(err);
        }
        st.size = st.size.max(offset + data.len() as u64);
        st.dirty = true;
        st.changed_since_recovery = true;
        if let Some(r) = &mut st.resume {
            r.changed_from(offset);
        }
        self.set_size_now(&st);
        let len = data.len() as u32;
        if st.segmented.is_some() {
            self.segment_backpressure(&mut st).await;
            return Ok(len);
        }
        let sent = match (&st.stream, sequential) {
            // A server that stops reading without closing would block the send forever.
            (Some(s), true) => matches!(
                tokio::time::timeout(self.stall, s.tx.send(Ok(data))).await,
                Ok(Ok(()))
            ),
            _ => true,
        };
        if !sent && let Some(s) = st.stream.take() {
            // The PUT ended early, or its server stopped reading. The journal must hold
            // everything before it becomes the spool; then find out why the PUT ended (a
            // stalled one is given up, never completed).
            let barrier = s.journal.barrier().await;
            let Streaming { tx, mut task, .. } = s;
            drop(tx);
            let ended = tokio::time::timeout(std::time::Duration::from_secs(5), &mut task).await;
            task.abort();
            if let Err(e) = barrier {
                let err = VfsError::new(
                    ErrorKind::NoSpace,
                    format!("{}: cannot keep the written data: {e}", self.path()),
                );
                st.failed = Some(err.clone());
                return Err(err);
            }
            if let Ok(Ok(Err(e))) = ended {
                let err = VfsError::from(e);
                if !transient(&err) {
                    st.failed = Some(err.clone());
                    return Err(err);
                }
            }
            tracing::debug!(path = %self.path(), "streaming upload broke; spooling instead");
            self.adopt_partial(client, &mut st).await;
        }
        Ok(len)
    }

    pub(super) async fn read(
        &self,
        client: &DavClient,
        offset: u64,
        size: u32,
    ) -> VfsResult<Bytes> {
        super::lock::before_await();
        let mut st = self.state.lock().await;
        self.journal_barrier(&mut st).await?;
        if st.stream.is_none() && !st.complete {
            self.load_original(client, &mut st).await?;
        }
        if offset >= st.size {
            return Ok(Bytes::new());
        }
        let n = (u64::from(size)).min(st.size - offset) as usize;
        let mut buf = vec![0u8; n];
        let got =
            read_at(&st.file, &mut buf, offset).map_err(|e| io_err(&self.path(), "read", &e))?;
        // Holes (truncate up) read as zeros.
        buf.truncate(got);
        buf.resize(n, 0);
        Ok(Bytes::from(buf))
    }

    pub(super) async fn set_size(&self, client: &DavClient, size: u64) -> VfsResult<()> {
        super::lock::before_await();
        let mut st = self.state.lock().await;
        // Whoever truncates changes the file too, and the request does not say who it is.
        self.writers().unknown = true;
        if st.size == size && (st.stream.is_some() || st.segmented.is_some() || st.complete) {
            return Ok(());
        }
        self.to_spool(&mut st).await;
        if size > 0 && !st.complete {
            self.load_original(client, &mut st).await?;
        }
        st.file
            .set_len(size)
            .map_err(|e| io_err(&self.path(), "truncate", &e))?;
        if let Some(r) = &mut st.resume {
            r.changed_from(size);
        }
        st.size = size;
        st.complete = true;
        st.dirty = true;
        st.changed_since_recovery = true;
        self.set_size_now(&st);
        Ok(())
    }

    /// Before a close that does not wait for the upload (`async_close`): the error of an
    /// earlier failure, else waits until the journal holds every byte written so far.
    /// Returns whether there is anything to upload.
    pub(super) async fn keep_locally(&self) -> VfsResult<bool> {
        super::lock::before_await();
        let mut st = self.state.lock().await;
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        if !st.dirty || self.is_unlinked() {
            return Ok(false);
        }
        self.journal_barrier(&mut st).await?;
        Ok(true)
    }

    /// Makes the server hold what was written: ends the streaming PUT, or PUTs the spool.
    /// Returns what was uploaded, or `None` when there was nothing to do. When it fails, a
    /// copy of the data goes to the recovery folder at once and the log says where.
    pub(super) async fn flush(
        &self,
        client: &DavClient,
        cache: &CacheDir,
    ) -> VfsResult<Option<Uploaded>> {
        super::lock::before_await();
        let mut st = self.state.lock().await;
        // FUSE flushes on every `close`, also of a descriptor whose `dup` stays open: a shell
        // opens `> file`, moves it to standard output and closes the original before anything
        // is written. That flush completes the (empty) upload like any other, and the next
        // write from offset 0 starts a new streaming upload instead of spooling everything
        // for the last close.
        let empty_stream = st.stream.is_some() && st.size == 0 && st.failed.is_none();
        let r = self.flush_locked(client, &mut st).await;
        if r.is_ok() {
            // Everything written is on the server; nobody could write meanwhile (the session
            // was held).
            *self.writers() = Writers::default();
        }
        if empty_stream && r.is_ok() {
            st.restream = st.size == 0 && st.stream.is_none() && st.failed.is_none();
        }
        match &r {
            Ok(Some(_)) => {
                if let Some(p) = st.recovered.take() {
                    // Uploaded after all: the kept copy is no longer needed.
                    let _ = std::fs::remove_file(&p);
                    let _ = std::fs::remove_file(info_path(&p));
                }
            }
            Ok(None) => {}
            Err(e) => {
                // Copying the file aside is disk work of any size: not on the thread that
                // polled this first (a FUSE thread, see `fs::fuse`), but on the runtime.
                tokio::task::yield_now().await;
                self.keep_copy(cache, &mut st, e)
            }
        }
        r
    }

    /// Copies the data into the recovery folder (once per version of the data).
    fn keep_copy(&self, cache: &CacheDir, st: &mut State, e: &VfsError) {
        if st.recovered.is_some() && !st.changed_since_recovery {
            return;
        }
        if let Some(old) = st.recovered.take() {
            let _ = std::fs::remove_file(&old);
            let _ = std::fs::remove_file(info_path(&old));
        }
        let _ = st.file.sync_data();
        let copy = match cache.new_spool() {
            Ok((c, _)) => c,
            Err(io) => {
                tracing::error!(
                    "could not upload {} ({e}) nor copy it aside ({io}); it stays in {}",
                    self.path(),
                    st.file_path.display()
                );
                return;
            }
        };
        let copied = std::fs::copy(&st.file_path, &copy)
            .and_then(|_| {
                let f = std::fs::OpenOptions::new().write(true).open(&copy)?;
                f.set_len(st.size)
            })
            .and_then(|_| cache.recover(&copy, &self.path(), &e.to_string()));
        match copied {
            Ok(kept) => {
                tracing::warn!(
                    "could not upload {}: {e}. The data is kept in {}",
                    self.path(),
                    kept.display()
                );
                st.recovered = Some(kept);
                st.changed_since_recovery = false;
            }
            Err(io) => {
                cache.discard(&copy);
                tracing::error!(
                    "could not upload {} ({e}) nor copy it aside ({io}); it stays in {}",
                    self.path(),
                    st.file_path.display()
                );
            }
        }
    }

    async fn flush_locked(
        &self,
        client: &DavClient,
        st: &mut State,
    ) -> VfsResult<Option<Uploaded>> {
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        if !st.dirty || self.is_unlinked() {
            return Ok(None);
        }
        if st.local {
            st.dirty = false;
            self.set_size_now(st);
            return Ok(Some(Uploaded {
                size: st.size,
                etag: None,
            }));
        }
        let mut result = None;
        // Everything written must be in the journal before the server may complete the file.
        self.journal_barrier(st).await?;
        if let Some(g) = st.segmented.take() {
            let (resume, r) = g.follower.complete(st.size).await;
            st.resume = Some(resume);
            if let Err(e) = r {
                if !transient(&e) {
                    st.failed = Some(e.clone());
                    return Err(e);
                }
                st.failed_round = Some(std::time::Instant::now());
                tracing::info!(path = %self.path(), "segmented upload failed ({e}); resuming it");
            }
        }
        if let Some(s) = st.stream.take() {
            match s.complete().await {
                Ok(Ok(meta)) => result = Some(meta),
                Ok(Err(e)) => {
                    let err = VfsError::from(e);
                    if !transient(&err) {
                        st.failed = Some(err.clone());
                        return Err(err);
                    }
                    tracing::info!(path = %self.path(), "streaming upload failed ({err}); sending it again");
                    self.adopt_partial(client, st).await;
                }
                Err(_) => self.adopt_partial(client, st).await,
            }
        }
        let seg = self.segments.as_ref().map_or(0, |p| p.size());
        if st.size <= seg
            && let Some(r) = st.resume.take()
        {
            // The file became small (truncated while open): one PUT; the temporary upload
            // goes.
            segments::discard(client, &r).await;
        }
        let segmented = match (&result, &self.segments) {
            (None, _) if st.resume.is_some() => true,
            (None, Some(p)) if st.size > p.size() => {
                let dir = self.path().parent().unwrap_or_default();
                p.usable(client, &dir).await
            }
            _ => false,
        };
        let meta = match result {
            Some(m) => m,
            None if segmented => match self.put_segments(client, st).await {
                Ok(m) => m,
                Err(e) => {
                    if !transient(&e) {
                        st.failed = Some(e.clone());
                    }
                    return Err(e);
                }
            },
            None => {
                let mut last = None;
                let mut meta = None;
                // From the local copy: a dropped connection is retried once. A 412 right
                // after we adopted our own part (see `adopt_partial`) means the server was
                // still writing that part: look again, at most twice.
                let (mut dropped, mut still_writing) = (1, 2);
                loop {
                    match self.put_file(client, st).await {
                        Ok(m) => {
                            meta = Some(m);
                            break;
                        }
                        Err(e) => {
                            let retry = if transient(&e) && dropped > 0 {
                                dropped -= 1;
                                true
                            } else if e.kind == ErrorKind::Stale && st.adopted && still_writing > 0
                            {
                                still_writing -= 1;
                                true
                            } else {
                                false
                            };
                            last = Some(e);
                            if !retry {
                                break;
                            }
                            self.adopt_partial(client, st).await;
                        }
                    }
                }
                match meta {
                    Some(m) => m,
                    None => {
                        let err =
                            last.unwrap_or_else(|| VfsError::new(ErrorKind::Io, "upload failed"));
                        if !transient(&err) {
                            st.failed = Some(err.clone());
                        }
                        return Err(err);
                    }
                }
            }
        };
        st.dirty = false;
        self.set_size_now(st);
        st.adopted = false;
        // From now on we overwrite our own version.
        st.expect(Preconditions {
            if_match: meta.etag.clone().filter(|t| !t.starts_with("W/")),
            ..Default::default()
        });
        Ok(Some(Uploaded {
            size: st.size,
            etag: meta.etag,
        }))
    }

    /// Uploads the local copy in segments to a temporary name, resuming where an earlier
    /// attempt stopped, and moves it in place. What was done survives a failure.
    async fn put_segments(&self, client: &DavClient, st: &mut State) -> VfsResult<ResponseMeta> {
        let mut r = match st.resume.take() {
            Some(r) => r,
            None => Resume::new(segments::temp_for(&self.path())?),
        };
        if r.extent > st.size {
            // The file became shorter than what the temporary file may hold: start again
            // (the first segment's PUT replaces it).
            r.acked = 0;
        }
        // Right after a round of retries failed, one attempt: the close that follows a
        // failed fsync, and the release after that, need not wait the pauses out again.
        let retries = match st.failed_round {
            Some(t) if t.elapsed() < std::time::Duration::from_secs(30) => 0,
            _ => segments::SEGMENT_RETRIES,
        };
        let out = self.put_segments_from(client, st, &mut r, retries).await;
        match &out {
            Ok(_) => st.failed_round = None,
            Err(e) => {
                st.failed_round = Some(std::time::Instant::now());
                // After a conflict the temporary file is gone; otherwise the next attempt
                // resumes it.
                if e.kind != ErrorKind::Stale {
                    st.resume = Some(r);
                }
            }
        }
        out
    }

    async fn put_segments_from(
        &self,
        client: &DavClient,
        st: &State,
        r: &mut Resume,
        retries: u32,
    ) -> VfsResult<ResponseMeta> {
        let seg = self.segments.as_ref().map_or(u64::MAX, |p| p.size());
        let target = self.path();
        if r.moving {
            // The last attempt sent the MOVE and lost its answer: if the temporary file is
            // gone and the target has our size, the MOVE happened.
            let temp_gone =
                matches!(client.head(&r.temp).await, Err(e) if e.kind() == ErrorKind::NotFound);
            let strong = |t: &str| t.trim_start_matches("W/").to_owned();
            if temp_gone
                && let Ok(meta) = client.head(&target).await
                && meta.content_length == Some(st.size)
                && (meta.etag.as_deref().map(strong) != st.pre.if_match.as_deref().map(strong)
                    || st.pre.if_match.is_none())
            {
                return Ok(meta);
            }
            r.moving = false;
        }
        if r.acked > 0 && segments::lost_start(client, &r.temp, r.acked).await {
            // Resuming into a temporary file that lost bytes would leave a hole of zeros.
            tracing::info!(temp = %r.temp, "the server lost the upload's start; sending all of it again");
            r.acked = 0;
        }
        for attempt in 0..2 {
            let local = Local::file(st.file_path.clone());
            segments::send_range(client, &local, r, st.size, seg, retries, &|_| {}).await?;
            let there = match client.head(&r.temp).await {
                Ok(m) => m.content_length,
                Err(e) if e.kind() == ErrorKind::NotFound => Some(u64::MAX),
                Err(e) => return Err(e.into()),
            };
            if there.is_none_or(|n| n == st.size) {
                break;
            }
            // The server holds something else under the temporary name: send it all again.
            tracing::info!(temp = %r.temp, ?there, size = st.size, "the temporary upload is not whole");
            r.acked = 0;
            if attempt == 1 {
                return Err(VfsError::new(
                    ErrorKind::Io,
                    format!("{target}: the server does not keep the upload's segments"),
                ));
            }
        }
        segments::finish(client, r, &target, &st.pre).await
    }

    async fn put_file(&self, client: &DavClient, st: &State) -> VfsResult<ResponseMeta> {
        let file = std::fs::File::open(&st.file_path)
            .map_err(|e| io_err(&self.path(), "cannot reopen the local copy", &e))?;
        let len = st.size;
        let stream = segments::file_stream(Arc::new(file), 0, len);
        Ok(client
            .put(
                &self.path(),
                PutBody::Stream {
                    stream: Box::new(stream),
                    len: Some(len),
                },
                &st.pre,
            )
            .await?)
    }

    /// Ends the session: uploads what is left (a failure leaves the data in the recovery
    /// folder, see `flush`) and deletes the local copy. `discard` (the file was deleted
    /// meanwhile) uploads nothing.
    pub(super) async fn release(
        &self,
        client: &DavClient,
        cache: &CacheDir,
        discard: bool,
    ) -> VfsResult<Option<Uploaded>> {
        let outcome = if discard || self.is_unlinked() {
            super::lock::before_await();
            let mut st = self.state.lock().await;
            self.to_spool(&mut st).await;
            st.dirty = false;
            self.set_size_now(&st);
            Ok(None)
        } else {
            self.flush(client, cache).await
        };
        super::lock::before_await();
        let mut st = self.state.lock().await;
        if st.local {
            return outcome;
        }
        if let Some(r) = st.resume.take() {
            // Not finished and never will be: the temporary upload goes (the data is in the
            // recovery folder when the upload failed).
            segments::discard(client, &r).await;
        }
        if outcome.is_err() && st.recovered.is_none() && (st.size > 0 || st.dirty) {
            // No copy could be made aside: leave the only copy where it is.
            return outcome;
        }
        cache.discard(&st.file_path);
        outcome
    }
}

fn info_path(p: &std::path::Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".info");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(path: &std::path::Path) -> io::Result<std::fs::File> {
        std::fs::OpenOptions::new().write(true).open(path)
    }

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 253) as u8)
            .collect()
    }

    /// A segmented journal as the journal thread writes it, with the platform's direct
    /// writes replaced by plain ones (the staging, padding and cutting are the same).
    fn journal(dir: &std::path::Path, head: &[u8], seg: u64) -> (PathBuf, JournalFile, Arc<Ring>) {
        let path = dir.join("j.data");
        std::fs::write(&path, head).expect("head");
        let file = open_rw(&path).expect("open");
        let ring = Arc::new(Ring::new(
            tempfile::tempfile().expect("ring"),
            seg,
            head.len() as u64,
        ));
        let direct = Direct::open(plain, &path, head.len() as u64).expect("direct");
        let j = JournalFile {
            file,
            ring: Some(ring.clone()),
            direct: Ranked::new(Rank::Journal, Some(direct)),
            error: Ranked::new(Rank::JournalError, None),
            written: tokio::sync::watch::Sender::new(head.len() as u64),
        };
        (path, j, ring)
    }

    #[test]
    fn direct_journals_hold_every_byte_as_soon_as_it_is_written() {
        let dir = tempfile::tempdir().expect("dir");
        let data = pattern(5 << 20, 7);
        // The journal had 5000 bytes (an unaligned end) when it went direct.
        let seg = 1 << 20;
        let (path, j, ring) = journal(dir.path(), &data[..5000], seg);
        let mut off = 5000;
        for piece in data[5000..].chunks(300_001) {
            j.write(piece, off as u64).expect("write");
            off += piece.len();
            let got = std::fs::read(&path).expect("read");
            assert!(
                got.len() == off && got[..] == data[..off],
                "the journal at {off}"
            );
        }
        // Segments 1..=4 went to the ring (segment 0 began before it): each reads back whole.
        for k in 1..5u64 {
            let at = ring.locate(k * seg, (k + 1) * seg).expect("in the ring");
            let mut buf = vec![0u8; seg as usize];
            read_at(&ring.file, &mut buf, at).expect("ring read");
            assert!(
                buf[..] == data[(k * seg) as usize..((k + 1) * seg) as usize],
                "segment {k} differs in the ring"
            );
        }
        // Writing on rewrites the unfinished last block correctly.
        let more = pattern(12345, 9);
        j.write(&more, data.len() as u64).expect("write");
        let got = std::fs::read(&path).expect("read");
        assert_eq!(got.len(), data.len() + more.len());
        assert!(got[data.len()..] == more[..] && got[..data.len()] == data[..]);
    }

    #[test]
    fn small_unaligned_writes_are_in_the_journal_file_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        // Segments of 4 KiB: the ring's slots are full after 4 segments; from then on the
        // follower reads the journal file, so each write must be there when it returns.
        let seg = 4096;
        let data = pattern(64 * 1024, 3);
        let (path, j, _ring) = journal(dir.path(), &[], seg);
        let mut off = 0;
        for piece in data.chunks(1000) {
            j.write(piece, off as u64).expect("write");
            off += piece.len();
            if off as u64 > Ring::SLOTS * seg {
                let got = std::fs::read(&path).expect("read");
                assert!(
                    got.len() == off && got[..] == data[..off],
                    "staged at {off}"
                );
            }
        }
    }

    #[test]
    fn only_a_provably_other_process_closes_without_uploading() {
        let by = |owner, pid| Caller { owner, pid };
        // Threads 100-199 are process 1, 500-599 process 5; others are gone.
        fn proc_of(tid: u32) -> Option<u32> {
            (tid < 1000).then_some(tid / 100)
        }
        let p = Some(proc_of as ProcessOf);
        let mut w = Writers::default();
        assert!(!w.foreign(by(Some(9), 500), p), "nothing written");
        // A write that bypassed the page cache: known by its lock owner.
        w.note(by(Some(1), 100), p);
        assert!(
            !w.foreign(by(Some(1), 555), p),
            "the writer's descriptor table"
        );
        assert!(w.foreign(by(Some(2), 555), p), "a child");
        assert!(w.foreign(by(Some(2), 101), p), "another descriptor table");
        assert!(!w.foreign(by(Some(2), 0), p), "no thread id");
        // Writes through the page cache carry no lock owner: known by process, resolved
        // when they wrote (a writer thread that is gone later does not matter).
        let mut q = Writers::default();
        q.note(by(None, 100), p);
        assert!(
            !q.foreign(by(Some(3), 199), p),
            "another thread of the writer"
        );
        assert!(q.foreign(by(Some(3), 555), p), "a child");
        assert!(!q.foreign(by(Some(3), 5000), p), "cannot tell");
        assert!(!q.foreign(by(Some(3), 555), None), "no way to tell");
        // A write nobody can be named for, or a crowd: every close uploads.
        let mut r = Writers::default();
        r.note(by(None, 5000), p);
        assert!(!r.foreign(by(Some(3), 555), p));
        let mut crowd = Writers::default();
        for i in 0..=Writers::MAX as u64 {
            crowd.note(by(Some(10 + i), 100), p);
        }
        assert!(!crowd.foreign(by(Some(3), 555), p));
    }

    #[test]
    fn a_journal_write_out_of_order_falls_back_to_plain_writes() {
        let dir = tempfile::tempdir().expect("dir");
        let data = pattern(3 << 20, 5);
        let (path, j, _ring) = journal(dir.path(), &[], 1 << 20);
        j.write(&data[..1_500_000], 0).expect("write");
        // The same bytes again (a repeated write), then the rest.
        j.write(&data[1_000_000..1_500_000], 1_000_000)
            .expect("repeat");
        assert!(j.direct.lock().is_none(), "direct writes go on");
        j.write(&data[1_500_000..], 1_500_000).expect("write");
        assert!(std::fs::read(&path).expect("read") == data);
    }
}
