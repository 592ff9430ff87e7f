//! One suite over every server users run (issue 23): Apache mod_dav, nginx, lighttpd,
//! `rclone serve webdav`, WsgiDAV and SabreDAV, each started by the tests on 127.0.0.1
//! (`support::servers`). Every scenario mounts each server for real, drives the mount with
//! ordinary file operations and real tools, and checks the result on the server's disk.
//!
//! What a server is known to do differently is written down in [`expected`] (and in
//! docs/servers/), never skipped silently: a scenario that fails where none is expected
//! fails the test, and so does one that now passes where a failure is written down.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use crate::support::servers::{Kind, Server, targets};
use crate::support::{Mount, have_fuse, pattern};

/// How long one scenario may take on one server.
const SCENARIO_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// A known difference: the scenario fails on this server, for this reason.
fn expected(kind: Kind, scenario: &str) -> Option<&'static str> {
    match (kind, scenario) {
        (Kind::Nginx, "lost-update") => Some(
            "nginx lists no entity tags and ignores both If-Match and If-Unmodified-Since on \
             PUT: nothing can guard an overwrite",
        ),
        (Kind::Nginx, "lock") => {
            Some("nginx has no LOCK without dav_ext_lock_zone (405): davdrive writes without locks")
        }
        (Kind::Rclone, "lost-update") => Some(
            "rclone (Go's x/net/webdav) gives strong entity tags but ignores If-Match and \
             If-Unmodified-Since on PUT",
        ),
        _ => None,
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// `r`, or what failed and why.
fn io<T>(what: &str, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn same_bytes(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    Err(format!(
        "{what}: {} bytes, want {}; first difference at {:?}",
        got.len(),
        want.len(),
        first
    ))
}

/// Runs `scenario` on a fresh folder of every server, through a mount of that folder
/// (`scenario(mount, disk)`), and fails with a table when any server's outcome is not the
/// one written down.
fn on_every_server(
    name: &str,
    extra: &[&str],
    scenario: impl Fn(&Path, &Path) -> Result<(), String> + Sync,
) {
    if !have_fuse() {
        return;
    }
    let mut table = Vec::new();
    let mut wrong = false;
    for s in targets() {
        let (outcome, log) = run_on(s, name, extra, &scenario);
        let want = expected(s.kind, name);
        let line = match (&outcome, want) {
            (Ok(()), None) => format!("{:9} ok", s.kind.name()),
            (Err(e), Some(why)) => {
                format!("{:9} fails as written down ({why}): {e}", s.kind.name())
            }
            (Err(e), None) => {
                wrong = true;
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!(
                    "{:9} FAILED: {e}\n    daemon's last lines:\n      {}",
                    s.kind.name(),
                    tail.join("\n      ")
                )
            }
            (Ok(()), Some(why)) => {
                wrong = true;
                format!(
                    "{:9} PASSED but a failure is written down ({why}): update `expected` and docs/servers/",
                    s.kind.name()
                )
            }
        };
        eprintln!("{name}: {line}");
        table.push(line);
    }
    assert!(!wrong, "{name}:\n{}", table.join("\n"));
}

fn run_on(
    s: &Server,
    name: &str,
    extra: &[&str],
    scenario: &(impl Fn(&Path, &Path) -> Result<(), String> + Sync),
) -> (Result<(), String>, String) {
    let sub = format!("suite-{name}");
    let disk = s.fresh_dir(&sub);
    let m = match Mount::try_new(&s.url(&sub), extra, &[]) {
        Ok(m) => m,
        Err(e) => return (Err(e), String::new()),
    };
    // Bounded: a scenario that hangs on a broken mount gets the daemon killed (its file
    // operations then fail with ENOTCONN) and fails, never hangs CI.
    let outcome = std::thread::scope(|sc| {
        let (tx, rx) = std::sync::mpsc::channel();
        let mnt = m.path();
        let disk = disk.as_path();
        let worker = sc.spawn(move || {
            let _ = tx.send(scenario(mnt, disk));
        });
        let got = rx.recv_timeout(SCENARIO_LIMIT);
        if got.is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &m.pid().to_string()])
                .status();
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(mnt)
                .status();
        }
        let _ = worker.join();
        got.unwrap_or_else(|_| Err(format!("hung for more than {SCENARIO_LIMIT:?}")))
    });
    let (status, log) = m.unmount_with_log();
    let outcome = outcome.and_then(|()| {
        ensure!(status.success(), "the daemon exited with {status}");
        Ok(())
    });
    (outcome, log)
}

