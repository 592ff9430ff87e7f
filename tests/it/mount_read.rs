//! Real FUSE mounts of the `davdrive` binary, driven with std::fs, `ls` and `head`, against
//! Apache (request counts from its access log), Orthanc (REST as the oracle) and dav-server.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::apache::{self, apache};
use crate::support::dav_server::DavServer;
use crate::support::orthanc::{manifest, orthanc};
use crate::support::{Mount, have_fuse, is_mounted, kernel_at_least, pattern, read_mapped};

fn count(reqs: &[apache::Logged], method: &str) -> usize {
    reqs.iter().filter(|r| r.method == method).count()
}

fn ls_l(dir: &Path) -> String {
    let out = Command::new("ls")
        .arg("-l")
        .arg(dir)
        .output()
        .expect("run ls");
    assert!(
        out.status.success(),
        "ls -l failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const ODD_NAMES: &[&str] = &[
    "plain.txt",
    "with space.txt",
    "100% sure.txt",
    "hash#tag.txt",
    "question?.txt",
    "a+b.txt",
    "rock&roll.txt",
    "Ünïcødé ✓.txt",
    "empty.txt",
];

fn populate(dir: &Path, files: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, name) in ODD_NAMES.iter().enumerate() {
        let data = if *name == "empty.txt" {
            Vec::new()
        } else {
            pattern(1000 + i * 37, i as u64 + 1)
        };
        std::fs::write(dir.join(name), &data).expect("write");
        out.push((name.to_string(), data));
    }
    for i in 0..files {
        let name = format!("file-{i:04}.bin");
        let data = pattern(100 + i, 1000 + i as u64);
        std::fs::write(dir.join(&name), &data).expect("write");
        out.push((name, data));
    }
    std::fs::create_dir_all(dir.join("sub dir")).expect("mkdir");
    std::fs::write(dir.join("sub dir/inner.txt"), b"inner").expect("write");
    apache::give_to_server(dir);
    out
}

#[test]
fn apache_listing_costs_one_propfind_per_folder_then_nothing() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("mount-counts");
    let files = populate(&dir, 100);
    let m = Mount::new(&a.url("mount-counts"), &["--read-only"]);
    let before = a.after_mount("mount-counts").len();

    // Cold `ls -l`: one PROPFIND Depth 1 of the folder, then, in the background, one of its
    // subfolder (fetched ahead), and nothing else.
    let listing = ls_l(m.path());
    for (name, _) in &files {
        assert!(
            listing.contains(name.as_str()),
            "{name} missing from:\n{listing}"
        );
    }
    let reqs = a.settled_until("mount-counts", |r| r.len() >= before + 2);
    let new = &reqs[before..];
    assert_eq!(new.len(), 2, "cold ls -l: {new:?}");
    assert!(new.iter().all(|r| r.method == "PROPFIND"), "{new:?}");
    // (Apache logs each after its answer: the two may be logged in either order.)
    let mut paths: Vec<&str> = new.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert!(paths[0].ends_with("/mount-counts/"), "{new:?}");
    assert!(paths[1].ends_with("/mount-counts/sub dir/"), "{new:?}");

    // Warm `ls -l` and `stat` of every entry: no request at all.
    let warm = ls_l(m.path());
    assert_eq!(warm, listing);
    for (name, data) in &files {
        let md = std::fs::metadata(m.path().join(name)).expect("stat");
        assert_eq!(md.len(), data.len() as u64, "{name}");
        assert!(md.is_file());
    }
    let md = std::fs::metadata(m.path().join("sub dir")).expect("stat dir");
    assert!(md.is_dir());
    // The subfolder's listing was fetched ahead: listing it costs nothing.
    let inner: Vec<_> = std::fs::read_dir(m.path().join("sub dir"))
        .expect("ls sub dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(inner, ["inner.txt"]);
    // A name that is not in a fresh listing is ENOENT without a request (negative cache).
    let e = std::fs::metadata(m.path().join("no-such-file")).expect_err("missing");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    let after = a.settled_requests("mount-counts");
    assert_eq!(after.len(), reqs.len(), "warm: {:?}", &after[reqs.len()..]);

    // Reading every file gives the same bytes; names survive the round trip.
    for (name, data) in &files {
        let got = std::fs::read(m.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&got, data, "{name}");
    }
    assert_eq!(
        std::fs::read(m.path().join("sub dir/inner.txt")).expect("inner"),
        b"inner"
    );
    // Small files cost one GET each; re-reading them hits the kernel page cache or one GET.
    let reqs = a.settled_requests("mount-counts");
    let gets = count(&reqs, "GET");
    assert!(
        gets <= files.len() + 1,
        "{gets} GETs for {} files",
        files.len()
    );
    // Writes are refused on a read-only mount.
    let e = std::fs::write(m.path().join("new.txt"), b"x").expect_err("read-only");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert!(m.unmount().success());

    // --prefetch-listings 0: the folder's PROPFIND only, and its subfolder's when opened.
    let earlier = a.settled_requests("mount-counts").len();
    let m = Mount::new(
        &a.url("mount-counts"),
        &["--read-only", "--prefetch-listings", "0"],
    );
    let before = a
        .settled_until("mount-counts", |r| {
            r[earlier..].iter().any(|x| x.method == "PROPFIND")
        })
        .len();
    assert_eq!(ls_l(m.path()), listing);
    let reqs = a.settled_requests("mount-counts");
    assert_eq!(reqs.len() - before, 1, "{:?}", &reqs[before..]);
    std::fs::read_dir(m.path().join("sub dir")).expect("ls sub dir");
    let after = a.settled_requests("mount-counts");
    assert_eq!(after.len() - reqs.len(), 1, "{:?}", &after[reqs.len()..]);
    assert!(after[reqs.len()].path.ends_with("/sub dir/"));
    assert!(m.unmount().success());
}

