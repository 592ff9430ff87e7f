//! Reference-model tests of the core, in the manner of mountpoint-s3's reftests: random
//! sequences of create / open / write / truncate / rename / unlink / mkdir / rmdir / read /
//! fsync / close are applied both to the core (a `Vfs` against the in-process dav-server,
//! no kernel) and to an in-memory POSIX model; each step's outcome must agree, and after
//! each sequence (every handle closed, every upload done) every file's bytes, size and
//! existence match on the core, on the model and on the server's disk.
//!
//! Each case also draws how the core uploads (streamed, spooled, segmented in 64 KiB pieces,
//! `--async-close`) and whether it is driven as FUSE drives it (inodes and names) or as
//! WinFsp will (whole paths).
//!
//! Cases are numbered seeds: CI runs `REFTEST_CASES` (default 24) of them from
//! `REFTEST_SEED` (default 0). A failure prints its seed and a shrunk sequence; keep that
//! sequence as a named regression test below (`regressions`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use davdrive::dav::ErrorKind;
use davdrive::vfs::{IfExists, Ino, OpenMode, ROOT_INO, UploadPolicy, Vfs};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::core::{ME, READ, core_with, read_all};
use crate::support::dav_server::DavServer;
use crate::support::{pattern, rt};

const FILES: &[&str] = &["f0", "f1", "f2", "d0/f0", "d0/f1", "d1/f0"];
const DIRS: &[&str] = &["d0", "d1"];
const SLOTS: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// open(O_CREAT | O_WRONLY) into handle slot `slot` (no truncation of an existing file).
    Create {
        slot: usize,
        file: usize,
    },
    /// open(O_RDWR [| O_TRUNC]) of an existing file.
    Open {
        slot: usize,
        file: usize,
        trunc: bool,
    },
    /// pwrite of `len` bytes of pattern `seed` at `off`.
    Write {
        slot: usize,
        off: u64,
        len: usize,
        seed: u64,
    },
    /// ftruncate through the handle.
    TruncateFh {
        slot: usize,
        size: u64,
    },
    /// truncate by name.
    Truncate {
        file: usize,
        size: u64,
    },
    Rename {
        from: usize,
        to: usize,
    },
    RenameDir {
        from: usize,
        to: usize,
    },
    Unlink {
        file: usize,
    },
    Mkdir {
        dir: usize,
    },
    Rmdir {
        dir: usize,
    },
    /// open read-only, read everything, compare, close.
    Read {
        file: usize,
    },
    Fsync {
        slot: usize,
    },
    Close {
        slot: usize,
    },
}

/// How a case drives and configures the core.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub by_path: bool,
    pub upload: UploadPolicy,
    pub segment_size: u64,
    pub async_close: bool,
}

fn draw_setup(rng: &mut StdRng) -> Setup {
    Setup {
        by_path: rng.random_bool(0.5),
        upload: match rng.random_range(0..3) {
            0 => UploadPolicy::Auto,
            1 => UploadPolicy::Stream,
            _ => UploadPolicy::Spool,
        },
        segment_size: if rng.random_bool(0.4) {
            64 << 10
        } else {
            16 << 20
        },
        async_close: rng.random_bool(0.3),
    }
}

fn draw_op(rng: &mut StdRng) -> Op {
    let slot = rng.random_range(0..SLOTS);
    let file = rng.random_range(0..FILES.len());
    match rng.random_range(0..100) {
        0..12 => Op::Create { slot, file },
        12..20 => Op::Open {
            slot,
            file,
            trunc: rng.random_bool(0.3),
        },
        20..42 => {
            let big = rng.random_bool(0.1);
            Op::Write {
                slot,
                off: if rng.random_bool(0.6) {
                    0
                } else {
                    rng.random_range(0..(300 << 10))
                },
                len: if big {
                    rng.random_range(100_000..400_000)
                } else {
                    rng.random_range(0..5000)
                },
                seed: rng.random_range(0..1000),
            }
        }
        42..46 => Op::TruncateFh {
            slot,
            size: rng.random_range(0..200_000),
        },
        46..50 => Op::Truncate {
            file,
            size: rng.random_range(0..200_000),
        },
        50..58 => Op::Rename {
            from: file,
            to: rng.random_range(0..FILES.len()),
        },
        58..61 => Op::RenameDir {
            from: rng.random_range(0..DIRS.len()),
            to: rng.random_range(0..DIRS.len()),
        },
        61..67 => Op::Unlink { file },
        67..73 => Op::Mkdir {
            dir: rng.random_range(0..DIRS.len()),
        },
        73..76 => Op::Rmdir {
            dir: rng.random_range(0..DIRS.len()),
        },
        76..86 => Op::Read { file },
        86..90 => Op::Fsync { slot },
        _ => Op::Close { slot },
    }
}

