//! What the server does after the call that asked for it returned (`--async-close`).
//!
//! With `async_close`, a close returns once the data is in the cache directory and the upload
//! goes on behind it; so do the MKCOL of a mkdir, and the MOVE or DELETE of a rename or
//! unlink of a file, where the mount can tell in advance that they will most likely succeed
//! (see [`Vfs::may_change_behind`]). The mount's own view (inodes, listings) changes at
//! once; the server follows in order.
//!
//! Each such piece of work is an entry of `Vfs::settling` with an id that grows and the paths
//! it touches. The one rule: **work waits for every earlier entry that touches one of its
//! paths** (the same path, one above it or one below it) before it sends anything. So a
//! file's upload goes after the MKCOL of its folder, a rename's MOVE after the upload of the
//! file it moves and of the one it replaces, and a file created under a name a pending
//! rename or unlink frees goes after that MOVE or DELETE. Entries wait only for smaller ids,
//! so they never wait for each other in a circle.
//!
//! Calls that need the server's state at once wait for the entries that concern them and
//! are there when they start: opening a file (its own entries), a namespace change made the
//! ordinary way (whatever touches its paths), a listing (changes in the folder and folders
//! above it being made), fsync and the end of a session (changes at the file's path).
//!
//! A failure cannot be returned to the program any more: it is logged, told to the desktop
//! (`Vfs::notices`) and the listings concerned are asked for again; data that could not be
//! uploaded goes to the recovery folder as for any failed upload.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::error::{VfsError, VfsResult};
use super::inode::{FileKind, Ino};
use super::write::WriteHandle;
use super::{Handle, Vfs};
use crate::dav::{DavPath, ErrorKind, Preconditions};

/// Uploads at most running behind closes that returned (`async_close`).
pub(super) const ASYNC_UPLOADS: usize = 8;
/// Closes at most whose uploads have not finished (`async_close`): one more waits for the
/// first of them to end, so a copy of many files never runs far ahead of the server.
pub(super) const QUEUED_UPLOADS: usize = 256;
/// The bytes of those uploads, at most (a file counts at least one unit).
const QUEUED_BYTES: u64 = 256 << 20;
pub(super) const QUEUE_UNIT: u64 = 64 << 10;
pub(super) const QUEUED_UNITS: usize = (QUEUED_BYTES / QUEUE_UNIT) as usize;

/// What an entry of `Vfs::settling` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Work {
    /// An upload behind a close.
    Upload,
    /// A folder being made (MKCOL behind mkdir).
    Folder,
    /// A file renamed (MOVE) or deleted (DELETE) behind the call.
    Change,
}

/// Something the server is still to do after the call that asked for it returned.
#[derive(Debug, Clone)]
pub(super) struct Behind {
    pub(super) ino: Ino,
    pub(super) path: DavPath,
    /// Where a rename takes the file.
    pub(super) to: Option<DavPath>,
    pub(super) work: Work,
    /// When the call returned (for `davdrive status`).
    pub(super) since: std::time::Instant,
}

impl Behind {
    fn paths(&self) -> impl Iterator<Item = &DavPath> {
        std::iter::once(&self.path).chain(self.to.as_ref())
    }

    /// Whether it concerns `p`: one of its paths is `p`, above it or below it.
    pub(super) fn touches(&self, p: &DavPath) -> bool {
        self.paths().any(|a| a.starts_with(p) || p.starts_with(a))
    }

    /// Whether a listing of folder `dir` must wait for it: `dir` or a folder above it is
    /// being made, or a name in `dir` changes.
    fn touches_listing(&self, dir: &DavPath) -> bool {
        match self.work {
            Work::Upload => false,
            Work::Folder => dir.starts_with(&self.path) || self.path.is_child_of(dir),
            Work::Change => self.paths().any(|a| a.is_child_of(dir)),
        }
    }
}

