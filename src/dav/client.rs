//! The WebDAV client: one method per protocol operation, on reqwest + tokio.
//!
//! Design:
//! - Every request goes through [`DavClient::send`], which owns authentication, the single
//!   retry of idempotent requests that met a dead pooled connection (Orthanc closes idle
//!   connections after 1 s, so a reused connection can die under us), request counting and
//!   the translation of reqwest errors into [`DavError::Transport`].
//! - Timeouts are about progress: a connect timeout and a read timeout that restarts with
//!   every chunk, never a wall-clock limit on a whole transfer.
//! - No `Expect: 100-continue` (reqwest never sends it; Orthanc never answers it).
//! - PROPFIND always sends `Depth: 0` or `1` (Orthanc refuses `infinity` and a missing Depth)
//!   and an explicit property list. Bodies of multistatus answers are bounded in size.
//! - Redirects (301, 302, 307, 308) are followed by `send` itself, at most
//!   [`MAX_REDIRECTS`] hops, keeping the method and the body (PROPFIND stays PROPFIND, PUT
//!   stays PUT). Credentials go only to the mounted origin, or to its HTTPS upgrade on the
//!   same host (`credentials_allowed`); never to another host. A streamed body cannot be
//!   sent twice: its redirect is an error, and the caller resends from its journal.
//!   [`DavClient::final_root`] lets the mount adopt the URL a server redirects its root to
//!   (IIS's HTTP→HTTPS rule), so that later requests go there directly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::Stream;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::auth::{BearerSource, Credentials, DigestChallenge, Secret, offered_schemes};
use super::error::{Cause, DavError, TransportKind};
use super::health::Health;
use super::href::{DavPath, HrefError, Root};
use super::kerberos::Kerberos;
use super::multistatus::{self, Multistatus, Resource};
use super::ntlm_transport::{NtlmTransport, Scheme, TlsSettings, Trust};
use super::proxy::ProxyConfig;
use super::tls::ClientIdentity;

/// The properties davdrive asks for; nothing else (allprop costs Nextcloud and IIS dearly).
pub const PROPFIND_BODY: &str = concat!(
    r#"<?xml version="1.0" encoding="utf-8"?>"#,
    r#"<D:propfind xmlns:D="DAV:"><D:prop>"#,
    "<D:resourcetype/><D:getcontentlength/><D:getlastmodified/><D:getetag/>",
    "<D:creationdate/><D:displayname/><D:quota-available-bytes/><D:quota-used-bytes/>",
    "</D:prop></D:propfind>"
);

const LOCK_BODY: &str = concat!(
    r#"<?xml version="1.0" encoding="utf-8"?>"#,
    r#"<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>"#,
    "<D:locktype><D:write/></D:locktype><D:owner>davdrive</D:owner></D:lockinfo>"
);

/// How the client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The collection to mount. May not carry a password: use `credentials`.
    pub url: Url,
    pub credentials: Option<Credentials>,
    /// Bearer tokens, used when the server asks for `Bearer`.
    pub bearer: Option<BearerSource>,
    pub connect_timeout: Duration,
    /// Longest time without any progress (bytes sent or received) before a request fails.
    pub progress_timeout: Duration,
    /// Largest multistatus body accepted (about 430 bytes per entry with our property list).
    pub max_listing_bytes: usize,
    /// How long an idempotent request may be retried while the server answers 429, 502,
    /// 503 or 504.
    pub retry_budget: Duration,
    /// Extra trusted CA (or server) certificates, PEM, for this mount only.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Accept any certificate. Never a default; warned about loudly.
    pub insecure: bool,
    /// Follow redirects from https to http (`--allow-http-redirect`); refused otherwise.
    pub allow_http_redirect: bool,
    /// SHA-256 fingerprints of the only server certificates to accept (pinning). When set,
    /// the system trust store and `extra_ca_pem` are not consulted.
    pub pins: Vec<[u8; 32]>,
    /// A client certificate, for servers that ask for one (TLS client authentication).
    pub client_identity: Option<ClientIdentity>,
    /// An HTTP proxy for every request (`--proxy`); without it the standard environment
    /// variables apply (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`). There is no
    /// automatic proxy discovery (WPAD, system settings).
    pub proxy: Option<ProxyConfig>,
    pub user_agent: String,
}

impl ClientConfig {
    pub fn new(url: Url) -> Self {
        ClientConfig {
            url,
            credentials: None,
            bearer: None,
            connect_timeout: Duration::from_secs(10),
            progress_timeout: Duration::from_secs(30),
            max_listing_bytes: 64 * 1024 * 1024,
            retry_budget: Duration::from_secs(30),
            extra_ca_pem: None,
            insecure: false,
            allow_http_redirect: false,
            pins: Vec::new(),
            client_identity: None,
            proxy: None,
            user_agent: format!("davdrive/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// PROPFIND depth. Infinity is deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    Zero,
    One,
}

/// What OPTIONS said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Compliance classes from the `DAV` header (`1`, `2`, `3`, ...). Empty: not WebDAV.
    pub dav_classes: Vec<String>,
    /// Methods from the `Allow` header, upper-case.
    pub allow: Vec<String>,
}

impl Capabilities {
    pub fn is_webdav(&self) -> bool {
        !self.dav_classes.is_empty()
    }

    /// Whether `method` is allowed; an absent `Allow` header allows everything.
    pub fn allows(&self, method: &str) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|m| m.eq_ignore_ascii_case(method))
    }
}

#[cfg(target_os = "linux")]
mod raw;
#[cfg(target_os = "linux")]
pub use raw::{Head, RawBody, parse_head};

/// Metadata from GET/HEAD/PUT response headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseMeta {
    pub content_length: Option<u64>,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
    pub content_type: Option<String>,
}

/// The comma-separated values of every `name` header (`DAV`, `Allow`, `Connection`).
pub fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// An answer as [`DavClient::exchange`] got it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body, cut at the caller's limit.
    pub body: Bytes,
    /// Where the answer came from, after redirects.
    pub url: Url,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub version: String,
    /// From sending the request to the end of the body read.
    pub elapsed: Duration,
}

impl Exchange {
    /// A header's value, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A byte range asked of GET: `start..=end`, or `start..` when `end` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: Option<u64>,
}

/// `Content-Range: bytes start-end/total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub start: u64,
    pub end: u64,
    pub total: Option<u64>,
}

/// A GET in progress; the body is read chunk by chunk.
#[derive(Debug)]
pub struct GetStream {
    /// `Some` when the server honoured the range (206); `None` when it sent the whole body.
    pub range: Option<ContentRange>,
    pub meta: ResponseMeta,
    response: Response,
    method: &'static str,
    path: String,
    /// How long one chunk may take (`--timeout`).
    stall: Duration,
}

impl GetStream {
    /// The next chunk of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, DavError> {
        match tokio::time::timeout(self.stall, self.response.chunk()).await {
            Ok(r) => r.map_err(|e| transport_error(self.method, &self.path, &e)),
            Err(_) => Err(stalled_at(self.method, &self.path)),
        }
    }
}

/// Conditions that make a write safe against lost updates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// `If-Match`: the entity tag we read.
    pub if_match: Option<String>,
    /// `If-None-Match: *`: create only.
    pub if_none_match_any: bool,
    /// `If-Unmodified-Since`: for servers whose entity tag is weak or missing.
    pub if_unmodified_since: Option<SystemTime>,
    /// A lock token we hold on the resource.
    pub lock_token: Option<String>,
}

/// A body for PUT.
pub enum PutBody {
    /// Replayable in memory: retried once on a dead connection, resent after a challenge.
    Bytes(Bytes),
    /// A stream sent as it is produced. With `len`, sent with Content-Length; without,
    /// chunked. Sent once: the caller holds the data for any retry.
    Stream {
        stream: Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static>,
        len: Option<u64>,
    },
}

