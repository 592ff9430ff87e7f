//! systemd's service notification protocol (`sd_notify(3)`), for a mount started by a
//! `Type=notify` unit (`davdrive autostart`): `READY=1` once the root was listed and the
//! kernel session is up, `STATUS=` lines while waiting for the network, the server or the
//! keyring, and `STOPPING=1` on the way out. Without `NOTIFY_SOCKET` in the environment
//! (any other start) nothing is sent.
//!
//! The protocol is one datagram per message to the Unix socket named by `NOTIFY_SOCKET`
//! (a path, or an abstract name written with a leading `@`); no library is needed.

/// Sends `state` (`KEY=value` lines) to the service manager, if one asked for it. Failures
/// are ignored: the mount works the same without a listener.
pub fn notify(state: &str) {
    #[cfg(unix)]
    {
        let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        if let Err(e) = send(&target, state) {
            tracing::debug!("cannot notify the service manager: {e}");
        }
    }
    #[cfg(not(unix))]
    let _ = state;
}

/// `STATUS=` with `text` on one line.
pub fn status(text: &str) {
    notify(&format!("STATUS={}", text.replace('\n', " ")));
}

#[cfg(unix)]
fn send(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let sock = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
        return Ok(());
    }
    sock.send_to(state.as_bytes(), std::path::Path::new(target))?;
    let _ = bytes;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_message_reaches_the_socket_named_by_path_and_by_abstract_name() {
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        send(path.as_os_str(), "READY=1\nSTATUS=mounted").expect("sent");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=mounted");

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("davdrive-test-{}", std::process::id());
            let addr =
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
            let listener = UnixDatagram::bind_addr(&addr).expect("bind abstract");
            send(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").expect("sent");
            let n = listener.recv(&mut buf).expect("received");
            assert_eq!(&buf[..n], b"STOPPING=1");
        }
    }
}
