//! Files this mount just wrote, read back from their local copy.
//!
//! A file written through a write-only descriptor (`cp`, `dd`, git writing `.git/config`,
//! an editor saving) leaves no pages in the kernel's cache: the next open for reading used to
//! fetch it from the server again, one round trip and the whole body for bytes that were
//! just sent (git's clone read 55 such files back over a 30 ms link, docs/PERFORMANCE.md).
//! When a write session ends with the whole file uploaded, its local copy is kept here (the
//! session itself, whose open local file serves reads as `Handle::Reading` does), and a read
//! open of that file is served from it for as long as the server's version is the one
//! uploaded: the same entity tag (weak or strong, as Apache marks a file changed within the
//! last second) and size as the node's metadata, which revalidation and listings keep
//! current. Where the upload's answer carried no tag (Apache's PUT answers have none), only
//! while the node still has the metadata the upload gave it: the first listing or
//! revalidation that tells anything new of the file (within `--revalidate`, 2 s, for a
//! folder in use) ends the copy, and the next read goes to the server.
//!
//! Bounded: files up to [`MAX_FILE`], at most [`MAX_FILES`] of them and [`MAX_BYTES`] in all,
//! the oldest going first. A copy's disk space is its session's journal, emptied for reuse
//! when the copy goes (or its last reader closes; see `cache_dir::Recycler`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::inode::{Ino, Meta};
use super::write::WriteHandle;

/// The largest file kept.
pub const MAX_FILE: u64 = 8 << 20;
/// At most this many files...
pub const MAX_FILES: usize = 128;
/// ...and this many bytes in all.
pub const MAX_BYTES: u64 = 64 << 20;

struct Copy {
    session: Arc<WriteHandle>,
    /// The version uploaded.
    meta: Meta,
}

/// The kept copies, by inode.
#[derive(Default)]
pub struct Copies {
    by_ino: HashMap<Ino, Copy>,
    /// Sessions whose end (the kernel's release) is under way: the copy they may become.
    ending: HashMap<Ino, Arc<WriteHandle>>,
    /// Oldest first.
    order: VecDeque<Ino>,
    bytes: u64,
}

/// Whether `current` is still the version `uploaded`: the same size and entity tag (`W/`
/// aside); without a tag (Apache answers a PUT without one), the very metadata the upload
/// left, not replaced since by a listing or a revalidation.
fn same_content(uploaded: &Meta, current: &Meta) -> bool {
    if uploaded.etag.is_some() {
        uploaded.same_tagged_content(current)
    } else {
        uploaded == current
    }
}

impl Copies {
    /// Keeps `session`'s local copy of `ino`, uploaded as version `meta` (replacing any older
    /// copy of it), if it is worth keeping.
    pub fn keep(&mut self, ino: Ino, session: Arc<WriteHandle>, meta: Meta) {
        self.forget(ino);
        if meta.size > MAX_FILE {
            return;
        }
        while !self.order.is_empty()
            && (self.order.len() >= MAX_FILES || self.bytes + meta.size > MAX_BYTES)
        {
            if let Some(old) = self.order.pop_front() {
                self.forget(old);
            }
        }
        self.bytes += meta.size;
        self.order.push_back(ino);
        self.by_ino.insert(ino, Copy { session, meta });
    }

    /// The session holding `ino`'s copy, if it is of `current`, the server's version as the
    /// mount knows it now; a copy of another version is dropped.
    pub fn of(&mut self, ino: Ino, current: &Meta) -> Option<Arc<WriteHandle>> {
        let c = self.by_ino.get(&ino)?;
        if same_content(&c.meta, current) {
            return Some(c.session.clone());
        }
        self.forget(ino);
        None
    }

    /// `session`, the last of `ino`'s write descriptors, is ending.
    pub fn ending(&mut self, ino: Ino, session: Arc<WriteHandle>) {
        self.ending.insert(ino, session);
    }

    /// `session` has ended (and was kept, or not).
    pub fn ended(&mut self, ino: Ino, session: &Arc<WriteHandle>) {
        if self
            .ending
            .get(&ino)
            .is_some_and(|e| Arc::ptr_eq(e, session))
        {
            self.ending.remove(&ino);
        }
    }

    /// The session of `ino` that is ending, if any: what it holds is checked by the caller.
    pub fn ending_session(&self, ino: Ino) -> Option<Arc<WriteHandle>> {
        self.ending.get(&ino).cloned()
    }

    pub fn forget(&mut self, ino: Ino) {
        if let Some(c) = self.by_ino.remove(&ino) {
            self.bytes = self.bytes.saturating_sub(c.meta.size);
            self.order.retain(|i| *i != ino);
        }
    }
}
