//! The FUSE adapter (fuser): kernel callback → core call → reply. No policy lives here.
//!
//! Each callback hands its work to the tokio runtime and replies from the task, so one slow
//! request never stalls the others. Errors map to errno in [`errno_for`], one exhaustive
//! match over the core's kinds.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
#[cfg(target_os = "linux")]
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fuser::{
    AccessFlags, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

#[cfg(target_os = "linux")]
use crate::vfs::zerocopy::{self, SpliceSink};
use crate::vfs::{
    AccessWanted, Attr, Caller, ErrorKind, FileKind, Invalidation, OpenMode, Opened, ReadData,
    SetAttr, Vfs, VfsError,
};

/// Directory entries asked of the core per readdir reply: more than a reply can hold, so
/// one call fills the kernel's buffer when the entries are there.
const DIR_BATCH: usize = 1024;

/// The errno of each core error kind.
pub fn errno_for(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::NotFound | ErrorKind::PathNotFound => libc::ENOENT,
        ErrorKind::PermissionDenied => libc::EACCES,
        ErrorKind::AuthRequired => libc::EACCES,
        ErrorKind::AlreadyExists => libc::EEXIST,
        ErrorKind::NotEmpty => libc::ENOTEMPTY,
        ErrorKind::IsADirectory => libc::EISDIR,
        ErrorKind::NotADirectory => libc::ENOTDIR,
        ErrorKind::Locked => libc::EBUSY,
        ErrorKind::NoSpace => libc::ENOSPC,
        ErrorKind::TooLarge => libc::EFBIG,
        ErrorKind::Stale => libc::ESTALE,
        ErrorKind::Conflict => libc::EIO,
        ErrorKind::Unsupported => libc::EOPNOTSUPP,
        ErrorKind::CrossDevice => libc::EXDEV,
        ErrorKind::Busy => libc::EAGAIN,
        ErrorKind::Unreachable => libc::EHOSTUNREACH,
        ErrorKind::TimedOut => libc::ETIMEDOUT,
        ErrorKind::InvalidName => libc::EINVAL,
        ErrorKind::ReadOnly => libc::EROFS,
        ErrorKind::TlsFailure => libc::EIO,
        ErrorKind::Protocol => libc::EIO,
        ErrorKind::Io => libc::EIO,
    }
}

fn errno(e: &VfsError) -> Errno {
    e.report();
    Errno::from_i32(errno_for(e.kind))
}

/// Answers a read. Data in one buffer goes through fuser; data in several (a read spanning
/// received chunks) is written here with one `writev` of the reply header and the chunks, as
/// fuser itself writes replies, instead of copying the chunks together first.
fn reply_data(dev: Option<&File>, unique: u64, reply: ReplyData, data: &ReadData) {
    let chunks = data.chunks();
    let dev = match (chunks, dev) {
        ([], _) => return reply.data(&[]),
        ([one], _) => return reply.data(one),
        (_, Some(dev)) if chunks.len() < MAX_REPLY_SLICES => dev,
        _ => return reply.data(&data.to_bytes()),
    };
    let total = OUT_HEADER_LEN + data.len();
    let Ok(header) = out_header(total, unique) else {
        return reply.error(Errno::EIO);
    };
    let mut iov = Vec::with_capacity(chunks.len() + 1);
    iov.push(io::IoSlice::new(&header));
    iov.extend(chunks.iter().map(|c| io::IoSlice::new(c)));
    // The reply is answered here: fuser's handle must not answer it a second time (dropping
    // it would send EIO for the same request), so it is forgotten. It holds only a reference
    // to the session's channel.
    std::mem::forget(reply);
    match (&*dev).write_vectored(&iov) {
        // The kernel takes a reply whole or not at all.
        Ok(n) if n == total => {}
        // ENOENT: the request was interrupted meanwhile; nothing waits for the answer.
        Ok(n) => tracing::warn!(unique, n, total, "short write of a FUSE reply"),
        Err(e) => tracing::debug!(unique, "FUSE reply not delivered: {e}"),
    }
}

/// Answers a read with bytes spliced from the server's socket (`vfs::zerocopy`): the core puts
/// this reply header and the bytes into a pipe, spliced from there into `/dev/fuse` in one go,
/// so the only copy is the kernel's, into the reader's buffer.
#[cfg(target_os = "linux")]
struct SpliceReply<'a> {
    dev: &'a File,
    unique: u64,
}

