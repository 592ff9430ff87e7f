//! Thin kernel adapters. Each translates its kernel's callbacks into calls on the core
//! ([`crate::vfs::Vfs`]) and the core's error kinds into its own codes, in one match.
//!
//! - `fuse` (Linux; macOS later): fuser callbacks, errno.
//! - `winfsp` (Windows): WinFsp callbacks, NTSTATUS.

#[cfg(target_os = "linux")]
pub mod fuse;
#[cfg(windows)]
pub mod winfsp;
