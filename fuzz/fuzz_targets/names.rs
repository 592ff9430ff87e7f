//! Name mapping: whatever name a server lists, the local name is one the local system can
//! hold (on Linux and on Windows), always the same for the same name, and the server's name
//! itself when that already is legal.
#![no_main]
use davdrive::vfs::names::NamePolicy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(server) = std::str::from_utf8(data) else {
        return;
    };
    if server.is_empty() || server == "." || server == ".." || server.contains(['/', '\0']) {
        return; // never a listed name (the href rules refuse it first)
    }
    let posix = NamePolicy::posix().to_local(server);
    assert!(posix.len() <= 255, "{} bytes", posix.len());
    assert!(!posix.contains(['/', '\0']) && posix != "." && posix != "..");
    assert_eq!(posix, NamePolicy::posix().to_local(server));
    if server.len() <= 255 {
        assert_eq!(posix, server);
    }
    let win = NamePolicy::windows().to_local(server);
    assert!(win.encode_utf16().count() <= 255);
    assert!(
        !win.contains(['\\', '/', ':', '*', '?', '"', '<', '>', '|', '\0']),
        "{win:?}"
    );
    assert!(!win.ends_with(['.', ' ']), "{win:?}");
    assert!(!win.chars().any(|c| (c as u32) < 0x20), "{win:?}");
    assert_eq!(win, NamePolicy::windows().to_local(server));
});
