//! Windows semantics (`davdrive::vfs::windows`, what `fs/winfsp.rs` translates) against a
//! real server, called in the orders Windows uses: create, write, cleanup, close; open by
//! path in any case; SetDelete then cleanup; ReadDirectory page by page with a marker.
//!
//! The same rules run again in the Windows build under Wine, through the WinFsp adapter's
//! own operations (`scripts/windows-check`). What the server holds is read from its disk.

use std::path::Path;
use std::time::Duration;

use davdrive::dav::ErrorKind;
use davdrive::vfs::NamePolicy;
use davdrive::vfs::windows::{WinAccess, WinFs};

use crate::core::core_with;
use crate::support::apache::{apache, give_to_server};
use crate::support::dav_server::DavServer;
use crate::support::rt;

const RW: WinAccess = WinAccess { write: true };
const RO: WinAccess = WinAccess { write: false };

fn within<T>(rt: &tokio::runtime::Runtime, f: impl std::future::Future<Output = T>) -> T {
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("a Windows-order call did not finish within 60 s")
    })
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    v.sort();
    v
}

/// Whether `path` shows the hidden attribute, in its listing and once open.
async fn o_hidden_check(w: &WinFs, path: &str) -> bool {
    let (dir, name) = path.rsplit_once('\\').expect("a path");
    let d = w
        .open(if dir.is_empty() { "\\" } else { dir }, RO)
        .await
        .expect("dir");
    let listed = w
        .read_directory(&d.handle, None)
        .await
        .expect("list")
        .iter()
        .find(|e| e.name == name)
        .map(|e| e.info.hidden)
        .expect("listed");
    w.close(d.handle).await;
    let o = w.open(path, RO).await.expect("open");
    let open = w.info(&o.handle).await.expect("info").hidden;
    w.close(o.handle).await;
    assert_eq!(listed, open, "{path}");
    open
}

fn puts_to(server: &DavServer, path: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|(m, p)| m == "PUT" && p == path)
        .count()
}

