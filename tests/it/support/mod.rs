//! The test harness: real WebDAV servers on 127.0.0.1, started by the tests themselves, and
//! real FUSE mounts of the `davdrive` binary.
//!
//! - [`apache`]: Apache httpd with mod_dav/mod_dav_fs, own config in a temp dir, a plain
//!   location `/dav/` and a Basic-auth location `/auth/`; one line per request in its access
//!   log, which tests read to count requests.
//! - [`orthanc`]: Orthanc (Debian package) with WebDAV, loaded with the DICOM samples in
//!   `tests/data/dicom` through its REST API.
//! - [`dav_server`]: an in-process `dav-server` serving a temp dir, counting requests.
//! - [`Mount`]: `davdrive mount --foreground`, ready when it prints its ready line, unmounted
//!   (and the daemon reaped) on drop.
//!
//! Shared servers start once per test binary. Their processes are spawned from one long-lived
//! thread with `PR_SET_PDEATHSIG`, so they die with the test binary even when it is killed.
//! With `CI=true` a missing server binary fails the test instead of skipping it.

#![allow(dead_code)]

pub mod apache;
pub mod dav_server;
pub mod fault_proxy;
pub mod http_proxy;
pub mod kerberos;
pub mod ntlm;
pub mod orthanc;
pub mod servers;
pub mod user;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a server or a mount may take to come up before the test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether we run in CI, where a missing server is a failure, never a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns `false` (and says so) when `binary` is missing outside CI; panics in CI.
pub fn have(binary: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {binary}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if in_ci() {
            panic!("{binary} is not installed; CI must install it (scripts/test does)");
        }
        eprintln!("SKIPPED: {binary} is not installed (run scripts/test to install it)");
    }
    found
}

/// Whether FUSE mounts are possible here; panics in CI when not.
pub fn have_fuse() -> bool {
    let ok = Path::new("/dev/fuse").exists() && have("fusermount3");
    if !ok && in_ci() {
        panic!("/dev/fuse or fusermount3 is missing");
    }
    ok
}

/// Whether the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

