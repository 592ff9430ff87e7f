//! The response head parser of raw GETs (the body stays in the socket): it never claims more
//! bytes than it was given, a complete head ends with its blank line, and a complete head
//! stays complete (with the same length) whatever bytes follow it.
#![no_main]
use davdrive::dav::client::{Head, parse_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Head::Complete { len, status, .. } => {
            assert!(len <= data.len());
            assert!(data[..len].ends_with(b"\n"), "{:?}", &data[..len]);
            assert!(status < 1000);
            let mut more = data.to_vec();
            more.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\nbody");
            assert!(matches!(parse_head(&more), Head::Complete { len: l, .. } if l == len));
        }
        Head::Partial => {
            // Any prefix of a partial head is partial too.
            let half = &data[..data.len() / 2];
            assert!(!matches!(parse_head(half), Head::Complete { .. }));
        }
        Head::Invalid => {}
    }
});