/// A lock we hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    pub token: String,
    pub timeout: Option<Duration>,
}

/// Requests sent, by method; tests use it to prove caching.
#[derive(Debug, Default)]
pub struct RequestStats {
    by_method: Mutex<BTreeMap<String, u64>>,
}

impl RequestStats {
    fn record(&self, method: &str) {
        if let Ok(mut m) = self.by_method.lock() {
            *m.entry(method.to_owned()).or_default() += 1;
        }
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_method.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }
}

/// What the server asked for.
enum AuthState {
    None,
    Basic,
    Bearer(Secret),
    /// NTLM (or raw NTLM under Negotiate): requests go through our own authenticated
    /// connections.
    Ntlm(Arc<NtlmTransport>),
    /// Kerberos under Negotiate: a fresh token on every request.
    Negotiate(Arc<Kerberos>),
    Digest {
        challenge: DigestChallenge,
        /// Nonce count: one more for every request with this nonce.
        nc: u32,
    },
}

/// Exponential backoff with jitter: attempt 1 waits 100–200 ms, doubling up to 5 s.
fn backoff_delay(attempt: u32) -> Duration {
    let exp = 100u64.saturating_mul(1 << attempt.min(6));
    // Jitter from the clock's low bits: enough to spread clients apart.
    let nanos = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = u64::from(nanos) % (exp / 2 + 1);
    Duration::from_millis((exp / 2 + jitter).min(5000))
}

