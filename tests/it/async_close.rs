//! `--async-close`: close() returns before the upload finished. Copies still arrive whole,
//! what the mount does next waits for the upload it concerns, and a failed upload is kept.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::faults::bounded;
use crate::mount_write::recovered;
use crate::support::apache::{Apache, apache};
use crate::support::dav_server::DavServer;
use crate::support::fault_proxy::FaultProxy;
use crate::support::{Mount, have_fuse, pattern};

/// Files of mixed sizes (empty, small, several MiB) in two directories.
fn make_files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for i in 0..40usize {
        let len = match i % 8 {
            0 => 0,
            1 => 3 << 20,
            n => n * 25_000,
        };
        let rel = format!("d{}/f{i:02}.bin", i % 2);
        let p = root.join(&rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        let data = pattern(len, 900 + i as u64);
        std::fs::write(&p, &data).expect("write");
        files.push((rel, data));
    }
    files
}

fn assert_files(root: &Path, files: &[(String, Vec<u8>)], what: &str) {
    for (rel, data) in files {
        let got = std::fs::read(root.join(rel)).unwrap_or_else(|e| panic!("{what}: {rel}: {e}"));
        assert!(
            &got == data,
            "{what}: {rel} differs ({} vs {} bytes)",
            got.len(),
            data.len()
        );
    }
}

#[test]
fn async_close_copies_many_files_and_reads_them_back() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("async-cp");
    let src = tempfile::tempdir().expect("src");
    let files = make_files(src.path());
    let cache = tempfile::tempdir().expect("cache");
    let cache_arg = cache.path().to_string_lossy().into_owned();
    let m = Mount::new(
        &a.url("async-cp"),
        &["--async-close", "--cache-dir", &cache_arg],
    );
    cp_r(src.path(), &m.path().join("tree"));
    // Sizes right after the copy, some uploads still going on: what was written.
    for (rel, data) in &files {
        let md = std::fs::metadata(m.path().join("tree").join(rel)).expect("stat");
        assert_eq!(md.len(), data.len() as u64, "size of {rel} after close");
    }
    // Read back through the mount at once: each open waits for its file's upload.
    let tree = m.path().join("tree");
    let f = files.clone();
    bounded(Duration::from_secs(120), move || {
        assert_files(&tree, &f, "through the mount");
    });
    // Unmount waits for every upload; then the server holds every byte.
    assert!(m.unmount().success());
    assert_files(&dir.join("tree"), &files, "on the server");
    assert!(recovered(cache.path()).is_empty(), "nothing failed");
    // Still one PUT per file (plus a first empty create per directory and the upload
    // probe): closing early costs no request.
    let puts = a
        .requests("async-cp/")
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert!(
        puts <= files.len() + 2 + 2,
        "{puts} PUTs for {} files",
        files.len()
    );
}

/// An `--async-close` mount (with `args`) of a fresh folder `name` of `a` through a fault
/// proxy, with one file written (`warm.txt`), so that the folder is known writable: the
/// server's folder, the proxy, the mount.
fn through_proxy(a: &Apache, name: &str, args: &[&str]) -> (PathBuf, FaultProxy, Mount) {
    let dir = a.fresh_dir(name);
    let proxy = FaultProxy::start(a.port);
    let url = format!("http://127.0.0.1:{}/dav/{name}/", proxy.port);
    let mut all = vec!["--async-close"];
    all.extend_from_slice(args);
    let m = Mount::new(&url, &all);
    std::fs::write(m.path().join("warm.txt"), b"warm").expect("warm-up write");
    (dir, proxy, m)
}

/// `cp -r from to`, bounded; it must succeed.
fn cp_r(from: &Path, to: &Path) {
    let (from, to) = (from.to_owned(), to.to_owned());
    let out = bounded(Duration::from_secs(120), move || {
        Command::new("cp").arg("-r").arg(from).arg(to).output()
    })
    .expect("cp");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `data` to `p` and closes it, bounded.
fn write_file(p: &Path, data: &[u8]) {
    let (p, d) = (p.to_owned(), data.to_vec());
    bounded(Duration::from_secs(60), move || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&p)?;
        for c in d.chunks(1 << 20) {
            f.write_all(c)?;
        }
        Ok(())
    })
    .expect("write and close");
}