/// Work counted in `Vfs::uploads` (and `settling`) until dropped, also when its task ends in
/// a panic.
pub(super) struct Pending {
    vfs: Arc<Vfs>,
    pub(super) settling: Option<u64>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(id) = self.settling {
            self.vfs.settling.send_modify(|m| {
                m.remove(&id);
            });
        }
        self.vfs.uploads.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A rename or unlink that goes on behind the call.
pub(super) enum Change {
    /// DELETE of the file; its write session, if one was open.
    Delete(Option<Arc<WriteHandle>>),
    /// MOVE to `to`; the write session of the file moved and of the one it replaces, if open.
    Move {
        to: DavPath,
        overwrite: bool,
        session: Option<Arc<WriteHandle>>,
        replaced: Option<Arc<WriteHandle>>,
    },
}

impl Vfs {
    /// Counts an upload (for unmount) until the returned guard is dropped; with
    /// `async_close`, also in `settling` (for `session`).
    pub(super) fn pending(self: &Arc<Self>, session: Option<&WriteHandle>) -> Pending {
        let behind = session.filter(|_| self.cfg.async_close).map(|w| Behind {
            ino: w.ino(),
            path: w.path(),
            to: None,
            work: Work::Upload,
            since: std::time::Instant::now(),
        });
        self.pending_behind(behind)
    }

    /// As [`Vfs::pending`] for what `behind` describes, if given, also counted in `settling`
    /// (with an id greater than every earlier one).
    fn pending_behind(self: &Arc<Self>, behind: Option<Behind>) -> Pending {
        let settling = match behind {
            None => {
                self.uploads.send_modify(|n| *n += 1);
                None
            }
            Some(b) => {
                let id = self.next_settling.fetch_add(1, Ordering::Relaxed);
                // Counted and listed together: an unmount sees both or neither.
                self.uploads.send_modify(|n| *n += 1);
                self.settling.send_modify(|m| {
                    m.insert(id, b);
                });
                Some(id)
            }
        };
        Pending {
            vfs: self.clone(),
            settling,
        }
    }

    /// Files whose upload goes on behind a close (`async_close`).
    pub(super) fn uploading(&self) -> HashSet<Ino> {
        if !self.cfg.async_close {
            return HashSet::new();
        }
        self.settling
            .borrow()
            .values()
            .filter(|b| b.work == Work::Upload)
            .map(|b| b.ino)
            .collect()
    }

    /// Whether an upload or rename of `ino` goes on behind a call (`async_close`).
    pub(super) fn has_work_behind(&self, ino: Ino) -> bool {
        self.cfg.async_close && self.settling.borrow().values().any(|b| b.ino == ino)
    }

    /// Whether `ino`'s upload goes on behind a close (`async_close`). Called with the table
    /// held (no code holds `settling` while taking the table).
    pub(super) fn is_uploading(&self, ino: Ino) -> bool {
        self.cfg.async_close
            && self
                .settling
                .borrow()
                .values()
                .any(|b| b.ino == ino && b.work == Work::Upload)
    }

    /// Waits until no entry that `which` selects (by id and what) is left - only those there
    /// when called, so a stream of new ones cannot hold the caller up (`async_close`).
    pub(super) async fn settle_where(&self, which: impl Fn(u64, &Behind) -> bool) {
        if !self.cfg.async_close {
            return;
        }
        let ids: HashSet<u64> = self
            .settling
            .borrow()
            .iter()
            .filter(|(id, b)| which(**id, b))
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let mut rx = self.settling.subscribe();
        let _ = rx.wait_for(|m| !m.keys().any(|id| ids.contains(id))).await;
    }

    /// Waits until nothing is left to do for `ino` (its upload, its rename): opening the file
    /// then sees what was written, where it was moved, and a write starts from the uploaded
    /// version.
    pub(super) async fn settle(&self, ino: Ino) {
        self.settle_where(|_, b| b.ino == ino).await;
    }

    /// Waits for everything that touches `path` (at it, above or below it), before a
    /// namespace change made the ordinary way there.
    pub(super) async fn settle_path(&self, path: &DavPath) {
        self.settle_where(|_, b| b.touches(path)).await;
    }

    /// Waits for the folders being made and the names changing that touch `path`: before a
    /// request there that is not itself an entry (fsync, the end of a session, a
    /// revalidation).
    pub(super) async fn settle_changes(&self, path: &DavPath) {
        self.settle_where(|_, b| b.work != Work::Upload && b.touches(path))
            .await;
    }

    /// Waits for what must be on the server before folder `dir` is listed: the folders
    /// above it being made, and changes of names in it.
    pub(super) async fn settle_listing(&self, dir: &DavPath) {
        self.settle_where(|_, b| b.touches_listing(dir)).await;
    }