/// A fresh client nonce for Digest.
fn cnonce() -> String {
    use sha2::Digest as _;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!(
        "{t}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    sha2::Sha256::digest(seed.as_bytes())[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

enum ReqBody {
    Empty,
    Bytes(Bytes),
    Xml(&'static str),
    Stream(std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>),
}

impl ReqBody {
    fn replayable(&self) -> bool {
        !matches!(self, ReqBody::Stream(_))
    }
}

struct Inner {
    http: reqwest::Client,
    root: Root,
    credentials: Option<Credentials>,
    bearer: Option<BearerSource>,
    /// What an NTLM transport needs, should the server ask for NTLM.
    tls: TlsSettings,
    connect_timeout: Duration,
    progress_timeout: Duration,
    /// For requests sent without reqwest (`raw`, Linux).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    user_agent: String,
    /// The proxy requests go through (explicit or from the environment), if any.
    proxy: Option<ProxyConfig>,
    /// How the server challenged us; from then on credentials go out preemptively.
    auth: Mutex<AuthState>,
    kerberos_gate: tokio::sync::Mutex<KerberosGate>,
    stats: RequestStats,
    max_listing_bytes: usize,
    /// Redirects from https to http are followed (`ClientConfig::allow_http_redirect`).
    allow_http_redirect: bool,
    retry_budget: Duration,
    /// Whether the server answers at all.
    health: Health,
    /// Whether connection errors are retried with backoff (on once the mount is up: a mount
    /// of a dead server must fail at once).
    reconnect_retries: std::sync::atomic::AtomicBool,
}

/// Serialises Kerberos starts; remembers a refused password and whether a failure was
/// reported (once per mount).
#[derive(Default)]
struct KerberosGate {
    password_refused: bool,
    warned: bool,
}

/// The URL that finally answered a request (after redirects), whatever transport sent it.
#[derive(Clone, Debug)]
struct FinalUrl(Url);

/// Redirect hops followed per request.
pub const MAX_REDIRECTS: u32 = 5;

/// Whether credentials for `root` may be sent to `target`: the same host, with the same
/// scheme and port or upgraded to HTTPS.
pub fn credentials_allowed(root: &Url, target: &Url) -> bool {
    let same_port = root.port_or_known_default() == target.port_or_known_default();
    root.host_str() == target.host_str()
        && ((root.scheme() == target.scheme() && same_port)
            || (target.scheme() == "https"
                && (same_port || target.port_or_known_default() == Some(443))))
}

/// Whether two URLs have the same origin (scheme, host, port).
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// How long connection errors (refused, reset, cut short) are retried with backoff, at most:
/// a server restart is ridden out, a dead server fails each operation within seconds.
const RECONNECT_BUDGET: Duration = Duration::from_secs(4);

/// A WebDAV client bound to one mounted collection. Cheap to clone.
#[derive(Clone)]
pub struct DavClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DavClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DavClient")
            .field("root", &redact_url(self.inner.root.url()))
            .finish_non_exhaustive()
    }
}

/// A URL without userinfo, for messages.
pub fn redact_url(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

impl DavClient {
    pub fn new(config: ClientConfig) -> Result<Self, DavError> {
        if config.url.password().is_some() {
            return Err(DavError::Invalid(
                "put no password in the URL: use `davdrive login`, a secrets file or DAVDRIVE_PASSWORD"
                    .into(),
            ));
        }
        let root = Root::new(&config.url)?;
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &config.extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| DavError::Invalid(format!("cannot read the CA certificate: {e}")))?;
            if certs.is_empty() {
                return Err(DavError::Invalid(
                    "the CA certificate file holds no PEM certificate".into(),
                ));
            }
            builder = builder.tls_certs_merge(certs);
        }
        if let Some(p) = &config.proxy {
            let mut proxy = reqwest::Proxy::all(p.url.as_str())
                .map_err(|e| DavError::Invalid(format!("bad proxy URL: {e}")))?;
            if let Some(c) = &p.credentials {
                proxy = proxy.basic_auth(&c.user, c.password.expose());
            }
            builder = builder.proxy(proxy);
        }
        if !config.pins.is_empty() {
            let tls = super::tls::pinned_config(&config.pins, config.client_identity.as_ref())
                .map_err(DavError::Invalid)?;
            builder = builder.tls_backend_preconfigured(tls);
        } else if let Some(id) = &config.client_identity {
            builder = builder.identity(id.reqwest().map_err(DavError::Invalid)?);
        }
        if config.insecure {
            tracing::warn!(
                "--insecure: the server's certificate is NOT checked; anyone on the network path can read and change what you send and receive"
            );
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if config.url.scheme() == "http" && config.bearer.is_some() {
            tracing::warn!(
                "a bearer token goes over plain HTTP: anyone on the network path can read it \
                 and use it until it expires; prefer https://"
            );
        }
        let http = builder
            .user_agent(config.user_agent.clone())
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .tcp_nodelay(true)
            .build()
            .map_err(|e| DavError::Invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(DavClient {
            inner: Arc::new(Inner {
                http,
                root,
                credentials: config.credentials,
                bearer: config.bearer,
                tls: TlsSettings {
                    trust: if !config.pins.is_empty() {
                        Trust::Pins(config.pins.clone())
                    } else if config.insecure {
                        Trust::Insecure
                    } else {
                        Trust::System {
                            extra_ca_pem: config.extra_ca_pem.clone(),
                        }
                    },
                    identity: config.client_identity.clone(),
                },
                connect_timeout: config.connect_timeout,
                progress_timeout: config.progress_timeout,
                user_agent: config.user_agent.clone(),
                proxy: config
                    .proxy
                    .clone()
                    .or_else(|| super::proxy::env_proxy(&config.url)),
                auth: Mutex::new(AuthState::None),
                kerberos_gate: tokio::sync::Mutex::new(KerberosGate::default()),
                stats: RequestStats::default(),
                max_listing_bytes: config.max_listing_bytes,
                allow_http_redirect: config.allow_http_redirect,
                retry_budget: config.retry_budget,
                health: Health::default(),
                reconnect_retries: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    pub fn root(&self) -> &Root {
        &self.inner.root
    }

    /// How long a transfer may go without progress (`--timeout`).
    pub fn progress_timeout(&self) -> Duration {
        self.inner.progress_timeout
    }

    pub fn stats(&self) -> &RequestStats {
        &self.inner.stats
    }

    /// Since when the server has not answered any request, if it is silent now.
    pub fn silent_since(&self) -> Option<SystemTime> {
        self.inner.health.silent_since()
    }

    /// How long failed requests are retried (`--retry-time`).
    pub fn retry_budget(&self) -> Duration {
        self.inner.retry_budget
    }

    /// An OPTIONS of the mounted URL (redirects followed).
    async fn options_of_root(&self) -> Result<(Response, Url), DavError> {
        let path = DavPath::root();
        let url = self.inner.root.url_for(&path, true);
        let resp = self
            .send(
                "OPTIONS",
                &url,
                &path,
                HeaderMap::new(),
                ReqBody::Empty,
                true,
            )
            .await?;
        Ok((resp, url))
    }

    /// Where the server redirects the mounted URL to, when it does (following up to
    /// [`MAX_REDIRECTS`] hops with OPTIONS). `None`: the mounted URL answers itself.
    pub async fn final_root(&self) -> Result<Option<Url>, DavError> {
        let (resp, url) = self.options_of_root().await?;
        let last = resp
            .extensions()
            .get::<FinalUrl>()
            .map_or_else(|| url.clone(), |f| f.0.clone());
        Ok((last != url).then_some(last))
    }

    /// OPTIONS on the root: is this WebDAV, and what may we do?
    pub async fn options(&self) -> Result<Capabilities, DavError> {
        let path = DavPath::root();
        let (resp, _) = self.options_of_root().await?;
        let resp = check("OPTIONS", &path, resp).await?;
        let list = |name: &str| header_list(resp.headers(), name);
        Ok(Capabilities {
            dav_classes: list("dav"),
            allow: list("allow")
                .into_iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
        })
    }

    /// One request for diagnostics (`davdrive doctor`): any method, with authentication,
    /// redirects and retries as for every request, and the answer whatever its status, with
    /// at most `limit` bytes of its body.
    pub async fn exchange(
        &self,
        method: &'static str,
        path: &DavPath,
        collection: bool,
        headers: HeaderMap,
        body: Option<Bytes>,
        limit: usize,
    ) -> Result<Exchange, DavError> {
        let url = self.inner.root.url_for(path, collection);
        let body = body.map_or(ReqBody::Empty, ReqBody::Bytes);
        let started = tokio::time::Instant::now();
        let mut resp = self.send(method, &url, path, headers, body, true).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let version = format!("{:?}", resp.version());
        let final_url = resp
            .extensions()
            .get::<FinalUrl>()
            .map_or_else(|| url.clone(), |f| f.0.clone());
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(self.inner.progress_timeout, resp.chunk()).await {
                Ok(Ok(Some(c))) => {
                    let room = limit.saturating_sub(out.len());
                    out.extend_from_slice(&c[..c.len().min(room)]);
                    if out.len() >= limit {
                        break;
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(transport_error(method, &path.to_string(), &e)),
                Err(_) => return Err(stalled(method, path)),
            }
        }
        Ok(Exchange {
            status,
            headers,
            body: out.into(),
            url: final_url,
            version,
            elapsed: started.elapsed(),
        })
    }

    /// PROPFIND with our property list. `collection` picks the URL form (trailing slash).
    pub async fn propfind(
        &self,
        path: &DavPath,
        depth: Depth,
        collection: bool,
    ) -> Result<Multistatus, DavError> {
        let mut resources = Vec::new();
        let (skipped, date) = self
            .propfind_each(path, depth, collection, |r| resources.push(r))
            .await?;
        Ok(Multistatus {
            resources,
            skipped,
            date,
        })
    }

    /// As [`DavClient::propfind`], handing each resource to `sink` as soon as it is parsed,
    /// while the rest of the listing downloads. Returns the hrefs that were refused and the
    /// server's `Date`. On an
    /// error, what `sink` received stays valid (complete responses) but the listing is not.
    pub async fn propfind_each(
        &self,
        path: &DavPath,
        depth: Depth,
        collection: bool,
        sink: impl FnMut(Resource),
    ) -> Result<(Vec<HrefError>, Option<SystemTime>), DavError> {
        let url = self.inner.root.url_for(path, collection);
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static("depth"),
            HeaderValue::from_static(match depth {
                Depth::Zero => "0",
                Depth::One => "1",
            }),
        );
        h.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml; charset=utf-8"),
        );
        let resp = self
            .send("PROPFIND", &url, path, h, ReqBody::Xml(PROPFIND_BODY), true)
            .await?;
        let resp = check("PROPFIND", path, resp).await?;
        if resp.status() != StatusCode::MULTI_STATUS {
            return Err(DavError::InvalidResponse {
                method: "PROPFIND".into(),
                path: path.to_string(),
                reason: format!(
                    "expected 207 Multi-Status, got {} (is this a WebDAV URL?)",
                    resp.status().as_u16()
                ),
            });
        }
        let limit = self.inner.max_listing_bytes;
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large("PROPFIND", path, limit));
        }
        let date = resp
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(super::dates::parse_any);
        // Parsed as it downloads: a large listing costs little more than its transfer.
        let mut body = BodyReader::new(resp, limit, self.inner.progress_timeout);
        let parsed = multistatus::parse_each(&mut body, &url, &self.inner.root, sink).await;
        match (parsed, body.failure) {
            (Ok(skipped), _) => Ok((skipped, date)),
            (Err(_), Some(BodyFailure::TooLarge)) => Err(too_large("PROPFIND", path, limit)),
            (Err(_), Some(BodyFailure::Transport(e))) => {
                Err(transport_error("PROPFIND", &path.to_string(), &e))
            }
            (Err(_), Some(BodyFailure::Stalled)) => Err(stalled("PROPFIND", path)),
            (Err(e), None) => Err(DavError::InvalidResponse {
                method: "PROPFIND".into(),
                path: path.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// GET, whole or a range, optionally only if the entity still has tag `if_range`.
    ///
    /// A server that ignores Range answers 200 with the whole body: `GetStream::range` is then
    /// `None` and the caller must skip to the offset it wanted.
    pub async fn get(
        &self,
        path: &DavPath,
        range: Option<ByteRange>,
        if_range: Option<&str>,
    ) -> Result<GetStream, DavError> {
        let url = self.inner.root.url_for(path, false);
        let mut h = HeaderMap::new();
        if let Some(r) = range {
            let v = match r.end {
                Some(end) => format!("bytes={}-{}", r.start, end),
                None => format!("bytes={}-", r.start),
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(reqwest::header::RANGE, v);
            }
            // If-Range needs a strong validator (RFC 9110 13.1.5).
            if let Some(tag) = if_range.filter(|t| !t.starts_with("W/"))
                && let Ok(v) = HeaderValue::from_str(tag)
            {
                h.insert(reqwest::header::IF_RANGE, v);
            }
        }
        let resp = self
            .send("GET", &url, path, h, ReqBody::Empty, true)
            .await?;
        let resp = check("GET", path, resp).await?;
        let range = if resp.status() == StatusCode::PARTIAL_CONTENT {
            let cr = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range)
                .ok_or_else(|| DavError::InvalidResponse {
                    method: "GET".into(),
                    path: path.to_string(),
                    reason: "206 without a usable Content-Range".into(),
                })?;
            Some(cr)
        } else {
            None
        };
        Ok(GetStream {
            range,
            meta: response_meta(resp.headers()),
            response: resp,
            method: "GET",
            path: path.to_string(),
            stall: self.inner.progress_timeout,
        })
    }

    /// GET the whole body into memory (small files, tests).
    pub async fn get_bytes(&self, path: &DavPath) -> Result<Bytes, DavError> {
        let mut s = self.get(path, None, None).await?;
        let mut out = Vec::new();
        while let Some(c) = s.chunk().await? {
            out.extend_from_slice(&c);
        }
        Ok(out.into())
    }

    /// HEAD. Orthanc answers `Content-Length: 0` for every file: trust listings for sizes.
    pub async fn head(&self, path: &DavPath) -> Result<ResponseMeta, DavError> {
        let url = self.inner.root.url_for(path, false);
        let resp = self
            .send("HEAD", &url, path, HeaderMap::new(), ReqBody::Empty, true)
            .await?;
        let resp = check("HEAD", path, resp).await?;
        Ok(response_meta(resp.headers()))
    }

    /// PUT a file. Returns the response headers' metadata (the new ETag when the server says).
    pub async fn put(
        &self,
        path: &DavPath,
        body: PutBody,
        pre: &Preconditions,
    ) -> Result<ResponseMeta, DavError> {
        let url = self.inner.root.url_for(path, false);
        let mut h = precondition_headers(pre, &url);
        let body = match body {
            PutBody::Bytes(b) => {
                // Said even when 0: without it an empty PUT has no body at all, and nginx's
                // dav module answers 500 ("PUT request body must be in a file").
                h.insert(reqwest::header::CONTENT_LENGTH, HeaderValue::from(b.len()));
                ReqBody::Bytes(b)
            }
            PutBody::Stream { stream, len } => {
                if let Some(n) = len {
                    h.insert(reqwest::header::CONTENT_LENGTH, HeaderValue::from(n));
                }
                ReqBody::Stream(Box::into_pin(stream))
            }
        };
        let resp = self.send("PUT", &url, path, h, body, true).await?;
        let resp = check("PUT", path, resp).await?;
        Ok(response_meta(resp.headers()))
    }

    /// PUT `len` bytes at `start` into an existing file (`Content-Range: bytes a-b/*`), for
    /// servers that store such a PUT as a partial update (Apache mod_dav, dav-server,
    /// SabreDAV). RFC 9110 lets other servers replace the whole file with the piece: callers
    /// must have proven the server's behaviour first.
    pub async fn put_range(
        &self,
        path: &DavPath,
        start: u64,
        len: u64,
        stream: Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static>,
    ) -> Result<ResponseMeta, DavError> {
        if len == 0 {
            return Err(DavError::Invalid("an empty partial PUT".into()));
        }
        let url = self.inner.root.url_for(path, false);
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::CONTENT_LENGTH, HeaderValue::from(len));
        let range = format!("bytes {start}-{}/*", start + len - 1);
        if let Ok(v) = HeaderValue::from_str(&range) {
            h.insert(reqwest::header::CONTENT_RANGE, v);
        }
        let body = ReqBody::Stream(Box::into_pin(stream));
        let resp = self.send("PUT", &url, path, h, body, true).await?;
        let resp = check("PUT", path, resp).await?;
        Ok(response_meta(resp.headers()))
    }

    /// MOVE the file `from` onto `to` under the preconditions of a PUT to `to`: create only
    /// (`Overwrite: F`), or replace only the version with entity tag `if_match`, named in a
    /// tagged `If` header on the destination (RFC 4918 10.4), with our lock token if any.
    pub async fn move_onto(
        &self,
        from: &DavPath,
        to: &DavPath,
        pre: &Preconditions,
    ) -> Result<(), DavError> {
        if from.is_root() || to.is_root() {
            return Err(DavError::Invalid(
                "refusing to MOVE the mounted root".into(),
            ));
        }
        let url = self.inner.root.url_for(from, false);
        let dest = self.inner.root.url_for(to, false);
        let mut h = HeaderMap::new();
        let value = |v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| DavError::Invalid("destination is not a valid header".into()))
        };
        h.insert(
            HeaderName::from_static("destination"),
            value(dest.as_str())?,
        );
        h.insert(
            HeaderName::from_static("overwrite"),
            HeaderValue::from_static(if pre.if_none_match_any { "F" } else { "T" }),
        );
        let tag = pre.if_match.as_ref().filter(|t| !t.starts_with("W/"));
        let conditions: Vec<String> = pre
            .lock_token
            .iter()
            .map(|t| format!("<{t}>"))
            .chain(tag.map(|t| format!("[{t}]")))
            .collect();
        if !conditions.is_empty() {
            let v = format!("<{dest}> ({})", conditions.join(" "));
            h.insert(HeaderName::from_static("if"), value(&v)?);
        }
        let resp = self
            .send("MOVE", &url, from, h, ReqBody::Empty, false)
            .await?;
        let resp = check("MOVE", from, resp).await?;
        multistatus_failure("MOVE", from, resp, self.inner.progress_timeout).await
    }

    /// MKCOL.
    pub async fn mkcol(&self, path: &DavPath) -> Result<(), DavError> {
        let url = self.inner.root.url_for(path, true);
        let resp = self
            .send("MKCOL", &url, path, HeaderMap::new(), ReqBody::Empty, false)
            .await?;
        check("MKCOL", path, resp).await.map(drop)
    }

    /// DELETE a file or (recursively, on the server) a collection.
    pub async fn delete(
        &self,
        path: &DavPath,
        collection: bool,
        pre: &Preconditions,
    ) -> Result<(), DavError> {
        if path.is_root() {
            return Err(DavError::Invalid(
                "refusing to DELETE the mounted root".into(),
            ));
        }
        let url = self.inner.root.url_for(path, collection);
        let h = precondition_headers(pre, &url);
        let resp = self
            .send("DELETE", &url, path, h, ReqBody::Empty, true)
            .await?;
        let resp = check("DELETE", path, resp).await?;
        multistatus_failure("DELETE", path, resp, self.inner.progress_timeout).await
    }

    /// MOVE `from` to `to`.
    pub async fn move_to(
        &self,
        from: &DavPath,
        to: &DavPath,
        collection: bool,
        overwrite: bool,
    ) -> Result<(), DavError> {
        self.transfer("MOVE", from, to, collection, overwrite).await
    }

    /// COPY `from` to `to` (Depth infinity for collections, as RFC 4918 requires).
    pub async fn copy_to(
        &self,
        from: &DavPath,
        to: &DavPath,
        collection: bool,
        overwrite: bool,
    ) -> Result<(), DavError> {
        self.transfer("COPY", from, to, collection, overwrite).await
    }

    async fn transfer(
        &self,
        method: &'static str,
        from: &DavPath,
        to: &DavPath,
        collection: bool,
        overwrite: bool,
    ) -> Result<(), DavError> {
        if from.is_root() || to.is_root() {
            return Err(DavError::Invalid(format!(
                "refusing to {method} the mounted root"
            )));
        }
        let url = self.inner.root.url_for(from, collection);
        let dest = self.inner.root.url_for(to, collection);
        let mut h = HeaderMap::new();
        let dest = HeaderValue::from_str(dest.as_str())
            .map_err(|_| DavError::Invalid("destination is not a valid header".into()))?;
        h.insert(HeaderName::from_static("destination"), dest);
        h.insert(
            HeaderName::from_static("overwrite"),
            HeaderValue::from_static(if overwrite { "T" } else { "F" }),
        );
        let resp = self
            .send(method, &url, from, h, ReqBody::Empty, false)
            .await?;
        let resp = check(method, from, resp).await?;
        multistatus_failure(method, from, resp, self.inner.progress_timeout).await
    }

    /// LOCK (exclusive write, depth 0).
    pub async fn lock(&self, path: &DavPath, timeout: Duration) -> Result<LockInfo, DavError> {
        let url = self.inner.root.url_for(path, false);
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static("depth"),
            HeaderValue::from_static("0"),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("Second-{}", timeout.as_secs())) {
            h.insert(HeaderName::from_static("timeout"), v);
        }
        h.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml; charset=utf-8"),
        );
        let resp = self
            .send("LOCK", &url, path, h, ReqBody::Xml(LOCK_BODY), false)
            .await?;
        let resp = check("LOCK", path, resp).await?;
        let token = resp
            .headers()
            .get("lock-token")
            .and_then(|v| v.to_str().ok())
            .map(|t| {
                t.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| DavError::InvalidResponse {
                method: "LOCK".into(),
                path: path.to_string(),
                reason: "no Lock-Token header".into(),
            })?;
        let timeout = resp
            .headers()
            .get("timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_timeout)
            .or(Some(timeout));
        Ok(LockInfo { token, timeout })
    }

    /// Refreshes a lock we hold.
    pub async fn refresh_lock(
        &self,
        path: &DavPath,
        token: &str,
        timeout: Duration,
    ) -> Result<(), DavError> {
        let url = self.inner.root.url_for(path, false);
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("(<{token}>)")) {
            h.insert(HeaderName::from_static("if"), v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("Second-{}", timeout.as_secs())) {
            h.insert(HeaderName::from_static("timeout"), v);
        }
        let resp = self
            .send("LOCK", &url, path, h, ReqBody::Empty, true)
            .await?;
        check("LOCK", path, resp).await.map(drop)
    }

    /// UNLOCK.
    pub async fn unlock(&self, path: &DavPath, token: &str) -> Result<(), DavError> {
        let url = self.inner.root.url_for(path, false);
        let mut h = HeaderMap::new();
        let v = HeaderValue::from_str(&format!("<{token}>"))
            .map_err(|_| DavError::Invalid("lock token is not a valid header".into()))?;
        h.insert(HeaderName::from_static("lock-token"), v);
        let resp = self
            .send("UNLOCK", &url, path, h, ReqBody::Empty, true)
            .await?;
        check("UNLOCK", path, resp).await.map(drop)
    }

    /// Sends one request: authentication, one retry of an idempotent replayable request on a
    /// broken connection, counting. Returns whatever status came back.
    async fn send(
        &self,
        method: &'static str,
        url: &Url,
        path: &DavPath,
        headers: HeaderMap,
        body: ReqBody,
        idempotent: bool,
    ) -> Result<Response, DavError> {
        let m = Method::from_bytes(method.as_bytes())
            .map_err(|_| DavError::Invalid(format!("bad method {method}")))?;
        let replayable = body.replayable();
        let mut body = Some(body);
        let mut retried = false;
        let mut authed_retry = false;
        let started = tokio::time::Instant::now();
        let mut attempt = 0u32;
        let mut url = url.clone();
        let mut hops = 0u32;
        let mut progress = None;
        loop {
            // A silent server fails the request at once (see `health`).
            let ticket = self.inner.health.admit(method, &path.to_string())?;
            let mut req = self.inner.http.request(m.clone(), url.clone());
            req = req.headers(headers.clone());
            let value = if credentials_allowed(self.inner.root.url(), &url) {
                self.authorization(method, &url).await
            } else {
                None
            };
            if let Some(value) = value
                && let Ok(mut v) = HeaderValue::from_str(&value)
            {
                v.set_sensitive(true);
                req = req.header(reqwest::header::AUTHORIZATION, v);
            }
            let this_body = if replayable {
                match body.as_ref() {
                    Some(ReqBody::Bytes(b)) => Some(reqwest::Body::from(b.clone())),
                    Some(ReqBody::Xml(s)) => Some(reqwest::Body::from(*s)),
                    _ => None,
                }
            } else {
                match body.take() {
                    Some(ReqBody::Stream(s)) => {
                        let len = headers
                            .get(reqwest::header::CONTENT_LENGTH)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok());
                        let (b, p) = counted(s, len);
                        progress = Some(p);
                        Some(b)
                    }
                    _ => None,
                }
            };
            if let Some(b) = this_body {
                req = req.body(b);
            }
            self.inner.stats.record(method);
            tracing::trace!(method, path = %path, "request");
            let ntlm = self
                .ntlm_transport()
                .filter(|_| same_origin(self.inner.root.url(), &url));
            let sent = match ntlm {
                Some(t) => match req.build() {
                    Ok(r) => t.send(r).await,
                    Err(e) => Err(transport_error(method, &path.to_string(), &e)),
                },
                None => {
                    let limit = ticket.wait(self.inner.progress_timeout);
                    match within_progress(req.send(), progress.take(), limit).await {
                        Some(r) => r.map_err(|e| transport_error(method, &path.to_string(), &e)),
                        None => Err(stalled(method, path)),
                    }
                }
            };
            match &sent {
                Err(DavError::Transport {
                    kind: TransportKind::Timeout,
                    ..
                }) => self.inner.health.silent(),
                Err(_) => {}
                Ok(_) => self.inner.health.answered(),
            }
            drop(ticket);
            match sent {
                Err(err) => {
                    if idempotent && replayable && !retried && err.is_retryable_transport() {
                        tracing::debug!(method, path = %path, error = %err, "retrying once on a fresh connection");
                        retried = true;
                        continue;
                    }
                    if idempotent
                        && replayable
                        && err.is_reconnectable()
                        && self.inner.reconnect_retries.load(Ordering::Relaxed)
                        && let Some(delay) = self.reconnect_backoff(started, &mut attempt)
                    {
                        tracing::debug!(method, path = %path, error = %err, ?delay, "connection failed; retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Err(err);
                }
                Ok(resp) => {
                    if replayable
                        && hops < MAX_REDIRECTS
                        && matches!(resp.status().as_u16(), 301 | 302 | 307 | 308)
                        && let Some(next) = resp
                            .headers()
                            .get(reqwest::header::LOCATION)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|l| url.join(l).ok())
                            .filter(|n| matches!(n.scheme(), "http" | "https"))
                            // Never from https to plain http unless asked (the answer then
                            // fails, naming the option, in `check`).
                            .filter(|n| {
                                self.inner.allow_http_redirect
                                    || !(url.scheme() == "https" && n.scheme() == "http")
                            })
                    {
                        tracing::debug!(
                            method,
                            from = %redact_url(&url),
                            to = %redact_url(&next),
                            status = resp.status().as_u16(),
                            "following a redirect"
                        );
                        hops += 1;
                        url = next;
                        continue;
                    }
                    if resp.status() == StatusCode::UNAUTHORIZED
                        && (self.inner.credentials.is_some()
                            || self.inner.bearer.is_some()
                            || offers(resp.headers(), "negotiate")
                            || (cfg!(windows) && offers(resp.headers(), "ntlm")))
                        && !authed_retry
                        && credentials_allowed(self.inner.root.url(), &url)
                        && self.learn_challenge(resp.headers()).await?
                    {
                        authed_retry = true;
                        if replayable {
                            continue;
                        }
                        // A streamed body cannot be sent again here; the caller holds the
                        // data (journal or spool) and retries it as after a broken connection.
                        return Err(DavError::Transport {
                            method: method.into(),
                            path: path.to_string(),
                            kind: TransportKind::Broken,
                            detail: "the server renewed its authentication challenge".into(),
                        });
                    }
                    if idempotent
                        && replayable
                        && matches!(resp.status().as_u16(), 429 | 502 | 503 | 504)
                        && let Some(delay) = self.next_backoff(&resp, started, &mut attempt)
                    {
                        tracing::debug!(
                            method,
                            path = %path,
                            status = resp.status().as_u16(),
                            ?delay,
                            "server busy; retrying"
                        );
                        drop(resp);
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    let mut resp = resp;
                    resp.extensions_mut().insert(FinalUrl(url.clone()));
                    return Ok(resp);
                }
            }
        }
    }

    /// The `Authorization` value for the next request, if the server challenged us.
    async fn authorization(&self, method: &str, url: &Url) -> Option<String> {
        if let Some(k) = self.kerberos() {
            // Off the runtime and outside the lock: a token may need the KDC (a new service
            // ticket, a renewed login).
            return match tokio::task::spawn_blocking(move || k.token()).await {
                Ok(Ok(t)) => Some(format!("Negotiate {}", STANDARD.encode(t))),
                Ok(Err(e)) => {
                    // Typically an expired ticket: the 401 that follows starts over.
                    tracing::warn!("Kerberos: {e}");
                    None
                }
                Err(_) => None,
            };
        }
        let mut st = self.inner.auth.lock().unwrap_or_else(|e| e.into_inner());
        let creds = self.inner.credentials.as_ref();
        match &mut *st {
            AuthState::None | AuthState::Ntlm(_) | AuthState::Negotiate(_) => None,
            AuthState::Bearer(token) => Some(format!("Bearer {}", token.expose())),
            AuthState::Basic => creds.map(Credentials::basic_header),
            AuthState::Digest { challenge, nc } => {
                *nc += 1;
                let uri = &url[url::Position::BeforePath..];
                creds.map(|c| challenge.authorization(c, method, uri, *nc, &cnonce()))
            }
        }
    }

    /// The Kerberos session, once the server asked for Negotiate and one started.
    fn kerberos(&self) -> Option<Arc<Kerberos>> {
        match &*self.inner.auth.lock().unwrap_or_else(|e| e.into_inner()) {
            AuthState::Negotiate(k) => Some(k.clone()),
            _ => None,
        }
    }

    /// The NTLM transport, once the server asked for NTLM.
    fn ntlm_transport(&self) -> Option<Arc<NtlmTransport>> {
        match &*self.inner.auth.lock().unwrap_or_else(|e| e.into_inner()) {
            AuthState::Ntlm(t) => Some(t.clone()),
            _ => None,
        }
    }

    /// A 401 offering `Bearer` while we have a token source: fetch a token (running the
    /// command again) and say whether it differs from the one just refused.
    async fn learn_bearer(&self, source: &BearerSource) -> Result<bool, DavError> {
        let src = source.clone();
        let limit = Duration::from_secs(30);
        let token = tokio::task::spawn_blocking(move || src.fetch(limit))
            .await
            .map_err(|e| DavError::Invalid(format!("token command: {e}")))?
            .map_err(DavError::Invalid)?;
        let mut st = self.inner.auth.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(&*st, AuthState::Bearer(old) if *old == token) {
            return Ok(false);
        }
        *st = AuthState::Bearer(token);
        Ok(true)
    }

    /// Takes in a 401's challenge. Returns whether it changed what we send (a first challenge,
    /// a new Digest nonce): then the request is worth sending again. An unchanged challenge
    /// means the credentials themselves were refused.
    async fn learn_challenge(&self, headers: &HeaderMap) -> Result<bool, DavError> {
        if let Some(source) = &self.inner.bearer
            && offers(headers, "bearer")
        {
            return self.learn_bearer(source).await;
        }
        if offers(headers, "negotiate") && self.learn_kerberos().await {
            return Ok(true);
        }
        if self.inner.credentials.is_none() && !cfg!(windows) {
            return Ok(false);
        }
        Ok(self.learn_password_challenge(headers))
    }

    /// A 401 offering Negotiate: start (or restart) Kerberos, from the ticket cache or with
    /// the password. Returns whether Kerberos is now in use with a session that made a token.
    /// A refused token (a second 401 with a working session) is not retried.
    ///
    /// Configured credentials decide the identity: a principal (`user@REALM`) logs in with its
    /// password, any other name leaves Negotiate to NTLM; only without credentials is the
    /// user's ticket cache used. A refused password is not tried again (each try is a login
    /// at the KDC, which counts towards lockouts); starts run one at a time.
    async fn learn_kerberos(&self) -> bool {
        let creds = self.inner.credentials.clone();
        if creds.as_ref().is_some_and(|c| !Kerberos::is_principal(c)) {
            return false;
        }
        let mut gate = self.inner.kerberos_gate.lock().await;
        if gate.password_refused {
            return false;
        }
        if let Some(k) = self.kerberos()
            && tokio::task::spawn_blocking(move || k.token().is_ok())
                .await
                .unwrap_or(false)
        {
            // Tokens are made, and the server refused one.
            return false;
        }
        let Some(host) = self.inner.root.url().host_str().map(str::to_owned) else {
            return false;
        };
        let with_password = creds.is_some();
        let started =
            tokio::task::spawn_blocking(move || Kerberos::start(&host, creds.as_ref())).await;
        match started {
            Ok(Ok((k, _first))) => {
                tracing::debug!("authenticating with Kerberos");
                if self.inner.root.url().scheme() == "http" {
                    tracing::warn!(
                        "Kerberos over plain HTTP: the requests and answers cross the network \
                         readable by anyone on the path; prefer https://"
                    );
                }
                *self.inner.auth.lock().unwrap_or_else(|e| e.into_inner()) =
                    AuthState::Negotiate(Arc::new(k));
                true
            }
            Ok(Err(e)) => {
                gate.password_refused = with_password;
                if !std::mem::replace(&mut gate.warned, true) {
                    tracing::warn!("the server offers Kerberos, which cannot be used: {e}");
                }
                false
            }
            Err(e) => {
                tracing::warn!("Kerberos: {e}");
                false
            }
        }
    }

    fn learn_password_challenge(&self, headers: &HeaderMap) -> bool {
        let values = || {
            headers
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
        };
        let mut st = self.inner.auth.lock().unwrap_or_else(|e| e.into_inner());
        // Digest is preferred to Basic when both are offered: the password never travels.
        let have_password = self.inner.credentials.is_some();
        if have_password && let Some(ch) = DigestChallenge::parse(values()) {
            let renewed = match &*st {
                AuthState::Digest { challenge, .. } => challenge.nonce != ch.nonce && ch.stale,
                _ => true,
            };
            if renewed {
                *st = AuthState::Digest {
                    challenge: ch,
                    nc: 0,
                };
            }
            return renewed;
        }
        let offered = offered_schemes(values());
        // NTLM next (the password never travels), raw NTLM under Negotiate for IIS setups that
        // offer only that, Basic last.
        let ntlm = if offered.iter().any(|s| s == "ntlm") {
            Some(Scheme::Ntlm)
        } else if offered.iter().any(|s| s == "negotiate") {
            Some(Scheme::Negotiate)
        } else {
            None
        };
        // Without credentials, Windows logs on as the user (single sign-on, SSPI).
        if let Some(scheme) = ntlm
            && !matches!(*st, AuthState::Ntlm(_))
            && (self.inner.credentials.is_some() || cfg!(windows))
        {
            match NtlmTransport::new(
                self.inner.root.url().clone(),
                scheme,
                self.inner.credentials.clone(),
                self.inner.connect_timeout,
                self.inner.progress_timeout,
                &self.inner.tls,
                self.inner.proxy.clone(),
            ) {
                Ok(t) => {
                    *st = AuthState::Ntlm(Arc::new(t));
                    return true;
                }
                Err(e) => tracing::warn!("cannot use {scheme:?}: {e}"),
            }
        }
        if have_password && offered.iter().any(|s| s == "basic") && matches!(*st, AuthState::None) {
            if self.inner.root.url().scheme() == "http" {
                tracing::warn!(
                    "the server asks for Basic authentication over plain HTTP: the password \
                     crosses the network readable by anyone on the path; prefer https://"
                );
            }
            *st = AuthState::Basic;
            return true;
        }
        false
    }

    /// From now on, retry idempotent requests on connection errors with backoff (for at most
    /// a few seconds). Off until the mount's first contact succeeded.
    pub fn enable_reconnect_retries(&self) {
        self.inner.reconnect_retries.store(true, Ordering::Relaxed);
    }

    fn reconnect_backoff(
        &self,
        started: tokio::time::Instant,
        attempt: &mut u32,
    ) -> Option<Duration> {
        let budget = self.inner.retry_budget.min(RECONNECT_BUDGET);
        let spent = started.elapsed();
        *attempt += 1;
        let delay = backoff_delay(*attempt);
        (spent + delay <= budget).then_some(delay)
    }

    /// The wait before retrying a 429/502/503/504: exponential backoff with jitter (100 ms
    /// doubling, at most 5 s), or longer when `Retry-After` asks; `None` once the retry time
    /// budget would be exceeded.
    fn next_backoff(
        &self,
        resp: &Response,
        started: tokio::time::Instant,
        attempt: &mut u32,
    ) -> Option<Duration> {
        let budget = self.inner.retry_budget;
        let spent = started.elapsed();
        if spent >= budget {
            return None;
        }
        *attempt += 1;
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let v = v.trim();
                v.parse::<u64>().ok().map(Duration::from_secs).or_else(|| {
                    httpdate::parse_http_date(v)
                        .ok()
                        .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
                })
            });
        let backoff = backoff_delay(*attempt);
        // Retry-After may ask for longer, never for a hot loop ("Retry-After: 0").
        let delay = retry_after.map_or(backoff, |r| r.max(backoff));
        let remaining = budget - spent;
        (delay <= remaining).then_some(delay)
    }
}

fn precondition_headers(pre: &Preconditions, url: &Url) -> HeaderMap {
    let mut h = HeaderMap::new();
    // If-Match compares strongly (RFC 9110 13.1.1): a weak tag could never match.
    if let Some(tag) = pre.if_match.as_ref().filter(|t| !t.starts_with("W/"))
        && let Ok(v) = HeaderValue::from_str(tag)
    {
        h.insert(reqwest::header::IF_MATCH, v);
    }
    // Without a strong tag, the date of the version we know (second resolution, as the
    // server gave it): a change made since by someone else is refused with 412.
    if !h.contains_key(reqwest::header::IF_MATCH)
        && let Some(t) = pre.if_unmodified_since
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(t))
    {
        h.insert(reqwest::header::IF_UNMODIFIED_SINCE, v);
    }
    if pre.if_none_match_any {
        h.insert(
            reqwest::header::IF_NONE_MATCH,
            HeaderValue::from_static("*"),
        );
    }
    if let Some(token) = &pre.lock_token
        && let Ok(v) = HeaderValue::from_str(&format!("<{url}> (<{token}>)"))
    {
        h.insert(HeaderName::from_static("if"), v);
    }
    h
}

/// Whether a response's `WWW-Authenticate` headers offer `scheme` (lower case).
fn offers(headers: &HeaderMap, scheme: &str) -> bool {
    offered_schemes(
        headers
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
    .iter()
    .any(|s| s == scheme)
}

/// Turns a non-success status into a service error carrying a short server message.
async fn check(method: &'static str, path: &DavPath, resp: Response) -> Result<Response, DavError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let reason = status.canonical_reason().unwrap_or("").to_owned();
    let mut message = reason;
    let mut cause = None;
    if status == StatusCode::UNAUTHORIZED {
        let schemes = offered_schemes(
            resp.headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        message = format!(
            "the server wants credentials (offers: {}); wrong or missing password?",
            if schemes.is_empty() {
                "nothing".to_owned()
            } else {
                schemes.join(", ")
            }
        );
        cause = Some(Cause::AuthRefused {
            offered: schemes.iter().map(|s| s.to_ascii_lowercase()).collect(),
        });
    } else if status.is_redirection() {
        let loc = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| {
                Url::parse(l)
                    .ok()
                    .map(|u| redact_url(&u))
                    .or(Some(l.to_owned()))
            })
            .unwrap_or_default();
        let downgrade = resp.url().scheme() == "https" && loc.starts_with("http://");
        message = if downgrade {
            format!(
                "redirect to {loc} refused: it leaves https for plain http, where everything \
                 (credentials included) crosses the network readable; pass \
                 --allow-http-redirect if you accept that"
            )
        } else {
            format!(
                "redirect to {loc} not followed (too many hops, or a streamed body that cannot \
                 be sent twice); mount that URL instead"
            )
        };
    }
    Err(DavError::Service {
        method: method.into(),
        path: path.to_string(),
        status: status.as_u16(),
        message,
        cause,
    })
}

/// A 207 to DELETE/MOVE/COPY lists members that failed: report the first failure.
async fn multistatus_failure(
    method: &'static str,
    path: &DavPath,
    resp: Response,
    stall: Duration,
) -> Result<(), DavError> {
    if resp.status() != StatusCode::MULTI_STATUS {
        return Ok(());
    }
    let body = read_bounded(resp, 1024 * 1024, method, path, stall).await?;
    let text = String::from_utf8_lossy(&body);
    // Any status line inside the body that is not 2xx means a member failed.
    let failed = text
        .split("HTTP/1.")
        .skip(1)
        .filter_map(|s| s.get(2..5).and_then(|c| c.trim().parse::<u16>().ok()))
        .find(|s| !(200..300).contains(s));
    match failed {
        None => Ok(()),
        Some(status) => Err(DavError::Service {
            method: method.into(),
            path: path.to_string(),
            status,
            message: "failed for a member (207 Multi-Status)".into(),
            cause: None,
        }),
    }
}

async fn read_bounded(
    mut resp: Response,
    limit: usize,
    method: &'static str,
    path: &DavPath,
    stall: Duration,
) -> Result<Vec<u8>, DavError> {
    if let Some(len) = resp.content_length()
        && len > limit as u64
    {
        return Err(too_large(method, path, limit));
    }
    let mut out =
        Vec::with_capacity(resp.content_length().unwrap_or(8192).min(limit as u64) as usize);
    loop {
        let c = match tokio::time::timeout(stall, resp.chunk()).await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(transport_error(method, &path.to_string(), &e)),
            Err(_) => return Err(stalled(method, path)),
        };
        if out.len() + c.len() > limit {
            return Err(too_large(method, path, limit));
        }
        out.extend_from_slice(&c);
    }
    Ok(out)
}

/// Why a [`BodyReader`] stopped short.
enum BodyFailure {
    TooLarge,
    Transport(reqwest::Error),
    /// No byte for the progress timeout.
    Stalled,
}

/// A response body as `AsyncBufRead`, for parsers that work while it downloads. At most
/// `limit` bytes; what went wrong with the body itself is kept in `failure` (the parser only
/// sees an I/O error).
struct BodyReader {
    stream: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    chunk: Bytes,
    total: usize,
    limit: usize,
    failure: Option<BodyFailure>,
    /// How long the body may go without a byte, and the timer for the wait in progress.
    stall: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl BodyReader {
    fn new(resp: Response, limit: usize, stall: Duration) -> Self {
        BodyReader {
            stream: Box::pin(resp.bytes_stream()),
            chunk: Bytes::new(),
            total: 0,
            limit,
            failure: None,
            stall,
            timer: Box::pin(tokio::time::sleep(stall)),
            armed: false,
        }
    }
}

impl tokio::io::AsyncBufRead for BodyReader {
    fn poll_fill_buf(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<&[u8]>> {
        use std::task::Poll;
        let this = self.get_mut();
        while this.chunk.is_empty() {
            if this.failure.is_some() {
                return Poll::Ready(Err(std::io::Error::other("the body failed")));
            }
            let next = this.stream.as_mut().poll_next(cx);
            if next.is_pending() {
                if !this.armed {
                    let at = tokio::time::Instant::now() + this.stall;
                    this.timer.as_mut().reset(at);
                    this.armed = true;
                }
                if std::future::Future::poll(this.timer.as_mut(), cx).is_ready() {
                    this.armed = false;
                    this.failure = Some(BodyFailure::Stalled);
                    continue;
                }
                return Poll::Pending;
            }
            this.armed = false;
            match next {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(&[])),
                Poll::Ready(Some(Err(e))) => this.failure = Some(BodyFailure::Transport(e)),
                Poll::Ready(Some(Ok(b))) => {
                    this.total += b.len();
                    if this.total > this.limit {
                        this.failure = Some(BodyFailure::TooLarge);
                    } else {
                        this.chunk = b;
                    }
                }
            }
        }
        Poll::Ready(Ok(&this.chunk[..]))
    }

    fn consume(self: std::pin::Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        let _ = this.chunk.split_to(amt.min(this.chunk.len()));
    }
}

impl tokio::io::AsyncRead for BodyReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use tokio::io::AsyncBufRead;
        let n = match self.as_mut().poll_fill_buf(cx) {
            std::task::Poll::Pending => return std::task::Poll::Pending,
            std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
            std::task::Poll::Ready(Ok(avail)) => {
                let n = avail.len().min(buf.remaining());
                buf.put_slice(&avail[..n]);
                n
            }
        };
        self.consume(n);
        std::task::Poll::Ready(Ok(()))
    }
}

/// A request or response that made no progress for the progress timeout (`--timeout`).
fn stalled(method: &str, path: &DavPath) -> DavError {
    stalled_at(method, &path.to_string())
}

fn stalled_at(method: &str, path: &str) -> DavError {
    DavError::Transport {
        method: method.into(),
        path: path.into(),
        kind: TransportKind::Timeout,
        detail: "no progress within the timeout (--timeout)".into(),
    }
}

/// How far a streamed request body is: bytes taken by the HTTP library, and whether all of
/// it was taken (its end, or `len` bytes: with a length, the library stops asking at the
/// last byte).
struct BodyProgress {
    taken: AtomicU64,
    done: std::sync::atomic::AtomicBool,
    /// The library asked for more and the body's source has none yet (a program writing
    /// slowly into a streaming upload): waiting on us, not on the server.
    waiting: std::sync::atomic::AtomicBool,
}

/// A streamed request body as reqwest takes it, and its progress.
fn counted(
    stream: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>,
    len: Option<u64>,
) -> (reqwest::Body, Arc<BodyProgress>) {
    let progress = Arc::new(BodyProgress {
        taken: AtomicU64::new(0),
        done: false.into(),
        waiting: false.into(),
    });
    let p = progress.clone();
    let body = futures_util::stream::unfold(Some((stream, p)), move |st| async move {
        let (mut s, p) = st?;
        p.waiting.store(true, Ordering::Relaxed);
        let next = futures_util::StreamExt::next(&mut s).await;
        p.waiting.store(false, Ordering::Relaxed);
        match next {
            Some(item) => {
                if let Ok(b) = &item {
                    let now = p.taken.fetch_add(b.len() as u64, Ordering::Relaxed) + b.len() as u64;
                    if len.is_some_and(|n| now >= n) {
                        p.done.store(true, Ordering::Relaxed);
                    }
                }
                Some((item, Some((s, p))))
            }
            None => {
                p.done.store(true, Ordering::Relaxed);
                None
            }
        }
    });
    (reqwest::Body::wrap_stream(body), progress)
}

/// Runs `fut` (a request, until its response head) as long as it makes progress: with a
/// streamed body, as long as the HTTP library keeps taking bytes (a long upload is never
/// cut), then for `AFTER_BODY` times `limit` once it took the last one (the socket's
/// buffers may still be draining over a slow link); without one, for `limit`. `None`: no
/// progress.
async fn within_progress<F: std::future::Future>(
    fut: F,
    progress: Option<Arc<BodyProgress>>,
    limit: Duration,
) -> Option<F::Output> {
    const AFTER_BODY: u32 = 4;
    let Some(p) = progress else {
        return tokio::time::timeout(limit, fut).await.ok();
    };
    let watchdog = async {
        let mut seen = p.taken.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(limit).await;
            if p.done.load(Ordering::Relaxed) {
                tokio::time::sleep(limit * (AFTER_BODY - 1)).await;
                return;
            }
            let now = p.taken.load(Ordering::Relaxed);
            if now == seen && !p.waiting.load(Ordering::Relaxed) {
                return;
            }
            seen = now;
        }
    };
    tokio::select! {
        r = fut => Some(r),
        () = watchdog => None,
    }
}

