//! The core without a kernel: a `Vfs` built against a real server (the in-process
//! dav-server, and Apache where it matters), called directly as a frontend would, in the
//! orders FUSE uses and in the orders WinFsp will use (open by path, write, cleanup with
//! delete, close), and in races a mount test cannot steer (a listing refreshed between a
//! lookup and an open, a rename while an upload streams).
//!
//! What the server holds is read from its own disk, never through the core.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use davdrive::dav::{ClientConfig, DavClient, ErrorKind};
use davdrive::vfs::{Caller, IfExists, NamePolicy, OpenMode, ROOT_INO, Vfs, VfsConfig};
use url::Url;

use crate::support::dav_server::DavServer;
use crate::support::{pattern, rt};

/// A core of its own over `url`, with its own cache directory.
pub struct Core {
    pub vfs: Arc<Vfs>,
    pub _cache: tempfile::TempDir,
}

pub fn core_with(url: &str, tune: impl FnOnce(&mut VfsConfig)) -> Core {
    let cache = tempfile::Builder::new()
        .prefix("davdrive-core")
        .tempdir()
        .expect("cache dir");
    let client = DavClient::new(ClientConfig::new(Url::parse(url).expect("url"))).expect("client");
    let mut cfg = VfsConfig {
        cache_dir: cache.path().join("mount"),
        ..VfsConfig::default()
    };
    tune(&mut cfg);
    let vfs = Vfs::new(client, cfg).expect("core");
    Core { vfs, _cache: cache }
}

pub const ME: Caller = Caller {
    owner: Some(7),
    pid: 1,
};

pub const WRITE: OpenMode = OpenMode {
    read: false,
    write: true,
    truncate: false,
    append: false,
};

pub const READ: OpenMode = OpenMode {
    read: true,
    write: false,
    truncate: false,
    append: false,
};

/// Every byte of open file `fh`, read in 64 KiB pieces.
pub async fn read_all(vfs: &Vfs, fh: u64) -> Result<Vec<u8>, davdrive::vfs::VfsError> {
    let mut out = Vec::new();
    loop {
        let d = vfs.read(fh, out.len() as u64, 65536).await?;
        if d.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&d.to_bytes());
    }
}

fn on_server(root: &Path, rel: &str) -> Option<Vec<u8>> {
    std::fs::read(root.join(rel)).ok()
}

/// Bounded: a broken core fails the test instead of hanging it.
fn within<T>(rt: &tokio::runtime::Runtime, f: impl std::future::Future<Output = T>) -> T {
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("the core did not answer within 60 s")
    })
}

#[test]
fn core_writes_reads_and_lists_without_a_kernel() {
    let rt = rt();
    let server = DavServer::start();
    let c = core_with(&server.url(), |_| {});
    let vfs = c.vfs.clone();
    within(&rt, async {
        vfs.probe().await.expect("probe");
        // FUSE's order: lookup (absent), create, write, flush, release.
        let e = vfs.lookup(ROOT_INO, "a.bin").await.expect_err("absent");
        assert_eq!(e.kind, ErrorKind::NotFound);
        let data = pattern(3 << 20, 11);
        let (attr, o) = vfs.create(ROOT_INO, "a.bin", WRITE).await.expect("create");
        for (i, piece) in data.chunks(128 << 10).enumerate() {
            let n = vfs
                .write(
                    o.fh,
                    (i * (128 << 10)) as u64,
                    Bytes::copy_from_slice(piece),
                    ME,
                )
                .await
                .expect("write");
            assert_eq!(n as usize, piece.len());
        }
        assert_eq!(vfs.getattr(attr.ino).await.expect("stat").size, 3 << 20);
        vfs.close(o.fh, ME).await.expect("close");
        vfs.release(o.fh).await;
        assert_eq!(on_server(&server.root, "a.bin").as_deref(), Some(&data[..]));
        // Read back through a new handle.
        let o = vfs.open(attr.ino, READ).await.expect("open");
        assert_eq!(read_all(&vfs, o.fh).await.expect("read"), data);
        vfs.release(o.fh).await;
        // The directory listing shows it with its size.
        let d = vfs.opendir(ROOT_INO).await.expect("opendir");
        let entries = vfs.readdir(d, 0, 100).await.expect("readdir");
        vfs.releasedir(d);
        let a = entries.iter().find(|e| e.name == "a.bin").expect("listed");
        assert_eq!(a.attr.size, 3 << 20);
        // mkdir, rename into it, rmdir refused while not empty, unlink, rmdir.
        let dir = vfs.mkdir(ROOT_INO, "d").await.expect("mkdir");
        vfs.rename(ROOT_INO, "a.bin", dir.ino, "b.bin", false)
            .await
            .expect("rename");
        assert!(on_server(&server.root, "a.bin").is_none());
        assert_eq!(
            on_server(&server.root, "d/b.bin").as_deref(),
            Some(&data[..])
        );
        let e = vfs.rmdir(ROOT_INO, "d").await.expect_err("not empty");
        assert_eq!(e.kind, ErrorKind::NotEmpty);
        vfs.unlink(dir.ino, "b.bin").await.expect("unlink");
        vfs.rmdir(ROOT_INO, "d").await.expect("rmdir");
        assert!(!server.root.join("d").exists());
    });
}

