//! Windows file semantics over the path layer, in plain Rust: what WinFsp's callbacks mean,
//! decided here so that `fs/winfsp.rs` only translates types and codes, and so that every
//! rule is tested on Linux against a real server (`tests/it/windows.rs`) and under Wine.
//!
//! The calls come in the order Windows makes them:
//!
//! - **Create** ([`WinFs::create`]) is called for a name that must be new: FILE_CREATE, and
//!   FILE_OPEN_IF / FILE_OVERWRITE_IF / FILE_SUPERSEDE when nothing is there. An existing
//!   name, in any case, is [`ErrorKind::AlreadyExists`] (STATUS_OBJECT_NAME_COLLISION).
//! - **Open** ([`WinFs::open`]) opens by path, case-insensitively, and reports the server's
//!   spelling (the normalized name); **Overwrite** ([`WinFs::overwrite`], for FILE_OVERWRITE
//!   and FILE_SUPERSEDE of an existing file) truncates it to 0.
//! - **SetDelete** ([`WinFs::set_delete`]) only marks: a folder that is not empty is
//!   refused with [`ErrorKind::NotEmpty`] (STATUS_DIRECTORY_NOT_EMPTY) and nothing is
//!   deleted. The DELETE is sent at **Cleanup** ([`WinFs::cleanup`]) of the handle that
//!   carries the mark. Cleanup has no status to return: a DELETE the server refuses leaves
//!   the file where it was (the listing still has it, so it reappears at once) and is
//!   reported in the log and on the desktop ([`super::Notice`]).
//! - Cleanup of a written file uploads it, as close() does on Linux. A failed upload cannot
//!   be reported to the program either: its data is kept for recovery as on Linux, logged,
//!   and told as a [`super::Notice`]; `davdrive status` lists it.
//! - **Close** ([`WinFs::close`]) ends the handle.
//! - **SetFileSize** with the allocation flag is a hint, not a truncate: a copy that sets
//!   1 GiB of allocation and then writes sequentially stays one streaming upload. Only an
//!   allocation below the file's size cuts it, as NTFS does.
//! - **SetBasicInfo**: zero times mean "unchanged"; times are not kept on a WebDAV server at
//!   all, so no time is sent anywhere ([`WinFs::set_basic_info`] makes no request).
//! - **ReadDirectory** pages: [`WinFs::read_directory`] returns the entries after a marker
//!   (the last name of the previous page), from one snapshot per handle that a rewind (no
//!   marker) renews. Folders other than the root start with `.` and `..`.
//! - **Named streams** (`file.txt:Zone.Identifier`, which browsers write after every
//!   download) are refused with [`ErrorKind::InvalidName`] before any request; `::$DATA`,
//!   the default stream, is the file itself.
//!
//! Lookups of names that are not there (`desktop.ini`, `Thumbs.db`, `autorun.inf`, which
//! Explorer asks for in every folder) are answered from the folder's listing: once it is
//! listed, they cost no request.
//!
//! Locks: [`WinHandle`]'s snapshot mutex is a leaf, taken alone and never across an await
//! (see `super::lock`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;

use super::error::{VfsError, VfsResult};
use super::inode::Ino;
use super::path::{IfExists, components};
use super::{Attr, Caller, OpenMode, Vfs};
use crate::dav::ErrorKind;

/// Who writes, as far as the core's close logic is concerned: Windows gives no lock owner,
/// and every cleanup of a written handle uploads (see `Vfs::close`).
const WINDOWS_CALLER: Caller = Caller {
    owner: Some(u64::MAX),
    pid: 0,
};

/// What Windows shows of a file or folder (FSP_FSCTL_FILE_INFO without the Windows types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WinInfo {
    pub dir: bool,
    pub size: u64,
    /// The read-only attribute (a read-only mount).
    pub read_only: bool,
    pub created: SystemTime,
    pub written: SystemTime,
    pub changed: SystemTime,
    /// The file index (the inode number: stable while the mount runs).
    pub index: u64,
    /// The hidden attribute: a name with a leading dot (`.git`), hidden as a Linux file
    /// manager hides it.
    pub hidden: bool,
}

impl WinInfo {
    /// With the hidden attribute that `name` (the last component) calls for.
    fn named(mut self, name: &str) -> Self {
        self.hidden = super::names::is_hidden(name);
        self
    }
}

