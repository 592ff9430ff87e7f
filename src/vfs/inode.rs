//! The inode table: stable numbers for server paths, kernel lookup counts, cached metadata
//! and directory listings.
//!
//! Invariants:
//! - A path keeps its inode number for the lifetime of the mount, even across `forget`
//!   (tools such as `find` and `rsync` compare inode numbers). A node is dropped only when the
//!   kernel has forgotten it *and* the server no longer lists it.
//! - Metadata and listings carry the `tokio::time::Instant` at which the server said them;
//!   freshness is decided by the caller against its TTLs, so tests can pause time.
//! - A listing maps *local* names (see [`super::names`]) to inodes; the node keeps the
//!   server path, so a mapped name always leads back to the exact server name.
//!
//! The table lives behind one `std::sync::Mutex` in [`super::Vfs`]; no lock is held across
//! an await.

use std::collections::HashMap;
use std::time::SystemTime;

/// Maps keyed by what a server sends (paths, names): foldhash with a random seed per map is
/// several times faster than SipHash on 10,000-entry listings and still not predictable
/// from outside.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use tokio::time::Instant;

use crate::dav::{DavPath, Resource};

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Directory,
}

/// What the server told us about a resource, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub kind: FileKind,
    pub size: u64,
    pub mtime: SystemTime,
    /// Creation time (`creationdate`), else the modification time.
    pub created: SystemTime,
    pub etag: Option<String>,
    /// Whether `mtime` is the server's `getlastmodified` (so it can guard an overwrite with
    /// `If-Unmodified-Since`), not a time of ours.
    pub server_mtime: bool,
    pub fetched: Instant,
}

impl Meta {
    pub fn from_resource(r: &Resource, now: Instant, fallback_time: SystemTime) -> Self {
        let mtime = r.last_modified.or(r.created).unwrap_or(fallback_time);
        Meta {
            kind: if r.is_collection {
                FileKind::Directory
            } else {
                FileKind::File
            },
            size: if r.is_collection {
                0
            } else {
                r.content_length.unwrap_or(0)
            },
            mtime,
            created: r.created.unwrap_or(mtime),
            etag: r.etag.clone(),
            server_mtime: r.last_modified.is_some(),
            fetched: now,
        }
    }

    /// Whether two sightings describe the same version of the content.
    pub fn same_version(&self, other: &Meta) -> bool {
        self.kind == other.kind
            && self.size == other.size
            && self.mtime == other.mtime
            && self.etag == other.etag
    }

    /// Whether both carry an entity tag and they name the same content: the same kind, size
    /// and tag, weak or strong (Apache marks the tag of a file changed within the last second
    /// weak, and the same tag strong a second later).
    pub fn same_tagged_content(&self, other: &Meta) -> bool {
        fn tag(m: &Meta) -> Option<&str> {
            m.etag.as_deref().map(|t| t.trim_start_matches("W/"))
        }
        self.kind == other.kind
            && self.size == other.size
            && tag(self).is_some()
            && tag(self) == tag(other)
    }
}

/// A directory's children as last listed.
#[derive(Debug, Clone)]
pub struct Listing {
    pub fetched: Instant,
    /// Local names in server order.
    pub order: Vec<(String, Ino)>,
    pub by_name: FastMap<String, Ino>,
    /// Entries not shown (temporary names of uploads in progress, or of deleted files still
    /// read), with their last modification: the directory is not empty for rmdir even when
    /// `order` is, unless they are abandoned.
    pub hidden: Vec<(crate::dav::DavPath, Option<std::time::SystemTime>)>,
    /// Whether any later change to the folder's entries shows in its entity tag or date (see
    /// `watch`): it has a tag, or the server's clock was at least a second past the folder's
    /// date when it answered (dates count whole seconds: a change in the same second as
    /// the listing would not move it).
    pub settled: bool,
}

