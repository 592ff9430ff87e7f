//! Everything that changes the server: write sessions, create, truncate, mkdir, rmdir,
//! unlink, rename, and keeping the caches coherent with our own changes.
//!
//! After each successful change the directory cache is updated in place (the new entry with
//! its size and time, or the entry removed), so a listing right after a write shows it
//! without another PROPFIND.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::time::Instant;

use super::behind::{Change, QUEUE_UNIT, QUEUED_UNITS};
use super::error::{Cause, VfsError, VfsResult};
use super::inode::{FileKind, Ino, Listing, Meta};
use super::recovery::Base;
use super::write::{Caller, Uploaded, WriteHandle};
use super::{Attr, Handle, OpenMode, Opened, UploadPolicy, Vfs};
use crate::dav::probe::ChunkedPut;
use crate::dav::{DavPath, Depth, ErrorKind, Preconditions, PutBody};

/// A close of the session that does not wait for its upload, counted in the session from
/// the start of the close to the end of the upload (see `WriteHandle::uploads_behind_close`).
struct BehindClose(Arc<WriteHandle>);

impl BehindClose {
    fn new(w: &Arc<WriteHandle>) -> Self {
        w.close_behind_started();
        BehindClose(w.clone())
    }
}

impl Drop for BehindClose {
    fn drop(&mut self) {
        self.0.close_behind_ended();
    }
}

/// What `setattr` was asked to change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub size: Option<u64>,
    /// Mode, owner or times: accepted and not stored (WebDAV servers cannot store them).
    pub other: bool,
}

impl Vfs {
    fn check_writable(&self) -> VfsResult<()> {
        if self.cfg.read_only {
            return Err(VfsError::new(
                ErrorKind::ReadOnly,
                "this mount is read-only",
            ));
        }
        Ok(())
    }

    fn check_not_forbidden(&self, dir: Ino, what: &str) -> VfsResult<()> {
        let forbidden = self.forbidden.lock().contains(&dir);
        if forbidden {
            return Err(VfsError::new(
                ErrorKind::PermissionDenied,
                format!("{what}: the server refuses writes in this directory"),
            ));
        }
        Ok(())
    }

    pub(super) fn is_writable(&self, dir: Ino) -> bool {
        self.writable.lock().contains(&dir)
    }

    pub(super) fn note_writable(&self, dir: Ino) {
        self.writable.lock().insert(dir);
    }

    pub(super) fn note_forbidden(&self, dir: Ino, e: &VfsError) {
        if e.kind == ErrorKind::PermissionDenied {
            self.forbidden.lock().insert(dir);
        }
    }

    pub(super) fn path_of(&self, ino: Ino) -> VfsResult<DavPath> {
        self.table()
            .get(ino)
            .map(|n| n.path.clone())
            .ok_or_else(|| VfsError::not_found(format!("inode {ino}")))
    }

    /// The open write session of `ino`, if any.
    pub(super) fn writer_of(&self, ino: Ino) -> Option<Arc<WriteHandle>> {
        let fh = self.table().get(ino).and_then(|n| n.writer)?;
        match self.handle(fh).ok()? {
            Handle::Write(w) => Some(w),
            Handle::Read(_) | Handle::Reading(_) => None,
        }
    }

    /// Records `name` → a node at `path` with `meta` in `parent`'s listing (if cached).
    pub(super) fn insert_child(&self, parent: Ino, name: &str, path: &DavPath, meta: Meta) -> Ino {
        let mut t = self.table();
        let ino = t.ensure(parent, path);
        if let Some(n) = t.get_mut(ino) {
            n.meta = Some(meta);
            n.parent = parent;
        }
        if let Some(n) = t.get_mut(parent) {
            n.changes += 1;
        }
        if let Some(l) = t
            .get_mut(parent)
            .and_then(|n| n.listing.as_mut())
            .map(Arc::make_mut)
            && !l.by_name.contains_key(name)
        {
            l.by_name.insert(name.to_owned(), ino);
            l.order.push((name.to_owned(), ino));
        }
        ino
    }

    /// Removes `name` from `parent`'s cached listing.
    pub(super) fn remove_child(&self, parent: Ino, name: &str) {
        let mut t = self.table();
        if let Some(n) = t.get_mut(parent) {
            n.changes += 1;
        }
        if let Some(l) = t
            .get_mut(parent)
            .and_then(|n| n.listing.as_mut())
            .map(Arc::make_mut)
            && l.by_name.remove(name).is_some()
        {
            l.order.retain(|(n, _)| n != name);
        }
    }

    /// What protects an overwrite of the version we know against a lost update: its strong
    /// entity tag, else, on a server that gives no tags at all (nginx, SabreDAV's plain
    /// tree, Orthanc), the modification date its listing gave.
    ///
    /// Not for a weak tag: Apache gives one to a file changed within the last second, and
    /// its mod_dav compares `If-Unmodified-Since` on PUT with the time of the request, not
    /// the file's (every such overwrite would fail with 412). Only a time the server gave:
    /// one of our clock's would be refused by a server whose clock is behind.
    fn overwrite_preconditions(&self, meta: Option<&Meta>) -> Preconditions {
        let strong = meta
            .and_then(|m| m.etag.clone())
            .filter(|t| !t.starts_with("W/"));
        let since = match meta {
            Some(m) if m.etag.is_none() && m.server_mtime => Some(m.mtime),
            _ => None,
        };
        Preconditions {
            if_match: strong,
            if_unmodified_since: since,
            ..Default::default()
        }
    }

    /// What an overwrite of `ino` needs: its path, its parent, the preconditions of the
    /// upload and the version it replaces.
    fn overwrite_of(&self, ino: Ino) -> VfsResult<(DavPath, Ino, Preconditions, Base)> {
        let t = self.table();
        let n = t
            .get(ino)
            .ok_or_else(|| VfsError::not_found(format!("inode {ino}")))?;
        let base = n.meta.as_ref().map_or(Base::Unknown, |m| {
            Base::of_version(m.etag.as_ref(), m.mtime, m.size)
        });
        Ok((
            n.path.clone(),
            n.parent,
            self.overwrite_preconditions(n.meta.as_ref()),
            base,
        ))
    }

    fn file_meta(size: u64, etag: Option<String>) -> Meta {
        let now = SystemTime::now();
        Meta {
            kind: FileKind::File,
            size,
            mtime: now,
            created: now,
            etag,
            server_mtime: false,
            fetched: Instant::now(),
        }
    }