#[test]
fn create_dispositions_case_and_stream_names() {
    let rt = rt();
    let server = DavServer::start();
    std::fs::create_dir(server.root.join("Docs")).expect("mkdir");
    std::fs::write(server.root.join("Docs/report.txt"), b"quarterly").expect("seed");
    let c = core_with(&server.url(), |cfg| cfg.names = NamePolicy::windows());
    let w = WinFs::new(c.vfs.clone());
    within(&rt, async {
        w.vfs().probe().await.expect("probe");
        // FILE_CREATE on an existing name, in another case: a collision, nothing changed.
        let e = w
            .create("\\DOCS\\REPORT.TXT", false)
            .await
            .expect_err("collision");
        assert_eq!(e.kind, ErrorKind::AlreadyExists);
        assert_eq!(
            std::fs::read(server.root.join("Docs/report.txt")).expect("kept"),
            b"quarterly"
        );
        // A missing last name is "not found"; a missing folder on the way is another error
        // on Windows (STATUS_OBJECT_PATH_NOT_FOUND).
        let e = w
            .open("\\Docs\\nothing.txt", RO)
            .await
            .expect_err("missing");
        assert_eq!(e.kind, ErrorKind::NotFound);
        let e = w
            .open("\\Nowhere\\x.txt", RO)
            .await
            .expect_err("missing folder");
        assert_eq!(e.kind, ErrorKind::PathNotFound);
        let e = w
            .create("\\Nowhere\\x.txt", false)
            .await
            .expect_err("missing folder");
        assert_eq!(e.kind, ErrorKind::PathNotFound);
        // Open in any case: the server's spelling is reported.
        let o = w.open("\\docs\\Report.TXT", RO).await.expect("open");
        assert_eq!(o.normalized, "\\Docs\\report.txt");
        assert_eq!(o.info.size, 9);
        assert!(!o.info.dir && !o.info.read_only);
        assert_eq!(
            &w.read(&o.handle, 0, 64).await.expect("read")[..],
            b"quarterly"
        );
        assert!(w.read(&o.handle, 9, 64).await.expect("eof").is_empty());
        assert_eq!(w.cleanup(&o.handle, false).await.map(|e| e.kind), None);
        w.close(o.handle).await;

        // Overwrite (FILE_OVERWRITE_IF on an existing file) truncates; the new bytes land.
        let o = w.open("\\Docs\\report.txt", RW).await.expect("open rw");
        assert_eq!(w.overwrite(&o.handle).await.expect("overwrite").size, 0);
        let (n, info) = w
            .write(&o.handle, b"annual", 0, false, false)
            .await
            .expect("write");
        assert_eq!((n, info.size), (6, 6));
        // Appending (write to end of file), then a paging write past the end: clipped.
        let (n, info) = w
            .write(&o.handle, b" report", 0, true, false)
            .await
            .expect("append");
        assert_eq!((n, info.size), (7, 13));
        let (n, info) = w
            .write(&o.handle, b"XYZ", 12, false, true)
            .await
            .expect("constrained");
        assert_eq!((n, info.size), (1, 13), "paging I/O never extends a file");
        assert_eq!(w.cleanup(&o.handle, false).await.map(|e| e.kind), None);
        w.close(o.handle).await;
        assert_eq!(
            std::fs::read(server.root.join("Docs/report.txt")).expect("on server"),
            b"annual reporX"
        );

        // A new file, written, cleaned up: on the server under the name asked for.
        let o = w
            .create("\\Docs\\New Notes.txt", false)
            .await
            .expect("create");
        assert_eq!(o.normalized, "\\Docs\\New Notes.txt");
        w.write(&o.handle, b"hello", 0, false, false)
            .await
            .expect("write");
        assert_eq!(w.cleanup(&o.handle, false).await.map(|e| e.kind), None);
        w.close(o.handle).await;
        assert_eq!(
            std::fs::read(server.root.join("Docs/New Notes.txt")).expect("new"),
            b"hello"
        );
        assert!(!o_hidden_check(&w, "\\Docs\\New Notes.txt").await);
        // An empty new file exists too; a name with a leading dot is hidden, as on Linux.
        let o = w.create("\\Docs\\.hidden", false).await.expect("create");
        assert!(o.info.hidden);
        w.cleanup(&o.handle, false).await;
        w.close(o.handle).await;
        assert!(o_hidden_check(&w, "\\Docs\\.hidden").await);
        let o = w.create("\\Docs\\empty.txt", false).await.expect("create");
        w.cleanup(&o.handle, false).await;
        w.close(o.handle).await;
        assert_eq!(
            std::fs::metadata(server.root.join("Docs/empty.txt"))
                .expect("empty file")
                .len(),
            0
        );

        // Named streams: refused with no request, the file untouched. `::$DATA` is the file.
        server.clear();
        for stream in [
            "\\Docs\\report.txt:Zone.Identifier",
            "\\Docs\\report.txt:Zone.Identifier:$DATA",
        ] {
            let e = w.open(stream, RW).await.expect_err(stream);
            assert_eq!(e.kind, ErrorKind::InvalidName, "{stream}");
            let e = w.create(stream, false).await.expect_err(stream);
            assert_eq!(e.kind, ErrorKind::InvalidName, "{stream}");
        }
        assert_eq!(server.requests(), Vec::<(String, String)>::new());
        let o = w
            .open("\\Docs\\report.txt::$DATA", RO)
            .await
            .expect("the default stream");
        assert_eq!(o.info.size, 13);
        w.close(o.handle).await;
        assert_eq!(
            std::fs::read(server.root.join("Docs/report.txt")).expect("untouched"),
            b"annual reporX"
        );

        // Explorer's lookups of desktop.ini, Thumbs.db, autorun.inf in a listed folder: not
        // found, without a request. SetBasicInfo (times, attributes) sends nothing either.
        let o = w.open("\\Docs", RO).await.expect("open folder");
        assert!(o.info.dir);
        w.read_directory(&o.handle, None).await.expect("list");
        server.clear();
        for probe in ["desktop.ini", "Thumbs.db", "autorun.inf", "DESKTOP.INI"] {
            let e = w
                .info_by_name(&format!("\\Docs\\{probe}"))
                .await
                .expect_err(probe);
            assert_eq!(e.kind, ErrorKind::NotFound, "{probe}");
        }
        let f = w.open("\\Docs\\report.txt", RW).await.expect("open");
        assert_eq!(w.set_basic_info(&f.handle).await.expect("basic").size, 13);
        assert_eq!(w.cleanup(&f.handle, false).await.map(|e| e.kind), None);
        w.close(f.handle).await;
        w.close(o.handle).await;
        assert_eq!(
            server.requests(),
            Vec::<(String, String)>::new(),
            "lookups of absent names in a listed folder and SetBasicInfo cost no request"
        );
    });
}

