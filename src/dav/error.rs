//! Errors of the protocol layer, and the ONE mapping from them to neutral kinds.
//!
//! A [`DavError`] keeps apart what the server chose to answer ([`DavError::Service`], a status
//! and its message) from what went wrong on the way ([`DavError::Transport`]: connect, DNS, TLS,
//! timeout, a body cut short) and from answers we could not understand
//! ([`DavError::InvalidResponse`]). [`DavError::kind`] is the single place that turns any of
//! them into an [`ErrorKind`]; the frontends map kinds to errno / NTSTATUS, each in one match.
//!
//! Messages never contain credentials: paths are shown decoded and relative to the mount root,
//! never as URLs with userinfo.

use std::fmt;

/// Errno-neutral error kinds shared by the protocol layer and the filesystem core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The resource does not exist (404, 410, or a parent missing on create).
    NotFound,
    /// A folder on the way to the resource does not exist (the path layer's lookups; Windows
    /// tells it apart from a missing last name).
    PathNotFound,
    /// The server refuses the operation for this user (403) or the mount is read-only.
    PermissionDenied,
    /// The server wants credentials we do not have, or refused the ones we sent (401).
    AuthRequired,
    /// The target exists already (MKCOL on an existing name, create with If-None-Match).
    AlreadyExists,
    /// A directory that must be empty is not.
    NotEmpty,
    /// A directory was found where a file was expected.
    IsADirectory,
    /// A file was found where a directory was expected.
    NotADirectory,
    /// The resource is locked (423, 424).
    Locked,
    /// The server has no room (507).
    NoSpace,
    /// The server refuses the size (413).
    TooLarge,
    /// A precondition failed: the resource changed behind our back (412), or bytes of two
    /// versions would have been mixed.
    Stale,
    /// A conflicting state on the server (409) that is not one of the above.
    Conflict,
    /// The server does not support the operation (405, 501; 400 to MOVE/COPY on Orthanc).
    Unsupported,
    /// The operation would cross a boundary the server cannot cross (MOVE refused): callers
    /// may copy instead.
    CrossDevice,
    /// The server is busy or asks us to slow down (429, 503).
    Busy,
    /// The server cannot be reached (connect refused, DNS, gateway errors 502/504).
    Unreachable,
    /// The server stopped making progress within the configured time.
    TimedOut,
    /// The name cannot be represented on the server or locally.
    InvalidName,
    /// The mount (or this part of the server) is read-only.
    ReadOnly,
    /// TLS could not be established (certificate not trusted, name mismatch, ...).
    TlsFailure,
    /// The server's answer could not be understood (malformed XML, odd status).
    Protocol,
    /// Any other I/O failure.
    Io,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::PathNotFound => "a folder on the way not found",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::AuthRequired => "authentication required",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::NotEmpty => "directory not empty",
            ErrorKind::IsADirectory => "is a directory",
            ErrorKind::NotADirectory => "not a directory",
            ErrorKind::Locked => "locked",
            ErrorKind::NoSpace => "no space left on server",
            ErrorKind::TooLarge => "too large for the server",
            ErrorKind::Stale => "changed on the server",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unsupported => "not supported by the server",
            ErrorKind::CrossDevice => "not possible in place",
            ErrorKind::Busy => "server busy",
            ErrorKind::Unreachable => "server unreachable",
            ErrorKind::TimedOut => "timed out",
            ErrorKind::InvalidName => "invalid name",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::TlsFailure => "TLS failure",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Io => "I/O error",
        };
        f.write_str(s)
    }
}

/// What failed below HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// TCP connect refused or unreachable, DNS failure.
    Connect,
    /// TLS handshake or certificate verification.
    Tls,
    /// No progress within the configured time.
    Timeout,
    /// The connection broke while sending or receiving (reset, body cut short).
    Broken,
    /// Anything else reported by the HTTP stack.
    Other,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Connect => "cannot connect",
            TransportKind::Tls => "TLS failure",
            TransportKind::Timeout => "timed out",
            TransportKind::Broken => "connection broken",
            TransportKind::Other => "transport error",
        })
    }
}

/// What a failure means beyond its kind: typed facts, worked out here where the failure is
/// understood, for callers that act on it (a conflict is not a failed upload) or explain it
/// (the mount's error message). Nobody outside `dav` reads statuses or message text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// A precondition of the request failed (412): the resource changed, or exists.
    PreconditionFailed,
    /// The server wants credentials or refused ours (401), offering these schemes
    /// (lowercase: `basic`, `digest`, `negotiate`, `ntlm`, `bearer`).
    AuthRefused { offered: Vec<String> },
    /// A connection-bound handshake (`NTLM`, `Negotiate`) ran and the server refused it.
    HandshakeRefused { scheme: String },
    /// TLS could not be established, and why.
    Tls(TlsProblem),
}

/// Why TLS could not be established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProblem {
    /// The certificate is not valid for the host name we asked for.
    WrongName,
    Expired,
    NotYetValid,
    /// The server wants a client certificate (it said so: `CertificateRequired`).
    ClientCertWanted,
    /// The server refused the handshake without saying why (often: no client certificate).
    HandshakeRefused,
    /// The certificate is not trusted here (unknown issuer, self-signed, not the pin).
    Untrusted,
}

