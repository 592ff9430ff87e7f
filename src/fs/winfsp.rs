//! The WinFsp frontend: WinFsp's callbacks translated into calls on the Windows semantics
//! layer ([`crate::vfs::windows::WinFs`]), and the core's error kinds into NTSTATUS in one
//! match ([`ntstatus`]). Every rule (dispositions, delete at cleanup, paging, streams,
//! allocation hints) is decided in that layer, never here.
//!
//! Callbacks run on WinFsp's dispatcher threads and block on the mount's tokio runtime.
//! Each callback that the tests drive has an inherent twin (`op_*`) taking plain values,
//! because winfsp-rs's `OpenFileInfo` and `DirMarker` cannot be made outside it: the trait
//! method only moves values between the two. The Wine test at the bottom calls those twins
//! in the order Windows does, against a real server.
//!
//! Volume: case-insensitive and case-preserving, Unicode, no named streams, no reparse
//! points, no extended attributes, no ACLs kept (one security descriptor for everything:
//! the mounting user and SYSTEM; `--allow-other` adds Everyone); file information cached
//! for 1 s, which also keeps Windows' cache manager off (WinFsp caches file data only with
//! an infinite timeout): every read and write comes to davdrive, whose read-ahead and write
//! sessions do the caching, so a file never shows Windows-cached bytes of another version;
//! cleanup posted only for files that were changed or are to be deleted.
//!
//! Threads: cleanup of a written file waits for its upload (the program's CloseHandle
//! returns once the server has the data, as close() does on Linux), so the dispatcher gets
//! [`DISPATCHER_THREADS`] threads; close never waits (what is left runs on the runtime, and
//! unmount waits for it).

use std::ffi::c_void;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use windows_sys::Win32::Foundation::{
    STATUS_ACCESS_DENIED, STATUS_DEVICE_BUSY, STATUS_DIRECTORY_NOT_EMPTY, STATUS_DISK_FULL,
    STATUS_END_OF_FILE, STATUS_FILE_INVALID, STATUS_FILE_IS_A_DIRECTORY, STATUS_FILE_TOO_LARGE,
    STATUS_INVALID_NETWORK_RESPONSE, STATUS_IO_TIMEOUT, STATUS_MEDIA_WRITE_PROTECTED,
    STATUS_NETWORK_UNREACHABLE, STATUS_NOT_A_DIRECTORY, STATUS_NOT_SAME_DEVICE,
    STATUS_NOT_SUPPORTED, STATUS_OBJECT_NAME_COLLISION, STATUS_OBJECT_NAME_INVALID,
    STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_PATH_NOT_FOUND, STATUS_SHARING_VIOLATION,
    STATUS_TRUST_FAILURE, STATUS_UNEXPECTED_IO_ERROR, STATUS_UNSUCCESSFUL,
};
use winfsp::filesystem::{
    DirInfo, DirMarker, FileInfo, FileSecurity, FileSystemContext, ModificationDescriptor,
    OpenFileInfo, VolumeInfo, WideNameInfo,
};
use winfsp::{FspError, U16CStr};
use winfsp_sys::{FILE_ACCESS_RIGHTS, FILE_FLAGS_AND_ATTRIBUTES};

use crate::dav::ErrorKind;
use crate::vfs::VfsError;
use crate::vfs::windows::{WinAccess, WinFs, WinHandle, WinInfo, WinOpened};

/// The user name or password is incorrect (not in windows-sys's Foundation).
const STATUS_LOGON_FAILURE: i32 = 0xC000_006Du32 as i32;
/// WinFsp's dispatcher threads: cleanups waiting for uploads must not starve browsing.
pub const DISPATCHER_THREADS: u32 = 32;
/// FILE_DIRECTORY_FILE (create options): make a folder.
const FILE_DIRECTORY_FILE: u32 = 0x0000_0001;
/// FILE_WRITE_DATA | FILE_APPEND_DATA (access rights): the handle writes.
const WRITE_RIGHTS: u32 = 0x0002 | 0x0004;
/// WinFsp's FspCleanupDelete flag.
const CLEANUP_DELETE: u32 = 0x01;
const FILE_ATTRIBUTE_READONLY: u32 = 0x01;
const FILE_ATTRIBUTE_HIDDEN: u32 = 0x02;
const FILE_ATTRIBUTE_DIRECTORY: u32 = 0x10;
const FILE_ATTRIBUTE_NORMAL: u32 = 0x80;
/// Seconds from 1601-01-01 (FILETIME's epoch) to 1970-01-01.
const FILETIME_TO_UNIX: u64 = 11_644_473_600;
/// The allocation unit shown (allocation sizes are rounded up to it).
const ALLOCATION_UNIT: u64 = 4096;