impl From<&Attr> for WinInfo {
    fn from(a: &Attr) -> Self {
        WinInfo {
            dir: a.is_dir(),
            size: a.size,
            read_only: a.read_only(),
            created: a.crtime,
            written: a.mtime,
            changed: a.ctime,
            index: a.ino,
            hidden: false,
        }
    }
}

/// One entry of a folder, as ReadDirectory returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WinEntry {
    pub name: String,
    pub info: WinInfo,
}

/// What Windows asks of an open (from the granted access rights).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WinAccess {
    /// FILE_WRITE_DATA or FILE_APPEND_DATA was granted.
    pub write: bool,
}

/// An open file or folder (WinFsp's file context).
#[derive(Debug)]
pub struct WinHandle {
    fh: u64,
    ino: Ino,
    dir: bool,
    write: bool,
    /// Set by SetDelete; the DELETE is sent at cleanup.
    delete: AtomicBool,
    /// A folder's entries as the first page saw them (paging reads on from the marker).
    snapshot: Mutex<Option<Arc<Vec<WinEntry>>>>,
}

impl WinHandle {
    pub fn is_dir(&self) -> bool {
        self.dir
    }

    /// Whether SetDelete marked it for deletion at cleanup.
    pub fn delete_pending(&self) -> bool {
        self.delete.load(Ordering::SeqCst)
    }
}

/// The result of Create and Open: the handle, what to show of it, and the path as the
/// server spells it (WinFsp's normalized name, `\`-separated).
#[derive(Debug)]
pub struct WinOpened {
    pub handle: WinHandle,
    pub info: WinInfo,
    pub normalized: String,
}

/// Windows semantics over one core.
#[derive(Clone)]
pub struct WinFs {
    vfs: Arc<Vfs>,
}

impl WinFs {
    pub fn new(vfs: Arc<Vfs>) -> Self {
        WinFs { vfs }
    }

    pub fn vfs(&self) -> &Arc<Vfs> {
        &self.vfs
    }

    /// What GetSecurityByName needs: whether `path` exists, and its attributes.
    pub async fn info_by_name(&self, path: &str) -> VfsResult<WinInfo> {
        let path = plain_path(path)?;
        Ok(WinInfo::from(&self.vfs.stat_path(path).await?))
    }

    /// Create: a new file or folder at `path`; an existing name (any case) is a collision.
    pub async fn create(&self, path: &str, dir: bool) -> VfsResult<WinOpened> {
        let path = plain_path(path)?;
        if dir {
            self.vfs.mkdir_path(path).await?;
            return self.open(path, WinAccess::default()).await;
        }
        let (attr, opened) = self
            .vfs
            .create_path(path, file_mode(WinAccess { write: true }), IfExists::Fail)
            .await?;
        self.opened(path, attr, opened.fh, true).await
    }

    /// Open: the file or folder at `path`, found ignoring case.
    pub async fn open(&self, path: &str, access: WinAccess) -> VfsResult<WinOpened> {
        let path = plain_path(path)?;
        // A folder opened with write rights (FILE_ADD_FILE, as Windows opens a rename's
        // target folder) is a folder opened: it has no data to write.
        let access = if self.vfs.stat_path(path).await?.is_dir() {
            WinAccess::default()
        } else {
            access
        };
        let (attr, opened) = self.vfs.open_path(path, file_mode(access)).await?;
        let write = access.write && !attr.is_dir();
        self.opened(path, attr, opened.fh, write).await
    }

    async fn opened(&self, path: &str, attr: Attr, fh: u64, write: bool) -> VfsResult<WinOpened> {
        let normalized = match self.normalized(path).await {
            Ok(n) => n,
            Err(e) => {
                self.vfs.release_path(fh).await;
                return Err(e);
            }
        };
        Ok(WinOpened {
            handle: WinHandle {
                fh,
                ino: attr.ino,
                dir: attr.is_dir(),
                write,
                delete: AtomicBool::new(false),
                snapshot: Mutex::new(None),
            },
            info: WinInfo::from(&attr).named(last_name(&normalized)),
            normalized,
        })
    }

    /// `path` with every component as the server spells it, `\`-separated.
    async fn normalized(&self, path: &str) -> VfsResult<String> {
        let comps = components(path);
        let mut out = String::new();
        for i in 0..comps.len() {
            let prefix = comps[..=i].join("\\");
            out.push('\\');
            out.push_str(&self.vfs.spelling_of(&prefix).await?);
        }
        if out.is_empty() {
            out.push('\\');
        }
        Ok(out)
    }