    /// Whether new files may be streamed (chunked) to this server. Decided once by a probe:
    /// a small chunked PUT next to the first file created, checked by PROPFIND, then deleted.
    /// Some nginx/PHP setups answer 201 to a chunked PUT and store 0 bytes.
    /// The probe's PUT is a write into `dir` like any other: when the server took it, `dir`
    /// (inode `parent`) is known writable, and the first file created there needs no empty
    /// placeholder (one round trip less, see `create`).
    async fn can_stream(&self, dir: &DavPath, parent: Option<Ino>) -> bool {
        match self.cfg.upload {
            UploadPolicy::Stream => return true,
            UploadPolicy::Spool => return false,
            UploadPolicy::Auto => {}
        }
        super::lock::before_await();
        let mut g = self.stream_ok.lock().await;
        if let Some(v) = g.0 {
            return v;
        }
        if g.1 >= 3 {
            return false;
        }
        g.1 += 1;
        let name = format!(
            ".davdrive-probe-{}-{}",
            std::process::id(),
            self.next_fh
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (verdict, left) =
            crate::dav::probe::chunked_put_leaving(&self.client, dir, &name).await;
        if let Some(probe) = left {
            // Deleted off the path of the file being created (one round trip less).
            let client = self.client.clone();
            let delete = async move {
                let _ = client.delete(&probe, false, &Default::default()).await;
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(delete)),
                Err(_) => delete.await,
            }
        }
        if let (ChunkedPut::Stored | ChunkedPut::Lost { .. }, Some(p)) = (&verdict, parent) {
            self.note_writable(p);
        }
        match verdict {
            ChunkedPut::Stored => {
                g.0 = Some(true);
                true
            }
            ChunkedPut::Lost { .. } => {
                tracing::info!(
                    "the server does not store chunked uploads correctly; spooling uploads"
                );
                g.0 = Some(false);
                false
            }
            // Refused: this folder takes no writes (the create's placeholder then fails
            // too), which says nothing of chunked uploads, so it is not counted as a try.
            ChunkedPut::Refused(_) => {
                g.1 -= 1;
                false
            }
            // Inconclusive (e.g. a drop box that ingests files at once): spool this time.
            ChunkedPut::Undecided(_) => false,
        }
    }

    /// Before a file is created in `dir`: makes `dir` (and the folders above it made here)
    /// again on the server when it dropped them. Whether files in `dir` need the empty
    /// placeholder first: `dir` was made here on a server that drops folders, so the
    /// placeholder keeps it alive until the file's content arrives (Orthanc removes empty
    /// folders of `uploads/` and never ingests an empty file).
    async fn make_again_if_vanished(&self, dir: Ino) -> VfsResult<bool> {
        let (made_here, chain) = {
            let t = self.table();
            let made_here = t.get(dir).is_some_and(|n| n.made_here);
            let mut chain = Vec::new();
            let mut at = dir;
            while let Some(n) = t.get(at).filter(|n| n.made_here && n.vanished) {
                chain.push((at, n.path.clone()));
                if n.parent == at {
                    break;
                }
                at = n.parent;
            }
            (made_here, chain)
        };
        for (ino, path) in chain.into_iter().rev() {
            match self.client.mkcol(&path).await {
                Ok(()) => tracing::info!("{path}: the server had removed this folder; made again"),
                // 405: it is there (made again by someone else).
                Err(e) if e.status() == Some(405) => {}
                Err(e) => return Err(VfsError::from(e)),
            }
            if let Some(n) = self.table().get_mut(ino) {
                n.vanished = false;
            }
        }
        Ok(made_here && self.folders_vanish.load(Ordering::Relaxed))
    }

    /// Creates and opens `name` in `parent`.
    pub async fn create(
        &self,
        parent: Ino,
        name: &str,
        mode: OpenMode,
    ) -> VfsResult<(Attr, Opened)> {
        self.check_writable()?;
        let dir = self.path_of(parent)?;
        let path = dir.join(name)?;
        if self.cfg.keep_os_litter_local && super::local::is_os_litter(name) {
            return self.create_local(parent, name, &path, mode);
        }
        self.check_not_forbidden(parent, &path.to_string())?;
        let mut pre = Preconditions {
            if_none_match_any: true,
            ..Default::default()
        };
        let mut meta = Self::file_meta(0, None);
        let mut base = Base::Absent;
        // In a folder still being made (a mkdir that returned, `async_close`), or under a
        // name a rename or unlink behind the call frees, nothing goes to the server before
        // that is done: the file is written locally and uploaded behind its close, in turn
        // (see `behind`). A folder not known writable is waited for.
        let mut later = self.changes_behind(&path);
        if later && (!self.is_writable(parent) || self.folders_vanish.load(Ordering::Relaxed)) {
            self.settle_changes(&path).await;
            later = false;
        }
        let keep_alive = self.make_again_if_vanished(parent).await?;
        let stream = !later && self.can_stream(&dir, Some(parent)).await;
        let (stream, slot) = self.stream_slot(stream);
        if !self.is_writable(parent) || keep_alive {
            // The first file in a directory not yet known to be writable is created empty at
            // once, so that a server refusing writes here (Orthanc outside uploads/, a
            // read-only share) fails the create itself with EACCES rather than a close()
            // that many programs never check. Later files in the directory skip this.
            let mut put = self
                .client
                .put(&path, PutBody::Bytes(Bytes::new()), &pre)
                .await;
            // The folder went meanwhile (a drop box removes empty folders): made again once.
            if put
                .as_ref()
                .is_err_and(|e| matches!(e.status(), Some(403 | 404 | 409)))
                && self.table().get(parent).is_some_and(|n| n.made_here)
            {
                if let Some(n) = self.table().get_mut(parent) {
                    n.vanished = true;
                }
                self.make_again_if_vanished(parent).await?;
                put = self
                    .client
                    .put(&path, PutBody::Bytes(Bytes::new()), &pre)
                    .await;
            }
            match put {
                Ok(m) => {
                    self.note_writable(parent);
                    pre = Preconditions {
                        if_match: m.etag.clone(),
                        ..Default::default()
                    };
                    base = m.etag.clone().map_or(Base::Empty, Base::Tag);
                    meta = Self::file_meta(0, m.etag);
                }
                Err(e) => {
                    let mut e = VfsError::from(e);
                    if e.cause == Some(Cause::PreconditionFailed) {
                        e = VfsError::new(ErrorKind::AlreadyExists, format!("{path} exists"));
                    }
                    self.note_forbidden(parent, &e);
                    return Err(e);
                }
            }
        }
        let ino = self.insert_child(parent, name, &path, meta.clone());
        let w = WriteHandle::new_empty(&self.client, &self.cache, ino, path, pre, base, stream)?
            .with_segments(self.segments.clone())
            .with_patience(self.cfg.upload_retry, self.stopping.clone())
            .with_process_of(self.cfg.process_of)
            .with_stream_slot(slot);
        w.mark_new_file();
        Ok(self.created(ino, &meta, w, mode))
    }

