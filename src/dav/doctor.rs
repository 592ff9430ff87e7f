//! What a server supports, found out by asking it (`davdrive doctor`): the facts only, each
//! from a request whose answer is kept. `cli::doctor` says in words what davdrive does about
//! them. Write probes use scratch names (`.davdrive-doctor-PID-N`) in the probed collection
//! and delete them; `read_only` skips them.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use super::client::{DavClient, Depth, Exchange, Preconditions, PutBody, redact_url};
use super::href::DavPath;
use super::probe::{self, ChunkedPut, PartialPut};

/// Everything `doctor` found. Fields the probe could not reach stay `None`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub url: String,
    /// Where the URL redirects to, when it does (davdrive mounts that URL).
    pub redirected_to: Option<String>,
    /// What stopped the probe, if anything did.
    pub error: Option<String>,
    /// The `Server` header.
    pub server: Option<String>,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub http_version: Option<String>,
    /// Whether connections are kept open between requests (no `Connection: close`).
    pub keep_alive: Option<bool>,
    /// The `DAV` header's compliance classes (`1`, `2`, `3`, ...): empty is not WebDAV.
    pub dav_classes: Vec<String>,
    /// The `Allow` header's methods.
    pub methods: Vec<String>,
    /// Authentication schemes offered to a request without credentials (empty: none asked).
    pub auth_offered: Vec<String>,
    /// The certificate of an https server.
    pub certificate: Option<Certificate>,
    /// Seconds the server's clock is ahead of ours (negative: behind), from `Date`.
    pub clock_skew_seconds: Option<i64>,
    /// The median time of a small request (OPTIONS) on an open connection, in ms.
    pub round_trip_ms: Option<f64>,
    pub listing: Option<Listing>,
    /// Whether `Depth: infinity` PROPFIND is answered (`false`: refused, RFC 4918 allows it).
    pub depth_infinity: Option<Answer>,
    /// RFC 6578 `sync-collection` REPORT on the collection.
    pub sync_collection: Option<Answer>,
    /// GET with `Range` answered with 206.
    pub ranges: Option<Answer>,
    pub writes: Option<Writes>,
}

/// A yes or no, and the answer it comes from.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub supported: bool,
    pub detail: String,
}

impl Answer {
    fn yes(detail: impl Into<String>) -> Self {
        Answer {
            supported: true,
            detail: detail.into(),
        }
    }

    fn no(detail: impl Into<String>) -> Self {
        Answer {
            supported: false,
            detail: detail.into(),
        }
    }

    fn from_status(x: &Exchange, good: &[u16]) -> Self {
        let line = status_line(x);
        if good.contains(&x.status) {
            Answer::yes(line)
        } else {
            Answer::no(line)
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Certificate {
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    /// SHA-256 of the certificate, as `davdrive trust` pins it.
    pub fingerprint: String,
    /// Whether davdrive's requests went through with the trust settings given (system store,
    /// `--ca-cert`, a pin from `davdrive trust`).
    pub trusted: bool,
    /// Why not, when not.
    pub refused_because: Option<String>,
    /// The certificates sent after the server's own (intermediates, perhaps the root), as
    /// "subject (issued by issuer)".
    pub chain: Vec<String>,
}

/// Entity tags as a server gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tags {
    Strong,
    Weak,
    Mixed,
    None,
}

impl Tags {
    fn of<'a>(tags: impl Iterator<Item = Option<&'a str>>) -> Tags {
        let (mut strong, mut weak, mut none) = (0, 0, 0);
        for t in tags {
            match t {
                Some(t) if t.starts_with("W/") => weak += 1,
                Some(_) => strong += 1,
                None => none += 1,
            }
        }
        match (strong, weak, none) {
            (0, 0, _) => Tags::None,
            (_, 0, 0) => Tags::Strong,
            (0, _, 0) => Tags::Weak,
            _ => Tags::Mixed,
        }
    }
}

/// The collection's Depth 1 listing.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub entries: usize,
    pub milliseconds: u64,
    /// Entity tags of the files listed (`None`: no file to tell).
    pub etags: Option<Tags>,
    /// Whether every entry has `getlastmodified`.
    pub last_modified: bool,
    pub quota_available: Option<u64>,
    pub quota_used: Option<u64>,
}