#[test]
fn async_close_orders_namespace_changes_after_the_upload() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let (dir, proxy, m) = through_proxy(a, "async-ns", &[]);
    // A slow uplink, so that every upload is still going on when its close returned.
    proxy.limit_uploads(4 << 20);
    let data = pattern(6 << 20, 31);

    // close() returned long before a 6 MiB upload at 4 MiB/s can have finished.
    write_file(&m.path().join("a.bin"), &data);
    let on_server = std::fs::metadata(dir.join("a.bin")).map_or(0, |md| md.len());
    assert!(
        on_server < data.len() as u64,
        "close() waited for the upload ({on_server} bytes on the server)"
    );
    // The mount shows what was written, before the upload ended.
    let listed = std::fs::read_dir(m.path())
        .expect("list")
        .flatten()
        .find(|e| e.file_name() == "a.bin")
        .map(|e| e.metadata().expect("stat").len());
    assert_eq!(listed, Some(data.len() as u64));
    // A change elsewhere does not wait for that upload.
    let warm = m.path().join("warm.txt");
    bounded(Duration::from_secs(60), move || std::fs::remove_file(warm)).expect("unlink");
    let on_server = std::fs::metadata(dir.join("a.bin")).map_or(0, |md| md.len());
    assert!(
        on_server < data.len() as u64,
        "an unrelated unlink waited for the upload"
    );
    // A rename returns before the upload ended (its MOVE goes after it); the mount shows
    // the new name at once, with what was written.
    let (from, to) = (m.path().join("a.bin"), m.path().join("b.bin"));
    bounded(Duration::from_secs(60), move || std::fs::rename(from, to)).expect("rename");
    assert!(
        !dir.join("b.bin").exists(),
        "the rename waited for the upload"
    );
    assert!(
        !m.path().join("a.bin").exists(),
        "the mount shows the old name"
    );
    let b = m.path().join("b.bin");
    let through = bounded(Duration::from_secs(60), move || std::fs::read(b)).expect("read b");
    assert!(through == data, "b.bin through the mount differs");

    // An unlink right after close: the name is gone at once, and no late upload brings the
    // file back (checked after the unmount, below).
    write_file(&m.path().join("c.bin"), &data);
    let c = m.path().join("c.bin");
    bounded(Duration::from_secs(60), move || std::fs::remove_file(c)).expect("unlink");
    assert!(!m.path().join("c.bin").exists(), "the mount shows c.bin");

    // Rewritten right after close: the second version wins, on the server and the mount.
    write_file(&m.path().join("d.bin"), &data);
    write_file(&m.path().join("d.bin"), b"second version");
    let d = m.path().join("d.bin");
    let through = bounded(Duration::from_secs(60), move || std::fs::read(d))
        .unwrap_or_else(|e| panic!("read d: {e}\n{}", m.log()));
    assert_eq!(through, b"second version");

    proxy.limit_uploads(0);
    assert!(m.unmount().success());
    assert_eq!(
        std::fs::read(dir.join("d.bin")).expect("d.bin"),
        b"second version"
    );
    assert!(!dir.join("c.bin").exists(), "a late upload revived c.bin");
    assert!(std::fs::read(dir.join("b.bin")).expect("b.bin") == data);
}