#[derive(Debug)]
pub struct Node {
    pub path: DavPath,
    pub parent: Ino,
    pub meta: Option<Meta>,
    /// Shared with whoever looks at it (a lookup takes the listing without copying it); a
    /// change to a listing someone still holds copies it first (`Arc::make_mut`).
    pub listing: Option<std::sync::Arc<Listing>>,
    /// Kernel lookup count (FUSE `lookup` minus `forget`).
    pub lookups: u64,
    /// No longer listed by the server.
    pub gone: bool,
    /// The content version last handed to an opener, for the kernel's page cache.
    pub cached_version: Option<Meta>,
    /// The open write session of this file, if any (its size is the truth while open).
    pub writer: Option<u64>,
    /// Bumped by every change we make to this directory's entries, so that a listing
    /// fetched while we changed it is not trusted.
    pub changes: u64,
    /// A listing of this directory the server's answer made impossible (too large,
    /// malformed), and when: not fetched again while the listing would have been fresh.
    pub listing_failed: Option<(Instant, crate::vfs::error::VfsError)>,
    /// When fetching this directory's listing ahead failed (see `Vfs::prefetch_subfolders`):
    /// not tried ahead again while a listing would be fresh.
    pub prefetch_failed: Option<Instant>,
    /// When someone last opened this directory or looked a name up in it (see `watch`).
    pub used: Option<Instant>,
    /// A directory made through this mount: kept when the server drops it (a drop box such
    /// as Orthanc's `uploads/` removes empty folders) and made again for a file written into
    /// it; `vanished` says the server no longer has it.
    pub made_here: bool,
    pub vanished: bool,
}

#[derive(Debug)]
pub(crate) struct InodeTable {
    nodes: FastMap<Ino, Node>,
    by_path: FastMap<DavPath, Ino>,
    next: Ino,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InodeTable {
    pub fn new() -> Self {
        let mut t = InodeTable {
            nodes: FastMap::default(),
            by_path: FastMap::default(),
            next: ROOT_INO + 1,
        };
        t.nodes.insert(
            ROOT_INO,
            Node {
                path: DavPath::root(),
                parent: ROOT_INO,
                meta: None,
                listing: None,
                lookups: 1,
                gone: false,
                cached_version: None,
                writer: None,
                changes: 0,
                listing_failed: None,
                prefetch_failed: None,
                used: None,
                made_here: false,
                vanished: false,
            },
        );
        t.by_path.insert(DavPath::root(), ROOT_INO);
        t
    }

    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: Ino) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Every node, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (Ino, &Node)> {
        self.nodes.iter().map(|(i, n)| (*i, n))
    }

    /// Drops the listings and metadata of every node at or below `under` (every node when
    /// `None`); returns how many listings went.
    pub fn refresh_under(&mut self, under: Option<&DavPath>) -> usize {
        let mut dropped = 0;
        for n in self.nodes.values_mut() {
            if under.is_some_and(|u| !n.path.starts_with(u)) {
                continue;
            }
            if n.listing.take().is_some() {
                dropped += 1;
            }
            n.listing_failed = None;
            // An open write session's size is the truth while it is open.
            if n.writer.is_none() {
                n.meta = None;
            }
        }
        dropped
    }

    /// The inode at `path`, if one is known.
    pub fn find(&self, path: &DavPath) -> Option<Ino> {
        self.by_path.get(path).copied()
    }

