//! `davdrive status`, `davdrive refresh` and the wait of `davdrive unmount`: clients of the
//! mounts' control sockets (`crate::mount::control`), plus the recovery folders on disk.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mount::control::{self, Report};
use crate::vfs::activity::{ChangeKind, Phase};
use crate::vfs::recovery::Kept;

/// `1.5 MiB`.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// What `davdrive recover` needs to be told to reach the kept files of `url`.
fn next_step(k: &Kept) -> String {
    if k.retry {
        "the mount uploads it by itself once the server answers".to_owned()
    } else {
        format!(
            "`davdrive recover {url}` uploads it if the file did not change on the server \
             since; `davdrive recover {url} --discard` deletes it",
            url = k.url
        )
    }
}

/// The text of `davdrive status`.
pub fn render(reports: &[Report], kept: &[Kept], base: &Path) -> String {
    let mut out = String::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if reports.is_empty() {
        out.push_str("no davdrive mount is running\n");
    }
    for r in reports {
        let m = &r.mount;
        out.push_str(&format!(
            "{} on {} (pid {}, mounted {} ago{})\n",
            m.url,
            m.mountpoint.display(),
            m.pid,
            duration(now.saturating_sub(m.started)),
            if m.async_close { ", --async-close" } else { "" }
        ));
        match r.activity.server_silent_secs {
            None => out.push_str("  server: answering\n"),
            Some(s) => out.push_str(&format!(
                "  server: no answer for {}; uploads wait for it, reads fail\n",
                duration(s)
            )),
        }
        if r.activity.uploads.is_empty() {
            out.push_str("  uploads: none in progress\n");
        }
        for c in &r.activity.changes {
            let what = match (c.kind, &c.to) {
                (ChangeKind::MakeFolder, _) => format!("making folder {}", c.path),
                (ChangeKind::Rename, Some(to)) => format!("renaming {} to {to}", c.path),
                (ChangeKind::Rename, None) => format!("renaming {}", c.path),
                (ChangeKind::Delete, _) => format!("deleting {}", c.path),
            };
            out.push_str(&format!(
                "  on the server after the call returned: {what} ({} ago)\n",
                duration(c.secs as u64)
            ));
        }
        for u in &r.activity.uploads {
            let what = match u.phase {
                Phase::Writing => "writing",
                Phase::Uploading => "uploading",
                Phase::Queued => "queued (--async-close)",
            };
            let rate = if u.secs >= 0.5 && u.sent > 0 && u.phase != Phase::Queued {
                format!(", {}/s", size((u.sent as f64 / u.secs) as u64))
            } else {
                String::new()
            };
            out.push_str(&format!(
                "  {what}: {} ({} of {}{rate})\n",
                u.path,
                size(u.sent.min(u.size)),
                size(u.size)
            ));
        }
    }
    if kept.is_empty() {
        out.push_str(&format!(
            "no files waiting in recovery folders under {}\n",
            base.display()
        ));
    } else {
        out.push_str(&format!(
            "{} file(s) could not be uploaded and are kept locally:\n",
            kept.len()
        ));
        for k in kept {
            let path = k.path.as_ref().map_or("?".into(), |p| p.to_string());
            out.push_str(&format!(
                "  {}{}\n    kept in {}\n    why: {}\n    next: {}\n",
                k.url.trim_end_matches('/'),
                path,
                k.data.display(),
                k.reason,
                next_step(k)
            ));
        }
    }
    out
}

/// The JSON of `davdrive status --json`.
pub fn render_json(reports: &[Report], kept: &[Kept]) -> String {
    let kept: Vec<serde_json::Value> = kept
        .iter()
        .map(|k| {
            serde_json::json!({
                "url": k.url,
                "path": k.path.as_ref().map(|p| p.to_string()),
                "data": k.data,
                "reason": k.reason,
                "uploaded_by_the_mount": k.retry,
                "next": next_step(k),
            })
        })
        .collect();
    serde_json::json!({ "mounts": reports, "recovery": kept }).to_string()
}

/// `davdrive status [--json] [--watch]` for the cache base directory `base`.
pub fn status(base: &Path, json: bool, watch: bool) -> Result<(), String> {
    let snapshot = || {
        let found = control::running(base);
        let (running, silent) = (found.answering, found.silent);
        let reports: Vec<Report> = running.into_iter().map(|r| r.1).collect();
        let kept = crate::vfs::cache_dir::list_recovered(base);
        (reports, silent, kept)
    };
    let mut out = std::io::stdout();
    if json {
        let (reports, _, kept) = snapshot();
        let _ = writeln!(out, "{}", render_json(&reports, &kept));
        return Ok(());
    }
    loop {
        let (reports, silent, kept) = snapshot();
        let mut text = render(&reports, &kept, base);
        for (sock, why) in &silent {
            text.push_str(&format!(
                "a mount did not answer ({why}); its socket is {}\n",
                sock.display()
            ));
        }
        if watch && out.is_terminal() {
            // Home, clear: redraw in place.
            let _ = write!(out, "\x1b[H\x1b[2J");
        }
        let _ = write!(out, "{text}");
        let _ = out.flush();
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
        if !out.is_terminal() {
            let _ = writeln!(out);
        }
    }
}

