//! The desktop user's ways in, each as an ordinary user (never root), with the commands a
//! user types: `davdrive mount` / `status` / `unmount`, `mount` from /etc/fstab and `mount
//! -t davdrive`, login mounts (systemd notification, generated units, a killed mount
//! cleared), `.davmount` files, and what GIO does on the mount (trash, type sniffing, copy).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::faults::eventually;
use crate::support::apache::{self, apache};
use crate::support::fault_proxy::FaultProxy;
use crate::support::user::{self, User, text};
use crate::support::{have, have_fuse, is_mounted, pattern};

const LIMIT: Duration = Duration::from_secs(60);

fn setup() -> Option<(&'static apache::Apache, &'static User)> {
    if !have_fuse() {
        return None;
    }
    let a = apache()?;
    let u = user::user()?;
    Some((a, u))
}

/// Runs `davdrive args` as `u`, bounded, and returns its output.
fn dd(u: &User, args: &[&str]) -> std::process::Output {
    let mut c = u.davdrive();
    c.args(args);
    u.run(c, LIMIT)
}

fn abs(p: &Path) -> String {
    p.display().to_string()
}

/// The report of the running mount of `url` in `status --json`.
fn report_of(u: &User, url: &str) -> serde_json::Value {
    let out = dd(u, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    v["mounts"]
        .as_array()
        .and_then(|m| m.iter().find(|r| r["mount"]["url"] == url).cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// The next message to the fake service manager `sock` (its read timeout bounds the wait).
fn notice(sock: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("no notification within the timeout: {e}"),
        }
    }
}

/// Every daemon log under the user's cache directory.
fn daemon_logs(u: &User) -> String {
    std::fs::read_dir(u.home.join(".cache/davdrive"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("daemon.log")).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Mounts `url` on a fresh `~/name` as `u`, unmounted by the guard if the test fails first.
fn mount_as<'a>(u: &'a User, url: &str, name: &str) -> (std::path::PathBuf, Unmount<'a>) {
    let mnt = u.dir(name);
    let guard = Unmount(u, mnt.clone());
    let out = dd(u, &["mount", url, &abs(&mnt)]);
    assert!(out.status.success(), "{}", text(&out));
    (mnt, guard)
}

/// The names in the server's folder `dir` that `keep` picks.
fn names_on(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("server dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| keep(n))
        .collect()
}

/// Waits (bounded by `limit`) for `child`, sent SIGTERM, to exit.
fn exits_within(child: &mut std::process::Child, limit: Duration) {
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(
            start.elapsed() < limit,
            "the daemon did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pids of davdrive daemons serving `dir`.
fn daemon_pids(dir: &Path) -> Vec<u32> {
    crate::support::daemons_of(dir)
}

/// Unmounts `dir` as `u` (lazily if needed) so that a failed test leaves nothing mounted.
struct Unmount<'a>(#[allow(dead_code)] &'a User, std::path::PathBuf);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        if is_mounted(&self.1) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.1)
                .status();
        }
        for pid in daemon_pids(&self.1) {
            // SAFETY: a davdrive daemon of this test; at worst it is gone already.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

#[test]
fn an_ordinary_user_mounts_copies_sees_status_and_unmounts() {
    let Some((a, u)) = setup() else { return };
    let dir = a.fresh_dir("desk-basic");
    std::fs::write(dir.join("hello.txt"), b"hello from the server").expect("write");
    apache::give_to_server(&dir);
    let mnt = u.dir("basic");
    let _guard = Unmount(u, mnt.clone());
    let url = a.url("desk-basic");
    let out = dd(u, &["mount", &url, &abs(&mnt)]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("davdrive: mounted"), "{said}");
    assert!(is_mounted(&mnt));
    // The user reads and copies with ordinary tools.
    let mut cat = u.command("cat");
    cat.arg("basic/hello.txt");
    let out = u.run(cat, LIMIT);
    assert_eq!(out.stdout, b"hello from the server", "{}", text(&out));
    let src = u.write("src.bin", "");
    std::fs::write(&src, pattern(300_000, 7)).expect("write source");
    let mut cp = u.command("cp");
    cp.args(["src.bin", "basic/copied.bin"]);
    let out = u.run(cp, LIMIT);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(dir.join("copied.bin")).expect("on the server"),
        pattern(300_000, 7)
    );
    // Shells and file managers ask access() before running a file: 0644 is not executable.
    let test = |flag: &str, path: &str| {
        let mut c = u.command("test");
        c.args([flag, path]);
        u.run(c, LIMIT).status.success()
    };
    let (file, folder) = (abs(&mnt.join("hello.txt")), abs(&mnt));
    assert!(!test("-x", &file), "a 0644 file counts as executable");
    assert!(test("-r", &file) && test("-w", &file) && test("-x", &folder));
    // `status` shows the running mount, in words and in JSON.
    let out = dd(u, &["status"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains(&format!("{url} on {}", mnt.display())) && s.contains("server: answering"),
        "{}",
        text(&out)
    );
    let r = report_of(u, &url);
    assert_eq!(r["mount"]["mountpoint"], abs(&mnt).as_str(), "{r}");
    assert_eq!(r["uploads"], serde_json::json!([]));
    // The daemon's log is plain text, private to the user.
    let log = std::fs::read_dir(u.home.join(".cache/davdrive"))
        .expect("cache dir")
        .flatten()
        .map(|e| e.path().join("daemon.log"))
        .find(|p| p.exists())
        .expect("daemon.log");
    let bytes = std::fs::read(&log).expect("log");
    assert!(!bytes.contains(&0x1b), "escape codes in the log file");
    // A refused access() is an answer, not a problem to warn of.
    let said = String::from_utf8_lossy(&bytes);
    assert!(
        !said.lines().any(|l| l.contains("WARN")),
        "warnings in the log of an ordinary session:\n{said}"
    );
    let md = std::fs::metadata(&log).expect("log metadata");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
        0o600
    );
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&md), u.uid);
    // `--watch` redraws until interrupted (here: one report per second into a pipe).
    let mut w = u.davdrive();
    w.args(["status", "--watch"])
        .stdout(std::process::Stdio::piped());
    let mut watch = crate::support::spawn_owned(w).expect("status --watch");
    let pipe = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = format!("{url} on {}", mnt.display());
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if line.starts_with(&wanted) && tx.send(()).is_err() {
                return;
            }
        }
    });
    for n in 1..=2 {
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("status --watch did not show report {n}"));
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let out = dd(u, &["unmount", &abs(&mnt)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!is_mounted(&mnt));
    // The daemon has exited when unmount returns.
    assert!(daemon_pids(&mnt).is_empty(), "a daemon is left");
    assert_eq!(report_of(u, &url), serde_json::Value::Null);
}

