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
