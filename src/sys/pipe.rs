//! Pipes and `splice(2)` (Linux), for zero-copy reads (`vfs::zerocopy`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Capacity of the pipes: the most an unprivileged process may ask for (`fs.pipe-max-size`,
/// 1 MiB by default).
pub const PIPE_SIZE: usize = 1 << 20;

/// `splice` flags: move pages rather than copy where possible.
pub const SPLICE_MOVE: u32 = libc::SPLICE_F_MOVE;
/// `splice` flags: as `SPLICE_MOVE`, and never wait for the pipe or the socket.
pub const SPLICE_MOVE_NONBLOCK: u32 = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;

/// Creates a pipe of `PIPE_SIZE` bytes: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, std::fs::File)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let size = libc::c_int::try_from(PIPE_SIZE).unwrap_or(libc::c_int::MAX);
    // SAFETY: plain fcntl on a descriptor we own.
    let got = unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    if got < size {
        return Err(io::Error::other(format!(
            "cannot size a pipe to {PIPE_SIZE} bytes (fs.pipe-max-size)"
        )));
    }
    Ok((r, std::fs::File::from(w)))
}

/// `splice(2)` of up to `n` bytes from `from` to `to`; one of them must be a pipe.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, n: usize, flags: u32) -> io::Result<usize> {
    // SAFETY: both descriptors are borrowed, hence open; null offsets use the file positions.
    let r = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            n,
            flags,
        )
    };
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// Whether the pipe `fd` (its write end) can take more.
pub fn has_room(fd: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r == 1 && p.revents & libc::POLLOUT != 0
}

/// Reads exactly `buf.len()` bytes from `fd` (a pipe holding at least that many).
pub fn read_exact_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let rest = &mut buf[at..];
        // SAFETY: `rest` is valid for writes of its length.
        let r = unsafe { libc::read(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
        match usize::try_from(r) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => at += n,
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}