#[test]
fn delete_on_close_and_renames() {
    let rt = rt();
    let server = DavServer::start();
    std::fs::create_dir_all(server.root.join("Full/inner")).expect("mkdir");
    std::fs::write(server.root.join("Full/inner/x.bin"), b"x").expect("seed");
    std::fs::create_dir(server.root.join("Empty")).expect("mkdir");
    std::fs::write(server.root.join("a.txt"), b"A").expect("seed");
    std::fs::write(server.root.join("b.txt"), b"B").expect("seed");
    let c = core_with(&server.url(), |cfg| cfg.names = NamePolicy::windows());
    let w = WinFs::new(c.vfs.clone());
    within(&rt, async {
        w.vfs().probe().await.expect("probe");
        // SetDelete on a folder that is not empty: refused, nothing deleted, even at cleanup.
        let o = w.open("\\full", RO).await.expect("open");
        let e = w.set_delete(&o.handle, true).await.expect_err("not empty");
        assert_eq!(e.kind, ErrorKind::NotEmpty);
        assert!(!o.handle.delete_pending());
        w.cleanup(&o.handle, o.handle.delete_pending()).await;
        w.close(o.handle).await;
        assert!(server.root.join("Full/inner/x.bin").exists());
        // An empty folder: marked, and deleted at cleanup, not before.
        let o = w.open("\\EMPTY", RO).await.expect("open");
        w.set_delete(&o.handle, true).await.expect("empty");
        assert!(
            server.root.join("Empty").exists(),
            "not deleted before cleanup"
        );
        assert_eq!(w.cleanup(&o.handle, true).await.map(|e| e.kind), None);
        w.close(o.handle).await;
        assert!(!server.root.join("Empty").exists());
        // A file: SetDelete, then unmarked again, then cleanup: kept. Marked: deleted.
        let o = w.open("\\A.TXT", RO).await.expect("open");
        w.set_delete(&o.handle, true).await.expect("mark");
        w.set_delete(&o.handle, false).await.expect("unmark");
        w.cleanup(&o.handle, o.handle.delete_pending()).await;
        w.close(o.handle).await;
        assert!(server.root.join("a.txt").exists());
        // A new file deleted on close (a temporary file): nothing reaches the server's disk
        // and nothing is kept for recovery.
        let o = w.create("\\scratch.tmp", false).await.expect("create");
        w.write(&o.handle, b"scratch", 0, false, false)
            .await
            .expect("write");
        w.set_delete(&o.handle, true).await.expect("mark");
        assert_eq!(w.cleanup(&o.handle, true).await.map(|e| e.kind), None);
        w.close(o.handle).await;
        assert!(!server.root.join("scratch.tmp").exists());
        assert_eq!(
            std::fs::read_dir(w.vfs().recovery_dir())
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );

        // A folder opened with write rights (as Windows opens a rename's target folder) is a
        // folder opened.
        let f = w
            .open("\\Full", RW)
            .await
            .expect("a folder opened with write rights");
        assert!(f.info.dir);
        w.close(f.handle).await;
        // Two handles of one file: SetDelete through the first, and WinFsp's delete flag at
        // the last handle's cleanup, which is the second's.
        std::fs::write(server.root.join("two.txt"), b"2").expect("seed");
        w.vfs().refresh(None);
        let h1 = w.open("\\two.txt", RO).await.expect("open 1");
        let h2 = w.open("\\TWO.TXT", RO).await.expect("open 2");
        w.set_delete(&h1.handle, true).await.expect("mark");
        w.cleanup(&h1.handle, false).await;
        assert!(
            server.root.join("two.txt").exists(),
            "not at the first cleanup"
        );
        assert_eq!(w.cleanup(&h2.handle, true).await.map(|e| e.kind), None);
        w.close(h1.handle).await;
        w.close(h2.handle).await;
        assert!(!server.root.join("two.txt").exists());
        // A new file never written: WinFsp may send no cleanup at all; close alone leaves it
        // on the server.
        let o = w.create("\\untouched.txt", false).await.expect("create");
        w.close(o.handle).await;
        w.vfs().wait_for_uploads().await;
        assert_eq!(
            std::fs::metadata(server.root.join("untouched.txt"))
                .expect("on the server")
                .len(),
            0
        );
        std::fs::remove_file(server.root.join("untouched.txt")).expect("rm");
        w.vfs().refresh(None);

        // Renames: a case-only rename is sent; without replace an existing target is refused
        // and kept; with replace it is replaced.
        w.rename("\\a.txt", "\\A.txt", false).await.expect("case");
        assert_eq!(names_in(&server.root), ["A.txt", "Full", "b.txt"]);
        let e = w
            .rename("\\b.txt", "\\a.TXT", false)
            .await
            .expect_err("exists");
        assert_eq!(e.kind, ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(server.root.join("A.txt")).expect("A"), b"A");
        w.rename("\\b.txt", "\\a.TXT", true).await.expect("replace");
        assert_eq!(names_in(&server.root), ["A.txt", "Full"]);
        assert_eq!(std::fs::read(server.root.join("A.txt")).expect("A"), b"B");
        // The volume reports a size and free space.
        let (total, free) = w.volume().await.expect("volume");
        assert!(total >= free && free > 0, "{total} {free}");
    });
}

