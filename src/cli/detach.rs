//! A background mount: the parent starts `davdrive` again detached (the platform decides
//! how: a new session on Linux, no console on Windows), hands it its secrets over a pipe,
//! and returns once the child says the mount is ready, or with the child's own words when
//! it failed. The child reads its secrets first thing ([`take_secrets`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command};

use crate::mount::READY;

/// Set in the environment of the detached child of a background mount.
pub const DETACHED: &str = "DAVDRIVE_DETACHED";

/// The secrets of this process's environment as `NAME\0value\0` pairs (only the names of
/// `SECRET_VARS`), removed from `cmd`'s environment: they go to the child over its stdin.
pub fn secrets_for(cmd: &mut Command) -> Vec<u8> {
    let mut secrets = Vec::new();
    for var in crate::dav::auth::SECRET_VARS {
        if let Ok(v) = std::env::var(var) {
            secrets.extend_from_slice(var.as_bytes());
            secrets.push(0);
            secrets.extend_from_slice(v.as_bytes());
            secrets.push(0);
        }
        cmd.env_remove(var);
    }
    secrets
}

/// The command that starts the daemon: `exe ARGV` marked as detached, stdin and stdout
/// piped (secrets in, the ready line out), stderr appended to `log`; with the secrets it is
/// to get over stdin (see [`handshake`]). The platform adds how it detaches.
pub fn daemon_command(
    exe: &Path,
    argv: Vec<std::ffi::OsString>,
    log: std::fs::File,
) -> (Command, Vec<u8>) {
    let mut cmd = Command::new(exe);
    // Secrets go over a pipe, not into the daemon's environment.
    let secrets = secrets_for(&mut cmd);
    cmd.args(argv)
        .env(DETACHED, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(log));
    (cmd, secrets)
}

/// In the daemon of a background mount: takes the secrets its parent sends over stdin into
/// this process's variables. On Linux they were never in its initial environment block,
/// which /proc shows to the user's other processes for the life of the mount. (On Windows
/// the live block holds them, readable by the user's own processes, which can read the
/// daemon's memory anyway.) Commands davdrive runs never inherit them (`SECRET_VARS`).
pub fn take_secrets() {
    if std::env::var_os(DETACHED).is_none() {
        return;
    }
    let mut raw = Vec::new();
    if std::io::stdin()
        .take(1 << 16)
        .read_to_end(&mut raw)
        .is_err()
    {
        return;
    }
    let mut fields = raw.split(|b| *b == 0);
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            continue;
        };
        if crate::dav::auth::SECRET_VARS.contains(&name) {
            // SAFETY: called first thing in main, before any other thread exists.
            unsafe { std::env::set_var(name, value) };
        }
    }
}

/// Hands the started `child` (stdin and stdout piped, stderr to `log`) its secrets and waits
/// for its ready line; `start` is where this start's lines begin in the appended log.
pub fn handshake(mut child: Child, secrets: &[u8], log: &Path, start: u64) -> Result<(), String> {
    if let Some(mut stdin) = child.stdin.take() {
        // Dropped at the end of this block: the daemon reads to the end.
        stdin
            .write_all(secrets)
            .map_err(|e| format!("cannot hand the daemon its secrets: {e}"))?;
    }
    let stdout = child.stdout.take().ok_or("no pipe to the daemon")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("daemon: {e}"))?;
    if line.starts_with(READY) {
        print!("{line}");
        println!("davdrive: logging to {}", log.display());
        // Warnings of the start (--insecure, a password or token over plain HTTP) are
        // shown here too, not only in a log nobody reads.
        for warning in start_warnings(log, start) {
            eprintln!("davdrive: warning: {warning}");
        }
        return Ok(());
    }
    let status = child.wait().map_err(|e| format!("daemon: {e}"))?;
    // Only what this start logged: the log also holds earlier mounts'.
    let tail = log_since(log, start);
    let last: Vec<&str> = tail.lines().rev().take(3).collect();
    let detail: Vec<&str> = last.into_iter().rev().collect();
    Err(format!(
        "the mount failed ({status}): {}\n(full log: {})",
        detail.join("\n"),
        log.display()
    ))
}

/// What the daemon logged from byte `start` of its log on (at most 1 MiB).
pub fn log_since(log: &Path, start: u64) -> String {
    use std::io::{Seek, SeekFrom};
    let mut raw = Vec::new();
    let read = std::fs::File::open(log).and_then(|mut f| {
        f.seek(SeekFrom::Start(start))?;
        f.take(1 << 20).read_to_end(&mut raw)
    });
    match read {
        Ok(_) => String::from_utf8_lossy(&raw).into_owned(),
        Err(_) => String::new(),
    }
}

/// The warnings the daemon logged from byte `start` of its log on.
pub fn start_warnings(log: &Path, start: u64) -> Vec<String> {
    log_since(log, start)
        .lines()
        .filter_map(|l| l.split_once(" WARN ").map(|(_, w)| w.trim().to_owned()))
        .collect()
}