    /// Registers the session of a file just created; the kernel holds one reference.
    fn created(&self, ino: Ino, meta: &Meta, w: WriteHandle, mode: OpenMode) -> (Attr, Opened) {
        let fh = self.add_handle(Handle::Write(Arc::new(w)));
        if let Some(n) = self.table().get_mut(ino) {
            n.writer = Some(fh);
            n.lookups += 1;
        }
        (self.attr_of(ino, meta), Opened::new(fh, false, mode))
    }

    fn create_local(
        &self,
        parent: Ino,
        name: &str,
        path: &DavPath,
        mode: OpenMode,
    ) -> VfsResult<(Attr, Opened)> {
        let e = self.local.create(path).map_err(|e| {
            VfsError::new(
                ErrorKind::Io,
                format!("{path}: cannot create a local file: {e}"),
            )
        })?;
        let meta = Self::file_meta(0, None);
        let ino = self.insert_child(parent, name, path, meta.clone());
        let w = WriteHandle::new_local(ino, path.clone(), e.data, true)?;
        Ok(self.created(ino, &meta, w, mode))
    }

    /// Opens a local-only file, if `ino` is one.
    pub(super) fn open_local(&self, ino: Ino, mode: OpenMode) -> VfsResult<Option<Opened>> {
        let path = self.path_of(ino)?;
        let Some(e) = self.local.get(&path) else {
            return Ok(None);
        };
        if mode.write {
            self.check_writable()?;
        }
        let w = WriteHandle::new_local(ino, path, e.data, mode.truncate)?;
        let fh = self.add_handle(Handle::Write(Arc::new(w)));
        if mode.write
            && let Some(n) = self.table().get_mut(ino)
        {
            n.writer = Some(fh);
        }
        Ok(Some(Opened::new(fh, false, mode)))
    }

    pub(super) async fn open_for_write(&self, ino: Ino, mode: OpenMode) -> VfsResult<Opened> {
        self.check_writable()?;
        if let Some(w) = self.writer_of(ino) {
            // One session per file: every descriptor sees the same bytes.
            if mode.truncate {
                w.set_size(&self.client, 0).await?;
            }
            let fh = self.add_handle(Handle::Write(w));
            // The newest descriptor names the session from now on: the one that opened it
            // may be released first.
            if let Some(n) = self.table().get_mut(ino) {
                n.writer = Some(fh);
            }
            // Not direct, as a precaution: descriptors of a shared session may be page-cached
            // and mapped. (Kernels that allow direct I/O here, 6.6+, write back and drop
            // cached pages around each direct write anyway.)
            let mut o = Opened::new(fh, false, mode);
            o.direct = false;
            return Ok(o);
        }
        let attr = self.getattr(ino).await?;
        if attr.kind == FileKind::Directory {
            return Err(VfsError::new(
                ErrorKind::IsADirectory,
                "cannot write to a directory",
            ));
        }
        // `--lock`: the file is ours on the server until the session ends, and the version
        // this session changes is the one the server has now (nobody can change it while
        // we hold the lock; our view may be older than the lock).
        let token = {
            let (path, parent, _, _) = self.overwrite_of(ino)?;
            self.check_not_forbidden(parent, &path.to_string())?;
            self.lock_for_writing(ino, &path).await?
        };
        let attr = match &token {
            Some(_) => match self.reread_locked(ino).await {
                Ok(a) => a,
                Err(e) => {
                    self.unlock_after_writing(ino).await;
                    return Err(e);
                }
            },
            None => attr,
        };
        let (path, parent, mut pre, base) = self.overwrite_of(ino)?;
        self.check_not_forbidden(parent, &path.to_string())?;
        pre.lock_token = token;
        let w = if mode.truncate {
            let dir = path.parent().unwrap_or_default();
            let stream = self.can_stream(&dir, Some(parent)).await;
            let (stream, slot) = self.stream_slot(stream);
            WriteHandle::new_empty(&self.client, &self.cache, ino, path, pre, base, stream)?
                .with_segments(self.segments.clone())
                .with_patience(self.cfg.upload_retry, self.stopping.clone())
                .with_process_of(self.cfg.process_of)
                .with_stream_slot(slot)
        } else {
            WriteHandle::new_existing(&self.cache, ino, path, attr.size, pre, base)?
                .with_segments(self.segments.clone())
                .with_patience(self.cfg.upload_retry, self.stopping.clone())
                .with_process_of(self.cfg.process_of)
        };
        let fh = self.add_handle(Handle::Write(Arc::new(w)));
        if let Some(n) = self.table().get_mut(ino) {
            n.writer = Some(fh);
        }
        Ok(Opened::new(fh, false, mode))
    }

    /// Takes a write at once when no waiting is needed (see `WriteHandle::try_write_now`);
    /// `None` means the caller must use [`Vfs::write`].
    pub fn try_write_now(&self, fh: u64, offset: u64, data: &Bytes, by: Caller) -> Option<u32> {
        match self.handle(fh).ok()? {
            Handle::Write(w) => w.try_write_now(offset, data, by),
            Handle::Read(_) | Handle::Reading(_) => None,
        }
    }

    /// Writes `data` at `offset` for `by`; returns how many bytes were taken.
    pub async fn write(&self, fh: u64, offset: u64, data: Bytes, by: Caller) -> VfsResult<u32> {
        match self.handle(fh)? {
            Handle::Write(w) => w.write(&self.client, offset, data, by).await,
            Handle::Read(_) | Handle::Reading(_) => Err(VfsError::new(
                ErrorKind::PermissionDenied,
                "file not open for writing",
            )),
        }
    }

    fn apply_upload(&self, ino: Ino, up: &Uploaded) {
        if let Ok(path) = self.path_of(ino) {
            self.local.set_size(&path, up.size);
        }
        let mut t = self.table();
        if let Some(n) = t.get_mut(ino) {
            if n.gone {
                return;
            }
            // An upload changes the content, not when the file was made.
            let created = n.meta.as_ref().map(|m| m.created);
            let mut meta = Self::file_meta(up.size, up.etag.clone());
            if let Some(c) = created {
                meta.created = c.min(meta.created);
            }
            n.meta = Some(meta);
            n.cached_version = None;
        }
    }