#[cfg(target_os = "linux")]
impl SpliceSink for SpliceReply<'_> {
    fn header(&self, n: usize) -> io::Result<Vec<u8>> {
        out_header(OUT_HEADER_LEN + n, self.unique)
            .map(|h| h.to_vec())
            .map_err(|_| io::Error::other("read too large"))
    }

    fn deliver(&self, pipe: BorrowedFd<'_>, total: usize) -> io::Result<()> {
        // The kernel takes a reply from a pipe whole or not at all.
        match crate::sys::pipe::splice(pipe, self.dev.as_fd(), total, crate::sys::pipe::SPLICE_MOVE)
        {
            Ok(k) if k == total => Ok(()),
            Ok(_) => Err(io::Error::other("short splice of a FUSE reply")),
            Err(e) => Err(e),
        }
    }
}

/// `struct fuse_out_header { u32 len; i32 error; u64 unique; }` of a successful reply of
/// `total` bytes, in the machine's byte order.
fn out_header(total: usize, unique: u64) -> Result<[u8; OUT_HEADER_LEN], ()> {
    let len = u32::try_from(total).map_err(|_| ())?;
    let mut header = [0u8; OUT_HEADER_LEN];
    header[..4].copy_from_slice(&len.to_ne_bytes());
    header[8..].copy_from_slice(&unique.to_ne_bytes());
    Ok(header)
}

/// Size of `struct fuse_out_header`.
const OUT_HEADER_LEN: usize = 16;
/// Slices per `writev`, below the kernel's IOV_MAX (1024).
const MAX_REPLY_SLICES: usize = 1000;

/// Mount-time choices of the FUSE frontend.
#[derive(Debug, Clone)]
pub struct FuseOptions {
    /// Shown as the mount's source in /proc/mounts (a URL without userinfo).
    pub fsname: String,
    pub allow_other: bool,
    pub read_only: bool,
}

/// The fuser filesystem.
pub struct FuseAdapter {
    vfs: Arc<Vfs>,
    rt: Handle,
    ttl: Duration,
    /// The kernel lets programs mmap files opened with FOPEN_DIRECT_IO (Linux 6.6+).
    direct_mmap: bool,
    /// The session's `/dev/fuse` descriptor, for data replies written from several buffers.
    dev: Arc<OnceLock<File>>,
}

impl FuseAdapter {
    pub fn new(vfs: Arc<Vfs>, rt: Handle) -> Self {
        let ttl = vfs.config().kernel_ttl;
        FuseAdapter {
            vfs,
            rt,
            ttl,
            direct_mmap: false,
            dev: Arc::new(OnceLock::new()),
        }
    }