/// While an upload runs behind a close, the directory's listing expires and is fetched again
/// from a server that does not have the file yet (or has an older version): the mount still
/// lists the file with the size written, and `stat` shows it.
#[test]
fn async_close_listing_fetched_again_during_the_upload_shows_what_was_written() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("async-relist");
    std::fs::write(dir.join("old.bin"), b"the old version").expect("old version");
    crate::support::apache::give_to_server(&dir);
    let proxy = FaultProxy::start(a.port);
    let url = format!("http://127.0.0.1:{}/dav/async-relist/", proxy.port);
    // The listing and the kernel's names and attributes are trusted for 1 s.
    let m = Mount::new(
        &url,
        &["--async-close", "--dir-cache-ttl", "1", "--kernel-ttl", "1"],
    );
    std::fs::write(m.path().join("warm.txt"), b"warm").expect("warm-up write");
    // 8 MiB at 2 MiB/s: each upload takes 4 s, from the close on.
    proxy.limit_uploads(2 << 20);
    let data = pattern(8 << 20, 61);
    for name in ["new.bin", "old.bin"] {
        write_file(&m.path().join(name), &data);
        let propfinds = |r: &[crate::support::apache::Logged]| {
            r.iter().filter(|l| l.method == "PROPFIND").count()
        };
        let before = propfinds(&a.requests("async-relist"));
        // Let the listing and the kernel's attributes expire.
        std::thread::sleep(Duration::from_millis(1200));
        let listed: Vec<(String, u64)> = std::fs::read_dir(m.path())
            .expect("list")
            .flatten()
            .map(|e| {
                let len = e.metadata().map_or(0, |md| md.len());
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect();
        let stat = std::fs::metadata(m.path().join(name)).map(|md| md.len());
        let reqs = a.settled_until("async-relist", |r| propfinds(r) > before);
        assert!(
            propfinds(&reqs) > before,
            "{name}: the listing was not fetched again"
        );
        let on_server = std::fs::metadata(dir.join(name)).map_or(0, |md| md.len());
        assert!(
            on_server < data.len() as u64,
            "{name}: the upload ended before the check ({on_server} bytes on the server)"
        );
        assert!(
            listed.contains(&(name.to_owned(), data.len() as u64)),
            "{name}: listed {listed:?}"
        );
        assert_eq!(stat.ok(), Some(data.len() as u64), "{name}: stat");
    }
    proxy.limit_uploads(0);
    assert!(m.unmount().success());
    for name in ["new.bin", "old.bin"] {
        assert!(
            std::fs::read(dir.join(name)).expect("on the server") == data,
            "{name}: the server has other bytes"
        );
    }
}

#[test]
fn async_close_failed_upload_is_kept_and_reported() {
    if !have_fuse() {
        return;
    }
    let s = DavServer::start();
    let url = s.url();
    let cache = tempfile::tempdir().expect("cache");
    let cache_arg = cache.path().to_string_lossy().into_owned();
    let m = Mount::new(
        &url,
        &[
            "--async-close",
            "--cache-dir",
            &cache_arg,
            "--timeout",
            "5",
            "--retry-time",
            "1",
        ],
    );
    std::fs::write(m.path().join("warm.txt"), b"warm").expect("warm-up write");
    let data = pattern(3 << 20, 55);
    let p = m.path().join("late.bin");
    let mut f = std::fs::File::create(&p).expect("create");
    f.write_all(&data).expect("write");
    // The server goes away before the close: the close itself still succeeds (the data is
    // in the cache directory), and the upload behind it fails.
    drop(s);
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    // SAFETY: `fd` was just taken from the file, which no longer owns it.
    let closed = unsafe { libc::close(fd) };
    assert_eq!(closed, 0, "close: {}", std::io::Error::last_os_error());
    // Unmount waits for the upload to end; its data is then in the recovery folder, and the
    // log said where.
    let (status, log) = m.unmount_with_log();
    let kept = recovered(cache.path());
    assert!(
        kept.iter()
            .any(|k| std::fs::read(k).is_ok_and(|b| b == data)),
        "the failed upload's data is not in the recovery folder: {kept:?} ({status}) {log}"
    );
    assert!(
        log.contains("could not upload /late.bin") && log.contains("kept in"),
        "the log does not say where the data is: {log}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_davdrive"))
        .args(["status", "--cache-dir"])
        .arg(cache.path())
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("late.bin"), "status does not list it: {text}");
}

