//! `davdrive doctor URL`: what a server supports, in plain words, and what davdrive does
//! about it (the facts come from `dav::doctor`). `--json` prints the facts and the advice
//! for a ticket.

use std::fmt::Write as _;

use crate::dav::doctor::{self, Answer, Report, Tags};
use crate::dav::probe::{ChunkedPut, PartialPut};

/// Runs the probe of `cfg`'s server and prints it; an error when the server could not be
/// examined (what is known is printed first).
pub fn run(cfg: &crate::config::MountConfig, json: bool, read_only: bool) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    // As `mount` does: a URL that redirects is examined where it leads.
    let client = crate::mount::client_following_redirect(cfg, &rt)?;
    let target = client.root().url().clone();
    let anonymous = if cfg.client.credentials.is_some() || cfg.client.bearer.is_some() {
        let mut c = cfg.client.clone();
        c.url = target.clone();
        c.credentials = None;
        c.bearer = None;
        crate::dav::DavClient::new(c).ok()
    } else {
        None
    };
    let opts = doctor::Options {
        read_only,
        throughput_bytes: 4 * 1024 * 1024,
    };
    let mut report = rt.block_on(doctor::examine(&client, anonymous.as_ref(), &opts));
    if target != cfg.url {
        report.url = crate::dav::client::redact_url(&cfg.url);
        report.redirected_to = Some(crate::dav::client::redact_url(&target));
    }
    let advice = advice(&report);
    if json {
        let mut v = serde_json::to_value(&report).map_err(|e| e.to_string())?;
        if let Some(o) = v.as_object_mut() {
            o.insert("advice".into(), serde_json::json!(advice));
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", text(&report, &advice));
    }
    match &report.error {
        Some(e) => Err(format!("could not examine {}: {e}", report.url)),
        None => Ok(()),
    }
}

fn yes_no(a: &Option<Answer>, yes: &str, no: &str) -> String {
    match a {
        Some(a) if a.supported => format!("{yes} ({})", a.detail),
        Some(a) => format!("{no} ({})", a.detail),
        None => "not tried".into(),
    }
}

fn tags(t: Tags) -> &'static str {
    match t {
        Tags::Strong => "strong",
        Tags::Weak => "weak only",
        Tags::Mixed => "some strong, some weak or missing",
        Tags::None => "none",
    }
}

