//! An ordinary desktop user for the tests that matter to one: created by `scripts/test`
//! (`davdrive-test`, or `DAVDRIVE_TEST_USER`), with `/dev/fuse` usable by everyone as on a
//! desktop. Commands run as that user with a login-like environment of their own (HOME,
//! USER, PATH; nothing of ours), and use a copy of the `davdrive` binary the user can reach
//! (the build tree may sit in a folder only root can enter).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// A fresh home for this test binary (`HOME`), owned by the user.
    pub home: PathBuf,
    /// The `davdrive` binary, in a folder the user can enter.
    pub bin: PathBuf,
    /// The home the user database gives (where mount(8)'s helper looks).
    pub login_home: PathBuf,
    _dir: tempfile::TempDir,
}

/// The test user, or `None` (and a note) outside CI when there is none; panics in CI.
pub fn user() -> Option<&'static User> {
    static USER: OnceLock<Option<User>> = OnceLock::new();
    USER.get_or_init(find).as_ref()
}

fn find() -> Option<User> {
    let name = std::env::var("DAVDRIVE_TEST_USER").unwrap_or_else(|_| "davdrive-test".into());
    let out = Command::new("getent")
        .args(["passwd", &name])
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let fields: Vec<&str> = line.trim().split(':').collect();
    let (Some(uid), Some(gid)) = (
        fields.get(2).and_then(|u| u.parse().ok()),
        fields.get(3).and_then(|g| g.parse().ok()),
    ) else {
        if super::in_ci() {
            panic!("the test user {name} does not exist; scripts/test creates it");
        }
        eprintln!("SKIPPED: no test user {name} (scripts/test creates it)");
        return None;
    };
    let fuse_ok = std::fs::metadata("/dev/fuse")
        .is_ok_and(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o006 == 0o006);
    if !fuse_ok {
        if super::in_ci() {
            panic!("/dev/fuse is not usable by ordinary users; scripts/test makes it so");
        }
        eprintln!("SKIPPED: /dev/fuse is not mode 0666 (scripts/test makes it so)");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("davdrive-user")
        .tempdir()
        .expect("temp dir");
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).expect("chmod")
    };
    mode(dir.path(), 0o755);
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    mode(&bin, 0o755);
    let exe = bin.join("davdrive");
    std::fs::copy(env!("CARGO_BIN_EXE_davdrive"), &exe).expect("copy davdrive");
    mode(&exe, 0o755);
    let home = dir.path().join("home");
    std::fs::create_dir(&home).expect("home");
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).expect("chown home");
    mode(&home, 0o700);
    let login_home = PathBuf::from(fields.get(5).copied().unwrap_or("/nonexistent"));
    Some(User {
        name,
        uid,
        gid,
        home,
        bin: exe,
        login_home,
        _dir: dir,
    })
}

impl User {
    /// `program args...` as the user, in a login-like environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .env("LANG", "C.UTF-8")
            .env(
                "PATH",
                format!(
                    "{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                    self.bin
                        .parent()
                        .map(Path::display)
                        .map(|d| d.to_string())
                        .unwrap_or_default()
                ),
            )
            .current_dir(&self.home)
            .stdin(Stdio::null())
            .uid(self.uid)
            .gid(self.gid);
        c
    }

    /// `davdrive args...` as the user.
    pub fn davdrive(&self) -> Command {
        self.command(&self.bin)
    }

    /// Runs `cmd` (bounded by `limit`) and returns its output.
    pub fn run(&self, mut cmd: Command, limit: Duration) -> Output {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = super::spawn_owned(cmd).expect("spawn as the test user");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(limit) {
            Ok(out) => out.expect("output"),
            Err(_) => {
                // SAFETY: kill of a pid we spawned; at worst it is already gone.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("a command run as the test user did not finish within {limit:?}");
            }
        }
    }

    /// A fresh directory under the user's home, owned by the user.
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.home.join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        std::os::unix::fs::chown(&p, Some(self.uid), Some(self.gid)).expect("chown");
        p
    }

    /// Writes `text` to `rel` under the home, owned by the user (private).
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.home.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
            let mut up = Some(d);
            while let Some(x) = up {
                if !x.starts_with(&self.home) || x == self.home {
                    break;
                }
                let _ = std::os::unix::fs::chown(x, Some(self.uid), Some(self.gid));
                up = x.parent();
            }
        }
        std::fs::write(&p, text).expect("write");
        std::os::unix::fs::chown(&p, Some(self.uid), Some(self.gid)).expect("chown");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        p
    }
}

/// `stdout` and `stderr` of `out`, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