/// The NTSTATUS for each error kind of the core: one exhaustive match.
pub fn ntstatus(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::NotFound => STATUS_OBJECT_NAME_NOT_FOUND,
        ErrorKind::PathNotFound => STATUS_OBJECT_PATH_NOT_FOUND,
        ErrorKind::PermissionDenied => STATUS_ACCESS_DENIED,
        ErrorKind::AuthRequired => STATUS_LOGON_FAILURE,
        ErrorKind::AlreadyExists => STATUS_OBJECT_NAME_COLLISION,
        ErrorKind::NotEmpty => STATUS_DIRECTORY_NOT_EMPTY,
        ErrorKind::IsADirectory => STATUS_FILE_IS_A_DIRECTORY,
        ErrorKind::NotADirectory => STATUS_NOT_A_DIRECTORY,
        ErrorKind::Locked => STATUS_SHARING_VIOLATION,
        ErrorKind::NoSpace => STATUS_DISK_FULL,
        ErrorKind::TooLarge => STATUS_FILE_TOO_LARGE,
        ErrorKind::Stale => STATUS_FILE_INVALID,
        ErrorKind::Conflict => STATUS_UNSUCCESSFUL,
        ErrorKind::Unsupported => STATUS_NOT_SUPPORTED,
        ErrorKind::CrossDevice => STATUS_NOT_SAME_DEVICE,
        ErrorKind::Busy => STATUS_DEVICE_BUSY,
        ErrorKind::Unreachable => STATUS_NETWORK_UNREACHABLE,
        ErrorKind::TimedOut => STATUS_IO_TIMEOUT,
        ErrorKind::InvalidName => STATUS_OBJECT_NAME_INVALID,
        ErrorKind::ReadOnly => STATUS_MEDIA_WRITE_PROTECTED,
        ErrorKind::TlsFailure => STATUS_TRUST_FAILURE,
        ErrorKind::Protocol => STATUS_INVALID_NETWORK_RESPONSE,
        ErrorKind::Io => STATUS_UNEXPECTED_IO_ERROR,
    }
}

fn fsp(e: VfsError) -> FspError {
    e.report();
    FspError::NTSTATUS(ntstatus(e.kind))
}

/// A FILETIME (100 ns since 1601) for `t`.
pub fn filetime(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    (since.as_secs() + FILETIME_TO_UNIX) * 10_000_000 + u64::from(since.subsec_nanos() / 100)
}

