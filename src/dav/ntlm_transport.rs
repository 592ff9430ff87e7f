//! Connections of our own for NTLM (IIS "Windows authentication").
//!
//! NTLM authenticates a TCP connection, not a request: the NEGOTIATE and AUTHENTICATE
//! messages must travel on the same HTTP/1.1 connection, and every later request on that
//! connection is authenticated. A pooled HTTP client may hand each request a different
//! connection, so NTLM mounts send their requests here instead: each connection is opened by
//! us (hyper's low-level client), authenticated once with an `OPTIONS` of the mounted URL
//! (no side effects, whatever the real request is), then reused for as many requests as the
//! server allows, one at a time. Idle authenticated connections are kept for reuse.
//!
//! The same trust rules as the main client apply to HTTPS: the system store plus `--ca-cert`,
//! or the pins, or `--insecure`.
//!
//! Through an HTTP proxy each connection is a `CONNECT` tunnel to the server (with the
//! proxy's Basic login when it has one): a forward proxy that relays requests may hand them
//! to different upstream connections, which breaks NTLM; a tunnel is one TCP stream end to
//! end. Proxies that allow `CONNECT` only to port 443 refuse tunnels to `http://` servers;
//! the error says so.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, HOST, HeaderValue, WWW_AUTHENTICATE};
use url::Url;

use super::auth::Credentials;
use super::error::{Cause, DavError, TransportKind};
use super::ntlm;
use super::proxy::ProxyConfig;

/// A stream whose reads fail with `TimedOut` when nothing moves for `limit`: no byte arrives
/// and none is sent (the same progress timeout the main client applies; a transfer that
/// keeps moving is never cut). The HTTP library waits for the answer while it still sends
/// the request body: bytes sent count as progress, or a long upload would be cut.
struct Timed<T> {
    io: T,
    limit: Duration,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl<T> Timed<T> {
    fn new(io: T, limit: Duration) -> Self {
        Timed {
            io,
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
            armed: false,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Timed<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !this.armed {
                    let at = tokio::time::Instant::now() + this.limit;
                    this.sleep.as_mut().reset(at);
                    this.armed = true;
                }
                if this.sleep.as_mut().poll(cx).is_ready() {
                    this.armed = false;
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no data from the server within the progress timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Timed<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) && this.armed {
            let at = tokio::time::Instant::now() + this.limit;
            this.sleep.as_mut().reset(at);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Idle authenticated connections kept per mount.
const MAX_IDLE: usize = 8;

/// The scheme name the server offered: IIS offers `Negotiate` and `NTLM`; under `Negotiate`
/// we send raw NTLM tokens, which Windows servers accept (no Kerberos).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Ntlm,
    Negotiate,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Ntlm => "NTLM",
            Scheme::Negotiate => "Negotiate",
        }
    }
}

/// How TLS connections are checked (mirrors the main client's settings).
#[derive(Clone)]
pub enum Trust {
    /// System roots plus extra CA certificates (PEM).
    System {
        extra_ca_pem: Option<Vec<u8>>,
    },
    Pins(Vec<[u8; 32]>),
    Insecure,
}

/// What the TLS side of a connection needs: whom to trust, and who we are (if asked).
#[derive(Clone)]
pub struct TlsSettings {
    pub trust: Trust,
    pub identity: Option<super::tls::ClientIdentity>,
}

pub struct NtlmTransport {
    root: Url,
    scheme: Scheme,
    /// `None`: the logged-on user's own credentials, through SSPI (Windows single sign-on).
    credentials: Option<Credentials>,
    #[cfg(windows)]
    sso: Option<crate::sys::sspi::Credential>,
    connect_timeout: Duration,
    progress_timeout: Duration,
    tls: Option<tokio_rustls::TlsConnector>,
    /// An HTTP proxy to tunnel through.
    proxy: Option<ProxyConfig>,
    idle: Arc<Mutex<Vec<SendRequest<reqwest::Body>>>>,
}

impl std::fmt::Debug for NtlmTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtlmTransport")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

fn transport(method: &str, url: &Url, kind: TransportKind, detail: String) -> DavError {
    DavError::Transport {
        method: method.into(),
        path: url.path().into(),
        kind,
        detail,
    }
}

fn tls_config(tls: &TlsSettings) -> Result<rustls::ClientConfig, String> {
    let id = tls.identity.as_ref();
    let mut cfg = match &tls.trust {
        Trust::Pins(pins) => super::tls::pinned_config(pins, id)?,
        Trust::Insecure => super::tls::accept_any_config(id)?,
        Trust::System { extra_ca_pem } => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let extra: Vec<CertificateDer<'static>> = match extra_ca_pem {
                Some(pem) => CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("cannot read the CA certificate: {e}"))?,
                None => Vec::new(),
            };
            let verifier =
                rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
                    .map_err(|e| format!("TLS setup: {e}"))?;
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier));
            super::tls::with_identity(builder, id)?
        }
    };
    // NTLM is HTTP/1.1 only.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Opens a `CONNECT` tunnel to `authority` on a connection to a proxy. Reads the proxy's
