//! href resolution and percent-decoding: whatever a server puts in an href either resolves
//! to a path under the root, made of real segments, or is refused.
#![no_main]
use davdrive::dav::{DavPath, Root};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(href) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(base) = url::Url::parse("https://h.example:8443/remote.php/dav/files/al%20ice/") else {
        return;
    };
    let Ok(root) = Root::new(&base) else { return };
    if let Ok(p) = root.resolve_href(&base, href) {
        for s in p.segments() {
            assert!(
                !s.is_empty() && s != "." && s != ".." && !s.contains('/'),
                "{s:?}"
            );
        }
        let url = root.url_for(&p, true);
        assert!(
            url.as_str().starts_with(root.url().as_str()),
            "{url} escapes"
        );
        // What we send for a path resolves back to the same path.
        let again = root.resolve_href(&base, url.path());
        assert_eq!(again.ok(), Some(p.clone()), "{href:?} -> {url}");
    }
    let _ = DavPath::parse(href);
});