/// The in-memory POSIX model: names lead to inodes, handles hold inodes, an unlinked file
/// lives on while a handle holds it.
#[derive(Debug, Default)]
struct Model {
    names: BTreeMap<String, Entry>,
    data: HashMap<u64, Vec<u8>>,
    next: u64,
    slots: [Option<u64>; SLOTS],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

type Outcome = Result<Option<Vec<u8>>, ErrorKind>;

fn parent_of(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(p, _)| p)
}

impl Model {
    fn dir_ok(&self, path: &str) -> Result<(), ErrorKind> {
        match parent_of(path) {
            None => Ok(()),
            Some(p) => match self.names.get(p) {
                Some(Entry::Dir) => Ok(()),
                Some(Entry::File(_)) => Err(ErrorKind::NotADirectory),
                None => Err(ErrorKind::NotFound),
            },
        }
    }

    fn file(&self, path: &str) -> Result<u64, ErrorKind> {
        self.dir_ok(path)?;
        match self.names.get(path) {
            Some(Entry::File(id)) => Ok(*id),
            Some(Entry::Dir) => Err(ErrorKind::IsADirectory),
            None => Err(ErrorKind::NotFound),
        }
    }

    fn children(&self, dir: &str) -> usize {
        let prefix = format!("{dir}/");
        self.names.keys().filter(|k| k.starts_with(&prefix)).count()
    }

