//! The mount's cache directory: journals of uploads in flight, spool files of random writes,
//! and the recovery folder where data that could not be uploaded is kept.
//!
//! Layout, below `<cache>/davdrive/<mount key>/` (mode 0700):
//!
//! ```text
//! journal/<id>.data   bytes of a streaming upload, written before they are sent
//! journal/<id>.info   what the data is: server URL and path (a text file)
//! spool/<id>.data     the local copy of a file being modified at random offsets
//! recovery/<time>-<name>        data of an upload that failed for good
//! recovery/<time>-<name>.info   where it was going and why it failed
//! ```
//!
//! Journal and spool files are deleted once the server acknowledged the data. Nothing in the
//! recovery folder is ever deleted by davdrive; `davdrive status` lists it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::dav::DavPath;

/// The cache directory of one mount.
#[derive(Debug)]
pub struct CacheDir {
    root: PathBuf,
    url: String,
    seq: AtomicU64,
    /// Journals created ahead (see [`CacheDir::spare_maker`]).
    spares: Spares,
}

/// Empty journal files (an empty `.info` beside each) created ahead, off the path of the
/// upload that will use one: creating the two files when a file is created on the mount cost
/// about 0.4 ms of each small file's copy (ext4 allocating inodes, docs/PERFORMANCE.md).
/// Every journal is used once and deleted after its upload. A spare is empty, so one left by
/// a davdrive that stopped is discarded at the next start like any empty journal.
type Spares = std::sync::Arc<std::sync::Mutex<Vec<PathBuf>>>;

/// Spare journals kept ready.
const SPARES: usize = 4;

/// A file kept in a recovery folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub data: PathBuf,
    pub info: String,
}

fn private_dir(p: &Path) -> io::Result<()> {
    std::fs::create_dir_all(p)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// `$XDG_CACHE_HOME/davdrive`, or `~/.cache/davdrive`, or the system temp dir.
pub fn default_base() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("davdrive");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache").join("davdrive");
    }
    if let Some(h) = std::env::var_os("LOCALAPPDATA").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join("davdrive");
    }
    std::env::temp_dir().join("davdrive")
}

