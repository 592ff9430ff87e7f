//! The WebDAV protocol client. Knows nothing about filesystems.
//!
//! - [`client`]: one async method per WebDAV operation, retries and authentication.
//! - [`multistatus`]: streaming, namespace-correct parsing of 207 bodies.
//! - [`href`]: decoded paths under the mounted root, and the href rules that keep a server's
//!   answers inside it.
//! - [`error`]: service vs transport errors and the one mapping to neutral kinds.
//! - [`doctor`]: what a server supports, asked request by request (`davdrive doctor`).
//! - [`probe`]: what a server really does with chunked and partial PUTs (scratch files).
//! - [`health`]: a server that stopped answering costs one timeout, not one per request.
//! - [`dates`], [`auth`]: date formats servers use; credentials and challenges.
//! - [`ntlm`]: NTLM messages (NTLMv2) for IIS Windows authentication; [`kerberos`]: Kerberos
//!   tokens for `Negotiate` through the system GSSAPI.

pub mod auth;
pub mod client;
pub mod dates;
pub mod doctor;
pub mod error;
pub mod health;
pub mod href;
pub mod kerberos;
pub mod multistatus;
pub mod ntlm;
pub mod ntlm_transport;
pub mod probe;
pub mod proxy;
pub mod tls;

pub use auth::{BearerSource, Credentials, Secret};
pub use client::{
    ByteRange, Capabilities, ClientConfig, ContentRange, DavClient, Depth, Exchange, GetStream,
    LockInfo, Preconditions, PutBody, ResponseMeta,
};
pub use error::{Cause, DavError, ErrorKind, TlsProblem, TransportKind};
pub use href::{DavPath, Root};
pub use multistatus::{Multistatus, Resource};
pub use proxy::ProxyConfig;
