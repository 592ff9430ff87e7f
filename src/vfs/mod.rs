//! The platform-neutral filesystem core. Knows nothing about FUSE or WinFsp.
//!
//! The core answers questions in terms of inodes and local names ([`Vfs::lookup`],
//! [`Vfs::getattr`], [`Vfs::opendir`], [`Vfs::read`], ...) and of whole paths
//! ([`Vfs::resolve`], for WinFsp, which opens by path). Every answer comes from the
//! directory cache when it is fresh; otherwise from ONE `PROPFIND Depth: 1` of the parent.
//!
//! Why the parent, even for a single name: a listing is the only trustworthy source on some
//! servers (Orthanc answers 207 for paths that do not exist, and answers a PROPFIND on a file
//! with its parent first), and one listing serves every later lookup in that directory, so
//! `ls -l` costs one request and `stat` of every listed entry costs none. A name absent from
//! a fresh listing is "not found" without a request: that is the negative cache.
//!
//! Freshness: listings and metadata are trusted for `dir_ttl` (tokio clock). The kernel is
//! given `kernel_ttl` for entries and attributes, and asks us again after it; we answer
//! from our cache until `dir_ttl` expires.
//!
//! Concurrency: the inode table is one `std::sync::Mutex`, never held across an await.
//! Listings of the same directory are single-flight: concurrent callers wait for one request.
//! Lock order: written and checked in [`lock`] (a listing lock, then the table, then the
//! handles; no ranked lock across an await).

pub mod activity;
mod behind;
pub mod cache_dir;
mod copies;
mod data_cache;
mod dir;
mod fileio;
mod inode;
pub mod local;
pub mod lock;
mod locks;
mod mutate;
pub mod names;
mod path;
mod read;
pub mod recovery;
mod watch;
pub mod windows;
mod write;
#[cfg(target_os = "linux")]
pub mod zerocopy;

pub mod error;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

pub use crate::dav::ErrorKind;
use crate::dav::{DavClient, DavPath, Depth};
use cache_dir::CacheDir;
use dir::DirStream;
pub use error::{VfsError, VfsResult};
use inode::{FastMap, InodeTable, Listing, Meta};
pub use inode::{FileKind, Ino, ROOT_INO};
use lock::{Rank, Ranked, RankedGuard};
pub use locks::LOCK_TIMEOUT;
pub use mutate::SetAttr;
pub use names::NamePolicy;
pub use path::{IfExists, components};
use read::ReadHandle;
pub use read::{ReadData, ReadTuning};
pub use watch::{Invalidation, Invalidator};
pub use write::{Caller, ProcessOf};
use write::{WriteHandle, segments};

/// Settings of the core, with documented defaults (docs/CONFIGURATION.md).
#[derive(Debug, Clone)]
pub struct VfsConfig {
    /// How long a directory listing and the metadata in it are trusted. Default 30 s.
    pub dir_ttl: Duration,
    /// Entry and attribute TTL handed to the kernel. Default 1 s.
    pub kernel_ttl: Duration,
    pub read_only: bool,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits of files and directories (before the read-only mask).
    pub file_mode: u16,
    pub dir_mode: u16,
    pub names: NamePolicy,
    pub read: ReadTuning,
    /// This mount's cache directory (journals, spool files, recovery folder).
    pub cache_dir: PathBuf,
    pub upload: UploadPolicy,
    /// Keep OS litter (.DS_Store, ._*, Thumbs.db, desktop.ini) local instead of uploading.
    pub keep_os_litter_local: bool,
    /// Let file managers make their trash folders (`.Trash-UID`) at the mount's root on the
    /// server. Off by default: a placeholder file of that name, kept on this computer,
    /// tells GIO and KIO that the drive has no trash, so they delete for good (after asking)
    /// instead of leaving trash folders on the server for every other client to see.
    pub server_trash: bool,
    /// Read-only handles bypass the kernel's page cache (`--direct-io`). Default off.
    pub direct_reads: bool,
    /// Files larger than this are uploaded in resumable segments of this size where the
    /// server takes partial PUTs (see `segments`); 0: never.
    pub segment_size: u64,
    /// How the platform opens a file for writes around the page cache (Linux: `O_DIRECT`),
    /// for the journals of segmented uploads; `None`: they go through it.
    pub open_direct: Option<segments::OpenDirect>,
    /// How the platform finds a thread's process (Linux: `/proc`), so that a child closing
    /// an inherited descriptor does not end its parent's upload; `None`: only lock owners
    /// tell callers apart.
    pub process_of: Option<ProcessOf>,
    /// close() of a written file returns once the data is in the cache directory, and the
    /// upload goes on behind it (`--async-close`); fsync() still waits. Default off.
    pub async_close: bool,
    /// How long an upload keeps trying while the server cannot be reached, before the close
    /// fails and the data is kept for an automatic upload (`--upload-retry-time`). Default
    /// 60 s.
    pub upload_retry: Duration,
    /// When a folder is opened, the listings of up to this many of its subfolders are
    /// fetched ahead in the background (`--prefetch-listings`; 0: never). Default 64.
    pub prefetch_listings: usize,
    /// Bytes of files read are kept on local disk for later reads of the same version (see
    /// `data_cache`). Default on.
    pub store_reads: bool,
    /// How often folders in use and open files are revalidated against the server, so that
    /// changes made there by others show without waiting for `dir_ttl` (`--revalidate`; 0:
    /// never). Default 2 s. See `watch`.
    pub revalidate: Duration,
    /// How long after its last use (opened, or a name looked up in it) a folder is still
    /// revalidated (`--revalidate-for`). Default 120 s.
    pub revalidate_for: Duration,
    /// Lock files on the server while they are open for writing (`--lock`). Default off.
    pub lock_files: bool,
}

/// Listings of subfolders fetched ahead at once (see `Vfs::prefetch_subfolders`).
const PREFETCH_PARALLEL: usize = 8;

/// The inode table is not swept below this many nodes (see `InodeTable::sweep`).
const SWEEP_FROM: usize = 4096;

/// How new files are uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadPolicy {
    /// Stream where a probe showed the server stores chunked bodies correctly, else spool.
    Auto,
    /// Always stream (chunked transfer encoding).
    Stream,
    /// Always spool locally and PUT with Content-Length on close.
    Spool,
}

impl Default for VfsConfig {
    fn default() -> Self {
        VfsConfig {
            dir_ttl: Duration::from_secs(30),
            kernel_ttl: Duration::from_secs(1),
            read_only: false,
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            names: NamePolicy::native(),
            read: ReadTuning::default(),
            cache_dir: cache_dir::default_base().join("default"),
            upload: UploadPolicy::Auto,
            keep_os_litter_local: true,
            server_trash: false,
            direct_reads: false,
            segment_size: 16 << 20,
            open_direct: None,
            process_of: None,
            async_close: false,
            prefetch_listings: 64,
            store_reads: true,
            revalidate: Duration::from_secs(2),
            revalidate_for: Duration::from_secs(120),
            lock_files: false,
            upload_retry: Duration::from_secs(60),
        }
    }
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenMode {
    /// The handle may read (a write-only handle never does).
    pub read: bool,
    pub write: bool,
    pub truncate: bool,
    pub append: bool,
}

enum Handle {
    Read(Arc<ReadHandle>),
    Write(Arc<WriteHandle>),
    /// A read-only descriptor of a file being written: it reads the session's bytes (what was
    /// written so far), and its close uploads nothing. The session ends with its last writer;
    /// the reader then goes on reading the session's local copy.
    Reading(Arc<WriteHandle>),
}

impl Clone for Handle {
    fn clone(&self) -> Self {
        match self {
            Handle::Read(h) => Handle::Read(h.clone()),
            Handle::Write(h) => Handle::Write(h.clone()),
            Handle::Reading(h) => Handle::Reading(h.clone()),
        }
    }
}

/// Attributes of a node, in neutral form; frontends convert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    pub size: u64,
    /// Last change of the content (`getlastmodified`, or the last write of an open session).
    pub mtime: SystemTime,
    /// Last change of the content or the metadata. A WebDAV server keeps no separate change
    /// time, so this is `mtime`; kept apart so that frontends never use the creation time.
    pub ctime: SystemTime,
    /// Creation time (`creationdate`), or `mtime` where the server gives none.
    pub crtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

impl Attr {
    /// Whether nothing may write it (a read-only mount): Windows' read-only attribute.
    pub fn read_only(&self) -> bool {
        self.perm & 0o222 == 0
    }

    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Directory
    }
}