/// `--direct-io`: read-only descriptors bypass the kernel's page cache. Reads are
/// byte-identical, mmap still works, and a second read of the file goes to the server again
/// (nothing is cached), where without the option it costs no request. Kernels before 6.6
/// ignore the option (they would not let the file be mapped).
#[test]
fn direct_io_reads_bypass_the_page_cache_and_mmap_still_works() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("mount-direct");
    let data = pattern(6 << 20, 7);
    std::fs::write(dir.join("f.bin"), &data).expect("write");
    apache::give_to_server(&dir);
    let direct = kernel_at_least(6, 6);
    for (args, cached) in [(&[][..], true), (&["--direct-io"][..], !direct)] {
        let m = Mount::new(&a.url("mount-direct"), args);
        let path = m.path().join("f.bin");
        assert!(std::fs::read(&path).expect("read") == data, "{args:?}");
        let before = a.settled_requests("mount-direct").len();
        assert!(
            std::fs::read(&path).expect("read again") == data,
            "{args:?}"
        );
        let gets = count(&a.settled_requests("mount-direct")[before..], "GET");
        assert_eq!(
            gets == 0,
            cached,
            "{args:?}: {gets} GETs for the second read"
        );

        let f = std::fs::File::open(&path).expect("open");
        let mut buf = vec![0u8; 100_000];
        for off in [0usize, 4095, 1 << 20, (6 << 20) - 100_000] {
            let n = f.read_at(&mut buf, off as u64).expect("pread");
            assert!(
                buf[..n] == data[off..off + n] && n > 0,
                "{args:?}: pread at {off}"
            );
        }
        let same = read_mapped(&f, data.len()) == data;
        drop(f);
        assert!(same, "{args:?}: mmap view differs");
        assert!(m.unmount().success());
    }
}

/// Zero-copy reads (`--direct-io` on a plain-HTTP mount): response bodies are spliced from
/// the socket into `/dev/fuse`. Reads of every size, sequential and at random offsets, are
/// byte-identical; a sequential read still costs few GETs; Basic credentials go with them and
/// stay out of the log.
#[test]
fn direct_io_reads_are_spliced_from_the_socket_and_byte_identical() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.authroot.join("mount-splice");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let data = pattern(24 << 20, 5);
    std::fs::write(dir.join("big.bin"), &data).expect("write");
    apache::give_to_server(&dir);
    let m = Mount::try_new(
        &a.auth_url("mount-splice"),
        &["--user", apache::USER, "--direct-io", "-v"],
        &[("DAVDRIVE_PASSWORD", apache::PASSWORD)],
    )
    .expect("mount");
    let path = m.path().join("big.bin");
    let before = a.after_mount("mount-splice").len();
    assert!(
        std::fs::read(&path).expect("read") == data,
        "whole read differs"
    );
    let gets = count(&a.settled_requests("mount-splice")[before..], "GET");
    assert!(gets <= 8, "sequential read of 24 MiB took {gets} GETs");
    assert!(
        m.log().contains("zero-copy GET"),
        "no zero-copy GET in the log:\n{}",
        m.log()
    );

    // Sequential reads of odd sizes, from one byte to more than a kernel read (512 KiB).
    for size in [1usize, 4096, 100_000, 524_288, 3 << 20] {
        let mut f = std::fs::File::open(&path).expect("open");
        let limit = if size == 1 { 20_000 } else { data.len() };
        let mut got = Vec::new();
        let mut buf = vec![0u8; size];
        while got.len() < limit {
            let n = f.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.len() >= limit.min(data.len()) && got[..] == data[..got.len()],
            "reads of {size} bytes differ ({} bytes read)",
            got.len()
        );
    }

    // Random offsets and sizes.
    let f = std::fs::File::open(&path).expect("open");
    let mut x: u64 = 0x5eed_1234;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % data.len() as u64) as usize;
        let len = ((x >> 20) % 1_500_000) as usize + 1;
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, off as u64).expect("pread");
        let end = (off + len).min(data.len());
        assert!(
            n > 0 && buf[..n] == data[off..off + n] && off + n <= end,
            "pread at {off}+{len}: {n} bytes"
        );
    }
    drop(f);
    assert!(!m.log().contains(apache::PASSWORD), "password in the log");
    assert!(m.unmount().success());
}

