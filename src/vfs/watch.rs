//! Changes made on the server by others, seen without waiting for a listing to expire.
//!
//! Folders in use (opened, or looked up in, within the last `revalidate_for`, default 2
//! minutes) whose listing is
//! fresh are revalidated every `revalidate` (`--revalidate`, default 2 s) with one
//! `PROPFIND Depth: 0` of the folder: its entity tag and modification date change when an
//! entry is added, removed or renamed on servers that keep folders on a filesystem (all the
//! servers in tests/it/servers.rs but rclone; a date counts whole seconds, so a folder listed
//! within the second of its last change is listed again until a listing comes a second later;
//! a folder without a tag and of at most [`RELIST_UP_TO`] entries is listed again each round,
//! as rclone does not move a folder's date when its entries change).
//! Only when they changed is the folder listed again
//! (Depth 1), and the differences are handed to the frontend, which tells the kernel (FUSE
//! notifications) so that cached names, attributes and pages of changed files go at once.
//! Files open for reading are revalidated the same way (their own Depth 0), so a change
//! made to a file in place, which folders do not show, reaches open readers too.
//!
//! Cost: one small request per folder in use and per open file, per interval; nothing for
//! folders nobody used for `revalidate_for`. Without a tag or date on a folder, its changes are
//! seen when its listing expires (`--dir-cache-ttl`).

use std::sync::Arc;
use tokio::time::Instant;

use super::inode::{FileKind, Ino, Meta};
use super::{Handle, Vfs};
use crate::dav::{DavPath, Depth, Resource};

/// At most this many requests of one revalidation round at once.
const PARALLEL: usize = 4;

/// At most this many folders and open files per round (the most recently used first).
const MAX_PER_ROUND: usize = 64;

/// A folder without an entity tag and with at most this many entries is listed again each
/// round rather than trusted by its date.
const RELIST_UP_TO: usize = 100;

/// What the frontend must make the kernel forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The name `name` in `parent` (added, or now another file).
    Entry { parent: Ino, name: String },
    /// `child`, named `name` in `parent`, is gone from the server.
    Deleted {
        parent: Ino,
        child: Ino,
        name: String,
    },
    /// The attributes and cached content of `ino`.
    Inode(Ino),
}

/// How the frontend tells its kernel (FUSE: notifications on /dev/fuse).
pub type Invalidator = Arc<dyn Fn(&[Invalidation]) + Send + Sync>;

/// Whether a folder or file as the server shows it now differs from what we know. `None`:
/// the server gives neither an entity tag nor a date, so nothing can be told.
fn changed(known: Option<&Meta>, now: &Resource) -> Option<bool> {
    let known = known?;
    match (&known.etag, &now.etag) {
        (Some(a), Some(b)) => return Some(a != b),
        (Some(_), None) | (None, Some(_)) => return Some(true),
        (None, None) => {}
    }
    let date = now.last_modified?;
    if !known.server_mtime {
        return None;
    }
    Some(date != known.mtime || (!now.is_collection && now.content_length != Some(known.size)))
}

impl Vfs {
    /// Makes the listing of `dir` stale, so that the next look at it fetches it again.
    fn expire_listing(&self, dir: Ino) {
        let ttl = self.cfg.dir_ttl + std::time::Duration::from_secs(1);
        let mut t = self.table();
        if let Some(l) = t
            .get_mut(dir)
            .and_then(|n| n.listing.as_mut())
            .map(std::sync::Arc::make_mut)
        {
            match Instant::now().checked_sub(ttl) {
                Some(old) => l.fetched = old,
                None => {
                    if let Some(n) = t.get_mut(dir) {
                        n.listing = None;
                    }
                }
            }
        }
    }

    /// Registers how invalidations reach the kernel (once, by the frontend).
    pub fn set_invalidator(&self, f: Invalidator) {
        let _ = self.invalidator.set(f);
    }

    /// Someone opened folder `dir` or looked a name up in it: it is in use.
    pub(super) fn note_used(&self, dir: Ino) {
        if let Some(n) = self.table().get_mut(dir) {
            n.used = Some(Instant::now());
        }
    }

