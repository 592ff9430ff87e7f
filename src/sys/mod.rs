//! Operating-system primitives the platform-neutral core may use where they exist, behind
//! safe functions: the core itself makes no system calls of its own (see the layering test).
//!
//! - [`pipe`] (Linux): pipes and `splice`, for zero-copy reads.
//! - [`files`]: who we are, and opening files without following symbolic links.
//! - [`sspi`] (Windows): Kerberos and NTLM tokens for the logged-on user (single sign-on).
//! - [`winsec`] (Windows): the user's SID and security descriptors from SDDL.

pub mod files;
#[cfg(target_os = "linux")]
pub mod pipe;
#[cfg(windows)]
pub mod sspi;
#[cfg(windows)]
pub mod winsec;