/// `p` with its folder's symbolic links and `..` resolved (the last component is kept as
/// it is: it may be a mount point whose daemon does not answer).
pub fn resolved(p: &Path) -> PathBuf {
    // Windows: `x:`, `X:` and `X:\` are the one drive.
    #[cfg(windows)]
    if let Ok(crate::mount::windows::MountPoint::Drive(c)) =
        crate::mount::windows::MountPoint::parse(p)
    {
        return PathBuf::from(format!("{c}:\\"));
    }
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

/// The running mount whose mount point is `mountpoint`, and its socket.
pub fn find_mount(base: &Path, mountpoint: &Path) -> Option<(PathBuf, Report)> {
    let want = resolved(mountpoint);
    control::running(base)
        .answering
        .into_iter()
        .find(|(_, r)| resolved(&r.mount.mountpoint) == want)
}

/// `davdrive refresh [PATH]`.
pub fn refresh(base: &Path, path: Option<&Path>) -> Result<(), String> {
    let mounts = control::running(base).answering;
    if mounts.is_empty() {
        return Err("no davdrive mount is running".into());
    }
    let targets: Vec<(&PathBuf, &Report, String)> = match path {
        None => mounts.iter().map(|(s, r)| (s, r, String::new())).collect(),
        Some(p) => {
            let abs = resolved(p);
            let found = mounts
                .iter()
                .filter_map(|(s, r)| {
                    let rest = abs.strip_prefix(resolved(&r.mount.mountpoint)).ok()?;
                    let rel: Vec<String> = rest
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    Some((s, r, rel.join("/")))
                })
                .max_by_key(|(_, r, _)| r.mount.mountpoint.as_os_str().len());
            match found {
                Some(t) => vec![t],
                None => return Err(format!("{} is not in a davdrive mount", p.display())),
            }
        }
    };
    for (sock, r, rel) in targets {
        let answer = control::request(sock, &format!("refresh /{rel}"))
            .map_err(|e| format!("{}: {e}", r.mount.mountpoint.display()))?;
        let v: serde_json::Value = serde_json::from_str(&answer)
            .map_err(|e| format!("{}: unreadable answer: {e}", r.mount.mountpoint.display()))?;
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            return Err(format!("{}: {e}", r.mount.mountpoint.display()));
        }
        let n = v.get("refreshed").and_then(|n| n.as_u64()).unwrap_or(0);
        println!(
            "{}: {n} cached listing(s) dropped",
            r.mount.mountpoint.join(&rel).display()
        );
    }
    Ok(())
}

/// After the unmount of the mount served at `sock`: waits until its daemon exits (its
/// uploads are then on the server or kept in recovery), showing progress on a terminal.
/// Interrupted (Ctrl-C), says what remains and returns an error.
pub fn wait_for_daemon(sock: &Path, mountpoint: &Path) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let tty = std::io::stderr().is_terminal();
    let mut last: Option<Report> = None;
    let mut said = false;
    let mut said_silent = false;
    let interrupted = rt.block_on(async {
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            let report = {
                let sock = sock.to_owned();
                tokio::task::spawn_blocking(move || control::status_of(&sock))
                    .await
                    .unwrap_or_else(|e| Err(control::Unanswered::Silent(e.to_string())))
            };
            let report = match report {
                Ok(r) => r,
                // The daemon is gone: everything is done.
                Err(control::Unanswered::Gone) => return false,
                // Stopping: its socket closed first, the daemon exits once its uploads are
                // done (a busy daemon answers again after the unmount; nothing to say here).
                Err(control::Unanswered::Closing) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = &mut ctrl_c => return true,
                    }
                    continue;
                }
                // Busy or wedged: ask again (Ctrl-C stops waiting).
                Err(control::Unanswered::Silent(why)) => {
                    if !said_silent {
                        eprintln!("davdrive: the mount does not answer ({why}); still waiting");
                        said_silent = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = &mut ctrl_c => return true,
                    }
                    continue;
                }
            };
            let ups = &report.activity.uploads;
            if !ups.is_empty() {
                let (sent, total) = ups
                    .iter()
                    .fold((0, 0), |(s, t), u| (s + u.sent.min(u.size), t + u.size));
                let line = progress_line(ups.len(), sent, total);
                if tty {
                    eprint!("\r\x1b[2K{line}");
                } else if !said {
                    eprintln!("{line}");
                }
                said = true;
            }
            last = Some(report);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = &mut ctrl_c => return true,
            }
        }
    });
    if tty && said {
        eprintln!();
    }
    if interrupted {
        let left = last.map(|r| r.activity.uploads).unwrap_or_default();
        let mut msg = format!(
            "stopped waiting; {} is unmounted and its daemon goes on in the background",
            mountpoint.display()
        );
        for u in &left {
            msg.push_str(&format!(
                "\n  still to upload: {} ({} of {})",
                u.path,
                size(u.sent.min(u.size)),
                size(u.size)
            ));
        }
        msg.push_str("\n`davdrive status` shows how it goes.");
        return Err(msg);
    }
    if said {
        eprintln!("davdrive: every upload finished");
    }
    Ok(())
}

/// `finishing 2 upload(s): [#####.....] 12.0 of 24.0 MiB`
fn progress_line(files: usize, sent: u64, total: u64) -> String {
    const WIDTH: u64 = 20;
    let filled = (sent * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH) as usize;
    format!(
        "davdrive: finishing {files} upload(s) [{}{}] {} of {}",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        size(sent),
        size(total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(windows)]
    #[test]
    fn a_drive_is_found_however_it_is_written() {
        for p in ["x:", "X:", "X:\\", "x:/"] {
            assert_eq!(resolved(Path::new(p)), PathBuf::from("X:\\"), "{p}");
        }
    }

    #[test]
    fn sizes_and_the_progress_line_read_well() {
        assert_eq!(size(0), "0 bytes");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(50 << 20), "50.0 MiB");
        assert_eq!(
            progress_line(2, 6 << 20, 24 << 20),
            "davdrive: finishing 2 upload(s) [#####...............] 6.0 MiB of 24.0 MiB"
        );
        assert_eq!(
            progress_line(1, 0, 0),
            "davdrive: finishing 1 upload(s) [####################] 0 bytes of 0 bytes"
        );
    }
}
