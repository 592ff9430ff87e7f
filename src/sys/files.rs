//! Private files and folders: who we are, opening without following a symbolic link, and
//! writing a file only its user can read.

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

/// Options that open a file for writing, created readable by the user only, never through a
/// symbolic link.
fn private_writer(truncate: bool) -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(truncate);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    no_follow(&mut o);
    o
}

/// Writes `bytes` to `p` (created or truncated), readable by the user only, never through a
/// symbolic link.
pub fn write_private(p: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    std::io::Write::write_all(&mut private_writer(true).open(p)?, bytes)
}

/// Writes `bytes` over the start of `p` (created if missing, readable by the user only,
/// never through a symbolic link) without truncating it: what is left of a longer old text
/// becomes line breaks, which a reader of `key=value` lines skips. Truncating a file that
/// holds data frees its disk blocks, and on a file system mounted with `discard` (ext4 on
/// this project's test machines, and on many laptops with an SSD) every freed block is
/// trimmed while the caller waits: rewriting the `.info` of each upload that way made the
/// daemon wait for the disk about twice per small file copied in (docs/PERFORMANCE.md).
pub fn rewrite_private(p: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = private_writer(false).open(p)?;
    let old = usize::try_from(f.metadata()?.len()).unwrap_or(usize::MAX);
    let mut text = bytes.to_vec();
    if old > text.len() {
        text.resize(old, b'\n');
    }
    std::io::Write::write_all(&mut f, &text)
}

/// Makes `p` (and its parents) a folder only this user can use, refusing a symbolic link or
/// a folder that someone else made.
pub fn private_dir(p: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(p)?;
    // Never a folder reached through a symbolic link, nor one someone else made for us to
    // use (a predictable name in a shared temp directory).
    own_dir(p)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Checks, without changing anything, that `p` is a folder of this user's own that nobody
/// else can use (not a symbolic link, mode without group or other bits).
pub fn is_private_dir(p: &std::path::Path) -> std::io::Result<()> {
    let _meta = own_dir(p)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if _meta.permissions().mode() & 0o077 != 0 {
            return Err(std::io::Error::other(format!(
                "{} is open to other users",
                p.display()
            )));
        }
    }
    Ok(())
}

/// `p`'s metadata if it is a folder (not a symbolic link to one) of this user's own.
fn own_dir(p: &std::path::Path) -> std::io::Result<std::fs::Metadata> {
    let meta = std::fs::symlink_metadata(p)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory (a symbolic link?)",
            p.display()
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if meta.uid() != euid() {
            return Err(std::io::Error::other(format!(
                "{} belongs to another user",
                p.display()
            )));
        }
    }
    Ok(meta)
}