#[test]
fn apache_reads_are_byte_identical_at_random_offsets() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("mount-random");
    let data = pattern(24 << 20, 42);
    std::fs::write(dir.join("big.bin"), &data).expect("write");
    apache::give_to_server(&dir);
    let m = Mount::new(&a.url("mount-random"), &[]);
    let path = m.path().join("big.bin");

    let whole = std::fs::read(&path).expect("read whole");
    assert!(whole == data, "sequential read differs");
    let reqs = a.settled_requests("mount-random");
    let gets = count(&reqs, "GET");
    assert!(
        gets <= 8,
        "sequential read of 24 MiB took {gets} GETs: {reqs:?}"
    );

    // Random offsets and sizes through pread on a fresh descriptor (no page cache: new
    // mount data is cached, so drop it by reading through a second open with O_DIRECT-like
    // pattern is not needed: every slice is compared anyway).
    let f = std::fs::File::open(&path).expect("open");
    let mut x: u64 = 0x1234_5678;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % data.len() as u64) as usize;
        let len = ((x >> 20) % 300_000) as usize + 1;
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, off as u64).expect("pread");
        let end = (off + len).min(data.len());
        assert_eq!(n, end - off, "short read at {off}");
        assert!(buf[..n] == data[off..end], "bytes differ at {off}+{len}");
    }
    // Past the end: nothing.
    let mut buf = [0u8; 16];
    assert_eq!(
        f.read_at(&mut buf, data.len() as u64 + 5).expect("pread"),
        0
    );
    drop(f);
    assert!(m.unmount().success());
}

#[test]
fn apache_head_of_a_large_file_fetches_little() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("mount-head");
    let data = pattern(64 << 20, 9);
    std::fs::write(dir.join("large.bin"), &data).expect("write");
    apache::give_to_server(&dir);
    let m = Mount::new(&a.url("mount-head"), &[]);
    let before = a.after_mount("mount-head").len();
    let out = Command::new("head")
        .arg("-c")
        .arg("1048576")
        .arg(m.path().join("large.bin"))
        .output()
        .expect("head");
    assert!(out.status.success());
    assert!(out.stdout == data[..1 << 20], "head -c 1M differs");
    let reqs = a.settled_requests("mount-head");
    let gets: Vec<_> = reqs[before..]
        .iter()
        .filter(|r| r.method == "GET")
        .collect();
    let fetched: u64 = gets.iter().map(|r| r.bytes_out).sum();
    // The first 64 KiB (maybe only a type sniff), then up to 2 MiB: the kernel's read-ahead
    // (512 KiB as root) asks for up to 2016 KiB while head reads the first 1 MiB. Before, a
    // third range was fetched for it (3 MiB, 6 MiB with 1 MiB of read-ahead) and over a slow
    // link head waited for it.
    assert!(
        fetched <= (2 << 20) + 4096 && gets.len() <= 2,
        "head -c 1M fetched {fetched} bytes in {} requests: {:?}",
        gets.len(),
        &reqs[before..]
    );
    assert!(m.unmount().success());
}

#[test]
fn apache_file_changed_during_read_is_old_new_or_error() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("mount-change");
    let old = pattern(16 << 20, 1);
    let new = pattern((16 << 20) + 4096, 2);
    // With --direct-io the reads are zero-copy (spliced from the socket).
    for extra in [&[][..], &["--direct-io"][..]] {
        std::fs::write(dir.join("f.bin"), &old).expect("write");
        apache::give_to_server(&dir);
        let mut args = vec!["--kernel-ttl", "0"];
        args.extend_from_slice(extra);
        let m = Mount::new(&a.url("mount-change"), &args);

        let mut f = std::fs::File::open(m.path().join("f.bin")).expect("open");
        let mut got = vec![0u8; 2 << 20];
        f.read_exact(&mut got).expect("first 2 MiB");
        assert!(got[..] == old[..2 << 20]);
        // Replace the file on the server (new inode, new size and ETag) mid-read.
        let tmp = dir.join(".f.bin.tmp");
        std::fs::write(&tmp, &new).expect("write new");
        std::fs::rename(&tmp, dir.join("f.bin")).expect("rename");
        let mut rest = Vec::new();
        match f.read_to_end(&mut rest) {
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}");
            }
            Ok(_) => {
                got.extend_from_slice(&rest);
                assert!(
                    got == old || got == new,
                    "mixed versions ({} bytes)",
                    got.len()
                );
            }
        }
        drop(f);
        // The next open sees the new version.
        let again = std::fs::read(m.path().join("f.bin")).expect("re-read");
        assert!(again == new, "after the change the new content is read");
        assert!(m.unmount().success());
    }
}