#[test]
fn async_close_with_two_descriptors_keeps_both_writes() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("async-two");
    let m = Mount::new(&a.url("async-two"), &["--async-close"]);
    let first = pattern(2 << 20, 7);
    let second = pattern(1 << 20, 8);
    let p = m.path().join("two.bin");
    let (p2, f1d, f2d) = (p.clone(), first.clone(), second.clone());
    bounded(Duration::from_secs(60), move || -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut f1 = std::fs::File::create(&p2)?;
        let f2 = std::fs::OpenOptions::new().write(true).open(&p2)?;
        f1.write_all(&f1d)?;
        // The first close starts an upload; the second descriptor then writes on.
        drop(f1);
        f2.write_all_at(&f2d, f1d.len() as u64)?;
        drop(f2);
        Ok(())
    })
    .expect("write through two descriptors");
    let mut want = first;
    want.extend_from_slice(&second);
    let through = bounded(Duration::from_secs(60), move || std::fs::read(p)).expect("read");
    assert!(
        through == want,
        "through the mount: {} bytes",
        through.len()
    );
    assert!(m.unmount().success());
    let on_server = std::fs::read(dir.join("two.bin")).expect("on the server");
    assert!(
        on_server == want,
        "on the server: {} bytes",
        on_server.len()
    );
}

/// Releases a [`FaultProxy::hold`] when dropped, also when the test fails first (the
/// mount's unmount would wait for the held requests).
struct Released<'a>(&'a FaultProxy);