    /// The expected outcome of `op`; `None` where the step is not applied (an empty slot,
    /// an operation the kernel would refuse before the core sees it).
    fn apply(&mut self, op: &Op) -> Option<Outcome> {
        Some(match *op {
            Op::Create { slot, file } => {
                if self.slots[slot].is_some() {
                    return None;
                }
                let path = FILES[file];
                match self.file(path) {
                    Ok(id) => {
                        self.slots[slot] = Some(id);
                        Ok(None)
                    }
                    Err(ErrorKind::NotFound) if self.dir_ok(path).is_ok() => {
                        let id = self.next;
                        self.next += 1;
                        self.data.insert(id, Vec::new());
                        self.names.insert(path.to_owned(), Entry::File(id));
                        self.slots[slot] = Some(id);
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            Op::Open { slot, file, trunc } => {
                if self.slots[slot].is_some() {
                    return None;
                }
                let id = match self.file(FILES[file]) {
                    Ok(id) => id,
                    Err(e) => return Some(Err(e)),
                };
                if trunc && let Some(d) = self.data.get_mut(&id) {
                    d.clear();
                }
                self.slots[slot] = Some(id);
                Ok(None)
            }
            Op::Write {
                slot,
                off,
                len,
                seed,
            } => {
                let id = self.slots[slot]?;
                let d = self.data.entry(id).or_default();
                let end = off as usize + len;
                if len > 0 {
                    if d.len() < end {
                        d.resize(end, 0);
                    }
                    d[off as usize..end].copy_from_slice(&pattern(len, seed));
                }
                Ok(None)
            }
            Op::TruncateFh { slot, size } => {
                let id = self.slots[slot]?;
                self.data.entry(id).or_default().resize(size as usize, 0);
                Ok(None)
            }
            Op::Truncate { file, size } => {
                let id = match self.file(FILES[file]) {
                    Ok(id) => id,
                    Err(ErrorKind::IsADirectory) => return None,
                    Err(e) => return Some(Err(e)),
                };
                self.data.entry(id).or_default().resize(size as usize, 0);
                Ok(None)
            }
            Op::Rename { from, to } => {
                let (a, b) = (FILES[from], FILES[to]);
                let id = match self.file(a) {
                    Ok(id) => id,
                    Err(ErrorKind::IsADirectory) => return None,
                    Err(e) => return Some(Err(e)),
                };
                if let Err(e) = self.dir_ok(b) {
                    return Some(Err(e));
                }
                if matches!(self.names.get(b), Some(Entry::Dir)) {
                    return None;
                }
                if a != b {
                    self.names.remove(a);
                    self.names.insert(b.to_owned(), Entry::File(id));
                }
                Ok(None)
            }
            Op::RenameDir { from, to } => {
                let (a, b) = (DIRS[from], DIRS[to]);
                match self.names.get(a) {
                    Some(Entry::Dir) => {}
                    Some(Entry::File(_)) => return None,
                    None => return Some(Err(ErrorKind::NotFound)),
                }
                if a == b {
                    return Some(Ok(None));
                }
                match self.names.get(b) {
                    Some(Entry::File(_)) => return None,
                    Some(Entry::Dir) if self.children(b) > 0 => {
                        return Some(Err(ErrorKind::NotEmpty));
                    }
                    _ => {}
                }
                let moved: Vec<(String, Entry)> = self
                    .names
                    .iter()
                    .filter(|(k, _)| *k == a || k.starts_with(&format!("{a}/")))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                self.names.remove(b);
                for (k, v) in moved {
                    self.names.remove(&k);
                    self.names.insert(format!("{b}{}", &k[a.len()..]), v);
                }
                Ok(None)
            }
            Op::Unlink { file } => match self.file(FILES[file]) {
                Ok(_) => {
                    self.names.remove(FILES[file]);
                    Ok(None)
                }
                Err(ErrorKind::IsADirectory) => return None,
                Err(e) => Err(e),
            },
            Op::Mkdir { dir } => match self.names.get(DIRS[dir]) {
                Some(_) => Err(ErrorKind::AlreadyExists),
                None => {
                    self.names.insert(DIRS[dir].to_owned(), Entry::Dir);
                    Ok(None)
                }
            },
            Op::Rmdir { dir } => match self.names.get(DIRS[dir]) {
                None => Err(ErrorKind::NotFound),
                Some(Entry::File(_)) => return None,
                Some(Entry::Dir) if self.children(DIRS[dir]) > 0 => Err(ErrorKind::NotEmpty),
                Some(Entry::Dir) => {
                    self.names.remove(DIRS[dir]);
                    Ok(None)
                }
            },
            Op::Read { file } => match self.file(FILES[file]) {
                Ok(id) => Ok(Some(self.data.get(&id).cloned().unwrap_or_default())),
                Err(ErrorKind::IsADirectory) => return None,
                Err(e) => Err(e),
            },
            Op::Fsync { slot } => {
                self.slots[slot]?;
                Ok(None)
            }
            Op::Close { slot } => {
                self.slots[slot].take()?;
                Ok(None)
            }
        })
    }
}

/// The core under test, driven by inodes and names (as FUSE) or by paths (as WinFsp).
struct Driver {
    vfs: Arc<Vfs>,
    by_path: bool,
    slots: [Option<u64>; SLOTS],
}

/// The core's error kind as the model knows it. The path layer tells a folder missing on
/// the way apart (`PathNotFound`, for Windows' STATUS_OBJECT_PATH_NOT_FOUND; checked in
/// `windows.rs`); the model, shared with the inode API, says `NotFound` for both.
fn kind<T>(r: Result<T, davdrive::vfs::VfsError>) -> Result<T, ErrorKind> {
    r.map_err(|e| match e.kind {
        ErrorKind::PathNotFound => ErrorKind::NotFound,
        k => k,
    })
}

const RDWR: OpenMode = OpenMode {
    read: true,
    write: true,
    truncate: false,
    append: false,
};

impl Driver {
    /// The inode of directory `dir` ("" for the root), by lookups as the kernel does.
    async fn dir(&self, dir: &str) -> Result<Ino, ErrorKind> {
        let mut ino = ROOT_INO;
        for name in dir.split('/').filter(|s| !s.is_empty()) {
            let a = kind(self.vfs.lookup(ino, name).await)?;
            if a.kind != davdrive::vfs::FileKind::Directory {
                return Err(ErrorKind::NotADirectory);
            }
            ino = a.ino;
        }
        Ok(ino)
    }

    async fn split(&self, path: &str) -> Result<(Ino, String), ErrorKind> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        Ok((self.dir(dir).await?, name.to_owned()))
    }

    async fn open(&mut self, slot: usize, path: &str, mode: OpenMode) -> Outcome {
        let fh = if self.by_path {
            kind(self.vfs.open_path(path, mode).await)?.1.fh
        } else {
            let (dir, name) = self.split(path).await?;
            let a = kind(self.vfs.lookup(dir, &name).await)?;
            if a.kind == davdrive::vfs::FileKind::Directory {
                return Err(ErrorKind::IsADirectory);
            }
            kind(self.vfs.open(a.ino, mode).await)?.fh
        };
        self.slots[slot] = Some(fh);
        Ok(None)
    }

    async fn close(&mut self, slot: usize) {
        if let Some(fh) = self.slots[slot].take() {
            let _ = self.vfs.close(fh, ME).await;
            if self.by_path {
                self.vfs.release_path(fh).await;
            } else {
                self.vfs.release(fh).await;
            }
        }
    }

    async fn apply(&mut self, op: &Op) -> Outcome {
        let vfs = self.vfs.clone();
        match *op {
            Op::Create { slot, file } => {
                let path = FILES[file];
                if self.by_path {
                    let (_, o) = kind(vfs.create_path(path, RDWR, IfExists::Open).await)?;
                    self.slots[slot] = Some(o.fh);
                    return Ok(None);
                }
                let (dir, name) = self.split(path).await?;
                // The kernel looks the name up first and opens what exists.
                match vfs.lookup(dir, &name).await {
                    Ok(a) if a.kind == davdrive::vfs::FileKind::Directory => {
                        Err(ErrorKind::IsADirectory)
                    }
                    Ok(a) => {
                        let o = kind(vfs.open(a.ino, RDWR).await)?;
                        self.slots[slot] = Some(o.fh);
                        Ok(None)
                    }
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        let (_, o) = kind(vfs.create(dir, &name, RDWR).await)?;
                        self.slots[slot] = Some(o.fh);
                        Ok(None)
                    }
                    Err(e) => Err(e.kind),
                }
            }
            Op::Open { slot, file, trunc } => {
                let mode = OpenMode {
                    truncate: trunc,
                    ..RDWR
                };
                self.open(slot, FILES[file], mode).await
            }
            Op::Write {
                slot,
                off,
                len,
                seed,
            } => {
                let Some(fh) = self.slots[slot] else {
                    return Ok(None);
                };
                let data = Bytes::from(pattern(len, seed));
                let mut done = 0;
                while done < len {
                    let n = kind(
                        vfs.write(fh, off + done as u64, data.slice(done..), ME)
                            .await,
                    )?;
                    if n == 0 {
                        return Err(ErrorKind::Io);
                    }
                    done += n as usize;
                }
                Ok(None)
            }
            Op::TruncateFh { slot, size } => {
                let Some(fh) = self.slots[slot] else {
                    return Ok(None);
                };
                let ino = self.ino_of(fh).await?;
                let set = davdrive::vfs::SetAttr {
                    size: Some(size),
                    other: false,
                };
                kind(vfs.setattr(ino, Some(fh), set).await).map(|_| None)
            }
            Op::Truncate { file, size } => {
                let (dir, name) = self.split(FILES[file]).await?;
                let a = kind(vfs.lookup(dir, &name).await)?;
                let set = davdrive::vfs::SetAttr {
                    size: Some(size),
                    other: false,
                };
                kind(vfs.setattr(a.ino, None, set).await).map(|_| None)
            }
            Op::Rename { from, to } => self.rename(FILES[from], FILES[to]).await,
            Op::RenameDir { from, to } => self.rename(DIRS[from], DIRS[to]).await,
            Op::Unlink { file } => {
                if self.by_path {
                    return kind(vfs.unlink_path(FILES[file]).await).map(|_| None);
                }
                let (dir, name) = self.split(FILES[file]).await?;
                kind(vfs.unlink(dir, &name).await).map(|_| None)
            }
            Op::Mkdir { dir } => {
                if self.by_path {
                    return kind(vfs.mkdir_path(DIRS[dir]).await).map(|_| None);
                }
                kind(vfs.mkdir(ROOT_INO, DIRS[dir]).await).map(|_| None)
            }
            Op::Rmdir { dir } => {
                if self.by_path {
                    return kind(vfs.rmdir_path(DIRS[dir]).await).map(|_| None);
                }
                kind(vfs.rmdir(ROOT_INO, DIRS[dir]).await).map(|_| None)
            }
            Op::Read { file } => self.read(FILES[file]).await.map(Some),
            Op::Fsync { slot } => {
                let Some(fh) = self.slots[slot] else {
                    return Ok(None);
                };
                kind(vfs.flush(fh).await).map(|_| None)
            }
            Op::Close { slot } => {
                let Some(fh) = self.slots[slot] else {
                    return Ok(None);
                };
                let r = kind(vfs.close(fh, ME).await);
                self.slots[slot] = None;
                if self.by_path {
                    vfs.release_path(fh).await;
                } else {
                    vfs.release(fh).await;
                }
                r.map(|_| None)
            }
        }
    }

    async fn ino_of(&self, fh: u64) -> Result<Ino, ErrorKind> {
        self.vfs.handle_ino(fh).ok_or(ErrorKind::Io)
    }

    async fn rename(&self, a: &str, b: &str) -> Outcome {
        if self.by_path {
            return kind(self.vfs.rename_path(a, b, true).await).map(|_| None);
        }
        let (da, na) = self.split(a).await?;
        let (db, nb) = self.split(b).await?;
        kind(self.vfs.rename(da, &na, db, &nb, false).await).map(|_| None)
    }

    async fn read(&self, path: &str) -> Result<Vec<u8>, ErrorKind> {
        let fh = if self.by_path {
            kind(self.vfs.open_path(path, READ).await)?.1.fh
        } else {
            let (dir, name) = self.split(path).await?;
            let a = kind(self.vfs.lookup(dir, &name).await)?;
            kind(self.vfs.open(a.ino, READ).await)?.fh
        };
        let r = kind(read_all(&self.vfs, fh).await);
        if self.by_path {
            self.vfs.release_path(fh).await;
        } else {
            self.vfs.release(fh).await;
        }
        r
    }
}

/// Every file and directory under `root` on the server's disk, as model paths.
fn server_tree(root: &Path, rel: &str, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
    let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if e.path().is_dir() {
            out.insert(path.clone(), None);
            server_tree(root, &path, out);
        } else {
            out.insert(path, std::fs::read(e.path()).ok());
        }
    }
}