/// On a server without entity tags (nginx, Orthanc), a change on the server goes unseen until
/// the listing expires: a file read again meanwhile must come whole from one version, not
/// start with the kernel's cached pages of the old one and go on with the new one.
#[test]
fn a_file_changed_on_a_server_without_entity_tags_is_never_read_mixed() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("no-etag");
    let (old, new) = (pattern(4 << 20, 5), pattern(4 << 20, 6));
    std::fs::write(dir.join("f.bin"), &old).expect("write");
    apache::give_to_server(&dir);
    let m = Mount::new(&a.url("no-etag"), &[]);
    let p = m.path().join("f.bin");
    // `head -c 4096`: the kernel reads ahead and keeps the first pages.
    let mut head = vec![0u8; 4096];
    std::fs::File::open(&p)
        .and_then(|mut f| f.read_exact(&mut head))
        .expect("head");
    assert!(head == old[..4096]);
    // GETs that start at byte 0 (no Range, or one from 0).
    let gets_from_0 = |a: &apache::Apache| {
        a.settled_requests("no-etag")
            .iter()
            .filter(|l| l.method == "GET" && (l.range == "-" || l.range.starts_with("bytes=0-")))
            .count()
    };
    let before = gets_from_0(a);
    // Another client replaces it: the same size, other bytes, a later date.
    let tmp = dir.join(".f.bin.tmp");
    std::fs::write(&tmp, &new).expect("write new");
    std::fs::rename(&tmp, dir.join("f.bin")).expect("replace");
    let all = std::fs::read(&p).expect("read again");
    assert!(
        all == old || all == new,
        "mixed versions (first difference from the new one at {:?})",
        all.iter().zip(&new).position(|(x, y)| x != y)
    );
    assert!(
        gets_from_0(a) > before,
        "the first bytes were not asked for again"
    );
    assert!(m.unmount().success());
}

/// A descriptor still reading the old version of a file that changed on the server fills the
/// kernel's cache with old bytes: a descriptor opened on the new version must not read them.
#[test]
fn a_reader_of_the_old_version_does_not_mix_it_into_the_new_one() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    // Reading around the page cache needs Linux 6.6 (FUSE_DIRECT_IO_ALLOW_MMAP).
    if !kernel_at_least(6, 6) {
        return;
    }
    let dir = a.fresh_dir("mount-older");
    let (old, new) = (pattern(16 << 20, 3), pattern(16 << 20, 4));
    std::fs::write(dir.join("f.bin"), &old).expect("write");
    apache::give_to_server(&dir);
    // Every open sees the server's current version.
    let m = Mount::new(
        &a.url("mount-older"),
        &["--kernel-ttl", "0", "--dir-cache-ttl", "0"],
    );
    let p = m.path().join("f.bin");
    let mut older = std::fs::File::open(&p).expect("open the old version");
    let mut got = vec![0u8; 2 << 20];
    older.read_exact(&mut got).expect("first 2 MiB");
    assert!(got == old[..2 << 20]);
    // The same size, other bytes, another entity tag.
    let tmp = dir.join(".f.bin.tmp");
    std::fs::write(&tmp, &new).expect("write new");
    std::fs::rename(&tmp, dir.join("f.bin")).expect("replace");
    let mut newer = std::fs::File::open(&p).expect("open the new version");
    // The old descriptor reads on: old bytes (from the answer it is receiving) or ESTALE.
    let mut more = vec![0u8; 512 << 10];
    match older.read_exact(&mut more) {
        Ok(()) => assert!(more == old[2 << 20..(2 << 20) + more.len()], "old reader"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}"),
    }
    let mut all = Vec::new();
    newer.read_to_end(&mut all).expect("read the new version");
    assert!(
        all == new,
        "the new version's descriptor read other bytes (first difference at {:?})",
        all.iter().zip(&new).position(|(x, y)| x != y)
    );
    drop(older);
    drop(newer);
    assert!(std::fs::read(&p).expect("again") == new);
    assert!(m.unmount().success());
}

/// A file renamed while it is being read goes on reading: requests made after the rename
/// (here after the idle transfer was let go) go to its new name.
#[test]
fn a_file_renamed_while_read_reads_on_from_its_new_name() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("mount-moved");
    let data = pattern(16 << 20, 9);
    std::fs::write(dir.join("big.bin"), &data).expect("write");
    apache::give_to_server(&dir);
    let m = Mount::new(&a.url("mount-moved"), &["--read-idle", "1", "-v"]);
    let mut f = std::fs::File::open(m.path().join("big.bin")).expect("open");
    let mut got = vec![0u8; 8 << 20];
    for piece in got.chunks_mut(256 << 10) {
        f.read_exact(piece).expect("read");
    }
    let let_go = |m: &Mount| m.log().matches("transfer let go").count();
    let before = let_go(&m);
    std::fs::create_dir(m.path().join("sub")).expect("mkdir");
    std::fs::rename(m.path().join("big.bin"), m.path().join("sub/moved.bin"))
        .expect("rename while open");
    // The transfer in progress is let go after 1 s unread: the rest needs new requests.
    let deadline = Instant::now() + Duration::from_secs(20);
    while let_go(&m) == before {
        assert!(Instant::now() < deadline, "not let go\n{}", m.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).expect("read on after the rename");
    got.extend_from_slice(&rest);
    assert!(got == data, "other bytes after the rename");
    let gets: Vec<String> = a
        .settled_requests("mount-moved")
        .into_iter()
        .filter(|l| l.method == "GET")
        .map(|l| l.path)
        .collect();
    assert!(
        gets.iter().any(|g| g.ends_with("/sub/moved.bin")),
        "no request to the new name: {gets:?}"
    );
    drop(f);
    assert!(m.unmount().success());
}