impl TlsProblem {
    /// Classifies a TLS failure from the TLS library's (rustls') description of it.
    pub fn of(detail: &str) -> TlsProblem {
        if detail.contains("not valid for name") || detail.contains("NotValidForName") {
            TlsProblem::WrongName
        } else if detail.contains("Expired") || detail.contains("expired") {
            TlsProblem::Expired
        } else if detail.contains("NotValidYet") {
            TlsProblem::NotYetValid
        } else if detail.contains("CertificateRequired") {
            TlsProblem::ClientCertWanted
        } else if detail.contains("HandshakeFailure") {
            TlsProblem::HandshakeRefused
        } else {
            TlsProblem::Untrusted
        }
    }
}

/// An error of one WebDAV request.
#[derive(Debug, thiserror::Error)]
pub enum DavError {
    /// The server answered with a status we treat as failure.
    #[error("{method} {path}: server answered {status}{}", fmt_message(.message))]
    Service {
        method: String,
        path: String,
        status: u16,
        message: String,
        /// What the answer said beyond its status (the schemes a 401 offers).
        cause: Option<Cause>,
    },
    /// The request did not complete at the transport level.
    #[error("{method} {path}: {kind}: {detail}")]
    Transport {
        method: String,
        path: String,
        kind: TransportKind,
        detail: String,
    },
    /// The server answered, but not in a form we understand.
    #[error("{method} {path}: invalid response: {reason}")]
    InvalidResponse {
        method: String,
        path: String,
        reason: String,
    },
    /// The request could not even be formed (bad URL, bad name, bad configuration).
    #[error("{0}")]
    Invalid(String),
}

fn fmt_message(m: &str) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(" ({m})")
    }
}

impl DavError {
    /// The HTTP status, for service errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            DavError::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The typed facts of this failure, if any (see [`Cause`]).
    pub fn cause(&self) -> Option<Cause> {
        match self {
            DavError::Service { cause: Some(c), .. } => Some(c.clone()),
            DavError::Service { status: 412, .. } => Some(Cause::PreconditionFailed),
            DavError::Service { status: 401, .. } => Some(Cause::AuthRefused {
                offered: Vec::new(),
            }),
            DavError::Transport {
                kind: TransportKind::Tls,
                detail,
                ..
            } => Some(Cause::Tls(TlsProblem::of(detail))),
            _ => None,
        }
    }

    /// Whether a precondition of the request failed (412).
    pub fn precondition_failed(&self) -> bool {
        self.cause() == Some(Cause::PreconditionFailed)
    }

    /// Whether the server answered the request (with a status we treat as failure), as
    /// opposed to a transport failure or an answer we could not read.
    pub fn answered(&self) -> bool {
        matches!(self, DavError::Service { .. })
    }

    /// The one mapping from protocol failures to neutral kinds.
    ///
    /// Statuses depend on the method where servers disagree: 405 to MKCOL means the name is
    /// taken (RFC 4918 9.3.1); 409 to PUT/MKCOL means a missing parent; 400/405/501/502 to
    /// MOVE/COPY means the server cannot move (Orthanc answers 400), so callers fall back to
    /// copying (EXDEV).
    pub fn kind(&self) -> ErrorKind {
        match self {
            DavError::Service { method, status, .. } => {
                let m = method.as_str();
                match (*status, m) {
                    (400 | 405 | 501 | 502, "MOVE" | "COPY") => ErrorKind::CrossDevice,
                    (405, "MKCOL") => ErrorKind::AlreadyExists,
                    (409, "PUT" | "MKCOL" | "MOVE" | "COPY") => ErrorKind::NotFound,
                    (412, "MOVE" | "COPY") => ErrorKind::AlreadyExists,
                    (412, _) => ErrorKind::Stale,
                    (401, _) | (407, _) => ErrorKind::AuthRequired,
                    (403, _) => ErrorKind::PermissionDenied,
                    (404 | 410, _) => ErrorKind::NotFound,
                    (405 | 501, _) => ErrorKind::Unsupported,
                    (409, _) => ErrorKind::Conflict,
                    (413, _) => ErrorKind::TooLarge,
                    (414, _) => ErrorKind::InvalidName,
                    (423 | 424, _) => ErrorKind::Locked,
                    (429 | 503, _) => ErrorKind::Busy,
                    (502, _) => ErrorKind::Unreachable,
                    (504 | 408, _) => ErrorKind::TimedOut,
                    (507, _) => ErrorKind::NoSpace,
                    (300..=399, _) => ErrorKind::Protocol,
                    _ => ErrorKind::Io,
                }
            }
            DavError::Transport { kind, .. } => match kind {
                TransportKind::Connect => ErrorKind::Unreachable,
                TransportKind::Tls => ErrorKind::TlsFailure,
                TransportKind::Timeout => ErrorKind::TimedOut,
                TransportKind::Broken | TransportKind::Other => ErrorKind::Io,
            },
            DavError::InvalidResponse { .. } => ErrorKind::Protocol,
            DavError::Invalid(_) => ErrorKind::InvalidName,
        }
    }

