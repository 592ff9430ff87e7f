//! Integration tests: one binary, so the servers start once and linking happens once.
//!
//! - `fixtures`: the multistatus parser on captured responses of real servers, and on
//!   hostile XML.
//! - `client`: every WebDAV method of the protocol client against Apache, Orthanc and an
//!   in-process dav-server.
//! - `mount_read`, `mount_write`: real FUSE mounts driven with std::fs, ls, cp, sqlite3.
//! - `async_close`: `--async-close` copies, ordering after early closes, failed uploads.
//! - `faults`: a fault-injecting proxy, server restarts and a full cache disk.
//! - `core`: the core without a kernel, against a real server, in FUSE's and WinFsp's
//!   orders and in races a mount cannot steer.
//! - `reftest`: random operation sequences on the core against an in-memory model.
//! - `layering`: the core stays free of frontend crates.
//! - `servers`: one suite over Apache, nginx, lighttpd, rclone, WsgiDAV and SabreDAV, with
//!   each server's known differences written down.
//! - `profiles`: mounting by profile name from the TOML configuration file.
//! - `windows`: the Windows semantics layer (what the WinFsp adapter translates) in the
//!   orders Windows calls it: dispositions, delete on close, paging with a marker.
//! - `desktop`: an ordinary user's ways in: mount/status/unmount, fstab and `mount -t`,
//!   login mounts, `.davmount` files, GIO's trash, type sniffing and copies.
//!
//! Linux only: the tests mount with FUSE (the Windows build is checked by
//! `scripts/windows-check`, which runs the library's unit tests under Wine).
#![cfg(target_os = "linux")]

mod support;

mod async_close;
mod client;
pub(crate) mod core;
mod desktop;
pub(crate) mod faults;
mod fixtures;
mod kerberos;
mod layering;
mod mount_read;
pub(crate) mod mount_write;
mod profiles;
mod reftest;
mod servers;
mod tls;
mod windows;