#[test]
fn apache_basic_auth_mount_with_password_from_environment() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.authroot.join("mount-auth");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("secret.txt"), b"top secret").expect("write");
    apache::give_to_server(&dir);
    let url = a.auth_url("mount-auth");
    let err = Mount::try_new(&url, &[], &[])
        .err()
        .expect("mount without password fails");
    assert!(err.contains("credentials"), "{err}");
    let m = Mount::try_new(
        &url,
        &["--user", apache::USER],
        &[("DAVDRIVE_PASSWORD", apache::PASSWORD)],
    )
    .expect("mount with password");
    assert_eq!(
        std::fs::read(m.path().join("secret.txt")).expect("read"),
        b"top secret"
    );
    assert!(!m.log().contains(apache::PASSWORD), "password in the log");
    assert!(m.unmount().success());
}

#[test]
fn failing_mounts_say_what_is_wrong_at_once() {
    if !have_fuse() {
        return;
    }
    let port = crate::support::free_port();
    let start = Instant::now();
    let err = Mount::try_new(&format!("http://127.0.0.1:{port}/dav/"), &[], &[])
        .err()
        .expect("nothing listens");
    assert!(start.elapsed() < Duration::from_secs(15));
    assert!(
        err.contains("cannot mount") && err.contains("cannot connect"),
        "{err}"
    );
    let Some(a) = apache() else { return };
    let err = Mount::try_new(&format!("http://127.0.0.1:{}/not-dav/", a.port), &[], &[])
        .err()
        .expect("not WebDAV");
    assert!(err.contains("cannot mount"), "{err}");
}

#[test]
fn mounts_are_private_and_unmount_cleanly_on_signal() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("mount-life");
    std::fs::write(dir.join("x.txt"), b"x").expect("write");
    apache::give_to_server(&dir);
    let m = Mount::new(&a.url("mount-life"), &[]);
    assert!(is_mounted(m.path()));
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let line = info
        .lines()
        .find(|l| l.contains(m.path().to_string_lossy().as_ref()))
        .expect("mountinfo line");
    assert!(!line.contains("allow_other"), "{line}");
    assert!(line.contains(" - fuse"), "{line}");
    // statfs never reports 0 free space.
    let st = nix_statvfs(m.path());
    assert!(st.0 > 0 && st.1 > 0, "statfs {st:?}");
    // SIGTERM unmounts and exits 0.
    let pid = m.pid() as i32;
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let path: PathBuf = m.path().to_path_buf();
    let status = m.unmount();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&path));
}

fn nix_statvfs(p: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).expect("cstring");
    // SAFETY: `st` is plain data written by statvfs; `c` is a valid C string.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0);
        (st.f_blocks, st.f_bavail)
    }
}

#[test]
fn dav_server_mount_reads_odd_names() {
    if !have_fuse() {
        return;
    }
    let s = DavServer::start();
    let files = populate(&s.root, 10);
    let m = Mount::new(&s.url(), &[]);
    let names: BTreeSet<String> = std::fs::read_dir(m.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    for (name, data) in &files {
        assert!(names.contains(name), "{name} not in {names:?}");
        assert_eq!(
            &std::fs::read(m.path().join(name)).expect("read"),
            data,
            "{name}"
        );
    }
    let propfinds = s.requests().iter().filter(|(m, _)| m == "PROPFIND").count();
    assert!(propfinds <= 3, "{:?}", s.requests());
    assert!(m.unmount().success());
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, dirs: &mut usize) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let e = e.expect("entry");
        let p = e.path();
        let ft = e.file_type().expect("type");
        if ft.is_dir() {
            *dirs += 1;
            walk(&p, files, dirs);
        } else {
            files.push(p);
        }
    }
}

#[test]
fn orthanc_tree_browses_and_reads_byte_identical() {
    let Some(o) = orthanc() else { return };
    if !have_fuse() {
        return;
    }
    let m = Mount::new(&o.webdav_url(), &[]);
    let top: BTreeSet<String> = std::fs::read_dir(m.path())
        .expect("root")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        top,
        [
            "by-dates",
            "by-patients",
            "by-studies",
            "by-uids",
            "uploads"
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    );
    let ids: BTreeSet<String> = manifest().into_iter().map(|s| s.orthanc_id).collect();
    for view in ["by-patients", "by-studies"] {
        let mut files = Vec::new();
        let mut dirs = 0;
        walk(&m.path().join(view), &mut files, &mut dirs);
        // 130 instances, one of which sits in a folder whose name ends in '.', which
        // Orthanc lists but cannot serve: it shows as an empty folder.
        assert_eq!(files.len(), 129, "{view}: {} files", files.len());
        for f in &files {
            let name = f.file_name().expect("name").to_string_lossy().into_owned();
            assert!(name.len() <= 255, "{name}");
            let id = name.trim_end_matches(".dcm");
            assert!(ids.contains(id), "{view}: unexpected file {name}");
            let got = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if view == "by-patients" {
                assert!(
                    got == o.instance_file(id),
                    "{} differs from REST",
                    f.display()
                );
            }
        }
    }
    // The 518-byte study folder is shown under a mapped name of at most 255 bytes.
    let studies: Vec<String> = std::fs::read_dir(m.path().join("by-studies"))
        .expect("by-studies")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    let long = studies
        .iter()
        .find(|n| n.starts_with("EDGE-TOOLONG"))
        .expect("the too-long study");
    assert!(long.len() <= 255 && long.contains('~'), "{long}");
    assert_eq!(
        std::fs::read_dir(m.path().join("by-studies").join(long))
            .expect("list mapped folder")
            .count(),
        1
    );
    // Orthanc answers 207 for any path under by-patients; only listed names exist here.
    let e = std::fs::metadata(m.path().join("by-patients/no such patient")).expect_err("phantom");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    let e = std::fs::metadata(m.path().join("by-patients/nope/x.dcm")).expect_err("phantom");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(m.unmount().success());
}

