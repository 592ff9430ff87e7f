//! What the mount is doing now, for `davdrive status` and a waiting `davdrive unmount`:
//! the uploads in flight (files still being written, uploads going on after a close, closes
//! waiting for a slot behind `--async-close`), the folders, renames and deletions the server
//! is still to make behind calls that returned (`--async-close`, see `behind`), and whether
//! the server answers.
//!
//! Uploads that outlive their close are registered in `Vfs::transfers` (rank `Transfers`, a
//! leaf: nothing else is taken while it is held) by a [`Tracked`] guard for as long as they
//! run; open sessions are found among the open handles. A snapshot takes the handles, lets
//! them go, then the transfers: never both at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::write::WriteHandle;
use super::{Handle, Vfs};

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The file is open and being written; where the server takes it, its bytes are
    /// already on the way.
    Writing,
    /// Closed; the upload goes on.
    Uploading,
    /// Closed with `--async-close`; waiting for one of the upload slots.
    Queued,
}

/// One file on its way to the server.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Upload {
    /// The file's path in the mount, `/`-separated.
    pub path: String,
    pub phase: Phase,
    /// Bytes of the file handed to the server so far by the running request.
    pub sent: u64,
    /// The file's size as written so far.
    pub size: u64,
    /// Seconds since the phase began.
    pub secs: f64,
}

/// What a namespace change behind a call (`--async-close`) does on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    /// MKCOL behind a mkdir.
    MakeFolder,
    /// MOVE behind a rename.
    Rename,
    /// DELETE behind an unlink.
    Delete,
}

/// A namespace change the server is still to make after the call returned.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// The path in the mount, `/`-separated (for a rename, where the file was).
    pub path: String,
    /// Where a rename takes it.
    pub to: Option<String>,
    /// Seconds since the call returned.
    pub secs: f64,
}

/// A snapshot of the mount's activity.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Activity {
    pub uploads: Vec<Upload>,
    /// MKCOLs, MOVEs and DELETEs behind calls, oldest first (none from a davdrive before
    /// session 20 of the project, which did not report them).
    #[serde(default)]
    pub changes: Vec<Change>,
    /// Seconds since the server last answered, when it is silent now.
    pub server_silent_secs: Option<u64>,
}

/// An upload running after its close returned (or waiting to start).
pub(super) struct Transfer {
    pub(super) w: Arc<WriteHandle>,
    pub(super) since: std::time::Instant,
    pub(super) queued: bool,
}

/// Keeps a transfer registered until dropped.
pub(super) struct Tracked {
    vfs: Arc<Vfs>,
    id: u64,
}

impl Tracked {
    /// The queued upload got its slot.
    pub(super) fn started(&self) {
        if let Some(t) = self.vfs.transfers.lock().get_mut(&self.id) {
            t.queued = false;
            t.since = std::time::Instant::now();
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // The session may go with this entry: never under the lock (a leaf).
        let gone = self.vfs.transfers.lock().remove(&self.id);
        drop(gone);
    }
}

impl Vfs {
    /// Registers the upload of `w` that goes on after a close, `queued` when it waits for a
    /// slot first.
    pub(super) fn track(self: &Arc<Self>, w: &Arc<WriteHandle>, queued: bool) -> Tracked {
        let id = self.next_transfer.fetch_add(1, Ordering::Relaxed);
        self.transfers.lock().insert(
            id,
            Transfer {
                w: w.clone(),
                since: std::time::Instant::now(),
                queued,
            },
        );
        Tracked {
            vfs: self.clone(),
            id,
        }
    }