    /// Overwrite (FILE_OVERWRITE, FILE_SUPERSEDE of an existing file): truncate to 0.
    pub async fn overwrite(&self, h: &WinHandle) -> VfsResult<WinInfo> {
        if h.dir {
            return Err(VfsError::new(
                ErrorKind::IsADirectory,
                "a folder cannot be overwritten",
            ));
        }
        self.set_size(h, 0).await
    }

    /// GetFileInfo.
    pub async fn info(&self, h: &WinHandle) -> VfsResult<WinInfo> {
        // A file being written: what the session shows, without asking the server.
        let attr = match self.vfs.written_attr(h.fh) {
            Some(a) => a,
            None => self.vfs.getattr(h.ino).await?,
        };
        let info = WinInfo::from(&attr);
        let path = self.vfs.handle_path(h.fh).unwrap_or_default();
        Ok(info.named(last_name(&path)))
    }

    /// Read up to `len` bytes at `offset`; empty at or past the end.
    pub async fn read(&self, h: &WinHandle, offset: u64, len: u32) -> VfsResult<Bytes> {
        Ok(self.vfs.read(h.fh, offset, len).await?.to_bytes())
    }

    /// Write `data` at `offset`, or at the end (`to_end`, FILE_APPEND_DATA semantics).
    /// `constrained` (paging I/O) never extends the file: what lies past the end is dropped.
    /// Returns the bytes taken and the file's new state.
    pub async fn write(
        &self,
        h: &WinHandle,
        data: &[u8],
        offset: u64,
        to_end: bool,
        constrained: bool,
    ) -> VfsResult<(u32, WinInfo)> {
        if !h.write {
            return Err(VfsError::new(
                ErrorKind::PermissionDenied,
                "the file was not opened for writing",
            ));
        }
        // The size only where it matters, from the session: a write never waits for the
        // server's listing.
        let size = if to_end || constrained {
            self.vfs
                .written_attr(h.fh)
                .map(|a| a.size)
                .ok_or_else(|| VfsError::new(ErrorKind::Io, "no write session for this handle"))?
        } else {
            0
        };
        let offset = if to_end { size } else { offset };
        let data = if constrained {
            if offset >= size {
                &[][..]
            } else {
                let room = usize::try_from(size - offset).unwrap_or(usize::MAX);
                &data[..data.len().min(room)]
            }
        } else {
            data
        };
        let mut done = 0usize;
        while done < data.len() {
            let n = self
                .vfs
                .write(
                    h.fh,
                    offset + done as u64,
                    Bytes::copy_from_slice(&data[done..]),
                    WINDOWS_CALLER,
                )
                .await?;
            if n == 0 {
                return Err(VfsError::new(ErrorKind::Io, "the write took no bytes"));
            }
            done += n as usize;
        }
        let info = self.info(h).await?;
        Ok((u32::try_from(done).unwrap_or(u32::MAX), info))
    }

    /// SetFileSize: the end of file moves to `size`.
    pub async fn set_size(&self, h: &WinHandle, size: u64) -> VfsResult<WinInfo> {
        let set = super::SetAttr {
            size: Some(size),
            other: false,
        };
        let attr = self
            .vfs
            .setattr(h.ino, h.write.then_some(h.fh), set)
            .await?;
        let path = self.vfs.handle_path(h.fh).unwrap_or_default();
        Ok(WinInfo::from(&attr).named(last_name(&path)))
    }

    /// SetFileSize with the allocation flag: a hint of the final size, which changes nothing
    /// unless it is below the file's size (then the file is cut to it, as on NTFS).
    pub async fn set_allocation(&self, h: &WinHandle, allocation: u64) -> VfsResult<WinInfo> {
        let info = self.info(h).await?;
        if allocation < info.size {
            return self.set_size(h, allocation).await;
        }
        Ok(info)
    }

    /// SetBasicInfo: attributes and times. A WebDAV server keeps neither, so nothing is sent;
    /// a zero time means "unchanged" anyway. Returns what the file shows.
    pub async fn set_basic_info(&self, h: &WinHandle) -> VfsResult<WinInfo> {
        self.info(h).await
    }

