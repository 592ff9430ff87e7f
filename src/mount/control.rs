//! The control socket: every running mount answers `davdrive status`, `davdrive refresh` and
//! a waiting `davdrive unmount` on a Unix socket of its own, `PID-NONCE.sock` in
//! `$XDG_RUNTIME_DIR/davdrive/mounts/` (a per-user tmpfs, never a home shared over NFS), or in
//! `mounts/` of the davdrive cache directory without one. The folder is 0700 and checked to be
//! the user's own on both sides, the socket 0600: only the mount's user reaches it (the kernel
//! checks that; no password is involved).
//!
//! On Windows the same protocol runs over a named pipe, `\\.\pipe\davdrive-PID-NONCE`,
//! and `PID-NONCE.sock` in `mounts/` of the cache directory is an empty file that names it
//! (the folder is the user's own profile; the pipe refuses remote clients).
//!
//! Protocol: one request line, one answer line, then the connection closes. Requests:
//! `status` (answer: a [`Report`] as JSON), `refresh [PATH]` (answer:
//! `{"refreshed":N}`, the number of folder listings dropped), and `stop` (answer:
//! `{"stopping":true}`; the mount unmounts once its uploads are done, as on SIGTERM: how
//! `davdrive unmount` ends a Windows mount, which has no signals). A failure is
//! `{"error":"..."}`. Scripts may speak it too, but `davdrive status --json` is the stable
//! interface.
//!
//! A socket appears under its final name only once it listens (bound under a temporary name,
//! then renamed), so a client never mistakes a starting mount for a dead one. A socket whose
//! mount died (SIGKILL, a crash) stays behind; a client that finds it refusing connections
//! while no process has its pid removes it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::vfs::Vfs;
use crate::vfs::activity::Activity;

/// How long a client waits for a mount to answer.
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

/// The directory of the control sockets: `$XDG_RUNTIME_DIR/davdrive/mounts`, else `mounts`
/// under the cache base directory `base`.
pub fn sockets_dir(base: &Path) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(r) if Path::new(&r).is_dir() => Path::new(&r).join("davdrive").join("mounts"),
        _ => base.join("mounts"),
    }
}

/// Whether the process `pid` runs (Linux: /proc, a zombie counting as gone; elsewhere
/// assumed).
fn alive(pid: u32) -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    // `/proc/PID/stat`: "PID (COMM) STATE ...", COMM possibly holding spaces or parentheses.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
        st.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// The pid in a socket's name (`PID-NONCE.sock`).
fn pid_of(path: &Path) -> Option<u32> {
    path.file_stem()?.to_str()?.split('-').next()?.parse().ok()
}

/// The folder of the control sockets and a new socket's path in it, `PID-NONCE.sock`.
fn new_control_path(base: &Path, pid: u32) -> (PathBuf, PathBuf) {
    let dir = sockets_dir(base);
    let mut nonce = [0u8; 4];
    let _ = getrandom::fill(&mut nonce);
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("{pid}-{nonce}.sock"));
    (dir, path)
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
    let (dir, path) = new_control_path(base, info.pid);
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
            let conn = match listener.accept().await {
                Ok((conn, _)) => conn,
                Err(_) => {
                    // Out of descriptors, say: try again later, without spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (vfs, info) = (vfs.clone(), info.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(ANSWER_WITHIN, answer(conn, &vfs, &info)).await;
            });
        }
    });
    Some(ControlSocket { path })
}

#[cfg(windows)]
pub fn serve(
    base: &Path,
    vfs: Arc<Vfs>,
    info: MountInfo,
    rt: &tokio::runtime::Handle,
) -> Option<ControlSocket> {
    use tokio::net::windows::named_pipe::ServerOptions;
    let (dir, path) = new_control_path(base, info.pid);
    let name = pipe_name(&path)?;
    // Only this user (and SYSTEM) may open the pipe: the default would let every user
    // read it and hold its instances.
    let sddl = |sid: String| format!("D:P(A;;GA;;;{sid})(A;;GA;;;SY)");
    let sd = match crate::sys::winsec::user_sid()
        .and_then(|sid| crate::sys::winsec::descriptor(&sddl(sid)))
    {
        Ok(sd) => sd,
        Err(e) => {
            tracing::warn!("no control pipe ({e}): `davdrive status` will not see this mount");
            return None;
        }
    };
    let create = {
        let pipe = name.clone();
        move |first: bool| -> std::io::Result<tokio::net::windows::named_pipe::NamedPipeServer> {
            use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
            let mut attrs = SECURITY_ATTRIBUTES {
                nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
                lpSecurityDescriptor: sd.as_ptr().cast_mut().cast(),
                bInheritHandle: 0,
            };
            // SAFETY: `attrs` and the descriptor it points to live until the call returns;
            // the pipe keeps its own copy of the descriptor.
            unsafe {
                ServerOptions::new()
                    .first_pipe_instance(first)
                    .reject_remote_clients(true)
                    .create_with_security_attributes_raw(&pipe, (&raw mut attrs).cast())
            }
        }
    };
    let made = (|| {
        std::fs::create_dir_all(&dir)?;
        let _in_runtime = rt.enter();
        let first = create(true)?;
        std::fs::write(&path, b"")?;
        Ok::<_, std::io::Error>(first)
    })();
    let mut server = match made {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "cannot make the control pipe {name} ({e}): `davdrive status` and \
                 `davdrive unmount` will not see this mount"
            );
            return None;
        }
    };
    let info = Arc::new(info);
    rt.spawn(async move {
        loop {
            if server.connect().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let next = match create(false) {
                Ok(n) => n,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let conn = std::mem::replace(&mut server, next);
            let (vfs, info) = (vfs.clone(), info.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(ANSWER_WITHIN, answer(conn, &vfs, &info)).await;
            });
        }
    });
    Some(ControlSocket { path })
}

