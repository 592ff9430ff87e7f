//! The mount's cache directory: journals of uploads in flight, spool files of random writes,
//! and the recovery folder where data that could not be uploaded is kept.
//!
//! Layout, below `<cache>/davdrive/<mount key>/` (mode 0700):
//!
//! ```text
//! journal/<id>.data   bytes of a streaming upload, written before they are sent
//! journal/<id>.info   what the data is: server URL, path, the version it replaces
//! spool/<id>.data     the local copy of a file being modified at random offsets
//! spool/<id>.info     as for a journal, and whether the copy holds the whole file
//! recovery/<time>-<name>        data of an upload that failed
//! recovery/<time>-<name>.info   where it was going, why it failed (see `recovery`)
//! ```
//!
//! A spool file is deleted once the server acknowledged the data. A journal is then marked
//! done (`done=1` in its `.info`) and, once nothing reads it any more, emptied and kept as a
//! spare for a later upload (`spare=1`; at most [`RECYCLED`], the rest deleted); the mount
//! that next uses the cache directory alone takes the empty and done journals a mount left
//! as its spares. A file in the recovery folder is deleted only once it was uploaded from there (`davdrive recover`, or
//! the mount itself when the server was only unreachable); `davdrive status` lists them.
//! Everything is created private (0600 files, 0700 folders), never through a symbolic link.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::recovery::{Base, Kept};
use crate::dav::DavPath;
use crate::sys::files::{rewrite_private, write_private};

/// The cache directory of one mount.
#[derive(Debug)]
pub struct CacheDir {
    root: PathBuf,
    url: String,
    seq: AtomicU64,
    /// Journals created ahead (see [`CacheDir::spare_maker`]).
    spares: Spares,
    /// A file was kept for an automatic upload once the server answers again.
    retry_pending: std::sync::atomic::AtomicBool,
}

/// Why data goes to the recovery folder, and what it is.
#[derive(Debug, Clone)]
pub struct Keep<'a> {
    pub target: &'a DavPath,
    pub reason: &'a str,
    pub base: Base,
    /// The data is the whole file.
    pub whole: bool,
    /// The mount uploads it by itself once the server answers again.
    pub retry: bool,
    /// A temporary upload on the server that the data's upload had begun (segments).
    pub temp: Option<DavPath>,
}

/// Empty journal files (an empty `.info` beside each, or `spare=1`) created ahead, off the
/// path of the upload that will use one: creating the two files when a file is created on
/// the mount cost about 0.4 ms of each small file's copy (ext4 allocating inodes,
/// docs/PERFORMANCE.md). A journal whose upload succeeded is emptied and becomes a spare
/// again (see [`CacheDir::finished`]). A spare is empty, so one left by a davdrive that
/// stopped is never recovered: the next davdrive that uses the cache directory alone takes
/// it as a spare (see [`CacheDir::recover_leftovers`]).
type Spares = std::sync::Arc<std::sync::Mutex<Vec<PathBuf>>>;

/// Spare journals kept ready.
const SPARES: usize = 4;

/// Spare journals kept at most, counting the journals of finished uploads kept for reuse and
/// those an earlier davdrive left (see [`CacheDir::recover_leftovers`]): more than the kept
/// copies hold (`copies::MAX_FILES`), so that once they are at their limit a copy of many
/// files neither creates nor deletes journals, and a mount started again reuses the last
/// one's. Each is an empty file and a few bytes of `.info`.
const RECYCLED: usize = 160;

/// The `.info` of a journal whose upload finished (see [`CacheDir::finished`]).
const DONE: &str = "done=1\n";

/// The `.info` of an emptied journal kept for reuse (see [`Recycler::recycle`]).
const SPARE: &str = "spare=1\n";

/// Empties the journal `data` (open as `file`) and marks it a spare.
fn empty_as_spare(file: &std::fs::File, data: &Path) -> io::Result<()> {
    file.set_len(0)?;
    rewrite_private(&data.with_extension("info"), SPARE.as_bytes())
}

/// Deletes a journal or spool file and its `.info`.
pub fn discard_files(data: &Path) {
    let _ = std::fs::remove_file(data);
    let _ = std::fs::remove_file(data.with_extension("info"));
}

/// Makes the journal of a finished session a spare again (or deletes it when enough are
/// kept), once the session goes.
pub struct Recycler {
    spares: Spares,
}