#[test]
fn windows_order_open_by_path_write_cleanup_with_delete_close() {
    let rt = rt();
    let server = DavServer::start();
    std::fs::create_dir(server.root.join("Folder")).expect("mkdir");
    std::fs::write(server.root.join("Folder/keep.txt"), b"kept").expect("seed");
    let c = core_with(&server.url(), |cfg| cfg.names = NamePolicy::windows());
    let vfs = c.vfs.clone();
    within(&rt, async {
        vfs.probe().await.expect("probe");
        // Create (FILE_CREATE) by path, write, cleanup with delete, close: nothing stays on
        // the server, nothing is kept for recovery.
        let (_, o) = vfs
            .create_path("\\Folder\\temp.tmp", WRITE, IfExists::Fail)
            .await
            .expect("create");
        vfs.write(o.fh, 0, Bytes::from_static(b"scratch"), ME)
            .await
            .expect("write");
        vfs.unlink_path("\\FOLDER\\TEMP.TMP")
            .await
            .expect("cleanup with delete");
        vfs.release_path(o.fh).await;
        assert!(!server.root.join("Folder/temp.tmp").exists());
        let e = vfs.stat_path("\\Folder\\temp.tmp").await.expect_err("gone");
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            recovered(&c),
            0,
            "a deleted file's data is not recovery material"
        );

        // FILE_CREATE on an existing name (any case) is a collision; FILE_OVERWRITE_IF
        // truncates; FILE_OPEN_IF opens as is.
        let e = vfs
            .create_path("\\folder\\KEEP.TXT", WRITE, IfExists::Fail)
            .await
            .expect_err("collision");
        assert_eq!(e.kind, ErrorKind::AlreadyExists);
        let (a, o) = vfs
            .create_path("\\folder\\KEEP.TXT", READ, IfExists::Open)
            .await
            .expect("open if");
        assert_eq!(a.size, 4);
        assert!(!a.is_dir() && !a.read_only());
        assert!(vfs.stat_path("\\FOLDER").await.expect("dir").is_dir());
        assert_eq!(read_all(&vfs, o.fh).await.expect("read"), b"kept");
        assert_eq!(vfs.handle_path(o.fh).as_deref(), Some("/Folder/keep.txt"));
        vfs.release_path(o.fh).await;
        let (a, o) = vfs
            .create_path("\\Folder\\keep.txt", WRITE, IfExists::Truncate)
            .await
            .expect("overwrite if");
        assert_eq!(a.size, 0, "overwrite truncates");
        vfs.write(o.fh, 0, Bytes::from_static(b"new"), ME)
            .await
            .expect("write");
        vfs.close(o.fh, ME).await.expect("cleanup");
        vfs.release_path(o.fh).await;
        assert_eq!(
            on_server(&server.root, "Folder/keep.txt").as_deref(),
            Some(&b"new"[..])
        );
        // The server's spelling is reported, and a rename that changes only the case is
        // sent as such.
        assert_eq!(
            vfs.spelling_of("\\FOLDER\\KEEP.TXT")
                .await
                .expect("spelling"),
            "keep.txt"
        );
        vfs.rename_path("\\folder\\keep.txt", "\\Folder\\Keep.TXT", false)
            .await
            .expect("case-only rename");
        let names: Vec<String> = std::fs::read_dir(server.root.join("Folder"))
            .expect("ls")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        assert_eq!(names, ["Keep.TXT"]);
        // Rename without replace onto an existing name fails and changes nothing; with
        // replace it replaces.
        std::fs::write(server.root.join("Folder/other.txt"), b"other").expect("seed");
        // Forgetting a child's metadata forgets its directory's listing.
        vfs.invalidate(vfs.stat_path("\\Folder\\Keep.TXT").await.expect("stat").ino);
        let e = vfs
            .rename_path("\\Folder\\other.txt", "\\Folder\\KEEP.txt", false)
            .await
            .expect_err("exists");
        assert_eq!(e.kind, ErrorKind::AlreadyExists);
        assert_eq!(
            on_server(&server.root, "Folder/Keep.TXT").as_deref(),
            Some(&b"new"[..])
        );
        vfs.rename_path("\\Folder\\other.txt", "\\Folder\\KEEP.txt", true)
            .await
            .expect("replace");
        assert_eq!(
            on_server(&server.root, "Folder/Keep.TXT").as_deref(),
            Some(&b"other"[..])
        );
        assert!(!server.root.join("Folder/other.txt").exists());
    });
}