impl Drop for Released<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// With `--async-close`, mkdir, rename and unlink of files return before the server did
/// them (a clone or an unpacked archive makes hundreds, each a round trip): a tree is made,
/// filled, changed and read back while no request reaches the server, shown by the mount at
/// once, and once the server answers every folder is made before anything goes into it, a
/// file is uploaded before it is moved, and every byte arrives under its last name.
#[test]
fn async_close_namespace_changes_return_before_the_server_did_them() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let cache = tempfile::tempdir().expect("cache");
    let cache_arg = cache.path().to_string_lossy().into_owned();
    let (dir, proxy, m) = through_proxy(a, "async-mkdir", &["--cache-dir", &cache_arg]);
    // A write that arrived shows the root writable (a mkdir in a folder not known writable
    // waits for the server, so that a refusal is mkdir's error).
    let warm = m.path().join("warm.txt");
    assert_eq!(
        bounded(Duration::from_secs(60), move || std::fs::read(warm)).expect("read warm"),
        b"warm"
    );
    let _ = std::fs::read_dir(m.path()).expect("list").count();

    proxy.hold();
    let _released = Released(&proxy);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a/top.txt", pattern(1000, 1)),
        ("a/b/mid.bin", pattern(300_000, 2)),
        ("a/b/c/deep.txt", pattern(10, 3)),
        ("a/b/c/d/e/empty", Vec::new()),
    ];
    let root = m.path().to_owned();
    let f = files.clone();
    bounded(Duration::from_secs(30), move || {
        std::fs::create_dir_all(root.join("a/b/c/d/e")).expect("mkdir -p while held");
        for (rel, data) in &f {
            std::fs::write(root.join(rel), data).expect("write while held");
        }
        // Renamed, deleted and read back, still without the server (an editor's save, a
        // lock file, git reading what it just wrote).
        std::fs::write(root.join("a/gone.txt"), b"soon deleted").expect("write gone.txt");
        std::fs::remove_file(root.join("a/gone.txt")).expect("unlink while held");
        std::fs::rename(root.join("a/top.txt"), root.join("a/top2.txt")).expect("rename");
        assert!(std::fs::read(root.join("a/top2.txt")).expect("read while held") == f[0].1);
    });
    assert!(
        !dir.join("a").exists(),
        "a request reached the server while it was held"
    );
    assert!(!m.path().join("a/top.txt").exists() && !m.path().join("a/gone.txt").exists());
    // The mount shows the tree at once.
    let names: Vec<String> = std::fs::read_dir(m.path().join("a/b"))
        .expect("list a/b")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"c".to_owned()) && names.contains(&"mid.bin".to_owned()),
        "a/b lists {names:?}"
    );
    assert_eq!(
        std::fs::metadata(m.path().join("a/b/mid.bin"))
            .expect("stat")
            .len(),
        300_000
    );
    // `davdrive status` lists what the server is still to do, uploads and the rest.
    let arg = cache_arg.clone();
    let out = bounded(Duration::from_secs(30), move || {
        Command::new(env!("CARGO_BIN_EXE_davdrive"))
            .args(["status", "--cache-dir", &arg])
            .output()
    })
    .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    for wanted in [
        "making folder /a/b/c/d/e",
        "renaming /a/top.txt to /a/top2.txt",
        "deleting /a/gone.txt",
        "mid.bin",
    ] {
        assert!(text.contains(wanted), "status lacks {wanted:?}: {text}");
    }
    assert!(
        text.find("making folder /a (")
            .is_some_and(|i| i < text.find("making folder /a/b (").unwrap_or(0)),
        "folders not listed oldest first: {text}"
    );

    proxy.release();
    assert!(m.unmount().success());
    for (rel, data) in &files {
        let rel = rel.replace("top.txt", "top2.txt");
        let got = std::fs::read(dir.join(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(&got == data, "{rel} differs on the server");
    }
    assert!(!dir.join("a/top.txt").exists() && !dir.join("a/gone.txt").exists());
    assert!(recovered(cache.path()).is_empty(), "nothing failed");
    // Each folder made once, before what goes into it; nothing refused.
    let reqs = a.requests("async-mkdir/a");
    let at = |method: &str, path: &str| {
        reqs.iter()
            .position(|r| r.method == method && r.path == format!("/dav/async-mkdir/{path}"))
            .unwrap_or_else(|| panic!("no {method} {path} in {reqs:?}"))
    };
    assert!(at("MKCOL", "a/") < at("MKCOL", "a/b/"));
    assert!(at("MKCOL", "a/b/") < at("PUT", "a/b/mid.bin"));
    assert!(at("MKCOL", "a/b/c/d/") < at("MKCOL", "a/b/c/d/e/"));
    assert!(at("MKCOL", "a/b/c/d/e/") < at("PUT", "a/b/c/d/e/empty"));
    assert!(at("PUT", "a/top.txt") < at("MOVE", "a/top.txt"));
    let refused: Vec<_> = reqs.iter().filter(|r| r.status >= 400).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let mkcols = reqs.iter().filter(|r| r.method == "MKCOL").count();
    assert_eq!(mkcols, 5, "{reqs:?}");
}

/// With `--async-close`, closes no longer hold a copy back, so the mount bounds what runs at
/// once itself: a copy of 60 files over a slow uplink opens at most 8 uploads before their
/// close and 8 behind closes (plus a listing or two), not one PUT per file at once.
#[test]
fn async_close_copy_of_many_files_keeps_few_uploads_at_once() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let (dir, proxy, m) = through_proxy(a, "async-many", &[]);
    let src = tempfile::tempdir().expect("src");
    let mut files = Vec::new();
    for i in 0..60u64 {
        let data = pattern(40_000, 500 + i);
        std::fs::write(src.path().join(format!("f{i:02}")), &data).expect("source");
        files.push((format!("f{i:02}"), data));
    }
    // Every upload takes a while: they overlap as much as the mount lets them.
    proxy.limit_uploads(200 << 10);
    let before = proxy.connections();
    cp_r(src.path(), &m.path().join("copy"));
    assert!(m.unmount().success());
    let opened = proxy.connections() - before;
    assert!(opened <= 20, "{opened} connections for 60 files");
    for (name, data) in &files {
        let got = std::fs::read(dir.join("copy").join(name)).expect("on the server");
        assert!(&got == data, "{name} differs");
    }
}
