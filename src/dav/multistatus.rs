//! Parsing of `207 Multi-Status` bodies (RFC 4918 section 13) into [`Resource`]s.
//!
//! A pull parser (quick-xml's `NsReader`) walks the body once; there is no DOM. The grammar
//! is a state machine fed one event at a time, so a body still downloading ([`parse_async`],
//! what listings use) and one in memory ([`parse`]) go through the same rules. Elements are
//! recognised by namespace URI and local name, whatever prefix the server bound (`D:`, `d:`,
//! `lp1:`, a default namespace). The rules that real servers make necessary:
//!
//! - Per-propstat status: a property inside a propstat whose status is not 2xx is absent
//!   (Apache reports missing properties in a `404 Not Found` propstat).
//! - A response-level `<status>` that is not 2xx drops the response.
//! - Hrefs are matched by decoded-path equality, never by position: Orthanc answers a Depth 0
//!   PROPFIND on a file with the parent collection first.
//! - The same path twice keeps the first occurrence (Orthanc's by-uids lists duplicates).
//! - An href outside the mounted root, or not decodable, is skipped and reported in
//!   [`Multistatus::skipped`], never followed.
//! - Dates in RFC 1123 or ISO 8601; junk dates are treated as absent.
//!
//! Hostile input is bounded: nesting depth, text length per element and the number of
//! responses are limited, undefined entities are an error (so entity expansion bombs cannot
//! expand), and non-UTF-8 text is an error. The caller bounds the body size.

use std::time::SystemTime;

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::{Namespace, ResolveResult};
use url::Url;

use super::dates;
use super::href::{DavPath, HrefError, Root};

const DAV_NS: &str = "DAV:";
const MAX_DEPTH: usize = 64;
const MAX_TEXT: usize = 64 * 1024;
const MAX_RESPONSES: usize = 2_000_000;

/// One resource as listed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Decoded path relative to the mount root.
    pub path: DavPath,
    pub is_collection: bool,
    pub content_length: Option<u64>,
    pub last_modified: Option<SystemTime>,
    pub created: Option<SystemTime>,
    /// The entity tag exactly as the server wrote it (quotes and `W/` included).
    pub etag: Option<String>,
    pub content_type: Option<String>,
    pub display_name: Option<String>,
    pub quota_available: Option<u64>,
    pub quota_used: Option<u64>,
}

/// The parsed body.
#[derive(Debug, Clone, Default)]
pub struct Multistatus {
    pub resources: Vec<Resource>,
    /// Hrefs that were refused, with the reason; logged by the caller.
    pub skipped: Vec<HrefError>,
    /// The server's clock when it answered (its `Date` header), when known.
    pub date: Option<std::time::SystemTime>,
}

impl Multistatus {
    /// The resource at `path`, if listed.
    pub fn get(&self, path: &DavPath) -> Option<&Resource> {
        self.resources.iter().find(|r| &r.path == path)
    }
}

/// Why a body is not an acceptable multistatus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed XML at byte {position}: {message}")]
    Xml { position: u64, message: String },
    #[error("the document is not a DAV: multistatus (root element {0})")]
    NotMultistatus(String),
    #[error("the document ends inside the multistatus")]
    Truncated,
    #[error("the document nests deeper than {MAX_DEPTH} elements")]
    TooDeep,
    #[error("an element's text is longer than {MAX_TEXT} bytes")]
    TextTooLong,
    #[error("more than {MAX_RESPONSES} responses")]
    TooManyResponses,
    #[error("undefined entity &{0};")]
    UndefinedEntity(String),
    #[error("invalid value {value:?} for {property}")]
    BadValue {
        property: &'static str,
        value: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prop {
    ResourceType,
    ContentLength,
    LastModified,
    CreationDate,
    ETag,
    ContentType,
    DisplayName,
    QuotaAvailable,
    QuotaUsed,
}

impl Prop {
    fn from_local(name: &str) -> Option<Prop> {
        Some(match name {
            "resourcetype" => Prop::ResourceType,
            "getcontentlength" => Prop::ContentLength,
            "getlastmodified" => Prop::LastModified,
            "creationdate" => Prop::CreationDate,
            "getetag" => Prop::ETag,
            "getcontenttype" => Prop::ContentType,
            "displayname" => Prop::DisplayName,
            "quota-available-bytes" => Prop::QuotaAvailable,
            "quota-used-bytes" => Prop::QuotaUsed,
            _ => return None,
        })
    }
}

/// Where the parser stands; one entry per open element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Multistatus,
    Response,
    Href,
    ResponseStatus,
    Propstat,
    PropstatStatus,
    PropContainer,
    Property(Prop),
    /// `collection` inside `resourcetype`.
    Collection,
    /// Anything we do not interpret (other namespaces, unknown properties, error bodies).
    Other,
}