/// Files made on the server by someone else list and read the same through the mount:
/// awkward names, an empty file, a file larger than the first read window read whole and at
/// an offset, a deep path.
#[test]
fn every_server_lists_and_reads_what_it_serves() {
    let big = pattern(3 * 1024 * 1024 + 17, 23);
    let odd = "name with space, ü & #%.txt";
    on_every_server("reads", &[], |m, disk| {
        io("seed", fs::write(disk.join("plain.txt"), b"hello\n"))?;
        io("seed", fs::write(disk.join("empty"), b""))?;
        io("seed", fs::write(disk.join(odd), b"odd\n"))?;
        io("seed", fs::write(disk.join("big.bin"), &big))?;
        io("seed", fs::create_dir_all(disk.join("deep/a/b")))?;
        io("seed", fs::write(disk.join("deep/a/b/c.txt"), b"deep\n"))?;

        let mut names: Vec<String> = io("read_dir", fs::read_dir(m))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want = vec!["big.bin", "deep", "empty", odd, "plain.txt"];
        want.sort();
        ensure!(names == want, "listing {names:?}, want {want:?}");
        ensure!(
            io("stat", fs::metadata(m.join("big.bin")))?.len() == big.len() as u64,
            "big.bin's size"
        );
        ensure!(
            io("stat", fs::metadata(m.join("deep")))?.is_dir(),
            "deep is not a folder"
        );
        same_bytes(
            "plain.txt",
            &io("read", fs::read(m.join("plain.txt")))?,
            b"hello\n",
        )?;
        same_bytes("empty", &io("read", fs::read(m.join("empty")))?, b"")?;
        same_bytes(odd, &io("read", fs::read(m.join(odd)))?, b"odd\n")?;
        same_bytes(
            "deep/a/b/c.txt",
            &io("read", fs::read(m.join("deep/a/b/c.txt")))?,
            b"deep\n",
        )?;
        // At an offset first (a fresh descriptor), then whole.
        let f = io("open", fs::File::open(m.join("big.bin")))?;
        let mut piece = vec![0u8; 200_000];
        io("pread", f.read_exact_at(&mut piece, 1024 * 1024 + 5))?;
        same_bytes(
            "big.bin at 1 MiB + 5",
            &piece,
            &big[1024 * 1024 + 5..1024 * 1024 + 5 + 200_000],
        )?;
        same_bytes("big.bin", &io("read", fs::read(m.join("big.bin")))?, &big)?;
        Ok(())
    });
}

/// New files (small, empty, and a large one streamed while it is written), a shorter
/// overwrite and an append land on the server as written, by the time close() returns.
#[test]
fn every_server_takes_new_files_overwrites_and_appends() {
    let large = pattern(5 * 1024 * 1024 + 3, 29);
    on_every_server("writes", &[], |m, disk| {
        io("write", fs::write(m.join("small.txt"), b"small\n"))?;
        same_bytes(
            "small.txt on the server",
            &io("read", fs::read(disk.join("small.txt")))?,
            b"small\n",
        )?;

        drop(io("create", fs::File::create(m.join("empty.txt")))?);
        ensure!(
            io("stat", fs::metadata(disk.join("empty.txt")))?.len() == 0,
            "empty.txt is not empty on the server"
        );

        let mut f = io("create", fs::File::create(m.join("large.bin")))?;
        for c in large.chunks(128 * 1024) {
            io("write", f.write_all(c))?;
        }
        drop(f);
        same_bytes(
            "large.bin on the server",
            &io("read", fs::read(disk.join("large.bin")))?,
            &large,
        )?;
        same_bytes(
            "large.bin read back",
            &io("read", fs::read(m.join("large.bin")))?,
            &large,
        )?;

        io("overwrite", fs::write(m.join("small.txt"), b"tiny"))?;
        same_bytes(
            "small.txt overwritten",
            &io("read", fs::read(disk.join("small.txt")))?,
            b"tiny",
        )?;

        let mut f = io(
            "open for append",
            OpenOptions::new().append(true).open(m.join("small.txt")),
        )?;
        io("append", f.write_all(b"+tail"))?;
        drop(f);
        same_bytes(
            "small.txt appended",
            &io("read", fs::read(disk.join("small.txt")))?,
            b"tiny+tail",
        )?;
        same_bytes(
            "small.txt read back",
            &io("read", fs::read(m.join("small.txt")))?,
            b"tiny+tail",
        )?;
        Ok(())
    });
}