    /// The inode of `path` under `parent`, created if new. A known node takes `parent` when
    /// that is where it lives now (the directory may have been deleted and made again under a
    /// new inode meanwhile; a listing that started before that must not take it back).
    pub fn ensure(&mut self, parent: Ino, path: &DavPath) -> Ino {
        if let Some(&ino) = self.by_path.get(path) {
            let parent_here = ino != ROOT_INO
                && self
                    .nodes
                    .get(&parent)
                    .is_some_and(|p| !p.gone && path.is_child_of(&p.path));
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.gone = false;
                if parent_here {
                    n.parent = parent;
                }
            }
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                path: path.clone(),
                parent,
                meta: None,
                listing: None,
                lookups: 0,
                gone: false,
                cached_version: None,
                writer: None,
                changes: 0,
                listing_failed: None,
                prefetch_failed: None,
                used: None,
                made_here: false,
                vanished: false,
            },
        );
        self.by_path.insert(path.clone(), ino);
        ino
    }

    /// Marks a node as no longer on the server; drops it if the kernel holds no reference.
    pub fn mark_gone(&mut self, ino: Ino) {
        if ino == ROOT_INO {
            return;
        }
        let drop_it = match self.nodes.get_mut(&ino) {
            Some(n) => {
                n.gone = true;
                n.meta = None;
                n.listing = None;
                n.lookups == 0
            }
            None => false,
        };
        if drop_it {
            self.remove(ino);
        }
    }

    /// `ino` was deleted by us: gone, and its path no longer leads to it, so that a file
    /// appearing there later gets an inode of its own even while the kernel still holds this
    /// one (a deleted file still open).
    pub fn unlinked(&mut self, ino: Ino) {
        self.mark_gone(ino);
        if let Some(n) = self.nodes.get(&ino)
            && self.by_path.get(&n.path) == Some(&ino)
        {
            self.by_path.remove(&n.path);
        }
    }

    /// The kernel forgets `n` references.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let drop_it = match self.nodes.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0 && node.gone
            }
            None => false,
        };
        if drop_it {
            self.remove(ino);
        }
    }

    /// `ino` now lives at `new_path` under `new_parent`; descendants move with it. A node
    /// that was at `new_path` before is replaced (marked gone).
    pub fn rename(&mut self, ino: Ino, new_parent: Ino, new_path: &DavPath) {
        if let Some(old) = self.by_path.get(new_path).copied()
            && old != ino
        {
            self.mark_gone(old);
            if self.by_path.get(new_path) == Some(&old) {
                self.by_path.remove(new_path);
            }
        }
        let Some(old_path) = self.nodes.get(&ino).map(|n| n.path.clone()) else {
            return;
        };
        // The node and what lies below it. Another node at the very same path is a dead
        // one (deleted while open, `unlinked`): it stays where it was. Before, it moved too
        // and could take the new path's index entry, so that a later rename or open of that
        // name reached the deleted file (found by the reference model: a file being written
        // was then uploaded to its old name).
        let depth = old_path.segments().len();
        let moved: Vec<Ino> = self
            .nodes
            .iter()
            .filter(|(i, n)| {
                **i == ino || (n.path.segments().len() > depth && n.path.starts_with(&old_path))
            })
            .map(|(i, _)| *i)
            .collect();
        for i in moved {
            let Some(n) = self.nodes.get_mut(&i) else {
                continue;
            };
            let tail = n.path.segments()[depth..].to_vec();
            let mut segs = new_path.segments().to_vec();
            segs.extend(tail);
            let Ok(p) = DavPath::from_segments(segs) else {
                continue;
            };
            // Only nodes the index leads to are indexed at their new path: a deleted file
            // below a moved directory moves along without taking a name.
            let indexed = self.by_path.get(&n.path) == Some(&i);
            if indexed {
                self.by_path.remove(&n.path);
            }
            n.path = p.clone();
            if i == ino {
                n.parent = new_parent;
            }
            if indexed || i == ino {
                self.by_path.insert(p, i);
            }
        }
    }

    /// Drops what nobody needs, so that memory stays bounded while a crawler walks a large
    /// tree: first the listings older than `stale` (except of `open_dirs`), then every node
    /// the kernel holds no reference to, with no write session, not in `busy`, in no kept
    /// listing, with no listing of its own, not in an open directory, and with nothing kept
    /// below it. A dropped node is made again (with a new number) when it is looked up.
    /// Returns how many nodes went.
    pub fn sweep(
        &mut self,
        now: Instant,
        stale: std::time::Duration,
        busy: &std::collections::HashSet<Ino>,
        open_dirs: &std::collections::HashSet<Ino>,
    ) -> usize {
        let mut listed = std::collections::HashSet::new();
        for (ino, n) in self.nodes.iter_mut() {
            let old = n
                .listing
                .as_ref()
                .is_some_and(|l| now.saturating_duration_since(l.fetched) > stale);
            if old && !open_dirs.contains(ino) {
                n.listing = None;
            }
            if let Some(l) = &n.listing {
                listed.extend(l.order.iter().map(|(_, i)| *i));
            }
        }
        let keep = |i: Ino, n: &Node| {
            i == ROOT_INO
                || n.lookups > 0
                || n.writer.is_some()
                || n.listing.is_some()
                || busy.contains(&i)
                || listed.contains(&i)
                || open_dirs.contains(&n.parent)
        };
        // The ancestors of every node kept are kept too.
        let mut needed = std::collections::HashSet::new();
        for (&i, n) in &self.nodes {
            if keep(i, n) {
                let mut p = n.parent;
                while p != ROOT_INO && needed.insert(p) {
                    p = self.nodes.get(&p).map_or(ROOT_INO, |n| n.parent);
                }
            }
        }
        let gone: Vec<Ino> = self
            .nodes
            .iter()
            .filter(|(i, n)| !keep(**i, n) && !needed.contains(*i))
            .map(|(i, _)| *i)
            .collect();
        for &i in &gone {
            self.remove(i);
        }
        gone.len()
    }

    fn remove(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.remove(&ino)
            && self.by_path.get(&n.path) == Some(&ino)
        {
            self.by_path.remove(&n.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_keeps_what_is_referenced_and_the_ancestors_of_what_it_keeps() {
        let p = |s: &str| DavPath::parse(s).expect("path");
        let mut t = InodeTable::new();
        let a = t.ensure(ROOT_INO, &p("/a"));
        let held = t.ensure(a, &p("/a/held"));
        let b = t.ensure(ROOT_INO, &p("/b"));
        let listed = t.ensure(b, &p("/b/listed"));
        let loose = t.ensure(b, &p("/b/loose"));
        let open = t.ensure(ROOT_INO, &p("/open"));
        t.get_mut(held).expect("held").lookups = 1;
        let now = Instant::now();
        let listing = |order: Vec<(String, Ino)>, fetched: Instant| Listing {
            fetched,
            by_name: order.iter().cloned().collect(),
            order,
            hidden: Vec::new(),
            settled: true,
        };
        t.get_mut(b).expect("b").listing = Some(std::sync::Arc::new(listing(
            vec![("listed".into(), listed)],
            now,
        )));
        let stale = std::time::Duration::from_secs(10);
        let busy = [open].into_iter().collect();
        let dropped = t.sweep(now, stale, &busy, &Default::default());
        // `a` has no reference of its own, but a node below it is held; `b` has a listing.
        assert_eq!(dropped, 1);
        for i in [a, held, b, listed, open] {
            assert!(t.get(i).is_some(), "{i} dropped");
        }
        assert!(t.get(loose).is_none() && t.find(&p("/b/loose")).is_none());
        // Once the listing is stale, what it held goes too.
        let later = now + stale * 2;
        assert_eq!(t.sweep(later, stale, &busy, &Default::default()), 2);
        assert!(t.get(listed).is_none() && t.get(b).is_none());
    }

    #[test]
    fn a_rename_leaves_a_deleted_node_of_the_same_name_behind() {
        let mut t = InodeTable::new();
        let old = t.ensure(ROOT_INO, &p("/f"));
        t.get_mut(old).expect("node").lookups = 1;
        t.unlinked(old);
        let new = t.ensure(ROOT_INO, &p("/f"));
        assert_ne!(old, new);
        t.rename(new, ROOT_INO, &p("/g"));
        assert_eq!(t.ensure(ROOT_INO, &p("/g")), new);
        assert_eq!(t.get(old).map(|n| n.path.clone()), Some(p("/f")));
        // Below a moved directory, a deleted file moves along but takes no name.
        let d = t.ensure(ROOT_INO, &p("/d"));
        let x = t.ensure(d, &p("/d/x"));
        t.get_mut(x).expect("node").lookups = 1;
        t.unlinked(x);
        t.rename(d, ROOT_INO, &p("/e"));
        assert_eq!(t.get(x).map(|n| n.path.clone()), Some(p("/e/x")));
        assert_ne!(t.ensure(d, &p("/e/x")), x);
    }

    fn p(s: &str) -> DavPath {
        DavPath::parse(s).expect("path")
    }

    #[test]
    fn inodes_are_stable_and_forget_is_counted() {
        let mut t = InodeTable::new();
        let a = t.ensure(ROOT_INO, &p("/a"));
        assert_eq!(t.ensure(ROOT_INO, &p("/a")), a);
        t.get_mut(a).expect("a").lookups = 2;
        t.forget(a, 1);
        assert!(t.get(a).is_some());
        t.forget(a, 1);
        assert!(t.get(a).is_some(), "still listed: kept for stable numbers");
        t.mark_gone(a);
        assert!(t.get(a).is_none(), "gone and forgotten: dropped");
        let b = t.ensure(ROOT_INO, &p("/b"));
        t.get_mut(b).expect("b").lookups = 1;
        t.mark_gone(b);
        assert!(t.get(b).is_some(), "kernel still holds it");
        t.forget(b, 1);
        assert!(t.get(b).is_none());
        t.forget(ROOT_INO, 100);
        assert!(t.get(ROOT_INO).is_some());
    }

    #[test]
    fn a_child_follows_its_directory_made_again() {
        let mut t = InodeTable::new();
        let d = t.ensure(ROOT_INO, &p("/d"));
        let c = t.ensure(d, &p("/d/c"));
        // The directory goes, and the kernel forgets it; the child is still known.
        t.mark_gone(d);
        assert!(t.get(d).is_none());
        let d2 = t.ensure(ROOT_INO, &p("/d"));
        assert_ne!(d2, d);
        assert_eq!(t.ensure(d2, &p("/d/c")), c);
        assert_eq!(t.get(c).expect("c").parent, d2);
        // A listing of the old directory that ends late does not take it back.
        assert_eq!(t.ensure(d, &p("/d/c")), c);
        assert_eq!(t.get(c).expect("c").parent, d2);
    }

    #[test]
    fn a_deleted_file_still_held_is_not_the_next_file_of_its_name() {
        let mut t = InodeTable::new();
        let a = t.ensure(ROOT_INO, &p("/a"));
        t.get_mut(a).expect("a").lookups = 1;
        t.unlinked(a);
        assert!(t.get(a).is_some_and(|n| n.gone), "kernel still holds it");
        let again = t.ensure(ROOT_INO, &p("/a"));
        assert_ne!(again, a, "a new file of that name");
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert_eq!(
            t.ensure(ROOT_INO, &p("/a")),
            again,
            "the new one keeps its path"
        );
    }

    #[test]
    fn rename_moves_descendants_and_replaces_the_target() {
        let mut t = InodeTable::new();
        let d = t.ensure(ROOT_INO, &p("/d"));
        let f = t.ensure(d, &p("/d/f"));
        let target = t.ensure(ROOT_INO, &p("/e"));
        t.rename(d, ROOT_INO, &p("/e"));
        assert_eq!(t.get(d).expect("d").path, p("/e"));
        assert_eq!(t.get(f).expect("f").path, p("/e/f"));
        assert!(t.get(target).is_none(), "replaced target dropped");
        assert_eq!(t.ensure(ROOT_INO, &p("/e/f")), f);
    }
}