#[derive(Debug, Default, Clone)]
struct Props {
    resourcetype_seen: bool,
    is_collection: bool,
    content_length: Option<String>,
    last_modified: Option<String>,
    created: Option<String>,
    etag: Option<String>,
    content_type: Option<String>,
    display_name: Option<String>,
    quota_available: Option<String>,
    quota_used: Option<String>,
}

impl Props {
    fn merge(&mut self, other: Props) {
        if other.resourcetype_seen {
            self.resourcetype_seen = true;
            self.is_collection |= other.is_collection;
        }
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            content_length,
            last_modified,
            created,
            etag,
            content_type,
            display_name,
            quota_available,
            quota_used
        );
    }
}

#[derive(Debug, Default)]
struct RawResponse {
    hrefs: Vec<String>,
    status: Option<u16>,
    props: Props,
    /// It had a `<propstat>` (then RFC 4918 allows one href only).
    propstat: bool,
}

#[derive(Debug, Default)]
struct PropstatState {
    status: Option<u16>,
    props: Props,
}

/// Turns raw responses into resources as they come: the href rules and duplicates. Each
/// resource goes to `sink` as soon as its `<response>` element is complete.
struct Collector<'a, F: FnMut(Resource)> {
    sink: F,
    skipped: Vec<HrefError>,
    /// Resources made so far (hrefs taken), for [`MAX_RESPONSES`].
    built: usize,
    seen: std::collections::HashSet<DavPath, foldhash::fast::RandomState>,
    request_url: &'a Url,
    root: &'a Root,
}

impl<'a, F: FnMut(Resource)> Collector<'a, F> {
    fn new(request_url: &'a Url, root: &'a Root, sink: F) -> Self {
        Collector {
            sink,
            skipped: Vec::new(),
            built: 0,
            seen: std::collections::HashSet::default(),
            request_url,
            root,
        }
    }

    fn push(&mut self, r: RawResponse) -> Result<(), ParseError> {
        if let Some(s) = r.status
            && !(200..300).contains(&s)
        {
            return Ok(());
        }
        // With properties, one href (RFC 4918): each further one would get its own copy of
        // every property, and one response could ask for any amount of memory.
        let take = if r.propstat {
            r.hrefs.len().min(1)
        } else {
            r.hrefs.len()
        };
        if let Some(extra) = r.hrefs.get(take..).filter(|e| !e.is_empty()) {
            // One entry says it for all of them; a listing of 20,000 would flood the log.
            self.skipped.push(HrefError::ExtraWithProperties(format!(
                "{} (and {} more)",
                extra[0],
                extra.len() - 1
            )));
        }
        // Every resource counts towards the limit, not every `<response>`.
        self.built += take;
        if self.built > MAX_RESPONSES {
            return Err(ParseError::TooManyResponses);
        }
        for href in &r.hrefs[..take] {
            let path = match self.root.resolve_href(self.request_url, href) {
                Ok(p) => p,
                Err(e) => {
                    self.skipped.push(e);
                    continue;
                }
            };
            if !self.seen.insert(path.clone()) {
                continue;
            }
            (self.sink)(build_resource(path, &r.props)?);
        }
        Ok(())
    }
}

/// Parses a multistatus body answering a request to `request_url`, below `root`.
pub fn parse(body: &[u8], request_url: &Url, root: &Root) -> Result<Multistatus, ParseError> {
    let mut resources = Vec::new();
    let mut reader = NsReader::from_reader(body);
    configure(&mut reader);
    let mut parser = RawParser::default();
    let mut collector = Collector::new(request_url, root, |r| resources.push(r));
    loop {
        let (ns, event) = match reader.read_resolved_event() {
            Ok(v) => v,
            Err(e) => return Err(xml_error(&reader, e)),
        };
        match parser.feed(ns, event)? {
            Step::More => {}
            Step::Response(r) => collector.push(*r)?,
            Step::Done => break,
        }
    }
    let skipped = collector.skipped;
    Ok(Multistatus {
        resources,
        skipped,
        date: None,
    })
}