/// Folders made, files and folders renamed (a rename onto an existing file replaces it),
/// deleted; a folder with something in it is not removed.
#[test]
fn every_server_makes_renames_and_removes() {
    on_every_server("namespace", &[], |m, disk| {
        io("mkdir a", fs::create_dir(m.join("a")))?;
        io("mkdir a/b", fs::create_dir(m.join("a/b")))?;
        ensure!(
            disk.join("a/b").is_dir(),
            "a/b is not a folder on the server"
        );
        io("write", fs::write(m.join("a/b/f"), b"f\n"))?;
        io("write", fs::write(m.join("a/h"), b"h\n"))?;
        io(
            "rename a/b/f a/g",
            fs::rename(m.join("a/b/f"), m.join("a/g")),
        )?;
        ensure!(!disk.join("a/b/f").exists(), "a/b/f is still on the server");
        same_bytes("a/g", &io("read", fs::read(disk.join("a/g")))?, b"f\n")?;
        io("rename a a2", fs::rename(m.join("a"), m.join("a2")))?;
        ensure!(!disk.join("a").exists(), "a is still on the server");
        ensure!(disk.join("a2/b").is_dir(), "a2/b is not on the server");
        same_bytes("a2/g", &io("read", fs::read(m.join("a2/g")))?, b"f\n")?;
        io(
            "rename a2/g onto a2/h",
            fs::rename(m.join("a2/g"), m.join("a2/h")),
        )?;
        same_bytes("a2/h", &io("read", fs::read(disk.join("a2/h")))?, b"f\n")?;
        ensure!(!disk.join("a2/g").exists(), "a2/g is still on the server");
        match fs::remove_dir(m.join("a2")) {
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {}
            other => return Err(format!("rmdir of a2 with files in it: {other:?}")),
        }
        ensure!(
            disk.join("a2/h").exists(),
            "a2/h went with the refused rmdir"
        );
        io("unlink a2/h", fs::remove_file(m.join("a2/h")))?;
        io("rmdir a2/b", fs::remove_dir(m.join("a2/b")))?;
        io("rmdir a2", fs::remove_dir(m.join("a2")))?;
        ensure!(!disk.join("a2").exists(), "a2 is still on the server");
        match fs::metadata(m.join("a2")) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => return Err(format!("stat of the removed a2: {other:?}")),
        }
        Ok(())
    });
}