/// The FILE_ATTRIBUTE_* bits of an entry (NORMAL only when no other bit is set).
pub fn attributes(info: &WinInfo) -> u32 {
    let bits = [
        (info.dir, FILE_ATTRIBUTE_DIRECTORY),
        (info.read_only, FILE_ATTRIBUTE_READONLY),
        (info.hidden, FILE_ATTRIBUTE_HIDDEN),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .fold(0, |acc, (_, bit)| acc | bit);
    if bits == 0 {
        FILE_ATTRIBUTE_NORMAL
    } else {
        bits
    }
}

/// Fills WinFsp's file information from the layer's.
pub fn fill(info: &WinInfo, out: &mut FileInfo) {
    out.file_attributes = attributes(info);
    out.reparse_tag = 0;
    out.file_size = if info.dir { 0 } else { info.size };
    out.allocation_size = out.file_size.div_ceil(ALLOCATION_UNIT) * ALLOCATION_UNIT;
    out.creation_time = filetime(info.created);
    out.last_access_time = filetime(info.written);
    out.last_write_time = filetime(info.written);
    out.change_time = filetime(info.changed);
    out.index_number = info.index;
    out.hard_links = 0;
    out.ea_size = 0;
}

/// A path from WinFsp (UTF-16, `\`-separated); names that are not valid UTF-16 are invalid.
fn path_of(name: &U16CStr) -> winfsp::Result<String> {
    name.to_string()
        .map_err(|_| FspError::NTSTATUS(STATUS_OBJECT_NAME_INVALID))
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

/// The WinFsp file system of one mount.
pub struct DavDrive {
    fs: WinFs,
    rt: tokio::runtime::Handle,
    /// The one self-relative security descriptor every file and folder shows.
    security: Vec<u8>,
    label: String,
    /// Told when WinFsp's dispatcher stops (the drive was removed from outside).
    stopped: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl DavDrive {
    pub fn new(fs: WinFs, rt: tokio::runtime::Handle, security: Vec<u8>, label: String) -> Self {
        DavDrive {
            fs,
            rt,
            security,
            label,
            stopped: std::sync::Mutex::new(None),
        }
    }

    /// `tx` fires when the dispatcher stops.
    pub fn on_stop(self, tx: tokio::sync::oneshot::Sender<()>) -> Self {
        if let Ok(mut s) = self.stopped.lock() {
            *s = Some(tx);
        }
        self
    }

    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// GetSecurityByName without the descriptor: the attributes of `name`.
    pub fn op_attributes(&self, name: &U16CStr) -> winfsp::Result<u32> {
        let path = path_of(name)?;
        let info = self.block(self.fs.info_by_name(&path)).map_err(fsp)?;
        Ok(attributes(&info))
    }

    /// Open: returns the handle and the normalized name (the server's spelling).
    pub fn op_open(
        &self,
        name: &U16CStr,
        granted_access: u32,
        info: &mut FileInfo,
    ) -> winfsp::Result<(WinHandle, Vec<u16>)> {
        let path = path_of(name)?;
        let access = WinAccess {
            write: granted_access & WRITE_RIGHTS != 0,
        };
        let o = self.block(self.fs.open(&path, access)).map_err(fsp)?;
        Ok(self.opened(o, info))
    }

    /// Create: a new file, or a folder with FILE_DIRECTORY_FILE. The allocation size is a
    /// hint and changes nothing.
    pub fn op_create(
        &self,
        name: &U16CStr,
        create_options: u32,
        info: &mut FileInfo,
    ) -> winfsp::Result<(WinHandle, Vec<u16>)> {
        let path = path_of(name)?;
        let dir = create_options & FILE_DIRECTORY_FILE != 0;
        let o = self.block(self.fs.create(&path, dir)).map_err(fsp)?;
        Ok(self.opened(o, info))
    }

    fn opened(&self, o: WinOpened, info: &mut FileInfo) -> (WinHandle, Vec<u16>) {
        fill(&o.info, info);
        (o.handle, wide(&o.normalized))
    }

    /// Cleanup, with WinFsp's flags (FspCleanupDelete sends the DELETE).
    pub fn op_cleanup(&self, h: &WinHandle, flags: u32) {
        let _ = self.block(self.fs.cleanup(h, flags & CLEANUP_DELETE != 0));
    }

    /// Close: never waits. What the core still does for the handle (an upload cleanup did
    /// not finish) runs on the runtime; unmount waits for it.
    pub fn op_close(&self, h: WinHandle) {
        self.rt.spawn(self.fs.close(h));
    }

    /// ReadDirectory: fills `buffer` with the entries after `marker`; returns the bytes
    /// used. The end marker is written only when every remaining entry fitted.
    pub fn op_read_directory(
        &self,
        h: &WinHandle,
        marker: Option<&U16CStr>,
        buffer: &mut [u8],
    ) -> winfsp::Result<u32> {
        let marker = match marker {
            Some(m) => Some(path_of(m)?),
            None => None,
        };
        let page = self
            .block(self.fs.read_directory(h, marker.as_deref()))
            .map_err(fsp)?;
        let mut cursor = 0u32;
        for e in page.iter() {
            let mut entry: DirInfo = DirInfo::new();
            entry.set_name_raw(wide(&e.name).as_slice())?;
            fill(&e.info, entry.file_info_mut());
            if !entry.append_to_buffer(buffer, &mut cursor) {
                return Ok(cursor);
            }
        }
        DirInfo::<255>::finalize_buffer(buffer, &mut cursor);
        Ok(cursor)
    }

    pub fn op_read(&self, h: &WinHandle, buffer: &mut [u8], offset: u64) -> winfsp::Result<u32> {
        let len = u32::try_from(buffer.len()).unwrap_or(u32::MAX);
        let data = self.block(self.fs.read(h, offset, len)).map_err(fsp)?;
        if data.is_empty() && !buffer.is_empty() {
            return Err(FspError::NTSTATUS(STATUS_END_OF_FILE));
        }
        let n = data.len().min(buffer.len());
        buffer[..n].copy_from_slice(&data[..n]);
        Ok(n as u32)
    }

    pub fn op_write(
        &self,
        h: &WinHandle,
        data: &[u8],
        offset: u64,
        to_end: bool,
        constrained: bool,
        info: &mut FileInfo,
    ) -> winfsp::Result<u32> {
        let (n, now) = self
            .block(self.fs.write(h, data, offset, to_end, constrained))
            .map_err(fsp)?;
        fill(&now, info);
        Ok(n)
    }

    pub fn op_set_size(
        &self,
        h: &WinHandle,
        size: u64,
        allocation: bool,
        info: &mut FileInfo,
    ) -> winfsp::Result<()> {
        let now = if allocation {
            self.block(self.fs.set_allocation(h, size))
        } else {
            self.block(self.fs.set_size(h, size))
        }
        .map_err(fsp)?;
        fill(&now, info);
        Ok(())
    }

    pub fn op_set_delete(&self, h: &WinHandle, delete: bool) -> winfsp::Result<()> {
        self.block(self.fs.set_delete(h, delete)).map_err(fsp)
    }

    pub fn op_rename(&self, from: &U16CStr, to: &U16CStr, replace: bool) -> winfsp::Result<()> {
        let (from, to) = (path_of(from)?, path_of(to)?);
        self.block(self.fs.rename(&from, &to, replace)).map_err(fsp)
    }

    pub fn op_info(&self, h: &WinHandle, info: &mut FileInfo) -> winfsp::Result<()> {
        let now = self.block(self.fs.info(h)).map_err(fsp)?;
        fill(&now, info);
        Ok(())
    }

    /// The volume's size and free space.
    pub fn op_volume(&self) -> winfsp::Result<(u64, u64)> {
        self.block(self.fs.volume()).map_err(fsp)
    }

    fn copy_security(&self, out: Option<&mut [c_void]>) {
        if let Some(out) = out
            && out.len() >= self.security.len()
        {
            // SAFETY: `out` has room for the descriptor's bytes (checked above); the two
            // buffers are distinct allocations.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.security.as_ptr(),
                    out.as_mut_ptr().cast::<u8>(),
                    self.security.len(),
                );
            }
        }
    }
}

impl FileSystemContext for DavDrive {
    type FileContext = WinHandle;

    fn get_security_by_name(
        &self,
        file_name: &U16CStr,
        security_descriptor: Option<&mut [c_void]>,
        _reparse_point_resolver: impl FnOnce(&U16CStr) -> Option<FileSecurity>,
    ) -> winfsp::Result<FileSecurity> {
        let attributes = self.op_attributes(file_name)?;
        self.copy_security(security_descriptor);
        Ok(FileSecurity {
            reparse: false,
            sz_security_descriptor: self.security.len() as u64,
            attributes,
        })
    }

    fn open(
        &self,
        file_name: &U16CStr,
        _create_options: u32,
        granted_access: FILE_ACCESS_RIGHTS,
        file_info: &mut OpenFileInfo,
    ) -> winfsp::Result<Self::FileContext> {
        let (h, normalized) = self.op_open(file_name, granted_access, file_info.as_mut())?;
        file_info.set_normalized_name(&normalized, None);
        Ok(h)
    }

    fn close(&self, context: Self::FileContext) {
        self.op_close(context);
    }

    fn create(
        &self,
        file_name: &U16CStr,
        create_options: u32,
        _granted_access: FILE_ACCESS_RIGHTS,
        _file_attributes: FILE_FLAGS_AND_ATTRIBUTES,
        _security_descriptor: Option<&[c_void]>,
        _allocation_size: u64,
        _extra_buffer: Option<&[u8]>,
        _extra_buffer_is_reparse_point: bool,
        file_info: &mut OpenFileInfo,
    ) -> winfsp::Result<Self::FileContext> {
        let (h, normalized) = self.op_create(file_name, create_options, file_info.as_mut())?;
        file_info.set_normalized_name(&normalized, None);
        Ok(h)
    }

    fn cleanup(&self, context: &Self::FileContext, _file_name: Option<&U16CStr>, flags: u32) {
        self.op_cleanup(context, flags);
    }

    fn flush(
        &self,
        context: Option<&Self::FileContext>,
        file_info: &mut FileInfo,
    ) -> winfsp::Result<()> {
        let Some(h) = context else {
            return Ok(()); // the volume: every upload runs as soon as its file is closed
        };
        self.block(self.fs.flush(h)).map_err(fsp)?;
        self.op_info(h, file_info)
    }

    fn get_file_info(
        &self,
        context: &Self::FileContext,
        file_info: &mut FileInfo,
    ) -> winfsp::Result<()> {
        self.op_info(context, file_info)
    }

    fn get_security(
        &self,
        _context: &Self::FileContext,
        security_descriptor: Option<&mut [c_void]>,
    ) -> winfsp::Result<u64> {
        self.copy_security(security_descriptor);
        Ok(self.security.len() as u64)
    }

    /// Security cannot be kept on a WebDAV server: accepted and not stored, as chmod is on
    /// Linux (copy tools that set it keep going).
    fn set_security(
        &self,
        _context: &Self::FileContext,
        _security_information: u32,
        _modification_descriptor: ModificationDescriptor,
    ) -> winfsp::Result<()> {
        Ok(())
    }

    fn overwrite(
        &self,
        context: &Self::FileContext,
        _file_attributes: FILE_FLAGS_AND_ATTRIBUTES,
        _replace_file_attributes: bool,
        _allocation_size: u64,
        _extra_buffer: Option<&[u8]>,
        file_info: &mut FileInfo,
    ) -> winfsp::Result<()> {
        let now = self.block(self.fs.overwrite(context)).map_err(fsp)?;
        fill(&now, file_info);
        Ok(())
    }

    fn read_directory(
        &self,
        context: &Self::FileContext,
        _pattern: Option<&U16CStr>,
        marker: DirMarker,
        buffer: &mut [u8],
    ) -> winfsp::Result<u32> {
        self.op_read_directory(context, marker.inner_as_cstr(), buffer)
    }

    fn rename(
        &self,
        _context: &Self::FileContext,
        file_name: &U16CStr,
        new_file_name: &U16CStr,
        replace_if_exists: bool,
    ) -> winfsp::Result<()> {
        self.op_rename(file_name, new_file_name, replace_if_exists)
    }

    fn set_basic_info(
        &self,
        context: &Self::FileContext,
        _file_attributes: u32,
        _creation_time: u64,
        _last_access_time: u64,
        _last_write_time: u64,
        _last_change_time: u64,
        file_info: &mut FileInfo,
    ) -> winfsp::Result<()> {
        let now = self.block(self.fs.set_basic_info(context)).map_err(fsp)?;
        fill(&now, file_info);
        Ok(())
    }

    fn set_delete(
        &self,
        context: &Self::FileContext,
        _file_name: &U16CStr,
        delete_file: bool,
    ) -> winfsp::Result<()> {
        self.op_set_delete(context, delete_file)
    }

    fn set_file_size(
        &self,
        context: &Self::FileContext,
        new_size: u64,
        set_allocation_size: bool,
        file_info: &mut FileInfo,
    ) -> winfsp::Result<()> {
        self.op_set_size(context, new_size, set_allocation_size, file_info)
    }

    fn read(
        &self,
        context: &Self::FileContext,
        buffer: &mut [u8],
        offset: u64,
    ) -> winfsp::Result<u32> {
        self.op_read(context, buffer, offset)
    }

    fn write(
        &self,
        context: &Self::FileContext,
        buffer: &[u8],
        offset: u64,
        write_to_eof: bool,
        constrained_io: bool,
        file_info: &mut FileInfo,
    ) -> winfsp::Result<u32> {
        self.op_write(
            context,
            buffer,
            offset,
            write_to_eof,
            constrained_io,
            file_info,
        )
    }

    fn dispatcher_stopped(&self, normally: bool) {
        if !normally {
            tracing::warn!("WinFsp's dispatcher stopped unexpectedly: the drive is gone");
        }
        if let Some(tx) = self.stopped.lock().ok().and_then(|mut s| s.take()) {
            let _ = tx.send(());
        }
    }

    fn get_volume_info(&self, out_volume_info: &mut VolumeInfo) -> winfsp::Result<()> {
        let (total, free) = self.op_volume()?;
        out_volume_info.total_size = total;
        out_volume_info.free_size = free;
        out_volume_info.set_volume_label(&self.label);
        Ok(())
    }
}

/// How the volume is presented.
#[derive(Debug, Clone)]
pub struct WinFspOptions {
    /// The volume label Explorer shows.
    pub label: String,
    /// The network prefix (`\davdrive\host\path`), `None` for a fixed drive.
    pub prefix: Option<String>,
    pub read_only: bool,
    /// Every user of this computer may use the drive (`--allow-other`).
    pub allow_other: bool,
}

/// A running WinFsp file system; [`Session::stop`] unmounts it.
pub struct Session {
    host: winfsp::host::FileSystemHost<DavDrive, winfsp::host::FineGuard>,
}

impl Session {
    /// Removes the drive and stops the dispatcher (open handles get errors from now on).
    pub fn stop(&mut self) {
        self.host.unmount();
        self.host.stop();
    }
}

/// The volume parameters of a davdrive mount (see the module's header).
pub fn volume_params(opts: &WinFspOptions) -> winfsp::host::VolumeParams {
    let mut vp = winfsp::host::VolumeParams::new();
    vp.sector_size(4096)
        .sectors_per_allocation_unit(1)
        .max_component_length(255)
        .volume_creation_time(filetime(SystemTime::now()))
        .volume_serial_number(serial(&opts.label))
        .file_info_timeout(1000)
        .case_sensitive_search(false)
        .case_preserved_names(true)
        .unicode_on_disk(true)
        .persistent_acls(false)
        .reparse_points(false)
        .named_streams(false)
        .extended_attributes(false)
        .read_only_volume(opts.read_only)
        .post_cleanup_when_modified_only(true)
        .flush_and_purge_on_cleanup(true)
        .filesystem_name("davdrive");
    if let Some(prefix) = &opts.prefix {
        vp.prefix(prefix);
    }
    vp
}

fn serial(label: &str) -> u32 {
    label.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Mounts `fs` on `at` (`X:` or a folder that does not exist yet) and starts serving it.
/// `ended` fires when the dispatcher stops, also when the drive is removed from outside
/// (Explorer's Disconnect, WinFsp's driver stopping).
pub fn mount(
    fs: WinFs,
    rt: tokio::runtime::Handle,
    at: &std::path::Path,
    opts: &WinFspOptions,
    ended: tokio::sync::oneshot::Sender<()>,
) -> Result<Session, String> {
    load()?;
    let security = security_descriptor(opts.allow_other)?;
    let drive = DavDrive::new(fs, rt, security, opts.label.clone()).on_stop(ended);
    let mut host = winfsp::host::FileSystemHost::<DavDrive, winfsp::host::FineGuard>::new(
        volume_params(opts),
        drive,
    )
    .map_err(|e| explain("WinFsp cannot make the file system", at, e.into()))?;
    host.mount(at.as_os_str())
        .map_err(|e| explain("WinFsp cannot mount", at, e.into()))?;
    host.start_with_threads(DISPATCHER_THREADS)
        .map_err(|e| explain("WinFsp cannot start", at, e.into()))?;
    Ok(Session { host })
}

/// What to tell the user about a WinFsp failure.
fn explain(what: &str, at: &std::path::Path, e: FspError) -> String {
    let status = e.to_ntstatus() as u32;
    let why = match status {
        0xC000_000E => {
            "WinFsp's driver is not running: reinstall WinFsp (https://winfsp.dev/rel/) \
                        or restart Windows"
                .to_owned()
        }
        0xC000_0035 | 0xC000_0022 => format!(
            "{} is in use (another drive or folder there); pick another letter, or * for the \
             next free one",
            at.display()
        ),
        0xC000_0033 | 0xC000_003A => format!(
            "{}: not a drive letter or a folder whose parent exists",
            at.display()
        ),
        _ => format!("NTSTATUS {status:#010x}"),
    };
    format!("{what} ({}): {why}", at.display())
}

/// Loads WinFsp's DLL from where its installer put it (it is not on PATH), then lets the
/// winfsp crate find it. davdrive.exe starts without WinFsp (the DLL is delay-loaded): only
/// mounting needs it.
pub fn load() -> Result<(), String> {
    use windows_sys::Win32::System::LibraryLoader::LoadLibraryW;
    if let Some(dir) = install_dir() {
        let dll: Vec<u16> = format!("{dir}\\bin\\winfsp-x64.dll")
            .encode_utf16()
            .chain([0])
            .collect();
        // SAFETY: `dll` is a NUL-terminated UTF-16 string that outlives the call.
        unsafe { LoadLibraryW(dll.as_ptr()) };
    }
    winfsp::winfsp_init().map(|_| ()).map_err(|_| {
        "WinFsp is not installed (davdrive needs WinFsp 2.x to show a drive): get it from \
         https://winfsp.dev/rel/ or with `winget install WinFsp.WinFsp`, then mount again"
            .to_owned()
    })
}

/// WinFsp's install folder, from the registry (`HKLM\SOFTWARE\WOW6432Node\WinFsp`).
fn install_dir() -> Option<String> {
    use windows_sys::Win32::System::Registry::{HKEY_LOCAL_MACHINE, RRF_RT_REG_SZ, RegGetValueW};
    let key: Vec<u16> = "SOFTWARE\\WOW6432Node\\WinFsp\0".encode_utf16().collect();
    let value: Vec<u16> = "InstallDir\0".encode_utf16().collect();
    let mut buf = [0u16; 1024];
    let mut size = (buf.len() * 2) as u32;
    // SAFETY: every pointer is valid for the call; `size` is the buffer's size in bytes.
    let status = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            key.as_ptr(),
            value.as_ptr(),
            RRF_RT_REG_SZ,
            std::ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            &mut size,
        )
    };
    if status != 0 {
        return None;
    }
    let len = (size as usize / 2).min(buf.len());
    let s = String::from_utf16_lossy(&buf[..len]);
    let s = s.trim_end_matches('\0').trim_end_matches('\\').to_owned();
    (!s.is_empty()).then_some(s)
}