    /// close() by `by`: as [`Vfs::flush`], except for a process that never wrote through
    /// the handle while another one did (a child closing an inherited descriptor at `exec`):
    /// its close returns at once and the upload goes on (see `WriteHandle::foreign_close`).
    /// With `async_close`, every close returns once the data is in the cache directory (see
    /// [`Vfs::close_async`]).
    pub async fn close(self: &Arc<Self>, fh: u64, by: Caller) -> VfsResult<()> {
        if let Ok(Handle::Write(w)) = self.handle(fh) {
            if w.foreign_close(by) {
                tracing::debug!(path = %w.path(), pid = by.pid, "a close by a process that did not write: the upload goes on");
                return Ok(());
            }
            if self.cfg.async_close {
                return self.close_async(w).await;
            }
        }
        self.flush(fh).await
    }

    /// close() that does not wait for the server: returns the error of an earlier failure of
    /// the session, else waits until the cache directory holds every byte written (a davdrive
    /// that stops before the upload finished leaves them to the next start's recovery
    /// folder), starts the upload and returns. At most [`ASYNC_UPLOADS`] run at once (the
    /// server never sees hundreds at once), after the folders they go into were made; a
    /// close beyond [`QUEUED_UPLOADS`] unfinished ones, or `QUEUED_BYTES` of them, waits
    /// for one to finish, so a copy of many files never runs far ahead of the server. An upload that
    /// fails ends in the recovery folder as at any close, logged and listed by
    /// `davdrive status`; a later close or fsync of the same open file tries again or
    /// returns the error.
    async fn close_async(self: &Arc<Self>, w: Arc<WriteHandle>) -> VfsResult<()> {
        // Counted from the start: the RELEASE that follows this close waits for it.
        let behind = BehindClose::new(&w);
        if !w.keep_locally().await? {
            return Ok(());
        }
        let tracked = self.track(&w, true);
        let units = w
            .size_now()
            .div_ceil(QUEUE_UNIT)
            .clamp(1, QUEUED_UNITS as u64);
        let (Ok(slot), Ok(bytes)) = (
            self.behind_close.clone().acquire_owned().await,
            self.behind_bytes
                .clone()
                .acquire_many_owned(u32::try_from(units).unwrap_or(1))
                .await,
        ) else {
            // The semaphores are never closed; if they were, this close would wait for its
            // upload.
            drop(behind);
            self.settle_changes(&w.path()).await;
            return self.flush_handle(&w).await;
        };
        let ino = w.ino();
        // Listings and stat show what was written from now on (the session may be released
        // before its upload ends); the upload's answer replaces this.
        if let Some(n) = self.table().get_mut(ino)
            && !n.gone
            && let Some(m) = &mut n.meta
        {
            m.size = w.size_now();
            m.mtime = SystemTime::now();
            m.fetched = Instant::now();
        }
        let path = w.path();
        let pending = self.pending(Some(&w));
        let this = self.clone();
        tokio::spawn(async move {
            let (_slot, _bytes, _behind) = (slot, bytes, behind);
            // Its turn (after the folder it goes into was made, and so on), then a slot.
            let running = this.upload_behind(&w, &pending, &path).await;
            tracked.started();
            let done = match running {
                Ok(_running) => this.flush_handle(&w).await,
                Err(e) => Err(e),
            };
            drop(pending);
            if let Err(e) = done {
                // Nobody else will hear of it: logged, and the desktop is told.
                this.behind_failed(&w.path(), "the upload", "close()", &e);
                // What the server holds is not what was noted above: ask it next time.
                this.invalidate(ino);
            }
        });
        Ok(())
    }

    /// fsync(), and close() by a writer: returns once the server holds the data.
    pub async fn flush(self: &Arc<Self>, fh: u64) -> VfsResult<()> {
        let Handle::Write(w) = self.handle(fh)? else {
            return Ok(());
        };
        let _pending = self.pending(None);
        self.settle_changes(&w.path()).await;
        self.flush_handle(&w).await
    }