/// Writes into the middle of a file the server already has, growing and shrinking it:
/// the server ends with exactly the local result, however it takes partial updates (a
/// server that treats `Content-Range` on PUT as the whole file must not get one).
#[test]
fn every_server_takes_writes_in_place_and_truncation() {
    let orig = pattern(4 * 1024 * 1024, 31);
    on_every_server("in-place", &[], |m, disk| {
        io("seed", fs::write(disk.join("f.bin"), &orig))?;
        let mut want = orig.clone();
        let f = io(
            "open rw",
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(m.join("f.bin")),
        )?;
        io("pwrite", f.write_all_at(b"XYZ", 100))?;
        io("pwrite", f.write_all_at(b"abc", 3 * 1024 * 1024 + 1))?;
        want[100..103].copy_from_slice(b"XYZ");
        want[3 * 1024 * 1024 + 1..3 * 1024 * 1024 + 4].copy_from_slice(b"abc");
        drop(f);
        same_bytes(
            "f.bin after two writes",
            &io("read", fs::read(disk.join("f.bin")))?,
            &want,
        )?;

        let f = io("open", OpenOptions::new().write(true).open(m.join("f.bin")))?;
        io("extend", f.set_len(5 * 1024 * 1024))?;
        drop(f);
        want.resize(5 * 1024 * 1024, 0);
        same_bytes(
            "f.bin extended",
            &io("read", fs::read(disk.join("f.bin")))?,
            &want,
        )?;

        let mut f = io(
            "open rw",
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(m.join("f.bin")),
        )?;
        io("shrink", f.set_len(1000))?;
        io("seek", f.seek(SeekFrom::Start(0)))?;
        let mut back = Vec::new();
        io("read back", f.read_to_end(&mut back))?;
        drop(f);
        want.truncate(1000);
        same_bytes("f.bin read back shrunk", &back, &want)?;
        same_bytes(
            "f.bin shrunk",
            &io("read", fs::read(disk.join("f.bin")))?,
            &want,
        )?;
        Ok(())
    });
}

/// Real tools: `cp -r` of a tree in, `ls -lR` and `du` of it, `diff -r` against the
/// server's disk, `sqlite3` building and checking a database in place, `rm -r`.
#[test]
fn every_server_works_with_cp_diff_sqlite_and_rm() {
    let src = tempfile::tempdir().expect("tempdir");
    for d in 0..3 {
        let dir = src.path().join(format!("tree/d{d}"));
        fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..10 {
            fs::write(
                dir.join(format!("f{f}.txt")),
                pattern(10 * 1024 + f, d * 100 + f as u64),
            )
            .expect("write");
        }
    }
    fs::write(src.path().join("tree/one.bin"), pattern(1024 * 1024, 7)).expect("write");
    let tree = src.path().join("tree");
    on_every_server("tools", &[], |m, disk| {
        run(Command::new("cp").arg("-r").arg(&tree).arg(m))?;
        run(Command::new("diff")
            .arg("-r")
            .arg(&tree)
            .arg(disk.join("tree")))?;
        run(Command::new("diff")
            .arg("-r")
            .arg(&tree)
            .arg(m.join("tree")))?;
        let ls = run(Command::new("ls").arg("-lR").arg(m.join("tree")))?;
        ensure!(ls.matches("f9.txt").count() == 3, "ls -lR: {ls}");
        run(Command::new("du").arg("-s").arg(m.join("tree")))?;
        let db = m.join("t.db");
        let sql = "create table t(k integer primary key, v text);
            with recursive n(i) as (select 1 union all select i+1 from n where i < 3000)
            insert into t(v) select printf('%0200d', i) from n;
            update t set v = 'changed' where k % 7 = 0;
            delete from t where k % 11 = 0;";
        run(Command::new("sqlite3").arg(&db).arg(sql))?;
        let count = run(Command::new("sqlite3")
            .arg(disk.join("t.db"))
            .arg("pragma integrity_check; select count(*) from t;"))?;
        ensure!(
            count.trim() == "ok\n2728",
            "sqlite3 on the server's copy: {count:?}"
        );
        run(Command::new("rm").arg("-r").arg(m.join("tree")))?;
        ensure!(
            !disk.join("tree").exists(),
            "rm -r left the tree on the server"
        );
        Ok(())
    });
}