/// One entry of a directory snapshot.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}

/// Filesystem statistics for statfs / GetVolumeInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

/// The result of opening a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// The content did not change since the last open: the kernel may keep its page cache.
    pub keep_cache: bool,
    /// The kernel should pass this handle's reads and writes straight through rather than
    /// through its page cache. Set for write-only handles (`cp`, `dd`, file managers copying
    /// in): nothing ever reads their data back through the handle, so the page cache would
    /// only cost a copy of every byte and evict useful pages (copying 1 GiB in through it
    /// took about 15 % more CPU). Handles that read keep the page cache, unless read-only
    /// with `VfsConfig::direct_reads`. The adapter applies it only where the kernel keeps
    /// direct I/O coherent with other descriptors' cached pages (see `fs::fuse`).
    pub direct: bool,
}

impl Opened {
    pub fn new(fh: u64, keep_cache: bool, mode: OpenMode) -> Self {
        Opened {
            fh,
            keep_cache,
            direct: mode.write && !mode.read,
        }
    }
}

/// Reported free space when the server reports no quota: 1 PiB. File managers refuse to
/// copy onto a volume that reports 0 free bytes, and a finite number keeps `df` readable.
const UNKNOWN_SPACE: u64 = 1 << 50;
const BLOCK: u64 = 4096;

/// What a listing in progress has gathered.
struct Gathered {
    now: Instant,
    /// The directory's own entry.
    me: Option<Meta>,
    quota: Option<(Option<u64>, Option<u64>)>,
    not_a_directory: bool,
    metas: Vec<(Ino, Meta)>,
    order: Vec<(String, Ino)>,
    by_name: FastMap<String, Ino>,
    hidden: Vec<(DavPath, Option<SystemTime>)>,
}

impl Gathered {
    fn new(now: Instant) -> Self {
        Gathered {
            now,
            me: None,
            quota: None,
            not_a_directory: false,
            metas: Vec::new(),
            order: Vec::new(),
            by_name: FastMap::default(),
            hidden: Vec::new(),
        }
    }
}

/// The filesystem core of one mount.
pub struct Vfs {
    client: DavClient,
    cfg: VfsConfig,
    table: Ranked<InodeTable>,
    listing_locks: Ranked<HashMap<Ino, Arc<tokio::sync::Mutex<()>>>>,
    /// Open files. Shared with the task that lets idle reads go (`watch_idle_reads`).
    handles: Arc<Ranked<HashMap<u64, Handle>>>,
    /// Whether that task runs.
    idle_watch: AtomicBool,
    /// Open directories: the directory and its entries as listed.
    dir_handles: Ranked<HashMap<u64, (Ino, Arc<DirStream>)>>,
    /// The inode table is swept (see `InodeTable::sweep`) when it grows past this.
    sweep_at: std::sync::atomic::AtomicUsize,
    next_fh: AtomicU64,
    quota: Ranked<(Option<u64>, Option<u64>)>,
    mounted_at: SystemTime,
    cache: CacheDir,
    /// Whether chunked uploads are safe on this server: (verdict, probes tried).
    stream_ok: tokio::sync::Mutex<(Option<bool>, u32)>,
    /// Segmented uploads of large files, and whether this server takes them.
    segments: Arc<segments::SegmentPolicy>,
    /// Directories where the server refused a write (403): later writes fail at once.
    forbidden: Ranked<HashSet<Ino>>,
    /// Directories where a write succeeded (or that we created): no check before creating.
    writable: Ranked<HashSet<Ino>>,
    /// Local-only files (OS litter).
    local: local::LocalFiles,
    /// Held for the mount's lifetime: `lock` by one mount at a time, `users` (shared) by
    /// every mount of the cache directory (see `Vfs::new`).
    _cache_lock: (Option<std::fs::File>, Option<std::fs::File>),
    /// Uploads that have not finished (flush or release in progress), for unmount.
    uploads: tokio::sync::watch::Sender<usize>,
    /// What the server is still to do after a call returned (`async_close`): uploads behind
    /// closes, folders being made, files renamed or deleted. id → what, where. Each waits for
    /// the earlier ones touching its paths; calls that need the server's state wait for what
    /// concerns them (see `behind`).
    settling: tokio::sync::watch::Sender<HashMap<u64, behind::Behind>>,
    next_settling: AtomicU64,
    /// Closes whose uploads have not finished (`QUEUED_UPLOADS`): a close beyond them waits.
    behind_close: Arc<tokio::sync::Semaphore>,
    /// Bytes of those uploads, in units of `QUEUE_UNIT` (`QUEUED_BYTES` in all).
    behind_bytes: Arc<tokio::sync::Semaphore>,
    /// Uploads behind closes that run at once (`ASYNC_UPLOADS`).
    uploading_now: Arc<tokio::sync::Semaphore>,
    /// Uploads that start before their close (streaming) with `async_close` (`ASYNC_UPLOADS`,
    /// see `Vfs::stream_slot`).
    streams_now: Arc<tokio::sync::Semaphore>,
    /// Handles opened by path and the node each holds a reference to (see `path`).
    /// Files deleted (or replaced by a rename) while descriptors still read them: moved to
    /// a hidden name on the server, which the last of those descriptors deletes at close.
    hidden: Ranked<HashMap<Ino, DavPath>>,
    /// The mount is on its way out: uploads no longer wait for an unreachable server (their
    /// data is kept, and the next mount uploads it once the server answers).
    stopping: Arc<AtomicBool>,
    path_refs: Ranked<HashMap<u64, (Ino, FileKind)>>,
    /// Uploads going on after their close, for `davdrive status` (see `activity`).
    transfers: Ranked<HashMap<u64, activity::Transfer>>,
    /// Files this mount just wrote, read back from their local copy (see `copies`).
    copies: Ranked<copies::Copies>,
    /// Bytes of files read, kept for later reads of the same version (see `data_cache`).
    stored_reads: Ranked<data_cache::DataCache>,
    next_transfer: AtomicU64,
    /// Failed uploads nobody could be told about (see `notices`).
    notices: tokio::sync::broadcast::Sender<Notice>,
    /// How invalidations reach the kernel, set by the frontend (see `watch`).
    invalidator: std::sync::OnceLock<Invalidator>,
    /// Server locks of write sessions: the path locked and the token (see `locks`).
    held_locks: Ranked<HashMap<Ino, (DavPath, String)>>,
    /// The server refused a LOCK as a method it does not have: no more are tried.
    no_locks: AtomicBool,
    /// The server removed a folder made here (a drop box): see `make_again_if_vanished`.
    folders_vanish: AtomicBool,
}

impl Vfs {
    /// Whether `name` at the root is the local placeholder that stands for "no trash here".
    fn is_trash_placeholder(&self, name: &str) -> bool {
        !self.cfg.server_trash && name == trash_name(self.cfg.uid)
    }
}

/// What `access()` asks about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccessWanted {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

/// An upload that failed where no program could be told (see [`Vfs::notices`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The file, `/`-separated from the mount's root.
    pub path: String,
    /// What went wrong.
    pub error: String,
}

/// The trash folder freedesktop.org file managers make at a mount's root for `uid`.
pub fn trash_name(uid: u32) -> String {
    format!(".Trash-{uid}")
}

/// Whether `name` (at a mount's root) is a freedesktop.org trash folder: `.Trash` (shared,
/// with a folder per user) or `.Trash-UID`.
pub fn is_trash_name(name: &str) -> bool {
    name == ".Trash"
        || name
            .strip_prefix(".Trash-")
            .is_some_and(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_digit()))
}