/// The one security descriptor of every file and folder: owned by the mounting user, who
/// (with SYSTEM) has full access; `everyone` adds Everyone (`--allow-other`).
pub fn security_descriptor(everyone: bool) -> Result<Vec<u8>, String> {
    let sid = crate::sys::winsec::user_sid()?;
    let mut sddl = format!("O:{sid}G:{sid}D:P(A;;FA;;;{sid})(A;;FA;;;SY)");
    if everyone {
        sddl.push_str("(A;;FA;;;WD)");
    }
    let sd = crate::sys::winsec::descriptor(&sddl)?;
    // WinFsp's first buffer for a descriptor holds 1024 bytes, and winfsp-rs cannot report
    // a larger need (STATUS_BUFFER_OVERFLOW with the size): stay below it. A user SID and
    // three entries take about 150.
    if sd.len() > 1024 {
        return Err(format!(
            "the security descriptor {sddl} is too large ({} bytes)",
            sd.len()
        ));
    }
    Ok(sd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntstatus_table() {
        use ErrorKind::*;
        let table = [
            (NotFound, 0xC000_0034u32),
            (PathNotFound, 0xC000_003A),
            (PermissionDenied, 0xC000_0022),
            (AuthRequired, 0xC000_006D),
            (AlreadyExists, 0xC000_0035),
            (NotEmpty, 0xC000_0101),
            (IsADirectory, 0xC000_00BA),
            (NotADirectory, 0xC000_0103),
            (Locked, 0xC000_0043),
            (NoSpace, 0xC000_007F),
            (TooLarge, 0xC000_0904),
            (Stale, 0xC000_0098),
            (Conflict, 0xC000_0001),
            (Unsupported, 0xC000_00BB),
            (CrossDevice, 0xC000_00D4),
            (Busy, 0x8000_0011),
            (Unreachable, 0xC000_023C),
            (TimedOut, 0xC000_00B5),
            (InvalidName, 0xC000_0033),
            (ReadOnly, 0xC000_00A2),
            (TlsFailure, 0xC000_0190),
            (Protocol, 0xC000_00C3),
            (Io, 0xC000_00E9),
        ];
        for (kind, want) in table {
            assert_eq!(ntstatus(kind) as u32, want, "{kind:?}");
        }
    }

    #[test]
    fn filetimes_count_from_1601() {
        assert_eq!(filetime(UNIX_EPOCH), 116_444_736_000_000_000);
        assert_eq!(
            filetime(UNIX_EPOCH + Duration::from_nanos(1_500)),
            116_444_736_000_000_015
        );
    }

    #[test]
    fn attributes_of_files_folders_and_read_only_ones() {
        let mut i = WinInfo {
            dir: false,
            size: 5,
            read_only: false,
            created: UNIX_EPOCH,
            written: UNIX_EPOCH,
            changed: UNIX_EPOCH,
            index: 9,
            hidden: false,
        };
        assert_eq!(attributes(&i), FILE_ATTRIBUTE_NORMAL);
        i.read_only = true;
        assert_eq!(attributes(&i), FILE_ATTRIBUTE_READONLY);
        i.dir = true;
        assert_eq!(
            attributes(&i),
            FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_READONLY
        );
        let mut out = FileInfo::default();
        fill(&i, &mut out);
        assert_eq!((out.file_size, out.index_number), (0, 9));
        i.dir = false;
        i.size = 5000;
        fill(&i, &mut out);
        assert_eq!((out.file_size, out.allocation_size), (5000, 8192));
    }

    #[test]
    fn the_security_descriptor_is_the_users() {
        let sd = security_descriptor(false).expect("descriptor");
        // A self-relative descriptor: revision 1, SE_SELF_RELATIVE in its control word.
        assert_eq!(sd[0], 1);
        assert_ne!(u16::from_le_bytes([sd[2], sd[3]]) & 0x8000, 0);
        let everyone = security_descriptor(true).expect("descriptor");
        assert!(everyone.len() > sd.len());
    }

    /// FSP_FSCTL_DIR_INFO entries of a ReadDirectory buffer: (name, attributes); `true`
    /// when the end marker was among them.
    fn entries_of(buf: &[u8]) -> (Vec<(String, u32)>, bool) {
        let head = std::mem::size_of::<DirInfo<0>>();
        let (mut out, mut off) = (Vec::new(), 0usize);
        while off + 2 <= buf.len() {
            let size = usize::from(u16::from_le_bytes([buf[off], buf[off + 1]]));
            if size == 0 {
                return (out, true);
            }
            let attrs =
                u32::from_le_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
            let name: Vec<u16> = buf[off + head..off + size]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            out.push((String::from_utf16_lossy(&name), attrs));
            off += size.div_ceil(8) * 8;
        }
        (out, false)
    }

    fn w(s: &str) -> winfsp::U16CString {
        winfsp::U16CString::from_str(s).expect("no NUL")
    }

    fn code<T: std::fmt::Debug>(r: winfsp::Result<T>) -> u32 {
        r.expect_err("an error").to_ntstatus() as u32
    }

    /// The adapter driven in the order Windows calls it, against a real WebDAV server that
    /// `scripts/windows-check` starts (Apache on 127.0.0.1; its folder is reached through
    /// Wine's Z: drive). Needs WinFsp's DLL (the one winfsp-sys ships, copied next to the
    /// test) for the directory-buffer functions; no driver is involved.
    #[test]
    fn windows_order_through_the_adapter_against_a_real_server() {
        let (Ok(url), Ok(root)) = (
            std::env::var("DAVDRIVE_WINE_DAV_URL"),
            std::env::var("DAVDRIVE_WINE_DAV_ROOT"),
        ) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "scripts/windows-check starts a server and sets DAVDRIVE_WINE_DAV_URL and _ROOT"
            );
            eprintln!("skipped: no DAVDRIVE_WINE_DAV_URL (run scripts/windows-check)");
            return;
        };
        let root = std::path::PathBuf::from(root);
        let on_server = |rel: &str| std::fs::read(root.join(rel)).ok();
        winfsp::winfsp_init().expect("winfsp-x64.dll next to the test");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let cache = std::env::temp_dir().join(format!("davdrive-wine-{}", std::process::id()));
        let client = crate::dav::DavClient::new(crate::dav::ClientConfig::new(
            url::Url::parse(&url).expect("url"),
        ))
        .expect("client");
        let cfg = crate::vfs::VfsConfig {
            cache_dir: cache.join("mount"),
            names: crate::vfs::NamePolicy::windows(),
            ..crate::vfs::VfsConfig::default()
        };
        let vfs = crate::vfs::Vfs::new(client, cfg).expect("core");
        rt.block_on(vfs.probe()).expect("probe");
        let d = DavDrive::new(
            WinFs::new(vfs),
            rt.handle().clone(),
            security_descriptor(false).expect("sd"),
            "test".into(),
        );
        let mut fi = FileInfo::default();
        assert_eq!(
            d.op_attributes(&w("\\")).expect("root"),
            FILE_ATTRIBUTE_DIRECTORY
        );

        // Create, write, cleanup, close: on the server.
        let (h, norm) = d.op_create(&w("\\Report.TXT"), 0, &mut fi).expect("create");
        assert_eq!(String::from_utf16_lossy(&norm), "\\Report.TXT");
        assert_eq!(
            d.op_write(&h, b"hello windows", 0, false, false, &mut fi)
                .expect("write"),
            13
        );
        assert_eq!(fi.file_size, 13);
        d.op_cleanup(&h, 0);
        d.op_close(h);
        assert_eq!(
            on_server("Report.TXT").as_deref(),
            Some(&b"hello windows"[..])
        );
        // Open in another case: the server's spelling; read to the end, then END_OF_FILE.
        let (h, norm) = d.op_open(&w("\\REPORT.txt"), 0x1, &mut fi).expect("open");
        assert_eq!(String::from_utf16_lossy(&norm), "\\Report.TXT");
        let mut buf = [0u8; 64];
        assert_eq!(d.op_read(&h, &mut buf, 0).expect("read"), 13);
        assert_eq!(&buf[..13], b"hello windows");
        assert_eq!(code(d.op_read(&h, &mut buf, 13)), 0xC000_0011);
        d.op_close(h);
        // A missing folder on the way is not a missing name.
        assert_eq!(
            code(d.op_open(&w("\\Nowhere\\x.txt"), 0x1, &mut fi)),
            0xC000_003A
        );
        assert_eq!(
            code(d.op_open(&w("\\nothing.txt"), 0x1, &mut fi)),
            0xC000_0034
        );
        // FILE_CREATE on an existing name: a collision.
        assert_eq!(
            code(d.op_create(&w("\\report.txt"), 0, &mut fi)),
            0xC000_0035
        );
        // A named stream: refused, the file untouched.
        assert_eq!(
            code(d.op_open(&w("\\Report.TXT:Zone.Identifier"), 0x2, &mut fi)),
            0xC000_0033
        );
        assert_eq!(
            on_server("Report.TXT").as_deref(),
            Some(&b"hello windows"[..])
        );

        // A folder of 30 files, listed through a small buffer page by page with the marker.
        let (h, _) = d
            .op_create(&w("\\Folder"), FILE_DIRECTORY_FILE, &mut fi)
            .expect("mkdir");
        d.op_close(h);
        for i in 0..30 {
            let (h, _) = d
                .op_create(&w(&format!("\\Folder\\f{i:02}.txt")), 0, &mut fi)
                .expect("create");
            d.op_write(&h, format!("{i}").as_bytes(), 0, false, false, &mut fi)
                .expect("write");
            d.op_cleanup(&h, 0);
            d.op_close(h);
        }
        let (dir, _) = d
            .op_open(&w("\\folder"), 0x1, &mut fi)
            .expect("open folder");
        let (mut seen, mut marker, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let mut page = vec![0u8; 600];
            let m = marker.as_deref().map(w);
            let n = d
                .op_read_directory(&dir, m.as_deref(), &mut page)
                .expect("page") as usize;
            let (entries, end) = entries_of(&page[..n]);
            pages += 1;
            seen.extend(entries.iter().map(|(n, _)| n.clone()));
            if end || entries.is_empty() {
                break;
            }
            marker = entries.last().map(|(n, _)| n.clone());
            assert!(pages < 100, "paging does not end");
        }
        assert!(
            pages > 2,
            "a 600-byte buffer holds a few entries: {pages} pages"
        );
        let mut want = vec![".".to_owned(), "..".to_owned()];
        want.extend((0..30).map(|i| format!("f{i:02}.txt")));
        assert_eq!(seen, want);
        // SetDelete on a folder that is not empty: refused, nothing deleted.
        assert_eq!(code(d.op_set_delete(&dir, true)), 0xC000_0101);
        d.op_cleanup(&dir, 0);
        d.op_close(dir);
        assert!(on_server("Folder/f00.txt").is_some());
        // Windows opens a rename's target folder with FILE_ADD_FILE | SYNCHRONIZE first.
        let (parent, _) = d
            .op_open(&w("\\Folder"), 0x0010_0002, &mut fi)
            .expect("the target folder, opened with write rights");
        assert_ne!(fi.file_attributes & FILE_ATTRIBUTE_DIRECTORY, 0);
        // A case-only rename is sent; rename without replace onto an existing name fails.
        d.op_rename(&w("\\Folder\\f00.txt"), &w("\\Folder\\F00.TXT"), false)
            .expect("case");
        // Wine's Z: drive ignores case: the spelling is read from the listing.
        let names: Vec<String> = std::fs::read_dir(root.join("Folder"))
            .expect("ls")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        assert!(
            names.iter().any(|n| n == "F00.TXT") && !names.iter().any(|n| n == "f00.txt"),
            "{names:?}"
        );
        assert_eq!(
            code(d.op_rename(&w("\\Folder\\f01.txt"), &w("\\Folder\\F00.txt"), false)),
            0xC000_0035
        );
        d.op_close(parent);
        // Delete on close: the DELETE at cleanup.
        let (h, _) = d
            .op_open(&w("\\Folder\\f02.txt"), 0x1_0000, &mut fi)
            .expect("open");
        d.op_set_delete(&h, true).expect("mark");
        assert!(on_server("Folder/f02.txt").is_some(), "not before cleanup");
        d.op_cleanup(&h, CLEANUP_DELETE);
        d.op_close(h);
        assert!(on_server("Folder/f02.txt").is_none());
        // An allocation hint of 1 GiB, then sequential writes: the file, not 1 GiB.
        let (h, _) = d.op_create(&w("\\big.bin"), 0, &mut fi).expect("create");
        d.op_set_size(&h, 1 << 30, true, &mut fi).expect("hint");
        assert_eq!(fi.file_size, 0);
        let chunk = vec![7u8; 65536];
        for i in 0..16u64 {
            d.op_write(&h, &chunk, i * 65536, false, false, &mut fi)
                .expect("write");
        }
        d.op_cleanup(&h, 0);
        d.op_close(h);
        assert_eq!(on_server("big.bin").map(|b| b.len()), Some(1 << 20));
        let (total, free) = d.op_volume().expect("volume");
        assert!(total >= free && free > 0);
        let _ = std::fs::remove_dir_all(&cache);
    }
}