#[test]
fn server_side_changes_appear_after_the_listing_ttl() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("mount-ttl");
    std::fs::write(dir.join("a.txt"), b"a").expect("write");
    apache::give_to_server(&dir);
    let m = Mount::new(
        &a.url("mount-ttl"),
        // Without the revalidation of folders in use, which shows changes sooner (see
        // `changes_by_others_reach_the_kernel_within_5_s_and_cost_requests_only_while_in_use`).
        &[
            "--dir-cache-ttl",
            "2",
            "--kernel-ttl",
            "0",
            "--revalidate",
            "0",
        ],
    );
    let names = |p: &Path| -> BTreeSet<String> {
        std::fs::read_dir(p)
            .expect("ls")
            .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(names(m.path()).contains("a.txt"));
    let listed_at = Instant::now();
    std::fs::write(dir.join("b.txt"), b"b").expect("write on server");
    apache::give_to_server(&dir);
    // Within the TTL the cached listing answers: the new file is not visible yet.
    assert!(!names(m.path()).contains("b.txt"), "listing was not cached");
    // After it, the next listing shows it (bounded wait: the TTL is 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !names(m.path()).contains("b.txt") {
        assert!(Instant::now() < deadline, "b.txt never appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        listed_at.elapsed() >= Duration::from_secs(2),
        "appeared before the TTL"
    );
    assert!(m.unmount().success());
}