/// Changes made on the server by someone else (a file added, one deleted, one rewritten)
/// show through the mount within 5 s, without anything asking for them (the folder is in
/// use: it was listed), on every server. Prints the delay measured per server.
#[test]
fn every_server_shows_changes_made_by_others_within_5_s() {
    on_every_server("others", &[], |m, disk| {
        seed_hour_old(&disk.join("change.txt"), b"before")?;
        seed_hour_old(&disk.join("gone.txt"), b"to be deleted")?;
        let names = listing(m)?;
        ensure!(names == ["change.txt", "gone.txt"], "listing {names:?}");
        same_bytes(
            "change.txt",
            &io("read", fs::read(m.join("change.txt")))?,
            b"before",
        )?;
        // Not a synchronisation: the change must come seconds after the folder was listed
        // (a listing within the second of the folder's last change is listed again anyway),
        // so that what is tested is the folder's tag or date moving, or its relisting.
        std::thread::sleep(std::time::Duration::from_millis(2500));
        ensure!(
            listing(m)? == ["change.txt", "gone.txt"],
            "listing changed by itself"
        );
        // Someone else, on the server.
        let t0 = std::time::Instant::now();
        io("add", fs::write(disk.join("new.txt"), b"new"))?;
        io("delete", fs::remove_file(disk.join("gone.txt")))?;
        io(
            "rewrite",
            fs::write(disk.join("change.txt"), b"after, and longer"),
        )?;
        let seen = wait_until(std::time::Duration::from_secs(10), || {
            listing(m).is_ok_and(|n| n == ["change.txt", "new.txt"])
                && fs::read(m.join("change.txt")).is_ok_and(|c| c == b"after, and longer")
        });
        let delay = t0.elapsed();
        eprintln!("others: seen after {:.2} s", delay.as_secs_f64());
        ensure!(seen, "not seen within 10 s: {:?}", listing(m));
        ensure!(
            delay <= std::time::Duration::from_secs(5),
            "seen only after {delay:?}"
        );
        Ok(())
    });
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = io("read_dir", fs::read_dir(dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Polls `done` every 50 ms until it holds (true) or `limit` passes (false).
fn wait_until(limit: std::time::Duration, done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `--lock` on two mounts of the same folder (two colleagues): a file open for writing on
/// one is locked on the server, so the other cannot open it for writing (EBUSY) but can read
/// it; the lock goes when the writer closes (after its upload).
#[test]
fn with_lock_a_file_open_for_writing_is_locked_for_other_clients() {
    if !have_fuse() {
        return;
    }
    let mut table = Vec::new();
    let mut wrong = false;
    for s in targets() {
        let outcome = locked_for_others(s);
        let want = expected(s.kind, "lock");
        let name = s.kind.name();
        let line = match (&outcome, want) {
            (Ok(()), None) => format!("{name:9} ok"),
            (Err(e), Some(why)) => format!("{name:9} fails as written down ({why}): {e}"),
            (Err(e), None) => {
                wrong = true;
                format!("{name:9} FAILED: {e}")
            }
            (Ok(()), Some(why)) => {
                wrong = true;
                format!("{name:9} PASSED but a failure is written down ({why})")
            }
        };
        eprintln!("lock: {line}");
        table.push(line);
    }
    assert!(!wrong, "lock:\n{}", table.join("\n"));
}

fn locked_for_others(s: &Server) -> Result<(), String> {
    let disk = s.fresh_dir("suite-lock");
    seed_hour_old(&disk.join("doc.txt"), b"original")?;
    let url = s.url("suite-lock");
    let a = Mount::try_new(&url, &["--lock"], &[])?;
    let b = Mount::try_new(&url, &["--lock"], &[])?;
    let open_rw = |m: &Mount| {
        OpenOptions::new()
            .write(true)
            .open(m.path().join("doc.txt"))
    };
    let mut fa = io("A opens for writing", open_rw(&a))?;
    io("A writes", fa.write_all(b"A's"))?;
    match open_rw(&b) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
        other => {
            return Err(format!(
                "B opened a file A holds open for writing: {other:?}"
            ));
        }
    }
    same_bytes(
        "B reads while A writes",
        &io("B reads", fs::read(b.path().join("doc.txt")))?,
        b"original",
    )?;
    drop(fa);
    same_bytes(
        "A's version",
        &io("read", fs::read(disk.join("doc.txt")))?,
        b"A'sginal",
    )?;
    // A closed: the lock goes with its session, when the kernel releases the file (just
    // after close() returns).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut fb = loop {
        match open_rw(&b) {
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break io("B opens for writing after A closed", other)?,
        }
    };
    io("B writes", fb.write_all(b"B"))?;
    drop(fb);
    same_bytes(
        "B's version",
        &io("read", fs::read(disk.join("doc.txt")))?,
        b"B'sginal",
    )?;
    ensure!(a.unmount().success(), "A's daemon failed");
    ensure!(b.unmount().success(), "B's daemon failed");
    Ok(())
}

/// A file changed on the server by someone else between our read and our overwrite keeps
/// the other version: the overwrite carries `If-Match` (strong tags) or
/// `If-Unmodified-Since` (none), the server refuses it, the writer gets ESTALE.
#[test]
fn every_server_refuses_an_overwrite_of_a_version_changed_meanwhile() {
    on_every_server("lost-update", &[], |m, disk| {
        overwrite_after_a_change(m, disk)
    });
}

/// Seeds `doc.txt` (an hour old), reads it through `m`, changes it on `disk`, overwrites it
/// through `m`: the overwrite must fail with ESTALE and the other version stay.
fn overwrite_after_a_change(m: &Path, disk: &Path) -> Result<(), String> {
    let doc = disk.join("doc.txt");
    if !doc.exists() {
        seed_hour_old(&doc, b"version 1")?;
    }
    same_bytes(
        "doc.txt",
        &io("read", fs::read(m.join("doc.txt")))?,
        b"version 1",
    )?;
    io(
        "change on the server",
        fs::write(&doc, b"version 2 from elsewhere"),
    )?;
    let mut f = io(
        "open",
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.join("doc.txt")),
    )?;
    // The 412 comes back while writing (streaming) or at fsync (spooled).
    let w = f.write_all(b"my version");
    let synced = f.sync_all();
    drop(f);
    let on_server = io("read", fs::read(&doc))?;
    ensure!(
        on_server == b"version 2 from elsewhere",
        "the other writer's version was replaced by {:?}",
        String::from_utf8_lossy(&on_server)
    );
    match w.err().or(synced.err()) {
        Some(e) if e.raw_os_error() == Some(libc::ESTALE) => Ok(()),
        other => Err(format!(
            "the overwrite was not refused with ESTALE: {other:?}"
        )),
    }
}

/// Writes `path` on the server's disk with a modification time an hour ago, as most files
/// have (Apache gives a file changed within the last second a weak tag).
fn seed_hour_old(path: &Path, content: &[u8]) -> Result<(), String> {
    io("seed", fs::write(path, content))?;
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    io(
        "set mtime",
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(hour_ago)),
    )
}

