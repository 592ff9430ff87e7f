//! The FUSE floor for the read benchmark: a filesystem with one file, `zero.bin`, whose
//! reads are answered from memory with no network and no work at all, mounted with the same
//! kernel settings as davdrive (read-ahead, max_write, two /dev/fuse threads).
//!
//! `bench/read.sh` reads that file with `cat` next to davdrive and curl. Whatever this floor
//! reaches is the most any FUSE client built on fuser can reach on the machine; davdrive's
//! ratio to curl cannot exceed the floor's.
//!
//!     cargo run --release --example fuse-floor -- MOUNTPOINT [SIZE_MIB]
//!
//! Unmount with `fusermount3 -u MOUNTPOINT` (or `umount`).

#[cfg(target_os = "linux")]
fn main() -> std::io::Result<()> {
    floor::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("fuse-floor runs on Linux only");
}

#[cfg(target_os = "linux")]
mod floor {
    use fuser::{
        Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
        KernelConfig, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
        ReplyOpen, Request,
    };
    use std::ffi::OsStr;
    use std::time::{Duration, SystemTime};

    const FILE: u64 = 2;
    static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

    struct Floor {
        size: u64,
    }

    fn attr(ino: u64, size: u64) -> FileAttr {
        let dir = ino == 1;
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o755 } else { 0o644 },
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    impl Filesystem for Floor {
        fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
            let _ = config.set_max_readahead(4 << 20);
            let _ = config.set_max_write(1 << 20);
            Ok(())
        }
        fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
            if parent.0 == 1 && name == "zero.bin" {
                reply.entry(&TTL, &attr(FILE, self.size), Generation(0));
            } else {
                reply.error(Errno::from_i32(libc::ENOENT));
            }
        }
        fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
            match ino.0 {
                1 => reply.attr(&TTL, &attr(1, 0)),
                FILE => reply.attr(&TTL, &attr(FILE, self.size)),
                _ => reply.error(Errno::from_i32(libc::ENOENT)),
            }
        }
        fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
            reply.opened(FileHandle(1), FopenFlags::empty());
        }
        fn read(
            &self,
            _req: &Request,
            _ino: INodeNo,
            _fh: FileHandle,
            offset: u64,
            size: u32,
            _flags: OpenFlags,
            _lock_owner: Option<fuser::LockOwner>,
            reply: ReplyData,
        ) {
            let n = (size as u64)
                .min(self.size.saturating_sub(offset))
                .min(ZEROS.len() as u64) as usize;
            reply.data(&ZEROS[..n]);
        }
        fn readdir(
            &self,
            _req: &Request,
            _ino: INodeNo,
            _fh: FileHandle,
            offset: u64,
            mut reply: ReplyDirectory,
        ) {
            if offset == 0 {
                let _ = reply.add(INodeNo(FILE), 1, FileType::RegularFile, "zero.bin");
            }
            reply.ok();
        }
    }

    pub fn main() -> std::io::Result<()> {
        let mut args = std::env::args().skip(1);
        let Some(mnt) = args.next() else {
            eprintln!("usage: fuse-floor MOUNTPOINT [SIZE_MIB]");
            std::process::exit(2);
        };
        let mib: u64 = match args.next().map(|s| s.parse()) {
            None => 1024,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                eprintln!("SIZE_MIB must be a number");
                std::process::exit(2);
            }
        };
        let mut cfg = Config::default();
        cfg.mount_options = vec![MountOption::FSName("fuse-floor".into()), MountOption::RO];
        cfg.n_threads = Some(2);
        let session =
            fuser::Session::new(Floor { size: mib << 20 }, std::path::Path::new(&mnt), &cfg)?;
        // The same kernel read-ahead as davdrive sets where it may (see raise_read_ahead),
        // which needs the session running.
        let raise = std::path::PathBuf::from(&mnt);
        std::thread::spawn(move || {
            davdrive::fs::fuse::raise_read_ahead(&raise);
            println!("fuse-floor: mounted");
        });
        session.run()
    }
}