#[test]
fn background_mount_detaches_and_unmount_stops_the_daemon() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("mount-bg");
    std::fs::write(dir.join("x.txt"), b"x").expect("write");
    apache::give_to_server(&dir);
    let mnt = tempfile::tempdir().expect("mnt");
    let out = Command::new(env!("CARGO_BIN_EXE_davdrive"))
        .arg("mount")
        .arg(a.url("mount-bg"))
        .arg(mnt.path())
        .output()
        .expect("davdrive mount");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("davdrive: mounted"));
    assert!(
        is_mounted(mnt.path()),
        "mount returned before the mount existed"
    );
    assert_eq!(std::fs::read(mnt.path().join("x.txt")).expect("read"), b"x");
    let daemons = || crate::support::daemons_of(mnt.path());
    assert_eq!(daemons().len(), 1, "one daemon serves the mount");
    let out = Command::new(env!("CARGO_BIN_EXE_davdrive"))
        .arg("unmount")
        .arg(mnt.path())
        .output()
        .expect("unmount");
    assert!(
        out.status.success(),
        "unmount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(mnt.path()));
    // The daemon exits on its own once unmounted (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemons().is_empty() {
        assert!(
            Instant::now() < deadline,
            "daemon still running: {:?}",
            daemons()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 22, item 12 (the daemon log): a background mount's log is private (0600, in a 0700
/// folder), and a symbolic link planted in its place is refused, never written through.
/// Before, the log was created 0644 and followed links.
#[test]
fn the_daemon_log_is_private_and_never_follows_a_link() {
    use std::os::unix::fs::PermissionsExt;
    if !have_fuse() {
        return;
    }
    let s = crate::support::dav_server::DavServer::start();
    let cache = tempfile::tempdir().expect("cache");
    let mnt = tempfile::tempdir().expect("mnt");
    let mount = || {
        Command::new("timeout")
            .arg("60")
            .arg(env!("CARGO_BIN_EXE_davdrive"))
            .arg("mount")
            .arg(s.url())
            .arg(mnt.path())
            .arg("--cache-dir")
            .arg(cache.path())
            .output()
            .expect("davdrive mount")
    };
    let out = mount();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = stdout
        .lines()
        .find_map(|l| l.strip_prefix("davdrive: logging to "))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("no log path in {stdout:?}"));
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&log), 0o600, "{}", log.display());
    assert_eq!(mode(log.parent().expect("folder")), 0o700);
    let st = Command::new(env!("CARGO_BIN_EXE_davdrive"))
        .arg("unmount")
        .arg(mnt.path())
        .status()
        .expect("unmount");
    assert!(st.success());
    // Wait (bounded) for the daemon to let the mount point go.
    let deadline = Instant::now() + Duration::from_secs(20);
    while is_mounted(mnt.path()) {
        assert!(Instant::now() < deadline, "still mounted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let victim = cache.path().join("victim.txt");
    std::fs::write(&victim, b"not a log").expect("victim");
    std::fs::remove_file(&log).expect("rm log");
    std::os::unix::fs::symlink(&victim, &log).expect("plant a link");
    let out = mount();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted through a planted link");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"not a log");
    assert!(!is_mounted(mnt.path()));
}

/// `f_files - f_ffree` of the mount (what `df -i` calls used): how many nodes the daemon
/// keeps (see `Vfs::statfs`).
fn nodes_kept(mnt: &Path) -> u64 {
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid C string and a zeroed statvfs for the call to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs: {}", std::io::Error::last_os_error());
    st.f_files - st.f_ffree
}

#[test]
fn a_crawl_of_a_large_tree_leaves_memory_bounded() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("read-crawl");
    let (dirs, files) = (100, 100);
    for d in 0..dirs {
        let sub = dir.join(format!("d{d:03}"));
        std::fs::create_dir(&sub).expect("mkdir");
        for f in 0..files {
            std::fs::write(sub.join(format!("f{f:03}")), b"").expect("write");
        }
    }
    apache::give_to_server(&dir);
    let m = Mount::new(
        &a.url("read-crawl"),
        &["--dir-cache-ttl", "2", "--kernel-ttl", "0"],
    );
    let mnt = m.path().to_path_buf();
    let p = mnt.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut n = 0;
        for d in std::fs::read_dir(&p).expect("ls").flatten() {
            for f in std::fs::read_dir(d.path()).expect("ls").flatten() {
                std::fs::metadata(f.path()).expect("stat");
                n += 1;
            }
        }
        let _ = tx.send(n);
    });
    let seen = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("the walk hung:\n{}", m.log()));
    assert_eq!(seen, dirs * files);
    let after_walk = nodes_kept(&mnt);
    // The kernel lets go of what it cached (as it does under memory pressure); the daemon
    // drops the nodes it forgot once their listings are stale (the cache TTL plus 5 s), down
    // to what the last few seconds' listings hold; tables under 4,096 nodes are not swept.
    let start = std::time::Instant::now();
    loop {
        if std::fs::write("/proc/sys/vm/drop_caches", b"2").is_err() {
            eprintln!("cannot drop the kernel's caches (not root): not checked");
            assert!(m.unmount().success());
            return;
        }
        let now = nodes_kept(&mnt);
        if now < 4096 {
            eprintln!("nodes kept: {after_walk} after the walk, {now} once forgotten");
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "still {now} nodes ({after_walk} after the walk)"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // Everything still works: a dropped node is made again when looked up.
    assert_eq!(
        std::fs::read_dir(mnt.join("d042")).expect("ls").count(),
        files
    );
    assert!(
        std::fs::metadata(mnt.join("d042/f007"))
            .expect("stat")
            .is_file()
    );
    assert!(m.unmount().success());
}

#[test]
fn a_listing_over_the_cap_fails_once_and_the_mount_stays_up() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("read-biglisting");
    std::fs::create_dir(dir.join("big")).expect("mkdir");
    for i in 0..4000 {
        let name = format!("a-file-with-a-rather-long-name-{i:05}.txt");
        std::fs::write(dir.join("big").join(name), b"").expect("write");
    }
    std::fs::create_dir(dir.join("small")).expect("mkdir");
    std::fs::write(dir.join("small/one.txt"), b"1").expect("write");
    apache::give_to_server(&dir);
    let m = Mount::new(&a.url("read-biglisting"), &["--max-listing-mib", "1"]);
    let list = |p: PathBuf| std::fs::read_dir(p).and_then(|d| d.collect::<Result<Vec<_>, _>>());
    let propfinds = || {
        a.settled_requests("read-biglisting")
            .iter()
            .filter(|l| l.method == "PROPFIND" && l.path.ends_with("/big/"))
            .count()
    };
    let e = list(m.path().join("big")).expect_err("a listing over 1 MiB");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // Asked by the `ls`, or already by the listing of the mount's root fetching its
    // subfolders ahead; Apache logs the answer it could not finish sending a little later.
    let big = |r: &[apache::Logged]| {
        r.iter()
            .filter(|l| l.method == "PROPFIND" && l.path.ends_with("/big/"))
            .count()
    };
    a.settled_until("read-biglisting", |r| big(r) >= 1);
    let asked = propfinds();
    assert!(asked >= 1);
    // Asked again at once: the same failure, without downloading it again.
    for _ in 0..3 {
        let e = list(m.path().join("big")).expect_err("again");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }
    assert_eq!(propfinds(), asked, "the listing was downloaded again");
    // The mount is up and other folders list.
    assert_eq!(list(m.path().join("small")).expect("small").len(), 1);
    assert!(m.log().contains("cannot list /big"), "{}", m.log());
    assert!(m.unmount().success());
}