#[test]
fn read_directory_pages_with_a_marker() {
    let rt = rt();
    let server = DavServer::start();
    let dir = server.root.join("Many");
    std::fs::create_dir(&dir).expect("mkdir");
    let mut want: Vec<String> = (0..57).map(|i| format!("file {i:02}.dat")).collect();
    want.push("Zeta".into());
    want.push("alpha".into());
    for n in &want {
        std::fs::write(dir.join(n), n.as_bytes()).expect("seed");
    }
    let c = core_with(&server.url(), |cfg| cfg.names = NamePolicy::windows());
    let w = WinFs::new(c.vfs.clone());
    within(&rt, async {
        w.vfs().probe().await.expect("probe");
        let o = w.open("\\Many", RO).await.expect("open");
        // Pages of 7, as a small buffer would take them, each after the last name returned.
        let mut got = Vec::new();
        let mut marker: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = w
                .read_directory(&o.handle, marker.as_deref())
                .await
                .expect("page");
            if page.is_empty() {
                break;
            }
            pages += 1;
            for e in page.iter().take(7) {
                got.push(e.name.clone());
            }
            marker = got.last().cloned();
            if pages == 3 {
                // A file deleted between pages, the marker's own entry among them: paging
                // goes on from where it would sort.
                std::fs::remove_file(dir.join("file 19.dat")).expect("rm");
                // (The listing the pages come from is the snapshot of the first page.)
            }
            assert!(pages < 100, "paging does not end");
        }
        assert_eq!(&got[..2], [".", ".."], "a folder starts with . and ..");
        let mut sorted_want = want.clone();
        sorted_want.sort_by_key(|s| s.to_lowercase());
        assert_eq!(
            got[2..],
            sorted_want[..],
            "every entry exactly once, in order, from the snapshot of the first page"
        );
        // A rewind (no marker) lists again: the deleted file is gone once the cached listing
        // is (`davdrive refresh`, or after --dir-cache-ttl).
        w.vfs().refresh(None);
        let fresh = w.read_directory(&o.handle, None).await.expect("rewind");
        assert_eq!(fresh.len(), got.len() - 1);
        assert!(!fresh.iter().any(|e| e.name == "file 19.dat"));
        // The root has no . and ..
        let r = w.open("\\", RO).await.expect("root");
        let root = w.read_directory(&r.handle, None).await.expect("root page");
        assert_eq!(
            root.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["Many"]
        );
        // A marker that is not listed (any more) continues after where it sorts.
        let after = w
            .read_directory(&o.handle, Some("file 55.zzz"))
            .await
            .expect("page");
        assert_eq!(
            after.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["file 56.dat", "Zeta"]
        );
        w.close(r.handle).await;
        w.close(o.handle).await;
    });
}

