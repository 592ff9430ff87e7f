//! The multistatus parser against real server responses (tests/fixtures/multistatus, each
//! documented in its README with where it comes from) and against hostile XML.

use std::time::UNIX_EPOCH;

use davdrive::dav::multistatus::{self, ParseError};
use davdrive::dav::{DavPath, Root};
use url::Url;

use crate::support::{project_dir, rt};

struct Expect {
    base: String,
    root: String,
    rows: Vec<[String; 5]>,
}

fn read_expect(path: &std::path::Path) -> Expect {
    let text = std::fs::read_to_string(path).expect("expect file");
    let mut lines = text.lines();
    let header = lines.next().expect("header line");
    let mut base = String::new();
    let mut root = String::new();
    for word in header.trim_start_matches('#').split_whitespace() {
        if let Some(v) = word.strip_prefix("base=") {
            base = v.to_owned();
        } else if let Some(v) = word.strip_prefix("root=") {
            root = v.to_owned();
        }
    }
    assert!(
        !base.is_empty() && !root.is_empty(),
        "{}: bad header",
        path.display()
    );
    let rows = lines
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 5, "{}: {l:?}", path.display());
            [f[0], f[1], f[2], f[3], f[4]].map(str::to_owned)
        })
        .collect();
    Expect { base, root, rows }
}

fn row_of(r: &multistatus::Resource) -> [String; 5] {
    let path = if r.path.is_root() {
        ".".to_owned()
    } else {
        r.path.segments().join("/")
    };
    let dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    [
        path,
        if r.is_collection { "dir" } else { "file" }.into(),
        dash(r.content_length.map(|n| n.to_string())),
        dash(r.last_modified.map(|t| match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs().to_string(),
            Err(e) => format!("-{}", e.duration().as_secs()),
        })),
        dash(r.etag.clone()),
    ]
}

#[test]
fn every_fixture_parses_as_documented() {
    let dir = project_dir().join("tests/fixtures/multistatus");
    let mut n = 0;
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    names.sort();
    for xml in names {
        let exp = read_expect(&xml.with_extension("expect"));
        let origin = "http://127.0.0.1:8080";
        let root = Root::new(&Url::parse(&format!("{origin}{}", exp.root)).expect("root url"))
            .expect("root");
        let base = Url::parse(&format!("{origin}{}", exp.base)).expect("base url");
        let body = std::fs::read(&xml).expect("xml");
        let ms = multistatus::parse(&body, &base, &root)
            .unwrap_or_else(|e| panic!("{}: {e}", xml.display()));
        let got: Vec<[String; 5]> = ms.resources.iter().map(row_of).collect();
        // The same body arriving a few bytes at a time (as listings are parsed while they
        // download) gives the same resources.
        let trickled = rt()
            .block_on(multistatus::parse_async(
                tokio::io::BufReader::with_capacity(7, &body[..]),
                &base,
                &root,
            ))
            .unwrap_or_else(|e| panic!("{} (streamed): {e}", xml.display()));
        assert_eq!(trickled.resources, ms.resources, "{}", xml.display());
        assert_eq!(
            trickled.skipped.len(),
            ms.skipped.len(),
            "{}",
            xml.display()
        );
        // Bare entity tags are quoted by the parser (see multistatus::normalize_etag).
        let want: Vec<[String; 5]> = exp
            .rows
            .into_iter()
            .map(|mut r| {
                if r[4] != "-" {
                    r[4] = multistatus::normalize_etag(&r[4]);
                }
                r
            })
            .collect();
        assert_eq!(got, want, "{}", xml.display());
        n += 1;
    }
    assert!(n >= 20, "only {n} fixtures found");
}

fn root() -> Root {
    Root::new(&Url::parse("http://h/dav/").expect("url")).expect("root")
}

fn parse(body: &[u8]) -> Result<multistatus::Multistatus, ParseError> {
    let r = root();
    multistatus::parse(body, r.url(), &r)
}

fn response(i: usize) -> String {
    format!(
        "<D:response><D:href>/dav/f{i}</D:href><D:propstat><D:prop><D:getcontentlength>{i}</D:getcontentlength></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
    )
}

#[test]
fn truncated_documents_are_errors_at_every_cut() {
    let doc = format!(
        r#"<?xml version="1.0"?><D:multistatus xmlns:D="DAV:">{}{}</D:multistatus>"#,
        response(1),
        response(2)
    );
    let bytes = doc.as_bytes();
    let full = parse(bytes).expect("whole document parses");
    assert_eq!(full.resources.len(), 2);
    let r = root();
    let rt = rt();
    for cut in 0..bytes.len() - 1 {
        assert!(parse(&bytes[..cut]).is_err(), "cut at {cut} parsed");
        let streamed = rt.block_on(multistatus::parse_async(&bytes[..cut], r.url(), &r));
        assert!(streamed.is_err(), "cut at {cut} parsed (streamed)");
    }
}

