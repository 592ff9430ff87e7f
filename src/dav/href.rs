//! Paths under the mounted root, and the translation between them and the server's hrefs.
//!
//! Inside davdrive a resource is named by a [`DavPath`]: its decoded segments relative to the
//! mounted collection. Servers name resources by hrefs, which may be absolute URLs or absolute
//! paths, percent-encoded in either case (or not at all), with or without a trailing slash.
//! [`Root::resolve_href`] is the one place where an href becomes a `DavPath`; it normalises
//! dot segments first and then refuses anything that is not below the root, so a server's
//! answer can never make us touch a path outside the mount.
//!
//! Outgoing URLs percent-encode every byte outside RFC 3986's unreserved set, which every
//! server we know decodes back to the same name.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use url::Url;

use super::error::DavError;

/// Bytes to encode in a path segment: everything but ALPHA / DIGIT / "-" / "." / "_" / "~".
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path relative to the mounted root, as decoded segments. The root is the empty path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DavPath {
    segments: Vec<String>,
}

/// Why a name cannot be a path segment.
pub fn check_segment(name: &str) -> Result<(), DavError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(DavError::Invalid(format!(
            "{name:?} cannot be a name on a WebDAV server"
        )));
    }
    Ok(())
}

impl DavPath {
    /// The mounted root itself.
    pub fn root() -> Self {
        DavPath::default()
    }

    /// Builds a path from already decoded segments, checking each.
    pub fn from_segments<I, S>(segments: I) -> Result<Self, DavError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut out = Vec::new();
        for s in segments {
            let s = s.into();
            check_segment(&s)?;
            out.push(s);
        }
        Ok(DavPath { segments: out })
    }

    /// Parses a `/`-separated decoded path such as `/a/b c`; empty segments are ignored.
    pub fn parse(path: &str) -> Result<Self, DavError> {
        Self::from_segments(path.split('/').filter(|s| !s.is_empty()))
    }

    /// The child `name` of this path.
    pub fn join(&self, name: &str) -> Result<Self, DavError> {
        check_segment(name)?;
        let mut segments = self.segments.clone();
        segments.push(name.to_owned());
        Ok(DavPath { segments })
    }

    /// The parent, or `None` for the root.
    pub fn parent(&self) -> Option<DavPath> {
        if self.segments.is_empty() {
            return None;
        }
        Some(DavPath {
            segments: self.segments[..self.segments.len() - 1].to_vec(),
        })
    }

    /// Whether `parent` is this path's parent (without building the parent).
    pub fn is_child_of(&self, parent: &DavPath) -> bool {
        self.segments.len() == parent.segments.len() + 1
            && self.segments.starts_with(&parent.segments)
    }

    /// The last segment, or `None` for the root.
    pub fn name(&self) -> Option<&str> {
        self.segments.last().map(String::as_str)
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// Whether `self` is `other` or below it.
    pub fn starts_with(&self, other: &DavPath) -> bool {
        self.segments.starts_with(&other.segments)
    }
}

impl fmt::Display for DavPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in &self.segments {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// Why an href was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HrefError {
    #[error("href {0:?} is not a valid URL reference")]
    Malformed(String),
    #[error("href {0:?} points outside the mounted root")]
    OutsideRoot(String),
    #[error("href {0:?} does not decode to UTF-8")]
    NotUtf8(String),
    #[error("href {0:?} contains a segment that cannot be a name")]
    BadSegment(String),
    /// RFC 4918 allows several hrefs in one `<response>` only beside a status, never with
    /// properties: one response with thousands of hrefs and a large property would otherwise
    /// copy the property for each (a 0.5 MB listing took 1.2 GB).
    #[error("href {0:?} is one of several in a <response> with properties; only the first is used")]
    ExtraWithProperties(String),
}

/// The mounted collection: its URL (always with a trailing slash) and its decoded segments.
#[derive(Debug, Clone)]
pub struct Root {
    url: Url,
    segments: Vec<String>,
}

