//! Errors of the filesystem core: a neutral [`ErrorKind`] plus a message for the log.
//!
//! Frontends map the kind to errno (`fs/fuse.rs`) or NTSTATUS (`fs/winfsp.rs`), each in one
//! exhaustive match. Protocol errors convert through [`DavError::kind`], the single mapping
//! from HTTP statuses and transport failures.

use std::fmt;

use crate::dav::DavError;
pub use crate::dav::{Cause, ErrorKind, TlsProblem};

/// An error of a filesystem operation.
#[derive(Debug, Clone)]
pub struct VfsError {
    pub kind: ErrorKind,
    pub message: String,
    /// Typed facts from the protocol layer (see [`Cause`]), for callers that explain or act.
    pub cause: Option<Cause>,
}

impl VfsError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        VfsError {
            kind,
            message: message.into(),
            cause: None,
        }
    }

    pub fn not_found(what: impl fmt::Display) -> Self {
        VfsError::new(ErrorKind::NotFound, format!("{what}: not found"))
    }

    /// Whether this is an ordinary outcome that should be logged at debug, not warn.
    pub fn is_expected(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::NotFound
                | ErrorKind::PathNotFound
                | ErrorKind::AlreadyExists
                | ErrorKind::ReadOnly
        )
    }

    /// Logs an error a frontend answers with: a warning, unless it is an ordinary outcome or
    /// the very error warned of last, less than a minute ago (a program writing on after its
    /// file failed gets the same error for each of thousands of writes: the log says it once).
    pub fn report(&self) {
        static LAST: std::sync::Mutex<Option<(String, std::time::Instant)>> =
            std::sync::Mutex::new(None);
        if self.is_expected() {
            tracing::debug!("{self}");
            return;
        }
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if let Some((msg, at)) = last.as_ref()
            && *msg == self.message
            && now.duration_since(*at) < std::time::Duration::from_secs(60)
        {
            tracing::debug!("{self} (again)");
            return;
        }
        *last = Some((self.message.clone(), now));
        drop(last);
        tracing::warn!("{self}");
    }
}

impl fmt::Display for VfsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for VfsError {}

impl From<DavError> for VfsError {
    fn from(e: DavError) -> Self {
        VfsError {
            kind: e.kind(),
            message: e.to_string(),
            cause: e.cause(),
        }
    }
}

pub type VfsResult<T> = Result<T, VfsError>;
