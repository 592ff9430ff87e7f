//! `.davmount` files (RFC 4709): what a web page hands a WebDAV client to mount.
//!
//! ```xml
//! <dm:mount xmlns:dm="http://purl.org/NET/webdav/mount">
//!   <dm:url>https://example.com/dav/</dm:url>
//!   <dm:open>reports/2026.pdf</dm:open>
//!   <dm:username>alice</dm:username>
//! </dm:mount>
//! ```
//!
//! `davdrive open FILE.davmount` mounts the URL under `~/davdrive/NAME` (or finds a running
//! mount of it) and opens `dm:open` (else the folder) with the desktop's handler.

const NS: &str = "http://purl.org/NET/webdav/mount";

/// What a `.davmount` file asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DavMount {
    pub url: url::Url,
    /// A path relative to `url` to open once mounted.
    pub open: Option<String>,
    pub username: Option<String>,
}

/// Parses a `.davmount` document.
pub fn parse(xml: &str) -> Result<DavMount, String> {
    use quick_xml::events::Event;
    use quick_xml::name::ResolveResult;
    let bad = |e: &dyn std::fmt::Display| format!("not a .davmount file: {e}");
    let mut r = quick_xml::reader::NsReader::from_str(xml);
    let (mut url, mut open, mut username) = (None, None, None);
    let mut field: Option<&'static str> = None;
    let mut text = String::new();
    let mut in_mount = false;
    loop {
        let (ns, ev) = r.read_resolved_event().map_err(|e| bad(&e))?;
        let ours = matches!(ns, ResolveResult::Bound(n) if n.as_ref() == NS);
        match ev {
            Event::Start(e) if ours => {
                text.clear();
                field = match e.local_name().as_ref() {
                    "mount" => {
                        in_mount = true;
                        None
                    }
                    "url" if in_mount => Some("url"),
                    "open" if in_mount => Some("open"),
                    "username" if in_mount => Some("username"),
                    _ => None,
                };
            }
            Event::Text(t) if field.is_some() && text.len() < 8192 => text.push_str(&t),
            Event::CData(t) if field.is_some() && text.len() < 8192 => text.push_str(&t),
            Event::GeneralRef(g) if field.is_some() => {
                let c = if g.is_char_ref() {
                    g.resolve_char_ref().ok().flatten().map(String::from)
                } else {
                    quick_xml::escape::resolve_predefined_entity(&g).map(str::to_owned)
                };
                text.push_str(&c.ok_or_else(|| bad(&"an unknown entity"))?);
            }
            Event::End(_) => {
                let value = Some(text.trim().to_owned());
                match field.take() {
                    Some("url") => url = value,
                    Some("open") => open = value,
                    Some("username") => username = value,
                    _ => {}
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let url = url.ok_or("the .davmount file names no dm:url")?;
    let url = url::Url::parse(&url).map_err(|e| format!("dm:url {url:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("dm:url {url} is not http or https"));
    }
    if url.password().is_some() {
        return Err("the .davmount file holds a password in its URL: refused".into());
    }
    // `dm:open` is relative to the mounted collection (percent-encoded like a URL path):
    // never a way out of it.
    let open = open.filter(|o| !o.is_empty()).map(|o| {
        percent_encoding::percent_decode_str(&o)
            .decode_utf8_lossy()
            .into_owned()
    });
    if let Some(o) = &open
        && o.split(['/', '\\']).any(|s| s == "..")
    {
        return Err(format!("dm:open {o:?} leaves the mounted folder"));
    }
    Ok(DavMount {
        url,
        open,
        username: username.filter(|u| !u.is_empty()),
    })
}

/// The folder name under `~/davdrive/` for `url`: its host and last path segment
/// (`nas.example-dav`), so that two servers' `/dav/` do not meet.
pub fn folder_name(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("webdav");
    match last_segment(url) {
        Some(last) => format!("{host}-{last}"),
        None => host.to_owned(),
    }
}

fn last_segment(url: &url::Url) -> Option<String> {
    let last = url
        .path_segments()
        .and_then(|mut s| s.rfind(|p| !p.is_empty()).map(str::to_owned))
        .map(|s| {
            percent_encoding::percent_decode_str(&s)
                .decode_utf8_lossy()
                .into_owned()
        });
    let clean: String = last?
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect();
    match clean.as_str() {
        "" | "." | ".." => None,
        _ => Some(clean),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_example_parses_and_hostile_files_are_refused() {
        let d = parse(
            r#"<?xml version="1.0" encoding="utf-8"?>
            <dm:mount xmlns:dm="http://purl.org/NET/webdav/mount">
              <dm:url>http://www.example.com/webdav/My%20Files/</dm:url>
              <dm:open>doc/readme.txt</dm:open>
              <dm:username>bernhard</dm:username>
            </dm:mount>"#,
        )
        .expect("parses");
        assert_eq!(d.url.as_str(), "http://www.example.com/webdav/My%20Files/");
        assert_eq!(d.open.as_deref(), Some("doc/readme.txt"));
        let spaced = parse(
            r#"<m:mount xmlns:m="http://purl.org/NET/webdav/mount"><m:url>https://h/</m:url><m:open>My%20File.pdf</m:open></m:mount>"#,
        )
        .expect("parses");
        assert_eq!(spaced.open.as_deref(), Some("My File.pdf"));
        assert_eq!(d.username.as_deref(), Some("bernhard"));
        assert_eq!(folder_name(&d.url), "www.example.com-My Files");
        assert_eq!(
            folder_name(&url::Url::parse("https://h.example/").expect("url")),
            "h.example"
        );
        for (bad, why) in [
            ("<x/>", "no dm:url"),
            (
                r#"<m:mount xmlns:m="http://purl.org/NET/webdav/mount"><m:url>file:///etc</m:url></m:mount>"#,
                "not http",
            ),
            (
                r#"<m:mount xmlns:m="http://purl.org/NET/webdav/mount"><m:url>https://a:b@h/</m:url></m:mount>"#,
                "password",
            ),
            (
                r#"<m:mount xmlns:m="http://purl.org/NET/webdav/mount"><m:url>https://h/</m:url><m:open>../../x</m:open></m:mount>"#,
                "leaves",
            ),
            (
                r#"<m:mount xmlns:m="http://purl.org/NET/webdav/mount"><m:url>https://h/</m:url><m:open>a/%2E%2E/%2e%2e/x</m:open></m:mount>"#,
                "leaves",
            ),
            ("<unclosed", "not a .davmount"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