/// The same without entity tags (SabreDAV's plain tree): `If-Unmodified-Since` with the
/// date the listing gave guards the overwrite, and lets an ordinary overwrite through.
#[test]
fn without_entity_tags_if_unmodified_since_guards_overwrites() {
    let Some(s) = crate::support::servers::server(Kind::Sabre) else {
        return;
    };
    if !have_fuse() {
        return;
    }
    let disk = s.fresh_dir("no-etags");
    seed_hour_old(&disk.join("plain.txt"), b"old").expect("seed");
    seed_hour_old(&disk.join("doc.txt"), b"version 1").expect("seed");
    let m = Mount::new(&s.plain_url("no-etags"), &[]);
    // No tag in the listing: what this test is about.
    let listing = crate::support::rt().block_on(async {
        let c = davdrive::dav::DavClient::new(davdrive::dav::ClientConfig::new(
            url::Url::parse(&s.plain_url("no-etags")).expect("url"),
        ))
        .expect("client");
        c.propfind(
            &davdrive::dav::DavPath::root(),
            davdrive::dav::Depth::One,
            true,
        )
        .await
        .expect("propfind")
    });
    assert!(
        listing.resources.iter().all(|r| r.etag.is_none()),
        "{:?}",
        listing.resources
    );
    assert_eq!(fs::read(m.path().join("plain.txt")).expect("read"), b"old");
    fs::write(m.path().join("plain.txt"), b"new").expect("an ordinary overwrite");
    assert_eq!(fs::read(disk.join("plain.txt")).expect("server"), b"new");
    let r = overwrite_after_a_change(m.path(), &disk);
    assert!(r.is_ok(), "{r:?}\n{}", m.log());
    assert!(m.unmount().success());
}

