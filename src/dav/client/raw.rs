//! GETs whose body the caller takes from the socket itself.
//!
//! For plain `http://` mounts, a ranged GET can be sent on a connection of its own and its
//! body left in the kernel's socket buffer, for a caller that moves it on without copying it
//! through user space (the Linux FUSE frontend splices it into `/dev/fuse`). Everything that
//! needs more than one simple exchange goes the ordinary way: TLS, proxies, NTLM and Kerberos,
//! redirects, challenges, and any answer other than a plain `206` with a `Content-Length`.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{
    AuthState, ByteRange, ContentRange, DavClient, DavError, DavPath, ResponseMeta,
    parse_content_range, response_meta, stalled_at,
};

/// A `206` whose body (exactly `range.end - range.start + 1` bytes) is still in `socket`.
#[derive(Debug)]
pub struct RawBody {
    pub socket: TcpStream,
    pub range: ContentRange,
    pub meta: ResponseMeta,
}

/// Largest response head read.
const MAX_HEAD: usize = 16 << 10;

impl DavClient {
    /// Whether [`DavClient::get_raw`] can apply at all: a plain-HTTP root with no proxy.
    pub fn raw_gets_possible(&self) -> bool {
        self.inner.root.url().scheme() == "http" && self.inner.proxy.is_none()
    }

    /// GET `range` (both ends given) of `path` on a connection of its own, only if the entity
    /// still has tag `if_range`. `Ok(None)`: this exchange cannot be done raw, or the server
    /// answered something else than a plain `206` (the caller uses [`DavClient::get`]).
    pub async fn get_raw(
        &self,
        path: &DavPath,
        range: ByteRange,
        if_range: Option<&str>,
    ) -> Result<Option<RawBody>, DavError> {
        let Some(end) = range.end else {
            return Ok(None);
        };
        if !self.raw_gets_possible() {
            return Ok(None);
        }
        let auth = {
            let st = self.inner.auth.lock().unwrap_or_else(|e| e.into_inner());
            match &*st {
                AuthState::None | AuthState::Basic | AuthState::Bearer(_) => true,
                AuthState::Ntlm(_) | AuthState::Negotiate(_) | AuthState::Digest { .. } => false,
            }
        };
        if !auth {
            return Ok(None);
        }
        let url = self.inner.root.url_for(path, false);
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Ok(None);
        };
        let mut headers = vec![
            (
                "Host",
                url[url::Position::BeforeHost..url::Position::AfterPort].to_owned(),
            ),
            ("User-Agent", self.inner.user_agent.clone()),
            ("Accept-Encoding", "identity".to_owned()),
            ("Range", format!("bytes={}-{end}", range.start)),
        ];
        if let Some(tag) = if_range.filter(|t| !t.starts_with("W/")) {
            headers.push(("If-Range", tag.to_owned()));
        }
        if let Some(v) = self.authorization("GET", &url).await {
            headers.push(("Authorization", v));
        }
        // A control character in a value (an entity tag from a listing may hold an encoded
        // line break) would split the request: such values go the ordinary way, which
        // refuses them.
        if headers
            .iter()
            .any(|(_, v)| v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f))
        {
            return Ok(None);
        }
        let mut req = format!(
            "GET {} HTTP/1.1\r\n",
            &url[url::Position::BeforePath..url::Position::AfterQuery]
        );
        for (name, value) in &headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str("\r\n");
        let ticket = self.inner.health.admit("GET", &path.to_string())?;
        self.inner.stats.record("GET");
        tracing::trace!(path = %path, ?range, "raw GET");
        let connect = TcpStream::connect((host.trim_matches(['[', ']']), port));
        let mut sock = match tokio::time::timeout(self.inner.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            // Not reachable on a connection of our own: the ordinary way retries and reports.
            Ok(Err(e)) => {
                tracing::debug!(path = %path, "raw GET: {e}");
                return Ok(None);
            }
            Err(_) => return Ok(None),
        };
        let _ = sock.set_nodelay(true);
        let stall = ticket.wait(self.inner.progress_timeout);
        let exchange = async {
            sock.write_all(req.as_bytes()).await?;
            read_head(&mut sock).await
        };
        let head = match tokio::time::timeout(stall, exchange).await {
            Ok(Ok(h)) => {
                self.inner.health.answered();
                h
            }
            // A connection of our own that broke: the ordinary way retries and reports.
            Ok(Err(e)) => {
                tracing::debug!(path = %path, "raw GET: {e}");
                None
            }
            Err(_) => {
                self.inner.health.silent();
                return Err(stalled_at("GET", &path.to_string()));
            }
        };
        drop(ticket);
        let Some((status, headers)) = head else {
            return Ok(None);
        };
        if status != 206 || !plain_body(&headers) {
            tracing::debug!(path = %path, status, "raw GET not usable; the ordinary way");
            return Ok(None);
        }
        let meta = response_meta(&headers);
        let cr = headers
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range);
        let Some(cr) = cr.filter(|cr| meta.content_length == Some(cr.end - cr.start + 1)) else {
            return Ok(None);
        };
        Ok(Some(RawBody {
            socket: sock,
            range: cr,
            meta,
        }))
    }
}