/// As [`parse`], reading the body as it arrives: parsing overlaps the download (a listing of
/// 10,000 files is ready when its last byte is). An error of `body` itself (transport,
/// size limit) surfaces as [`ParseError::Xml`]; the caller knows it from its reader.
pub async fn parse_async<R: tokio::io::AsyncBufRead + Unpin>(
    body: R,
    request_url: &Url,
    root: &Root,
) -> Result<Multistatus, ParseError> {
    let mut resources = Vec::new();
    let skipped = parse_each(body, request_url, root, |r| resources.push(r)).await?;
    Ok(Multistatus {
        resources,
        skipped,
        date: None,
    })
}

/// As [`parse_async`], handing each resource to `sink` as soon as it is parsed (a directory
/// listing can be shown while it downloads). Returns the refused hrefs. On an error, the
/// resources already handed out stay valid: they were complete `<response>` elements.
pub async fn parse_each<R: tokio::io::AsyncBufRead + Unpin>(
    body: R,
    request_url: &Url,
    root: &Root,
    sink: impl FnMut(Resource),
) -> Result<Vec<HrefError>, ParseError> {
    let mut reader = NsReader::from_reader(body);
    configure(&mut reader);
    let mut parser = RawParser::default();
    let mut collector = Collector::new(request_url, root, sink);
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        let (ns, event) = match reader.read_resolved_event_into_async(&mut buf).await {
            Ok(v) => v,
            Err(e) => return Err(xml_error(&reader, e)),
        };
        match parser.feed(ns, event)? {
            Step::More => {}
            Step::Response(r) => collector.push(*r)?,
            Step::Done => return Ok(collector.skipped),
        }
    }
}

fn parse_u64(property: &'static str, v: &Option<String>) -> Result<Option<u64>, ParseError> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ParseError::BadValue {
                property,
                value: s.chars().take(64).collect(),
            }),
    }
}

fn build_resource(path: DavPath, p: &Props) -> Result<Resource, ParseError> {
    // A size that does not parse is treated as absent (and logged) rather than failing the
    // whole listing for one odd entry.
    let content_length = match parse_u64("getcontentlength", &p.content_length) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(path = %path, "ignoring {e}");
            None
        }
    };
    let non_empty = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    Ok(Resource {
        path,
        is_collection: p.is_collection,
        content_length,
        last_modified: p.last_modified.as_deref().and_then(dates::parse_any),
        created: p.created.as_deref().and_then(dates::parse_any),
        etag: non_empty(&p.etag).map(|t| normalize_etag(&t)),
        content_type: non_empty(&p.content_type),
        display_name: p.display_name.clone().filter(|s| !s.is_empty()),
        // Quotas are advisory: a bad value is ignored rather than failing the listing.
        quota_available: parse_u64("quota-available-bytes", &p.quota_available).unwrap_or(None),
        quota_used: parse_u64("quota-used-bytes", &p.quota_used).unwrap_or(None),
    })
}

/// Entity tags as HTTP headers carry them. Some servers put the bare tag in `getetag`
/// (dav-server, WsgiDAV: `12a-5f3c`) while their `ETag` header says `"12a-5f3c"`; quoting
/// bare tags makes the two comparable and usable in `If-Match` / `If-Range`.
pub fn normalize_etag(tag: &str) -> String {
    let t = tag.trim();
    if t.starts_with('"') || t.starts_with("W/\"") {
        t.to_owned()
    } else {
        format!("\"{t}\"")
    }
}

/// Weak comparison (RFC 9110 8.8.3.2): the same tag, ignoring `W/`.
pub fn etags_match(a: &str, b: &str) -> bool {
    let strip = |s: &str| normalize_etag(s).trim_start_matches("W/").to_owned();
    strip(a) == strip(b)
}

/// Parses `HTTP/1.1 404 Not Found` into 404.
fn parse_status_line(s: &str) -> Option<u16> {
    let mut it = s.split_whitespace();
    let _version = it.next()?;
    it.next()?.parse().ok()
}

/// What feeding one event gave.
enum Step {
    More,
    Response(Box<RawResponse>),
    Done,
}

/// The multistatus grammar as a state machine fed one event at a time, so that a body in
/// memory and a body still downloading go through the same rules.
#[derive(Default)]
struct RawParser {
    stack: Vec<Node>,
    responses: usize,
    current: Option<RawResponse>,
    propstat: Option<PropstatState>,
    text: String,
    saw_root: bool,
}