    /// SetDelete: marks (or unmarks) the handle's file for deletion at cleanup. A folder that
    /// is not empty is refused and nothing is marked.
    pub async fn set_delete(&self, h: &WinHandle, delete: bool) -> VfsResult<()> {
        if delete {
            if self.vfs.config().read_only {
                return Err(VfsError::new(
                    ErrorKind::ReadOnly,
                    "this mount is read-only",
                ));
            }
            if h.dir && !self.vfs.readdir(h.fh, 0, 1).await?.is_empty() {
                // The handle's listing may be older than the folder: ask again.
                let fresh = self.vfs.opendir_quietly(h.ino).await?;
                let entries = self.vfs.readdir(fresh, 0, 1).await;
                self.vfs.releasedir(fresh);
                if !entries?.is_empty() {
                    return Err(VfsError::new(
                        ErrorKind::NotEmpty,
                        "the folder is not empty",
                    ));
                }
            }
        }
        h.delete.store(delete, Ordering::SeqCst);
        Ok(())
    }

    /// Cleanup: the last handle of this open went away. Sends the DELETE when the handle is
    /// marked (`delete`, WinFsp's FspCleanupDelete), else uploads what was written. Nothing
    /// can be returned to the program: a failure is logged, told as a notice, and returned
    /// here only for the tests.
    pub async fn cleanup(&self, h: &WinHandle, delete: bool) -> Option<VfsError> {
        if delete {
            let Some(path) = self.vfs.handle_path(h.fh) else {
                return None; // deleted already, by another handle or another program
            };
            let r = if h.dir {
                self.vfs.rmdir_path(&path).await
            } else {
                self.vfs.unlink_path(&path).await
            };
            match r {
                Ok(()) => return None,
                Err(e) => {
                    tracing::warn!(
                        "{path}: the server refused to delete it ({e}); it is still there"
                    );
                    let _ = self.vfs.notices.send(super::Notice {
                        path: path.clone(),
                        error: format!("could not be deleted: {e}"),
                    });
                    self.vfs.invalidate(h.ino);
                    // Not deleted: what was written still goes to the server.
                    if let Some(up) = self.upload(h).await {
                        return Some(up);
                    }
                    return Some(e);
                }
            }
        }
        self.upload(h).await
    }

    async fn upload(&self, h: &WinHandle) -> Option<VfsError> {
        if !h.write {
            return None;
        }
        match self.vfs.close(h.fh, WINDOWS_CALLER).await {
            Ok(()) => None,
            Err(e) => {
                let path = self
                    .vfs
                    .handle_path(h.fh)
                    .unwrap_or_else(|| format!("inode {}", h.ino));
                tracing::warn!(
                    "{path}: the upload at close failed ({e}); Windows cannot tell the program, \
                     so the data is kept for recovery: `davdrive status` lists it"
                );
                let _ = self.vfs.notices.send(super::Notice {
                    path,
                    error: e.to_string(),
                });
                Some(e)
            }
        }
    }

    /// Flush (FlushFileBuffers): what was written so far goes to the server now.
    pub async fn flush(&self, h: &WinHandle) -> VfsResult<()> {
        if !h.write {
            return Ok(());
        }
        self.vfs.flush(h.fh).await
    }