/// Changes made on the server by someone else reach the kernel within 5 s even where it may
/// cache names and attributes for a minute (`--kernel-ttl 60`): a new name appears, a deleted
/// one goes, a rewritten file shows its new size and content (a descriptor opened before
/// keeps to its version). What it costs: about one PROPFIND of the folder per
/// `--revalidate` while it is in use, and nothing once it was not used for
/// `--revalidate-for`.
#[test]
fn changes_by_others_reach_the_kernel_within_5_s_and_cost_requests_only_while_in_use() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("coherence");
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for (name, content) in [("change.txt", &b"before"[..]), ("gone.txt", b"to go")] {
        std::fs::write(dir.join(name), content).expect("seed");
        std::fs::File::options()
            .write(true)
            .open(dir.join(name))
            .and_then(|f| f.set_modified(hour_ago))
            .expect("mtime");
    }
    apache::give_to_server(&dir);
    let m = Mount::new(
        &a.url("coherence"),
        &[
            "--kernel-ttl",
            "60",
            "--revalidate",
            "1",
            "--revalidate-for",
            "4",
        ],
    );
    let p = m.path();
    let names = |p: &Path| -> BTreeSet<String> {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names(p).len(), 2);
    // The kernel caches these answers for 60 s: the miss, the size, the pages.
    assert!(!p.join("new.txt").exists());
    assert_eq!(
        std::fs::metadata(p.join("change.txt")).expect("stat").len(),
        6
    );
    let reader = std::fs::File::open(p.join("change.txt")).expect("open");
    let mut buf = vec![0u8; 6];
    reader.read_exact_at(&mut buf, 0).expect("read");
    assert_eq!(buf, b"before");

    let t0 = Instant::now();
    std::fs::write(dir.join("new.txt"), b"new").expect("add");
    std::fs::remove_file(dir.join("gone.txt")).expect("delete");
    std::fs::write(dir.join("change.txt"), b"after, and longer").expect("rewrite");
    apache::give_to_server(&dir);
    let deadline = t0 + Duration::from_secs(10);
    let seen = loop {
        let ok = p.join("new.txt").exists()
            && !p.join("gone.txt").exists()
            && std::fs::metadata(p.join("change.txt")).is_ok_and(|m| m.len() == 17)
            && std::fs::read(p.join("change.txt")).is_ok_and(|c| c == b"after, and longer");
        if ok {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let delay = t0.elapsed();
    eprintln!("coherence: seen after {:.2} s", delay.as_secs_f64());
    assert!(
        seen,
        "not seen within 10 s: {:?}, new.txt {}, gone.txt {}, {:?}, {:?}\n{}",
        names(p),
        p.join("new.txt").exists(),
        p.join("gone.txt").exists(),
        std::fs::metadata(p.join("change.txt")).map(|m| m.len()),
        std::fs::read(p.join("change.txt")).map(|c| String::from_utf8_lossy(&c).into_owned()),
        m.log()
    );
    assert!(delay <= Duration::from_secs(5), "seen after {delay:?}");
    // The descriptor opened before the change keeps to its version (SEMANTICS.md): what it
    // reads is the old content or an error, never the two mixed.
    let mut buf = vec![0u8; 17];
    match reader.read_at(&mut buf, 0) {
        Ok(n) => assert_eq!(&buf[..n], &b"before"[..n], "{:?}", &buf[..n]),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}"),
    }
    drop(reader);

    // In use (listed every 0.5 s): about one PROPFIND of the folder per second, nothing else.
    let start = a.settled_requests("coherence").len();
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(3) {
        assert_eq!(names(p).len(), 2);
        std::thread::sleep(Duration::from_millis(500));
    }
    let all = a.settled_requests("coherence");
    let in_use = &all[start..];
    eprintln!("coherence: {} requests in 3 s of use", in_use.len());
    assert!((2..=5).contains(&in_use.len()), "{in_use:?}");
    assert!(
        in_use
            .iter()
            .all(|r| r.method == "PROPFIND" && r.path.ends_with("/coherence/")),
        "{in_use:?}"
    );

    // Unused for longer than --revalidate-for: nothing at all.
    std::thread::sleep(Duration::from_secs(5));
    let before = a.settled_requests("coherence").len();
    std::thread::sleep(Duration::from_secs(3));
    let after = a.settled_requests("coherence");
    assert_eq!(after.len(), before, "{:?}", &after[before..]);
    assert!(m.unmount().success());
}

/// Bytes read once are kept on local disk: when the kernel has dropped the file's pages (here
/// by `POSIX_FADV_DONTNEED`; over a slow link it drops some by itself), reading them again
/// makes no request. A new version on the server is fetched again.
#[test]
fn bytes_read_once_are_read_again_without_a_request() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("mount-stored");
    let data = pattern(3 << 20, 23);
    std::fs::write(dir.join("f.bin"), &data).expect("write");
    apache::give_to_server(&dir);
    let m = Mount::new(&a.url("mount-stored"), &["--revalidate", "1"]);
    let path = m.path().join("f.bin");
    let gets = || {
        a.settled_requests("mount-stored/f.bin")
            .into_iter()
            .filter(|r| r.method == "GET")
            .count()
    };
    let drop_pages = || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&path).expect("open");
        // SAFETY: a valid descriptor; the call only advises the kernel.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0, "fadvise");
    };
    assert!(std::fs::read(&path).expect("first read") == data);
    let first = gets();
    assert!(first >= 1, "the first read made no GET");
    for _ in 0..2 {
        drop_pages();
        assert!(std::fs::read(&path).expect("read again") == data);
    }
    assert_eq!(
        gets(),
        first,
        "{:?}\n{}",
        a.requests("mount-stored/"),
        m.log()
    );
    // Another version (same size): fetched, not the stored bytes.
    let other = pattern(3 << 20, 24);
    std::fs::write(dir.join("f.bin"), &other).expect("rewrite");
    apache::give_to_server(&dir);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        drop_pages();
        if std::fs::read(&path).expect("read") == other {
            break;
        }
        assert!(Instant::now() < deadline, "the new version never showed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gets() > first);
}
