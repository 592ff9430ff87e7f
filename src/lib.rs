//! davdrive: mount a WebDAV server as a local drive.
//!
//! Layers, from the wire up (each knows nothing of the ones above it):
//! - [`dav`]: the WebDAV protocol client (requests, multistatus parsing, hrefs, errors).
//! - [`vfs`]: the platform-neutral filesystem core (inodes, caches, read streams).
//! - [`fs`]: thin kernel adapters (FUSE on Linux, WinFsp on Windows).
//! - [`mount`]: the frontend-neutral mount lifecycle (connect, probe, signals, drain).
//! - [`cli`], [`config`], [`credentials`]: the user-facing surface.
//! - [`sys`]: operating-system primitives behind safe functions (pipes and `splice` on Linux).

pub mod cli;
pub mod config;
pub mod credentials;
pub mod dav;
pub mod fs;
pub mod mount;
pub mod sys;
pub mod vfs;
