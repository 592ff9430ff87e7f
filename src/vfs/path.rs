//! The path-based layer, for frontends that open by path (WinFsp: `Create`, `Open`,
//! `Rename`, `GetSecurityByName` all name whole paths) rather than walking inodes.
//!
//! Every call here resolves a local path such as `\a\b.txt` or `/a/b.txt` component by
//! component through the same listings as the inode API, then calls the inode API with each
//! component spelled exactly as the listing has it. So:
//!
//! - Lookup is case-insensitive and case-preserving when the name policy says so
//!   ([`super::NamePolicy::case_insensitive`], on for Windows): `A.TXT` opens `a.txt`, and
//!   the returned name is the server's spelling. An exact match always wins over a
//!   case-folded one (a server may list both `a.txt` and `A.txt`).
//! - [`Vfs::open_path`] and [`Vfs::create_path`] count a reference on the node they open,
//!   under the same hold of the inode table as the lookup (a listing refreshed between the
//!   lookup and the open cannot drop the node), and [`Vfs::release_path`] gives it back.
//! - [`Vfs::handle_path`] is where an open file is now: renames move open handles along.
//!
//! Owns: the references of path-opened handles (`Vfs::path_refs`). Lock order: it takes
//! `path_refs` alone, never while holding the table or the handles (see `super::lock`).

use std::sync::Arc;

use super::error::{VfsError, VfsResult};
use super::inode::{FileKind, Ino, ROOT_INO};
use super::{Attr, Handle, OpenMode, Opened, Vfs};
use crate::dav::ErrorKind;

/// What to do when the name to create exists already (Windows create dispositions map onto
/// these: FILE_CREATE → `Fail`, FILE_OPEN_IF → `Open`, FILE_OVERWRITE_IF / FILE_SUPERSEDE →
/// `Truncate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    /// Fail with [`ErrorKind::AlreadyExists`].
    Fail,
    /// Open the existing file as it is.
    Open,
    /// Open the existing file and truncate it to 0.
    Truncate,
}

/// A path split into its components (either separator; empty components and `.` ignored).
pub fn components(path: &str) -> Vec<&str> {
    path.split(['/', '\\'])
        .filter(|s| !s.is_empty() && *s != ".")
        .collect()
}

impl Vfs {
    /// The name of `parent`'s child `name` as the listing spells it: `name` itself when
    /// listed so, else (case-insensitive policy) the one entry equal to it ignoring case.
    /// `None` when there is no such entry.
    pub(super) async fn spelled(&self, parent: Ino, name: &str) -> VfsResult<Option<String>> {
        let listing = self.listing(parent).await?;
        if listing.by_name.contains_key(name) {
            return Ok(Some(name.to_owned()));
        }
        if !self.cfg.names.case_insensitive {
            return Ok(None);
        }
        let folded = fold(name);
        Ok(listing
            .order
            .iter()
            .find(|(n, _)| fold(n) == folded)
            .map(|(n, _)| n.clone()))
    }