#[test]
fn unmount_waits_for_uploads_behind_closes_and_status_shows_them() {
    let Some((a, u)) = setup() else { return };
    let dir = a.fresh_dir("desk-drain");
    let proxy = FaultProxy::start(a.port);
    let url = format!("http://127.0.0.1:{}/dav/desk-drain/", proxy.port);
    let mnt = u.dir("drain");
    let _guard = Unmount(u, mnt.clone());
    let out = dd(u, &["mount", "--async-close", &url, &abs(&mnt)]);
    assert!(out.status.success(), "{}", text(&out));
    // Uploads crawl at 512 KiB/s: closes return once the data is local, 8 uploads run and
    // the next ones wait for their turn.
    proxy.limit_uploads(512 << 10);
    let files = 12;
    for i in 0..files {
        let f = u.home.join(format!("drain-src{i}"));
        std::fs::write(&f, pattern(1 << 20, i)).expect("source");
        std::os::unix::fs::chown(&f, Some(u.uid), Some(u.gid)).expect("chown");
    }
    let mut cp = u.command("sh");
    cp.arg("-c").arg(format!(
        "for i in $(seq 0 {}); do cp drain-src$i {}/f$i.bin; done",
        files - 1,
        abs(&mnt)
    ));
    let cp = crate::support::spawn_owned(cp).expect("cp");
    eventually(
        Duration::from_secs(30),
        "uploads running and queued",
        || {
            let r = report_of(u, &url);
            let phases: Vec<String> = r["uploads"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["phase"].as_str().map(str::to_owned))
                .collect();
            phases.iter().any(|p| p == "uploading") && phases.iter().any(|p| p == "queued")
        },
    );
    let out = cp.wait_with_output().expect("cp ends");
    assert!(out.status.success(), "{}", text(&out));
    let started = Instant::now();
    let out = dd(u, &["unmount", &abs(&mnt)]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("every upload finished"), "{}", text(&out));
    // It returned only once everything was on the server and the daemon gone.
    for i in 0..files {
        assert_eq!(
            std::fs::read(dir.join(format!("f{i}.bin"))).expect("uploaded before unmount returned"),
            pattern(1 << 20, i)
        );
    }
    assert!(daemon_pids(&mnt).is_empty());
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "it did not wait"
    );
}