type SpawnReq = (Command, bool, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from a thread that lives as long as the test binary, with the child set to
/// die when that thread's process dies (PR_SET_PDEATHSIG fires on the *thread's* exit).
pub fn spawn_owned(cmd: Command) -> std::io::Result<Child> {
    spawn_kept(cmd, true)
}

/// As [`spawn_owned`]; with `die_with_us` false the child is left to notice our exit by
/// itself (for a wrapper that must outlive us long enough to stop its own children).
pub fn spawn_kept(cmd: Command, die_with_us: bool) -> std::io::Result<Child> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnReq>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnReq>();
        std::thread::Builder::new()
            .name("server-keeper".into())
            .spawn(move || {
                for (mut cmd, die_with_us, reply) in rx {
                    use std::os::unix::process::CommandExt;
                    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
                    if die_with_us {
                        unsafe {
                            cmd.pre_exec(|| {
                                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                                Ok(())
                            });
                        }
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("keeper thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    keeper
        .lock()
        .expect("keeper lock")
        .send((cmd, die_with_us, tx))
        .expect("keeper alive");
    rx.recv().expect("keeper answered")
}

/// Runs a server for the lifetime of the test binary (statics are never dropped) and removes
/// `dir` after it. A wrapper shell starts `program args`, stops it with SIGTERM when our end of
/// its standard input closes (the binary exited, however it ended), waits for it and removes
/// `dir`. The wrapper also exits when the server does, so a server that dies at start-up
/// fails `wait_for_port` at once. Paths travel as arguments, never spliced into the script.
pub fn spawn_server(
    program: &str,
    args: &[&std::ffi::OsStr],
    dir: &Path,
    env: &[(&str, &Path)],
    stderr: Stdio,
) -> Child {
    // A signal to the wrapper (Ctrl-C, a runner's SIGTERM) stops the server and still
    // removes the directory: `wait` returns early on a trapped signal, hence the loop.
    const SCRIPT: &str = r#"dir=$1; shift
exec 3<&0
"$@" </dev/null 3<&- &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' INT TERM HUP
{ read _ignored <&3; kill -TERM "$pid"; } &
reader=$!
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
kill "$reader" 2>/dev/null
rm -rf "$dir""#;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg("sh")
        .arg(dir)
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_kept(cmd, false).unwrap_or_else(|e| panic!("spawn {program}: {e}"))
}

/// The first `len` bytes of `f` as a shared read-only mapping shows them.
pub fn read_mapped(f: &std::fs::File, len: usize) -> Vec<u8> {
    let size = f.metadata().expect("stat").len();
    assert!(
        len > 0 && size >= len as u64,
        "cannot map {len} bytes of a {size}-byte file"
    );
    // SAFETY: a fresh read-only mapping of a file we hold open, no longer than the file
    // (checked above, so no SIGBUS), copied out and unmapped before returning; nothing else
    // refers to it.
    unsafe {
        let mapped = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(f),
            0,
        );
        assert_ne!(
            mapped,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let copy = std::slice::from_raw_parts(mapped as *const u8, len).to_vec();
        libc::munmap(mapped, len);
        copy
    }
}

/// A free TCP port on 127.0.0.1, for a server that is started later (or restarted on it).
///
/// Ports come from below the kernel's ephemeral range (32768–60999 by default), so no
/// outgoing connection of a parallel test and no `bind(0)` can take the port between this
/// call and the server's own bind; the counter keeps the ports of one test run distinct, and
/// its start depends on the process id so that two test binaries rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000; // up to 31_999
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 997) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free TCP port on 127.0.0.1 between {LOW} and {}",
        LOW + SPAN
    )
}

/// Waits until something accepts connections on `port`, or fails after `timeout`.
/// Servers give no other signal that they listen; the wait is bounded.
pub fn wait_for_port(port: u16, child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited during start-up: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "server did not listen on {port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What every authenticated-mount test does through the mount: the listing holds just
/// `name`, which reads as `content`; a file of `size` bytes is written as `up.bin` and a
/// directory `folder` is made. Returns what was written, for the caller to find on the server.
pub fn list_read_write_mkdir(
    m: &Mount,
    name: &str,
    content: &[u8],
    size: usize,
    how: &str,
) -> Vec<u8> {
    let names: Vec<String> = std::fs::read_dir(m.path())
        .expect("listing")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [name], "listing {how}");
    assert_eq!(
        std::fs::read(m.path().join(name)).expect("read"),
        content,
        "read {how}"
    );
    let data = pattern(size, size as u64);
    std::fs::write(m.path().join("up.bin"), &data).unwrap_or_else(|e| panic!("write {how}: {e}"));
    std::fs::create_dir(m.path().join("folder")).unwrap_or_else(|e| panic!("mkdir {how}: {e}"));
    data
}

/// The project's root directory.
pub fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A live `davdrive mount --foreground` of `url`.
pub struct Mount {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    stderr: std::sync::Arc<Mutex<String>>,
    /// Reads `stderr` until the daemon exits.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Mount {
    /// Mounts `url` with extra arguments, waiting for the ready line (bounded).
    pub fn new(url: &str, extra: &[&str]) -> Mount {
        Self::try_new(url, extra, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As `new`, with extra environment variables; returns the daemon's stderr on failure.
    pub fn try_new(url: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<Mount, String> {
        let dir = tempfile::Builder::new()
            .prefix("davdrive-mnt")
            .tempdir()
            .expect("mount dir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_davdrive"));
        cmd.arg("mount")
            .arg(url)
            .arg(dir.path())
            .arg("--foreground")
            .args(extra)
            .env_remove("DAVDRIVE_PASSWORD")
            .env_remove("DAVDRIVE_USER")
            .stdin(Stdio::null());
        // The servers are on 127.0.0.1: a proxy from the machine's environment (for package
        // registries, say) must not carry the tests' traffic. Tests that want one set it.
        for var in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = spawn_owned(cmd).expect("spawn davdrive");
        let stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = std::sync::Arc::new(Mutex::new(String::new()));
        let stderr_reader = {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                    if let Ok(mut s) = stderr.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            })
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            for _ in lines {}
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(line)) if line.starts_with("davdrive: mounted") => Ok(Mount {
                dir,
                child: Some(child),
                stderr,
                stderr_reader: Some(stderr_reader),
            }),
            other => {
                let _ = child.kill();
                let status = child.wait();
                // The pipe closes with the child: the reader finishes, bounded by that.
                let _ = stderr_reader.join();
                let err = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                Err(format!(
                    "mount of {url} failed: {other:?}, {status:?}, stderr:\n{err}"
                ))
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The log as it will be, for a thread that outlives this borrow.
    pub fn log_reader(&self) -> impl Fn() -> String + Send + 'static {
        let s = self.stderr.clone();
        move || s.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Unmounts with `davdrive unmount` and waits (bounded) for the daemon to exit.
    pub fn unmount(mut self) -> std::process::ExitStatus {
        self.unmount_inner().expect("daemon exit status")
    }

    /// As [`Mount::unmount`], and the daemon's whole stderr.
    pub fn unmount_with_log(mut self) -> (std::process::ExitStatus, String) {
        let status = self.unmount_inner().expect("daemon exit status");
        // The pipe closed with the daemon: the reader ends, bounded by that.
        if let Some(r) = self.stderr_reader.take() {
            let _ = r.join();
        }
        (status, self.log())
    }

    fn unmount_inner(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // The daemon is waited for below (bounded); `davdrive unmount`'s own wait is tested
        // in `desktop`.
        let out = Command::new(env!("CARGO_BIN_EXE_davdrive"))
            .arg("unmount")
            .arg("--no-wait")
            .arg(self.dir.path())
            .output()
            .expect("run davdrive unmount");
        if !out.status.success() {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(self.dir.path())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("davdrive did not exit within 20 s of being unmounted");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() && !std::thread::panicking() {
            self.unmount_inner();
        } else if let Some(mut child) = self.child.take() {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(self.dir.path())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `path` is a mount point now (from /proc/self/mountinfo).
/// The davdrive processes serving `mountpoint` (by their command line).
pub fn daemons_of(mountpoint: &Path) -> Vec<u32> {
    let needle = mountpoint.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                        let c = String::from_utf8_lossy(&c);
                        c.contains(&needle)
                            && c.split('\0')
                                .next()
                                .is_some_and(|exe| exe.contains("davdrive"))
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|mp| mp == want))
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A small runtime for tests that call the async client directly.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The path of example `name` (`target/<profile>/examples/<name>`), built with cargo if it
/// is not there yet (`cargo test` builds examples, `cargo test --test it` does not).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/it-<hash> -> target/<profile>/examples/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("examples");
    let bin = dir.join(name);
    if !bin.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "--example", name])
            .current_dir(project_dir())
            .status()
            .expect("run cargo build --example");
        assert!(st.success(), "cargo build --example {name} failed");
    }
    bin
}

/// A server process killed with SIGKILL (and reaped) when dropped.
pub struct Killed(Child);

impl Killed {
    /// Owns `child`: killed and reaped when dropped.
    pub fn new(child: Child) -> Killed {
        Killed(child)
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `dev-server` (examples/dev-server.rs, dav-server LocalFs) in its own process, so that a
/// test can kill it with SIGKILL (by dropping it). Started on `port` over `root`; returns
/// once it listens.
pub fn dev_server_process(root: &Path, port: u16) -> Killed {
    let mut cmd = Command::new(example("dev-server"));
    cmd.arg(root)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = spawn_owned(cmd).expect("spawn dev-server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next().and_then(Result::ok));
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(line)) if line.starts_with("dev-server: serving") => Killed(child),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dev-server did not start: {other:?}");
        }
    }
}