    /// The directory that holds the last component of `path`, and that component as the
    /// caller wrote it. Fails for the root itself.
    async fn parent_and_name<'p>(&self, path: &'p str) -> VfsResult<(Ino, &'p str)> {
        let comps = components(path);
        let Some((last, dirs)) = comps.split_last() else {
            return Err(VfsError::new(
                ErrorKind::InvalidName,
                "the root of the mount cannot be created, removed or renamed",
            ));
        };
        let mut dir = ROOT_INO;
        for name in dirs {
            let spelled = self.spelled(dir, name).await?.ok_or_else(|| {
                VfsError::new(
                    ErrorKind::PathNotFound,
                    format!("{path}: no folder {name:?} on the way"),
                )
            })?;
            let attr = self.child_attr(dir, &spelled).await?;
            if attr.kind != FileKind::Directory {
                return Err(VfsError::new(
                    ErrorKind::NotADirectory,
                    format!("{path}: {name:?} is not a directory"),
                ));
            }
            dir = attr.ino;
        }
        Ok((dir, last))
    }

    /// The attributes at `path`, without a reference. Case-insensitive where the policy is.
    pub async fn stat_path(&self, path: &str) -> VfsResult<Attr> {
        if components(path).is_empty() {
            return self.getattr(ROOT_INO).await;
        }
        let (dir, name) = self.parent_and_name(path).await?;
        let spelled = self
            .spelled(dir, name)
            .await?
            .ok_or_else(|| VfsError::not_found(path))?;
        self.child_attr(dir, &spelled).await
    }

    /// The name of the entry at `path` as the server spells it (for a case-insensitive
    /// frontend that must report the real spelling).
    pub async fn spelling_of(&self, path: &str) -> VfsResult<String> {
        let (dir, name) = self.parent_and_name(path).await?;
        self.spelled(dir, name)
            .await?
            .ok_or_else(|| VfsError::not_found(path))
    }

    /// Opens the file or directory at `path` and holds a reference to it until
    /// [`Vfs::release_path`]. A directory gets a directory handle (see [`Vfs::opendir`]).
    pub async fn open_path(
        self: &Arc<Self>,
        path: &str,
        mode: OpenMode,
    ) -> VfsResult<(Attr, Opened)> {
        let attr = if components(path).is_empty() {
            self.getattr(ROOT_INO).await?
        } else {
            let (dir, name) = self.parent_and_name(path).await?;
            let spelled = self
                .spelled(dir, name)
                .await?
                .ok_or_else(|| VfsError::not_found(path))?;
            // Counted under the same hold of the table as the attribute read.
            self.lookup(dir, &spelled).await?
        };
        let opened = match attr.kind {
            FileKind::Directory if mode.write || mode.truncate => Err(VfsError::new(
                ErrorKind::IsADirectory,
                format!("{path}: is a directory"),
            )),
            FileKind::Directory => self.opendir(attr.ino).await.map(|fh| Opened {
                fh,
                keep_cache: false,
                direct: false,
            }),
            FileKind::File => self.open(attr.ino, mode).await,
        };
        match opened {
            Ok(o) => {
                self.hold(o.fh, attr.ino, attr.kind);
                let attr = self.fresh_attr(attr);
                Ok((attr, o))
            }
            Err(e) => {
                self.forget(attr.ino, 1);
                Err(e)
            }
        }
    }

    /// Creates the file at `path` and opens it, holding a reference until
    /// [`Vfs::release_path`]. When the name exists (in any case, under a case-insensitive
    /// policy), `if_exists` decides.
    pub async fn create_path(
        self: &Arc<Self>,
        path: &str,
        mode: OpenMode,
        if_exists: IfExists,
    ) -> VfsResult<(Attr, Opened)> {
        let (dir, name) = self.parent_and_name(path).await?;
        if self.spelled(dir, name).await?.is_some() {
            let mode = match if_exists {
                IfExists::Fail => {
                    return Err(VfsError::new(
                        ErrorKind::AlreadyExists,
                        format!("{path}: exists already"),
                    ));
                }
                IfExists::Open => mode,
                IfExists::Truncate => OpenMode {
                    write: true,
                    truncate: true,
                    ..mode
                },
            };
            return self.open_path(path, mode).await;
        }
        let (attr, opened) = self.create(dir, name, mode).await?;
        self.remember(attr.ino);
        self.hold(opened.fh, attr.ino, attr.kind);
        Ok((attr, opened))
    }

    /// Makes the directory `path`.
    pub async fn mkdir_path(self: &Arc<Self>, path: &str) -> VfsResult<Attr> {
        let (dir, name) = self.parent_and_name(path).await?;
        if self.spelled(dir, name).await?.is_some() {
            return Err(VfsError::new(
                ErrorKind::AlreadyExists,
                format!("{path}: exists already"),
            ));
        }
        self.mkdir(dir, name).await
    }

    /// Deletes the file at `path` (open handles keep reading and writing it, as on POSIX).
    pub async fn unlink_path(self: &Arc<Self>, path: &str) -> VfsResult<()> {
        let (dir, name) = self.parent_and_name(path).await?;
        let spelled = self
            .spelled(dir, name)
            .await?
            .ok_or_else(|| VfsError::not_found(path))?;
        self.unlink(dir, &spelled).await
    }

    /// Removes the empty directory at `path`.
    pub async fn rmdir_path(&self, path: &str) -> VfsResult<()> {
        let (dir, name) = self.parent_and_name(path).await?;
        let spelled = self
            .spelled(dir, name)
            .await?
            .ok_or_else(|| VfsError::not_found(path))?;
        self.rmdir(dir, &spelled).await
    }

    /// Moves `from` to `to`. With `replace`, an existing file at `to` is replaced; without,
    /// the move fails with [`ErrorKind::AlreadyExists`]. A rename that changes only the case
    /// of a name is sent to the server as such (also under a case-insensitive policy, where
    /// `to` then names `from` itself).
    pub async fn rename_path(
        self: &Arc<Self>,
        from: &str,
        to: &str,
        replace: bool,
    ) -> VfsResult<()> {
        let (src_dir, src_name) = self.parent_and_name(from).await?;
        let src = self
            .spelled(src_dir, src_name)
            .await?
            .ok_or_else(|| VfsError::not_found(from))?;
        let (dst_dir, dst_name) = self.parent_and_name(to).await?;
        let existing = self.spelled(dst_dir, dst_name).await?;
        let case_only = src_dir == dst_dir && existing.as_deref() == Some(src.as_str());
        let target = match existing {
            // The same entry under another case: rename to the spelling asked for.
            Some(_) if case_only => dst_name.to_owned(),
            Some(e) if !replace => {
                return Err(VfsError::new(
                    ErrorKind::AlreadyExists,
                    format!("{to}: exists already ({e})"),
                ));
            }
            // Replace what is there, under its own spelling.
            Some(e) => e,
            None => dst_name.to_owned(),
        };
        if case_only && target == src {
            return Ok(());
        }
        self.rename(src_dir, &src, dst_dir, &target, !replace && !case_only)
            .await
    }

    /// The local path (`/`-separated, from the mount's root) where the file or directory
    /// open as `fh` is now; renames move it. `None` for an unknown handle or a deleted file.
    pub fn handle_path(&self, fh: u64) -> Option<String> {
        let ino = self.handle_ino(fh)?;
        let t = self.table();
        let n = t.get(ino)?;
        if n.gone {
            return None;
        }
        let mut out = String::new();
        for seg in n.path.segments() {
            out.push('/');
            out.push_str(&self.cfg.names.to_local(seg));
        }
        if out.is_empty() {
            out.push('/');
        }
        Some(out)
    }

    /// The inode behind an open file or directory handle (also of a deleted file).
    pub fn handle_ino(&self, fh: u64) -> Option<Ino> {
        if let Some((ino, _)) = self.path_refs().get(&fh) {
            return Some(*ino);
        }
        match self.handle(fh).ok()? {
            Handle::Read(r) => Some(r.ino()),
            Handle::Write(w) | Handle::Reading(w) => Some(w.ino()),
        }
    }

    /// Closes a handle opened by [`Vfs::open_path`] or [`Vfs::create_path`] and gives back
    /// its reference. As [`Vfs::release`], the bookkeeping is done before this returns and
    /// the returned future does the upload.
    pub fn release_path(
        self: &Arc<Self>,
        fh: u64,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let held = self.path_refs().remove(&fh);
        let this = self.clone();
        let upload = match held {
            Some((_, FileKind::Directory)) => {
                self.releasedir(fh);
                None
            }
            _ => Some(self.release(fh)),
        };
        async move {
            if let Some(upload) = upload {
                upload.await;
            }
            if let Some((ino, _)) = held {
                this.forget(ino, 1);
            }
        }
    }

    fn hold(&self, fh: u64, ino: Ino, kind: FileKind) {
        self.path_refs().insert(fh, (ino, kind));
    }

    fn path_refs(
        &self,
    ) -> super::lock::RankedGuard<'_, std::collections::HashMap<u64, (Ino, FileKind)>> {
        self.path_refs.lock()
    }

    /// `attr` with what the table shows now (an open write session's size).
    fn fresh_attr(&self, attr: Attr) -> Attr {
        let t = self.table();
        match t.get(attr.ino).and_then(|n| n.meta.as_ref()) {
            Some(m) => self.shown(&t, attr.ino, m),
            None => attr,
        }
    }
}

/// Case folding for name comparison: Unicode lowercase (Windows' own table differs for a
/// few characters; servers that list two names equal under either are rare).
fn fold(name: &str) -> String {
    name.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_take_either_separator() {
        assert_eq!(components("\\a\\b.txt"), ["a", "b.txt"]);
        assert_eq!(components("/a//./b/"), ["a", "b"]);
        assert!(components("\\").is_empty());
        assert!(components("").is_empty());
    }

    #[test]
    fn folding_ignores_case_only() {
        assert_eq!(fold("A.TXT"), fold("a.txt"));
        assert_eq!(fold("ÄRZTE"), fold("ärzte"));
        assert_ne!(fold("a.txt"), fold("a.txt "));
    }
}
