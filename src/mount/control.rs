//! The control socket: every running mount answers `davdrive status`, `davdrive refresh` and
//! a waiting `davdrive unmount` on a Unix socket of its own, `mounts/PID.sock` in the
//! davdrive cache directory (mode 0700, the socket 0600: only the mount's user reaches it;
//! the kernel checks that, no password is involved).
//!
//! Protocol: one request line, one answer line, then the connection closes. Requests:
//! `status` (answer: a [`Report`] as JSON) and `refresh [PATH]` (answer:
//! `{"refreshed":N}`, the number of folder listings dropped). A failure is
//! `{"error":"..."}`. Scripts may speak it too, but `davdrive status --json` is the stable
//! interface.
//!
//! A socket whose mount died (SIGKILL, a crash) stays behind; whoever finds it refusing
//! connections removes it.

#[cfg(unix)]
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
#[cfg(unix)]
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::vfs::Vfs;
use crate::vfs::activity::Activity;

/// How long a client waits for a mount to answer.
#[cfg(unix)]
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What a mount says about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountInfo {
    pub pid: u32,
    /// The mounted URL, without credentials.
    pub url: String,
    pub mountpoint: PathBuf,
    /// This mount's cache directory (journals, recovery folder, log).
    pub cache_dir: PathBuf,
    /// When the mount started, in seconds since the Unix epoch.
    pub started: u64,
    /// `--async-close`: closes return before the upload is done.
    pub async_close: bool,
}

/// The answer to `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub mount: MountInfo,
    #[serde(flatten)]
    pub activity: Activity,
}

/// The directory of the control sockets under the cache base directory `base`.
pub fn sockets_dir(base: &Path) -> PathBuf {
    base.join("mounts")
}

/// A control socket being served; removed when dropped.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the control socket of the mount `info` (of the cache base directory `base`) on
/// `rt`. `None` (with a warning) when it cannot be made: the mount works without it.
#[cfg(unix)]
pub fn serve(
    base: &Path,
    vfs: Arc<Vfs>,
    info: MountInfo,
    rt: &tokio::runtime::Handle,
) -> Option<ControlSocket> {
    let dir = sockets_dir(base);
    let path = dir.join(format!("{}.sock", info.pid));
    let listener = match bind(&dir, &path, rt) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "cannot make the control socket {} ({e}): `davdrive status` will not see \
                 this mount",
                path.display()
            );
            return None;
        }
    };
    let info = Arc::new(info);
    rt.spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (vfs, info) = (vfs.clone(), info.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(ANSWER_WITHIN, answer(conn, &vfs, &info)).await;
            });
        }
    });
    Some(ControlSocket { path })
}

#[cfg(not(unix))]
pub fn serve(
    _base: &Path,
    _vfs: Arc<Vfs>,
    _info: MountInfo,
    _rt: &tokio::runtime::Handle,
) -> Option<ControlSocket> {
    None
}

#[cfg(unix)]
fn bind(
    dir: &Path,
    path: &Path,
    rt: &tokio::runtime::Handle,
) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    crate::sys::files::private_dir(dir)?;
    // A socket left by an earlier process with this pid (it was killed) is in the way.
    let _ = std::fs::remove_file(path);
    let _in_runtime = rt.enter();
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[cfg(unix)]
async fn answer(conn: tokio::net::UnixStream, vfs: &Vfs, info: &MountInfo) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(r.take(4096))
        .read_line(&mut line)
        .await?;
    let reply = handle(line.trim(), vfs, info);
    w.write_all(reply.as_bytes()).await?;
    w.write_all(b"\n").await?;
    w.shutdown().await
}

/// The answer to one request line.
#[cfg(unix)]
fn handle(request: &str, vfs: &Vfs, info: &MountInfo) -> String {
    let (verb, arg) = request.split_once(' ').unwrap_or((request, ""));
    let error = |msg: String| serde_json::json!({ "error": msg }).to_string();
    match verb {
        "status" => {
            let report = Report {
                mount: info.clone(),
                activity: vfs.activity(),
            };
            serde_json::to_string(&report).unwrap_or_else(|e| error(e.to_string()))
        }
        "refresh" => {
            let path = match arg.trim() {
                "" | "/" => None,
                p => {
                    match crate::dav::DavPath::from_segments(p.split('/').filter(|s| !s.is_empty()))
                    {
                        Ok(p) => Some(p),
                        Err(e) => return error(format!("{p}: {e}")),
                    }
                }
            };
            let n = vfs.refresh(path.as_ref());
            tracing::info!(
                "refreshed {} ({n} listing(s) dropped)",
                if arg.trim().is_empty() {
                    "/"
                } else {
                    arg.trim()
                }
            );
            serde_json::json!({ "refreshed": n }).to_string()
        }
        _ => error(format!("unknown request {verb:?}")),
    }
}

/// Sends `request` to the socket at `path` and returns the answer line.
#[cfg(unix)]
pub fn request(path: &Path, request: &str) -> std::io::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(ANSWER_WITHIN))?;
    s.set_write_timeout(Some(ANSWER_WITHIN))?;
    s.write_all(request.as_bytes())?;
    s.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the mount closed the connection",
        ));
    }
    Ok(line)
}

#[cfg(not(unix))]
pub fn request(_path: &Path, _request: &str) -> std::io::Result<String> {
    Err(std::io::Error::other(
        "control sockets come with this OS's frontend",
    ))
}

/// The status of one running mount, asked through its socket.
pub fn status_of(path: &Path) -> Result<Report, String> {
    let line = request(path, "status").map_err(|e| e.to_string())?;
    parse_report(&line)
}

fn parse_report(line: &str) -> Result<Report, String> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
        && let Some(e) = v.get("error").and_then(|e| e.as_str())
    {
        return Err(e.to_owned());
    }
    serde_json::from_str(line).map_err(|e| format!("unreadable answer: {e}"))
}

/// Every running mount whose socket is under the cache base directory `base`, with its
/// socket. Sockets of mounts that died are removed on the way.
pub fn running(base: &Path) -> Vec<(PathBuf, Report)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(sockets_dir(base)) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "sock") {
            continue;
        }
        match request(&path, "status") {
            Ok(line) => {
                if let Ok(r) = parse_report(&line) {
                    out.push((path, r));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                // Its mount is gone.
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
    }
    out.sort_by(|a, b| a.1.mount.mountpoint.cmp(&b.1.mount.mountpoint));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_survives_json_both_ways() {
        let r = Report {
            mount: MountInfo {
                pid: 7,
                url: "https://h/dav/".into(),
                mountpoint: "/m".into(),
                cache_dir: "/c".into(),
                started: 1,
                async_close: true,
            },
            activity: Activity {
                uploads: vec![crate::vfs::activity::Upload {
                    path: "/a b".into(),
                    phase: crate::vfs::activity::Phase::Queued,
                    sent: 3,
                    size: 10,
                    secs: 0.5,
                }],
                server_silent_secs: Some(4),
            },
        };
        let json = serde_json::to_string(&r).expect("serializes");
        assert!(json.contains("\"phase\":\"queued\""), "{json}");
        let back: Report = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.activity.uploads[0].path, "/a b");
        assert_eq!(back.activity.server_silent_secs, Some(4));
    }
}
