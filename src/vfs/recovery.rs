//! Files kept in a recovery folder, and uploading them again.
//!
//! A kept file's `.info` says where it was going (`url=`, `path=`), why it is kept
//! (`reason=`), what it was based on (`base=`, see [`Base`]), whether it holds the whole file
//! (`whole=0` for a copy of an existing file whose unwritten parts were never fetched) and
//! whether a running mount uploads it by itself once the server answers again (`retry=1`:
//! the upload failed only because the server could not be reached).
//!
//! An upload from recovery never overwrites a change made meanwhile: it is conditional on the
//! version the data was based on (`If-Match` on its entity tag, or `If-None-Match: *` for a
//! file that did not exist). Without a strong entity tag it cannot tell, and uploads only
//! when asked to (`davdrive recover --force`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Handle, Vfs};
use crate::dav::{DavClient, DavPath, ErrorKind, Preconditions, PutBody};
use crate::sys::files::write_private;

/// How often a mount looks whether a file kept while the server could not be reached can be
/// uploaded now.
const RETRY_TICK: std::time::Duration = std::time::Duration::from_secs(5);

/// The version of the file that the kept data replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// The file did not exist.
    Absent,
    /// The version with this entity tag (a weak one is compared by a HEAD before an
    /// unconditional PUT: `If-Match` never matches a weak tag).
    Tag(String),
    /// The version last modified at `at` (seconds since the epoch) with `size` bytes, for
    /// servers without entity tags; compared before an unconditional PUT.
    Modified { at: u64, size: u64 },
    /// An empty file this session created (the server gave no entity tag for it).
    Empty,
    /// Unknown.
    Unknown,
}

impl Base {
    /// What an upload with `pre` was based on.
    pub fn of(pre: &Preconditions) -> Base {
        if pre.if_none_match_any {
            Base::Absent
        } else if let Some(t) = pre.if_match.as_ref() {
            Base::Tag(t.clone())
        } else {
            Base::Unknown
        }
    }

    /// The version of a file the server listed with these properties.
    pub fn of_version(etag: Option<&String>, modified: std::time::SystemTime, size: u64) -> Base {
        match etag {
            Some(t) => Base::Tag(t.clone()),
            None => Base::Modified {
                at: secs(modified),
                size,
            },
        }
    }

    /// The `base=` value of an `.info` file (one line: no line breaks).
    pub fn to_info(&self) -> String {
        match self {
            Base::Absent => "none".into(),
            Base::Tag(t) => t.replace(['\r', '\n'], ""),
            Base::Modified { at, size } => format!("modified:{at}:{size}"),
            Base::Empty => "empty".into(),
            Base::Unknown => "?".into(),
        }
    }

    pub(crate) fn parse(v: &str) -> Base {
        match v {
            "none" => Base::Absent,
            "empty" => Base::Empty,
            "?" | "" => Base::Unknown,
            m if m.starts_with("modified:") => {
                let mut parts = m["modified:".len()..].split(':').map(str::parse::<u64>);
                match (parts.next(), parts.next()) {
                    (Some(Ok(at)), Some(Ok(size))) => Base::Modified { at, size },
                    _ => Base::Unknown,
                }
            }
            t => Base::Tag(t.to_owned()),
        }
    }
}

fn secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A file kept in a recovery folder.
#[derive(Debug, Clone)]
pub struct Kept {
    pub data: PathBuf,
    pub url: String,
    pub path: Option<DavPath>,
    pub reason: String,
    pub base: Base,
    /// The copy holds the whole file (not only the parts that were written).
    pub whole: bool,
    /// A running mount uploads it by itself once the server answers.
    pub retry: bool,
    /// A temporary upload on the server its upload had begun, removed before it is sent.
    pub temp: Option<DavPath>,
}

/// The `.info` file beside a kept file.
pub fn info_of(data: &Path) -> PathBuf {
    let mut p = data.to_path_buf().into_os_string();
    p.push(".info");
    PathBuf::from(p)
}

impl Kept {
    /// Reads the kept file `data` and its `.info`.
    pub fn read(data: &Path) -> Kept {
        Kept::parse(
            data,
            &std::fs::read_to_string(info_of(data)).unwrap_or_default(),
        )
    }

