//! Private files and folders: who we are, and opening without following a symbolic link.

/// Opening with `o` fails if the last component of the path is a symbolic link (Unix; a
/// no-op elsewhere).
pub fn no_follow(o: &mut std::fs::OpenOptions) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    #[cfg(not(unix))]
    let _ = o;
}

/// This process's effective user id (Unix).
#[cfg(unix)]
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