/// Identity body with a length: no chunking, no content coding, the connection our own.
fn plain_body(h: &HeaderMap) -> bool {
    let coded = |name: HeaderName| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"))
    };
    !h.contains_key(reqwest::header::TRANSFER_ENCODING)
        && !coded(reqwest::header::CONTENT_ENCODING)
        && h.contains_key(reqwest::header::CONTENT_LENGTH)
}

/// What the bytes at the start of an answer hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// A whole response head of `len` bytes (its blank line included).
    Complete {
        len: usize,
        status: u16,
        headers: HeaderMap,
    },
    /// The start of one: more bytes are needed.
    Partial,
    /// Not a response head we take (malformed, over [`MAX_HEAD`] bytes or 64 fields).
    Invalid,
}

/// Parses the response head at the start of `buf` (bytes after it are left alone).
pub fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => {
            let status = resp.code.unwrap_or(0);
            let mut map = HeaderMap::new();
            for h in resp.headers.iter() {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(h.name.as_bytes()),
                    HeaderValue::from_bytes(h.value),
                ) {
                    map.append(name, value);
                }
            }
            Head::Complete {
                len,
                status,
                headers: map,
            }
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Head::Partial,
        _ => Head::Invalid,
    }
}

/// Reads the response head and nothing after it (the body stays in the socket): peeks, and
/// consumes exactly the head once its blank line is in (bytes peeked before that are all
/// head, so they are consumed as they come). `None` for a head that does not parse or is too
/// large.
async fn read_head(sock: &mut TcpStream) -> std::io::Result<Option<(u16, HeaderMap)>> {
    use tokio::io::AsyncReadExt;
    let mut head: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; MAX_HEAD];
    loop {
        let n = sock.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        let had = head.len();
        head.extend_from_slice(&buf[..n]);
        match parse_head(&head) {
            Head::Complete {
                len,
                status,
                headers,
            } => {
                let mut rest = vec![0u8; len - had];
                sock.read_exact(&mut rest).await?;
                return Ok(Some((status, headers)));
            }
            Head::Partial => {
                sock.read_exact(&mut buf[..n]).await?;
            }
            Head::Invalid => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A server on 127.0.0.1 that answers one connection with `pieces`, written one by one.
    async fn answering(pieces: Vec<&'static [u8]>) -> TcpStream {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            s.set_nodelay(true).expect("nodelay");
            for p in pieces {
                s.write_all(p).await.expect("write");
                s.flush().await.expect("flush");
                tokio::task::yield_now().await;
            }
        });
        TcpStream::connect(addr).await.expect("connect")
    }

    #[tokio::test]
    async fn the_head_is_consumed_and_the_body_left_in_the_socket() {
        let mut s = answering(vec![
            b"HTTP/1.1 206 Partial Content\r\nContent-Ra",
            b"nge: bytes 10-14/100\r\nContent-Length: 5\r\nETag: \"x\"\r",
            b"\n\r\nhel",
            b"lo",
        ])
        .await;
        let (status, h) = read_head(&mut s).await.expect("io").expect("a head");
        assert_eq!(status, 206);
        assert!(plain_body(&h));
        assert_eq!(response_meta(&h).etag.as_deref(), Some("\"x\""));
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.expect("body");
        assert_eq!(body, b"hello");
    }

    #[tokio::test]
    async fn chunked_coded_or_unparsable_answers_are_left_to_the_ordinary_way() {
        let mut s = answering(vec![
            b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ])
        .await;
        let (_, h) = read_head(&mut s).await.expect("io").expect("a head");
        assert!(!plain_body(&h), "chunked");
        let mut s = answering(vec![
            b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\nContent-Encoding: gzip\r\n\r\nhello",
        ])
        .await;
        let (_, h) = read_head(&mut s).await.expect("io").expect("a head");
        assert!(!plain_body(&h), "gzip");
        let mut s = answering(vec![b"NOT HTTP AT ALL\r\n\r\n"]).await;
        assert!(read_head(&mut s).await.expect("io").is_none());
        let mut s = answering(vec![b"HTTP/1.1 206 Partial"]).await;
        assert!(
            read_head(&mut s).await.is_err(),
            "closed before the head ended"
        );
    }

    /// An entity tag holding a line break (possible from a listing's XML) never reaches the
    /// wire: the raw GET is not sent at all, and the ordinary way refuses the value.
    #[tokio::test]
    async fn header_values_with_control_characters_are_not_sent() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let url = url::Url::parse(&format!("http://127.0.0.1:{port}/dav/")).expect("url");
        let client = DavClient::new(super::super::ClientConfig::new(url)).expect("client");
        let path = DavPath::parse("/f.bin").expect("path");
        let range = ByteRange {
            start: 0,
            end: Some(9),
        };
        for tag in ["\"a\"\r\nX-Injected: 1", "\"a\"\n", "\"a\0\""] {
            let got = client
                .get_raw(&path, range, Some(tag))
                .await
                .expect("no error");
            assert!(got.is_none(), "{tag:?}");
        }
        // A connection would be in the accept queue already (connect returns once it is).
        let accepted = tokio::time::timeout(std::time::Duration::ZERO, l.accept());
        assert!(accepted.await.is_err(), "a connection was opened");
    }
}
