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
//!
//! Layout, by responsibility:
//! - this file: the session ([`WriteHandle`]): what callers do to it (write, read, truncate,
//!   flush, rename, unlink, release) and the uploads at flush;
//! - `state`: the session's state, with its `Mode` (spooling, streaming,
//!   segmented, local) and every transition between modes;
//! - `stream`: the streaming PUT's body and task, and abandoning it cleanly;
//! - `journal`: the local copy every streamed byte goes to first, and its thread;
//! - `partial`: what a given-up upload left on the server, and whether it is ours;
//! - `segments`: resumable uploads in segments to a temporary name;
//! - `callers`: who wrote, so that a child's close does not end its parent's upload.
//!
//! Locks: a session's state (`WriteHandle::state`, async) is taken before any ranked lock
//! and never while one is held (see `vfs::lock`); the handle's own ranked locks (`target`,
//! `writers`, the journal's) are leaves. Several sessions are held at once only by a MOVE of
//! a directory above them, in the order of their handles (`Vfs::move_directory`).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use super::cache_dir::{CacheDir, Keep};
use super::error::{VfsError, VfsResult};
use super::fileio::{read_at, write_at};
use super::inode::Ino;
use super::lock::{Rank, Ranked, RankedGuard};
use super::recovery::Base;
use segments::{Follower, Local, Resume, Ring, SegmentPolicy};

mod callers;
mod journal;
mod partial;
pub(super) mod segments;
mod state;
mod stream;

use crate::dav::{
    ByteRange, DavClient, DavError, DavPath, ErrorKind, Preconditions, PutBody, ResponseMeta,
};
use callers::Writers;
pub use callers::{Caller, ProcessOf};
use journal::{JournalItem, JournalWriter, around_page_cache, journal_thread};
use state::{Segmented, State};
pub(crate) use stream::delete_version;
use stream::{Streaming, abort_stream, client_stall, start_stream};

/// How far a session's running upload got: the offset in the file up to which bytes were
/// handed to the HTTP library (`davdrive status` shows it beside the file's size). Every
/// body a session sends goes through [`Progress::counted`].
#[derive(Debug, Clone, Default)]
pub(super) struct Progress(Arc<std::sync::atomic::AtomicU64>);

impl Progress {
    pub(super) fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `stream`, the bytes of the file from `start` on, counted as they are taken.
    pub(super) fn counted<S>(
        &self,
        stream: S,
        start: u64,
    ) -> impl futures_util::Stream<Item = Result<Bytes, io::Error>> + Send + 'static
    where
        S: futures_util::Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    {
        use futures_util::StreamExt;
        let at = self.0.clone();
        at.store(start, std::sync::atomic::Ordering::Relaxed);
        let mut pos = start;
        stream.inspect(move |item| {
            if let Ok(b) = item {
                pos += b.len() as u64;
                at.store(pos, std::sync::atomic::Ordering::Relaxed);
            }
        })
    }
}