/// What writing here does.
#[derive(Debug, Clone, Serialize)]
pub struct Writes {
    /// `None`: a file could be created here; else the answer that refused it.
    pub refused: Option<String>,
    /// Entity tags in PUT answers.
    pub put_etag: Option<Tags>,
    pub chunked_put: Option<ChunkedPut>,
    pub partial_put: Option<PartialPut>,
    /// A PUT with a wrong `If-Match` is refused (412), so overwrites can be guarded.
    pub if_match: Option<Answer>,
    /// A PUT with `If-Unmodified-Since` in the past is refused (412).
    pub if_unmodified_since: Option<Answer>,
    pub mkcol: Option<Answer>,
    pub move_file: Option<Answer>,
    pub copy_file: Option<Answer>,
    pub lock: Option<Answer>,
    pub throughput: Option<Throughput>,
}

/// A timed upload and download of one scratch file.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub bytes: u64,
    pub upload_mbit_s: f64,
    pub download_mbit_s: f64,
}

/// What to probe.
#[derive(Debug, Clone)]
pub struct Options {
    /// Skip every write (scratch files).
    pub read_only: bool,
    /// The size of the throughput file (0: no throughput test).
    pub throughput_bytes: u64,
}

fn status_line(x: &Exchange) -> String {
    let reason = reqwest::StatusCode::from_u16(x.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("{} {reason}", x.status).trim_end().to_owned()
}

fn header_list(x: &Exchange, name: &str) -> Vec<String> {
    super::client::header_list(&x.headers, name)
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(HeaderName::from_static(k), v);
        }
    }
    h
}

const XML: &str = "application/xml; charset=utf-8";