fn short(d: &Option<Vec<u8>>) -> String {
    match d {
        None => "dir".into(),
        Some(d) => format!("{} bytes", d.len()),
    }
}

/// Runs one sequence; `Err` says what disagreed, at which step.
pub fn run_case(setup: Setup, ops: &[Op]) -> Result<(), String> {
    // REFTEST_LOG=davdrive=debug shows what the core did.
    if std::env::var_os("REFTEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("REFTEST_LOG"))
            .with_test_writer()
            .try_init();
    }
    let rt = rt();
    let server = DavServer::start();
    let c = core_with(&server.url(), |cfg| {
        cfg.upload = setup.upload;
        cfg.segment_size = setup.segment_size;
        cfg.async_close = setup.async_close;
    });
    let vfs = c.vfs.clone();
    let r = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(env_u64("REFTEST_CASE_SECS", 120)),
            async {
                vfs.probe().await.map_err(|e| format!("probe: {e}"))?;
                let mut model = Model::default();
                let mut core = Driver {
                    vfs: vfs.clone(),
                    by_path: setup.by_path,
                    slots: [None; SLOTS],
                };
                for (i, op) in ops.iter().enumerate() {
                    let Some(expected) = model.apply(op) else {
                        continue;
                    };
                    tracing::debug!("reftest step {i}: {op:?} ...");
                    let got = core.apply(op).await;
                    tracing::debug!(
                        "reftest step {i}: {op:?} -> {got:?}",
                        got = got.as_ref().map(|o| o.as_ref().map(|d| d.len()))
                    );
                    if got != expected {
                        let show = |o: &Outcome| match o {
                            Ok(Some(d)) => format!("Ok({} bytes)", d.len()),
                            Ok(None) => "Ok".into(),
                            Err(k) => format!("Err({k:?})"),
                        };
                        let first = match (&got, &expected) {
                            (Ok(Some(a)), Ok(Some(b))) => format!(
                                ", first difference at {:?}",
                                a.iter().zip(b.iter()).position(|(x, y)| x != y)
                            ),
                            _ => String::new(),
                        };
                        return Err(format!(
                            "step {i} {op:?}: core {} but model {}{first}",
                            show(&got),
                            show(&expected)
                        ));
                    }
                }
                for slot in 0..SLOTS {
                    core.close(slot).await;
                }
                vfs.wait_for_uploads().await;
                // The core, then the server's disk, against the model.
                let mut want: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
                for (path, e) in &model.names {
                    want.insert(
                        path.clone(),
                        match e {
                            Entry::Dir => None,
                            Entry::File(id) => {
                                Some(model.data.get(id).cloned().unwrap_or_default())
                            }
                        },
                    );
                }
                for (path, w) in &want {
                    match w {
                        None => {
                            let a = core
                                .dir(path)
                                .await
                                .map_err(|k| format!("core: {path}: {k:?}"))?;
                            let _ = a;
                        }
                        Some(data) => {
                            let got = core
                                .read(path)
                                .await
                                .map_err(|k| format!("core: reading {path} at the end: {k:?}"))?;
                            if &got != data {
                                return Err(format!(
                                    "core: {path} has {} bytes, the model {}",
                                    got.len(),
                                    data.len()
                                ));
                            }
                        }
                    }
                }
                for path in FILES.iter().chain(DIRS) {
                    if !want.contains_key(*path) {
                        let (d, n) = path.rsplit_once('/').unwrap_or(("", path));
                        let found = match core.dir(d).await {
                            Ok(dir) => vfs.lookup(dir, n).await.is_ok(),
                            Err(_) => false,
                        };
                        if found {
                            return Err(format!("core: {path} exists, not in the model"));
                        }
                    }
                }
                let mut on_server = BTreeMap::new();
                server_tree(&server.root, "", &mut on_server);
                if on_server != want {
                    let show = |m: &BTreeMap<String, Option<Vec<u8>>>| {
                        m.iter()
                            .map(|(k, v)| format!("{k}: {}", short(v)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    return Err(format!(
                        "server: [{}], model: [{}]",
                        show(&on_server),
                        show(&want)
                    ));
                }
                Ok(())
            },
        )
        .await
        .unwrap_or_else(|_| Err("the case did not finish in time".into()))
    });
    drop(c);
    r
}