    /// What the mount is doing now.
    pub fn activity(&self) -> Activity {
        let open: Vec<Arc<WriteHandle>> = self
            .handles
            .lock()
            .values()
            .filter_map(|h| match h {
                Handle::Write(w) => Some(w.clone()),
                _ => None,
            })
            .collect();
        let mut running: Vec<(Arc<WriteHandle>, std::time::Instant, bool)> = self
            .transfers
            .lock()
            .values()
            .map(|t| (t.w.clone(), t.since, t.queued))
            .collect();
        // A session closed with `--async-close` has two entries (its close's and its
        // release's): while the close waits for a slot, "queued" is the truth.
        running.sort_by_key(|(_, since, queued)| (!queued, *since));
        let mut seen: Vec<*const WriteHandle> = Vec::new();
        let mut uploads = Vec::new();
        let now = std::time::Instant::now();
        let mut add = |w: &Arc<WriteHandle>, phase: Phase, since: std::time::Instant| {
            let p = Arc::as_ptr(w);
            if seen.contains(&p) {
                return;
            }
            seen.push(p);
            uploads.push(Upload {
                path: w.path().to_string(),
                phase,
                sent: w.sent_now(),
                size: w.size_now(),
                secs: now.saturating_duration_since(since).as_secs_f64(),
            });
        };
        // A session with a transfer is past its close: that phase wins over "writing".
        for (w, since, queued) in &running {
            if !queued && !w.dirty_now() {
                // Done (or nothing to send): the guard is about to go.
                continue;
            }
            let phase = if *queued {
                Phase::Queued
            } else {
                Phase::Uploading
            };
            add(w, phase, *since);
        }
        for w in open.iter().filter(|w| w.dirty_now()) {
            add(w, Phase::Writing, w.opened());
        }
        uploads.sort_by(|a, b| a.path.cmp(&b.path));
        let server_silent_secs = self.client.silent_since().map(|at| {
            std::time::SystemTime::now()
                .duration_since(at)
                .map_or(0, |d| d.as_secs())
        });
        let mut changes: Vec<(u64, Change)> = self
            .settling
            .borrow()
            .iter()
            .filter_map(|(id, b)| {
                let kind = match (b.work, &b.to) {
                    (super::behind::Work::Upload, _) => return None,
                    (super::behind::Work::Folder, _) => ChangeKind::MakeFolder,
                    (super::behind::Work::Change, Some(_)) => ChangeKind::Rename,
                    (super::behind::Work::Change, None) => ChangeKind::Delete,
                };
                Some((
                    *id,
                    Change {
                        kind,
                        path: b.path.to_string(),
                        to: b.to.as_ref().map(|t| t.to_string()),
                        secs: now.saturating_duration_since(b.since).as_secs_f64(),
                    },
                ))
            })
            .collect();
        changes.sort_by_key(|(id, _)| *id);
        Activity {
            uploads,
            changes: changes.into_iter().map(|(_, c)| c).collect(),
            server_silent_secs,
        }
    }

    /// Drops every cached listing and file attribute under `path` (the whole mount when
    /// `None`), so that changes made on the server by others show at the next look; the
    /// kernel is told to forget its names, attributes and pages there too (FUSE).
    /// Returns how many folders' listings were dropped.
    pub fn refresh(&self, path: Option<&crate::dav::DavPath>) -> usize {
        use super::watch::Invalidation;
        let mut forget = Vec::new();
        let dropped = {
            let mut t = self.table();
            for (ino, n) in t.iter() {
                if n.gone || path.is_some_and(|u| !n.path.starts_with(u)) {
                    continue;
                }
                forget.push(Invalidation::Inode(ino));
                if ino != super::ROOT_INO
                    && let Some(name) = n.path.name()
                {
                    forget.push(Invalidation::Entry {
                        parent: n.parent,
                        name: self.cfg.names.to_local(name),
                    });
                }
            }
            t.refresh_under(path)
        };
        if let Some(f) = self.invalidator.get() {
            let f = f.clone();
            // On a thread of its own (the caller is a task of the runtime), waited for: when
            // `davdrive refresh` returns, the kernel has forgotten too.
            let _ = std::thread::spawn(move || f(&forget)).join();
        }
        dropped
    }
}