/// A stable directory name for a mount of `url` (without userinfo) by `user`.
pub fn mount_key(url: &str, user: Option<&str>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in url.bytes().chain([0]).chain(user.unwrap_or("").bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let host: String = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    format!("{host}-{h:016x}")
}

fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // UTC date and time from days since the epoch (no time zone database needed).
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

impl CacheDir {
    /// Opens (creating) the cache directory `root` of a mount of `url`.
    pub fn open(root: PathBuf, url: &str) -> io::Result<Self> {
        for sub in ["", "journal", "spool", "recovery"] {
            private_dir(&root.join(sub))?;
        }
        Ok(CacheDir {
            root,
            url: url.to_owned(),
            seq: AtomicU64::new(0),
            spares: Spares::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn recovery_dir(&self) -> PathBuf {
        self.root.join("recovery")
    }

    fn unique(&self) -> String {
        format!(
            "{}-{}-{}",
            std::process::id(),
            timestamp(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A new journal file for an upload of `target` (a spare one if there is one); its
    /// `.info` names the target.
    pub fn new_journal(&self, target: &DavPath) -> io::Result<(PathBuf, std::fs::File)> {
        let info = format!("url={}\npath={target}\n", self.url);
        loop {
            let Some(data) = self.spares.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                break;
            };
            let taken = std::fs::OpenOptions::new()
                .write(true)
                .open(data.with_extension("info"))
                .and_then(|mut f| std::io::Write::write_all(&mut f, info.as_bytes()))
                .and_then(|()| {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&data)
                });
            match taken {
                Ok(file) => return Ok((data, file)),
                Err(_) => self.discard(&data),
            }
        }
        let id = self.unique();
        let data = self.root.join("journal").join(format!("{id}.data"));
        std::fs::write(
            self.root.join("journal").join(format!("{id}.info")),
            format!("url={}\npath={target}\n", self.url),
        )?;
        let file = create_private_file(&data)?;
        Ok((data, file))
    }

    /// A new, empty spool file, open for reading and writing.
    pub fn new_spool(&self) -> io::Result<(PathBuf, std::fs::File)> {
        let data = self
            .root
            .join("spool")
            .join(format!("{}.data", self.unique()));
        let file = create_private_file(&data)?;
        Ok((data, file))
    }

    /// Moves journal and spool files left by a davdrive that stopped without finishing
    /// (crash, kill -9, power loss) into the recovery folder. Returns where they went.
    pub fn recover_leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for sub in ["journal", "spool"] {
            let Ok(rd) = std::fs::read_dir(self.root.join(sub)) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "data") {
                    continue;
                }
                if e.metadata().is_ok_and(|m| m.len() == 0) {
                    self.discard(&p);
                    continue;
                }
                let info = std::fs::read_to_string(p.with_extension("info")).unwrap_or_default();
                let target = info
                    .lines()
                    .find_map(|l| l.strip_prefix("path="))
                    .and_then(|t| DavPath::parse(t).ok())
                    .unwrap_or_default();
                let reason = "left behind by a davdrive that stopped before the upload finished";
                if let Ok(kept) = self.recover(&p, &target, reason) {
                    out.push(kept);
                }
            }
        }
        out
    }

    /// Whether fewer than enough spare journals are ready.
    pub fn needs_spares(&self) -> bool {
        self.spares.lock().unwrap_or_else(|e| e.into_inner()).len() < SPARES
    }

    /// Work that creates spare journals until enough are ready, for a thread that is not on
    /// an upload's path (the journal writer runs it between journal writes).
    pub fn spare_maker(&self) -> impl FnOnce() + Send + 'static {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let (spares, dir) = (self.spares.clone(), self.root.join("journal"));
        move || {
            while spares.lock().unwrap_or_else(|e| e.into_inner()).len() < SPARES {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let id = format!(
                    "{}-{}-{nanos:08x}-s{}",
                    std::process::id(),
                    timestamp(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                );
                let data = dir.join(format!("{id}.data"));
                let info = data.with_extension("info");
                // Both names new (`create_new`): a collision removes nothing of another's.
                if create_private_file(&info).is_err() {
                    return;
                }
                if create_private_file(&data).is_err() {
                    let _ = std::fs::remove_file(&info);
                    return;
                }
                spares.lock().unwrap_or_else(|e| e.into_inner()).push(data);
            }
        }
    }

    /// Deletes a journal or spool file and its `.info`.
    pub fn discard(&self, data: &Path) {
        let _ = std::fs::remove_file(data);
        let _ = std::fs::remove_file(data.with_extension("info"));
    }

    /// Moves `data` into the recovery folder with a note of where it was going and why.
    /// Returns where it is now.
    pub fn recover(&self, data: &Path, target: &DavPath, reason: &str) -> io::Result<PathBuf> {
        let name = target.name().unwrap_or("unnamed");
        let safe: String = name
            .chars()
            .map(|c| {
                if c == '/' || c == '\\' || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .take(120)
            .collect();
        let dest = self.recovery_dir().join(format!(
            "{}-{}-{safe}",
            timestamp(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        if std::fs::rename(data, &dest).is_err() {
            std::fs::copy(data, &dest)?;
            let _ = std::fs::remove_file(data);
        }
        let _ = std::fs::remove_file(data.with_extension("info"));
        let info = format!(
            "url={}\npath={target}\nreason={reason}\nsaved={}\n",
            self.url,
            timestamp()
        );
        let mut info_path = dest.clone().into_os_string();
        info_path.push(".info");
        std::fs::write(PathBuf::from(info_path), info)?;
        Ok(dest)
    }
}

/// Creates `p` (it must not exist), readable and writable by the user only, and opens it.
fn create_private_file(p: &Path) -> io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(p)
}

/// Every file in the recovery folders below `base` (all mounts), oldest first.
pub fn list_recovered(base: &Path) -> Vec<Recovered> {
    let mut out = Vec::new();
    let Ok(mounts) = std::fs::read_dir(base) else {
        return out;
    };
    for m in mounts.flatten() {
        let Ok(files) = std::fs::read_dir(m.path().join("recovery")) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "info") {
                continue;
            }
            let mut info_path = p.clone().into_os_string();
            info_path.push(".info");
            let info = std::fs::read_to_string(PathBuf::from(info_path)).unwrap_or_default();
            out.push(Recovered { data: p, info });
        }
    }
    out.sort_by(|a, b| a.data.file_name().cmp(&b.data.file_name()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_recovery_and_listing() {
        let tmp =
            std::env::temp_dir().join(format!("davdrive-cachedir-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let key = mount_key("http://h/dav/", Some("alice"));
        assert_ne!(key, mount_key("http://h/dav/", Some("bob")));
        let cd = CacheDir::open(tmp.join(&key), "http://h/dav/").expect("open");
        let target = DavPath::parse("/dir/report.pdf").expect("path");
        let (j, _) = cd.new_journal(&target).expect("journal");
        std::fs::write(&j, b"precious").expect("write");
        let kept = cd.recover(&j, &target, "server gone").expect("recover");
        assert!(!j.exists());
        assert_eq!(std::fs::read(&kept).expect("read"), b"precious");
        let all = list_recovered(&tmp);
        assert_eq!(all.len(), 1);
        assert!(
            all[0].info.contains("path=/dir/report.pdf"),
            "{}",
            all[0].info
        );
        assert!(all[0].info.contains("reason=server gone"));
        let (s, _) = cd.new_spool().expect("spool");
        cd.discard(&s);
        assert!(!s.exists());
        assert!(timestamp().len() == 16, "{}", timestamp());
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn spare_journals_are_used_once_and_never_recovered_empty() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cd = CacheDir::open(tmp.path().join("m"), "http://h/dav/").expect("open");
        assert!(cd.needs_spares());
        cd.spare_maker()();
        assert!(!cd.needs_spares());
        let target = DavPath::parse("/b.bin").expect("path");
        let (j, mut f) = cd.new_journal(&target).expect("journal");
        assert!(
            j.to_string_lossy().contains("-s"),
            "not a spare: {}",
            j.display()
        );
        assert!(cd.needs_spares());
        let info = std::fs::read_to_string(j.with_extension("info")).expect("info");
        assert_eq!(info, "url=http://h/dav/\npath=/b.bin\n");
        std::io::Write::write_all(&mut f, b"in flight").expect("write");
        // A davdrive that stops now: the journal with data is recovered under its target's
        // name, the empty spares are discarded.
        let kept = cd.recover_leftovers();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(std::fs::read(&kept[0]).expect("kept"), b"in flight");
        assert!(kept[0].to_string_lossy().ends_with("b.bin"), "{kept:?}");
        let left = std::fs::read_dir(tmp.path().join("m/journal"))
            .expect("dir")
            .count();
        assert_eq!(left, 0, "spares left behind");
    }
}