/// The named pipe behind a control file `PID-NONCE.sock` (Windows).
#[cfg(windows)]
fn pipe_name(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    Some(format!("\\\\.\\pipe\\davdrive-{stem}"))
}

#[cfg(not(any(unix, windows)))]
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
    // Listening under a name clients ignore, then renamed: never seen half-made.
    let temp = path.with_extension("new");
    let _ = std::fs::remove_file(&temp);
    let _in_runtime = rt.enter();
    let listener = tokio::net::UnixListener::bind(&temp)?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&temp, path)?;
    Ok(listener)
}

async fn answer<S>(conn: S, vfs: &Vfs, info: &MountInfo) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (r, mut w) = tokio::io::split(conn);
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
        "stop" => {
            tracing::info!("asked to unmount (davdrive unmount)");
            super::request_stop();
            serde_json::json!({ "stopping": true }).to_string()
        }
        _ => error(format!("unknown request {verb:?}")),
    }
}

/// Sends `request` to the socket at `path` and returns the answer line.
#[cfg(unix)]
pub fn request(path: &Path, request: &str) -> std::io::Result<String> {
    // A wedged mount with a full backlog would block connect() for good: bounded here.
    let (tx, rx) = std::sync::mpsc::channel();
    let target = path.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(std::os::unix::net::UnixStream::connect(target));
    });
    let mut s = rx.recv_timeout(ANSWER_WITHIN).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "the mount does not answer")
    })??;
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

/// Sends `request` to the mount whose control file is `path` and returns the answer line
/// (Windows: over its named pipe).
#[cfg(windows)]
pub fn request(path: &Path, request: &str) -> std::io::Result<String> {
    if !path.exists() {
        return Err(std::io::ErrorKind::NotFound.into());
    }
    let name = pipe_name(path).ok_or(std::io::ErrorKind::InvalidInput)?;
    let request = request.to_owned();
    // Opening, writing and reading a pipe have no timeouts of their own: bounded here.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let talk = || -> std::io::Result<String> {
            let deadline = std::time::Instant::now() + ANSWER_WITHIN;
            let mut pipe = loop {
                match std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&name)
                {
                    Ok(p) => break p,
                    // ERROR_PIPE_BUSY: every instance is serving someone; try again.
                    Err(e)
                        if e.raw_os_error() == Some(231)
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    // No such pipe (NotFound): the mount has exited, its file stayed behind.
                    Err(e) => return Err(e),
                }
            };
            pipe.write_all(request.as_bytes())?;
            pipe.write_all(b"\n")?;
            let mut line = String::new();
            BufReader::new(pipe).read_line(&mut line)?;
            Ok(line)
        };
        let _ = tx.send(talk());
    });
    let line = rx.recv_timeout(ANSWER_WITHIN).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "the mount does not answer")
    })??;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the mount closed the connection",
        ));
    }
    Ok(line)
}

#[cfg(not(any(unix, windows)))]
pub fn request(_path: &Path, _request: &str) -> std::io::Result<String> {
    Err(std::io::Error::other(
        "control sockets come with this OS's frontend",
    ))
}

/// Why a mount's status could not be had.
#[derive(Debug)]
pub enum Unanswered {
    /// Its socket is gone or refuses connections: the mount has exited.
    Gone,
    /// It is there but did not answer properly (busy, wedged).
    Silent(String),
    /// Its socket refuses connections while its process still runs: starting, or stopping
    /// (the socket closes first, then the uploads drain and the daemon exits).
    Closing,
}

/// The status of one running mount, asked through its socket.
pub fn status_of(path: &Path) -> Result<Report, Unanswered> {
    match request(path, "status") {
        Ok(line) => parse_report(&line).map_err(Unanswered::Silent),
        // The socket went with its mount.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Unanswered::Gone),
        // Left by a mount that died, unless its process still runs (starting, or stopping
        // with the socket already closed). A connection the daemon dropped as it closed its
        // socket (broken pipe, reset, no answer at all) is the same.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            if pid_of(path).is_none_or(|p| !alive(p)) {
                Err(Unanswered::Gone)
            } else {
                Err(Unanswered::Closing)
            }
        }
        Err(e) => Err(Unanswered::Silent(e.to_string())),
    }
}

