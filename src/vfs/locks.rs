//! Optional WebDAV locks (`--lock`): a file opened for writing is locked on the server
//! (exclusive write lock, `Timeout: Second-120`) for as long as its write session lasts, so a
//! colleague's client sees it locked; our uploads carry the lock token (`If`). The lock is
//! refreshed every 40 s, released when the session ends (after its upload) and at unmount,
//! and expires on the server within 2 minutes if this process dies. A file someone else
//! locked fails the open with `Locked` (EBUSY, a sharing violation on Windows). A server
//! without locks (nginx, Orthanc: 405 or 501) is written without them, said once.
//!
//! Not locked: new files (a LOCK of an unmapped URL would create the file before our
//! create-only upload), and a MOVE or DELETE of a file while we hold its lock carries no
//! token (the server refuses it: EBUSY).

use std::sync::Arc;
use std::time::Duration;

use super::error::{VfsError, VfsResult};
use super::inode::Ino;
use super::{ErrorKind, Vfs};
use crate::dav::DavPath;

/// The timeout asked for each lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// How often held locks are refreshed.
const REFRESH_EVERY: Duration = Duration::from_secs(40);

impl Vfs {
    /// Locks `path` (file `ino`) for a new write session when `--lock` is on: the token for
    /// the session's uploads, or `None` (no `--lock`, or a server without locks).
    pub(super) async fn lock_for_writing(
        &self,
        ino: Ino,
        path: &DavPath,
    ) -> VfsResult<Option<String>> {
        if !self.cfg.lock_files || self.no_locks.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        match self.client.lock(path, LOCK_TIMEOUT).await {
            Ok(l) => {
                tracing::debug!(path = %path, "locked on the server");
                self.held_locks
                    .lock()
                    .insert(ino, (path.clone(), l.token.clone()));
                Ok(Some(l.token))
            }
            Err(e) if e.kind() == ErrorKind::Locked => Err(VfsError::new(
                ErrorKind::Locked,
                format!("{path} is locked on the server by someone else"),
            )),
            Err(e) if matches!(e.status(), Some(405 | 501 | 400)) => {
                if !self
                    .no_locks
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        "the server does not take locks ({e}); files are written without them"
                    );
                }
                Ok(None)
            }
            Err(e) => Err(VfsError::from(e)),
        }
    }

    /// The server's version of `ino`, just locked: its metadata replaces ours, and when it
    /// differs the kernel forgets the file's attributes and pages.
    pub(super) async fn reread_locked(&self, ino: Ino) -> VfsResult<super::Attr> {
        let path = self.path_of(ino)?;
        let ms = self
            .client
            .propfind(&path, crate::dav::Depth::Zero, false)
            .await
            .map_err(VfsError::from)?;
        let r = ms
            .get(&path)
            .ok_or_else(|| VfsError::not_found(format!("{path}")))?;
        let now = super::inode::Meta::from_resource(
            r,
            tokio::time::Instant::now(),
            std::time::SystemTime::now(),
        );
        let (changed, attr) = {
            let mut t = self.table();
            let n = t
                .get_mut(ino)
                .ok_or_else(|| VfsError::not_found(format!("inode {ino}")))?;
            let changed = n.meta.as_ref().is_none_or(|m| !m.same_version(&now));
            n.meta = Some(now.clone());
            (changed, self.shown(&t, ino, &now))
        };
        if changed && let Some(f) = self.invalidator.get() {
            let f = f.clone();
            // Not waited for: this runs inside the kernel's open of the same file.
            drop(tokio::task::spawn_blocking(move || {
                f(&[super::watch::Invalidation::Inode(ino)]);
            }));
        }
        Ok(attr)
    }

    /// The write session of `ino` ended: its lock goes.
    pub(super) async fn unlock_after_writing(&self, ino: Ino) {
        let held = self.held_locks.lock().remove(&ino);
        if let Some((path, token)) = held {
            match self.client.unlock(&path, &token).await {
                Ok(()) => tracing::debug!(path = %path, "unlocked on the server"),
                Err(e) => tracing::warn!(
                    path = %path,
                    "cannot release the lock (it expires on the server within {} s): {e}",
                    LOCK_TIMEOUT.as_secs()
                ),
            }
        }
    }

    /// Releases every lock still held (at unmount, after the uploads).
    pub async fn release_locks(&self) {
        let inos: Vec<Ino> = self.held_locks.lock().keys().copied().collect();
        for ino in inos {
            self.unlock_after_writing(ino).await;
        }
    }

    /// Keeps held locks alive while the core lives.
    pub fn watch_locks(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        if !self.cfg.lock_files {
            return;
        }
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(vfs) = weak.upgrade() else {
                    return;
                };
                let held: Vec<(DavPath, String)> =
                    vfs.held_locks.lock().values().cloned().collect();
                for (path, token) in held {
                    if let Err(e) = vfs.client.refresh_lock(&path, &token, LOCK_TIMEOUT).await {
                        tracing::warn!(path = %path, "cannot refresh the lock: {e}");
                    }
                }
            }
        });
    }
}