    /// Waits for the entries before entry `id` that touch `path`: an entry's turn.
    pub(super) async fn settle_before(&self, id: u64, path: &DavPath) {
        self.settle_where(|other, b| other < id && b.touches(path))
            .await;
    }

    /// Whether a folder being made or a name changing touches `path` (`async_close`): a file
    /// created there sends nothing before them.
    pub(super) fn changes_behind(&self, path: &DavPath) -> bool {
        self.cfg.async_close
            && self
                .settling
                .borrow()
                .values()
                .any(|b| b.work != Work::Upload && b.touches(path))
    }

    /// The upload of `w` behind its close, counted by `pending` (an entry): after its turn
    /// (the entries before it that touch its path), at most [`ASYNC_UPLOADS`] at once.
    pub(super) async fn upload_behind(
        self: &Arc<Self>,
        w: &Arc<WriteHandle>,
        pending: &Pending,
        path: &DavPath,
    ) -> VfsResult<tokio::sync::OwnedSemaphorePermit> {
        if let Some(id) = pending.settling {
            self.settle_before(id, path).await;
        }
        self.uploading_now
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| VfsError::new(ErrorKind::Io, format!("{}: stopping", w.path())))
    }

    /// Whether a session created now streams (`stream`, what the server allows), and the
    /// slot it holds while it does: with `async_close`, at most [`ASYNC_UPLOADS`] uploads
    /// start before their close (a copy of many files would otherwise open one PUT per file
    /// at once, since closes no longer wait); a file created beyond them is spooled and
    /// uploaded behind its close, in turn.
    pub(super) fn stream_slot(
        &self,
        stream: bool,
    ) -> (bool, Option<tokio::sync::OwnedSemaphorePermit>) {
        if !stream || !self.cfg.async_close {
            return (stream, None);
        }
        match self.streams_now.clone().try_acquire_owned() {
            Ok(slot) => (true, Some(slot)),
            Err(_) => (false, None),
        }
    }

    /// Whether a name in `parent` (and `new_parent`) may change behind the call
    /// (`async_close`): the folders are known writable (a write or mkdir there succeeded),
    /// the server does not drop folders (a drop box, where a change waits for its answer),
    /// and no descriptor reads the file `ino` or the file `replaced` it replaces (readers are
    /// moved to a hidden name instead, see `hide_from_readers`, which needs the server's
    /// answer). Anything else waits for the server, so a refusal is the call's error.
    pub(super) fn may_change_behind(
        &self,
        parents: &[Ino],
        ino: Ino,
        replaced: Option<Ino>,
    ) -> bool {
        if !self.cfg.async_close
            || self.folders_vanish.load(Ordering::Relaxed)
            || !parents.iter().all(|p| self.is_writable(*p))
        {
            return false;
        }
        // (A descriptor reading a session's bytes, `Handle::Reading`, reads them wherever the
        // file goes.)
        let read = self.handles.lock().values().any(|h| match h {
            Handle::Read(r) => r.ino() == ino || replaced.is_some_and(|d| r.ino() == d),
            Handle::Write(_) | Handle::Reading(_) => false,
        });
        !read
    }

    /// Whether mkdir of `name` in `parent` may return before the MKCOL (`async_close`): the
    /// parent is known writable, its listing is fresh and lacks the name (the kernel looked
    /// it up just before), and the server does not drop folders (a drop box: files there need
    /// the folder at once). Anything else waits for the server's answer, so a refusal is
    /// mkdir's error.
    pub(super) fn may_mkdir_behind(&self, parent: Ino, name: &str) -> bool {
        if !self.cfg.async_close
            || !self.is_writable(parent)
            || self.folders_vanish.load(Ordering::Relaxed)
        {
            return false;
        }
        let t = self.table();
        t.get(parent).is_some_and(|n| {
            !n.vanished
                && n.listing
                    .as_ref()
                    .is_some_and(|l| self.fresh(l.fetched) && !l.by_name.contains_key(name))
        })
    }