    /// Close: the handle ends. The returned future finishes what the core still does for it
    /// (an upload that cleanup did not wait for).
    pub fn close(&self, h: WinHandle) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.vfs.release_path(h.fh)
    }

    /// ReadDirectory: the entries of folder `h` after `marker` (every entry without one), in
    /// one order that paging can rely on (ignoring case, then by exact spelling). A folder
    /// other than the root starts with `.` and `..`.
    pub async fn read_directory(
        &self,
        h: &WinHandle,
        marker: Option<&str>,
    ) -> VfsResult<Arc<[WinEntry]>> {
        if !h.dir {
            return Err(VfsError::new(
                ErrorKind::NotADirectory,
                "not a folder: cannot list it",
            ));
        }
        let snapshot = match (marker, self.snapshot(h)) {
            (Some(_), Some(s)) => s,
            _ => {
                let s = Arc::new(self.entries(h).await?);
                if let Ok(mut slot) = h.snapshot.lock() {
                    *slot = Some(s.clone());
                }
                s
            }
        };
        let from = match marker {
            None => 0,
            Some(m) => match snapshot.iter().position(|e| e.name == m) {
                Some(i) => i + 1,
                // A marker no longer listed (deleted between pages): go on after where it
                // would sort.
                None => snapshot.partition_point(|e| order(&e.name, m).is_le()),
            },
        };
        Ok(snapshot[from.min(snapshot.len())..].into())
    }

    fn snapshot(&self, h: &WinHandle) -> Option<Arc<Vec<WinEntry>>> {
        h.snapshot.lock().ok().and_then(|s| s.clone())
    }

    async fn entries(&self, h: &WinHandle) -> VfsResult<Vec<WinEntry>> {
        let fresh = self.vfs.opendir(h.ino).await?;
        let mut all = Vec::new();
        let listed = loop {
            match self.vfs.readdir(fresh, all.len(), 4096).await {
                Ok(page) if page.is_empty() => break Ok(()),
                Ok(page) => all.extend(page),
                Err(e) => break Err(e),
            }
        };
        self.vfs.releasedir(fresh);
        listed?;
        let mut out: Vec<WinEntry> = all
            .into_iter()
            .map(|e| WinEntry {
                info: WinInfo::from(&e.attr).named(&e.name),
                name: e.name,
            })
            .collect();
        out.sort_by(|a, b| order(&a.name, &b.name));
        if h.ino != super::ROOT_INO {
            let me = self.info(h).await?;
            let parent = match self.vfs.getattr(self.vfs.parent_of(h.ino)).await {
                Ok(a) => WinInfo::from(&a),
                Err(_) => me.clone(),
            };
            out.splice(
                0..0,
                [
                    WinEntry {
                        name: ".".into(),
                        info: me,
                    },
                    WinEntry {
                        name: "..".into(),
                        info: parent,
                    },
                ],
            );
        }
        Ok(out)
    }

    /// Rename `from` to `to` (both paths), replacing an existing file only when asked.
    pub async fn rename(&self, from: &str, to: &str, replace: bool) -> VfsResult<()> {
        let (from, to) = (plain_path(from)?, plain_path(to)?);
        self.vfs.rename_path(from, to, replace).await
    }

    /// The volume's size and free space in bytes (RFC 4331 quota, or a large number).
    pub async fn volume(&self) -> VfsResult<(u64, u64)> {
        let s = self.vfs.statfs().await?;
        let b = u64::from(s.block_size);
        Ok((s.blocks.saturating_mul(b), s.blocks_free.saturating_mul(b)))
    }
}

/// The order of a folder's entries: ignoring case first, so that Windows' own sorting and
/// ours agree on most names; the exact spelling breaks ties (a server may list both `a` and
/// `A`). `.` and `..` come first.
fn order(a: &str, b: &str) -> std::cmp::Ordering {
    let dots = |s: &str| match s {
        "." => 0,
        ".." => 1,
        _ => 2,
    };
    dots(a)
        .cmp(&dots(b))
        .then_with(|| a.to_lowercase().cmp(&b.to_lowercase()))
        .then_with(|| a.cmp(b))
}

/// The last component of a path (either separator).
fn last_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or("")
}

/// The open mode for Windows access rights. A handle that writes may also be read through:
/// Windows' cache manager reads pages of a file open for writing through its handle.
fn file_mode(access: WinAccess) -> OpenMode {
    OpenMode {
        read: true,
        write: access.write,
        truncate: false,
        append: false,
    }
}

/// `path` without the default stream's suffix (`::$DATA`); a named stream is refused.
fn plain_path(path: &str) -> VfsResult<&str> {
    let plain = path
        .strip_suffix("::$DATA")
        .or_else(|| path.strip_suffix("::$data"))
        .unwrap_or(path);
    if let Some(i) = plain.find(':') {
        return Err(VfsError::new(
            ErrorKind::InvalidName,
            format!(
                "{path}: named streams ({}) are not supported on a WebDAV drive",
                &plain[i..]
            ),
        ));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_refused_and_the_default_stream_is_the_file() {
        assert_eq!(plain_path("\\a.txt").ok(), Some("\\a.txt"));
        assert_eq!(plain_path("\\a.txt::$DATA").ok(), Some("\\a.txt"));
        for named in [
            "\\a.txt:Zone.Identifier",
            "\\a.txt:Zone.Identifier:$DATA",
            "\\dir:x\\a.txt",
        ] {
            let e = plain_path(named).expect_err(named);
            assert_eq!(e.kind, ErrorKind::InvalidName, "{named}");
        }
    }

    #[test]
    fn entries_sort_ignoring_case_then_by_spelling_with_dots_first() {
        let mut names = vec!["b", "A", "a", "..", "C", "."];
        names.sort_by(|a, b| order(a, b));
        assert_eq!(names, [".", "..", "A", "a", "b", "C"]);
    }

    #[test]
    fn a_write_handle_can_be_read_through() {
        let m = file_mode(WinAccess { write: true });
        assert!(m.read && m.write && !m.truncate && !m.append);
        assert!(!file_mode(WinAccess::default()).write);
    }
}