fn bytes(n: u64) -> String {
    const G: f64 = 1024.0 * 1024.0 * 1024.0;
    if n as f64 >= G {
        format!("{:.1} GiB", n as f64 / G)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

/// The report as lines of `name  value`.
pub fn text(r: &Report, advice: &[String]) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<20}{v}");
    };
    line("url", r.url.clone());
    if let Some(to) = &r.redirected_to {
        line("redirects to", to.clone());
    }
    if let Some(e) = &r.error {
        line("ERROR", e.clone());
    }
    if let Some(v) = &r.http_version {
        line(
            "server",
            format!(
                "{}, {v}, {}",
                r.server.as_deref().unwrap_or("(no Server header)"),
                if r.keep_alive == Some(true) {
                    "connections kept open"
                } else {
                    "a new connection per request (Connection: close)"
                }
            ),
        );
        line(
            "WebDAV",
            if r.dav_classes.is_empty() {
                "NOT WebDAV here (no DAV header in the answer to OPTIONS)".into()
            } else {
                format!(
                    "class {}; methods: {}",
                    r.dav_classes.join(", "),
                    if r.methods.is_empty() {
                        "(no Allow header)".into()
                    } else {
                        r.methods.join(", ")
                    }
                )
            },
        );
        line(
            "sign-in",
            if r.auth_offered.is_empty() {
                "none asked".into()
            } else {
                format!("offers {}", r.auth_offered.join(", "))
            },
        );
    }
    if let Some(c) = &r.certificate {
        line(
            "certificate",
            format!(
                "{}, issued by {}, valid {} to {}; SHA-256 {}; {}",
                c.subject,
                c.issuer,
                c.not_before,
                c.not_after,
                c.fingerprint,
                match (&c.refused_because, c.trusted) {
                    (_, true) => "trusted".to_owned(),
                    (Some(why), false) => format!("NOT trusted: {why}"),
                    (None, false) => "NOT trusted".to_owned(),
                }
            ),
        );
        line(
            "chain",
            if c.chain.is_empty() {
                "the server sends its own certificate only".into()
            } else {
                c.chain.join("; ")
            },
        );
    }
    if let Some(s) = r.clock_skew_seconds {
        line(
            "clock",
            match s {
                0 => "the same as this machine's (to the second)".into(),
                s if s > 0 => format!("{s} s ahead of this machine"),
                s => format!("{} s behind this machine", -s),
            },
        );
    }
    if let Some(ms) = r.round_trip_ms {
        line("round trip", format!("{ms:.1} ms (median of 5 OPTIONS)"));
    }
    if let Some(l) = &r.listing {
        let quota = match (l.quota_available, l.quota_used) {
            (Some(a), Some(u)) => format!("; quota: {} free, {} used", bytes(a), bytes(u)),
            (Some(a), None) => format!("; quota: {} free", bytes(a)),
            _ => "; no quota".into(),
        };
        line(
            "listing",
            format!(
                "{} entries in {} ms; ETags of files {}; modification times {}{quota}",
                l.entries,
                l.milliseconds,
                l.etags.map_or("unknown (no file listed)", tags),
                if l.last_modified { "yes" } else { "missing" }
            ),
        );
    }
    if r.listing.is_some() {
        line(
            "Depth: infinity",
            yes_no(&r.depth_infinity, "answered", "refused"),
        );
        line(
            "sync-collection",
            yes_no(&r.sync_collection, "offered", "not offered"),
        );
        line("ranges", yes_no(&r.ranges, "yes", "NO"));
    }
    if let Some(w) = &r.writes {
        match &w.refused {
            Some(why) => line("writes", format!("refused here ({why})")),
            None => {
                line(
                    "create",
                    format!("yes; ETag in PUT answers: {}", w.put_etag.map_or("?", tags)),
                );
                line("If-Match", yes_no(&w.if_match, "honoured", "IGNORED"));
                line(
                    "If-Unmodified-Since",
                    yes_no(&w.if_unmodified_since, "honoured", "IGNORED"),
                );
                line(
                    "chunked PUT",
                    match &w.chunked_put {
                        Some(ChunkedPut::Stored) => "stored".into(),
                        Some(ChunkedPut::Lost { stored }) => {
                            format!("LOST (accepted, {stored:?} bytes kept of 90)")
                        }
                        Some(ChunkedPut::Refused(e)) => format!("refused ({e})"),
                        Some(ChunkedPut::Undecided(e)) => format!("unknown ({e})"),
                        None => "not tried".into(),
                    },
                );
                line(
                    "partial PUT",
                    match &w.partial_put {
                        Some(PartialPut::Applied) => "applied in place".into(),
                        Some(PartialPut::AppliedMoveFails(e)) => {
                            format!("applied, but a create-only MOVE fails ({e})")
                        }
                        Some(PartialPut::Refused(e)) => format!("refused ({e})"),
                        Some(PartialPut::Mangled { stored }) => format!(
                            "DANGEROUS: accepted, and the file became {stored} bytes (the piece \
                             replaced it)"
                        ),
                        Some(PartialPut::Undecided(e)) => format!("unknown ({e})"),
                        None => "not tried".into(),
                    },
                );
                line("MKCOL", yes_no(&w.mkcol, "yes", "no"));
                line("MOVE", yes_no(&w.move_file, "yes", "no"));
                line("COPY", yes_no(&w.copy_file, "yes", "no"));
                line("LOCK", yes_no(&w.lock, "yes", "no"));
                if let Some(t) = &w.throughput {
                    line(
                        "throughput",
                        format!(
                            "up {:.0} Mbit/s, down {:.0} Mbit/s ({} each way)",
                            t.upload_mbit_s,
                            t.download_mbit_s,
                            bytes(t.bytes)
                        ),
                    );
                }
            }
        }
    } else if r.listing.is_some() {
        line("writes", "not tried (--read-only)".into());
    }
    if !advice.is_empty() {
        let _ = writeln!(out, "\nWhat davdrive does here:");
        for a in advice {
            let _ = writeln!(out, "  - {a}");
        }
    }
    out
}