impl RawParser {
    fn feed(&mut self, ns: ResolveResult, event: Event) -> Result<Step, ParseError> {
        match event {
            Event::Start(start) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(ParseError::TooDeep);
                }
                let is_dav = matches!(ns, ResolveResult::Bound(Namespace(DAV_NS)));
                let local = start.local_name();
                let local = local.as_ref();
                let parent = self.stack.last().copied();
                let node = match (parent, is_dav, local) {
                    (None, true, "multistatus") => {
                        self.saw_root = true;
                        Node::Multistatus
                    }
                    (None, _, _) => {
                        return Err(ParseError::NotMultistatus(start.name().as_ref().to_owned()));
                    }
                    (Some(Node::Multistatus), true, "response") => {
                        if self.responses >= MAX_RESPONSES {
                            return Err(ParseError::TooManyResponses);
                        }
                        self.current = Some(RawResponse::default());
                        Node::Response
                    }
                    (Some(Node::Response), true, "href") => Node::Href,
                    (Some(Node::Response), true, "status") => Node::ResponseStatus,
                    (Some(Node::Response), true, "propstat") => {
                        self.propstat = Some(PropstatState::default());
                        Node::Propstat
                    }
                    (Some(Node::Propstat), true, "status") => Node::PropstatStatus,
                    (Some(Node::Propstat), true, "prop") => Node::PropContainer,
                    (Some(Node::PropContainer), true, name) => match Prop::from_local(name) {
                        Some(p) => {
                            if p == Prop::ResourceType
                                && let Some(ps) = self.propstat.as_mut()
                            {
                                ps.props.resourcetype_seen = true;
                            }
                            Node::Property(p)
                        }
                        None => Node::Other,
                    },
                    (Some(Node::Property(Prop::ResourceType)), true, "collection") => {
                        Node::Collection
                    }
                    _ => Node::Other,
                };
                self.text.clear();
                self.stack.push(node);
            }
            Event::End(_) => {
                let node = self.stack.pop().ok_or(ParseError::Truncated)?;
                match node {
                    Node::Href => {
                        if let Some(r) = self.current.as_mut() {
                            r.hrefs.push(std::mem::take(&mut self.text));
                        }
                    }
                    Node::ResponseStatus => {
                        if let Some(r) = self.current.as_mut() {
                            r.status = parse_status_line(&self.text);
                        }
                    }
                    Node::PropstatStatus => {
                        if let Some(ps) = self.propstat.as_mut() {
                            ps.status = parse_status_line(&self.text);
                        }
                    }
                    Node::Collection => {
                        if let Some(ps) = self.propstat.as_mut() {
                            ps.props.is_collection = true;
                        }
                    }
                    Node::Property(p) => {
                        if let Some(ps) = self.propstat.as_mut() {
                            let v = Some(std::mem::take(&mut self.text));
                            let props = &mut ps.props;
                            match p {
                                Prop::ResourceType => {}
                                Prop::ContentLength => props.content_length = v,
                                Prop::LastModified => props.last_modified = v,
                                Prop::CreationDate => props.created = v,
                                Prop::ETag => props.etag = v,
                                Prop::ContentType => props.content_type = v,
                                Prop::DisplayName => props.display_name = v,
                                Prop::QuotaAvailable => props.quota_available = v,
                                Prop::QuotaUsed => props.quota_used = v,
                            }
                        }
                    }
                    Node::Propstat => {
                        if let (Some(ps), Some(r)) = (self.propstat.take(), self.current.as_mut()) {
                            r.propstat = true;
                            // No status at all is taken as success: some servers omit it.
                            let ok = ps.status.is_none_or(|s| (200..300).contains(&s));
                            if ok {
                                r.props.merge(ps.props);
                            }
                        }
                    }
                    Node::Response => {
                        if let Some(r) = self.current.take() {
                            self.responses += 1;
                            return Ok(Step::Response(Box::new(r)));
                        }
                    }
                    Node::Multistatus => {
                        return Ok(Step::Done);
                    }
                    Node::PropContainer | Node::Other => {}
                }
                self.text.clear();
            }
            Event::Text(t) => {
                if collecting(&self.stack) {
                    push_text(&mut self.text, &t)?;
                }
            }
            Event::CData(c) => {
                if collecting(&self.stack) {
                    push_text(&mut self.text, &c)?;
                }
            }
            Event::GeneralRef(r) => {
                let resolved: String = if r.is_char_ref() {
                    match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        _ => return Err(ParseError::UndefinedEntity(r.to_string())),
                    }
                } else {
                    match quick_xml::escape::resolve_predefined_entity(&r) {
                        Some(s) => s.to_owned(),
                        None => return Err(ParseError::UndefinedEntity(r.to_string())),
                    }
                };
                if collecting(&self.stack) {
                    push_text(&mut self.text, &resolved)?;
                }
            }
            Event::Empty(_) => {
                // expand_empty_elements is on: never produced.
            }
            Event::Eof => {
                return Err(if self.saw_root {
                    ParseError::Truncated
                } else {
                    ParseError::NotMultistatus("none".into())
                });
            }
            Event::Decl(_) | Event::PI(_) | Event::DocType(_) | Event::Comment(_) => {}
        }
        Ok(Step::More)
    }
}