impl std::fmt::Debug for Vfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vfs")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Vfs {
    /// Creates the core; opens (creating) the cache directory.
    pub fn new(client: DavClient, cfg: VfsConfig) -> VfsResult<Arc<Self>> {
        let url = crate::dav::client::redact_url(client.root().url());
        let cache_err = |e: std::io::Error| {
            VfsError::new(
                ErrorKind::Io,
                format!(
                    "cannot use the cache directory {}: {e}",
                    cfg.cache_dir.display()
                ),
            )
        };
        let cache = CacheDir::open(cfg.cache_dir.clone(), &url).map_err(cache_err)?;
        // Only the sole davdrive using this cache directory may treat leftovers as orphans:
        // a second mount of the same URL must not take the first one's journals. Every mount
        // holds `users` shared for its lifetime; the one holding `lock` (for its lifetime,
        // so one at a time) checks that nobody else holds `users`, and holds it exclusively
        // while it takes over the leftovers. Before, with `lock` alone, a mount started
        // while a second one still ran, after the first stopped, took the second one's
        // journals (since journals are reused, two uploads could then share one file).
        let open_lock = |name: &str| {
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create(true).truncate(false);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            crate::sys::files::no_follow(&mut o);
            o.open(cfg.cache_dir.join(name)).ok()
        };
        let lock = open_lock("lock");
        let users = open_lock("users");
        let sole_user = lock.as_ref().is_some_and(|f| f.try_lock().is_ok())
            && users.as_ref().is_some_and(|f| f.try_lock().is_ok());
        let leftovers = if sole_user {
            cache.recover_leftovers()
        } else {
            Vec::new()
        };
        for kept in leftovers {
            tracing::warn!(
                "an earlier davdrive stopped before finishing an upload; its data is kept in \
                 {} (`davdrive status` says where it was going; `davdrive recover {url}` \
                 uploads it if the file did not change on the server since)",
                kept.display()
            );
        }
        // Local-only files are per process: a second mount of the same URL (same cache
        // directory) must not take or wipe the first one's. The sole user clears what
        // mounts that stopped left behind.
        let locals = cfg.cache_dir.join("local");
        if sole_user {
            let _ = std::fs::remove_dir_all(&locals);
        }
        if let Some(u) = &users {
            // Only the holder of `lock` ever holds `users` exclusively, and only until here.
            if sole_user {
                let _ = u.unlock();
            }
            let _ = u.lock_shared();
        }
        let local = local::LocalFiles::new(locals.join(std::process::id().to_string()))
            .map_err(cache_err)?;
        if !cfg.server_trash
            && let Ok(p) = DavPath::root().join(&trash_name(cfg.uid))
        {
            // Not a directory: GIO and KIO see that the drive has no trash of their kind.
            local.create(&p).map_err(cache_err)?;
        }
        let segments = Arc::new(
            segments::SegmentPolicy::new(cfg.segment_size).with_open_direct(cfg.open_direct),
        );
        Ok(Arc::new(Vfs {
            client,
            cfg,
            local,
            _cache_lock: (lock, users),
            table: Ranked::new(Rank::Table, InodeTable::new()),
            listing_locks: Ranked::new(Rank::ListingLocks, HashMap::new()),
            handles: Arc::new(Ranked::new(Rank::Handles, HashMap::new())),
            idle_watch: AtomicBool::new(false),
            dir_handles: Ranked::new(Rank::DirHandles, HashMap::new()),
            sweep_at: std::sync::atomic::AtomicUsize::new(SWEEP_FROM),
            next_fh: AtomicU64::new(1),
            quota: Ranked::new(Rank::Quota, (None, None)),
            mounted_at: SystemTime::now(),
            cache,
            stream_ok: tokio::sync::Mutex::new((None, 0)),
            segments,
            forbidden: Ranked::new(Rank::WriteVerdicts, HashSet::new()),
            writable: Ranked::new(Rank::WriteVerdicts, HashSet::new()),
            uploads: tokio::sync::watch::channel(0).0,
            settling: tokio::sync::watch::channel(HashMap::new()).0,
            next_settling: AtomicU64::new(1),
            behind_close: Arc::new(tokio::sync::Semaphore::new(behind::QUEUED_UPLOADS)),
            behind_bytes: Arc::new(tokio::sync::Semaphore::new(behind::QUEUED_UNITS)),
            uploading_now: Arc::new(tokio::sync::Semaphore::new(behind::ASYNC_UPLOADS)),
            streams_now: Arc::new(tokio::sync::Semaphore::new(behind::ASYNC_UPLOADS)),
            path_refs: Ranked::new(Rank::PathRefs, HashMap::new()),
            stopping: Arc::default(),
            hidden: Ranked::new(Rank::Hidden, HashMap::new()),
            transfers: Ranked::new(Rank::Transfers, HashMap::new()),
            copies: Ranked::new(Rank::Copies, copies::Copies::default()),
            stored_reads: Ranked::new(Rank::StoredReads, data_cache::DataCache::default()),
            next_transfer: AtomicU64::new(1),
            notices: tokio::sync::broadcast::channel(64).0,
            invalidator: std::sync::OnceLock::new(),
            held_locks: Ranked::new(Rank::ServerLocks, HashMap::new()),
            no_locks: AtomicBool::new(false),
            folders_vanish: AtomicBool::new(false),
        }))
    }

    /// The recovery folder of this mount.
    pub fn recovery_dir(&self) -> PathBuf {
        self.cache.recovery_dir()
    }

    pub fn config(&self) -> &VfsConfig {
        &self.cfg
    }

    pub fn client(&self) -> &DavClient {
        &self.client
    }

    fn table(&self) -> RankedGuard<'_, InodeTable> {
        // A panic while holding the table cannot leave it half-updated in a way that matters
        // more than stopping every later operation would.
        self.table.lock()
    }

    fn fresh(&self, fetched: Instant) -> bool {
        Instant::now().saturating_duration_since(fetched) < self.cfg.dir_ttl
    }

    /// What to show for `ino`, whose metadata is `meta` (from a listing or the table): a file
    /// whose open write session holds data the server does not have yet shows its own
    /// metadata with the session's size and time of change, since the server's copy is older
    /// until the upload's answer replaces it. So does a file whose upload goes on behind a
    /// close (`async_close`): the table keeps what was written for it (see `listing_into`).
    fn shown(&self, t: &InodeTable, ino: Ino, meta: &Meta) -> Attr {
        let Some(n) = t.get(ino) else {
            return self.attr_of(ino, meta);
        };
        let Some(w) = self.dirty_session(n.writer) else {
            let local = n.meta.as_ref().filter(|_| self.is_uploading(ino));
            return self.attr_of(ino, local.unwrap_or(meta));
        };
        let mut a = self.attr_of(ino, n.meta.as_ref().unwrap_or(meta));
        a.size = w.size_now();
        if let Some(changed) = w.modified_now() {
            a.mtime = changed;
            a.ctime = changed;
            a.crtime = a.crtime.min(changed);
        }
        a
    }

    /// The write session `writer` (a node's), if it holds data the server does not have yet.
    /// Called with the table held: the order is the table, then the handles (no code holds
    /// the handles while taking the table).
    fn dirty_session(&self, writer: Option<u64>) -> Option<Arc<WriteHandle>> {
        let fh = writer?;
        match self.handles.lock().get(&fh) {
            Some(Handle::Write(w)) if w.dirty_now() => Some(w.clone()),
            _ => None,
        }
    }

    fn attr_of(&self, ino: Ino, meta: &Meta) -> Attr {
        let ro = if self.cfg.read_only { 0o222 } else { 0 };
        let perm = match meta.kind {
            FileKind::File => self.cfg.file_mode,
            FileKind::Directory => self.cfg.dir_mode,
        } & !ro;
        Attr {
            ino,
            kind: meta.kind,
            size: meta.size,
            mtime: meta.mtime,
            ctime: meta.mtime,
            crtime: meta.created,
            perm,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
        }
    }

    /// Checks that the mount point is a WebDAV collection we can list: OPTIONS, then
    /// PROPFIND Depth 0 of the root. Used before mounting so that a wrong URL fails at once.
    pub async fn probe(&self) -> VfsResult<()> {
        let caps = self.client.options().await?;
        if !caps.is_webdav() {
            return Err(VfsError::new(
                ErrorKind::Protocol,
                "the server answered OPTIONS without a DAV header: this URL is not WebDAV",
            ));
        }
        self.refresh_root().await?;
        self.client.enable_reconnect_retries();
        Ok(())
    }

    async fn refresh_root(&self) -> VfsResult<Meta> {
        let ms = self
            .client
            .propfind(&DavPath::root(), Depth::Zero, true)
            .await?;
        let r = ms.get(&DavPath::root()).ok_or_else(|| {
            VfsError::new(
                ErrorKind::Protocol,
                "the server's PROPFIND answer does not describe the mounted URL itself",
            )
        })?;
        if !r.is_collection {
            return Err(VfsError::new(
                ErrorKind::NotADirectory,
                "the mounted URL is a file, not a collection",
            ));
        }
        self.note_quota(r.quota_available, r.quota_used);
        let meta = Meta::from_resource(r, Instant::now(), self.mounted_at);
        if let Some(n) = self.table().get_mut(ROOT_INO) {
            n.meta = Some(meta.clone());
        }
        Ok(meta)
    }

    fn note_quota(&self, avail: Option<u64>, used: Option<u64>) {
        if avail.is_some() || used.is_some() {
            let mut q = self.quota.lock();
            *q = (avail, used);
        }
    }

    /// The single-flight lock of a directory's listing.
    fn listing_lock(&self, dir: Ino) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.listing_locks.lock();
        if locks.len() > 4096 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(dir).or_default().clone()
    }

    /// A fresh listing of directory `dir`, from the cache or one PROPFIND Depth 1.
    async fn listing(&self, dir: Ino) -> VfsResult<Arc<Listing>> {
        self.listing_into(dir, None).await
    }

    /// As [`Vfs::listing`]; when `sink` is given, every entry also goes there as soon as it
    /// is known (while the PROPFIND still downloads), and the sink is told when the server
    /// has answered. The cache, the inode metadata and lookups see the listing only once it
    /// is complete.
    async fn listing_into(&self, dir: Ino, sink: Option<&DirStream>) -> VfsResult<Arc<Listing>> {
        if let Some(l) = self.cached_listing(dir)? {
            return Ok(self.hand_out(l, sink));
        }
        self.failed_listing(dir)?;
        let lock = self.listing_lock(dir);
        lock::before_await();
        let _guard = lock.lock().await;
        if let Some(l) = self.cached_listing(dir)? {
            return Ok(self.hand_out(l, sink));
        }
        self.failed_listing(dir)?;
        // A listing fetched while we changed the directory (create, unlink, rename) may
        // predate the change: fetch again, once.
        let mut attempt = 0;
        // Inodes numbered for entries of a first attempt, which the second may not list.
        let mut numbered: Vec<Ino> = Vec::new();
        let mut server_date: Option<SystemTime>;
        let (path, acc, mut t) = loop {
            attempt += 1;
            let (path, changes) = {
                let t = self.table();
                let n = t
                    .get(dir)
                    .ok_or_else(|| VfsError::not_found(format!("inode {dir}")))?;
                (n.path.clone(), n.changes)
            };
            if attempt > 1
                && let Some(s) = sink
            {
                s.fetching_again();
            }
            // A folder still being made is asked for once it exists, and names changing in
            // it once they changed (`behind`).
            self.settle_listing(&path).await;
            let mut acc = Gathered::new(Instant::now());
            let fetched = self
                .client
                .propfind_each(&path, Depth::One, true, |r| {
                    self.gather(dir, &path, r, &mut acc, sink);
                })
                .await;
            let skipped = match fetched {
                Ok((s, date)) => {
                    server_date = date;
                    s
                }
                Err(e) => {
                    let err = VfsError::from(e);
                    let mut t = self.table();
                    // Entries numbered for this listing that nothing else knows yet.
                    for (_, ino) in &acc.order {
                        if t.get(*ino).is_some_and(|n| n.meta.is_none()) {
                            t.mark_gone(*ino);
                        }
                    }
                    // A folder made here that the server dropped lists as empty.
                    if err.kind == ErrorKind::NotFound
                        && let Some(n) = t.get_mut(dir).filter(|n| n.made_here && !n.gone)
                    {
                        n.vanished = true;
                        let empty = Arc::new(Listing {
                            fetched: Instant::now(),
                            order: Vec::new(),
                            by_name: Default::default(),
                            hidden: Vec::new(),
                            settled: false,
                        });
                        n.listing = Some(empty.clone());
                        drop(t);
                        return Ok(self.hand_out(empty, sink));
                    }
                    if err.kind == ErrorKind::NotFound {
                        t.mark_gone(dir);
                    }
                    if err.kind == ErrorKind::Protocol
                        && let Some(n) = t.get_mut(dir)
                    {
                        // The same answer would come again: not downloaded on every readdir.
                        tracing::warn!(
                            "cannot list {path}: {err}; asked again in {} s",
                            self.listing_retry().as_secs()
                        );
                        n.listing_failed = Some((Instant::now(), err.clone()));
                    }
                    return Err(err);
                }
            };
            for skipped in &skipped {
                tracing::warn!(dir = %path, "skipping an entry: {skipped}");
            }
            if acc.not_a_directory {
                return Err(VfsError::new(
                    ErrorKind::NotADirectory,
                    format!("{path}: not a directory"),
                ));
            }
            if let Some((avail, used)) = acc.quota.filter(|_| dir == ROOT_INO) {
                self.note_quota(avail, used);
            }
            let t = self.table();
            let unchanged = t.get(dir).is_some_and(|n| n.changes == changes);
            if unchanged || attempt >= 2 {
                break (path, acc, t);
            }
            numbered.extend(acc.order.iter().map(|(_, ino)| *ino));
        };
        let now = acc.now;
        let settled = acc.me.as_ref().is_some_and(|me| {
            me.etag.is_some()
                || (me.server_mtime
                    && server_date
                        .is_some_and(|d| d >= me.mtime + std::time::Duration::from_secs(1)))
        });
        if let Some(meta) = acc.me
            && let Some(n) = t.get_mut(dir)
        {
            n.meta = Some(meta);
        }
        // A file being written (a session with data not uploaded yet, or an upload going on
        // behind a close) keeps what was written: the server's copy is older until the
        // upload's answer replaces it. So does metadata we learned after this listing was
        // asked for (an upload's answer that came in meanwhile).
        let uploading = self.uploading();
        for (ino, meta) in acc.metas {
            if let Some(n) = t.get_mut(ino) {
                let writing = uploading.contains(&ino) || self.dirty_session(n.writer).is_some();
                match &mut n.meta {
                    Some(m) if writing => m.fetched = m.fetched.max(meta.fetched),
                    Some(m) if m.fetched > meta.fetched => {}
                    _ => n.meta = Some(meta),
                }
            }
        }
        let (mut order, mut by_name, hidden) = (acc.order, acc.by_name, acc.hidden);
        let old: Vec<(String, Ino)> = t
            .get(dir)
            .and_then(|n| n.listing.as_ref())
            .map(|l| l.order.clone())
            .unwrap_or_default();
        // Local-only files of this directory are part of its listing.
        let mut late = Vec::new();
        for (name, lpath, e) in self.local.children(&path) {
            if by_name.contains_key(&name) {
                continue;
            }
            let ino = t.ensure(dir, &lpath);
            let meta = Meta {
                kind: FileKind::File,
                size: e.size,
                mtime: e.mtime,
                created: e.mtime,
                etag: None,
                server_mtime: false,
                fetched: now,
            };
            // The trash placeholder answers lookups (GIO and KIO look it up) but is not
            // shown: `ls -a` and crawls see the server's names only.
            let unlisted = dir == ROOT_INO && self.is_trash_placeholder(&name);
            if !unlisted {
                late.push(DirEntry {
                    name: name.clone(),
                    attr: self.shown(&t, ino, &meta),
                });
            }
            if let Some(n) = t.get_mut(ino) {
                n.meta = Some(meta);
            }
            by_name.insert(name.clone(), ino);
            if !unlisted {
                order.push((name, ino));
            }
        }
        let current: HashSet<Ino> = by_name.values().copied().collect();
        // Files open for writing here are kept too when the old listing was dropped before
        // this one was fetched (rmdir, a rename onto this directory): a new file may not be
        // on the server until its close (found by the reference model: after a refused
        // rmdir, the file being written could no longer be found).
        let mut old = old;
        let mut known: HashSet<Ino> = old.iter().map(|(_, i)| *i).collect();
        let open_here: Vec<Ino> = self
            .handles
            .lock()
            .values()
            .filter_map(|h| match h {
                Handle::Write(w) if !w.is_unlinked() => Some(w.ino()),
                _ => None,
            })
            .collect();
        for ino in open_here {
            if let Some(n) = t.get(ino)
                && n.parent == dir
                && !n.gone
                && n.path.is_child_of(&path)
                && let Some(name) = n.path.name()
                && known.insert(ino)
            {
                // Once, also when several descriptors share the session.
                old.push((self.cfg.names.to_local(name), ino));
            }
        }
        for (name, ino) in old {
            if current.contains(&ino) {
                continue;
            }
            // A file still being written, or uploaded behind its close, may not be on the
            // server yet: it stays listed. So does a folder made here that the server
            // dropped (a drop box removes empty folders): made again when a file is written
            // into it (`make_again_if_vanished`).
            let writing = t
                .get(ino)
                .is_some_and(|n| (n.writer.is_some() || uploading.contains(&ino)) && !n.gone);
            let dropped_folder = t.get(ino).is_some_and(|n| {
                n.made_here
                    && !n.gone
                    && n.meta
                        .as_ref()
                        .is_some_and(|m| m.kind == FileKind::Directory)
            });
            if dropped_folder && let Some(n) = t.get_mut(ino) {
                n.vanished = true;
                if !self.folders_vanish.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "the server removes folders made here (a drop box?): they are kept, \
                         and made again when a file is written into them"
                    );
                }
            }
            if (writing || dropped_folder) && !by_name.contains_key(&name) {
                if let Some(m) = t.get(ino).and_then(|n| n.meta.as_ref()) {
                    late.push(DirEntry {
                        name: name.clone(),
                        attr: self.shown(&t, ino, m),
                    });
                }
                by_name.insert(name.clone(), ino);
                order.push((name, ino));
            } else {
                t.mark_gone(ino);
            }
        }
        // Entries of a first attempt that the second did not list (and that did not move
        // elsewhere meanwhile: a rename out of this directory is what made us fetch again).
        for ino in numbered {
            let listed = current.contains(&ino);
            let still_here = t
                .get(ino)
                .is_some_and(|n| n.parent == dir && n.path.is_child_of(&path));
            let writing = t.get(ino).is_some_and(|n| n.writer.is_some() && !n.gone);
            if !listed && still_here && !writing {
                t.mark_gone(ino);
            }
        }
        let listing = Arc::new(Listing {
            fetched: now,
            order,
            by_name,
            hidden,
            settled,
        });
        if let Some(n) = t.get_mut(dir) {
            n.listing = Some(listing.clone());
            n.listing_failed = None;
        }
        drop(t);
        tracing::debug!(
            dir = %path,
            entries = listing.order.len(),
            secs = now.elapsed().as_secs_f64(),
            "listed"
        );
        if let Some(s) = sink {
            for e in late {
                s.push(e);
            }
        }
        Ok(listing)
    }

    /// One resource of a listing as it arrives: numbered, named, handed to `sink`.
    fn gather(
        &self,
        dir: Ino,
        path: &DavPath,
        r: crate::dav::Resource,
        acc: &mut Gathered,
        sink: Option<&DirStream>,
    ) {
        // The directory itself: Orthanc lists it with a trailing slash, others without.
        if r.path == *path {
            if r.is_collection {
                acc.quota = Some((r.quota_available, r.quota_used));
                acc.me = Some(Meta::from_resource(&r, acc.now, self.mounted_at));
                if let Some(s) = sink {
                    s.start();
                }
            } else {
                acc.not_a_directory = true;
            }
            return;
        }
        if acc.not_a_directory || !r.path.is_child_of(path) {
            return;
        }
        let Some(server_name) = r.path.name() else {
            return;
        };
        if server_name.starts_with(segments::PART_PREFIX) {
            // An upload in progress (ours or another davdrive's), not a file yet.
            acc.hidden.push((r.path.clone(), r.last_modified));
            return;
        }
        let mut local = self.cfg.names.to_local(server_name);
        if acc.by_name.contains_key(&local) {
            // Two server names that map to one local name (only possible after mapping):
            // disambiguate deterministically rather than hide one.
            local = self.cfg.names.to_local(&format!("{server_name}~dup"));
            if acc.by_name.contains_key(&local) {
                tracing::warn!(dir = %path, name = server_name, "skipping a duplicate name");
                return;
            }
        }
        if local != server_name {
            tracing::debug!(dir = %path, server = server_name, local = %local, "mapped a name");
        }
        let meta = Meta::from_resource(&r, acc.now, self.mounted_at);
        let (ino, attr) = {
            let mut t = self.table();
            let ino = t.ensure(dir, &r.path);
            let attr = sink.map(|_| self.shown(&t, ino, &meta));
            (ino, attr)
        };
        if let (Some(s), Some(attr)) = (sink, attr) {
            s.push(DirEntry {
                name: local.clone(),
                attr,
            });
        }
        acc.metas.push((ino, meta));
        acc.by_name.insert(local.clone(), ino);
        acc.order.push((local, ino));
    }

    /// A cached listing, also handed to `sink` in full.
    fn hand_out(&self, l: Arc<Listing>, sink: Option<&DirStream>) -> Arc<Listing> {
        if let Some(s) = sink {
            for e in self.entries_of(&l) {
                s.push(e);
            }
        }
        l
    }

    fn entries_of(&self, l: &Listing) -> Vec<DirEntry> {
        let t = self.table();
        l.order
            .iter()
            .filter_map(|(name, i)| {
                let n = t.get(*i)?;
                let m = n.meta.as_ref()?;
                Some(DirEntry {
                    name: name.clone(),
                    attr: self.shown(&t, *i, m),
                })
            })
            .collect()
    }

    /// How long a listing the server's answer made impossible is not asked again.
    fn listing_retry(&self) -> Duration {
        self.cfg.dir_ttl.max(Duration::from_secs(10))
    }

    /// The failure of a recent listing of `dir` that failed for good (see
    /// `Node::listing_failed`).
    fn failed_listing(&self, dir: Ino) -> VfsResult<()> {
        let t = self.table();
        match t.get(dir).and_then(|n| n.listing_failed.as_ref()) {
            Some((at, e))
                if Instant::now().saturating_duration_since(*at) < self.listing_retry() =>
            {
                Err(e.clone())
            }
            _ => Ok(()),
        }
    }

    fn cached_listing(&self, dir: Ino) -> VfsResult<Option<Arc<Listing>>> {
        let t = self.table();
        let n = t
            .get(dir)
            .ok_or_else(|| VfsError::not_found(format!("inode {dir}")))?;
        if let Some(m) = &n.meta
            && m.kind == FileKind::File
        {
            return Err(VfsError::new(
                ErrorKind::NotADirectory,
                format!("{}: not a directory", n.path),
            ));
        }
        Ok(n.listing
            .as_ref()
            .filter(|l| self.fresh(l.fetched))
            .cloned())
    }

    /// Looks up `name` in directory `parent`; counts a kernel reference on success.
    pub async fn lookup(&self, parent: Ino, name: &str) -> VfsResult<Attr> {
        self.child_attr_counted(parent, name, true).await
    }

    async fn child_attr(&self, parent: Ino, name: &str) -> VfsResult<Attr> {
        self.child_attr_counted(parent, name, false).await
    }

    /// The attributes of `name` in `parent`; with `count`, also a kernel reference, under the
    /// same hold of the table (a listing fetched meanwhile could drop a node nobody holds).
    async fn child_attr_counted(&self, parent: Ino, name: &str, count: bool) -> VfsResult<Attr> {
        let listing = self.listing(parent).await?;
        let ino = *listing
            .by_name
            .get(name)
            .ok_or_else(|| VfsError::not_found(format!("{name:?} in inode {parent}")))?;
        let mut t = self.table();
        let n = t
            .get(ino)
            .ok_or_else(|| VfsError::not_found(format!("inode {ino}")))?;
        let meta = n
            .meta
            .as_ref()
            .ok_or_else(|| VfsError::not_found(format!("{}", n.path)))?;
        let attr = self.shown(&t, ino, meta);
        if count && let Some(n) = t.get_mut(ino) {
            n.lookups += 1;
        }
        if let Some(p) = t.get_mut(parent) {
            p.used = Some(Instant::now());
        }
        Ok(attr)
    }

    /// Counts one more kernel reference (readdirplus entries).
    pub fn remember(&self, ino: Ino) {
        if let Some(n) = self.table().get_mut(ino) {
            n.lookups += 1;
        }
    }

    /// The kernel drops `n` references.
    pub fn forget(&self, ino: Ino, n: u64) {
        let mut t = self.table();
        t.forget(ino, n);
        // A table that doubled since the last sweep is swept at once (see also
        // `watch_memory`).
        if t.len() > self.sweep_at.load(Ordering::Relaxed) {
            self.sweep(&mut t);
        }
    }

    /// Drops the nodes nobody needs (see `InodeTable::sweep`), with the table held.
    fn sweep(&self, t: &mut InodeTable) {
        // What open files and directories still point at (lock order: the table, then the
        // handles, the open directories, the hidden names).
        let mut busy: HashSet<Ino> = self
            .handles
            .lock()
            .values()
            .map(|h| match h {
                Handle::Read(r) => r.ino(),
                Handle::Write(w) | Handle::Reading(w) => w.ino(),
            })
            .collect();
        let open_dirs: HashSet<Ino> = self.dir_handles.lock().values().map(|(i, _)| *i).collect();
        busy.extend(self.hidden.lock().keys().copied());
        // Listings are dropped a while after they expired: a lookup that just took one
        // from the cache must still find its nodes.
        let stale = self.cfg.dir_ttl + Duration::from_secs(5);
        let before = t.len();
        let dropped = t.sweep(Instant::now(), stale, &busy, &open_dirs);
        let after = t.len();
        self.sweep_at
            .store((after * 2).max(SWEEP_FROM), Ordering::Relaxed);
        if dropped > 0 {
            tracing::debug!(before, dropped, after, "dropped nodes nobody needs");
        }
    }

    /// Starts the task that sweeps a large inode table every few seconds, so that the nodes
    /// of a tree walked once (a crawler, `find`, a backup) go once the kernel forgot them
    /// and their listings are stale. It ends with the mount.
    pub fn watch_memory(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(vfs) = weak.upgrade() else {
                    return;
                };
                let mut t = vfs.table();
                if t.len() > SWEEP_FROM {
                    vfs.sweep(&mut t);
                }
            }
        });
    }

    /// Attributes of `ino`: cached while fresh, else from the parent's listing.
    pub async fn getattr(&self, ino: Ino) -> VfsResult<Attr> {
        let (parent, cached) = {
            let t = self.table();
            let n = t
                .get(ino)
                .ok_or_else(|| VfsError::not_found(format!("inode {ino}")))?;
            if n.gone {
                return Err(VfsError::not_found(&n.path));
            }
            let cached = n
                .meta
                .as_ref()
                .filter(|m| self.fresh(m.fetched))
                .map(|m| self.shown(&t, ino, m));
            (n.parent, cached)
        };
        if let Some(a) = cached {
            return Ok(a);
        }
        if ino == ROOT_INO {
            let meta = self.refresh_root().await?;
            return Ok(self.attr_of(ino, &meta));
        }
        self.listing(parent).await?;
        let t = self.table();
        let n = t
            .get(ino)
            .ok_or_else(|| VfsError::not_found(format!("inode {ino}")))?;
        match (&n.meta, n.gone) {
            (Some(m), false) => Ok(self.shown(&t, ino, m)),
            _ => Err(VfsError::not_found(&n.path)),
        }
    }

    /// Resolves a whole local path such as `/a/b` (for frontends that open by path).
    pub async fn resolve(&self, path: &str) -> VfsResult<Attr> {
        let mut attr = self.getattr(ROOT_INO).await?;
        for name in path.split(['/', '\\']).filter(|s| !s.is_empty()) {
            if attr.kind != FileKind::Directory {
                return Err(VfsError::new(
                    ErrorKind::NotADirectory,
                    format!("{path}: a component is not a directory"),
                ));
            }
            attr = self.child_attr(attr.ino, name).await?;
        }
        Ok(attr)
    }

    /// Opens a directory. A cached listing is served at once; otherwise the listing is
    /// fetched in the background and [`Vfs::readdir`] hands out its entries as they arrive
    /// (see `dir.rs`). Returns once the server has answered, so that a missing or forbidden
    /// directory fails here.
    pub async fn opendir(self: &Arc<Self>, ino: Ino) -> VfsResult<u64> {
        self.opendir_with(ino, true).await
    }

    /// As [`Vfs::opendir`], without fetching the subfolders' listings ahead: for a look at
    /// the entries that is not someone browsing (an emptiness check).
    pub async fn opendir_quietly(self: &Arc<Self>, ino: Ino) -> VfsResult<u64> {
        self.opendir_with(ino, false).await
    }

    async fn opendir_with(self: &Arc<Self>, ino: Ino, prefetch: bool) -> VfsResult<u64> {
        if prefetch {
            self.note_used(ino);
        }
        let stream = match self.cached_listing(ino)? {
            Some(l) => {
                if prefetch {
                    self.prefetch_subfolders(&l);
                }
                Arc::new(DirStream::complete(self.entries_of(&l)))
            }
            None => {
                let stream = Arc::new(DirStream::new());
                let (vfs, s) = (self.clone(), stream.clone());
                tokio::spawn(async move {
                    // Whatever happens to this task, readers are not left waiting.
                    let _ended = dir::EndGuard(s.clone());
                    let result = vfs.listing_into(ino, Some(&s)).await;
                    if let Ok(l) = &result
                        && prefetch
                    {
                        vfs.prefetch_subfolders(l);
                    }
                    s.finish(result.map(|_| ()));
                });
                stream.started().await?;
                stream
            }
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dir_handles.lock().insert(fh, (ino, stream));
        Ok(fh)
    }

    /// Fetches ahead, in the background, the listings of the subfolders of `listing` that
    /// have none fresh: a file manager showing a folder (for its item counts), or `find` and
    /// `du` descending, lists them next, and over a slow link round trips one after the other
    /// cost more than the bytes. At most `prefetch_listings` subfolders per listing, in the
    /// listing's order, `PREFETCH_PARALLEL` at a time. Only folders someone opened have their
    /// subfolders fetched ahead, not the listings fetched ahead themselves, so it reaches one
    /// level below what was opened, and a folder nobody opens again costs nothing more for
    /// `dir_ttl`. A subfolder whose listing fails is left for whoever opens it, and not
    /// fetched ahead again for `dir_ttl`.
    fn prefetch_subfolders(self: &Arc<Self>, listing: &Listing) {
        let max = self.cfg.prefetch_listings;
        if max == 0 {
            return;
        }
        let dirs: Vec<Ino> = {
            let t = self.table();
            listing
                .order
                .iter()
                .filter(|(_, ino)| self.worth_prefetching(&t, *ino))
                .map(|(_, ino)| *ino)
                .take(max)
                .collect()
        };
        if dirs.is_empty() {
            return;
        }
        let vfs = self.clone();
        tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            for ino in dirs {
                while running.len() >= PREFETCH_PARALLEL {
                    running.join_next().await;
                }
                let v = vfs.clone();
                running.spawn(async move {
                    // Listed or gone meanwhile (by someone opening it, or a prefetch of
                    // another opendir of the parent: single-flight does the rest).
                    if !v.worth_prefetching(&v.table(), ino) {
                        return;
                    }
                    if let Err(e) = v.listing(ino).await {
                        tracing::debug!("listing fetched ahead failed: {e}");
                        if let Some(n) = v.table().get_mut(ino) {
                            n.prefetch_failed = Some(Instant::now());
                        }
                    }
                });
            }
            while running.join_next().await.is_some() {}
        });
    }

    /// Whether `ino` is a folder whose listing is worth fetching ahead: none fresh, not gone,
    /// and no recent failure.
    fn worth_prefetching(&self, t: &InodeTable, ino: Ino) -> bool {
        let Some(n) = t.get(ino) else {
            return false;
        };
        let folder = n
            .meta
            .as_ref()
            .is_some_and(|m| m.kind == FileKind::Directory);
        let listed = n.listing.as_ref().is_some_and(|l| self.fresh(l.fetched));
        let failed = n.prefetch_failed.is_some_and(|at| self.fresh(at));
        folder && !listed && !failed && !n.gone && n.listing_failed.is_none()
    }

    /// Up to `max` entries of open directory `fh` (without `.` and `..`) from index `from`,
    /// waiting for them while the listing downloads; empty at the end.
    pub async fn readdir(&self, fh: u64, from: usize, max: usize) -> VfsResult<Vec<DirEntry>> {
        let stream = self
            .dir_handles
            .lock()
            .get(&fh)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| VfsError::new(ErrorKind::Io, format!("no open directory {fh}")))?;
        stream.entries(from, max).await
    }

    pub fn releasedir(&self, fh: u64) {
        self.dir_handles.lock().remove(&fh);
    }

    /// The parent of a directory inode (for `..`).
    pub fn parent_of(&self, ino: Ino) -> Ino {
        self.table().get(ino).map(|n| n.parent).unwrap_or(ROOT_INO)
    }

    /// Opens a file. Reading makes no request: data is fetched on the first read. Writing
    /// starts a write session (see `write.rs`).
    pub async fn open(&self, ino: Ino, mode: OpenMode) -> VfsResult<Opened> {
        // Its upload or rename still going on behind a call (`async_close`): read from what
        // was written here, without waiting for the server (git reads its config right
        // after renaming config.lock over it).
        if !mode.write
            && self.has_work_behind(ino)
            && let Some(o) = self.open_written(ino, mode, true).await
        {
            return Ok(o);
        }
        self.settle(ino).await;
        if let Some(o) = self.open_local(ino, mode)? {
            return Ok(o);
        }
        if mode.write {
            return self.open_for_write(ino, mode).await;
        }
        if let Some(o) = self.open_written(ino, mode, false).await {
            return Ok(o);
        }
        let attr = self.getattr(ino).await?;
        if attr.kind == FileKind::Directory {
            return Err(VfsError::new(
                ErrorKind::IsADirectory,
                "cannot open a directory as a file",
            ));
        }
        // Written here a moment ago, and still the server's version: read from the copy.
        if let Some(o) = self.open_copy(ino, mode) {
            return Ok(o);
        }
        self.open_for_read(ino, mode).await
    }

    /// A read-only descriptor of what this mount wrote to `ino` last, where that is still
    /// the file's content: a session with data the server does not have yet, one whose end
    /// is under way. With `behind` (its upload or rename still going on behind a call), also
    /// a session whose end waits for that upload, and a copy kept of a file just written
    /// (see `copies`).
    async fn open_written(&self, ino: Ino, mode: OpenMode, behind: bool) -> Option<Opened> {
        // Being written, with data the server does not have yet: this descriptor reads what
        // was written so far, not the server's older copy. The kernel's pages then hold the
        // session's bytes, which no version on the server has (yet).
        let session = {
            let mut t = self.table();
            let w = t.get(ino).and_then(|n| self.dirty_session(n.writer));
            if w.is_some()
                && let Some(n) = t.get_mut(ino)
            {
                n.cached_version = None;
            }
            w
        };
        if let Some(w) = session {
            let fh = self.add_handle(Handle::Reading(w));
            return Some(Opened::new(fh, false, mode));
        }
        // Just closed, its session still ending (the kernel's release comes after close()
        // returned): the session's local file is what the server has now (see `copies`).
        let ending = {
            let t = self.table();
            let writer = t.get(ino).and_then(|n| n.writer);
            writer.and_then(|fh| match self.handles.lock().get(&fh) {
                Some(Handle::Write(w)) => Some(w.clone()),
                _ => None,
            })
        };
        // Or its last descriptor released, the session's end under way.
        let ending = ending.or_else(|| self.copies.lock().ending_session(ino));
        if let Some(w) = ending
            && ((behind && w.dirty_now()) || w.holds_what_was_uploaded().await)
        {
            let fh = self.add_handle(Handle::Reading(w));
            return Some(Opened::new(fh, false, mode));
        }
        if behind {
            return self.open_copy(ino, mode);
        }
        None
    }

    /// A read-only descriptor of the copy kept of `ino` just written, if it is still the
    /// version the mount knows (see `copies`).
    fn open_copy(&self, ino: Ino, mode: OpenMode) -> Option<Opened> {
        let current = self.table().get(ino).and_then(|n| n.meta.clone())?;
        let w = self.copies.lock().of(ino, &current)?;
        let fh = self.add_handle(Handle::Reading(w));
        Some(Opened::new(fh, false, mode))
    }

    /// A read-only descriptor of `ino` read from the server.
    async fn open_for_read(&self, ino: Ino, mode: OpenMode) -> VfsResult<Opened> {
        let (path, meta, keep_cache, around_cache) = {
            let mut t = self.table();
            let n = t
                .get(ino)
                .ok_or_else(|| VfsError::not_found(format!("inode {ino}")))?;
            let meta = n.meta.clone().ok_or_else(|| VfsError::not_found(&n.path))?;
            let path = n.path.clone();
            let same = n
                .cached_version
                .as_ref()
                .is_some_and(|v| v.same_version(&meta));
            // The kernel's pages of this file are kept only for a version with an entity
            // tag: reading on after them then asks for that version (If-Range, and every
            // answer's tag is compared), so a file changed on the server meanwhile fails the
            // read instead of mixing versions. Without one (nginx, Orthanc), a change within
            // the listing's lifetime would go unnoticed.
            let tagged = meta.etag.is_some();
            // A descriptor still reading another version may fill the page cache with that
            // version's bytes: until those are closed, this one reads around the cache, and
            // the cache is trusted by nobody.
            let others = self.readers_of_other_versions(ino, &meta);
            if let Some(n) = t.get_mut(ino) {
                n.cached_version = (!others).then(|| meta.clone());
            }
            (path, meta, same && tagged && !others, others)
        };
        let direct = self.cfg.direct_reads || around_cache;
        let mut tuning = self.cfg.read.clone();
        if keep_cache && !direct {
            // The kernel has this version's pages: reads reaching us are for pages it lacks,
            // often holes of a few pages (docs/PERFORMANCE.md). A range of just what is asked
            // is used up, so its connection serves the next hole; a 1 MiB range would be
            // given up after a few pages, and with it the connection (over 30 ms, a new one
            // and its slow start cost about 230 ms per hole instead of one round trip).
            // Reads going on from there double the range as usual.
            tuning.min_window = 0;
        }
        let stored = if direct || !self.cfg.store_reads {
            None
        } else {
            let dir = self.cache.stored_reads_dir();
            self.stored_reads.lock().for_version(ino, &meta, &dir)
        };
        let handle = ReadHandle::new(ino, path, meta, tuning, stored);
        let fh = self.add_handle(Handle::Read(Arc::new(handle)));
        self.watch_idle_reads();
        let mut o = Opened::new(fh, keep_cache, mode);
        o.direct |= direct;
        Ok(o)
    }

    /// Whether a read descriptor of `ino` may be reading another version than `current`.
    /// Called with the table held (the order is the table, then the handles).
    fn readers_of_other_versions(&self, ino: Ino, current: &Meta) -> bool {
        self.handles.lock().values().any(
            |h| matches!(h, Handle::Read(r) if r.ino() == ino && r.may_cache_other_than(current)),
        )
    }

    /// Open read descriptors follow their files to where a rename put them.
    pub(super) fn readers_follow_renames(&self) {
        let t = self.table();
        let handles = self.handles.lock();
        for h in handles.values() {
            if let Handle::Read(r) = h
                && let Some(n) = t.get(r.ino())
                && !n.gone
            {
                r.moved_to(&n.path);
            }
        }
    }

    /// Starts (once) the task that lets the transfers of files not read for
    /// `ReadTuning::idle` go (`ReadHandle::release_if_idle`). It ends with the mount.
    fn watch_idle_reads(&self) {
        let idle = self.cfg.read.idle;
        if idle.is_zero() || self.idle_watch.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.idle_watch.store(false, Ordering::Relaxed);
            return;
        };
        let handles = Arc::downgrade(&self.handles);
        rt.spawn(async move {
            // A transfer goes between `idle` and 1.5 x `idle` after its last read.
            let period = (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(86_400));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(handles) = handles.upgrade() else {
                    return;
                };
                let reads: Vec<Arc<ReadHandle>> = handles
                    .lock()
                    .values()
                    .filter_map(|h| match h {
                        Handle::Read(r) => Some(r.clone()),
                        Handle::Write(_) | Handle::Reading(_) => None,
                    })
                    .collect();
                drop(handles);
                let now = tokio::time::Instant::now();
                for r in reads {
                    r.release_if_idle(now, idle);
                }
            }
        });
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, h);
        fh
    }

    fn handle(&self, fh: u64) -> VfsResult<Handle> {
        self.handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| VfsError::new(ErrorKind::Io, format!("no open file {fh}")))
    }

    /// Reads up to `size` bytes at `offset`.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> VfsResult<ReadData> {
        let h = match self.handle(fh)? {
            Handle::Write(w) | Handle::Reading(w) => {
                return w.read(&self.client, offset, size).await.map(Into::into);
            }
            Handle::Read(h) => h,
        };
        let tried = h.path();
        let mut r = h.read(&self.client, offset, size).await;
        if r.as_ref().is_err_and(|e| e.kind == ErrorKind::NotFound) && self.followed(&h, &tried) {
            r = h.read(&self.client, offset, size).await;
        }
        match r {
            Ok(b) => Ok(b),
            Err(e) => {
                if e.kind == ErrorKind::Stale || e.kind == ErrorKind::NotFound {
                    // The file changed or vanished under us: forget what we knew so that the
                    // next open sees the server's current state.
                    self.invalidate(h.ino());
                }
                Err(e)
            }
        }
    }

    /// Reads up to `size` bytes at `offset`, answering through `sink` by splicing where it can
    /// (`Ok(None)`: answered): read-only handles with `direct_reads`, on plain-HTTP mounts
    /// (see `zerocopy`).
    #[cfg(target_os = "linux")]
    pub async fn read_to(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        sink: &dyn zerocopy::SpliceSink,
    ) -> VfsResult<Option<ReadData>> {
        let h = match self.handle(fh)? {
            Handle::Read(h) if self.cfg.direct_reads && self.client.raw_gets_possible() => h,
            _ => return self.read(fh, offset, size).await.map(Some),
        };
        let tried = h.path();
        let mut r = h.read_to(&self.client, offset, size, sink).await;
        if r.as_ref().is_err_and(|e| e.kind == ErrorKind::NotFound) && self.followed(&h, &tried) {
            r = h.read_to(&self.client, offset, size, sink).await;
        }
        match r {
            Ok(d) => Ok(d),
            Err(e) => {
                if e.kind == ErrorKind::Stale || e.kind == ErrorKind::NotFound {
                    self.invalidate(h.ino());
                }
                Err(e)
            }
        }
    }

    /// A read that found nothing at `tried` may have raced a rename of its file: points the
    /// handle at where the file is now, if that is elsewhere.
    fn followed(&self, h: &ReadHandle, tried: &DavPath) -> bool {
        let now = {
            let t = self.table();
            t.get(h.ino()).filter(|n| !n.gone).map(|n| n.path.clone())
        };
        // Or a delete that hid it from the readers (see `hide_from_readers`).
        let now = now.or_else(|| self.hidden.lock().get(&h.ino()).cloned());
        match now {
            Some(p) if p != *tried => {
                h.moved_to(&p);
                true
            }
            _ => false,
        }
    }

    /// Forgets the cached listing of directory `ino` (its entries' metadata stays).
    fn drop_listing(&self, ino: Ino) {
        if let Some(n) = self.table().get_mut(ino) {
            n.listing = None;
        }
    }

    /// Forgets cached metadata of `ino` and its parent's listing.
    pub fn invalidate(&self, ino: Ino) {
        let mut t = self.table();
        let parent = t.get(ino).map(|n| n.parent);
        if let Some(n) = t.get_mut(ino) {
            n.meta = None;
            n.cached_version = None;
        }
        if let Some(p) = parent
            && let Some(n) = t.get_mut(p)
        {
            n.listing = None;
        }
    }

    /// `access()`: the modes shown decide, as the mount's user owns everything shown. A file
    /// without execute bits is not executable (shells and file managers ask before running
    /// one), and nothing is writable on a read-only mount.
    /// `Ok(Some(kind))`: the access asked for is refused, an ordinary answer (`cp` and file
    /// managers ask whether plain files are executable), not an error to log as one.
    pub async fn access(&self, ino: Ino, want: AccessWanted) -> VfsResult<Option<ErrorKind>> {
        let a = self.getattr(ino).await?;
        if want.write && a.perm & 0o222 == 0 {
            return Ok(Some(ErrorKind::ReadOnly));
        }
        let executable = a.kind == FileKind::Directory || a.perm & 0o111 != 0;
        if (want.exec && !executable) || (want.read && a.perm & 0o444 == 0) {
            return Ok(Some(ErrorKind::PermissionDenied));
        }
        Ok(None)
    }

    /// Tells about uploads that failed after the close that could have reported them
    /// returned (`--async-close`); the mount shows them on the desktop.
    pub fn notices(&self) -> tokio::sync::broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// Space and limits, from RFC 4331 quota properties when the server gives them.
    pub async fn statfs(&self) -> VfsResult<FsStats> {
        let (avail, used) = *self.quota.lock();
        let (total, free) = match (avail, used) {
            // Nothing used and nothing available: a server that does not know (a full quota
            // says how much is used).
            (Some(0), Some(0)) | (Some(0), None) => (UNKNOWN_SPACE, UNKNOWN_SPACE),
            (Some(a), Some(u)) => (a.saturating_add(u), a),
            (Some(a), None) => (a, a),
            (None, Some(u)) => (u.saturating_add(UNKNOWN_SPACE), UNKNOWN_SPACE),
            (None, None) => (UNKNOWN_SPACE, UNKNOWN_SPACE),
        };
        // `df -i`: the nodes kept now are "used"; WebDAV has no limit to report.
        let used = self.table().len() as u64;
        let files_free = u64::from(u32::MAX);
        Ok(FsStats {
            block_size: BLOCK as u32,
            blocks: total.div_ceil(BLOCK),
            blocks_free: free / BLOCK,
            files: used + files_free,
            files_free,
            name_max: 255,
        })
    }
}