impl Recycler {
    /// `file` is the journal `data`, open.
    pub fn recycle(&self, file: &std::fs::File, data: &Path) {
        let room = self.spares.lock().unwrap_or_else(|e| e.into_inner()).len() < RECYCLED;
        // Empty, it is never recovered. Its `.info` says it is a spare, not done: after a
        // power loss that kept a later upload's data but not the `.info` written over this
        // one, the data is recovered (without a name) rather than taken for uploaded.
        if room && empty_as_spare(file, data).is_ok() {
            self.spares
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(data.to_path_buf());
            return;
        }
        discard_files(data);
    }
}

/// `$XDG_CACHE_HOME/davdrive`, or `~/.cache/davdrive`, or (with neither set) the private
/// `$XDG_RUNTIME_DIR/davdrive`, or a folder of this user's own in the system temp dir, which
/// [`CacheDir::open`] refuses if someone else made it.
pub fn default_base() -> PathBuf {
    // Windows: the user's own local profile, whatever HOME a Unix-like shell sets, so that
    // every davdrive of the user finds every mount.
    if cfg!(windows)
        && let Some(h) = std::env::var_os("LOCALAPPDATA").filter(|v| !v.is_empty())
    {
        return PathBuf::from(h).join("davdrive");
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("davdrive");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache").join("davdrive");
    }
    if let Some(h) = std::env::var_os("LOCALAPPDATA").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join("davdrive");
    }
    if let Some(r) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(r).join("davdrive");
    }
    #[cfg(unix)]
    {
        std::env::temp_dir().join(format!("davdrive-{}", crate::sys::files::euid()))
    }
    #[cfg(not(unix))]
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
        if let Some(base) = root.parent() {
            crate::sys::files::private_dir(base)?;
        }
        for sub in ["", "journal", "spool", "recovery", "read"] {
            crate::sys::files::private_dir(&root.join(sub))?;
        }
        // Bytes of files read by an earlier run (see `vfs::data_cache`): only a cache.
        for e in std::fs::read_dir(root.join("read"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(e.path());
        }
        Ok(CacheDir {
            root,
            url: url.to_owned(),
            seq: AtomicU64::new(0),
            spares: Spares::default(),
            retry_pending: false.into(),
        })
    }

    /// Whether a file was kept for an automatic upload since the last call.
    pub fn take_retry_pending(&self) -> bool {
        self.retry_pending.swap(false, Ordering::SeqCst)
    }

    /// The files kept in this mount's recovery folder.
    pub fn kept(&self) -> Vec<Kept> {
        super::recovery::list(&self.recovery_dir())
    }

    /// The `.info` of a journal or spool file of `target`.
    fn info(&self, target: &DavPath, base: &Base, whole: bool) -> String {
        format!(
            "url={}\npath={target}\nbase={}\nwhole={}\n",
            self.url,
            base.to_info(),
            u8::from(whole)
        )
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn recovery_dir(&self) -> PathBuf {
        self.root.join("recovery")
    }

    /// Where bytes of files read are kept (see `vfs::data_cache`).
    pub fn stored_reads_dir(&self) -> PathBuf {
        self.root.join("read")
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
    pub fn new_journal(
        &self,
        target: &DavPath,
        base: &Base,
    ) -> io::Result<(PathBuf, std::fs::File)> {
        let info = self.info(target, base, true);
        loop {
            let Some(data) = self.spares.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                break;
            };
            let taken =
                rewrite_private(&data.with_extension("info"), info.as_bytes()).and_then(|()| {
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
        write_private(&data.with_extension("info"), info.as_bytes())?;
        let file = create_private_file(&data)?;
        Ok((data, file))
    }

    /// A new, empty spool file, open for reading and writing; `of`: the file it is the local
    /// copy of, the version it replaces, and whether it holds all of it (otherwise
    /// [`CacheDir::mark_whole`] says so later).
    pub fn new_spool(
        &self,
        of: Option<(&DavPath, &Base, bool)>,
    ) -> io::Result<(PathBuf, std::fs::File)> {
        let data = self
            .root
            .join("spool")
            .join(format!("{}.data", self.unique()));
        if let Some((target, base, whole)) = of {
            write_private(
                &data.with_extension("info"),
                self.info(target, base, whole).as_bytes(),
            )?;
        }
        let file = create_private_file(&data)?;
        Ok((data, file))
    }

    /// The upload of journal or spool file `data` goes to the temporary file `temp` on the
    /// server (in segments): after a crash, `davdrive recover` removes it.
    pub fn note_temp(data: &Path, temp: &DavPath) {
        let info = data.with_extension("info");
        if let Ok(text) = std::fs::read_to_string(&info) {
            let kept: String = text
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with("temp="))
                .map(|l| format!("{l}\n"))
                .collect();
            let _ = write_private(&info, format!("{kept}temp={temp}\n").as_bytes());
        }
    }

    /// Whether the local file `data` holds the whole file, for a recovery after a crash: a
    /// spool file once the parts not written were fetched (`true`); a local copy whose
    /// journal lost bytes after the upload took them all (`false`), which a recovery must
    /// not take for the file.
    pub fn mark_whole(data: &Path, whole: bool) {
        let info = data.with_extension("info");
        let (from, to) = if whole {
            ("whole=0", "whole=1")
        } else {
            ("whole=1", "whole=0")
        };
        if let Ok(text) = std::fs::read_to_string(&info)
            && text.contains(from)
        {
            let _ = rewrite_private(&info, text.replace(from, to).as_bytes());
        }
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
                let empty = e.metadata().is_ok_and(|m| m.len() == 0);
                let info = std::fs::read_to_string(p.with_extension("info")).unwrap_or_default();
                // Empty, or uploaded (only kept for reading): nothing to recover. A journal
                // becomes a spare for this davdrive's uploads.
                if empty || info.trim_end() == DONE.trim_end() {
                    if !(sub == "journal" && self.adopt(&p, empty)) {
                        self.discard(&p);
                    }
                    continue;
                }
                let noted = Kept::parse(&p, &info);
                let target = noted.path.unwrap_or_default();
                let why = Keep {
                    target: &target,
                    reason: "left behind by a davdrive that stopped before the upload finished",
                    // Without an `.info` (davdrive before 0.2 made none for spool files)
                    // nothing is known: not for an upload by itself.
                    base: noted.base,
                    whole: info.lines().any(|l| l == "whole=1"),
                    retry: false,
                    temp: noted.temp,
                };
                if let Ok(kept) = self.recover(&p, &why) {
                    out.push(kept);
                }
            }
        }
        out
    }

    /// Makes the journal `data` of an earlier davdrive, whose upload finished (or that was
    /// empty), a spare; `false` when enough are kept or it cannot be emptied.
    fn adopt(&self, data: &Path, empty: bool) -> bool {
        let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        if spares.iter().any(|s| s == data) {
            return true;
        }
        if spares.len() >= RECYCLED {
            return false;
        }
        let emptied = empty
            || std::fs::OpenOptions::new()
                .write(true)
                .open(data)
                .and_then(|f| empty_as_spare(&f, data))
                .is_ok();
        if emptied {
            spares.push(data.to_path_buf());
        }
        emptied
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

    /// The session whose local file is `data` ended with everything on the server. A spool
    /// file is deleted. A journal stays while the session's readers may use it (a kept copy,
    /// see `vfs::copies`), its `.info` saying it is done (a davdrive stopping now leaves
    /// nothing to recover), and the returned [`Recycler`] makes it a spare for a later upload
    /// when the session goes. A copy of many small files created and deleted two files per
    /// file: on ext4 without a journal (this project's test machines) each new inode is found
    /// by skipping the inodes deleted in the last 30 s, one disk block looked up per inode
    /// skipped, which took 45 % of the daemon's time in a loopback `cp -r` of 500 files of
    /// 100 KiB.
    pub fn finished(&self, data: &Path) -> Option<Recycler> {
        let journal = data.parent() == Some(self.root.join("journal").as_path());
        if journal && rewrite_private(&data.with_extension("info"), DONE.as_bytes()).is_ok() {
            return Some(Recycler {
                spares: self.spares.clone(),
            });
        }
        self.discard(data);
        None
    }

    /// Deletes a journal or spool file and its `.info`.
    pub fn discard(&self, data: &Path) {
        discard_files(data);
    }

    /// Moves `data` into the recovery folder with a note of where it was going and why.
    /// Returns where it is now.
    pub fn recover(&self, data: &Path, why: &Keep<'_>) -> io::Result<PathBuf> {
        let name = why.target.name().unwrap_or("unnamed");
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
        let old_info = data.with_extension("info");
        let kept = Kept {
            data: dest.clone(),
            url: self.url.clone(),
            path: Some(why.target.clone()),
            reason: why.reason.to_owned(),
            base: why.base.clone(),
            whole: why.whole,
            retry: why.retry,
            temp: why.temp.clone(),
        };
        if let Err(e) = kept.write_info() {
            // The data is moved already (a full disk lets a rename through but not a new
            // note): the journal's own note, which names the URL, path and base, goes with it.
            let _ = std::fs::rename(&old_info, super::recovery::info_of(&dest));
            tracing::warn!(
                "{} is kept without its reason ({e}): it was going to {}",
                dest.display(),
                why.target
            );
            return Ok(dest);
        }
        let _ = std::fs::remove_file(&old_info);
        if why.retry {
            self.retry_pending.store(true, Ordering::SeqCst);
        }
        Ok(dest)
    }
}

/// Creates `p` (it must not exist), readable and writable by the user only, and opens it.
pub(crate) fn create_private(p: &Path) -> io::Result<std::fs::File> {
    create_private_file(p)
}

fn create_private_file(p: &Path) -> io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    crate::sys::files::no_follow(&mut o);
    o.open(p)
}