/// Removes runs of steps while the case still fails: halves, then quarters, ... then single
/// steps, again until nothing more goes (bounded in time).
fn shrink(setup: Setup, mut ops: Vec<Op>, budget: Duration) -> (Vec<Op>, String) {
    let started = Instant::now();
    let mut last = run_case(setup, &ops).err().unwrap_or_default();
    loop {
        let before = ops.len();
        let mut chunk = (ops.len() / 2).max(1);
        loop {
            let mut i = 0;
            while i < ops.len() && started.elapsed() < budget {
                let mut fewer = ops.clone();
                fewer.drain(i..(i + chunk).min(ops.len()));
                match run_case(setup, &fewer) {
                    Err(e) => {
                        ops = fewer;
                        last = e;
                    }
                    Ok(()) => i += chunk,
                }
            }
            if chunk == 1 {
                break;
            }
            chunk /= 2;
        }
        if ops.len() == before || started.elapsed() >= budget {
            return (ops, last);
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn the_core_agrees_with_the_reference_model() {
    let first = env_u64("REFTEST_SEED", 0);
    let cases = env_u64("REFTEST_CASES", 24);
    let len = env_u64("REFTEST_OPS", 40) as usize;
    for seed in first..first + cases {
        let mut rng = StdRng::seed_from_u64(seed);
        let setup = draw_setup(&mut rng);
        let ops: Vec<Op> = (0..len).map(|_| draw_op(&mut rng)).collect();
        if let Err(e) = run_case(setup, &ops) {
            if std::env::var_os("REFTEST_NOSHRINK").is_some() {
                panic!("reference model: seed {seed} failed: {e}\nsetup: {setup:?}\n{ops:#?}");
            }
            let (small, why) = shrink(setup, ops, Duration::from_secs(120));
            panic!(
                "reference model: seed {seed} failed: {e}\n\
                 reproduce: REFTEST_SEED={seed} REFTEST_CASES=1 cargo test --test it reftest\n\
                 setup: {setup:?}\nshrunk to {} steps ({why}):\n{small:#?}",
                small.len()
            );
        }
    }
}

/// Shrunk failures found by the model, kept as named regression tests.
mod regressions {
    use super::*;

    fn setup(upload: UploadPolicy, segment_size: u64, async_close: bool, by_path: bool) -> Setup {
        Setup {
            by_path,
            upload,
            segment_size,
            async_close,
        }
    }

    /// Runs `ops` under each setup; the first disagreement fails the test.
    fn check(ops: &[Op], setups: impl IntoIterator<Item = Setup>) {
        for s in setups {
            if let Err(e) = run_case(s, ops) {
                panic!("{s:?}: {e}");
            }
        }
    }

    /// Both frontend styles, with one upload configuration.
    fn both_styles(upload: UploadPolicy, segment_size: u64, async_close: bool) -> [Setup; 2] {
        [false, true].map(|by_path| setup(upload, segment_size, async_close, by_path))
    }

    /// A file being written in a directory that is renamed: its data went to the old path,
    /// which no longer existed (the new path kept the empty file created at open).
    #[test]
    fn a_file_written_in_a_renamed_directory_lands_in_the_new_one() {
        let ops = [
            Op::Create { slot: 2, file: 1 },
            Op::Mkdir { dir: 0 },
            Op::Rename { from: 1, to: 4 },
            Op::Write {
                slot: 2,
                off: 0,
                len: 2256,
                seed: 786,
            },
            Op::RenameDir { from: 0, to: 1 },
        ];
        for upload in [UploadPolicy::Stream, UploadPolicy::Spool] {
            check(&ops, both_styles(upload, 64 << 10, false));
        }
    }

    /// ftruncate through a descriptor of a file that a rename replaced while open: ENOENT
    /// (the setattr's answer looked the deleted file up).
    #[test]
    fn ftruncate_of_a_file_replaced_by_a_rename_while_open_succeeds() {
        let ops = [
            Op::Create { slot: 0, file: 1 },
            Op::Create { slot: 1, file: 2 },
            Op::Rename { from: 2, to: 1 },
            Op::TruncateFh {
                slot: 0,
                size: 109970,
            },
        ];
        check(&ops, both_styles(UploadPolicy::Spool, 16 << 20, false));
    }

    /// An existing file opened for writing, renamed while open without a write, then
    /// closed: the close uploaded the session's empty local copy over the moved content.
    #[test]
    fn renaming_a_file_open_for_writing_but_unwritten_keeps_its_content() {
        let ops = [
            Op::Mkdir { dir: 0 },
            Op::Create { slot: 2, file: 3 },
            Op::Truncate {
                file: 3,
                size: 157207,
            },
            Op::Close { slot: 2 },
            Op::Create { slot: 0, file: 3 },
            Op::Rename { from: 3, to: 1 },
        ];
        for upload in [UploadPolicy::Stream, UploadPolicy::Spool] {
            check(&ops, both_styles(upload, 16 << 20, false));
        }
    }

    /// rmdir of a directory holding a new file still open (spooled, not on the server yet)
    /// succeeded, and the file's upload at close then failed.
    #[test]
    fn rmdir_refuses_a_directory_with_a_file_open_for_writing_in_it() {
        let ops = [
            Op::Mkdir { dir: 0 },
            Op::Create { slot: 2, file: 3 },
            Op::Rmdir { dir: 0 },
        ];
        check(&ops, both_styles(UploadPolicy::Spool, 16 << 20, false));
    }

    /// A file deleted while open, a new file of the same name, renamed, renamed back: the
    /// deleted node had moved along with the first rename and took the name, so the second
    /// rename went past the open session, which then uploaded to the old name.
    #[test]
    fn renames_after_an_unlink_while_open_move_the_new_file_only() {
        let ops = [
            Op::Create { slot: 0, file: 1 },
            Op::Unlink { file: 1 },
            Op::Create { slot: 2, file: 1 },
            Op::Rename { from: 1, to: 2 },
            Op::Write {
                slot: 2,
                off: 0,
                len: 4058,
                seed: 828,
            },
            Op::Rename { from: 2, to: 1 },
            Op::Unlink { file: 1 },
        ];
        // The table's order decided which node took the name: try a few times.
        for _ in 0..4 {
            check(&ops, both_styles(UploadPolicy::Stream, 64 << 10, false));
        }
    }

    /// A directory holding a new file open twice, which a rename of another directory onto
    /// it lists again: the second descriptor made the listing drop the file.
    #[test]
    fn a_file_open_twice_survives_a_listing_of_its_directory() {
        let ops = [
            Op::Mkdir { dir: 0 },
            Op::Create { slot: 2, file: 4 },
            Op::Mkdir { dir: 1 },
            Op::Open {
                slot: 1,
                file: 4,
                trunc: false,
            },
            Op::RenameDir { from: 1, to: 0 },
        ];
        check(&ops, both_styles(UploadPolicy::Spool, 16 << 20, false));
    }

    /// An existing file opened with O_TRUNC (a streaming PUT starts), then grown by
    /// ftruncate before any write: the given-up empty PUT changed the file's tag, and the
    /// upload at close failed with 412.
    #[test]
    fn growing_a_truncated_existing_file_by_ftruncate_keeps_the_size() {
        let ops = [
            Op::Create { slot: 2, file: 1 },
            Op::Close { slot: 2 },
            Op::Open {
                slot: 1,
                file: 1,
                trunc: true,
            },
            Op::TruncateFh {
                slot: 1,
                size: 186557,
            },
        ];
        check(
            &ops,
            [false, true].map(|a| setup(UploadPolicy::Auto, 16 << 20, a, false)),
        );
    }

    /// A directory renamed while one file in it is open through two descriptors with another
    /// file's descriptor between them: the session was held twice and the rename hung.
    #[test]
    fn renaming_a_directory_with_a_file_open_twice_does_not_hang() {
        let ops = [
            Op::Mkdir { dir: 0 },
            Op::Create { slot: 0, file: 3 },
            Op::Create { slot: 1, file: 4 },
            Op::Open {
                slot: 2,
                file: 3,
                trunc: false,
            },
            Op::Write {
                slot: 2,
                off: 0,
                len: 1802,
                seed: 3,
            },
            Op::RenameDir { from: 0, to: 1 },
        ];
        check(&ops, both_styles(UploadPolicy::Auto, 16 << 20, false));
    }

    /// An existing file open for writing (its content not fetched yet) is deleted, then
    /// written beyond its end: the write needed the old content and asked the server for
    /// a file that was gone (ENOENT).
    #[test]
    fn writing_a_file_deleted_while_open_keeps_its_old_content() {
        let ops = [
            Op::Mkdir { dir: 0 },
            Op::Create { slot: 2, file: 4 },
            Op::Write {
                slot: 2,
                off: 0,
                len: 734,
                seed: 966,
            },
            Op::Close { slot: 2 },
            Op::Create { slot: 0, file: 4 },
            Op::Unlink { file: 4 },
            Op::Write {
                slot: 0,
                off: 95181,
                len: 2927,
                seed: 446,
            },
        ];
        check(&ops, both_styles(UploadPolicy::Auto, 64 << 10, false));
    }

    /// A file uploaded in segments, deleted while open: its hidden temporary upload stayed
    /// until the last close, and `rmdir` of the now empty folder said ENOTEMPTY.
    #[test]
    fn rmdir_after_deleting_a_file_uploading_in_segments_succeeds() {
        let ops = [
            Op::Mkdir { dir: 0 },
            Op::Create { slot: 2, file: 4 },
            Op::Write {
                slot: 2,
                off: 0,
                len: 259177,
                seed: 228,
            },
            Op::Unlink { file: 4 },
            Op::Rmdir { dir: 0 },
        ];
        check(
            &ops,
            [false, true].map(|a| setup(UploadPolicy::Stream, 64 << 10, a, true)),
        );
    }

    /// ftruncate that grows a new file being streamed, then close.
    #[test]
    fn growing_a_streamed_new_file_by_ftruncate_keeps_the_size() {
        let ops = [
            Op::Create { slot: 2, file: 0 },
            Op::TruncateFh {
                slot: 2,
                size: 50619,
            },
        ];
        check(
            &ops,
            [
                UploadPolicy::Auto,
                UploadPolicy::Stream,
                UploadPolicy::Spool,
            ]
            .map(|u| setup(u, 16 << 20, false, false)),
        );
    }
}
