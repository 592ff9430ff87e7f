//! `Content-Range` values: a range that makes sense, or nothing.
#![no_main]
use davdrive::dav::client::parse_content_range;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(r) = parse_content_range(v) {
        assert!(r.start <= r.end, "{v:?}: {r:?}");
        if let Some(t) = r.total {
            assert!(r.end < t, "{v:?}: {r:?}");
        }
        // Our own rendering of it reads back the same.
        let total = r.total.map_or("*".to_owned(), |t| t.to_string());
        let again = parse_content_range(&format!("bytes {}-{}/{total}", r.start, r.end));
        assert_eq!(again, Some(r), "{v:?}");
    }
});