    /// Uploads what `w` holds. Callers wait for what must be on the server first (see
    /// `behind`).
    async fn flush_handle(&self, w: &Arc<WriteHandle>) -> VfsResult<()> {
        let flushed = w.flush(&self.client, &self.cache).await;
        w.end_stream_slot();
        match flushed {
            Ok(Some(up)) => {
                self.apply_upload(w.ino(), &up);
                let local = self.local.get(&w.path()).is_some();
                let parent = self.table().get(w.ino()).map(|n| n.parent);
                if let (Some(p), false) = (parent, local) {
                    self.note_writable(p);
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                let parent = self.table().get(w.ino()).map(|n| n.parent);
                if let Some(p) = parent {
                    self.note_forbidden(p, &e);
                }
                Err(e)
            }
        }
    }

    /// A file about to be deleted (unlink, or replaced by a rename) while descriptors still
    /// read it is moved to a hidden name instead (a `.davdrive-part-*` beside it, which
    /// listings do not show); the readers follow it there, and the last of them deletes it at
    /// close, as NFS does. `false` when nobody reads it or the server cannot move it (the
    /// caller then deletes it, and the readers fail as before).
    async fn hide_from_readers(&self, ino: Ino, path: &DavPath) -> bool {
        let readers: Vec<Arc<super::read::ReadHandle>> = self
            .handles
            .lock()
            .values()
            .filter_map(|h| match h {
                Handle::Read(r) if r.ino() == ino => Some(r.clone()),
                _ => None,
            })
            .collect();
        if readers.is_empty() {
            return false;
        }
        let Ok(hidden) = super::write::segments::temp_for(path) else {
            return false;
        };
        if let Err(e) = self.client.move_to(path, &hidden, false, false).await {
            tracing::debug!(path = %path, "cannot keep a deleted file for its readers: {e}");
            super::write::segments::temp_done(&hidden);
            return false;
        }
        self.hidden.lock().insert(ino, hidden.clone());
        for r in readers {
            r.moved_to(&hidden);
        }
        tracing::debug!(path = %path, hidden = %hidden, "deleted while read: kept hidden until closed");
        // The last reader may have closed while the MOVE ran, before its release could
        // know about the hidden name.
        if let Some(gone) = self.hidden_unread(ino) {
            self.delete_hidden(&gone).await;
        }
        true
    }

    /// Deletes what stands at `path` after the upload of a new file failed (an empty
    /// placeholder, or the part the server kept), conditionally: only the version with our
    /// own entity tag `known` when we have one; else only an empty file (our placeholder: a
    /// file with content may be another client's), by its entity tag or, without one,
    /// `If-Unmodified-Since` its date. A file another client writes there meanwhile is
    /// refused the DELETE (412) and stays. Whether it is gone.
    async fn remove_failed_new(&self, path: &DavPath, known: Option<String>) -> bool {
        use super::write::delete_version;
        let listed = match self.client.propfind(path, Depth::Zero, false).await {
            Ok(ms) => ms.get(path).cloned(),
            Err(e) if e.kind() == ErrorKind::NotFound => return true,
            Err(_) => return false,
        };
        let Some(r) = listed.filter(|r| !r.is_collection) else {
            return false;
        };
        match (known, r.etag) {
            // Someone else's version stands there now.
            (Some(ours), Some(now))
                if ours.trim_start_matches("W/") != now.trim_start_matches("W/") =>
            {
                tracing::info!(
                    "{path}: left alone after the failed upload: another version stands there now"
                );
                false
            }
            (None, _) if r.content_length != Some(0) => {
                tracing::info!(
                    "{path}: left alone after the failed upload: it has content, which may be \
                     another client's"
                );
                false
            }
            (Some(tag), _) | (None, Some(tag)) => delete_version(&self.client, path, &tag).await,
            (None, None) => {
                let pre = Preconditions {
                    if_unmodified_since: r.last_modified,
                    ..Default::default()
                };
                r.last_modified.is_some() && self.client.delete(path, false, &pre).await.is_ok()
            }
        }
    }

    /// Deletes the hidden temporary files of a directory about to be removed when all are
    /// abandoned (a davdrive that died mid-upload; see `segments::abandoned`). `Err` when one
    /// is still in use, here or possibly by another client.
    async fn clear_abandoned(&self, hidden: &[(DavPath, Option<SystemTime>)]) -> Result<(), ()> {
        use super::write::segments::abandoned;
        if !hidden.iter().all(|(p, m)| abandoned(p, *m)) {
            return Err(());
        }
        for (p, _) in hidden {
            match self
                .client
                .delete(p, false, &Preconditions::default())
                .await
            {
                Ok(()) => tracing::info!("removed {p}, a temporary upload abandoned long ago"),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(_) => return Err(()),
            }
        }
        Ok(())
    }

    /// Deletes the hidden name of a deleted file nobody reads any more.
    async fn delete_hidden(&self, hidden: &DavPath) {
        if let Err(e) = self
            .client
            .delete(hidden, false, &Preconditions::default())
            .await
        {
            tracing::warn!("cannot delete {hidden}, a deleted file kept for its readers: {e}");
        }
        super::write::segments::temp_done(hidden);
    }

    /// The hidden name of `ino` (see `hide_from_readers`) once no descriptor reads it.
    fn hidden_unread(&self, ino: Ino) -> Option<DavPath> {
        let handles = self.handles.lock();
        let read = handles.values().any(|h| match h {
            Handle::Read(r) => r.ino() == ino,
            Handle::Write(w) | Handle::Reading(w) => w.ino() == ino,
        });
        drop(handles);
        if read {
            return None;
        }
        self.hidden.lock().remove(&ino)
    }

    /// The last close of a handle. The bookkeeping happens before this returns (so unmount
    /// can wait for the upload); the returned future does the upload.
    pub fn release(
        self: &Arc<Self>,
        fh: u64,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (h, other) = {
            let mut handles = self.handles.lock();
            let h = handles.remove(&fh);
            // Other descriptors share the session: this close only flushes, and the session
            // is found through one of them from now on.
            let other = match &h {
                Some(Handle::Write(w)) => handles
                    .iter()
                    .find(|(_, h)| matches!(h, Handle::Write(o) if Arc::ptr_eq(o, w)))
                    .map(|(other, _)| *other),
                _ => None,
            };
            // The last descriptor: the session's end is under way, and a read open finds it
            // there from the moment it is no longer among the handles (registered in the same
            // step: an open between the two found neither, and read the server's copy).
            if let (Some(Handle::Write(w)), None) = (&h, other) {
                self.copies.lock().ending(w.ino(), w.clone());
            }
            (h, other)
        };
        let unhide = match &h {
            Some(Handle::Read(r)) => self.hidden_unread(r.ino()),
            _ => None,
        };
        // A reader of a session (`Handle::Reading`) keeps it only to read it: the session
        // ends with its last writer, and the reader goes on reading its local copy.
        let w = match h {
            Some(Handle::Write(w)) => Some(w),
            _ => None,
        };
        let shared = other.is_some();
        if let (Some(w), Some(other)) = (&w, other)
            && let Some(n) = self.table().get_mut(w.ino())
            && n.writer == Some(fh)
        {
            n.writer = Some(other);
        }
        let pending = w.as_ref().map(|w| self.pending(Some(w)));
        let tracked = w.as_ref().filter(|_| !shared).map(|w| self.track(w, false));
        let this = self.clone();
        async move {
            let _tracked = tracked;
            if let Some(hidden) = unhide {
                // The last reader of a deleted file is gone: now it goes.
                this.delete_hidden(&hidden).await;
            }
            let Some(w) = w else {
                return;
            };
            let _pending = pending;
            // An entry of `settling` (`async_close`): its turn, after what touches the file.
            if let Some(id) = _pending.as_ref().and_then(|p| p.settling) {
                this.settle_before(id, &w.path()).await;
            }
            if shared {
                let _ = this.flush_handle(&w).await;
            } else {
                // Uploads that closes started go first (no new close can start: this was the
                // last descriptor): the session's end must see their outcome (a failed
                // attempt of its own racing a successful one could remove the file).
                w.uploads_behind_close().await;
                this.finish_session(fh, &w).await;
            }
        }
    }

    async fn finish_session(&self, fh: u64, w: &Arc<WriteHandle>) {
        let ino = w.ino();
        let gone = self.table().get(ino).is_none_or(|n| n.gone);
        let r = w.release(&self.client, &self.cache, gone).await;
        let mut failed_new = false;
        let mut conflict = false;
        let uploaded = r.is_ok();
        match r {
            Ok(Some(up)) => self.apply_upload(ino, &up),
            Ok(None) => {}
            Err(e) => {
                failed_new = true;
                // 412: someone else's file now stands there; it must not be touched.
                conflict = matches!(e.kind, ErrorKind::Stale | ErrorKind::AlreadyExists);
            }
        }
        if failed_new && !conflict && w.is_new_file() {
            // A new file whose data never arrived: remove the empty placeholder (the data is
            // in the recovery folder), so nobody takes it for the real file. Best effort.
            let path = w.path();
            let known = self
                .table()
                .get(ino)
                .and_then(|n| n.meta.as_ref())
                .and_then(|m| m.etag.clone());
            if self.local.get(&path).is_none() && self.remove_failed_new(&path, known).await {
                let parent = self.table().get(ino).map(|n| n.parent);
                if let (Some(p), Some(name)) = (parent, path.name()) {
                    self.remove_child(p, name);
                }
                self.table().mark_gone(ino);
            }
        }
        // Kept before the session stops being the node's writer: a read open in between
        // finds one or the other (see `Vfs::open`).
        if uploaded && !gone && w.holds_what_was_uploaded().await {
            let meta = self
                .table()
                .get(ino)
                .filter(|n| !n.gone)
                .and_then(|n| n.meta.clone());
            if let Some(meta) = meta {
                self.copies.lock().keep(ino, w.clone(), meta);
            }
        }
        self.copies.lock().ended(ino, w);
        {
            let mut t = self.table();
            if let Some(n) = t.get_mut(ino) {
                if n.writer.is_some_and(|f| f == fh || self.handle(f).is_err()) {
                    n.writer = None;
                }
                if failed_new && n.meta.as_ref().is_some_and(|m| m.etag.is_none()) {
                    // What the listing shows may not exist on the server: ask again next time.
                    n.meta = None;
                }
            }
        }
        if failed_new {
            self.invalidate(ino);
        }
        self.unlock_after_writing(ino).await;
        w.end_stream_slot();
        tracing::debug!(path = %w.path(), "write session closed");
    }

    /// Ends every session still open (at unmount): uploads or keeps their data.
    pub async fn release_all(self: &Arc<Self>) {
        let fhs: Vec<u64> = self.handles.lock().keys().copied().collect();
        for fh in fhs {
            self.release(fh).await;
        }
    }

    /// The mount is on its way out: from now on an upload that cannot reach the server
    /// keeps its data for the next mount instead of waiting (`--upload-retry-time`).
    pub fn stop_waiting_for_the_server(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Waits until no upload is in progress, saying what it waits for.
    pub async fn wait_for_uploads(&self) {
        let mut rx = self.uploads.subscribe();
        let busy = *rx.borrow();
        if busy > 0 {
            tracing::info!("waiting for {busy} upload(s) to finish before unmounting");
        }
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Truncation and metadata changes.
    pub async fn setattr(&self, ino: Ino, fh: Option<u64>, set: SetAttr) -> VfsResult<Attr> {
        let own = fh.and_then(|f| match self.handle(f).ok()? {
            Handle::Write(w) => Some(w),
            Handle::Read(_) | Handle::Reading(_) => None,
        });
        if let Some(size) = set.size {
            self.check_writable()?;
            if fh.is_none() {
                self.settle(ino).await;
            }
            match own.clone().or_else(|| self.writer_of(ino)) {
                Some(w) => w.set_size(&self.client, size).await?,
                None => self.truncate_closed(ino, size).await?,
            }
        }
        // chmod, chown, utimens: WebDAV servers cannot store them. Succeeding keeps cp -a,
        // rsync -a and file managers going; the values are not kept (docs/SEMANTICS.md).
        let _ = set.other;
        match (self.getattr(ino).await, own) {
            // A file deleted (or replaced by a rename) while open: its descriptor still
            // changes it, as on POSIX (found by the reference model: ftruncate failed with
            // ENOENT).
            (Err(e), Some(w)) if e.kind == ErrorKind::NotFound => Ok(self.session_attr(ino, &w)),
            (r, _) => r,
        }
    }

    /// What the file open for writing as `fh` shows now, from the session and the table
    /// (no request, also for a file deleted while open); `None` for a handle that does not
    /// write. For frontends that report a file's state after every write (WinFsp).
    pub fn written_attr(&self, fh: u64) -> Option<Attr> {
        let Ok(Handle::Write(w)) = self.handle(fh) else {
            return None;
        };
        let ino = w.ino();
        {
            let t = self.table();
            if let Some(m) = t.get(ino).filter(|n| !n.gone).and_then(|n| n.meta.as_ref()) {
                return Some(self.shown(&t, ino, m));
            }
        }
        Some(self.session_attr(ino, &w))
    }

    /// What an open session shows of its file when the file has no metadata of its own any
    /// more (deleted while open).
    fn session_attr(&self, ino: Ino, w: &WriteHandle) -> Attr {
        let now = SystemTime::now();
        let changed = w.modified_now().unwrap_or(now);
        let meta = Meta {
            kind: FileKind::File,
            size: w.size_now(),
            mtime: changed,
            created: changed,
            etag: None,
            server_mtime: false,
            fetched: Instant::now(),
        };
        self.attr_of(ino, &meta)
    }

    async fn truncate_closed(&self, ino: Ino, size: u64) -> VfsResult<()> {
        let attr = self.getattr(ino).await?;
        if attr.kind == FileKind::Directory {
            return Err(VfsError::new(
                ErrorKind::IsADirectory,
                "cannot truncate a directory",
            ));
        }
        if attr.size == size {
            return Ok(());
        }
        let (path, _, pre, base) = self.overwrite_of(ino)?;
        let w = WriteHandle::new_existing(&self.cache, ino, path, attr.size, pre, base)?
            .with_segments(self.segments.clone())
            .with_patience(self.cfg.upload_retry, self.stopping.clone())
            .with_process_of(self.cfg.process_of);
        w.set_size(&self.client, size).await?;
        if let Some(up) = w.release(&self.client, &self.cache, false).await? {
            self.apply_upload(ino, &up);
        }
        Ok(())
    }

    /// mkdir: MKCOL. The new directory is known to be empty: listing it costs nothing.
    /// With `async_close`, in a folder known writable whose fresh listing lacks the name, the
    /// MKCOL goes on after mkdir returned (see [`Vfs::mkdir_behind`]).
    pub async fn mkdir(self: &Arc<Self>, parent: Ino, name: &str) -> VfsResult<Attr> {
        self.check_writable()?;
        if parent == super::ROOT_INO && !self.cfg.server_trash && super::is_trash_name(name) {
            return Err(VfsError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "/{name}: file managers' trash folders are not made on the server \
                     (--trash server allows them)"
                ),
            ));
        }
        let dir = self.path_of(parent)?;
        let path = dir.join(name)?;
        self.check_not_forbidden(parent, &path.to_string())?;
        let behind = self.may_mkdir_behind(parent, name);
        if !behind {
            self.settle_path(&path).await;
            if let Err(e) = self.client.mkcol(&path).await {
                let e = VfsError::from(e);
                self.note_forbidden(parent, &e);
                return Err(e);
            }
        }
        let now = SystemTime::now();
        let meta = Meta {
            kind: FileKind::Directory,
            size: 0,
            mtime: now,
            created: now,
            etag: None,
            server_mtime: false,
            fetched: Instant::now(),
        };
        let ino = self.insert_child(parent, name, &path, meta.clone());
        self.note_writable(ino);
        self.note_writable(parent);
        if let Some(n) = self.table().get_mut(ino) {
            n.made_here = true;
            n.vanished = false;
            n.listing = Some(Arc::new(Listing {
                fetched: Instant::now(),
                order: Vec::new(),
                by_name: Default::default(),
                hidden: Vec::new(),
                // Its tag and date are not known yet.
                settled: false,
            }));
            n.lookups += 1;
        }
        if behind {
            self.mkdir_behind(parent, name, ino, path);
        }
        Ok(self.attr_of(ino, &meta))
    }

    async fn child(&self, parent: Ino, name: &str) -> VfsResult<(Ino, FileKind)> {
        let attr = self.child_attr(parent, name).await?;
        Ok((attr.ino, attr.kind))
    }

    /// unlink: DELETE of a file. With `async_close`, where it most likely succeeds, the
    /// DELETE goes on after unlink returned (see `behind`).
    pub async fn unlink(self: &Arc<Self>, parent: Ino, name: &str) -> VfsResult<()> {
        self.check_writable()?;
        let (ino, kind) = self.child(parent, name).await?;
        let path = self.path_of(ino)?;
        if self.is_plain_file(kind, &path) && self.may_change_behind(&[parent], ino, None) {
            let session = self.writer_of(ino);
            self.remove_child(parent, name);
            {
                let mut t = self.table();
                if let Some(n) = t.get_mut(ino) {
                    n.writer = None;
                }
                t.unlinked(ino);
            }
            self.change_behind(ino, path, Change::Delete(session), vec![parent]);
            return Ok(());
        }
        self.settle_path(&path).await;
        if kind == FileKind::Directory {
            return Err(VfsError::new(
                ErrorKind::IsADirectory,
                format!("{name}: is a directory"),
            ));
        }
        let path = self.path_of(ino)?;
        if self.local.remove(&path) {
            self.remove_child(parent, name);
            self.table().unlinked(ino);
            return Ok(());
        }
        let writer = self.writer_of(ino);
        if let Some(w) = &writer {
            w.keep_content(&self.client).await;
        }
        let delete = async {
            match self
                .client
                .delete(&path, false, &Preconditions::default())
                .await
            {
                // A file still being written may not exist on the server yet.
                Err(e) if writer.is_some() && e.kind() == ErrorKind::NotFound => Ok(()),
                r => r,
            }
        };
        match &writer {
            // Deleted while open: the data must not come back at close (but stays when the
            // server refuses the DELETE).
            Some(w) => {
                w.unlink(delete).await?;
                w.drop_partial_upload(&self.client).await;
            }
            None if self.hide_from_readers(ino, &path).await => {}
            None => delete.await?,
        }
        self.remove_child(parent, name);
        // A session opened while the DELETE ran is one of the deleted file too.
        if let Some(now) = self.writer_of(ino)
            && !writer.as_ref().is_some_and(|w| Arc::ptr_eq(&now, w))
        {
            now.mark_unlinked().await;
        }
        // The sessions stay with the descriptors that have them open. A file of this name
        // that appears later (created by someone else) is another file, with an inode and
        // sessions of its own.
        let mut t = self.table();
        if let Some(n) = t.get_mut(ino) {
            n.writer = None;
        }
        t.unlinked(ino);
        Ok(())
    }

    /// rmdir: refused with ENOTEMPTY when the listing is not empty, without a DELETE.
    pub async fn rmdir(&self, parent: Ino, name: &str) -> VfsResult<()> {
        self.check_writable()?;
        let (ino, kind) = self.child(parent, name).await?;
        self.settle_path(&self.path_of(ino)?).await;
        if kind != FileKind::Directory {
            return Err(VfsError::new(
                ErrorKind::NotADirectory,
                format!("{name}: not a directory"),
            ));
        }
        // DELETE of a collection is recursive: decide on a fresh listing.
        self.drop_listing(ino);
        let listing = self.listing(ino).await?;
        if !listing.order.is_empty() {
            return Err(VfsError::new(
                ErrorKind::NotEmpty,
                format!("{name}: directory not empty"),
            ));
        }
        self.clear_abandoned(&listing.hidden).await.map_err(|_| {
            VfsError::new(
                ErrorKind::NotEmpty,
                format!(
                    "{name}: directory not empty (it holds a hidden .davdrive-part-* file: an \
                     upload in progress, or a deleted file still open)"
                ),
            )
        })?;
        let path = self.path_of(ino)?;
        // A file created in it and still open may not be on the server yet (spooled until
        // close): the directory is not empty, or that file's upload would fail (found by the
        // reference model).
        let open_inside = self.handles.lock().values().any(
            |h| matches!(h, Handle::Write(w) if !w.is_unlinked() && w.path().starts_with(&path)),
        );
        if open_inside {
            return Err(VfsError::new(
                ErrorKind::NotEmpty,
                format!("{name}: directory not empty (a file in it is open for writing)"),
            ));
        }
        let made_here = self.table().get(ino).is_some_and(|n| n.made_here);
        match self
            .client
            .delete(&path, true, &Preconditions::default())
            .await
        {
            Ok(()) => {}
            // Made here, and gone from the server (dropped by a drop box, which may answer
            // 403 for a missing folder, as Orthanc does): nothing to delete there.
            Err(e) if made_here && matches!(e.status(), Some(403 | 404)) => {
                let gone = matches!(
                    self.client.propfind(&path, Depth::Zero, true).await,
                    Err(p) if p.kind() == ErrorKind::NotFound
                );
                if !gone {
                    return Err(e.into());
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.remove_child(parent, name);
        self.table().mark_gone(ino);
        Ok(())
    }

    /// MOVE of directory `from` to `to`, taking along the write sessions of files below it:
    /// each is held (its streaming upload given up) during the MOVE, in the order of their
    /// handles, and sends its data to the new path from then on. Without this, a file being
    /// written in a renamed directory was uploaded to its old path, which no longer exists.
    async fn move_directory(&self, from: &DavPath, to: &DavPath, overwrite: bool) -> VfsResult<()> {
        let mut sessions: Vec<(u64, Arc<WriteHandle>)> = self
            .handles
            .lock()
            .iter()
            .filter_map(|(fh, h)| match h {
                Handle::Write(w) if w.path().starts_with(from) => Some((*fh, w.clone())),
                _ => None,
            })
            .collect();
        sessions.sort_by_key(|(fh, _)| *fh);
        // One hold per session, whichever of its descriptors comes first (two holds of one
        // session would wait for each other forever; found by the reference model).
        let mut unique: Vec<Arc<WriteHandle>> = Vec::with_capacity(sessions.len());
        for (_, w) in sessions {
            if !unique.iter().any(|u| Arc::ptr_eq(u, &w)) {
                unique.push(w);
            }
        }
        let mut held = Vec::with_capacity(unique.len());
        for w in &unique {
            held.push(w.hold_for_move().await);
        }
        self.client.move_to(from, to, true, overwrite).await?;
        let relocate = |p: &DavPath| {
            let tail = p.segments().get(from.segments().len()..)?;
            let mut segs = to.segments().to_vec();
            segs.extend(tail.iter().cloned());
            DavPath::from_segments(segs).ok()
        };
        for m in held {
            m.moved(relocate);
        }
        Ok(())
    }

    /// A rename of a file whose MOVE goes on behind the call (`async_close`), if it may (see
    /// `Vfs::may_change_behind`): the mount's view changes now, as after the MOVE. Whether
    /// it was done so.
    async fn rename_behind(
        self: &Arc<Self>,
        (parent, name, ino, kind, from): (Ino, &str, Ino, FileKind, &DavPath),
        (new_parent, new_name, to): (Ino, &str, &DavPath),
        noreplace: bool,
    ) -> VfsResult<bool> {
        if !self.cfg.async_close
            || from == to
            || to.starts_with(from)
            || !self.is_plain_file(kind, from)
        {
            return Ok(false);
        }
        let existing = match self.child(new_parent, new_name).await {
            Ok(x) => Some(x),
            Err(e) if e.kind == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let replaced = match existing {
            Some(_) if noreplace => {
                return Err(VfsError::new(
                    ErrorKind::AlreadyExists,
                    format!("{to} exists"),
                ));
            }
            Some((dst, FileKind::File)) if self.local.get(to).is_none() => Some(dst),
            Some(_) => return Ok(false),
            None => None,
        };
        if !self.may_change_behind(&[parent, new_parent], ino, replaced) {
            return Ok(false);
        }
        let session = self.writer_of(ino);
        let replaced = replaced.and_then(|d| self.writer_of(d));
        self.renamed_here(ino, (parent, name), (new_parent, new_name, to));
        let change = Change::Move {
            to: to.clone(),
            overwrite: !noreplace,
            session,
            replaced,
        };
        self.change_behind(ino, from.clone(), change, vec![parent, new_parent]);
        Ok(true)
    }

    /// rename: MOVE with POSIX overwrite semantics. `noreplace` keeps an existing target.
    /// With `async_close`, a file's MOVE goes on after rename returned where it most likely
    /// succeeds (see `rename_behind`).
    pub async fn rename(
        self: &Arc<Self>,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        noreplace: bool,
    ) -> VfsResult<()> {
        self.check_writable()?;
        if new_parent == super::ROOT_INO && !self.cfg.server_trash && super::is_trash_name(new_name)
        {
            return Err(VfsError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "/{new_name}: the name of a file manager's trash (--trash server allows it)"
                ),
            ));
        }
        let (ino, kind) = self.child(parent, name).await?;
        let new_dir = self.path_of(new_parent)?;
        let to = new_dir.join(new_name)?;
        let from = self.path_of(ino)?;
        if self
            .rename_behind(
                (parent, name, ino, kind, &from),
                (new_parent, new_name, &to),
                noreplace,
            )
            .await?
        {
            return Ok(());
        }
        // Uploads behind closes of what is moved, and of what it replaces, end first; so do
        // folders being made above either name.
        self.settle_path(&from).await;
        self.settle_path(&to).await;
        if from == to {
            return Ok(());
        }
        if to.starts_with(&from) {
            return Err(VfsError::new(
                ErrorKind::InvalidName,
                "cannot move a directory into itself",
            ));
        }
        let existing = match self.child(new_parent, new_name).await {
            Ok(x) => Some(x),
            Err(e) if e.kind == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some((dst, dkind)) = existing {
            if noreplace {
                return Err(VfsError::new(
                    ErrorKind::AlreadyExists,
                    format!("{to} exists"),
                ));
            }
            let dst_path = self.path_of(dst)?;
            self.settle_path(&dst_path).await;
            if let Some(w) = self.writer_of(dst) {
                w.keep_content(&self.client).await;
            } else if dkind == FileKind::File
                && kind == FileKind::File
                && self.hide_from_readers(dst, &dst_path).await
            {
                // Its readers read on from its hidden name (an editor's save over a file
                // another program has open).
                self.table().unlinked(dst);
            }
            match (kind, dkind) {
                (FileKind::Directory, FileKind::File) => {
                    return Err(VfsError::new(
                        ErrorKind::NotADirectory,
                        format!("{to} is a file"),
                    ));
                }
                (FileKind::File, FileKind::Directory) => {
                    return Err(VfsError::new(
                        ErrorKind::IsADirectory,
                        format!("{to} is a directory"),
                    ));
                }
                (FileKind::Directory, FileKind::Directory) => {
                    self.drop_listing(dst);
                    let l = self.listing(dst).await?;
                    if !l.order.is_empty() || self.clear_abandoned(&l.hidden).await.is_err() {
                        return Err(VfsError::new(
                            ErrorKind::NotEmpty,
                            format!("{to}: directory not empty"),
                        ));
                    }
                }
                (FileKind::File, FileKind::File) => {}
            }
        }
        let collection = kind == FileKind::Directory;
        if self.local.get(&from).is_some() {
            // Local-only files move among local names; anything else would need an upload,
            // which `mv` does by copying when told EXDEV.
            if !(self.cfg.keep_os_litter_local && super::local::is_os_litter(new_name)) {
                return Err(VfsError::new(
                    ErrorKind::CrossDevice,
                    format!("{from} is local-only; copy it to upload it"),
                ));
            }
            self.local.rename(&from, &to);
        } else {
            match self.writer_of(ino) {
                // An open file: renamed by its session, so no upload of it runs meanwhile.
                Some(w) => w.rename(&self.client, to.clone(), !noreplace).await?,
                None if collection => self.move_directory(&from, &to, !noreplace).await?,
                None => {
                    self.client
                        .move_to(&from, &to, collection, !noreplace)
                        .await?
                }
            }
        }
        if let Some((dst, _)) = existing
            && let Some(w) = self.writer_of(dst)
        {
            w.mark_unlinked().await;
        }
        self.renamed_here(ino, (parent, name), (new_parent, new_name, &to));
        Ok(())
    }

    /// The mount's view of a rename of `ino` from `name` in `parent` to `to`: the listings,
    /// the inode's path, and the descriptors reading it.
    fn renamed_here(
        &self,
        ino: Ino,
        (parent, name): (Ino, &str),
        (new_parent, new_name, to): (Ino, &str, &DavPath),
    ) {
        let meta = self.table().get(ino).and_then(|n| n.meta.clone());
        self.remove_child(parent, name);
        self.remove_child(new_parent, new_name);
        self.table().rename(ino, new_parent, to);
        self.readers_follow_renames();
        if let Some(m) = meta {
            self.insert_child(new_parent, new_name, to, m);
        }
    }
}