/// answer byte by byte: what follows it belongs to the server.
async fn tunnel(
    tcp: &mut tokio::net::TcpStream,
    authority: &str,
    credentials: Option<&Credentials>,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(c) = credentials {
        req.push_str(&format!("Proxy-Authorization: {}\r\n", c.basic_header()));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("proxy: {e}"))?;
    let mut head = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err("the proxy's answer to CONNECT is too long".into());
        }
        match tcp.read(&mut byte).await {
            Ok(0) => return Err("the proxy closed the connection during CONNECT".into()),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("proxy: {e}")),
        }
    }
    let status = std::str::from_utf8(&head)
        .ok()
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(()),
        Some(407) => Err(format!(
            "the proxy wants a login for a tunnel to {authority} (407); give it in --proxy \
             (user in the URL, password in DAVDRIVE_PROXY_PASSWORD)"
        )),
        Some(s) => Err(format!(
            "the proxy refused a tunnel to {authority} ({s}); some proxies allow CONNECT \
             only to port 443: mount the server over https:// or bypass the proxy (NO_PROXY)"
        )),
        None => Err("the proxy answered CONNECT with something that is not HTTP".into()),
    }
}

impl NtlmTransport {
    pub fn new(
        root: Url,
        scheme: Scheme,
        credentials: Option<Credentials>,
        connect_timeout: Duration,
        progress_timeout: Duration,
        tls: &TlsSettings,
        proxy: Option<ProxyConfig>,
    ) -> Result<Self, DavError> {
        if let Some(p) = &proxy
            && p.url.scheme() != "http"
        {
            return Err(DavError::Invalid(format!(
                "NTLM tunnels only through http:// proxies, not {}",
                p.url.scheme()
            )));
        }
        let tls = if root.scheme() == "https" {
            let cfg = tls_config(tls).map_err(DavError::Invalid)?;
            Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
        } else {
            None
        };
        #[cfg(windows)]
        let sso = match credentials {
            Some(_) => None,
            None => Some(
                crate::sys::sspi::Credential::acquire("NTLM", None).map_err(DavError::Invalid)?,
            ),
        };
        #[cfg(not(windows))]
        if credentials.is_none() {
            return Err(DavError::Invalid(
                "NTLM needs a user name and password here (single sign-on is Windows only)".into(),
            ));
        }
        Ok(NtlmTransport {
            root,
            scheme,
            credentials,
            #[cfg(windows)]
            sso,
            connect_timeout,
            progress_timeout,
            tls,
            proxy,
            idle: Arc::default(),
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Sends `req` on an authenticated connection of ours.
    pub async fn send(&self, req: reqwest::Request) -> Result<reqwest::Response, DavError> {
        let method = req.method().as_str().to_owned();
        let url = req.url().clone();
        let pooled = self.take_idle();
        let from_pool = pooled.is_some();
        let mut sender = match pooled {
            Some(s) => s,
            None => self.connect_authenticated(&method, &url).await?,
        };
        let req = self.origin_form(req, &url)?;
        let resp = match sender.try_send_request(req).await {
            Ok(r) => r,
            Err(mut e) => match e.take_message() {
                // A pooled connection the server closed before our request went out: the
                // request was never sent, so any method may go again on a fresh connection.
                Some(req) if from_pool => {
                    tracing::debug!(method, "pooled NTLM connection closed; reconnecting");
                    sender = self.connect_authenticated(&method, &url).await?;
                    sender.send_request(req).await.map_err(|e| {
                        transport(&method, &url, TransportKind::Broken, e.to_string())
                    })?
                }
                _ => {
                    let detail = e.into_error().to_string();
                    return Err(transport(&method, &url, TransportKind::Broken, detail));
                }
            },
        };
        // Back to the pool once the caller has read the body; a connection the server no
        // longer accepts (401) is dropped instead.
        let idle = self.idle.clone();
        let refused = resp.status().as_u16() == 401;
        tokio::spawn(async move {
            if refused {
                return;
            }
            if sender.ready().await.is_ok()
                && let Ok(mut v) = idle.lock()
                && v.len() < MAX_IDLE
            {
                v.push(sender);
            }
        });
        let (parts, body) = resp.into_parts();
        let resp = http::Response::from_parts(parts, reqwest::Body::wrap(body));
        Ok(reqwest::Response::from(resp))
    }

    fn take_idle(&self) -> Option<SendRequest<reqwest::Body>> {
        let mut v = self.idle.lock().ok()?;
        while let Some(s) = v.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    /// `reqwest::Request` → what hyper's connection sends: origin-form target plus `Host`.
    fn origin_form(
        &self,
        req: reqwest::Request,
        url: &Url,
    ) -> Result<http::Request<reqwest::Body>, DavError> {
        let method = req.method().as_str().to_owned();
        let mut req: http::Request<reqwest::Body> = req
            .try_into()
            .map_err(|e: reqwest::Error| DavError::Invalid(format!("request: {e}")))?;
        let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
        *req.uri_mut() = target
            .parse()
            .map_err(|e| DavError::Invalid(format!("{method} {target}: {e}")))?;
        let host = &url[url::Position::BeforeHost..url::Position::AfterPort];
        if let Ok(v) = HeaderValue::from_str(host) {
            req.headers_mut().insert(HOST, v);
        }
        Ok(req)
    }

    async fn connect(
        &self,
        method: &str,
        url: &Url,
    ) -> Result<SendRequest<reqwest::Body>, DavError> {
        let host = url.host_str().unwrap_or("").to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let (dial_host, dial_port) = match &self.proxy {
            Some(p) => (
                p.url.host_str().unwrap_or("").to_owned(),
                p.url.port_or_known_default().unwrap_or(80),
            ),
            None => (host.clone(), port),
        };
        let connected = tokio::time::timeout(self.connect_timeout, async {
            let mut tcp =
                tokio::net::TcpStream::connect((dial_host.trim_matches(['[', ']']), dial_port))
                    .await
                    .map_err(|e| e.to_string())?;
            if let Some(p) = &self.proxy {
                tunnel(&mut tcp, &format!("{host}:{port}"), p.credentials.as_ref()).await?;
            }
            Ok::<_, String>(tcp)
        })
        .await;
        let tcp = match connected {
            Err(_) => {
                return Err(transport(
                    method,
                    url,
                    TransportKind::Connect,
                    "connect timed out".into(),
                ));
            }
            Ok(Err(e)) => return Err(transport(method, url, TransportKind::Connect, e)),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        macro_rules! handshake {
            ($io:expr) => {{
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new($io))
                    .await
                    .map_err(|e| transport(method, url, TransportKind::Broken, e.to_string()))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
            }};
        }
        Ok(match &self.tls {
            None => handshake!(Timed::new(tcp, self.progress_timeout)),
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(
                    host.trim_matches(['[', ']']).to_owned(),
                )
                .map_err(|e| DavError::Invalid(format!("server name {host:?}: {e}")))?;
                let stream = tokio::time::timeout(self.connect_timeout, tls.connect(name, tcp))
                    .await
                    .map_err(|_| {
                        transport(
                            method,
                            url,
                            TransportKind::Connect,
                            "TLS handshake timed out".into(),
                        )
                    })?
                    .map_err(|e| transport(method, url, TransportKind::Tls, e.to_string()))?;
                handshake!(Timed::new(stream, self.progress_timeout))
            }
        })
    }

    /// Opens a connection and runs the NTLM handshake on it with OPTIONS of the root.
    async fn connect_authenticated(
        &self,
        method: &str,
        url: &Url,
    ) -> Result<SendRequest<reqwest::Body>, DavError> {
        let mut sender = self.connect(method, url).await?;
        let scheme = self.scheme.name();
        let target = &self.root[url::Position::BeforePath..url::Position::AfterQuery];
        let host = &self.root[url::Position::BeforeHost..url::Position::AfterPort];
        // The handshake request: OPTIONS, or PROPFIND Depth 0 where OPTIONS is anonymous.
        let probe = |verb: &str, token: &[u8]| -> Result<http::Request<reqwest::Body>, DavError> {
            let mut b = http::Request::builder().method(verb);
            if verb == "PROPFIND" {
                b = b.header("depth", "0");
            }
            b.uri(target)
                .header(HOST, host)
                .header(
                    AUTHORIZATION,
                    format!("{scheme} {}", STANDARD.encode(token)),
                )
                .header(CONTENT_LENGTH, "0")
                .body(reqwest::Body::from(Bytes::new()))
                .map_err(|e| DavError::Invalid(format!("NTLM request: {e}")))
        };
        let refused = |detail: &str| DavError::Service {
            method: method.into(),
            path: url.path().into(),
            status: 401,
            message: format!(
                "{scheme} authentication failed: {detail}; wrong user name (DOMAIN\\user) or \
                 password?"
            ),
            cause: Some(Cause::HandshakeRefused {
                scheme: scheme.to_string(),
            }),
        };
        let invalid = |reason: String| DavError::InvalidResponse {
            method: method.into(),
            path: url.path().into(),
            reason,
        };
        // Windows single sign-on: Windows makes both messages for the logged-on user.
        #[cfg(windows)]
        let mut sso = self.sso.as_ref().map(|c| {
            let host = self.root.host_str().unwrap_or_default();
            crate::sys::sspi::Context::new(c, &format!("HTTP/{host}"))
        });
        #[cfg(windows)]
        let first = match sso.as_mut() {
            Some(ctx) => ctx.step(None).map_err(|e| refused(&e))?.0,
            None => ntlm::negotiate(),
        };
        #[cfg(not(windows))]
        let first = ntlm::negotiate();
        // NEGOTIATE → CHALLENGE.
        let mut found = None;
        for verb in ["OPTIONS", "PROPFIND"] {
            sender
                .ready()
                .await
                .map_err(|e| transport(method, url, TransportKind::Broken, e.to_string()))?;
            let resp = sender
                .send_request(probe(verb, &first)?)
                .await
                .map_err(|e| transport(method, url, TransportKind::Broken, e.to_string()))?;
            let challenge = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| {
                    let (name, token) = v.trim().split_once(' ')?;
                    name.eq_ignore_ascii_case(scheme)
                        .then(|| token.trim().to_owned())
                });
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            match challenge {
                Some(token) => {
                    found = Some((verb, token));
                    break;
                }
                // Anonymous OPTIONS: authenticate with a PROPFIND instead.
                None if status.is_success() && verb == "OPTIONS" => continue,
                None => {
                    return Err(refused(&format!("the server sent no challenge ({status})")));
                }
            }
        }
        let Some((verb, token)) = found else {
            return Err(refused("the server sent no challenge"));
        };
        let bytes = STANDARD
            .decode(token.as_bytes())
            .map_err(|_| invalid("the NTLM challenge is not base64".into()))?;
        let answer = match &self.credentials {
            Some(creds) => {
                let challenge =
                    ntlm::parse_challenge(&bytes).map_err(|e| invalid(e.to_string()))?;
                let mut client_challenge = [0u8; 8];
                getrandom::fill(&mut client_challenge)
                    .map_err(|e| DavError::Invalid(format!("no randomness: {e}")))?;
                let workstation = std::env::var("COMPUTERNAME")
                    .or_else(|_| std::env::var("HOSTNAME"))
                    .unwrap_or_default()
                    .to_uppercase();
                ntlm::authenticate(
                    &challenge,
                    &creds.user,
                    creds.password.expose(),
                    &workstation,
                    &client_challenge,
                )
            }
            #[cfg(windows)]
            None => match sso.as_mut() {
                Some(ctx) => ctx.step(Some(&bytes)).map_err(|e| refused(&e))?.0,
                None => return Err(refused("no credentials")),
            },
            #[cfg(not(windows))]
            None => return Err(refused("no credentials")),
        };
        // AUTHENTICATE: the connection is ours from now on.
        sender
            .ready()
            .await
            .map_err(|e| transport(method, url, TransportKind::Broken, e.to_string()))?;
        let resp = sender
            .send_request(probe(verb, &answer)?)
            .await
            .map_err(|e| transport(method, url, TransportKind::Broken, e.to_string()))?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status.as_u16() == 401 {
            return Err(refused("the server refused the answer"));
        }
        sender
            .ready()
            .await
            .map_err(|e| transport(method, url, TransportKind::Broken, e.to_string()))?;
        tracing::debug!(scheme, "authenticated a connection");
        Ok(sender)
    }
}