/// What davdrive does about each fact, in words.
pub fn advice(r: &Report) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(to) = &r.redirected_to {
        a.push(format!(
            "The URL redirects: davdrive mounts {to} and sends later requests there (your \
             credentials only if it is the same host)."
        ));
    }
    if r.http_version.is_some() && r.dav_classes.is_empty() {
        a.push(
            "This URL does not answer as WebDAV: `davdrive mount` will refuse it. Check the \
             path (Orthanc: /webdav/, Nextcloud: /remote.php/dav/files/USER/)."
                .into(),
        );
    }
    if r.certificate.as_ref().is_some_and(|c| !c.trusted) {
        a.push(
            "The certificate is not trusted here: `davdrive trust URL` pins exactly this \
             certificate after you compare its fingerprint, or pass --ca-cert with your CA."
                .into(),
        );
    }
    if r.auth_offered.iter().any(|s| s == "basic") && r.url.starts_with("http://") {
        a.push(
            "The server asks for Basic authentication over plain http: the password crosses \
             the network readable. Use https if the server offers it."
                .into(),
        );
    }
    if r.auth_offered
        .iter()
        .any(|s| s == "negotiate" || s == "ntlm")
    {
        a.push(
            "Windows sign-on is offered: davdrive uses your Kerberos ticket (kinit, or the \
             Windows logon) or NTLM with a stored password (`davdrive login`)."
                .into(),
        );
    }
    if r.keep_alive == Some(false) {
        a.push(
            "The server closes the connection after each answer: every request pays a new \
             connection (and TLS handshake); expect more latency per file."
                .into(),
        );
    }
    if let Some(s) = r.clock_skew_seconds.filter(|s| s.abs() > 120) {
        a.push(format!(
            "The server's clock is {} s off: file times shown are the server's; davdrive's \
             caching does not depend on the clocks agreeing.",
            s.abs()
        ));
    }
    let writes_ok = r.writes.as_ref().filter(|w| w.refused.is_none());
    if let Some(l) = &r.listing {
        // Without a file in the listing, the tag of the scratch file's PUT tells.
        let etags = l.etags.or_else(|| writes_ok.and_then(|w| w.put_etag));
        match etags {
            // No file listed and nothing written: nothing to tell.
            None => {}
            Some(Tags::Strong) => a.push(format!(
                "Listings carry strong ETags: changes are recognised by tag and reads resume \
                 with If-Range.{}",
                match writes_ok
                    .and_then(|w| w.if_match.as_ref())
                    .map(|x| x.supported)
                {
                    Some(true) => {
                        " Overwrites are sent with If-Match: a change made meanwhile by \
                         someone else is refused rather than lost."
                    }
                    Some(false) => {
                        " But the server ignores If-Match: overwrites cannot be guarded \
                         against a change made meanwhile by someone else."
                    }
                    None => "",
                }
            )),
            Some(_) => {
                let guarded = writes_ok
                    .and_then(|w| w.if_unmodified_since.as_ref())
                    .is_some_and(|x| x.supported);
                a.push(format!(
                    "Listings have no strong ETags: changes are recognised by size and \
                     modification time; {}",
                    if guarded {
                        "overwrites are sent with If-Unmodified-Since, which this server \
                         honours, so a change made meanwhile by someone else (to the second) \
                         is refused rather than lost."
                    } else {
                        "overwrites cannot be guarded against a change made meanwhile by \
                         someone else."
                    }
                ));
            }
        }
        if l.quota_available.is_some() {
            a.push("`df` shows the server's quota.".into());
        }
    }
    if r.ranges.as_ref().is_some_and(|x| !x.supported) {
        a.push(
            "Ranges are not honoured: a read in the middle of a file downloads from its \
             start."
                .into(),
        );
    }
    if r.sync_collection.as_ref().is_some_and(|x| x.supported) {
        a.push(
            "The server offers sync-collection (RFC 6578); davdrive does not use it yet: \
             folders in use are checked for changes made by others with a small PROPFIND \
             every --revalidate seconds instead."
                .into(),
        );
    }
    match r.writes.as_ref() {
        Some(w) if w.refused.is_some() => a.push(
            "Files cannot be created here: the mount is usable for reading (creating a \
             file fails with a permission error at once)."
                .into(),
        ),
        Some(w) => {
            match &w.chunked_put {
                Some(ChunkedPut::Stored) => a.push(
                    "New files stream to the server while they are written; close() returns \
                     once the server has them (--async-close: at once)."
                        .into(),
                ),
                Some(ChunkedPut::Lost { .. }) => a.push(
                    "This server loses chunked uploads: davdrive writes new files to its \
                     cache first and sends them with their length at close."
                        .into(),
                ),
                _ => a.push(
                    "Chunked uploads could not be confirmed: new files are written to the \
                     cache first and sent at close."
                        .into(),
                ),
            }
            match &w.partial_put {
                Some(PartialPut::Applied) => a.push(
                    "Partial PUTs work: large uploads go in resumable segments, so a broken \
                     connection costs one segment, not the file."
                        .into(),
                ),
                Some(PartialPut::Mangled { .. }) => a.push(
                    "This server replaces a file with the piece of a partial PUT: davdrive \
                     never sends one here; large files go up in one request."
                        .into(),
                ),
                _ => a.push(
                    "No partial PUTs: large files go up in one request; a broken connection \
                     sends the file again."
                        .into(),
                ),
            }
            if w.move_file.as_ref().is_some_and(|x| !x.supported) {
                a.push(
                    "MOVE is refused: renaming fails with EXDEV, so `mv` copies and deletes \
                     instead; programs that save by renaming a temporary file may fail."
                        .into(),
                );
            }
            if w.lock.as_ref().is_some_and(|x| x.supported) {
                a.push(
                    "Locks work (WebDAV class 2): with --lock, a file open for writing here \
                     is locked on the server, so other clients see it locked."
                        .into(),
                );
            }
        }
        None => {}
    }
    a
}