#[test]
fn refresh_shows_a_change_made_on_the_server_at_once() {
    let Some((a, u)) = setup() else { return };
    let dir = a.fresh_dir("desk-refresh");
    let mnt = u.dir("refresh");
    let _guard = Unmount(u, mnt.clone());
    std::fs::write(dir.join("old.txt"), b"x").expect("write");
    apache::give_to_server(&dir);
    let out = dd(
        u,
        &[
            "mount",
            "--dir-cache-ttl",
            "3600",
            "--kernel-ttl",
            "3600",
            // Only `refresh` shows changes here (not the folder's revalidation).
            "--revalidate",
            "0",
            &a.url("desk-refresh"),
            "refresh",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let size = || {
        let mut c = u.command("stat");
        c.args(["-c", "%s", "refresh/old.txt"]);
        String::from_utf8_lossy(&u.run(c, LIMIT).stdout)
            .trim()
            .to_owned()
    };
    assert_eq!(size(), "1");
    std::fs::write(dir.join("old.txt"), b"xyz").expect("rewrite");
    apache::give_to_server(&dir);
    let ls = || {
        let mut c = u.command("ls");
        c.arg("refresh");
        String::from_utf8_lossy(&u.run(c, LIMIT).stdout).into_owned()
    };
    assert_eq!(ls(), "old.txt\n");
    std::fs::write(dir.join("new.txt"), b"x").expect("write");
    apache::give_to_server(&dir);
    // Cached for an hour, by davdrive and by the kernel: not seen.
    assert_eq!(ls(), "old.txt\n");
    assert_eq!(size(), "1");
    let out = dd(u, &["refresh", &abs(&mnt)]);
    assert!(out.status.success(), "{}", text(&out));
    // The kernel was told to forget too: the new size at once, not in an hour.
    assert_eq!(ls(), "new.txt\nold.txt\n");
    assert_eq!(size(), "3");
    let out = dd(u, &["unmount", &abs(&mnt)]);
    assert!(out.status.success(), "{}", text(&out));
}

/// An ordinary user's `davdrive doctor --json`: the report of the server (WebDAV, ranges,
/// chunked and partial PUT, locks), with its scratch files gone again.
#[test]
fn doctor_works_for_an_ordinary_user() {
    let Some((a, u)) = setup() else { return };
    let dir = a.fresh_dir("desk-doctor");
    let out = dd(u, &["doctor", "--json", &a.url("desk-doctor")]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(v["writes"]["chunked_put"]["result"], "stored", "{v}");
    assert_eq!(v["writes"]["partial_put"]["result"], "applied", "{v}");
    assert_eq!(v["writes"]["lock"]["supported"], true, "{v}");
    assert!(v["advice"].as_array().is_some_and(|a| !a.is_empty()), "{v}");
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        0,
        "scratch files left"
    );
}

/// /etc/fstab, restored when dropped.
struct Fstab(String);

impl Drop for Fstab {
    fn drop(&mut self) {
        let _ = std::fs::write("/etc/fstab", &self.0);
    }
}

#[test]
fn fstab_entries_and_mount_t_davdrive_work_for_an_ordinary_user() {
    let Some((a, u)) = setup() else { return };
    if !Path::new("/usr/sbin/mount.davdrive").exists()
        && !Path::new("/sbin/mount.davdrive").exists()
    {
        assert!(
            !crate::support::in_ci(),
            "mount.davdrive is not installed; scripts/test installs the .deb"
        );
        eprintln!("SKIPPED: mount.davdrive is not installed (scripts/test installs the .deb)");
        return;
    }
    // The helper mount(8) runs is the installed package's: it must be this build.
    let installed = std::fs::read("/usr/bin/davdrive").unwrap_or_default();
    if installed != std::fs::read(env!("CARGO_BIN_EXE_davdrive")).expect("this build") {
        assert!(
            !crate::support::in_ci(),
            "/usr/bin/davdrive is not this build; scripts/test installs the .deb it builds"
        );
        eprintln!("SKIPPED: the installed davdrive is another build (run scripts/test)");
        return;
    }
    let dir = a.fresh_dir("desk-fstab");
    std::fs::write(dir.join("in-fstab.txt"), b"via fstab").expect("write");
    apache::give_to_server(&dir);
    let url = a.url("desk-fstab");
    let mnt = u.dir("NAS");
    let _guard = Unmount(u, mnt.clone());
    // A profile holds the options; the entry names it.
    // mount(8) gives its helper no HOME: the helper takes the user's from the user database.
    let config = u.login_home.join(".config/davdrive/config.toml");
    std::fs::create_dir_all(config.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &config,
        format!("[profile.nas]\nurl = \"{url}\"\ndir-cache-ttl = 5\n"),
    )
    .expect("config");
    let _ = Command::new("chown")
        .args(["-R", &u.name])
        .arg(u.login_home.join(".config"))
        .status();
    let saved = std::fs::read_to_string("/etc/fstab").unwrap_or_default();
    let _restore = Fstab(saved.clone());
    std::fs::write(
        "/etc/fstab",
        format!(
            "{saved}\n{url} {} davdrive noauto,user,_netdev,nofail,x-systemd.automount,profile=nas 0 0\n",
            mnt.display()
        ),
    )
    .expect("fstab");
    let mut m = u.command("mount");
    m.arg(&mnt);
    let out = u.run(m, LIMIT);
    assert!(out.status.success(), "mount DIR: {}", text(&out));
    assert!(is_mounted(&mnt));
    let mut cat = u.command("cat");
    cat.arg(mnt.join("in-fstab.txt"));
    assert_eq!(u.run(cat, LIMIT).stdout, b"via fstab");
    // Mounted twice: refused, the first mount stays.
    let mut again = u.command("mount");
    again.arg(&mnt);
    let out = u.run(again, LIMIT);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already mounted"),
        "{}",
        text(&out)
    );
    // The user unmounts with umount, as with any user mount.
    let mut um = u.command("umount");
    um.arg(&mnt);
    let out = u.run(um, LIMIT);
    assert!(out.status.success(), "umount: {}", text(&out));
    eventually(Duration::from_secs(20), "the daemon exits", || {
        daemon_pids(&mnt).is_empty()
    });

    // mount -t davdrive with -o options mapped onto the command line's.
    let mut m = u.command("mount");
    m.args(["-t", "davdrive", &url])
        .arg(&mnt)
        .args(["-o", "read_only,dir_cache_ttl=2,async_close"]);
    let out = u.run(m, LIMIT);
    assert!(out.status.success(), "mount -t: {}", text(&out));
    let mut touch = u.command("touch");
    touch.arg(mnt.join("x"));
    let out = u.run(touch, LIMIT);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "read_only did not apply: {}",
        text(&out)
    );
    let mut um = u.command("umount");
    um.arg(&mnt);
    assert!(u.run(um, LIMIT).status.success());
    eventually(Duration::from_secs(20), "the daemon exits", || {
        daemon_pids(&mnt).is_empty()
    });

    // A password in the options is refused, with what to do instead.
    let mut m = u.command("mount");
    m.args(["-t", "davdrive", &url])
        .arg(&mnt)
        .args(["-o", "username=alice,password=secret"]);
    let out = u.run(m, LIMIT);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("readable by every user") && err.contains("davdrive login"),
        "{}",
        text(&out)
    );
    assert!(!is_mounted(&mnt));
    // root mounting the per-user entry (systemd's automount would) is told what to add.
    let out = Command::new("mount")
        .arg(&mnt)
        .output()
        .expect("mount as root");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("setuid=USER"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_mount_killed_with_sigkill_is_cleared_and_mounted_again() {
    let Some((a, u)) = setup() else { return };
    let dir = a.fresh_dir("desk-killed");
    std::fs::write(dir.join("still.txt"), b"here").expect("write");
    apache::give_to_server(&dir);
    let url = a.url("desk-killed");
    let (mnt, _guard) = mount_as(u, &url, "killed");
    let pids = daemon_pids(&mnt);
    assert_eq!(pids.len(), 1, "one daemon serves {}", mnt.display());
    for &pid in &pids {
        // SAFETY: the daemon of this test.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    // Gone, or a zombie: its descriptors (the FUSE connection) are closed by then.
    eventually(Duration::from_secs(10), "the daemon dies", || {
        pids.iter().all(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status")).map_or(true, |s| {
                s.lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'))
            })
        })
    });
    // The kernel may answer from its attribute cache for a second (`--kernel-ttl`).
    eventually(Duration::from_secs(10), "the mount point is dead", || {
        let mut stat = u.command("stat");
        stat.arg(abs(&mnt));
        let out = u.run(stat, LIMIT);
        String::from_utf8_lossy(&out.stderr).contains("Transport endpoint is not connected")
    });
    let out = dd(u, &["mount", &url, &abs(&mnt)]);
    assert!(
        out.status.success(),
        "mount over the dead one: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Transport endpoint is not connected"),
        "the clean-up is said: {}",
        text(&out)
    );
    let mut cat = u.command("cat");
    cat.arg("killed/still.txt");
    assert_eq!(u.run(cat, LIMIT).stdout, b"here");
    let out = dd(u, &["unmount", &abs(&mnt)]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn systemd_hears_status_while_the_server_is_away_then_ready_then_stopping() {
    let Some((a, u)) = setup() else { return };
    a.fresh_dir("desk-notify");
    let proxy = FaultProxy::start(a.port);
    let url = format!("http://127.0.0.1:{}/dav/desk-notify/", proxy.port);
    let mnt = u.dir("notify");
    let _guard = Unmount(u, mnt.clone());
    // The fake service manager: a datagram socket the user may write to.
    let sock_dir = u.dir("notify-sock");
    let sock_path = sock_dir.join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind");
    std::os::unix::fs::chown(&sock_path, Some(u.uid), Some(u.gid)).expect("chown");
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    // The server does not answer at "login".
    proxy.freeze();
    let mut c = u.davdrive();
    c.args([
        "mount",
        "--foreground",
        "--wait-for-server",
        "--timeout",
        "2",
    ])
    .args(["--connect-timeout", "2", &url, "notify"])
    .env("NOTIFY_SOCKET", &sock_path)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut child = crate::support::spawn_owned(c).expect("spawn");
    let recv = || notice(&sock);
    let first = recv();
    assert!(
        first.starts_with("STATUS=waiting") && first.contains("next try"),
        "{first}"
    );
    assert!(!is_mounted(&mnt));
    proxy.thaw();
    let mut got = Vec::new();
    let ready = loop {
        let m = recv();
        if m.contains("READY=1") {
            break m;
        }
        got.push(m);
    };
    assert!(ready.contains("STATUS=mounted"), "{ready}");
    assert!(is_mounted(&mnt));
    // SAFETY: the daemon we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopping = recv();
    assert!(stopping.contains("STOPPING=1"), "{stopping} after {got:?}");
    exits_within(&mut child, LIMIT);
    assert!(!is_mounted(&mnt));
}

#[test]
fn autostart_writes_a_unit_systemd_accepts_and_an_xdg_entry_and_removes_them() {
    let Some((a, u)) = setup() else { return };
    if !have("systemd-analyze") {
        return;
    }
    u.write(
        ".config/davdrive/config.toml",
        &format!(
            "[profile.work]\nurl = \"{}\"\nmountpoint = \"~/Work\"\n",
            a.url("desk-auto")
        ),
    );
    let out = dd(u, &["autostart", "enable", "work", "--with", "systemd"]);
    assert!(out.status.success(), "{}", text(&out));
    let unit = u.home.join(".config/systemd/user/davdrive-work.service");
    let body = std::fs::read_to_string(&unit).expect("unit written");
    assert!(
        body.contains("Type=notify") && body.contains("--wait-for-server"),
        "{body}"
    );
    assert!(
        u.home
            .join(".config/systemd/user/default.target.wants/davdrive-work.service")
            .exists(),
        "not enabled"
    );
    // systemd's own checker accepts it (no running manager needed).
    let runtime = u.dir("runtime");
    let mut v = u.command("systemd-analyze");
    v.args([
        "--user",
        "--man=no",
        "--generators=no",
        "--recursive-errors=no",
        "verify",
    ])
    .arg(&unit)
    .env("XDG_RUNTIME_DIR", &runtime);
    let out = u.run(v, LIMIT);
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        text(&out)
    );
    assert!(
        out.stderr.is_empty() && out.stdout.is_empty(),
        "{}",
        text(&out)
    );
    let out = dd(u, &["autostart", "status", "work"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(enabled)"),
        "{}",
        text(&out)
    );
    let out = dd(u, &["autostart", "disable", "work"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!unit.exists());

    let out = dd(u, &["autostart", "enable", "work", "--with", "xdg"]);
    assert!(out.status.success(), "{}", text(&out));
    let entry = u.home.join(".config/autostart/davdrive-work.desktop");
    let body = std::fs::read_to_string(&entry).expect("entry written");
    assert!(
        body.contains(&format!(
            "Exec={} mount --wait-for-server -- work",
            u.bin.display()
        )),
        "{body}"
    );
    let out = dd(u, &["autostart", "disable", "work"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!entry.exists());
}

#[test]
fn a_davmount_file_mounts_under_home_and_opens_the_file_manager() {
    let Some((a, u)) = setup() else { return };
    let dir = a.fresh_dir("desk-open");
    std::fs::create_dir_all(dir.join("docs")).expect("mkdir");
    std::fs::write(dir.join("docs/readme.txt"), b"opened").expect("write");
    apache::give_to_server(&dir);
    let url = a.url("desk-open");
    // A stand-in for the desktop's opener, recording what it was asked to open.
    let opened = u.home.join("opened");
    let fake = u.write(
        "fakebin/xdg-open",
        &format!("#!/bin/sh\nprintf '%s' \"$1\" > {}\n", opened.display()),
    );
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let file = u.write(
        "share.davmount",
        &format!(
            "<?xml version=\"1.0\"?>\n<dm:mount xmlns:dm=\"http://purl.org/NET/webdav/mount\">\
             <dm:url>{url}</dm:url><dm:open>docs/readme.txt</dm:open></dm:mount>"
        ),
    );
    let mnt = u.home.join("davdrive/127.0.0.1-desk-open");
    let _guard = Unmount(u, mnt.clone());
    let path_with_fake = format!(
        "{}:{}:/usr/bin:/bin",
        u.home.join("fakebin").display(),
        u.bin
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    let open = || {
        let mut c = u.davdrive();
        c.arg("open").arg(&file).env("PATH", &path_with_fake);
        u.run(c, LIMIT)
    };
    let out = open();
    assert!(out.status.success(), "{}", text(&out));
    assert!(is_mounted(&mnt));
    // The folder of the named file is opened, never the file itself.
    assert_eq!(
        std::fs::read_to_string(&opened).expect("opener ran"),
        mnt.join("docs").display().to_string()
    );
    let mut cat = u.command("cat");
    cat.arg(mnt.join("docs/readme.txt"));
    assert_eq!(u.run(cat, LIMIT).stdout, b"opened");
    // Opened again: the running mount is used.
    let out = open();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already mounted"),
        "{}",
        text(&out)
    );
    assert_eq!(daemon_pids(&mnt).len(), 1);
    let mut c = u.davdrive();
    c.arg("unmount").arg(&mnt);
    assert!(u.run(c, LIMIT).status.success());
}

#[test]
fn gio_trash_creates_nothing_on_the_server_and_gio_copies_upload_once() {
    let Some((a, u)) = setup() else { return };
    if !have("gio") {
        return;
    }
    let dir = a.fresh_dir("desk-gio");
    std::fs::write(dir.join("doomed.txt"), b"doomed").expect("write");
    std::fs::write(dir.join("old.bin"), b"old content").expect("write");
    apache::give_to_server(&dir);
    let (mnt, _guard) = mount_as(u, &a.url("desk-gio"), "gio");
    let gio = |args: &[&str]| {
        let mut c = u.command("gio");
        c.args(args);
        u.run(c, LIMIT)
    };
    // The drive has no trash: GIO says so, and no folder appears on the server.
    let out = gio(&["info", "-a", "access::can-trash", "gio/doomed.txt"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("access::can-trash: FALSE"),
        "{}",
        text(&out)
    );
    let out = gio(&["trash", "gio/doomed.txt"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("trash"),
        "{}",
        text(&out)
    );
    assert!(dir.join("doomed.txt").exists(), "the file is untouched");
    let root = a.docroot.join("desk-gio");
    let trash = names_on(&root, |n| n.starts_with(".Trash"));
    assert!(trash.is_empty(), "trash folders on the server: {trash:?}");
    // Not even when asked by hand.
    let mut mk = u.command("mkdir");
    mk.arg(format!("gio/.Trash-{}", u.uid + 1));
    assert!(!u.run(mk, LIMIT).status.success());

    // A server without quota: GIO (and Nautilus before a copy) sees plenty of free space.
    let out = gio(&["info", "-f", "-a", "filesystem::free", &abs(&mnt)]);
    let free: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("filesystem::free: ")?.parse().ok())
        .unwrap_or_else(|| panic!("no filesystem::free: {}", text(&out)));
    assert!(free >= 1 << 50, "free space {free}");
    // gio copy: a new file and an overwrite (GIO writes .goutputstream-XXXXXX and renames
    // it over the target): the right bytes, no temporary file left, one upload each.
    let src = u.home.join("src.bin");
    std::fs::write(&src, pattern(2_000_000, 3)).expect("source");
    std::os::unix::fs::chown(&src, Some(u.uid), Some(u.gid)).expect("chown");
    let before = a.requests("desk-gio").len();
    let out = gio(&["copy", "src.bin", "gio/new.bin"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = gio(&["copy", "src.bin", "gio/old.bin"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(dir.join("new.bin")).expect("new"),
        pattern(2_000_000, 3)
    );
    assert_eq!(
        std::fs::read(dir.join("old.bin")).expect("old"),
        pattern(2_000_000, 3)
    );
    let leftovers = names_on(&dir, |n| {
        n.starts_with(".goutputstream") || n.starts_with(".davdrive")
    });
    assert!(leftovers.is_empty(), "left on the server: {leftovers:?}");
    let reqs = a.settled_requests("desk-gio");
    let full_puts = reqs[before..]
        .iter()
        .filter(|r| r.method == "PUT" && r.bytes_in > 1_000_000)
        .count();
    assert_eq!(
        full_puts,
        2,
        "one upload per copied file: {:?}",
        &reqs[before..]
    );
    let out = dd(u, &["unmount", &abs(&mnt)]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_gio_listing_with_content_types_fetches_at_most_a_small_range_per_file() {
    let Some((a, u)) = setup() else { return };
    if !have("gio") {
        return;
    }
    let dir = a.fresh_dir("desk-sniff");
    let n = 60;
    for i in 0..n {
        // No extension: GIO must look inside to know the type.
        std::fs::write(dir.join(format!("file{i:03}")), pattern(400_000, i)).expect("write");
    }
    apache::give_to_server(&dir);
    let (mnt, _guard) = mount_as(u, &a.url("desk-sniff"), "sniff");
    let before = a.requests("desk-sniff").len();
    let mut c = u.command("gio");
    c.args(["list", "-a", "standard::*,access::*", "sniff"]);
    let out = u.run(c, LIMIT);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        n as usize,
        "{}",
        text(&out)
    );
    let reqs = a.settled_requests("desk-sniff");
    let gets: Vec<_> = reqs[before..]
        .iter()
        .filter(|r| r.method == "GET")
        .collect();
    let total: u64 = gets.iter().map(|r| r.bytes_out).sum();
    assert!(
        gets.len() <= n as usize,
        "more than one GET per file: {}",
        gets.len()
    );
    for g in &gets {
        assert!(
            g.bytes_out <= 128 << 10,
            "a large download for a type sniff: {g:?}"
        );
    }
    assert!(
        !reqs[before..]
            .iter()
            .any(|r| r.path.contains(".hidden") || r.path.contains(".Trash")),
        "requests for names GIO probes: {:?}",
        &reqs[before..]
    );
    eprintln!(
        "gio list: {} GETs, {total} bytes for {n} files of 400000 bytes",
        gets.len()
    );
    let out = dd(u, &["unmount", &abs(&mnt)]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn an_upload_that_fails_after_close_is_shown_on_the_desktop() {
    let Some((a, u)) = setup() else { return };
    if !have("dbus-daemon") || !have("dbus-monitor") {
        return;
    }
    let dir = a.fresh_dir("desk-notice");
    let proxy = FaultProxy::start(a.port);
    let url = format!("http://127.0.0.1:{}/dav/desk-notice/", proxy.port);
    // The user's session bus, and a listener standing in for the desktop's notifications.
    let busdir = u.dir("bus");
    let bus = format!("unix:path={}", busdir.join("bus").display());
    let mut d = u.command("dbus-daemon");
    d.args(["--session", "--nofork", "--address", &bus]);
    let _daemon = crate::support::Killed::new(crate::support::spawn_owned(d).expect("dbus-daemon"));
    eventually(Duration::from_secs(10), "the bus is up", || {
        busdir.join("bus").exists()
    });
    let seen = busdir.join("monitor.txt");
    let out = std::fs::File::create(&seen).expect("monitor output");
    let mut mon = u.command("dbus-monitor");
    mon.args([
        "--address",
        &bus,
        "interface='org.freedesktop.Notifications'",
    ])
    .stdout(out);
    let _monitor =
        crate::support::Killed::new(crate::support::spawn_owned(mon).expect("dbus-monitor"));
    eventually(Duration::from_secs(10), "the monitor listens", || {
        std::fs::read_to_string(&seen).is_ok_and(|s| s.contains("NameAcquired"))
    });
    let mnt = u.dir("notice");
    let _guard = Unmount(u, mnt.clone());
    let mut c = u.davdrive();
    c.args([
        "mount",
        "--async-close",
        "--upload",
        "spool",
        "--timeout",
        "2",
    ])
    .args([
        "--retry-time",
        "0",
        "--upload-retry-time",
        "1",
        &url,
        &abs(&mnt),
    ])
    .env("DBUS_SESSION_BUS_ADDRESS", &bus)
    .env("DAVDRIVE_KEYRING", "keyutils");
    let out = u.run(c, LIMIT);
    assert!(out.status.success(), "{}", text(&out));
    // The copy succeeds (close returns once the data is local); the server is gone by then.
    std::fs::write(u.home.join("late-src"), b"written, then the server froze").expect("src");
    // A first copy while the server answers: the folder is listed and known writable, so the
    // next copy needs the server only for its upload.
    let mut warm = u.command("cp");
    warm.args(["late-src", &abs(&mnt.join("warm.txt"))]);
    assert!(u.run(warm, LIMIT).status.success());
    eventually(Duration::from_secs(20), "the warm-up upload", || {
        std::fs::read(dir.join("warm.txt")).is_ok_and(|b| b == b"written, then the server froze")
    });
    proxy.freeze();
    let mut cp = u.command("cp");
    cp.args(["late-src", &abs(&mnt.join("late.txt"))]);
    let out = u.run(cp, LIMIT);
    assert!(out.status.success(), "{}", text(&out));
    let notified = || {
        std::fs::read_to_string(&seen).is_ok_and(|s| {
            s.contains("member=Notify")
                && s.contains("Upload failed: late.txt")
                && s.contains("davdrive status")
        })
    };
    let start = Instant::now();
    while !notified() {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "no desktop notification; the bus saw:\n{}\nthe daemon logged:\n{}",
            std::fs::read_to_string(&seen).unwrap_or_default(),
            daemon_logs(u)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The data is where the notification said: kept, listed by status.
    let out = dd(u, &["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("late.txt"),
        "{}",
        text(&out)
    );
    // Once the server answers again, the mount uploads it by itself.
    proxy.thaw();
    eventually(Duration::from_secs(60), "the kept file uploaded", || {
        std::fs::read(dir.join("late.txt")).is_ok_and(|b| b == b"written, then the server froze")
    });
    let out = dd(u, &["unmount", &abs(&mnt)]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn kde_trash_keeps_its_copy_at_home_and_makes_nothing_on_the_server() {
    let Some((a, u)) = setup() else { return };
    if !have("kioclient5") || !have("dbus-run-session") {
        return;
    }
    let dir = a.fresh_dir("desk-kio");
    std::fs::write(dir.join("binned.txt"), b"to the bin").expect("write");
    apache::give_to_server(&dir);
    let (mnt, _guard) = mount_as(u, &a.url("desk-kio"), "kio");
    let mut k = u.command("dbus-run-session");
    k.args(["--", "kioclient5", "move"])
        .arg(mnt.join("binned.txt"))
        .arg("trash:/")
        .env("QT_QPA_PLATFORM", "offscreen");
    let out = u.run(k, LIMIT);
    assert!(out.status.success(), "{}", text(&out));
    let trash = names_on(&dir, |n| n.starts_with(".Trash"));
    assert!(trash.is_empty(), "trash folders on the server: {trash:?}");
    assert!(
        !dir.join("binned.txt").exists(),
        "moved to the trash, so gone here"
    );
    assert_eq!(
        std::fs::read(u.home.join(".local/share/Trash/files/binned.txt")).expect("home trash"),
        b"to the bin"
    );
    let out = dd(u, &["unmount", &abs(&mnt)]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_user_who_cannot_open_dev_fuse_is_told_what_to_do() {
    let Some((a, u)) = setup() else { return };
    if !have("unshare") || !have("setpriv") {
        return;
    }
    a.fresh_dir("desk-nofuse");
    // In a mount namespace of its own, /dev/fuse is a file only root may open, as on a
    // machine without fuse3's udev rule.
    let tmp = tempfile::tempdir().expect("temp");
    let fake = tmp.path().join("fuse");
    std::fs::write(&fake, b"").expect("fake device");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let mnt = u.dir("nofuse");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount --bind \"$1\" /dev/fuse && exec setpriv --reuid=\"$2\" --regid=\"$3\" \
             --clear-groups env -i HOME=\"$4\" PATH=/usr/bin:/bin \"$5\" mount --foreground \
             \"$6\" \"$7\"",
        )
        .arg("sh")
        .arg(&fake)
        .arg(u.uid.to_string())
        .arg(u.gid.to_string())
        .arg(&u.home)
        .arg(&u.bin)
        .arg(a.url("desk-nofuse"))
        .arg(&mnt)
        .output()
        .expect("unshare");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        err.contains("This user cannot open /dev/fuse") && err.contains("fuse3"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_login_mount_waits_for_a_password_the_keyring_does_not_have_yet() {
    let Some((a, u)) = setup() else { return };
    let dir = a.authroot.join("desk-keyring");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("k.txt"), b"after login").expect("write");
    apache::give_to_server(&dir);
    let url = a.auth_url("desk-keyring");
    let mnt = u.dir("keyring");
    let _guard = Unmount(u, mnt.clone());
    let sock_dir = u.dir("keyring-sock");
    let sock_path = sock_dir.join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind");
    std::os::unix::fs::chown(&sock_path, Some(u.uid), Some(u.gid)).expect("chown");
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let recv = || notice(&sock);
    // At login the keyring holds nothing for the server yet (locked, or never filled).
    let mut c = u.davdrive();
    c.args([
        "mount",
        "--foreground",
        "--wait-for-server",
        &url,
        &abs(&mnt),
    ])
    .env("NOTIFY_SOCKET", &sock_path)
    .env("DAVDRIVE_KEYRING", "keyutils")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut child = crate::support::spawn_owned(c).expect("spawn");
    let first = recv();
    assert!(
        first.starts_with("STATUS=waiting") && first.contains("401"),
        "{first}"
    );
    assert!(!is_mounted(&mnt));
    // The password arrives in the keyring; the next try mounts, with no prompt.
    let mut login = u.davdrive();
    login
        .args(["login", &url, "--user", apache::USER])
        .env("DAVDRIVE_KEYRING", "keyutils")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut l = crate::support::spawn_owned(login).expect("login");
    {
        use std::io::Write;
        l.stdin
            .take()
            .expect("stdin")
            .write_all(format!("{}\n", apache::PASSWORD).as_bytes())
            .expect("password");
    }
    let out = l.wait_with_output().expect("login ends");
    assert!(out.status.success(), "{}", text(&out));
    let ready = loop {
        let m = recv();
        if m.contains("READY=1") {
            break m;
        }
    };
    assert!(ready.contains("STATUS=mounted"), "{ready}");
    let mut cat = u.command("cat");
    cat.arg(mnt.join("k.txt"));
    assert_eq!(u.run(cat, LIMIT).stdout, b"after login");
    // SAFETY: the daemon we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    exits_within(&mut child, LIMIT);
    let mut logout = u.davdrive();
    logout
        .args(["logout", &url])
        .env("DAVDRIVE_KEYRING", "keyutils");
    assert!(u.run(logout, LIMIT).status.success());
}
