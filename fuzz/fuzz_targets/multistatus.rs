//! The multistatus parser on arbitrary bytes, and on large bodies built from them (many
//! responses, many hrefs in one response: finding 1 of the hardening issue): an error or a
//! result, never a panic, every resource under the mounted root, and what the result holds
//! never larger than a small multiple of the body (one response cannot be copied for each
//! of its hrefs).
#![no_main]
use davdrive::dav::{Multistatus, Root, multistatus};
use libfuzzer_sys::fuzz_target;

/// Bytes the parsed result holds in names and properties.
fn held(ms: &Multistatus) -> usize {
    ms.resources
        .iter()
        .map(|r| {
            r.path.to_string().len()
                + r.etag.as_ref().map_or(0, String::len)
                + r.content_type.as_ref().map_or(0, String::len)
                + r.display_name.as_ref().map_or(0, String::len)
        })
        .sum()
}

/// `A` + a count (2 bytes) + a split byte + text: a body of `count` copies of the text's
/// first part (e.g. `<D:href>x</D:href>`) inside one response whose rest is the text's
/// second part (e.g. a propstat with a large getetag); `R` + count + text: `count` whole
/// responses. Anything else is parsed as it is.
fn body(data: &[u8]) -> Vec<u8> {
    if data.len() < 4 || !matches!(data[0], b'A' | b'R') {
        return data.to_vec();
    }
    let count = usize::from(u16::from_le_bytes([data[1], data[2]])).min(20_000);
    let split = usize::from(data[3]).min(data.len() - 4);
    let (rep, rest) = data[4..].split_at(split);
    let mut b = b"<?xml version=\"1.0\"?><D:multistatus xmlns:D=\"DAV:\">".to_vec();
    if data[0] == b'A' {
        b.extend_from_slice(b"<D:response>");
        for _ in 0..count {
            b.extend_from_slice(rep);
        }
        b.extend_from_slice(rest);
        b.extend_from_slice(b"</D:response>");
    } else {
        for _ in 0..count {
            b.extend_from_slice(b"<D:response>");
            b.extend_from_slice(rep);
            b.extend_from_slice(b"</D:response>");
        }
        b.extend_from_slice(rest);
    }
    b.extend_from_slice(b"</D:multistatus>");
    b
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = url::Url::parse("http://127.0.0.1:8080/dav/dir/") else {
        return;
    };
    let Ok(root) = Root::new(&request.join("/dav/").unwrap_or_else(|_| request.clone())) else {
        return;
    };
    let body = body(data);
    if let Ok(ms) = multistatus::parse(&body, &request, &root) {
        for r in &ms.resources {
            let url = root.url_for(&r.path, false);
            assert!(
                url.as_str().starts_with(root.url().as_str()),
                "{url} escapes"
            );
        }
        // Never more resources than `<response>` elements, and no amplification.
        let responses = body.windows(9).filter(|w| w.ends_with(b"response")).count();
        assert!(
            ms.resources.len() <= responses,
            "{} resources",
            ms.resources.len()
        );
        let h = held(&ms);
        assert!(
            h <= 4 * body.len() + 4096,
            "{h} bytes held for a {}-byte body",
            body.len()
        );
    }
});