fn too_large(method: &str, path: &DavPath, limit: usize) -> DavError {
    DavError::InvalidResponse {
        method: method.into(),
        path: path.to_string(),
        reason: format!("response body larger than {limit} bytes"),
    }
}

fn response_meta(h: &HeaderMap) -> ResponseMeta {
    let s = |name: reqwest::header::HeaderName| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    ResponseMeta {
        content_length: s(reqwest::header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
        etag: s(reqwest::header::ETAG),
        last_modified: s(reqwest::header::LAST_MODIFIED)
            .as_deref()
            .and_then(super::dates::parse_any),
        content_type: s(reqwest::header::CONTENT_TYPE),
    }
}

/// `bytes 0-99/1234` or `bytes 0-99/*`.
pub fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    if let Some(t) = total
        && end >= t
    {
        return None;
    }
    Some(ContentRange { start, end, total })
}

/// `Second-3600` or `Infinite`.
fn parse_timeout(v: &str) -> Option<Duration> {
    let first = v.split(',').next()?.trim();
    first
        .strip_prefix("Second-")
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
}

/// Classifies a reqwest error. TLS failures surface as connect errors whose causes mention
/// certificates or the handshake; they get their own kind so the message can say what to do.
fn transport_error(method: &str, path: &str, e: &reqwest::Error) -> DavError {
    let mut detail = e.to_string();
    let mut chain = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        src = s.source();
    }
    detail.push_str(&chain);
    let lower = chain.to_ascii_lowercase();
    let tls = lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("unknownissuer");
    let kind = if e.is_timeout() {
        TransportKind::Timeout
    } else if tls {
        TransportKind::Tls
    } else if e.is_connect() {
        TransportKind::Connect
    } else if e.is_body() || e.is_request() || e.is_decode() {
        TransportKind::Broken
    } else {
        TransportKind::Other
    };
    DavError::Transport {
        method: method.into(),
        path: path.into(),
        kind,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 0-99/1234"),
            Some(ContentRange {
                start: 0,
                end: 99,
                total: Some(1234)
            })
        );
        assert_eq!(
            parse_content_range("bytes 5-5/*"),
            Some(ContentRange {
                start: 5,
                end: 5,
                total: None
            })
        );
        for bad in [
            "bytes 9-1/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes x-1/2",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn lock_timeouts() {
        assert_eq!(
            parse_timeout("Second-3599"),
            Some(Duration::from_secs(3599))
        );
        assert_eq!(parse_timeout("Infinite"), None);
    }

    #[test]
    fn urls_with_passwords_are_refused_and_redacted() {
        let url = Url::parse("https://bob:pw-xyzzy@h/dav/").expect("url");
        let err = DavClient::new(ClientConfig::new(url.clone())).expect_err("refused");
        assert!(!err.to_string().contains("xyzzy"));
        assert_eq!(redact_url(&url), "https://h/dav/");
    }
}