    /// Runs the work of one callback: polled once right here, in the FUSE thread, and
    /// handed to the runtime only if it has to wait. Answers that come from the caches
    /// (lookups, attributes, cached listings, buffered reads, writes with room) then cost no
    /// hand-over to another thread and no wake-up. Futures re-register their wakers on
    /// every poll, so the runtime's first poll picks up whatever the first one started.
    fn run(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let _runtime = self.rt.enter();
        let mut work = Box::pin(work);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // A panic stays in this callback (as it would in a task): the reply inside the work
        // is dropped on the way out, which answers EIO.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            work.as_mut().poll(&mut cx).is_pending()
        }));
        if matches!(polled, Ok(true)) {
            self.rt.spawn(work);
        }
    }

    fn flush_and_reply(&self, fh: FileHandle, reply: ReplyEmpty) {
        let vfs = self.vfs.clone();
        self.run(async move {
            match vfs.flush(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let (kind, nlink) = match a.kind {
        FileKind::File => (FileType::RegularFile, 1),
        FileKind::Directory => (FileType::Directory, 2),
    };
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.crtime,
        kind,
        perm: a.perm,
        nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 1 << 20,
        flags: 0,
    }
}

/// Who wrote: a write from the page cache (writeback, mmap) has no caller the kernel can
/// name, so it counts as unknown.
fn writer(req: &Request, flags: WriteFlags, lock_owner: Option<LockOwner>) -> Caller {
    if flags.contains(WriteFlags::FUSE_WRITE_CACHE) {
        return Caller::default();
    }
    Caller {
        owner: lock_owner.map(|o| o.0),
        pid: req.pid(),
    }
}

fn utf8(name: &OsStr) -> Option<String> {
    name.to_str().map(str::to_owned)
}

/// Open flags as the core understands them.
fn open_mode(flags: i32) -> OpenMode {
    let acc = flags & libc::O_ACCMODE;
    OpenMode {
        read: acc != libc::O_WRONLY,
        write: acc == libc::O_WRONLY || acc == libc::O_RDWR || flags & libc::O_TRUNC != 0,
        truncate: flags & libc::O_TRUNC != 0,
        append: flags & libc::O_APPEND != 0,
    }
}

/// `direct_mmap`: whether the kernel granted FUSE_DIRECT_IO_ALLOW_MMAP (Linux 6.6+). Only such
/// kernels keep direct I/O coherent with the page cache of other descriptors of the same file
/// (they write back and drop cached pages around each direct write) and let programs mmap a
/// file opened for direct I/O. Older kernels get no direct I/O at all.
fn fopen_flags(o: &Opened, direct_mmap: bool) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if o.direct && direct_mmap {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    f
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // The kernel caps this at the read-ahead it offers (128 KiB by default); see
        // `raise_read_ahead` for getting more.
        let _ = config.set_max_readahead(4 << 20);
        // Large writes: fewer callbacks per uploaded MiB.
        let _ = config.set_max_write(1 << 20);
        // One flag per call: fuser grants all flags of a call or none.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // O_TRUNC reaches open(): an overwrite then streams like a new file.
            InitFlags::FUSE_ATOMIC_O_TRUNC,
        ] {
            let _ = config.add_capabilities(flag);
        }
        // Direct I/O (write-only descriptors, `--direct-io`) only where the kernel keeps it
        // coherent with the page cache and mmap working (see `fopen_flags`).
        self.direct_mmap = config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        if self.vfs.config().direct_reads && !self.direct_mmap {
            tracing::warn!(
                "--direct-io needs Linux 6.6 or later (FUSE_DIRECT_IO_ALLOW_MMAP); \
                 reads go through the page cache"
            );
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str().map(str::to_owned) else {
            // Every name we show is UTF-8; a non-UTF-8 name cannot be one of ours.
            reply.error(Errno::from_i32(libc::ENOENT));
            return;
        };
        let (vfs, ttl) = (self.vfs.clone(), self.ttl);
        self.run(async move {
            match vfs.lookup(parent.0, &name).await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.vfs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (vfs, ttl) = (self.vfs.clone(), self.ttl);
        self.run(async move {
            match vfs.getattr(ino.0).await {
                Ok(a) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let want = AccessWanted {
            read: mask.contains(AccessFlags::R_OK),
            write: mask.contains(AccessFlags::W_OK),
            exec: mask.contains(AccessFlags::X_OK),
        };
        let vfs = self.vfs.clone();
        self.run(async move {
            match vfs.access(ino.0, want).await {
                Ok(None) => reply.ok(),
                Ok(Some(refused)) => reply.error(Errno::from_i32(errno_for(refused))),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mode = open_mode(flags.0);
        let (vfs, direct_mmap) = (self.vfs.clone(), self.direct_mmap);
        self.run(async move {
            match vfs.open(ino.0, mode).await {
                Ok(o) => reply.opened(FileHandle(o.fh), fopen_flags(&o, direct_mmap)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let (vfs, dev, unique) = (self.vfs.clone(), self.dev.clone(), req.unique().0);
        self.run(async move {
            #[cfg(target_os = "linux")]
            if let Some(d) = dev.get() {
                let sink = SpliceReply { dev: d, unique };
                match vfs.read_to(fh.0, offset, size, &sink).await {
                    // Answered by splicing: fuser's handle must not answer again (see
                    // `reply_data`).
                    Ok(None) => std::mem::forget(reply),
                    Ok(Some(d)) => reply_data(dev.get(), unique, reply, &d),
                    Err(e) => reply.error(errno(&e)),
                }
                return;
            }
            match vfs.read(fh.0, offset, size).await {
                Ok(d) => reply_data(dev.get(), unique, reply, &d),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The core records the release now (unmount waits for it) and uploads in the task.
        let done = self.vfs.release(fh.0);
        self.run(async move {
            done.await;
            reply.ok();
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mode = open_mode(flags);
        let Some(name) = utf8(name) else {
            return reply.error(Errno::from_i32(libc::EINVAL));
        };
        let (vfs, ttl, direct_mmap) = (self.vfs.clone(), self.ttl, self.direct_mmap);
        self.run(async move {
            match vfs.create(parent.0, &name, mode).await {
                Ok((a, o)) => reply.created(
                    &ttl,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(o.fh),
                    fopen_flags(&o, direct_mmap),
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = bytes::Bytes::copy_from_slice(data);
        let by = writer(req, write_flags, lock_owner);
        // Sequential streaming writes usually need no waiting: answer from this thread and
        // save a hand-over to the runtime per write.
        if let Some(n) = self.vfs.try_write_now(fh.0, offset, &data, by) {
            return reply.written(n);
        }
        let vfs = self.vfs.clone();
        self.run(async move {
            match vfs.write(fh.0, offset, data, by).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // The kernel flushes at every close of a descriptor, also of one a child inherited
        // across fork and closes at exec: the core tells those apart.
        let by = Caller {
            owner: Some(lock_owner.0),
            pid: req.pid(),
        };
        let vfs = self.vfs.clone();
        self.run(async move {
            match vfs.close(fh.0, by).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // fsync and close both return once the server holds the data.
        self.flush_and_reply(fh, reply);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            size,
            other: mode.is_some()
                || uid.is_some()
                || gid.is_some()
                || atime.is_some()
                || mtime.is_some(),
        };
        let (vfs, ttl) = (self.vfs.clone(), self.ttl);
        self.run(async move {
            match vfs.setattr(ino.0, fh.map(|f| f.0), set).await {
                Ok(a) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let Some(name) = utf8(name) else {
            return reply.error(Errno::from_i32(libc::EINVAL));
        };
        let (vfs, ttl) = (self.vfs.clone(), self.ttl);
        self.run(async move {
            match vfs.mkdir(parent.0, &name).await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = utf8(name) else {
            return reply.error(Errno::from_i32(libc::ENOENT));
        };
        let vfs = self.vfs.clone();
        self.run(async move {
            match vfs.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = utf8(name) else {
            return reply.error(Errno::from_i32(libc::ENOENT));
        };
        let vfs = self.vfs.clone();
        self.run(async move {
            match vfs.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (Some(name), Some(newname)) = (utf8(name), utf8(newname)) else {
            return reply.error(Errno::from_i32(libc::EINVAL));
        };
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let vfs = self.vfs.clone();
        self.run(async move {
            match vfs
                .rename(parent.0, &name, newparent.0, &newname, noreplace)
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let vfs = self.vfs.clone();
        self.run(async move {
            match vfs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // Offsets: 1 = ".", 2 = "..", 3 + i = entry i; the kernel passes back the last one.
        let parent = self.vfs.parent_of(ino.0);
        let dots = [(ino.0, "."), (parent, "..")];
        for (i, (dino, name)) in dots.iter().enumerate() {
            let off = i as u64 + 1;
            if offset < off && reply.add(INodeNo(*dino), off, FileType::Directory, name) {
                return reply.ok();
            }
        }
        let from = offset.saturating_sub(2) as usize;
        let vfs = self.vfs.clone();
        self.run(async move {
            let entries = match vfs.readdir(fh.0, from, DIR_BATCH).await {
                Ok(e) => e,
                Err(e) => return reply.error(errno(&e)),
            };
            for (i, e) in entries.iter().enumerate() {
                let off = (from + i) as u64 + 3;
                if reply.add(INodeNo(e.attr.ino), off, file_type(e.attr.kind), &e.name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        // Offsets as in `readdir`; no dot entries (the kernel adds them).
        let from = offset.saturating_sub(2) as usize;
        let vfs = self.vfs.clone();
        let ttl = self.ttl;
        self.run(async move {
            let entries = match vfs.readdir(fh.0, from, DIR_BATCH).await {
                Ok(e) => e,
                Err(e) => return reply.error(errno(&e)),
            };
            for (i, e) in entries.iter().enumerate() {
                let off = (from + i) as u64 + 3;
                if reply.add(
                    INodeNo(e.attr.ino),
                    off,
                    &e.name,
                    &ttl,
                    &file_attr(&e.attr),
                    Generation(0),
                ) {
                    break;
                }
                // The kernel takes a lookup reference for each entry it accepted.
                vfs.remember(e.attr.ino);
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.vfs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let vfs = self.vfs.clone();
        self.run(async move {
            match vfs.statfs().await {
                Ok(s) => reply.statfs(
                    s.blocks,
                    s.blocks_free,
                    s.blocks_free,
                    s.files,
                    s.files_free,
                    s.block_size,
                    s.name_max,
                    s.block_size,
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}

/// Kernel read-ahead of the mount where we may set it: 512 KiB instead of the kernel's 128 KiB
/// (a FUSE server cannot ask for more than the kernel offers at FUSE_INIT). Fewer, larger
/// read requests through /dev/fuse: 1 MiB took a 1 GiB sequential read about 10 % less time
/// and CPU than 128 KiB on the 2-core test machine; 4 MiB was slower than the default. Not
/// 1 MiB: the read-ahead then runs up to 1 MiB past the reader, so a reader of the first 1 MiB
/// (`head -c 1M`, `file`) had the kernel ask up to almost 3 MiB and a third range fetched
/// (6 MiB in all over a 30 ms link, against 2 MiB with 512 KiB; see `ReadHandle::next_window`).
/// 512 KiB against 1 MiB on loopback, 1 GiB `cat`, 5 runs each taking turns: 0.74 s against
/// 0.71 s (medians; the runs spread over 0.69-0.81 s for both).
const READ_AHEAD_KIB: u32 = 512;

/// Raises the mount's kernel read-ahead (`/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`) once the
/// kernel has finished FUSE_INIT (which would cap the value again), while the session runs in
/// another thread. Waits for that at most 2 s. Only root may write the setting; other mounts
/// keep the default (docs/PERFORMANCE.md shows how to set it by hand).
pub fn raise_read_ahead(mountpoint: &Path) {
    let mountpoint = mountpoint.to_path_buf();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("davdrive-readahead".into())
        .spawn(move || {
            use std::os::unix::fs::MetadataExt;
            // The kernel holds every request until FUSE_INIT is answered and applied, so
            // once this stat returns the value written below is final.
            let dev = match std::fs::metadata(&mountpoint) {
                Ok(m) => m.dev(),
                Err(e) => return tracing::debug!("read-ahead not raised: {e}"),
            };
            let knob = format!(
                "/sys/class/bdi/{}:{}/read_ahead_kb",
                libc::major(dev),
                libc::minor(dev)
            );
            match std::fs::write(&knob, READ_AHEAD_KIB.to_string()) {
                Ok(()) => tracing::debug!(%knob, "kernel read-ahead {READ_AHEAD_KIB} KiB"),
                Err(e) => tracing::debug!(%knob, "kernel read-ahead left at its default: {e}"),
            }
            let _ = done.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = finished.recv_timeout(Duration::from_secs(2));
        }
        Err(e) => tracing::debug!("read-ahead not raised: {e}"),
    }
}

/// Opens a file for writes around the page cache (`O_DIRECT`), for the core's journals of
/// segmented uploads (`vfs::write::segments::OpenDirect`).
#[cfg(target_os = "linux")]
pub fn open_direct(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// The process (thread group) of a thread id, from `/proc`; `None` when it is gone or
/// unreadable.
#[cfg(target_os = "linux")]
pub fn process_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Mounts `vfs` at `mountpoint` with FUSE. The mount exists when this returns; the caller
/// runs the session (`Session::run`) and may unmount it from another thread through
/// `Session::unmount_callable`.
pub fn mount(
    vfs: Arc<Vfs>,
    rt: Handle,
    mountpoint: &Path,
    opts: &FuseOptions,
) -> io::Result<fuser::Session<FuseAdapter>> {
    let mut mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("davdrive".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    if opts.read_only {
        mount_options.push(MountOption::RO);
    }
    // Shared with other local users: the kernel enforces the modes shown (files 0644 and
    // directories 0755 of the mounting user, by default), so that another user can read but
    // not write, create or delete with the mounter's server credentials.
    if opts.allow_other {
        mount_options.push(MountOption::DefaultPermissions);
    }
    // Zero-copy reads answer a read in one pipe with its header (`vfs::zerocopy`): the
    // kernel's reads must fit, with room for bytes spread over more pages than their size.
    #[cfg(target_os = "linux")]
    if vfs.config().direct_reads {
        mount_options.push(MountOption::CUSTOM(format!(
            "max_read={}",
            zerocopy::RAW_MAX_READ
        )));
    }
    let mut cfg = Config::default();
    cfg.mount_options = mount_options;
    cfg.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(2);
    let adapter = FuseAdapter::new(vfs.clone(), rt);
    let dev = adapter.dev.clone();
    let session = fuser::Session::new(adapter, mountpoint, &cfg)?;
    // Changes the core saw on the server (see `vfs::watch`): the kernel forgets the names,
    // attributes and pages concerned. A name the kernel does not hold answers ENOENT: fine.
    let notifier = session.notifier();
    vfs.set_invalidator(Arc::new(move |changes: &[Invalidation]| {
        for c in changes {
            let r = match c {
                Invalidation::Entry { parent, name } => {
                    notifier.inval_entry(INodeNo(*parent), OsStr::new(name))
                }
                Invalidation::Deleted {
                    parent,
                    child,
                    name,
                } => notifier
                    .delete(INodeNo(*parent), INodeNo(*child), OsStr::new(name))
                    .or_else(|_| notifier.inval_entry(INodeNo(*parent), OsStr::new(name))),
                Invalidation::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
            };
            match r {
                Ok(()) => tracing::debug!("kernel told of {c:?}"),
                Err(e) => tracing::debug!("kernel not told of {c:?}: {e}"),
            }
        }
    }));
    // Requests are read only once the session runs, so the descriptor is in place before the
    // first read. Without it, replies are copied into one buffer and sent by fuser. A reply
    // must go to the descriptor its request was read from: this works because fuser's
    // threads share the session's descriptor (its `clone_fd` is off); cloned descriptors
    // would need one duplicate each.
    match session.as_fd().try_clone_to_owned() {
        Ok(fd) => {
            let _ = dev.set(File::from(fd));
        }
        Err(e) => tracing::warn!("cannot duplicate the /dev/fuse descriptor: {e}"),
    }
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_only_opens_bypass_the_page_cache() {
        let cases = [
            (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, true),
            (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, true),
            (libc::O_WRONLY | libc::O_APPEND, true),
            (libc::O_WRONLY, true),
            (libc::O_RDWR, false),
            (libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, false),
            (libc::O_RDONLY, false),
            (libc::O_RDONLY | libc::O_TRUNC, false),
        ];
        for (flags, direct) in cases {
            for keep_cache in [false, true] {
                let f = fopen_flags(&Opened::new(7, keep_cache, open_mode(flags)), true);
                assert_eq!(
                    f.contains(FopenFlags::FOPEN_DIRECT_IO),
                    direct,
                    "flags {flags:#o}"
                );
                assert_eq!(f.contains(FopenFlags::FOPEN_KEEP_CACHE), keep_cache);
            }
        }
    }

    #[test]
    fn direct_io_only_where_the_kernel_keeps_it_coherent() {
        let mut ro = Opened::new(7, false, open_mode(libc::O_RDONLY));
        assert!(!ro.direct);
        ro.direct = true; // as with --direct-io
        let wo = Opened::new(7, false, open_mode(libc::O_WRONLY));
        for o in [ro, wo] {
            assert!(fopen_flags(&o, true).contains(FopenFlags::FOPEN_DIRECT_IO));
            assert!(!fopen_flags(&o, false).contains(FopenFlags::FOPEN_DIRECT_IO));
        }
    }

    #[test]
    fn errno_table() {
        use ErrorKind::*;
        let table = [
            (NotFound, libc::ENOENT),
            (PathNotFound, libc::ENOENT),
            (PermissionDenied, libc::EACCES),
            (AuthRequired, libc::EACCES),
            (AlreadyExists, libc::EEXIST),
            (NotEmpty, libc::ENOTEMPTY),
            (IsADirectory, libc::EISDIR),
            (NotADirectory, libc::ENOTDIR),
            (Locked, libc::EBUSY),
            (NoSpace, libc::ENOSPC),
            (TooLarge, libc::EFBIG),
            (Stale, libc::ESTALE),
            (Conflict, libc::EIO),
            (Unsupported, libc::EOPNOTSUPP),
            (CrossDevice, libc::EXDEV),
            (Busy, libc::EAGAIN),
            (Unreachable, libc::EHOSTUNREACH),
            (TimedOut, libc::ETIMEDOUT),
            (InvalidName, libc::EINVAL),
            (ReadOnly, libc::EROFS),
            (TlsFailure, libc::EIO),
            (Protocol, libc::EIO),
            (Io, libc::EIO),
        ];
        for (kind, want) in table {
            assert_eq!(errno_for(kind), want, "{kind:?}");
        }
    }
}