    /// The kept file `data` as the text `info` of a note describes it (a recovery `.info`,
    /// or a journal's or spool file's, which has the same fields).
    pub fn parse(data: &Path, info: &str) -> Kept {
        let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k));
        Kept {
            data: data.to_path_buf(),
            url: field("url=").unwrap_or("?").to_owned(),
            path: field("path=").and_then(|p| DavPath::parse(p).ok()),
            reason: field("reason=").unwrap_or("?").to_owned(),
            base: Base::parse(field("base=").unwrap_or("?")),
            whole: field("whole=") != Some("0"),
            retry: field("retry=") == Some("1"),
            temp: field("temp=").and_then(|p| DavPath::parse(p).ok()),
        }
    }

    /// Writes the `.info` again with a new reason, and no automatic retry.
    pub fn give_up(&mut self, reason: &str) {
        self.retry = false;
        self.reason = reason.to_owned();
        let _ = self.write_info();
    }

    pub fn write_info(&self) -> std::io::Result<()> {
        let path = self
            .path
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let mut info = format!(
            "url={}\npath={path}\nreason={}\nbase={}\nwhole={}\nretry={}\n",
            self.url,
            self.reason.replace(['\r', '\n'], " "),
            self.base.to_info(),
            u8::from(self.whole),
            u8::from(self.retry)
        );
        if let Some(t) = &self.temp {
            info.push_str(&format!("temp={t}\n"));
        }
        write_private(&info_of(&self.data), info.as_bytes())
    }

    /// Deletes the kept file and its `.info`.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.data);
        let _ = std::fs::remove_file(info_of(&self.data));
    }
}

/// Every kept file of one mount's recovery folder, oldest first.
pub fn list(recovery_dir: &Path) -> Vec<Kept> {
    let mut out: Vec<Kept> = std::fs::read_dir(recovery_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_none_or(|e| e != "info"))
        .map(|p| Kept::read(&p))
        .collect();
    out.sort_by(|a, b| a.data.file_name().cmp(&b.data.file_name()));
    out
}

const CHANGED: &str = "the file changed on the server since; compare the two and copy the \
                       kept one over it yourself if it should win";

/// What became of an upload from recovery.
#[derive(Debug)]
pub enum Outcome {
    /// On the server; the kept copy is deleted.
    Uploaded { size: u64 },
    /// Not uploaded, and not worth trying again by itself: why.
    Kept(String),
    /// The server could not be reached (or was busy): try again later.
    Later(String),
}

/// Uploads `kept` to its path, unless the server's version is no longer the one it was based
/// on (or that cannot be told, unless `force`). Deletes the kept copy once it is uploaded.
pub async fn upload(client: &DavClient, kept: &Kept, force: bool) -> Outcome {
    let Some(path) = kept.path.clone() else {
        return Outcome::Kept("its .info names no path on the server".into());
    };
    if let Some(temp) = &kept.temp {
        // The temporary upload of a davdrive that stopped: ours, and of no use any more.
        match client.delete(temp, false, &Preconditions::default()).await {
            Ok(()) => tracing::info!("removed {temp}, the temporary upload of {path}"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) if e.answered() => {}
            Err(e) => return Outcome::Later(e.to_string()),
        }
    }
    if !kept.whole {
        return Outcome::Kept(
            "only the parts that were written are in the copy (the rest of the file was \
             never fetched): uploading it would replace the file with holes"
                .into(),
        );
    }
    let pre = match &kept.base {
        Base::Absent => Preconditions {
            if_none_match_any: true,
            ..Default::default()
        },
        Base::Tag(t) if !t.starts_with("W/") => Preconditions {
            if_match: Some(t.clone()),
            ..Default::default()
        },
        base @ (Base::Tag(_) | Base::Modified { .. } | Base::Empty) => {
            // Not something If-Match can say (a weak tag, Apache's for a file changed within
            // the last second; a modification time; our own empty file): compare with what
            // the server lists now, then PUT.
            let bare = |t: &str| t.trim_start_matches("W/").to_owned();
            let same = |r: &crate::dav::Resource| match base {
                Base::Tag(t) => r.etag.as_deref().map(bare) == Some(bare(t)),
                Base::Modified { at, size } => {
                    r.last_modified.map(secs) == Some(*at) && r.content_length == Some(*size)
                }
                _ => r.content_length == Some(0),
            };
            match client.propfind(&path, crate::dav::Depth::Zero, false).await {
                Ok(ms) if ms.resources.first().is_some_and(same) => Preconditions::default(),
                Ok(_) => return Outcome::Kept(CHANGED.into()),
                Err(e) if e.kind() == ErrorKind::NotFound && *base == Base::Empty => {
                    Preconditions {
                        if_none_match_any: true,
                        ..Default::default()
                    }
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Outcome::Kept("the file was deleted on the server since".into());
                }
                Err(e) => return Outcome::Later(e.to_string()),
            }
        }
        Base::Unknown if force => Preconditions::default(),
        Base::Unknown => {
            return Outcome::Kept(
                "davdrive does not know which version of the file this was based on, so it \
                 cannot tell whether the file changed on the server since; `davdrive recover \
                 --force` uploads it anyway"
                    .into(),
            );
        }
    };
    let file = match std::fs::File::open(&kept.data) {
        Ok(f) => f,
        Err(e) => return Outcome::Kept(format!("cannot read the kept copy: {e}")),
    };
    let size = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return Outcome::Kept(format!("cannot read the kept copy: {e}")),
    };
    let stream = super::write::segments::file_stream(Arc::new(file), 0, size);
    let body = PutBody::Stream {
        stream: Box::new(stream),
        len: Some(size),
    };
    match client.put(&path, body, &pre).await {
        Ok(_) => {
            kept.remove();
            Outcome::Uploaded { size }
        }
        Err(e) => match e.kind() {
            ErrorKind::Stale => Outcome::Kept(match kept.base {
                Base::Absent => "a file of that name was created on the server since".into(),
                _ => CHANGED.into(),
            }),
            ErrorKind::Unreachable | ErrorKind::TimedOut | ErrorKind::Busy | ErrorKind::Io => {
                Outcome::Later(e.to_string())
            }
            _ => Outcome::Kept(e.to_string()),
        },
    }
}