/// Probes the collection `client` is made for. `anonymous` is the same client without
/// credentials (to see what a server offers), when credentials are configured.
pub async fn examine(client: &DavClient, anonymous: Option<&DavClient>, opts: &Options) -> Report {
    let root = DavPath::root();
    let mut r = Report {
        url: redact_url(client.root().url()),
        ..Default::default()
    };
    let https = client.root().url().scheme() == "https";

    // OPTIONS: what the server says it is.
    let first = client
        .exchange("OPTIONS", &root, true, HeaderMap::new(), None, 64 * 1024)
        .await;
    if https && let Ok(chain) = super::tls::peer_chain(client.root().url()).await {
        let mut certs = chain.into_iter();
        r.certificate = certs.next().map(|c| Certificate {
            subject: c.subject,
            issuer: c.issuer,
            not_before: c.not_before,
            not_after: c.not_after,
            fingerprint: c.fingerprint,
            trusted: first.is_ok(),
            refused_because: first.as_ref().err().map(|e| e.to_string()),
            chain: certs
                .map(|c| format!("{} (issued by {})", c.subject, c.issuer))
                .collect(),
        });
    }
    let options = match first {
        Ok(x) => x,
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    };
    if options.url.as_str() != client.root().url().as_str() {
        r.redirected_to = Some(redact_url(&options.url));
    }
    r.server = options.header("server").map(str::to_owned);
    r.http_version = Some(options.version.clone());
    r.keep_alive = Some(
        options.version.contains('2')
            || !header_list(&options, "connection")
                .iter()
                .any(|v| v.eq_ignore_ascii_case("close")),
    );
    r.dav_classes = header_list(&options, "dav");
    r.methods = header_list(&options, "allow")
        .into_iter()
        .map(|m| m.to_ascii_uppercase())
        .collect();
    r.clock_skew_seconds = options
        .header("date")
        .and_then(super::dates::parse_any)
        .map(|theirs| match theirs.duration_since(SystemTime::now()) {
            Ok(ahead) => ahead.as_secs() as i64,
            Err(behind) => -(behind.duration().as_secs() as i64),
        });
    let mut times = Vec::new();
    for _ in 0..5 {
        if let Ok(x) = client
            .exchange("OPTIONS", &root, true, HeaderMap::new(), None, 64 * 1024)
            .await
        {
            times.push(x.elapsed);
        }
    }
    times.sort();
    r.round_trip_ms = times.get(times.len() / 2).map(|d| d.as_secs_f64() * 1000.0);

    // Who may come in.
    let propfind0 = headers(&[("depth", "0"), ("content-type", XML)]);
    let body = Bytes::from_static(
        b"<?xml version=\"1.0\"?><propfind xmlns=\"DAV:\"><prop><resourcetype/></prop></propfind>",
    );
    let asking = anonymous.unwrap_or(client);
    if let Ok(x) = asking
        .exchange(
            "PROPFIND",
            &root,
            true,
            propfind0.clone(),
            Some(body.clone()),
            4096,
        )
        .await
        && x.status == 401
    {
        r.auth_offered = super::auth::offered_schemes(
            x.headers
                .get_all("www-authenticate")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
    }

    // The listing.
    let started = tokio::time::Instant::now();
    let listed = match client.propfind(&root, Depth::One, true).await {
        Ok(ms) => ms,
        Err(e) => {
            r.error = Some(format!("PROPFIND of the collection: {e}"));
            return r;
        }
    };
    let entries: Vec<_> = listed
        .resources
        .iter()
        .filter(|x| !x.path.is_root())
        .collect();
    let me = listed.get(&root);
    // Folders rarely carry tags, and nothing here depends on theirs.
    let mut files = entries.iter().filter(|x| !x.is_collection).peekable();
    r.listing = Some(Listing {
        entries: entries.len(),
        milliseconds: started.elapsed().as_millis() as u64,
        etags: files
            .peek()
            .is_some()
            .then(|| Tags::of(files.map(|x| x.etag.as_deref()))),
        last_modified: entries.iter().all(|x| x.last_modified.is_some()),
        quota_available: me.and_then(|m| m.quota_available),
        quota_used: me.and_then(|m| m.quota_used),
    });

    let infinity = headers(&[("depth", "infinity"), ("content-type", XML)]);
    r.depth_infinity = client
        .exchange("PROPFIND", &root, true, infinity, Some(body), 64 * 1024)
        .await
        .ok()
        .map(|x| Answer::from_status(&x, &[207]));
    let sync = Bytes::from_static(
        b"<?xml version=\"1.0\"?><sync-collection xmlns=\"DAV:\"><sync-token/>\
          <sync-level>1</sync-level><prop><getetag/></prop></sync-collection>",
    );
    r.sync_collection = client
        .exchange(
            "REPORT",
            &root,
            true,
            headers(&[("depth", "0"), ("content-type", XML)]),
            Some(sync),
            256 * 1024,
        )
        .await
        .ok()
        .map(|x| {
            let text = String::from_utf8_lossy(&x.body);
            if x.status == 207 && text.contains("sync-token") {
                Answer::yes(status_line(&x))
            } else {
                Answer::no(status_line(&x))
            }
        });

    let scratch = |n: u32| format!(".davdrive-doctor-{}-{n}", std::process::id());
    let sample = entries
        .iter()
        .find(|x| !x.is_collection && x.content_length.is_some_and(|n| n > 1))
        .map(|x| x.path.clone());
    if !opts.read_only {
        r.writes = Some(writes(client, &root, opts, &scratch).await);
    }
    // Ranges on a file of the listing, or on the scratch file kept for it.
    let range_file = match sample {
        Some(p) => Some(p),
        None if r.writes.as_ref().is_some_and(|w| w.refused.is_none()) => {
            let p = root.join(&scratch(9)).ok();
            if let Some(p) = &p {
                let body = PutBody::Bytes(Bytes::from_static(b"davdrive range probe\n"));
                let _ = client.put(p, body, &Preconditions::default()).await;
            }
            p
        }
        None => None,
    };
    if let Some(p) = &range_file {
        r.ranges = client
            .exchange(
                "GET",
                p,
                false,
                headers(&[("range", "bytes=0-0")]),
                None,
                16,
            )
            .await
            .ok()
            .map(|x| Answer::from_status(&x, &[206]));
        if p.name().is_some_and(|n| n == scratch(9)) {
            let _ = client.delete(p, false, &Preconditions::default()).await;
        }
    }
    r
}

/// Whether `If-Unmodified-Since` is honoured on PUT: refused (412) with a date long past,
/// and let through with the file's own listed date once that second is over (Apache's
/// mod_dav compares it with the time of the request and refuses that too).
async fn unmodified_since<F, Fut>(client: &DavClient, file: &DavPath, guarded: &F) -> Option<Answer>
where
    F: Fn((&'static str, &'static str)) -> Fut,
    Fut: std::future::Future<Output = Option<Answer>>,
{
    let past = guarded(("if-unmodified-since", "Sun, 06 Nov 1994 08:49:37 GMT")).await?;
    if !past.supported {
        return Some(Answer::no(format!("{} for a date in 1994", past.detail)));
    }
    let listed = client.propfind(file, Depth::Zero, false).await.ok()?;
    let own = listed.get(file)?.last_modified?;
    // The next second, so that a server comparing with the time of the request shows it.
    let wait = own
        .checked_add(Duration::from_millis(1100))
        .and_then(|t| t.duration_since(SystemTime::now()).ok());
    if let Some(wait) = wait {
        tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
    }
    let date = httpdate::fmt_http_date(own);
    let h = headers(&[("if-unmodified-since", &date), ("content-length", "16")]);
    let x = client
        .exchange(
            "PUT",
            file,
            false,
            h,
            Some(Bytes::from_static(b"davdrive doctor\n")),
            4096,
        )
        .await
        .ok()?;
    Some(if (200..300).contains(&x.status) {
        Answer::yes(format!(
            "412 for a date in 1994, {} for the file's own date",
            status_line(&x)
        ))
    } else {
        Answer::no(format!(
            "412 for a date in 1994, but also {} for the file's own date: the server compares \
             it with the time of the request",
            status_line(&x)
        ))
    })
}

async fn writes(
    client: &DavClient,
    root: &DavPath,
    opts: &Options,
    scratch: &impl Fn(u32) -> String,
) -> Writes {
    let mut w = Writes {
        refused: None,
        put_etag: None,
        chunked_put: None,
        partial_put: None,
        if_match: None,
        if_unmodified_since: None,
        mkcol: None,
        move_file: None,
        copy_file: None,
        lock: None,
        throughput: None,
    };
    let none = Preconditions::default();
    let Ok(file) = root.join(&scratch(1)) else {
        w.refused = Some("no scratch name".into());
        return w;
    };
    let create_only = Preconditions {
        if_none_match_any: true,
        ..Default::default()
    };
    let put = client
        .put(
            &file,
            PutBody::Bytes(Bytes::from_static(b"davdrive doctor\n")),
            &create_only,
        )
        .await;
    match put {
        Ok(meta) => w.put_etag = Some(Tags::of(std::iter::once(meta.etag.as_deref()))),
        Err(e) => {
            w.refused = Some(e.to_string());
            return w;
        }
    }
    let guarded = |h: (&'static str, &'static str)| {
        let file = file.clone();
        async move {
            client
                .exchange(
                    "PUT",
                    &file,
                    false,
                    headers(&[h, ("content-length", "16")]),
                    Some(Bytes::from_static(b"davdrive doctor\n")),
                    4096,
                )
                .await
                .ok()
                .map(|x| Answer::from_status(&x, &[412]))
        }
    };
    w.if_match = guarded(("if-match", "\"davdrive-doctor-no-such-tag\"")).await;
    w.if_unmodified_since = unmodified_since(client, &file, &guarded).await;
    w.chunked_put = Some(probe::chunked_put(client, root, &scratch(2)).await);
    w.partial_put = Some(probe::partial_put(client, root, &scratch(3), &scratch(4)).await);

    if let (Ok(moved), Ok(copied), Ok(dir)) = (
        root.join(&scratch(5)),
        root.join(&scratch(6)),
        root.join(&scratch(7)),
    ) {
        let answer = |r: Result<(), super::DavError>| match r {
            Ok(()) => Answer::yes("done"),
            Err(e) => Answer::no(e.to_string()),
        };
        w.mkcol = Some(answer(client.mkcol(&dir).await));
        let _ = client.delete(&dir, true, &none).await;
        w.move_file = Some(answer(client.move_to(&file, &moved, false, false).await));
        let from = if w.move_file.as_ref().is_some_and(|a| a.supported) {
            &moved
        } else {
            &file
        };
        w.copy_file = Some(answer(client.copy_to(from, &copied, false, false).await));
        w.lock = Some(match client.lock(from, Duration::from_secs(60)).await {
            Ok(l) => match client.unlock(from, &l.token).await {
                Ok(()) => Answer::yes("locked and unlocked"),
                Err(e) => Answer::no(format!("locked, but UNLOCK failed: {e}")),
            },
            Err(e) => Answer::no(e.to_string()),
        });
        for p in [&moved, &copied] {
            let _ = client.delete(p, false, &none).await;
        }
    }
    let _ = client.delete(&file, false, &none).await;

    if opts.throughput_bytes > 0
        && let Ok(big) = root.join(&scratch(8))
    {
        let data = Bytes::from(vec![0x5a_u8; opts.throughput_bytes as usize]);
        let up = tokio::time::Instant::now();
        let put = client.put(&big, PutBody::Bytes(data), &none).await;
        let up = up.elapsed();
        if put.is_ok() {
            let down = tokio::time::Instant::now();
            let got = client.get_bytes(&big).await;
            let down = down.elapsed();
            if let Ok(got) = got {
                let mbit = |d: Duration| {
                    (opts.throughput_bytes as f64 * 8.0 / 1e6) / d.as_secs_f64().max(1e-6)
                };
                w.throughput = Some(Throughput {
                    bytes: got.len() as u64,
                    upload_mbit_s: mbit(up),
                    download_mbit_s: mbit(down),
                });
            }
        }
        let _ = client.delete(&big, false, &none).await;
    }
    w
}