impl Root {
    /// `url` must be http or https, without query or fragment. A trailing slash is added.
    pub fn new(url: &Url) -> Result<Self, DavError> {
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(DavError::Invalid(format!(
                "the server URL must start with http:// or https://, not {}://",
                url.scheme()
            )));
        }
        if url.host().is_none() {
            return Err(DavError::Invalid("the server URL has no host".into()));
        }
        let mut url = url.clone();
        url.set_query(None);
        url.set_fragment(None);
        if !url.path().ends_with('/') {
            let p = format!("{}/", url.path());
            url.set_path(&p);
        }
        let segments = decode_segments(url.path())
            .map_err(|_| DavError::Invalid("the server URL's path is not valid UTF-8".into()))?;
        Ok(Root { url, segments })
    }

    /// The root URL, with a trailing slash. It may carry userinfo: never log it.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The URL of `path`; collections get a trailing slash (servers such as Apache redirect
    /// a collection requested without one).
    pub fn url_for(&self, path: &DavPath, collection: bool) -> Url {
        let mut p = String::from(self.url.path());
        for (i, s) in path.segments.iter().enumerate() {
            if i > 0 {
                p.push('/');
            }
            p.extend(utf8_percent_encode(s, SEGMENT));
        }
        if collection && !path.is_root() {
            p.push('/');
        }
        let mut url = self.url.clone();
        url.set_path(&p);
        url
    }

    /// Resolves an href found in a response to the request `base` into a path below the root.
    pub fn resolve_href(&self, base: &Url, href: &str) -> Result<DavPath, HrefError> {
        let href_trimmed = href.trim();
        match self.resolve_plain_path(href_trimmed, href) {
            Some(resolved) => resolved,
            None => self.resolve_joined(base, href_trimmed, href),
        }
    }

    /// The general rules: the href joined to the request URL as a URL reference.
    fn resolve_joined(
        &self,
        base: &Url,
        href_trimmed: &str,
        href: &str,
    ) -> Result<DavPath, HrefError> {
        // Some servers (Orthanc's PROPPATCH, IIS in places) put raw, unencoded paths in hrefs.
        // A raw '%' that is not an escape, or a space, would make URL parsing fail or change
        // the meaning, so encode what cannot appear in a URL first.
        let cleaned = encode_stray(href_trimmed);
        let joined = base
            .join(&cleaned)
            .map_err(|_| HrefError::Malformed(href.to_owned()))?;
        let segments = match decode_segments(joined.path()) {
            Ok(s) => s,
            Err(SegmentError::NotUtf8) => return Err(HrefError::NotUtf8(href.to_owned())),
            Err(SegmentError::Bad) => return Err(HrefError::BadSegment(href.to_owned())),
        };
        if !segments.starts_with(&self.segments) {
            return Err(HrefError::OutsideRoot(href.to_owned()));
        }
        Ok(DavPath {
            segments: segments[self.segments.len()..].to_vec(),
        })
    }
}

impl Root {
    /// The common case without URL parsing: an absolute path (`/dav/dir/name`) of plain
    /// characters and valid escapes, with no dot segment, query or fragment, which joining
    /// to any base leaves unchanged. `None` when the href needs the general rules.
    fn resolve_plain_path(&self, h: &str, href: &str) -> Option<Result<DavPath, HrefError>> {
        let b = h.as_bytes();
        if b.first() != Some(&b'/') || b.get(1) == Some(&b'/') || h.contains("/.") {
            return None;
        }
        for (i, &c) in b.iter().enumerate() {
            let plain = c.is_ascii_alphanumeric() || b"-_~!$&'()*+,;=:@/".contains(&c);
            let escape = c == b'%'
                && b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
                // An escaped dot can make a dot segment: leave that to the URL rules.
                && !matches!(&b[i + 1..i + 3], b"2e" | b"2E");
            if !(plain || escape || c == b'.') {
                return None;
            }
        }
        let mut segments = Vec::new();
        for (i, raw) in h.split('/').filter(|r| !r.is_empty()).enumerate() {
            let s = match percent_decode_str(raw).decode_utf8() {
                Ok(s) => s,
                Err(_) => return Some(Err(HrefError::NotUtf8(href.to_owned()))),
            };
            if s.contains('/') || s.contains('\0') {
                return Some(Err(HrefError::BadSegment(href.to_owned())));
            }
            match self.segments.get(i) {
                Some(root) if *root == s => {}
                Some(_) => return Some(Err(HrefError::OutsideRoot(href.to_owned()))),
                None => segments.push(s.into_owned()),
            }
        }
        if h.split('/').filter(|r| !r.is_empty()).count() < self.segments.len() {
            return Some(Err(HrefError::OutsideRoot(href.to_owned())));
        }
        Some(Ok(DavPath { segments }))
    }
}