/// What a successful upload tells the caches.
#[derive(Debug, Clone)]
pub(super) struct Uploaded {
    pub size: u64,
    pub etag: Option<String>,
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
    /// How long an upload at close keeps trying while the server cannot be reached
    /// (`--upload-retry-time`), unless the mount is on its way out.
    patience: std::time::Duration,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// A streaming session switches to segments once its size passes this (see `segments`).
    switch_at: u64,
    state: Mutex<State>,
    /// Closes of this session that do not wait for their upload (`--async-close`), from
    /// their start to the end of that upload: the session ends only after them (see
    /// `Vfs::release`).
    behind_close: tokio::sync::watch::Sender<usize>,
    /// With `--async-close`, a streaming session holds one of the mount's slots for uploads
    /// that start before the close, until its upload ended (see `Vfs::stream_slot`). A leaf
    /// lock, never held across an await.
    stream_slot: std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
    /// `State::progress`, readable without waiting for the state.
    progress: Progress,
    /// When the session began.
    opened: std::time::Instant,
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
        if let Some(r) = &mut self.st.resume
            && let Some(t) = relocate(&r.temp)
        {
            r.temp = t;
        }
        let to = relocate(&self.w.path()).unwrap_or_else(|| self.w.path());
        self.now_at(to);
    }

    /// The file is at `to` now (renamed, or moved with its directory).
    pub(super) fn now_at(mut self, to: DavPath) {
        *self.w.target.lock() = to;
        if !self.st.is_local() {
            // What was written goes to the new name whole. A session with nothing written
            // has nothing to send: the MOVE took the server's content along (uploading the
            // untouched local copy would have emptied the file - found by the reference
            // model).
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

/// Stops a follower where it is; it never sent past `size` bytes (the file's size now).
async fn stopped(f: Follower, size: u64) -> Resume {
    let mut r = f.stop_after_segment().await;
    r.extent = r.extent.min(size);
    r
}

/// Whether an upload failed only because the server could not be reached (or was busy):
/// worth trying again for a while, and from recovery once it answers.
fn unreachable(e: &VfsError) -> bool {
    matches!(
        e.kind,
        ErrorKind::Unreachable | ErrorKind::TimedOut | ErrorKind::Busy
    )
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
        base: Base,
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
            cache.new_journal(&path, &base)
        } else {
            cache.new_spool(Some((&path, &base, true)))
        }
        .map_err(|e| io_err(&path, "cannot create a journal", &e))?;
        let progress = Progress::default();
        let stream = if stream {
            match start_stream(client, &path, &pre, &file, &progress) {
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
        let mut state = State::new(file, file_path, 0, pre);
        state.progress = progress;
        state.base = base;
        state.complete = true;
        state.dirty = true;
        if let Some(s) = stream {
            state.start_streaming(s);
        }
        Ok(Self::assemble(ino, path, state))
    }

    /// An existing file opened for writing without truncation: spooled, original fetched
    /// when first needed.
    pub(super) fn new_existing(
        cache: &CacheDir,
        ino: Ino,
        path: DavPath,
        size: u64,
        pre: Preconditions,
        base: Base,
    ) -> VfsResult<Self> {
        let (file_path, file) = cache
            .new_spool(Some((&path, &base, size == 0)))
            .map_err(|e| io_err(&path, "cannot create a spool file", &e))?;
        let mut state = State::new(file, file_path, size, pre);
        state.base = base;
        state.complete = size == 0;
        Ok(Self::assemble(ino, path, state))
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
        let mut state = State::new(file, data, size, Preconditions::default()).local();
        state.complete = true;
        state.dirty = truncate;
        Ok(Self::assemble(ino, path, state))
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
            patience: std::time::Duration::ZERO,
            stopping: Arc::default(),
            switch_at: u64::MAX,
            progress: state.progress.clone(),
            opened: std::time::Instant::now(),
            state: Mutex::new(state),
            behind_close: tokio::sync::watch::channel(0).0,
            stream_slot: std::sync::Mutex::new(None),
        }
    }

    /// Holds `slot` until [`WriteHandle::end_stream_slot`] (see `stream_slot`).
    pub(super) fn with_stream_slot(self, slot: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        if let Ok(mut s) = self.stream_slot.lock() {
            *s = slot;
        }
        self
    }

    /// The session's upload ended (or the session did): its slot is free.
    pub(super) fn end_stream_slot(&self) {
        let slot = self.stream_slot.lock().ok().and_then(|mut s| s.take());
        drop(slot);
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

    /// An upload that finds the server unreachable keeps trying for `patience`, until
    /// `stopping` is set.
    pub(super) fn with_patience(
        mut self,
        patience: std::time::Duration,
        stopping: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        self.patience = patience;
        self.stopping = stopping;
        self
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
    /// When the session began.
    pub(super) fn opened(&self) -> std::time::Instant {
        self.opened
    }

    /// How far the running (or last) upload got, in bytes of the file.
    pub(super) fn sent_now(&self) -> u64 {
        self.progress.get()
    }

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
        if let Some(s) = st.take_stream() {
            kept = s.journal.barrier().await;
            abort_stream(s).await;
        }
        if let Some(g) = st.take_segmented() {
            // Its temporary file goes at release.
            kept = kept.and(g.journal.barrier().await);
            st.resume = Some(stopped(g.follower, st.size).await);
        }
        if let Err(e) = kept {
            st.failed = Some(self.journal_lost(ErrorKind::NoSpace, &e));
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
        let held = self.hold_for_move().await;
        if !held.st.is_local() {
            let from = self.path();
            match client.move_to(&from, &to, false, overwrite).await {
                Ok(()) => {}
                // Nothing uploaded under the old name yet.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        held.now_at(to);
        Ok(())
    }

    /// Holds the session while a directory above its file is moved on the server (see
    /// [`Moving`]): a streaming upload is given up first, as for a rename of the file itself,
    /// so that no upload to the old path runs during the MOVE.
    pub(super) async fn hold_for_move(&self) -> Moving<'_> {
        super::lock::before_await();
        let mut st = self.state.lock().await;
        let from = self.path();
        let written = st.dirty || st.uploading();
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
        if let Some(seg) = st.take_segmented() {
            tracing::debug!(path = %self.path(), size = st.size, "segmented streaming stops; spooling");
            if let Err(e) = seg.journal.barrier().await {
                st.failed = Some(self.journal_lost(ErrorKind::Io, &e));
            }
            st.resume = Some(stopped(seg.follower, st.size).await);
        }
        if let Some(s) = st.take_stream() {
            tracing::debug!(path = %self.path(), size = st.size, "streaming stops; spooling");
            if let Err(e) = s.journal.barrier().await {
                st.failed = Some(self.journal_lost(ErrorKind::Io, &e));
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

    /// Waits until the journal holds every byte written so far (streaming only).
    async fn journal_barrier(&self, st: &mut State) -> VfsResult<()> {
        if let Some(j) = st.journal()
            && let Err(e) = j.barrier().await
        {
            let err = VfsError::new(
                ErrorKind::NoSpace,
                format!(
                    "{}: cannot keep the written data in the cache directory: {e}",
                    self.path()
                ),
            );
            if let Some(s) = st.take_stream() {
                abort_stream(s).await;
            }
            if let Some(g) = st.take_segmented() {
                st.resume = Some(stopped(g.follower, st.size).await);
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
        // A crash from here on leaves the temporary file noted for `davdrive recover`.
        CacheDir::note_temp(&st.file_path, &temp);
        let mut resume = Resume::new(temp.clone());
        if let Some(sent) = self.keep_first_segment(client, st, &path, &temp).await {
            resume.acked = sent;
            resume.extent = sent;
        } else if let Some(c) = self.stop_streaming(st).await {
            // A server that writes bodies in place kept the start of the given-up PUT under
            // the real name: it goes, so that no reader sees a half file there. The name is
            // then free, and the MOVE at the end creates the file.
            self.remove_partial(&c, &path, st).await;
        }
        if st.failed.is_some() {
            return;
        }
        tracing::debug!(path = %path, temp = %temp, from = resume.acked, "the file outgrew one segment; uploading it in segments");
        let follower = Follower::start(
            client.clone(),
            Local {
                path: st.file_path.clone(),
                ring,
                progress: st.progress.clone(),
            },
            resume,
            journal.watermark(),
            policy.size(),
        );
        st.start_segments(Segmented { journal, follower });
    }

    /// At the switch to segments, a new file's streamed first segment is kept instead of
    /// sent again: its PUT is ended (the server stores what it carried under the file's name)
    /// and a MOVE takes that to the temporary name, where the segments go on from its end.
    /// Before, the PUT was given up and its bytes sent again: 16 MiB twice, 1.3 s over a
    /// 100 Mbit/s link (docs/PERFORMANCE.md). For about one round trip, between the PUT's
    /// answer and the MOVE, the first segment stands under the file's name. An overwrite
    /// never does this: the old version must stay until the whole new one is there. Returns
    /// how many bytes the temporary file holds, or `None` when the stream goes on to be
    /// given up as before (whatever of it the server holds is then removed).
    async fn keep_first_segment(
        &self,
        client: &DavClient,
        st: &mut State,
        path: &DavPath,
        temp: &DavPath,
    ) -> Option<u64> {
        let healthy = st
            .stream()
            .is_some_and(|s| s.journal.failure().is_none() && !s.task.is_finished());
        // A new file: nothing under its name yet, or only the empty placeholder this mount
        // made at create (see `Vfs::create`), which the PUT replaces.
        let new_file = st.pre.if_none_match_any || (self.is_new_file() && st.original_size == 0);
        if !new_file || st.pre.lock_token.is_some() || !healthy {
            return None;
        }
        let s = st.take_stream()?;
        // Never let the server complete a file we could not journal.
        if let Err(e) = s.journal.barrier().await {
            abort_stream(s).await;
            st.failed = Some(self.journal_lost(ErrorKind::NoSpace, &e));
            return None;
        }
        let sent = st.size;
        match s.complete().await {
            Ok(Ok(_)) => {}
            outcome => {
                tracing::debug!(path = %path, "the first segment's PUT failed ({outcome:?}); sending it again");
                self.remove_partial(client, path, st).await;
                return None;
            }
        }
        match client.move_to(path, temp, false, false).await {
            Ok(()) => {
                tracing::debug!(path = %path, temp = %temp, sent, "the streamed first segment moved to the temporary name");
                // The name is free again: the MOVE at the end creates the file there.
                st.adopted = false;
                st.expect(Preconditions {
                    if_none_match_any: true,
                    ..Default::default()
                });
                Some(sent)
            }
            Err(e) => {
                tracing::debug!(path = %path, "cannot move the first segment aside ({e}); sending it again");
                self.remove_partial(client, path, st).await;
                None
            }
        }
    }

    /// A segmented session whose follower stopped (it gave up after its retries) goes on
    /// as a spooled one; the flush resumes the upload where it stopped.
    async fn check_follower(&self, st: &mut State) -> VfsResult<()> {
        if !st.segmented().is_some_and(|g| g.follower.stopped()) {
            return Ok(());
        }
        let Some(g) = st.take_segmented() else {
            return Ok(());
        };
        let barrier = g.journal.barrier().await;
        let (resume, r) = g.follower.complete(st.size).await;
        st.resume = Some(resume);
        if let Err(e) = barrier {
            let err = self.journal_lost(ErrorKind::NoSpace, &e);
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
        let Some(g) = st.segmented_mut() else {
            return;
        };
        let window = 2 * self.switch_at;
        let mut progress = g.follower.progress.clone();
        // A journal that failed never feeds the follower again: the next write reports the
        // failure instead of waiting (`stall`, a minute by default) for a segment that will
        // not come. Its watchers are woken when a write fails (see `journal_thread`).
        let mut grown = g.journal.file.written.subscribe();
        let journal = g.journal.file.clone();
        let wait = |p: segments::Progress| {
            !p.failing && st.size.saturating_sub(p.acked) > window && journal.error.lock().is_none()
        };
        if !wait(*progress.borrow()) {
            return;
        }
        let waited = tokio::time::timeout(self.stall, async {
            while wait(*progress.borrow_and_update()) {
                tokio::select! {
                    changed = progress.changed() => if changed.is_err() { break },
                    changed = grown.changed() => if changed.is_err() { break },
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
    /// The error of a session whose journal could not keep what was written.
    fn journal_lost(&self, kind: ErrorKind, e: &dyn std::fmt::Display) -> VfsError {
        VfsError::new(
            kind,
            format!("{}: cannot keep the written data: {e}", self.path()),
        )
    }

    /// After the file was deleted while open: the temporary file of its segmented upload
    /// (a hidden `.davdrive-part-*` beside it) goes now, not at the last close, so that the
    /// folder is empty for `rmdir` at once (found by the reference model).
    pub(super) async fn drop_partial_upload(&self, client: &DavClient) {
        super::lock::before_await();
        let mut st = self.state.lock().await;
        if !self.is_unlinked() {
            return;
        }
        if let Some(r) = st.resume.take() {
            segments::discard(client, &r).await;
        }
    }

    /// Before the file's server copy goes (deleted, or replaced by a rename) while this
    /// session has it open: fetches what the session has not fetched yet, so that its
    /// descriptors go on reading and writing the old content, as on POSIX. Before, a later
    /// write or read that needed it asked the server for a file that was gone (ENOENT), or
    /// for the one that replaced it (found by the reference model). Best effort: a failure
    /// is logged, and such a read or write then fails as before.
    pub(super) async fn keep_content(&self, client: &DavClient) {
        super::lock::before_await();
        let mut st = self.state.lock().await;
        if st.complete || st.is_local() || st.original_size == 0 {
            return;
        }
        // Not a whole large file just because it goes away while open (a 4 GiB disk image
        // open for writing and deleted from another shell): its descriptors then fail to
        // read what they did not fetch, as before.
        const KEEP_AT_MOST: u64 = 256 << 20;
        if st.original_size > KEEP_AT_MOST {
            tracing::info!(path = %self.path(), size = st.original_size, "a large file open for writing goes away; its unfetched content goes with it");
            return;
        }
        if let Err(e) = self.load_original(client, &mut st).await {
            tracing::debug!(path = %self.path(), "could not keep the content of a file going away while open: {e}");
        }
    }

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
        st.now_whole();
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
        if let Some(g) = st.segmented() {
            // Segmented: only the journal takes the data; the follower reads it from there.
            let p = *g.follower.progress.borrow();
            if g.follower.stopped()
                || (!p.failing && end.saturating_sub(p.acked) > 2 * self.switch_at)
                || g.journal.tx.capacity() == 0
                || g.journal.failure().is_some()
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
        if st.may_segment
            && end > self.switch_at / 4
            && self
                .segments
                .as_ref()
                .is_some_and(|p| p.wants_probe_ahead())
        {
            return None; // the general path starts the probe (on the runtime).
        }
        let s = st.stream()?;
        if s.tx.capacity() == 0 || s.journal.tx.capacity() == 0 || s.journal.failure().is_some() {
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
        if st.restream && !st.streaming() && offset == 0 && st.size == 0 && !st.is_local() {
            st.restream = false;
            match start_stream(client, &self.path(), &st.pre, &st.file, &st.progress) {
                Ok(s) => st.start_streaming(s),
                Err(e) => {
                    tracing::debug!(path = %self.path(), "cannot stream again ({e}); spooling")
                }
            }
        }
        if st.streaming()
            && st.may_segment
            && offset + data.len() as u64 > self.switch_at / 4
            && let Some(policy) = &self.segments
            && let Some(dir) = self.path().parent()
        {
            policy.probe_ahead(client, &dir);
        }
        if st.streaming()
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
        if st.is_segmented() && offset != st.size {
            tracing::debug!(path = %self.path(), offset, size = st.size, "a write out of sequence");
            self.to_spool(&mut st).await;
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
        }
        let sequential = st.streaming() && offset == st.size;
        if st.streaming() && !sequential {
            tracing::debug!(path = %self.path(), offset, size = st.size, "a write out of sequence");
            self.to_spool(&mut st).await;
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
        }
        if !st.streaming() && !st.complete {
            // Writing into an existing file: the bytes around must come from the server.
            let covers_all = offset == 0 && data.len() as u64 >= st.original_size;
            if covers_all {
                st.now_whole();
            } else {
                self.load_original(client, &mut st).await?;
            }
        }
        // A streamed write in order, or any write of a segmented session, goes through the
        // journal; anything else straight into the spool.
        let journal = if st.is_segmented() || sequential {
            st.journal()
        } else {
            None
        };
        let journaled = match journal {
            Some(j) => j.push(offset, data.clone()).await,
            None => write_at(&st.file, &data, offset),
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
        if st.is_segmented() {
            self.segment_backpressure(&mut st).await;
            return Ok(len);
        }
        let sent = match (st.stream(), sequential) {
            // A server that stops reading without closing would block the send forever.
            (Some(s), true) => matches!(
                tokio::time::timeout(self.stall, s.tx.send(Ok(data))).await,
                Ok(Ok(()))
            ),
            _ => true,
        };
        if !sent && let Some(s) = st.take_stream() {
            // The PUT ended early, or its server stopped reading. The journal must hold
            // everything before it becomes the spool; then find out why the PUT ended (a
            // stalled one is given up, never completed).
            let barrier = s.journal.barrier().await;
            let Streaming { tx, mut task, .. } = s;
            drop(tx);
            let ended = tokio::time::timeout(std::time::Duration::from_secs(5), &mut task).await;
            task.abort();
            if let Err(e) = barrier {
                let err = self.journal_lost(ErrorKind::NoSpace, &e);
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
        if !st.streaming() && !st.complete {
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
        if st.size == size && (st.uploading() || st.complete) {
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
        st.now_whole();
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
        let empty_stream = st.streaming() && st.size == 0 && st.failed.is_none();
        let mut r = self.flush_locked(client, &mut st).await;
        // The server cannot be reached (a VPN dropping for half a minute): the data is safe
        // here, so keep trying for a while before the close fails.
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(500);
        let mut retried = false;
        // Once per failure: a close after a failed fsync, or the release after a failed
        // close, does not wait again for data already kept.
        let kept_already = st.recovered.is_some() && !st.changed_since_recovery;
        while let Err(e) = &r
            && unreachable(e)
            && st.failed.is_none()
            && !kept_already
            && !self.is_unlinked()
            && !self.stopping.load(std::sync::atomic::Ordering::SeqCst)
            && started.elapsed() + pause <= self.patience
        {
            if !retried {
                retried = true;
                tracing::warn!(
                    "cannot upload {} ({e}); trying again for up to {} s",
                    self.path(),
                    self.patience.as_secs()
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(5));
            r = self.flush_locked(client, &mut st).await;
        }
        if r.is_ok() && retried {
            tracing::info!(
                "uploaded {} after {} s of retries",
                self.path(),
                started.elapsed().as_secs()
            );
        }
        if r.is_ok() {
            // Everything written is on the server; nobody could write meanwhile (the session
            // was held).
            *self.writers() = Writers::default();
        }
        if empty_stream && r.is_ok() {
            st.restream = st.size == 0 && !st.streaming() && st.failed.is_none();
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
        let copy = match cache.new_spool(None) {
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
        let (keep, reason) = self.kept_length(st, e);
        let target = self.path();
        let copied = std::fs::copy(&st.file_path, &copy)
            .and_then(|_| {
                let f = std::fs::OpenOptions::new().write(true).open(&copy)?;
                f.set_len(keep)
            })
            .and_then(|_| cache.recover(&copy, &self.keep_as(st, e, &target, &reason, keep)));
        match copied {
            Ok(kept) => {
                self.now_kept(st, kept, &reason);
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

    /// At the end of a failed session whose data could not be copied aside (a full disk: the
    /// copy needs as much room again), the local file itself goes to the recovery folder. A
    /// rename needs no room, and the recovery folder is where the user and `davdrive status`
    /// look; left in the journal folder, the file would only be found at the next mount.
    fn keep_local_file(&self, cache: &CacheDir, st: &mut State, e: &VfsError) {
        let _ = st.file.sync_data();
        let (keep, reason) = self.kept_length(st, e);
        if std::fs::metadata(&st.file_path).is_ok_and(|m| m.len() > keep) {
            let _ = st.file.set_len(keep);
        }
        let target = self.path();
        match cache.recover(&st.file_path, &self.keep_as(st, e, &target, &reason, keep)) {
            Ok(kept) => self.now_kept(st, kept, &reason),
            Err(io) => tracing::error!(
                "could not upload {} ({e}) nor move it to the recovery folder ({io}); it stays in {}",
                self.path(),
                st.file_path.display()
            ),
        }
    }

    /// The data is in the recovery folder at `kept`: the log says where, and why.
    fn now_kept(&self, st: &mut State, kept: PathBuf, reason: &str) {
        tracing::warn!(
            "could not upload {}: {reason}. The data is kept in {}",
            self.path(),
            kept.display()
        );
        st.recovered = Some(kept);
    }

    /// How much of the data can be kept, and why it is kept. Never more than the local file
    /// holds: bytes that never reached it (a full cache disk) must not come back as zeros in
    /// the kept copy; a shorter copy says so.
    fn kept_length(&self, st: &State, e: &VfsError) -> (u64, String) {
        let held = std::fs::metadata(&st.file_path).map_or(st.size, |m| m.len());
        let keep = st.size.min(held);
        let reason = if keep < st.size {
            format!(
                "{e}; only the first {keep} of {} bytes reached the cache directory",
                st.size
            )
        } else {
            e.to_string()
        };
        (keep, reason)
    }

    /// What the recovery folder's note says of `keep` bytes of this session's data.
    fn keep_as<'a>(
        &self,
        st: &State,
        e: &VfsError,
        target: &'a DavPath,
        reason: &'a str,
        keep: u64,
    ) -> Keep<'a> {
        Keep {
            target,
            reason,
            base: match Base::of(&st.pre) {
                Base::Unknown => st.base.clone(),
                b => b,
            },
            whole: st.complete && keep == st.size,
            // Only the server was missing: the mount uploads it once it is back.
            retry: unreachable(e) && st.complete && keep == st.size,
            // Removed at release when the server answers; else by the retry.
            temp: st.resume.as_ref().map(|r| r.temp.clone()),
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
        if st.is_local() {
            st.dirty = false;
            self.set_size_now(st);
            return Ok(Some(Uploaded {
                size: st.size,
                etag: None,
            }));
        }
        let mut result = None;
        // Everything written must be in the journal before the server may complete the file
        // from it (a segmented upload sends from the journal). A streaming body comes from
        // memory: its end need not wait (see below).
        if !st.streaming() {
            self.journal_barrier(st).await?;
        }
        if let Some(g) = st.take_segmented() {
            let (mut resume, r) = g.follower.complete(st.size).await;
            resume.verified = r.is_ok() && resume.acked == st.size && resume.extent <= st.size;
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
        if let Some(s) = st.take_stream() {
            let (journaled, outcome) = s.complete_journaled().await;
            if let Err(e) = journaled {
                // The journal lacks bytes (a full cache disk): the local copy is no longer
                // the file. Uploaded anyway, the file is complete on the server and the
                // local copy is only a part of it (fetched again before it is used);
                // otherwise nothing holds all of it, and the error says why.
                let Ok(Ok(meta)) = outcome else {
                    let err = self.journal_lost(ErrorKind::NoSpace, &e);
                    st.failed = Some(err.clone());
                    return Err(err);
                };
                tracing::warn!(path = %self.path(), "uploaded; the local copy is incomplete: {e}");
                st.complete = false;
                st.original_size = st.size;
                CacheDir::mark_whole(&st.file_path, false);
                result = Some(meta);
            } else {
                match outcome {
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
            None => {
                let temp = segments::temp_for(&self.path())?;
                CacheDir::note_temp(&st.file_path, &temp);
                Resume::new(temp)
            }
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
        if r.verified && r.acked == st.size {
            return segments::finish(client, r, &target, &st.pre).await;
        }
        if r.acked > 0 && segments::lost_start(client, &r.temp, r.acked).await {
            // Resuming into a temporary file that lost bytes would leave a hole of zeros.
            tracing::info!(temp = %r.temp, "the server lost the upload's start; sending all of it again");
            r.acked = 0;
        }
        for attempt in 0..2 {
            let local = Local::file(st.file_path.clone()).counted(&st.progress);
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
        let stream = st
            .progress
            .counted(segments::file_stream(Arc::new(file), 0, len), 0);
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

    /// After a release that succeeded: whether the local file holds exactly what the server
    /// now has (the whole file, nothing written since, nothing failed), so that it may serve
    /// reads of that version (see `vfs::copies`).
    pub(super) async fn holds_what_was_uploaded(&self) -> bool {
        super::lock::before_await();
        let st = self.state.lock().await;
        !st.is_local()
            && st.complete
            && !st.dirty
            && st.failed.is_none()
            && st.recovered.is_none()
            && !self.is_unlinked()
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
        if st.is_local() {
            return outcome;
        }
        if let Some(r) = st.resume.take() {
            // Not finished and never will be: the temporary upload goes (the data is in the
            // recovery folder when the upload failed).
            segments::discard(client, &r).await;
        }
        if let Err(e) = &outcome
            && st.recovered.is_none()
            && (st.size > 0 || st.dirty)
        {
            // No copy could be made aside: the only copy is kept as it is.
            self.keep_local_file(cache, &mut st, e);
            return outcome;
        }
        st.recycle = cache.finished(&st.file_path);
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
    use super::journal::{Direct, JournalFile};
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
            no_space: false.into(),
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