fn parse_report(line: &str) -> Result<Report, String> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
        && let Some(e) = v.get("error").and_then(|e| e.as_str())
    {
        return Err(e.to_owned());
    }
    serde_json::from_str(line).map_err(|e| format!("unreadable answer: {e}"))
}

/// Every running mount whose socket is in [`sockets_dir`] of `base`, with its socket; and
/// the sockets of mounts that did not answer. Sockets of mounts that died are removed on the
/// way. Nothing is trusted from a folder that is not this user's own.
pub fn running(base: &Path) -> Running {
    let (mut out, mut silent) = (Vec::new(), Vec::new());
    let dir = sockets_dir(base);
    if crate::sys::files::is_private_dir(&dir).is_err() {
        return Running::default();
    }
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Running::default();
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "sock") {
            continue;
        }
        match status_of(&path) {
            Ok(r) => out.push((path, r)),
            Err(Unanswered::Gone) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(Unanswered::Silent(why)) => silent.push((path, why)),
            Err(Unanswered::Closing) => silent.push((path, "starting or stopping".into())),
        }
    }
    out.sort_by(|a, b| a.1.mount.mountpoint.cmp(&b.1.mount.mountpoint));
    Running {
        answering: out,
        silent,
    }
}

/// The mounts [`running`] found.
#[derive(Debug, Default)]
pub struct Running {
    /// Mounts that answered, with their sockets.
    pub answering: Vec<(PathBuf, Report)>,
    /// Sockets of mounts that are there but did not answer, and why.
    pub silent: Vec<(PathBuf, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_zombie_is_not_alive_and_a_running_process_is() {
        assert!(alive(std::process::id()));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        // Not reaped yet: a zombie once it exits.
        let start = std::time::Instant::now();
        while alive(pid) {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "never exited"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "reaped too early"
        );
        let _ = child.wait();
        assert!(!alive(pid));
    }

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
                changes: vec![crate::vfs::activity::Change {
                    kind: crate::vfs::activity::ChangeKind::Rename,
                    path: "/x".into(),
                    to: Some("/y".into()),
                    secs: 0.2,
                }],
                server_silent_secs: Some(4),
            },
        };
        let json = serde_json::to_string(&r).expect("serializes");
        assert!(json.contains("\"phase\":\"queued\""), "{json}");
        let back: Report = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.activity.uploads[0].path, "/a b");
        assert_eq!(back.activity.changes[0].to.as_deref(), Some("/y"));
        // A report from a davdrive that did not list changes still reads.
        let mut old = serde_json::to_value(&back).expect("json");
        assert!(old.get("changes").is_some(), "{old}");
        if let Some(a) = old.as_object_mut() {
            a.remove("changes");
        }
        let older: Report = serde_json::from_value(old).expect("an older report");
        assert!(older.activity.changes.is_empty());
        assert_eq!(back.activity.server_silent_secs, Some(4));
    }

    /// The control channel end to end, on both platforms (a Unix socket on Linux, a named
    /// pipe on Windows, there under Wine): found by `running`, answers `status`, and `stop`
    /// reaches the mount's signal wait.
    #[test]
    fn status_and_stop_through_the_control_channel() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let base = std::env::temp_dir().join(format!("davdrive-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let client = crate::dav::DavClient::new(crate::dav::ClientConfig::new(
            url::Url::parse("http://127.0.0.1:9/dav/").expect("url"),
        ))
        .expect("client");
        let vfs = Vfs::new(
            client,
            crate::vfs::VfsConfig {
                cache_dir: base.join("mount"),
                ..crate::vfs::VfsConfig::default()
            },
        )
        .expect("core");
        let info = MountInfo {
            pid: std::process::id(),
            url: "http://127.0.0.1:9/dav/".into(),
            mountpoint: "X:".into(),
            cache_dir: base.join("mount"),
            started: 1,
            async_close: false,
        };
        let sock = serve(&base, vfs, info, rt.handle()).expect("control channel");
        // Under $XDG_RUNTIME_DIR when set, beside other mounts of this user: this one's.
        let found = running(&base);
        let (path, report) = found
            .answering
            .iter()
            .find(|(_, r)| {
                r.mount.pid == std::process::id() && r.mount.cache_dir == base.join("mount")
            })
            .expect("this mount answers");
        assert_eq!(report.mount.mountpoint, Path::new("X:"));
        let path = path.clone();
        let mut signals = super::super::Signals::catch(&rt);
        let reply = request(&path, "stop").expect("stop");
        assert!(reply.contains("\"stopping\":true"), "{reply}");
        let got = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), signals.recv()).await
        });
        assert_eq!(got.ok(), Some(super::super::Signal::Stop));
        drop(sock);
        assert!(matches!(
            status_of(&found.answering[0].0),
            Err(Unanswered::Gone)
        ));
        let _ = std::fs::remove_dir_all(&base);
    }
}