fn configure<R>(reader: &mut NsReader<R>) {
    let cfg = reader.config_mut();
    cfg.expand_empty_elements = true;
    cfg.check_end_names = true;
    cfg.trim_text(false);
}

fn xml_error<R>(reader: &NsReader<R>, e: quick_xml::Error) -> ParseError {
    ParseError::Xml {
        position: reader.error_position(),
        message: e.to_string(),
    }
}

fn collecting(stack: &[Node]) -> bool {
    matches!(
        stack.last(),
        Some(
            Node::Href
                | Node::ResponseStatus
                | Node::PropstatStatus
                | Node::Property(
                    Prop::ContentLength
                        | Prop::LastModified
                        | Prop::CreationDate
                        | Prop::ETag
                        | Prop::ContentType
                        | Prop::DisplayName
                        | Prop::QuotaAvailable
                        | Prop::QuotaUsed
                )
        )
    )
}

fn push_text(buf: &mut String, s: &str) -> Result<(), ParseError> {
    if buf.len() + s.len() > MAX_TEXT {
        return Err(ParseError::TextTooLong);
    }
    buf.push_str(s);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Root {
        Root::new(&Url::parse("http://h/dav/").expect("url")).expect("root")
    }

    fn parse_str(s: &str) -> Result<Multistatus, ParseError> {
        let r = root();
        parse(s.as_bytes(), r.url(), &r)
    }

    #[test]
    fn namespace_prefixes_do_not_matter() {
        for doc in [
            r#"<D:multistatus xmlns:D="DAV:"><D:response><D:href>/dav/a</D:href><D:propstat><D:prop><D:getcontentlength>5</D:getcontentlength><D:resourcetype/></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>"#,
            r#"<multistatus xmlns="DAV:"><response><href>/dav/a</href><propstat><prop><getcontentlength>5</getcontentlength></prop><status>HTTP/1.1 200 OK</status></propstat></response></multistatus>"#,
            r#"<z:multistatus xmlns:z="DAV:" xmlns:q="urn:x"><z:response><z:href>/dav/a</z:href><z:propstat><z:prop><z:getcontentlength>5</z:getcontentlength><q:getcontentlength>9</q:getcontentlength></z:prop></z:propstat></z:response></z:multistatus>"#,
        ] {
            let ms = parse_str(doc).expect("parse");
            assert_eq!(ms.resources.len(), 1, "{doc}");
            assert_eq!(ms.resources[0].content_length, Some(5), "{doc}");
            assert_eq!(ms.resources[0].path, DavPath::parse("/a").expect("p"));
        }
    }

    #[test]
    fn wrong_namespace_is_not_a_multistatus() {
        let e = parse_str(r#"<multistatus xmlns="urn:not-dav"><response/></multistatus>"#);
        assert!(matches!(e, Err(ParseError::NotMultistatus(_))), "{e:?}");
        let e = parse_str(r#"<multistatus><response/></multistatus>"#);
        assert!(matches!(e, Err(ParseError::NotMultistatus(_))), "{e:?}");
        let e = parse_str(r#"<html><body>Login</body></html>"#);
        assert!(matches!(e, Err(ParseError::NotMultistatus(_))), "{e:?}");
    }

    #[test]
    fn failed_propstat_means_absent_property() {
        let doc = r#"<D:multistatus xmlns:D="DAV:"><D:response><D:href>/dav/f</D:href>
        <D:propstat><D:prop><D:resourcetype/><D:getetag>"e1"</D:getetag></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>
        <D:propstat><D:prop><D:getcontentlength>77</D:getcontentlength><D:resourcetype><D:collection/></D:resourcetype></D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>
        </D:response></D:multistatus>"#;
        let ms = parse_str(doc).expect("parse");
        let r = &ms.resources[0];
        assert!(!r.is_collection);
        assert_eq!(r.content_length, None);
        assert_eq!(r.etag.as_deref(), Some("\"e1\""));
    }

    #[test]
    fn response_status_404_drops_the_response_and_duplicates_keep_the_first() {
        let doc = r#"<D:multistatus xmlns:D="DAV:">
        <D:response><D:href>/dav/gone</D:href><D:status>HTTP/1.1 404 Not Found</D:status></D:response>
        <D:response><D:href>/dav/a</D:href><D:propstat><D:prop><D:getcontentlength>1</D:getcontentlength></D:prop></D:propstat></D:response>
        <D:response><D:href>/dav/a/</D:href><D:propstat><D:prop><D:getcontentlength>2</D:getcontentlength></D:prop></D:propstat></D:response>
        </D:multistatus>"#;
        let ms = parse_str(doc).expect("parse");
        assert_eq!(ms.resources.len(), 1);
        assert_eq!(ms.resources[0].content_length, Some(1));
    }

    #[test]
    fn hrefs_outside_root_are_skipped() {
        let doc = r#"<D:multistatus xmlns:D="DAV:">
        <D:response><D:href>/etc/passwd</D:href><D:propstat><D:prop/></D:propstat></D:response>
        <D:response><D:href>/dav/../etc/shadow</D:href><D:propstat><D:prop/></D:propstat></D:response>
        <D:response><D:href>/dav/ok</D:href><D:propstat><D:prop/></D:propstat></D:response>
        </D:multistatus>"#;
        let ms = parse_str(doc).expect("parse");
        assert_eq!(ms.resources.len(), 1);
        assert_eq!(ms.skipped.len(), 2);
    }

    /// Issue 22, item 1: one response with 20,000 hrefs and a 60 KB entity tag made 20,000
    /// resources with a copy of the tag each (1.2 GB); now the first href alone is taken,
    /// and the rest is reported once.
    #[test]
    fn many_hrefs_in_one_response_with_properties_take_the_first_only() {
        let mut doc = String::from(r#"<D:multistatus xmlns:D="DAV:"><D:response>"#);
        for i in 0..20_000 {
            doc.push_str(&format!("<D:href>/dav/f{i}</D:href>"));
        }
        doc.push_str(&format!(
            "<D:propstat><D:prop><D:getetag>{}</D:getetag></D:prop></D:propstat></D:response></D:multistatus>",
            "e".repeat(60_000)
        ));
        let ms = parse_str(&doc).expect("parse");
        assert_eq!(ms.resources.len(), 1);
        assert_eq!(ms.resources[0].path, DavPath::parse("/f0").expect("p"));
        assert_eq!(ms.skipped.len(), 1, "{:?}", ms.skipped);
        // No href at all: nothing, and no panic.
        let doc = r#"<D:multistatus xmlns:D="DAV:"><D:response><D:propstat><D:prop/></D:propstat></D:response></D:multistatus>"#;
        assert!(parse_str(doc).expect("parse").resources.is_empty());
        // Several hrefs beside a status (RFC 4918's form) are all taken.
        let doc = r#"<D:multistatus xmlns:D="DAV:"><D:response><D:href>/dav/a</D:href><D:href>/dav/b</D:href><D:status>HTTP/1.1 200 OK</D:status></D:response></D:multistatus>"#;
        assert_eq!(parse_str(doc).expect("parse").resources.len(), 2);
    }

    #[test]
    fn entities_and_cdata() {
        let doc = r#"<D:multistatus xmlns:D="DAV:"><D:response><D:href>/dav/a&amp;b&#x20;c</D:href><D:propstat><D:prop><D:getetag>&quot;x&quot;</D:getetag><D:displayname><![CDATA[<n>]]></D:displayname></D:prop></D:propstat></D:response></D:multistatus>"#;
        let ms = parse_str(doc).expect("parse");
        let r = &ms.resources[0];
        assert_eq!(r.path, DavPath::parse("/a&b c").expect("p"));
        assert_eq!(r.etag.as_deref(), Some("\"x\""));
        assert_eq!(r.display_name.as_deref(), Some("<n>"));
    }

    #[test]
    fn bad_content_length_is_absent() {
        let doc = r#"<D:multistatus xmlns:D="DAV:"><D:response><D:href>/dav/a</D:href><D:propstat><D:prop><D:getcontentlength>-3</D:getcontentlength></D:prop></D:propstat></D:response></D:multistatus>"#;
        let ms = parse_str(doc).expect("parse");
        assert_eq!(ms.resources[0].content_length, None);
    }
}