/// Every file in the recovery folders below `base` (all mounts), oldest first.
pub fn list_recovered(base: &Path) -> Vec<Kept> {
    let mut out: Vec<Kept> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|m| super::recovery::list(&m.path().join("recovery")))
        .collect();
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
        let (j, _) = cd.new_journal(&target, &Base::Absent).expect("journal");
        std::fs::write(&j, b"precious").expect("write");
        let why = Keep {
            target: &target,
            reason: "server gone",
            base: Base::Absent,
            whole: true,
            retry: true,
            temp: None,
        };
        let kept = cd.recover(&j, &why).expect("recover");
        assert!(!j.exists());
        assert_eq!(std::fs::read(&kept).expect("read"), b"precious");
        assert!(cd.take_retry_pending());
        let all = list_recovered(&tmp);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].path.as_ref(), Some(&target));
        assert_eq!(all[0].reason, "server gone");
        assert_eq!(all[0].base, Base::Absent);
        assert!(all[0].retry);
        // A spool file names its file too, and says when it holds only the parts written.
        let (s, _) = cd
            .new_spool(Some((&target, &Base::Tag("\"t\"".into()), false)))
            .expect("spool");
        std::fs::write(&s, b"part").expect("write");
        let left = cd.recover_leftovers();
        assert_eq!(left.len(), 1);
        let k = Kept::read(&left[0]);
        assert_eq!(k.path.as_ref(), Some(&target));
        assert_eq!(k.base, Base::Tag("\"t\"".into()));
        assert!(!k.whole && !k.retry);
        let (s, _) = cd.new_spool(None).expect("spool");
        cd.discard(&s);
        assert!(!s.exists());
        assert!(timestamp().len() == 16, "{}", timestamp());
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[cfg(unix)]
    #[test]
    fn nothing_is_created_through_a_symbolic_link() {
        let tmp = tempfile::tempdir().expect("tmp");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        // A cache folder planted as a link (in a shared temp directory) is refused.
        let planted = tmp.path().join("davdrive-planted");
        std::os::unix::fs::symlink(&elsewhere, &planted).expect("symlink");
        let e = CacheDir::open(planted.join("m"), "http://h/").expect_err("followed a link");
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert_eq!(std::fs::read_dir(&elsewhere).expect("ls").count(), 0);
        // A link where a note goes is not written through.
        let cd = CacheDir::open(tmp.path().join("real").join("m"), "http://h/").expect("open");
        let target = elsewhere.join("victim");
        std::fs::write(&target, b"keep").expect("write");
        let data = cd.root().join("spool").join("x.data");
        std::os::unix::fs::symlink(&target, data.with_extension("info")).expect("symlink");
        assert!(write_private(&data.with_extension("info"), b"url=").is_err());
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
        // Folders are private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cd.root())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn spare_journals_are_used_once_and_never_recovered_empty() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cd = CacheDir::open(tmp.path().join("m"), "http://h/dav/").expect("open");
        assert!(cd.needs_spares());
        cd.spare_maker()();
        assert!(!cd.needs_spares());
        let target = DavPath::parse("/b.bin").expect("path");
        let (j, mut f) = cd.new_journal(&target, &Base::Absent).expect("journal");
        assert!(
            j.to_string_lossy().contains("-s"),
            "not a spare: {}",
            j.display()
        );
        assert!(cd.needs_spares());
        let info = std::fs::read_to_string(j.with_extension("info")).expect("info");
        assert_eq!(info, "url=http://h/dav/\npath=/b.bin\nbase=none\nwhole=1\n");
        std::io::Write::write_all(&mut f, b"in flight").expect("write");
        // A davdrive that stops now: the journal with data is recovered under its target's
        // name, the empty spares stay spares (never recovered).
        let kept = cd.recover_leftovers();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(std::fs::read(&kept[0]).expect("kept"), b"in flight");
        assert!(kept[0].to_string_lossy().ends_with("b.bin"), "{kept:?}");
        let left: Vec<_> = std::fs::read_dir(tmp.path().join("m/journal"))
            .expect("dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "data"))
            .collect();
        assert!(!left.is_empty(), "the spares went");
        assert!(
            left.iter()
                .all(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == 0)),
            "{left:?}"
        );
        assert!(cd.recover_leftovers().is_empty());
    }

    #[test]
    fn a_reused_journal_whose_new_info_was_lost_is_recovered() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cd = CacheDir::open(tmp.path().join("m"), "http://h/dav/").expect("open");
        let target = DavPath::parse("/d.bin").expect("path");
        let (j, mut f) = cd.new_journal(&target, &Base::Absent).expect("journal");
        std::io::Write::write_all(&mut f, b"uploaded").expect("write");
        cd.finished(&j).expect("recycled").recycle(&f, &j);
        assert_eq!(
            std::fs::read_to_string(j.with_extension("info"))
                .expect("info")
                .trim_end(),
            "spare=1"
        );
        // A power loss that kept the next upload's data but not the `.info` written over
        // the spare's: the data is recovered, not taken for an upload that finished.
        drop(f);
        std::fs::write(&j, b"next").expect("write");
        let kept = CacheDir::open(tmp.path().join("m"), "http://h/dav/")
            .expect("open")
            .recover_leftovers();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(std::fs::read(&kept[0]).expect("kept"), b"next");
    }

    #[test]
    fn a_finished_journal_is_reused_and_never_recovered() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cd = CacheDir::open(tmp.path().join("m"), "http://h/dav/").expect("open");
        let target = DavPath::parse("/c.bin").expect("path");
        let (j, mut f) = cd.new_journal(&target, &Base::Absent).expect("journal");
        std::io::Write::write_all(&mut f, b"uploaded").expect("write");
        let recycler = cd.finished(&j).expect("a journal is recycled");
        // Still there for the session's readers; a davdrive that stops now recovers nothing
        // (and has nothing open: Windows deletes an open file only when it is closed).
        assert_eq!(std::fs::read(&j).expect("journal"), b"uploaded");
        drop(f);
        let crashed = CacheDir::open(tmp.path().join("m"), "http://h/dav/").expect("open");
        assert!(crashed.recover_leftovers().is_empty());
        assert_eq!(
            std::fs::metadata(&j).expect("spare").len(),
            0,
            "not emptied"
        );
        let (reused, _) = crashed
            .new_journal(&target, &Base::Absent)
            .expect("journal");
        assert_eq!(reused, j, "the next davdrive does not reuse it");
        // Once the session goes, its journal is emptied and used by the next upload.
        let long = DavPath::parse("/a/much/longer/name/than/the/next/one.bin").expect("path");
        let (j, mut f) = cd.new_journal(&long, &Base::Absent).expect("journal");
        std::io::Write::write_all(&mut f, b"second").expect("write");
        let recycler2 = cd.finished(&j).expect("recycled");
        drop(recycler);
        recycler2.recycle(&f, &j);
        assert_eq!(std::fs::metadata(&j).expect("spare").len(), 0);
        let (again, mut f) = cd.new_journal(&target, &Base::Absent).expect("journal");
        assert_eq!(again, j, "the emptied journal is reused");
        // Its `.info` is written over, never truncated: what is left of the longer one is
        // blank lines, and a crash now recovers the data under the new name.
        let info = std::fs::read_to_string(again.with_extension("info")).expect("info");
        assert!(!info.contains("longer"), "{info:?}");
        assert_eq!(
            Kept::parse(&again, &info).path.as_ref(),
            Some(&target),
            "{info:?}"
        );
        std::io::Write::write_all(&mut f, b"third").expect("write");
        drop(f);
        let kept = CacheDir::open(tmp.path().join("m"), "http://h/dav/")
            .expect("open")
            .recover_leftovers();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(std::fs::read(&kept[0]).expect("kept"), b"third");
        assert_eq!(Kept::read(&kept[0]).path.as_ref(), Some(&target));
        // A spool file is deleted at once.
        let (spool, _) = cd.new_spool(None).expect("spool");
        assert!(cd.finished(&spool).is_none());
        assert!(!spool.exists());
    }
}