    /// The MKCOL of folder `ino` (`path`) after mkdir returned. A refusal is logged and told
    /// to the desktop; the folder leaves the listing, and what was written into it fails its
    /// upload and is kept in the recovery folder.
    pub(super) fn mkdir_behind(self: &Arc<Self>, parent: Ino, name: &str, ino: Ino, path: DavPath) {
        let pending = self.pending_behind(Some(Behind {
            ino,
            path: path.clone(),
            to: None,
            work: Work::Folder,
            since: std::time::Instant::now(),
        }));
        let this = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            if let Some(id) = pending.settling {
                this.settle_before(id, &path).await;
            }
            let Err(e) = this.client.mkcol(&path).await else {
                tracing::debug!(path = %path, "folder made (after mkdir returned)");
                return;
            };
            let e = VfsError::from(e);
            this.behind_failed(&path, "making the folder", "mkdir", &e);
            this.note_forbidden(parent, &e);
            this.writable.lock().remove(&ino);
            this.remove_child(parent, &name);
            this.table().mark_gone(ino);
            drop(pending);
        });
    }

    /// The MOVE or DELETE of file `ino` (at `from`) after the rename or unlink returned; the
    /// caller changed the mount's view already. `parents` are the folders whose listings are
    /// asked for again if it fails.
    pub(super) fn change_behind(
        self: &Arc<Self>,
        ino: Ino,
        from: DavPath,
        change: Change,
        parents: Vec<Ino>,
    ) {
        let to = match &change {
            Change::Move { to, .. } => Some(to.clone()),
            Change::Delete(_) => None,
        };
        let pending = self.pending_behind(Some(Behind {
            ino,
            path: from.clone(),
            to: to.clone(),
            work: Work::Change,
            since: std::time::Instant::now(),
        }));
        let this = self.clone();
        tokio::spawn(async move {
            if let Some(id) = pending.settling {
                this.settle_before(id, &from).await;
                if let Some(to) = &to {
                    this.settle_before(id, to).await;
                }
            }
            let (done, what, call) = match change {
                Change::Delete(session) => (
                    this.delete_behind(&from, session).await,
                    "deleting it",
                    "unlink",
                ),
                Change::Move {
                    to,
                    overwrite,
                    session,
                    replaced,
                } => (
                    this.move_behind(&from, &to, overwrite, session, replaced)
                        .await,
                    "renaming it",
                    "rename",
                ),
            };
            match done {
                Ok(()) => tracing::debug!(path = %from, "{what}: done (after {call} returned)"),
                Err(e) => {
                    this.behind_failed(&from, what, call, &e);
                    for p in parents {
                        this.drop_listing(p);
                    }
                    this.invalidate(ino);
                }
            }
            drop(pending);
        });
    }

    async fn delete_behind(
        &self,
        path: &DavPath,
        session: Option<Arc<WriteHandle>>,
    ) -> VfsResult<()> {
        let delete = async {
            match self
                .client
                .delete(path, false, &Preconditions::default())
                .await
            {
                // A file still being written may not exist on the server yet.
                Err(e) if session.is_some() && e.kind() == ErrorKind::NotFound => Ok(()),
                r => r,
            }
        };
        match &session {
            Some(w) => {
                w.keep_content(&self.client).await;
                w.unlink(delete).await?;
                w.drop_partial_upload(&self.client).await;
            }
            None => delete.await?,
        }
        Ok(())
    }

    async fn move_behind(
        &self,
        from: &DavPath,
        to: &DavPath,
        overwrite: bool,
        session: Option<Arc<WriteHandle>>,
        replaced: Option<Arc<WriteHandle>>,
    ) -> VfsResult<()> {
        if let Some(r) = &replaced {
            r.keep_content(&self.client).await;
        }
        match &session {
            Some(w) => w.rename(&self.client, to.clone(), overwrite).await?,
            None => self.client.move_to(from, to, false, overwrite).await?,
        }
        if let Some(r) = &replaced {
            r.mark_unlinked().await;
        }
        Ok(())
    }

    /// Logs a failure of work behind a call that returned, and tells the desktop.
    pub(super) fn behind_failed(&self, path: &DavPath, what: &str, call: &str, e: &VfsError) {
        tracing::warn!(
            "{path}: {what} failed on the server ({e}); {call} had already returned \
             (--async-close), so the program was not told. Data written is kept, see \
             `davdrive status`"
        );
        let _ = self.notices.send(super::Notice {
            path: path.to_string(),
            error: e.to_string(),
        });
    }

    /// Whether a node of `kind` at `path` is a file on the server (not a directory, not a
    /// file kept local): one whose rename or unlink may go behind the call.
    pub(super) fn is_plain_file(&self, kind: FileKind, path: &DavPath) -> bool {
        kind == FileKind::File && self.local.get(path).is_none()
    }
}
