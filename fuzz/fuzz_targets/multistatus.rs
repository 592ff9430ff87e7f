//! The multistatus parser on arbitrary bytes: an error or a result, never a panic, and every
//! resource it returns lies under the mounted root.
#![no_main]
use davdrive::dav::{Root, multistatus};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = url::Url::parse("http://127.0.0.1:8080/dav/dir/") else {
        return;
    };
    let Ok(root) = Root::new(&request.join("/dav/").unwrap_or_else(|_| request.clone())) else {
        return;
    };
    if let Ok(ms) = multistatus::parse(data, &request, &root) {
        for r in &ms.resources {
            let url = root.url_for(&r.path, false);
            assert!(url.as_str().starts_with(root.url().as_str()), "{url} escapes");
        }
    }
});