#[test]
fn hundred_megabyte_text_node_is_refused_early() {
    let mut doc = String::from(r#"<D:multistatus xmlns:D="DAV:"><D:response><D:href>/dav/"#);
    doc.push_str(&"a".repeat(100 * 1024 * 1024));
    doc.push_str("</D:href></D:response></D:multistatus>");
    let e = parse(doc.as_bytes());
    assert!(matches!(e, Err(ParseError::TextTooLong)), "{e:?}");
}

#[test]
fn hundred_megabytes_of_unknown_properties_parse_in_bounded_memory() {
    // 100 MB of properties we do not keep: memory stays at the entries we keep.
    let junk = "<X:junk xmlns:X=\"urn:x\">0123456789abcdef0123456789abcdef</X:junk>".repeat(4);
    let mut doc = String::from(r#"<D:multistatus xmlns:D="DAV:">"#);
    let mut i = 0;
    while doc.len() < 100 * 1024 * 1024 {
        doc.push_str(&format!(
            "<D:response><D:href>/dav/f{i}</D:href><D:propstat><D:prop>{junk}</D:prop></D:propstat></D:response>"
        ));
        i += 1;
    }
    doc.push_str("</D:multistatus>");
    let ms = parse(doc.as_bytes()).expect("parse");
    assert_eq!(ms.resources.len(), i);
}

#[test]
fn entity_expansion_is_refused() {
    let doc = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<D:multistatus xmlns:D="DAV:"><D:response><D:href>/dav/&lol3;</D:href></D:response></D:multistatus>"#;
    let e = parse(doc.as_bytes());
    assert!(matches!(e, Err(ParseError::UndefinedEntity(_))), "{e:?}");
    let ext = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<D:multistatus xmlns:D="DAV:"><D:response><D:href>/dav/&xxe;</D:href></D:response></D:multistatus>"#;
    assert!(matches!(
        parse(ext.as_bytes()),
        Err(ParseError::UndefinedEntity(_))
    ));
}

#[test]
fn ten_thousand_deep_nesting_is_refused() {
    let mut doc = String::from(r#"<D:multistatus xmlns:D="DAV:"><D:response><D:propstat><D:prop>"#);
    doc.push_str(&"<x>".repeat(10_000));
    doc.push_str(&"</x>".repeat(10_000));
    doc.push_str("</D:prop></D:propstat></D:response></D:multistatus>");
    let e = parse(doc.as_bytes());
    assert!(matches!(e, Err(ParseError::TooDeep)), "{e:?}");
}

#[test]
fn wrong_namespaces_and_non_xml_are_refused() {
    for doc in [
        &br#"<multistatus xmlns="urn:not-dav"/>"#[..],
        br#"<D:multistatus xmlns:D="dav:"></D:multistatus>"#,
        br#"<html><body>502 Bad Gateway</body></html>"#,
        b"",
        b"\x00\x01\x02garbage",
        br#"{"json": true}"#,
    ] {
        assert!(parse(doc).is_err(), "{:?}", String::from_utf8_lossy(doc));
    }
}

#[test]
fn non_utf8_is_an_error_not_a_panic() {
    let mut doc =
        br#"<?xml version="1.0" encoding="ISO-8859-1"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/dav/M"#
            .to_vec();
    doc.push(0xfc); // 'ü' in Latin-1: not UTF-8
    doc.extend_from_slice(b"ller</D:href></D:response></D:multistatus>");
    assert!(parse(&doc).is_err());
}

#[test]
fn random_mutations_never_panic() {
    let base =
        std::fs::read(project_dir().join("tests/fixtures/multistatus/apache-root-depth1.xml"))
            .expect("fixture");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..3000 {
        let mut doc = base.clone();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % doc.len();
            match x % 3 {
                0 => doc[i] = (x >> 8) as u8,
                1 => {
                    doc.remove(i);
                }
                _ => doc.insert(i, b"<>&\"/"[(x % 5) as usize]),
            }
        }
        let _ = parse(&doc);
    }
}

#[test]
fn hrefs_escaping_the_root_are_never_returned() {
    let doc = br#"<D:multistatus xmlns:D="DAV:">
      <D:response><D:href>http://evil.example/etc/passwd</D:href><D:propstat><D:prop/></D:propstat></D:response>
      <D:response><D:href>/dav/%2e%2e/secret</D:href><D:propstat><D:prop/></D:propstat></D:response>
      <D:response><D:href>/dav/a/../../b</D:href><D:propstat><D:prop/></D:propstat></D:response>
      <D:response><D:href>/dav/ok</D:href><D:propstat><D:prop/></D:propstat></D:response>
    </D:multistatus>"#;
    let ms = parse(doc).expect("parse");
    let paths: Vec<&DavPath> = ms.resources.iter().map(|r| &r.path).collect();
    assert_eq!(paths, vec![&DavPath::parse("/ok").expect("p")]);
    assert_eq!(ms.skipped.len(), 3);
}