#[test]
fn an_allocation_hint_is_not_a_truncate() {
    let rt = rt();
    let server = DavServer::start();
    let c = core_with(&server.url(), |cfg| cfg.names = NamePolicy::windows());
    let w = WinFs::new(c.vfs.clone());
    let data = crate::support::pattern(3 << 20, 7);
    within(&rt, async {
        w.vfs().probe().await.expect("probe");
        // Explorer's copy: create, set 1 GiB of allocation, write sequentially, cleanup.
        // Each the first new file of its folder, so that both are uploaded alike.
        std::fs::create_dir(server.root.join("p")).expect("mkdir");
        std::fs::create_dir(server.root.join("h")).expect("mkdir");
        // The mount's first file probes chunked uploads (a PUT that also proves its folder
        // writable): done here, so that it is neither of the two compared.
        let o = w.create("\\first.txt", false).await.expect("create");
        w.write(&o.handle, b"x", 0, false, false)
            .await
            .expect("write");
        assert_eq!(w.cleanup(&o.handle, false).await.map(|e| e.kind), None);
        w.close(o.handle).await;
        for (name, hint) in [("p/plain.bin", None), ("h/hinted.bin", Some(1u64 << 30))] {
            let o = w.create(&format!("\\{name}"), false).await.expect("create");
            if let Some(h) = hint {
                assert_eq!(w.set_allocation(&o.handle, h).await.expect("hint").size, 0);
            }
            for (i, chunk) in data.chunks(64 << 10).enumerate() {
                w.write(&o.handle, chunk, (i * (64 << 10)) as u64, false, false)
                    .await
                    .expect("write");
            }
            if let Some(h) = hint {
                // Allocation is larger than the file: still nothing cut.
                assert_eq!(
                    w.set_allocation(&o.handle, h).await.expect("hint").size,
                    data.len() as u64
                );
            }
            assert_eq!(w.cleanup(&o.handle, false).await.map(|e| e.kind), None);
            w.close(o.handle).await;
            assert_eq!(
                std::fs::read(server.root.join(name)).expect("on server"),
                data,
                "{name}"
            );
        }
        assert_eq!(
            puts_to(&server, "/h/hinted.bin"),
            puts_to(&server, "/p/plain.bin"),
            "the hint changes nothing in how the file is uploaded"
        );
        // An allocation below the size cuts the file, as on NTFS.
        let o = w.open("\\H\\HINTED.BIN", RW).await.expect("open");
        assert_eq!(
            w.set_allocation(&o.handle, 1000).await.expect("cut").size,
            1000
        );
        w.cleanup(&o.handle, false).await;
        w.close(o.handle).await;
        assert_eq!(
            std::fs::read(server.root.join("h/hinted.bin")).expect("cut"),
            data[..1000]
        );
    });
}

/// Apache runs as www-data, so a folder it cannot write makes it refuse for real.
#[test]
fn refusals_at_cleanup_are_reported_and_lose_nothing() {
    let Some(a) = apache() else { return };
    let rt = rt();
    let dir = a.fresh_dir("win-refuse");
    std::fs::create_dir(dir.join("locked")).expect("mkdir");
    std::fs::write(dir.join("locked/keep.txt"), b"keep me").expect("seed");
    give_to_server(&dir);
    let c = core_with(&a.url("win-refuse"), |cfg| {
        cfg.names = NamePolicy::windows();
        // A refusal that looks transient is not retried for a minute here.
        cfg.upload_retry = Duration::from_secs(2);
    });
    let w = WinFs::new(c.vfs.clone());
    let mut notices = w.vfs().notices();
    within(&rt, async {
        w.vfs().probe().await.expect("probe");
        let o = w.open("\\locked\\keep.txt", RW).await.expect("open");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("locked"), std::fs::Permissions::from_mode(0o555))
            .expect("chmod");
        // Delete on close that the server refuses: the file is still listed, and the
        // failure is told.
        w.set_delete(&o.handle, true).await.expect("mark");
        let e = w.cleanup(&o.handle, true).await.expect("a refusal");
        assert!(
            matches!(e.kind, ErrorKind::PermissionDenied | ErrorKind::Io),
            "{e:?}"
        );
        w.close(o.handle).await;
        assert_eq!(
            std::fs::read(dir.join("locked/keep.txt")).expect("kept"),
            b"keep me"
        );
        let shown = w
            .info_by_name("\\locked\\keep.txt")
            .await
            .expect("reappears");
        assert_eq!(shown.size, 7);
        let n = notices.try_recv().expect("a notice");
        assert!(n.path.ends_with("/locked/keep.txt"), "{n:?}");
        // A new file the server refuses to store: cleanup cannot tell the program, so the
        // data is kept for recovery and told.
        let o = w.create("\\fresh.txt", false).await.expect("create");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        {
            w.write(&o.handle, b"precious bytes", 0, false, false)
                .await
                .expect("write");
            let e = w.cleanup(&o.handle, false).await.expect("refused upload");
            assert!(e.kind != ErrorKind::NotFound, "{e:?}");
            w.close(o.handle).await;
            let n = notices.try_recv().expect("a notice");
            assert!(n.path.ends_with("/fresh.txt"), "{n:?}");
            let kept: Vec<Vec<u8>> = walk_files(&w.vfs().recovery_dir())
                .into_iter()
                .filter_map(|p| std::fs::read(p).ok())
                .collect();
            assert!(
                kept.iter().any(|k| k == b"precious bytes"),
                "the refused data is kept for recovery"
            );
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(dir.join("locked"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    });
}

fn walk_files(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk_files(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