enum SegmentError {
    NotUtf8,
    Bad,
}

/// Decodes the segments of an already normalised URL path; empty segments are dropped.
fn decode_segments(path: &str) -> Result<Vec<String>, SegmentError> {
    let mut out = Vec::new();
    for raw in path.split('/') {
        if raw.is_empty() {
            continue;
        }
        let s = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| SegmentError::NotUtf8)?;
        if s == "." || s == ".." || s.contains('/') || s.contains('\0') {
            return Err(SegmentError::Bad);
        }
        out.push(s.into_owned());
    }
    Ok(out)
}

/// Percent-encodes characters that cannot stand raw in a URL reference, leaving valid
/// escapes and the path's delimiters alone. A raw `?` or `#` is part of a name: an href names a
/// resource by its path, and a server that sends names unencoded (`a?b`, `#1`) means them.
fn encode_stray(href: &str) -> String {
    let bytes = href.as_bytes();
    let mut out = String::with_capacity(href.len());
    for (i, ch) in href.char_indices() {
        match ch {
            '%' => {
                let valid = bytes.len() > i + 2
                    && bytes[i + 1].is_ascii_hexdigit()
                    && bytes[i + 2].is_ascii_hexdigit();
                if valid {
                    out.push('%');
                } else {
                    out.push_str("%25");
                }
            }
            ' ' | '"' | '<' | '>' | '\\' | '^' | '`' | '{' | '|' | '}' | '?' | '#' => {
                out.push_str(&format!("%{:02X}", ch as u32));
            }
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(u: &str) -> Root {
        Root::new(&Url::parse(u).expect("url")).expect("root")
    }

    fn p(s: &str) -> DavPath {
        DavPath::parse(s).expect("path")
    }

    #[test]
    fn plain_paths_resolve_as_the_url_rules_would() {
        let r = root("http://h/my%20dav/");
        let base = Url::parse("http://h/my%20dav/sub/").expect("base");
        for href in [
            "/my%20dav/sub/a.txt",
            "/my%20dav/sub/",
            "/my%20dav",
            "/my%20dav/",
            "/my%20dav//sub//x",
            "/my%20dav/sub/caf%C3%A9%2Bx@y:z;(1)!$&'*,=~_-",
            "/my%20dav/sub/%7e%41",
            "/other/x",
            "/",
            "/my%20dav2/x",
            "/my%20da/x",
            "/my%20dav/sub/a%2Fb",
            "/my%20dav/sub/a%00b",
            "/my%20dav/sub/%FF",
        ] {
            let fast = r.resolve_plain_path(href, href);
            let fast = fast.unwrap_or_else(|| panic!("{href}: plain"));
            let slow = r.resolve_joined(&base, href, href);
            assert_eq!(fast.is_ok(), slow.is_ok(), "{href}: {fast:?} vs {slow:?}");
            assert_eq!(fast.ok(), slow.ok(), "{href}");
        }
        for href in [
            "sub/x",
            "//h/my%20dav/x",
            "/my%20dav/./x",
            "/my%20dav/sub/../x",
            "/my%20dav/%2e%2e/x",
            "/my%20dav/a b",
            "/my%20dav/a?q",
            "/my%20dav/a#f",
            "/my%20dav/caf\u{e9}",
            "/my%20dav/100%",
            "http://h/my%20dav/x",
        ] {
            assert!(
                r.resolve_plain_path(href, href).is_none(),
                "{href}: not plain"
            );
        }
    }

    #[test]
    fn root_gets_trailing_slash_and_decoded_segments() {
        let r = root("http://h:8080/my%20dav");
        assert_eq!(r.url().as_str(), "http://h:8080/my%20dav/");
        assert_eq!(r.segments, vec!["my dav".to_string()]);
        assert!(Root::new(&Url::parse("ftp://h/").expect("url")).is_err());
    }

    #[test]
    fn url_for_encodes_everything_unsafe() {
        let r = root("http://h/dav/");
        let path = p("/a b/100% #1?+&é");
        assert_eq!(
            r.url_for(&path, false).as_str(),
            "http://h/dav/a%20b/100%25%20%231%3F%2B%26%C3%A9"
        );
        assert_eq!(r.url_for(&p("/d"), true).as_str(), "http://h/dav/d/");
        assert_eq!(r.url_for(&DavPath::root(), true).as_str(), "http://h/dav/");
    }

    #[test]
    fn resolve_accepts_every_spelling_of_the_same_path() {
        let r = root("http://h/dav/");
        let base = r.url().clone();
        let want = p("/a b/c+d");
        for href in [
            "/dav/a%20b/c+d",
            "/dav/a%20b/c%2Bd",
            "/dav/a%20b/c%2bd/",
            "http://h/dav/a%20b/c+d",
            "http://other-host:81/dav/a%20b/c+d",
            "a%20b/c+d",
            "/dav/a b/c+d",
            "/dav//a%20b/./c+d",
            "/dav/x/../a%20b/c+d",
        ] {
            assert_eq!(r.resolve_href(&base, href), Ok(want.clone()), "{href}");
        }
        assert_eq!(r.resolve_href(&base, "/dav/"), Ok(DavPath::root()));
        assert_eq!(r.resolve_href(&base, "/dav"), Ok(DavPath::root()));
        // Raw `?` and `#` are parts of names, not a query or a fragment.
        for (href, want) in [
            ("/dav/d/a?b", "/d/a?b"),
            ("/dav/d/#1 x", "/d/#1 x"),
            ("http://h/dav/d/?", "/d/?"),
            ("/dav/d/a%3Fb", "/d/a?b"),
        ] {
            assert_eq!(r.resolve_href(&base, href), Ok(p(want)), "{href}");
        }
    }

    #[test]
    fn resolve_refuses_escapes_from_the_root() {
        let r = root("http://h/dav/sub/");
        let base = r.url().clone();
        for href in [
            "/dav/",
            "/dav/other",
            "/",
            "/dav/sub/../x",
            "/dav/sub/%2e%2e/x",
            "../x",
            "http://h/etc/passwd",
            "/dav/subway/x",
        ] {
            assert!(
                matches!(r.resolve_href(&base, href), Err(HrefError::OutsideRoot(_))),
                "{href} -> {:?}",
                r.resolve_href(&base, href)
            );
        }
        assert!(matches!(
            r.resolve_href(&base, "/dav/sub/a%2Fb"),
            Err(HrefError::BadSegment(_))
        ));
        assert!(matches!(
            r.resolve_href(&base, "/dav/sub/%FF"),
            Err(HrefError::NotUtf8(_))
        ));
        assert!(matches!(
            r.resolve_href(&base, "/dav/sub/a%00b"),
            Err(HrefError::BadSegment(_))
        ));
    }

    #[test]
    fn stray_percent_and_raw_names_are_tolerated() {
        let r = root("http://h/webdav/");
        let base = r.url().clone();
        assert_eq!(
            r.resolve_href(&base, "/webdav/100% done/a^b"),
            Ok(p("/100% done/a^b"))
        );
    }

    #[test]
    fn segments_are_checked() {
        assert!(DavPath::parse("/a/../b").is_err());
        assert!(p("/a").join("b/c").is_err());
        assert!(p("/a").join("").is_err());
        assert_eq!(p("/a/b").parent(), Some(p("/a")));
        assert_eq!(DavPath::root().parent(), None);
        assert_eq!(p("/a/b").to_string(), "/a/b");
        assert!(p("/a/b").starts_with(&p("/a")));
    }
}
