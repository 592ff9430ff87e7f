//! Bytes of files read, kept on local disk for later reads of the same version.
//!
//! The kernel keeps the pages of a file whose version is unchanged (`FOPEN_KEEP_CACHE`), but
//! over a slow link the first `cat` of a large file leaves holes of a few pages in the page
//! cache, and each hole cost the second `cat` a ranged GET and a round trip
//! (docs/PERFORMANCE.md: 4 to 57 GETs, up to 14 s over 30 ms). Every byte a read handle
//! fetched is also written here (one sparse file per file read, in the cache directory), and
//! a read whose bytes are all here is answered from here: a hole costs a local read.
//!
//! Only for a version with an entity tag: the read handle compares every response's tag with
//! it, so what is stored is that version, and a later open uses the stored bytes only for the
//! same tag and size. Bounded: files up to [`MAX_FILE`], [`MAX_BYTES`] of them in all (by
//! their sizes), the least recently opened going first. A file that cannot be written (a full
//! disk) stops being stored, and reads go on from the network.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use super::fileio::{read_at, write_at};
use super::inode::{Ino, Meta};

/// The largest file stored.
pub const MAX_FILE: u64 = 128 << 20;
/// The sizes of the stored files, in all.
pub const MAX_BYTES: u64 = 256 << 20;

/// The stored bytes of one version of one file.
pub struct Stored {
    version: Meta,
    file: std::fs::File,
    path: PathBuf,
    /// Sorted, disjoint, not touching: the byte ranges `[start, end)` held.
    held: std::sync::Mutex<Vec<(u64, u64)>>,
    broken: AtomicBool,
}

impl Stored {
    /// Whether `[start, end)` is all here.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        if self.broken.load(Ordering::Relaxed) {
            return false;
        }
        covers(
            &self.held.lock().unwrap_or_else(|e| e.into_inner()),
            start,
            end,
        )
    }

    /// `[start, end)`, which [`Stored::covers`] said is here.
    pub fn read(&self, start: u64, end: u64) -> Option<Bytes> {
        let mut buf = vec![0u8; usize::try_from(end - start).ok()?];
        match read_at(&self.file, &mut buf, start) {
            Ok(n) if n == buf.len() => Some(Bytes::from(buf)),
            _ => None,
        }
    }

    /// Keeps `chunks`, the bytes at `start` of this version, in order.
    pub fn store(&self, start: u64, chunks: &[Bytes]) {
        if self.broken.load(Ordering::Relaxed) || chunks.is_empty() {
            return;
        }
        let mut at = start;
        for c in chunks {
            if let Err(e) = write_at(&self.file, c, at) {
                tracing::debug!("cannot keep read bytes on disk ({e}); reads go to the server");
                self.broken.store(true, Ordering::Relaxed);
                return;
            }
            at += c.len() as u64;
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        insert(&mut held, start, at);
    }
}

impl Drop for Stored {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether `held` covers `[start, end)`: by the last range beginning at or before `start`
/// (the ranges are sorted and disjoint; a file read at random holds many, and this runs for
/// every read).
fn covers(held: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = held.partition_point(|&(s, _)| s <= start);
    i > 0 && held[i - 1].1 >= end
}

/// Adds `[start, end)` to `held`, merging what it overlaps or touches.
fn insert(held: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    let (mut s, mut e) = (start, end);
    held.retain(|&(a, b)| {
        if b < s || a > e {
            true
        } else {
            s = s.min(a);
            e = e.max(b);
            false
        }
    });
    let at = held.partition_point(|&(a, _)| a < s);
    held.insert(at, (s, e));
}

/// The stored files of one mount, by inode.
#[derive(Default)]
pub struct DataCache {
    by_ino: HashMap<Ino, Arc<Stored>>,
    /// Least recently opened first.
    order: VecDeque<Ino>,
    bytes: u64,
    next: u64,
}

impl DataCache {
    /// The stored bytes of `ino` at `version` (a new, empty store when there are none, or
    /// they are of another version), or `None` when this version is not stored (no entity
    /// tag, too large, or the store cannot be made in `dir`).
    pub fn for_version(
        &mut self,
        ino: Ino,
        version: &Meta,
        dir: &std::path::Path,
    ) -> Option<Arc<Stored>> {
        if let Some(s) = self.by_ino.get(&ino)
            && s.version.same_tagged_content(version)
            && !s.broken.load(Ordering::Relaxed)
        {
            let s = s.clone();
            self.order.retain(|i| *i != ino);
            self.order.push_back(ino);
            return Some(s);
        }
        self.forget(ino);
        if version.etag.is_none() || version.size > MAX_FILE {
            return None;
        }
        while !self.order.is_empty() && self.bytes + version.size > MAX_BYTES {
            if let Some(old) = self.order.pop_front() {
                self.forget(old);
            }
        }
        self.next += 1;
        let path = dir.join(format!("{}-{}-{ino}.read", std::process::id(), self.next));
        let file = super::cache_dir::create_private(&path).ok()?;
        let s = Arc::new(Stored {
            version: version.clone(),
            file,
            path,
            held: Default::default(),
            broken: AtomicBool::new(false),
        });
        self.bytes += version.size;
        self.order.push_back(ino);
        self.by_ino.insert(ino, s.clone());
        Some(s)
    }

    pub fn forget(&mut self, ino: Ino) {
        if let Some(s) = self.by_ino.remove(&ino) {
            self.bytes = self.bytes.saturating_sub(s.version.size);
            self.order.retain(|i| *i != ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{covers, insert};

    #[test]
    fn covered_ranges_are_found_by_their_start() {
        let held = [(0u64, 10u64), (20, 30), (40, 50)];
        let c = |start, end| covers(&held, start, end);
        assert!(c(0, 10) && c(20, 25) && c(45, 50));
        assert!(!c(5, 15) && !c(10, 20) && !c(35, 41) && !c(50, 51));
    }

    #[test]
    fn ranges_merge_when_they_overlap_or_touch() {
        let mut h = Vec::new();
        insert(&mut h, 10, 20);
        insert(&mut h, 30, 40);
        assert_eq!(h, [(10, 20), (30, 40)]);
        insert(&mut h, 20, 30);
        assert_eq!(h, [(10, 40)]);
        insert(&mut h, 0, 5);
        insert(&mut h, 50, 60);
        insert(&mut h, 3, 55);
        assert_eq!(h, [(0, 60)]);
    }
}