    /// Starts revalidating folders in use and open files every `revalidate`, for as long as
    /// the core lives (not at all when `revalidate` is 0).
    pub fn watch_changes(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        let every = self.cfg.revalidate;
        if every.is_zero() {
            return;
        }
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(vfs) = weak.upgrade() else {
                    return;
                };
                if vfs.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                vfs.revalidate().await;
            }
        });
    }

    /// One round: the folders in use with a fresh listing, and the files open for reading.
    pub async fn revalidate(&self) {
        let now = Instant::now();
        // (last use, inode, path, a folder, its listing settled)
        let mut targets: Vec<(Instant, Ino, DavPath, bool, bool)> = Vec::new();
        let reading: Vec<Ino> = self
            .handles
            .lock()
            .values()
            .filter_map(|h| match h {
                Handle::Read(r) => Some(r.ino()),
                _ => None,
            })
            .collect();
        {
            let t = self.table();
            for (ino, n) in t.iter() {
                // A folder kept here after the server dropped it has nothing to look at.
                if n.gone || n.vanished {
                    continue;
                }
                let in_use = n
                    .used
                    .is_some_and(|u| now.saturating_duration_since(u) < self.cfg.revalidate_for);
                if let Some(l) = n.listing.as_ref().filter(|l| self.fresh(l.fetched))
                    && in_use
                {
                    // Without a tag, a folder's date is all there is, and some servers do not
                    // move it (rclone keeps the date it first saw): a small folder is listed
                    // again each round instead.
                    let dated_only = n.meta.as_ref().is_none_or(|m| m.etag.is_none());
                    let settled = l.settled && !(dated_only && l.order.len() <= RELIST_UP_TO);
                    targets.push((n.used.unwrap_or(now), ino, n.path.clone(), true, settled));
                }
            }
            for ino in reading {
                if let Some(n) = t.get(ino)
                    && !n.gone
                    && n.writer.is_none()
                    && n.meta.as_ref().is_some_and(|m| m.kind == FileKind::File)
                {
                    targets.push((now, ino, n.path.clone(), false, true));
                }
            }
        }
        targets.sort_by_key(|t| std::cmp::Reverse(t.0));
        targets.dedup_by_key(|t| t.1);
        targets.truncate(MAX_PER_ROUND);
        // PARALLEL requests at a time, as futures of this round (no task owns the core).
        let gate = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let pending = targets.into_iter().map(|(_, ino, path, is_dir, settled)| {
            self.revalidate_one(ino, path, is_dir, settled, gate.clone())
        });
        let out: Vec<Invalidation> = futures_util::future::join_all(pending)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !out.is_empty()
            && let Some(f) = self.invalidator.get()
        {
            let f = f.clone();
            // Writes to /dev/fuse may wait for the kernel's locks: never on a runtime thread.
            let _ = tokio::task::spawn_blocking(move || f(&out)).await;
        }
    }

    /// Revalidates one folder (listed again when changed) or open file; what changed.
    async fn revalidate_one(
        &self,
        ino: Ino,
        path: DavPath,
        is_dir: bool,
        settled: bool,
        gate: Arc<tokio::sync::Semaphore>,
    ) -> Vec<Invalidation> {
        let Ok(_permit) = gate.acquire().await else {
            return Vec::new();
        };
        // A folder whose date may hide a change (listed in the second it last changed, on a
        // server without folder tags) is listed again, until a listing is settled.
        if is_dir && !settled {
            return self.relist(ino, &path).await;
        }
        self.settle_changes(&path).await;
        let now = match self.client.propfind(&path, Depth::Zero, is_dir).await {
            Ok(ms) => match ms.get(&path).or(ms.resources.first()) {
                Some(r) => r.clone(),
                None => return Vec::new(),
            },
            Err(e) if e.kind() == crate::dav::ErrorKind::NotFound => {
                // Gone: its parent's listing says so when it is fetched again.
                let parent = self.table().get(ino).map(|n| n.parent);
                if let Some(p) = parent {
                    self.drop_listing(p);
                    return vec![Invalidation::Inode(p)];
                }
                return Vec::new();
            }
            Err(e) => {
                tracing::debug!(path = %path, "revalidation failed: {e}");
                return Vec::new();
            }
        };
        let known = self.table().get(ino).and_then(|n| n.meta.clone());
        if changed(known.as_ref(), &now) != Some(true) {
            return Vec::new();
        }
        if !is_dir {
            tracing::debug!(path = %path, "changed on the server");
            // The listing of its folder names inodes only: it stays, with this news.
            if let Some(n) = self.table().get_mut(ino) {
                n.meta = Some(Meta::from_resource(
                    &now,
                    Instant::now(),
                    std::time::SystemTime::now(),
                ));
            }
            return vec![Invalidation::Inode(ino)];
        }
        self.relist(ino, &path).await
    }

    /// Lists folder `dir` again and says what differs from the listing it had.
    async fn relist(&self, dir: Ino, path: &DavPath) -> Vec<Invalidation> {
        // What the kernel may know: the entries of the listing we had, else (dropped
        // meanwhile) the folder's children we know of.
        let before: Vec<(String, Ino, Option<Meta>)> = {
            let t = self.table();
            let meta = |i: Ino| t.get(i).and_then(|n| n.meta.clone());
            match t.get(dir).and_then(|n| n.listing.as_ref()) {
                Some(l) => l
                    .order
                    .iter()
                    .map(|(name, i)| (name.clone(), *i, meta(*i)))
                    .collect(),
                None => t
                    .iter()
                    .filter(|(i, n)| n.parent == dir && *i != dir && !n.gone)
                    .filter_map(|(i, n)| {
                        let name = self.cfg.names.to_local(n.path.name()?);
                        Some((name, i, meta(i)))
                    })
                    .collect(),
            }
        };
        // Expired rather than dropped: the listing fetched next keeps what it must from it
        // (files being written or uploaded behind their close, not on the server yet).
        self.expire_listing(dir);
        let after = match self.listing(dir).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(path = %path, "listing again failed: {e}");
                return vec![Invalidation::Inode(dir)];
            }
        };
        let mut out = Vec::new();
        let t = self.table();
        for (name, ino, meta) in &before {
            match after.by_name.get(name) {
                None => out.push(Invalidation::Deleted {
                    parent: dir,
                    child: *ino,
                    name: name.clone(),
                }),
                Some(now) if now != ino => out.push(Invalidation::Entry {
                    parent: dir,
                    name: name.clone(),
                }),
                Some(now) => {
                    let fresh = t.get(*now).and_then(|n| n.meta.as_ref());
                    let same = match (meta, fresh) {
                        (Some(a), Some(b)) => a.same_version(b),
                        _ => false,
                    };
                    if !same {
                        out.push(Invalidation::Inode(*now));
                    }
                }
            }
        }
        for (name, _) in &after.order {
            if !before.iter().any(|(n, _, _)| n == name) {
                out.push(Invalidation::Entry {
                    parent: dir,
                    name: name.clone(),
                });
            }
        }
        drop(t);
        if !out.is_empty() {
            tracing::debug!(
                path = %path,
                changes = out.len(),
                "changed on the server; listed again"
            );
            out.push(Invalidation::Inode(dir));
        }
        out
    }
}