fn recovered(c: &Core) -> usize {
    std::fs::read_dir(c.vfs.recovery_dir())
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_path_open_holds_its_node_across_a_listing_that_drops_it() {
    let rt = rt();
    let server = DavServer::start();
    std::fs::write(server.root.join("f.txt"), b"one").expect("seed");
    let c = core_with(&server.url(), |cfg| cfg.names = NamePolicy::windows());
    let vfs = c.vfs.clone();
    within(&rt, async {
        vfs.probe().await.expect("probe");
        let (a, o) = vfs.open_path("/f.txt", READ).await.expect("open");
        // Behind our back the file goes, and a refreshed listing no longer shows it.
        std::fs::remove_file(server.root.join("f.txt")).expect("rm");
        vfs.invalidate(a.ino);
        assert_eq!(
            vfs.stat_path("/f.txt").await.expect_err("gone").kind,
            ErrorKind::NotFound
        );
        // It comes back: the node the open handle holds was kept, so it is the same inode.
        std::fs::write(server.root.join("f.txt"), b"two").expect("seed again");
        vfs.invalidate(ROOT_INO);
        vfs.invalidate(a.ino);
        let again = vfs.stat_path("/f.txt").await.expect("back");
        assert_eq!(again.ino, a.ino, "the held node was dropped");
        vfs.release_path(o.fh).await;
    });
}

/// The body of a streaming upload is sent from memory, so a close does not wait for the
/// journal before the server may complete the file. When the journal's last writes fail (a
/// full cache disk) although every write was taken, the server has the whole file: the close
/// succeeds, and the local copy, which lacks bytes, is never read (a new open reads the
/// server's file).
#[test]
fn a_journal_that_fails_only_at_the_close_leaves_a_complete_upload() {
    if !crate::support::have("mount") {
        return;
    }
    let rt = rt();
    let server = DavServer::start();
    let (tmpfs, _unmount) = crate::faults::small_tmpfs("256k");
    let c = core_with(&server.url(), |cfg| {
        cfg.cache_dir = tmpfs.path().join("mount")
    });
    let vfs = c.vfs.clone();
    within(&rt, async {
        vfs.probe().await.expect("probe");
        let data = pattern(1 << 20, 21);
        let (attr, o) = vfs
            .create(ROOT_INO, "full.bin", WRITE)
            .await
            .expect("create");
        // One write, taken at once: the journal thread finds the disk full only after.
        let n = vfs
            .write(o.fh, 0, Bytes::copy_from_slice(&data), ME)
            .await
            .expect("write");
        assert_eq!(n as usize, data.len());
        vfs.close(o.fh, ME)
            .await
            .expect("the upload is complete: the close succeeds");
        vfs.release(o.fh).await;
        assert_eq!(
            on_server(&server.root, "full.bin").map(|d| d == data),
            Some(true),
            "the server's file is not what was written"
        );
        let o = vfs.open(attr.ino, READ).await.expect("open");
        assert_eq!(
            read_all(&vfs, o.fh).await.expect("read"),
            data,
            "read from the incomplete local copy"
        );
        vfs.release(o.fh).await;
    });
}

/// Two mounts of one URL share a cache directory; a third started after the first stopped,
/// while the second still runs, must not take the second one's journals for leftovers (it
/// emptied the journal of a file the second had just written, whose kept copy then read as
/// zeros).
#[test]
fn a_mount_started_while_another_uses_the_cache_takes_none_of_its_journals() {
    let rt = rt();
    let server = DavServer::start();
    let shared = tempfile::tempdir().expect("cache");
    let at = |c: &mut davdrive::vfs::VfsConfig| c.cache_dir = shared.path().join("mount");
    let first = core_with(&server.url(), at);
    let second = core_with(&server.url(), at);
    let vfs = second.vfs.clone();
    let data = pattern(200_000, 31);
    let ino = within(&rt, async {
        vfs.probe().await.expect("probe");
        let (attr, o) = vfs
            .create(ROOT_INO, "kept.bin", WRITE)
            .await
            .expect("create");
        vfs.write(o.fh, 0, Bytes::copy_from_slice(&data), ME)
            .await
            .expect("write");
        vfs.close(o.fh, ME).await.expect("close");
        vfs.release(o.fh).await;
        attr.ino
    });
    drop(first);
    let _third = core_with(&server.url(), at);
    // Another client's version on the server: the second mount has not looked since, so it
    // reads its kept copy, which must still hold what it wrote.
    std::fs::write(server.root.join("kept.bin"), b"theirs").expect("other client");
    within(&rt, async {
        let o = vfs.open(ino, READ).await.expect("open");
        assert_eq!(
            read_all(&vfs, o.fh).await.expect("read"),
            data,
            "the kept copy changed under the second mount"
        );
        vfs.release(o.fh).await;
    });
}

#[test]
fn a_rename_during_a_streaming_upload_lands_every_byte_at_the_new_name() {
    let rt = rt();
    let server = DavServer::start();
    let c = core_with(&server.url(), |_| {});
    let vfs = c.vfs.clone();
    within(&rt, async {
        vfs.probe().await.expect("probe");
        let data = pattern(6 << 20, 5);
        let (_, o) = vfs
            .create_path("/up.bin", WRITE, IfExists::Fail)
            .await
            .expect("create");
        let half = data.len() / 2;
        for (i, piece) in data[..half].chunks(256 << 10).enumerate() {
            vfs.write(
                o.fh,
                (i * (256 << 10)) as u64,
                Bytes::copy_from_slice(piece),
                ME,
            )
            .await
            .expect("write");
        }
        vfs.rename_path("/up.bin", "/moved.bin", false)
            .await
            .expect("rename while uploading");
        assert_eq!(vfs.handle_path(o.fh).as_deref(), Some("/moved.bin"));
        for (i, piece) in data[half..].chunks(256 << 10).enumerate() {
            vfs.write(
                o.fh,
                (half + i * (256 << 10)) as u64,
                Bytes::copy_from_slice(piece),
                ME,
            )
            .await
            .expect("write after rename");
        }
        vfs.close(o.fh, ME).await.expect("close");
        vfs.release_path(o.fh).await;
        assert!(on_server(&server.root, "up.bin").is_none());
        assert_eq!(
            on_server(&server.root, "moved.bin").map(|d| d == data),
            Some(true),
            "the moved file is not what was written"
        );
        // Read back through the core, by path.
        let (a, o) = vfs.open_path("/moved.bin", READ).await.expect("open");
        assert_eq!(a.size, data.len() as u64);
        assert_eq!(read_all(&vfs, o.fh).await.expect("read"), data);
        vfs.release_path(o.fh).await;
    });
}

#[test]
fn times_are_kept_apart_creation_change_and_modification() {
    let rt = rt();
    let server = DavServer::start();
    let c = core_with(&server.url(), |_| {});
    let vfs = c.vfs.clone();
    within(&rt, async {
        vfs.probe().await.expect("probe");
        let (created, o) = vfs
            .create_path("/t.txt", WRITE, IfExists::Fail)
            .await
            .expect("create");
        vfs.close(o.fh, ME).await.expect("close");
        vfs.release_path(o.fh).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (_, o) = vfs.open_path("/t.txt", WRITE).await.expect("open");
        vfs.write(o.fh, 0, Bytes::from_static(b"x"), ME)
            .await
            .expect("write");
        let during = vfs.stat_path("/t.txt").await.expect("stat");
        assert!(during.mtime > created.crtime, "{during:?} vs {created:?}");
        assert_eq!(
            during.ctime, during.mtime,
            "change time follows the content"
        );
        assert!(
            during.crtime <= created.mtime,
            "creation time moved: {during:?}"
        );
        vfs.close(o.fh, ME).await.expect("close");
        vfs.release_path(o.fh).await;
    });
}

/// A file whose pages the kernel kept (a second open of the same version) is read in ranges
/// of just what is asked: the reads that reach the core then are the page cache's holes, and
/// a larger range would be given up after a few pages, with its connection. A first open
/// still reads ahead.
#[test]
fn reads_of_a_file_whose_pages_were_kept_ask_for_just_the_read() {
    use crate::support::apache::{self, apache};
    let Some(a) = apache() else { return };
    let rt = rt();
    let dir = a.fresh_dir("core-kept");
    let data = pattern(4 << 20, 5);
    std::fs::write(dir.join("f.bin"), &data).expect("write");
    apache::give_to_server(&dir);
    // Without the bytes kept on disk, which would answer the holes without a request (see
    // `bytes_read_once_are_read_again_without_a_request`).
    let c = core_with(&a.url("core-kept"), |cfg| cfg.store_reads = false);
    let vfs = c.vfs.clone();
    // Apache logs a request once answered, a worker at a time: wait (bounded) until as many
    // GETs as the test can expect are logged.
    let gets_until = |from: usize, want: usize| -> Vec<String> {
        let reqs = a.settled_until("core-kept", |r| {
            r.get(from..)
                .is_some_and(|r| r.iter().filter(|x| x.method == "GET").count() >= want)
        });
        reqs.get(from..)
            .unwrap_or_default()
            .iter()
            .filter(|r| r.method == "GET")
            .map(|r| r.range.clone())
            .collect()
    };
    let gets = |from: usize| gets_until(from, 1);
    within(&rt, async {
        vfs.probe().await.expect("probe");
        let attr = vfs.lookup(ROOT_INO, "f.bin").await.expect("lookup");
        let o = vfs.open(attr.ino, READ).await.expect("open");
        assert!(!o.keep_cache, "nothing to keep on a first open");
        let before = a.settled_requests("core-kept").len();
        let d = vfs.read(o.fh, 1 << 20, 8192).await.expect("read");
        assert_eq!(&d.to_bytes()[..], &data[1 << 20..(1 << 20) + 8192]);
        assert_eq!(read_all(&vfs, o.fh).await.expect("read"), data);
        // A seek on a first open reads ahead (1 MiB; Apache logs it once it is given up).
        let first = gets(before);
        assert!(
            first.iter().any(|r| r == "bytes=1048576-2097151"),
            "{first:?}"
        );
        vfs.release(o.fh).await;

        let o = vfs.open(attr.ino, READ).await.expect("open again");
        assert!(o.keep_cache, "the same version: the kernel keeps its pages");
        let before = a.settled_requests("core-kept").len();
        for (offset, len) in [(1 << 20, 8192), (3 << 20, 4096)] {
            let d = vfs.read(o.fh, offset, len).await.expect("read a hole");
            let at = offset as usize;
            assert_eq!(&d.to_bytes()[..], &data[at..at + len as usize]);
        }
        assert_eq!(
            gets_until(before, 2),
            ["bytes=1048576-1056767", "bytes=3145728-3149823"],
            "one range of just the read per hole"
        );
        vfs.release(o.fh).await;
    });
}

/// The first file of a mount: the chunked-upload probe's PUT into its folder proves the
/// folder writable, so the file needs no empty placeholder before its upload; the first file
/// of another folder still gets one (a folder that refuses writes fails the create itself).
#[test]
fn the_first_file_of_a_mount_needs_no_placeholder() {
    let rt = rt();
    let server = DavServer::start();
    std::fs::create_dir(server.root.join("other")).expect("mkdir");
    let c = core_with(&server.url(), |_| {});
    let vfs = c.vfs.clone();
    within(&rt, async {
        vfs.probe().await.expect("probe");
        let other = vfs.lookup(ROOT_INO, "other").await.expect("other").ino;
        for (dir, name) in [(ROOT_INO, "first.txt"), (other, "second.txt")] {
            let (_, o) = vfs.create(dir, name, WRITE).await.expect("create");
            vfs.write(o.fh, 0, Bytes::from_static(b"hello"), ME)
                .await
                .expect("write");
            vfs.close(o.fh, ME).await.expect("close");
            vfs.release(o.fh).await;
        }
    });
    let puts = |path: &str| {
        server
            .requests()
            .iter()
            .filter(|(m, p)| m == "PUT" && p == path)
            .count()
    };
    assert_eq!(puts("/first.txt"), 1, "{:?}", server.requests());
    assert_eq!(puts("/other/second.txt"), 2, "{:?}", server.requests());
    assert_eq!(
        on_server(&server.root, "first.txt").as_deref(),
        Some(&b"hello"[..])
    );
}
