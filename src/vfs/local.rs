//! Files that stay on this machine: the litter operating systems leave in every folder they
//! touch (`.DS_Store`, `._*` AppleDouble files, `Thumbs.db`, `desktop.ini`).
//!
//! Uploading them clutters the share for everybody, and on a drop box such as Orthanc's
//! `uploads/` they are rejected or ingested as garbage. By default they are kept in the
//! mount's cache directory instead: they can be created, written, read, listed, renamed
//! among themselves and deleted like any file, for the lifetime of the mount, and never
//! reach the server. `--upload-os-files` turns this off.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::dav::DavPath;

/// Whether `name` is OS litter that stays local by default.
pub fn is_os_litter(name: &str) -> bool {
    name == ".DS_Store"
        || (name.starts_with("._") && name.len() > 2)
        || name.eq_ignore_ascii_case("Thumbs.db")
        || name.eq_ignore_ascii_case("ehthumbs.db")
        || name.eq_ignore_ascii_case("desktop.ini")
}

/// One local-only file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LocalEntry {
    pub data: PathBuf,
    pub size: u64,
    pub mtime: SystemTime,
}

#[derive(Debug)]
pub(super) struct LocalFiles {
    dir: PathBuf,
    files: Mutex<HashMap<DavPath, LocalEntry>>,
    seq: AtomicU64,
}

impl Drop for LocalFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl LocalFiles {
    /// Local files live in `dir`, which is this mount's own and emptied: they last as long
    /// as the mount, and go with it.
    pub(super) fn new(dir: PathBuf) -> std::io::Result<Self> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(LocalFiles {
            dir,
            files: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<DavPath, LocalEntry>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, path: &DavPath) -> Option<LocalEntry> {
        self.map().get(path).cloned()
    }

    /// Creates (or truncates) the local file for `path`.
    pub(super) fn create(&self, path: &DavPath) -> std::io::Result<LocalEntry> {
        if let Some(e) = self.get(path) {
            std::fs::File::create(&e.data)?;
            let e = LocalEntry {
                size: 0,
                mtime: SystemTime::now(),
                ..e
            };
            self.map().insert(path.clone(), e.clone());
            return Ok(e);
        }
        let data = self
            .dir
            .join(format!("{}.data", self.seq.fetch_add(1, Ordering::Relaxed)));
        std::fs::File::create(&data)?;
        let e = LocalEntry {
            data,
            size: 0,
            mtime: SystemTime::now(),
        };
        self.map().insert(path.clone(), e.clone());
        Ok(e)
    }

    pub(super) fn set_size(&self, path: &DavPath, size: u64) {
        if let Some(e) = self.map().get_mut(path) {
            e.size = size;
            e.mtime = SystemTime::now();
        }
    }

    pub(super) fn remove(&self, path: &DavPath) -> bool {
        match self.map().remove(path) {
            Some(e) => {
                let _ = std::fs::remove_file(e.data);
                true
            }
            None => false,
        }
    }

    pub(super) fn rename(&self, from: &DavPath, to: &DavPath) -> bool {
        let mut m = self.map();
        match m.remove(from) {
            Some(e) => {
                if let Some(old) = m.insert(to.clone(), e) {
                    let _ = std::fs::remove_file(old.data);
                }
                true
            }
            None => false,
        }
    }

    /// The local files directly in `dir`: (name, entry).
    pub(super) fn children(&self, dir: &DavPath) -> Vec<(String, DavPath, LocalEntry)> {
        self.map()
            .iter()
            .filter(|(p, _)| p.is_child_of(dir))
            .filter_map(|(p, e)| Some((p.name()?.to_owned(), p.clone(), e.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn litter_names() {
        for n in [
            ".DS_Store",
            "._photo.jpg",
            "Thumbs.db",
            "thumbs.db",
            "desktop.ini",
            "Desktop.ini",
        ] {
            assert!(is_os_litter(n), "{n}");
        }
        for n in [
            "._",
            "DS_Store",
            "report.ini",
            "thumbs.db.bak",
            ".directory",
            "a.txt",
        ] {
            assert!(!is_os_litter(n), "{n}");
        }
    }
}