/// What `davdrive doctor` must find on each server (checked against what the suite above
/// shows the server doing).
struct Facts {
    etags: &'static str,
    partial_put: &'static str,
    if_match: bool,
    if_unmodified_since: bool,
    lock: bool,
    keep_alive: bool,
    quota: bool,
    depth_infinity: bool,
}

fn facts(kind: Kind) -> Facts {
    let f = |etags, partial_put, guards, lock, keep_alive, quota, depth_infinity| Facts {
        etags,
        partial_put,
        if_match: guards,
        if_unmodified_since: guards,
        lock,
        keep_alive,
        quota,
        depth_infinity,
    };
    match kind {
        // mod_dav compares If-Unmodified-Since on PUT with the time of the request.
        Kind::Apache => Facts {
            if_unmodified_since: false,
            ..f("strong", "applied", true, true, true, false, false)
        },
        Kind::Nginx => f("none", "refused", false, false, true, false, false),
        Kind::Lighttpd => f("strong", "refused", true, true, true, false, false),
        Kind::Rclone => f("strong", "mangled", false, true, true, false, true),
        Kind::WsgiDav => f("strong", "refused", true, true, true, true, true),
        Kind::Sabre => f("strong", "refused", true, true, false, true, true),
    }
}

/// `davdrive doctor --json` on every server reports what the suite shows it doing (entity
/// tags, partial PUT, preconditions, locks, quota, keep-alive, ranges, chunked PUT), leaves
/// no scratch file, and `--read-only` writes nothing.
#[test]
fn doctor_reports_what_each_server_does() {
    let mut wrong = Vec::new();
    for s in targets() {
        let disk = s.fresh_dir("doctor");
        // An hour old: Apache's tag of a file changed within the last second is weak.
        seed_hour_old(
            &disk.join("sample.txt"),
            b"a file for the listing and ranges\n",
        )
        .expect("seed");
        let out = Command::new(env!("CARGO_BIN_EXE_davdrive"))
            .args(["doctor", "--json"])
            .arg(s.url("doctor"))
            .env_remove("DAVDRIVE_USER")
            .env_remove("DAVDRIVE_PASSWORD")
            .output()
            .expect("run davdrive doctor");
        let name = s.kind.name();
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) if out.status.success() => v,
            other => {
                wrong.push(format!(
                    "{name}: {:?} {other:?}: {text}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
                continue;
            }
        };
        let want = facts(s.kind);
        let w = &v["writes"];
        let got = [
            (
                "dav class 1",
                v["dav_classes"].to_string().contains("\"1\"").to_string(),
                "true".to_string(),
            ),
            (
                "listing etags",
                v["listing"]["etags"].to_string(),
                format!("\"{}\"", want.etags),
            ),
            (
                "ranges",
                v["ranges"]["supported"].to_string(),
                "true".into(),
            ),
            (
                "chunked put",
                w["chunked_put"]["result"].to_string(),
                "\"stored\"".into(),
            ),
            (
                "partial put",
                w["partial_put"]["result"].to_string(),
                format!("\"{}\"", want.partial_put),
            ),
            (
                "if-match",
                w["if_match"]["supported"].to_string(),
                want.if_match.to_string(),
            ),
            (
                "if-unmodified-since",
                w["if_unmodified_since"]["supported"].to_string(),
                want.if_unmodified_since.to_string(),
            ),
            (
                "lock",
                w["lock"]["supported"].to_string(),
                want.lock.to_string(),
            ),
            (
                "keep-alive",
                v["keep_alive"].to_string(),
                want.keep_alive.to_string(),
            ),
            (
                "quota",
                (!v["listing"]["quota_available"].is_null()).to_string(),
                want.quota.to_string(),
            ),
            (
                "depth infinity",
                v["depth_infinity"]["supported"].to_string(),
                want.depth_infinity.to_string(),
            ),
            (
                "mkcol, move, copy",
                format!(
                    "{} {} {}",
                    w["mkcol"]["supported"],
                    w["move_file"]["supported"],
                    w["copy_file"]["supported"]
                ),
                "true true true".into(),
            ),
            (
                "throughput",
                (w["throughput"]["bytes"].as_u64() == Some(4 << 20)).to_string(),
                "true".into(),
            ),
            (
                "advice",
                (!v["advice"].as_array().is_none_or(|a| a.is_empty())).to_string(),
                "true".into(),
            ),
        ];
        for (what, got, want) in got {
            if got != want {
                wrong.push(format!("{name}: {what}: reported {got}, expected {want}"));
            }
        }
        let mut left: Vec<String> = fs::read_dir(&disk)
            .expect("server dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".sabredav"))
            .collect();
        left.sort();
        if left != ["sample.txt"] {
            wrong.push(format!("{name}: left on the server: {left:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `--read-only` sends nothing that writes, and a URL that is not WebDAV gets an error and
/// a sentence saying so.
#[test]
fn doctor_read_only_writes_nothing_and_a_non_webdav_url_is_named() {
    let Some(s) = crate::support::servers::server(Kind::Nginx) else {
        return;
    };
    let disk = s.fresh_dir("doctor-ro");
    let out = Command::new(env!("CARGO_BIN_EXE_davdrive"))
        .args(["doctor", "--read-only"])
        .arg(s.url("doctor-ro"))
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("not tried (--read-only)"), "{text}");
    let log = fs::read_to_string(s.dir.join("access.log")).expect("nginx log");
    let writes: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("/doctor-ro/")
                && ["PUT", "DELETE", "MKCOL", "MOVE", "COPY", "LOCK"]
                    .iter()
                    .any(|m| l.contains(&format!("\"{m} ")))
        })
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    assert_eq!(fs::read_dir(&disk).expect("dir").count(), 0);

    // nginx serves plain files outside /dav/: no DAV header, PROPFIND refused.
    let url = format!("http://127.0.0.1:{}/", s.port);
    let out = Command::new(env!("CARGO_BIN_EXE_davdrive"))
        .args(["doctor", &url])
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("NOT WebDAV here"), "{text}");
    assert!(text.contains("does not answer as WebDAV"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not examine"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `doctor` over TLS and a redirect (Apache): a certificate from a CA nobody trusts is shown
/// (subject, SHA-256) as not trusted, with what to do and a non-zero exit; with `--ca-cert`
/// it is trusted, and a URL that redirects from http to https says where it leads.
#[test]
fn doctor_shows_the_certificate_and_the_redirect() {
    let Some(a) = crate::support::apache::apache() else {
        return;
    };
    let dir = a.fresh_dir("doctor-tls");
    std::fs::write(dir.join("f.txt"), b"over tls").expect("seed");
    crate::support::apache::give_to_server(&dir);
    let doctor = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_davdrive"))
            .arg("doctor")
            .args(args)
            .output()
            .expect("doctor");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let url = a.tls_url("doctor-tls");
    let (ok, text) = doctor(&[&url]);
    assert!(!ok, "{text}");
    assert!(text.contains("NOT trusted"), "{text}");
    assert!(text.contains("SHA-256"), "{text}");
    assert!(text.contains("davdrive trust URL"), "{text}");
    let ca = a.ca.to_string_lossy().into_owned();
    let (ok, text) = doctor(&["--ca-cert", &ca, "--read-only", &url]);
    assert!(ok, "{text}");
    assert!(text.contains("; trusted"), "{text}");
    assert!(text.contains("listing             1 entries"), "{text}");
    let redirecting = format!("http://127.0.0.1:{}/redir/doctor-tls/", a.port);
    let (ok, text) = doctor(&["--ca-cert", &ca, "--read-only", "--json", &redirecting]);
    assert!(ok, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["redirected_to"].as_str(), Some(url.as_str()), "{text}");
    assert_eq!(
        v["certificate"]["trusted"],
        serde_json::json!(true),
        "{text}"
    );
}

/// Runs `cmd`, returning its output or what it said (bounded by the scenario's limit).
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