    /// Whether this is a transport failure that happened before the server could have acted
    /// on the request in a way we care about; used for the one retry of idempotent requests.
    /// A connection-level failure worth retrying after a pause (the server may be
    /// restarting): refused, reset or cut short. Not TLS failures or timeouts.
    pub(crate) fn is_reconnectable(&self) -> bool {
        matches!(
            self,
            DavError::Transport {
                kind: TransportKind::Connect | TransportKind::Broken | TransportKind::Other,
                ..
            }
        )
    }

    pub(crate) fn is_retryable_transport(&self) -> bool {
        matches!(
            self,
            DavError::Transport {
                kind: TransportKind::Broken | TransportKind::Other,
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(method: &str, status: u16) -> DavError {
        DavError::Service {
            method: method.into(),
            path: "/x".into(),
            status,
            message: String::new(),
            cause: None,
        }
    }

    fn transport(kind: TransportKind) -> DavError {
        DavError::Transport {
            method: "GET".into(),
            path: "/x".into(),
            kind,
            detail: "d".into(),
        }
    }

    #[test]
    fn error_kind_table() {
        use ErrorKind::*;
        let table: &[(DavError, ErrorKind)] = &[
            (svc("GET", 404), NotFound),
            (svc("PROPFIND", 410), NotFound),
            (svc("GET", 403), PermissionDenied),
            (svc("PUT", 401), AuthRequired),
            (svc("GET", 407), AuthRequired),
            (svc("MKCOL", 405), AlreadyExists),
            (svc("MKCOL", 409), NotFound),
            (svc("PUT", 409), NotFound),
            (svc("PROPPATCH", 409), Conflict),
            (svc("DELETE", 405), Unsupported),
            (svc("LOCK", 501), Unsupported),
            (svc("MOVE", 400), CrossDevice),
            (svc("MOVE", 502), CrossDevice),
            (svc("COPY", 405), CrossDevice),
            (svc("MOVE", 412), AlreadyExists),
            (svc("PUT", 412), Stale),
            (svc("PUT", 413), TooLarge),
            (svc("GET", 414), InvalidName),
            (svc("PUT", 423), Locked),
            (svc("MOVE", 424), Locked),
            (svc("GET", 429), Busy),
            (svc("GET", 503), Busy),
            (svc("GET", 502), Unreachable),
            (svc("GET", 504), TimedOut),
            (svc("PUT", 507), NoSpace),
            (svc("GET", 500), Io),
            (svc("GET", 301), Protocol),
            (transport(TransportKind::Connect), Unreachable),
            (transport(TransportKind::Tls), TlsFailure),
            (transport(TransportKind::Timeout), TimedOut),
            (transport(TransportKind::Broken), Io),
            (transport(TransportKind::Other), Io),
            (
                DavError::InvalidResponse {
                    method: "PROPFIND".into(),
                    path: "/".into(),
                    reason: "x".into(),
                },
                Protocol,
            ),
            (DavError::Invalid("bad".into()), InvalidName),
        ];
        for (err, kind) in table {
            assert_eq!(err.kind(), *kind, "{err}");
        }
    }

    #[test]
    fn causes_are_typed_facts() {
        assert_eq!(svc("PUT", 412).cause(), Some(Cause::PreconditionFailed));
        assert!(svc("MOVE", 412).precondition_failed());
        assert!(!svc("PUT", 409).precondition_failed());
        assert!(svc("PUT", 409).answered());
        assert!(!transport(TransportKind::Broken).answered());
        let tls = |d: &str| DavError::Transport {
            method: "OPTIONS".into(),
            path: "/".into(),
            kind: TransportKind::Tls,
            detail: d.into(),
        };
        for (detail, want) in [
            (
                "invalid peer certificate: certificate not valid for name \"x\"",
                TlsProblem::WrongName,
            ),
            ("invalid peer certificate: Expired", TlsProblem::Expired),
            (
                "invalid peer certificate: NotValidYet",
                TlsProblem::NotYetValid,
            ),
            (
                "received fatal alert: CertificateRequired",
                TlsProblem::ClientCertWanted,
            ),
            (
                "received fatal alert: HandshakeFailure",
                TlsProblem::HandshakeRefused,
            ),
            (
                "invalid peer certificate: UnknownIssuer",
                TlsProblem::Untrusted,
            ),
        ] {
            assert_eq!(tls(detail).cause(), Some(Cause::Tls(want)), "{detail}");
        }
        assert_eq!(transport(TransportKind::Connect).cause(), None);
    }

    #[test]
    fn messages_name_method_path_and_status() {
        let e = DavError::Service {
            method: "PUT".into(),
            path: "/a b".into(),
            status: 507,
            message: "Insufficient Storage".into(),
            cause: None,
        };
        assert_eq!(
            e.to_string(),
            "PUT /a b: server answered 507 (Insufficient Storage)"
        );
    }
}