impl Vfs {
    /// Starts the task that uploads files kept because the server could not be reached
    /// (`retry=1`), once it answers again, unless the file changed there meanwhile. It ends
    /// with the mount.
    pub fn watch_recovery(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        let weak = Arc::downgrade(self);
        // Files an earlier mount kept the same way are tried too.
        let mut waiting = self.cache.kept().iter().any(|k| k.retry);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(RETRY_TICK).await;
                let Some(vfs) = weak.upgrade() else {
                    return;
                };
                waiting |= vfs.cache.take_retry_pending();
                if waiting {
                    waiting = vfs.upload_kept().await;
                }
            }
        });
    }

    /// One round of uploads from the recovery folder; whether files are still waiting.
    async fn upload_kept(&self) -> bool {
        for mut kept in self.cache.kept().into_iter().filter(|k| k.retry) {
            let Some(path) = kept.path.clone() else {
                continue;
            };
            // Written to again meanwhile: that session's upload decides; try after it.
            let open = self
                .handles
                .lock()
                .values()
                .any(|h| matches!(h, Handle::Write(w) if !w.is_unlinked() && w.path() == path));
            if open {
                return true;
            }
            match upload(&self.client, &kept, false).await {
                Outcome::Uploaded { size } => {
                    tracing::info!(
                        "uploaded {path} ({size} bytes) from the recovery folder: the server \
                         answers again"
                    );
                    let mut t = self.table();
                    let ino = t.find(&path);
                    let parent = path.parent().and_then(|p| t.find(&p));
                    for ino in [ino, parent].into_iter().flatten() {
                        if let Some(n) = t.get_mut(ino) {
                            n.meta = None;
                            n.cached_version = None;
                            n.listing = None;
                        }
                    }
                }
                Outcome::Kept(why) => {
                    tracing::warn!("{path} stays in {}: {why}", kept.data.display());
                    let reason = format!("{}; then not uploaded: {why}", kept.reason);
                    kept.give_up(&reason);
                }
                Outcome::Later(_) => return true,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trip() {
        let dir = tempfile::tempdir().expect("tmp");
        let data = dir.path().join("20261205T000000Z-0-a.txt");
        std::fs::write(&data, b"x").expect("write");
        let mut k = Kept {
            data: data.clone(),
            url: "http://h/dav/".into(),
            path: DavPath::parse("/d/a.txt").ok(),
            reason: "down\nreally".into(),
            base: Base::Tag("\"abc\"".into()),
            whole: true,
            retry: true,
            temp: DavPath::parse("/d/.davdrive-part-1-0-0").ok(),
        };
        k.write_info().expect("info");
        let back = Kept::read(&data);
        assert_eq!(back.path, k.path);
        assert_eq!(back.base, k.base);
        assert_eq!(back.reason, "down really");
        assert!(back.retry && back.whole);
        assert_eq!(back.temp, k.temp);
        k.give_up("changed");
        let back = Kept::read(&data);
        assert!(!back.retry);
        assert_eq!(back.reason, "changed");
        assert_eq!(list(dir.path()).len(), 1);
        assert_eq!(
            Base::of(&Preconditions {
                if_match: Some("W/\"x\"".into()),
                ..Default::default()
            }),
            Base::Tag("W/\"x\"".into())
        );
        assert_eq!(Base::of(&Preconditions::default()), Base::Unknown);
    }
}
