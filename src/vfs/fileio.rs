//! Positioned reads and writes of local files (journals, spool files), with each OS's
//! primitive. Shared by write sessions and segmented uploads.

use std::io;

#[cfg(unix)]
pub(super) fn write_at(f: &std::fs::File, buf: &[u8], off: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    f.write_all_at(buf, off)
}

#[cfg(windows)]
pub(super) fn write_at(f: &std::fs::File, mut buf: &[u8], mut off: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = f.seek_write(buf, off)?;
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}

/// One positioned read, with the OS's primitive.
fn pread_once(f: &std::fs::File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    #[cfg(unix)]
    return std::os::unix::fs::FileExt::read_at(f, buf, off);
    #[cfg(windows)]
    return std::os::windows::fs::FileExt::seek_read(f, buf, off);
}

/// Reads up to `buf.len()` bytes at `off`; fewer only at the end of the file.
pub(super) fn read_at(f: &std::fs::File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = pread_once(f, &mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}
