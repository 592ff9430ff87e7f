//! Desktop notifications (`org.freedesktop.Notifications` on the session bus) for uploads
//! that failed after the close that could have reported them returned (`--async-close`): a
//! drag-and-drop that failed a minute later must not be silent. The data is in the recovery
//! folder; the notification says so and names `davdrive status`.
//!
//! A burst of failures (a folder copied while the server went away) is one notification,
//! sent once the burst has been quiet for a moment. Without a session bus (a server, a unit
//! without one) nothing is shown; the log and `davdrive status` still say it.

use std::sync::Arc;
use std::time::Duration;

use crate::vfs::{Notice, Vfs};

/// How long more failures are gathered into the same notification.
const GATHER: Duration = Duration::from_millis(1500);

/// Forwards the mount's notices to the desktop, for as long as the mount lives.
pub fn forward(vfs: &Arc<Vfs>, rt: &tokio::runtime::Runtime, mountpoint: &std::path::Path) {
    let mut rx = vfs.notices();
    let mountpoint = mountpoint.display().to_string();
    rt.spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let first = match rx.recv().await {
                Ok(n) => n,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            let mut burst = vec![first];
            let started = tokio::time::Instant::now();
            // A steady stream of failures is still told every few seconds.
            while burst.len() < 100 && started.elapsed() < GATHER * 4 {
                match tokio::time::timeout(GATHER, rx.recv()).await {
                    Ok(Ok(n)) => burst.push(n),
                    Ok(Err(RecvError::Lagged(_))) => continue,
                    _ => break,
                }
            }
            let (summary, body) = text(&burst, &mountpoint);
            if let Err(e) = show(&summary, &body).await {
                tracing::debug!("no desktop notification ({e})");
            }
        }
    });
}

/// The notification's summary and body for `burst`.
pub fn text(burst: &[Notice], mountpoint: &str) -> (String, String) {
    let summary = match burst.len() {
        1 => format!(
            "Upload failed: {}",
            burst[0].path.rsplit('/').next().unwrap_or("")
        ),
        n => format!("{n} uploads failed"),
    };
    let mut body = String::new();
    // Notification servers may read the body as markup.
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    for n in burst.iter().take(5) {
        body.push_str(&format!(
            "{}: {}\n",
            esc(&format!("{mountpoint}{}", n.path)),
            esc(&n.error)
        ));
    }
    if burst.len() > 5 {
        body.push_str(&format!("and {} more\n", burst.len() - 5));
    }
    body.push_str(
        "The data is kept on this computer. `davdrive status` says where, and how to upload it \
         again.",
    );
    (summary, body)
}

#[cfg(target_os = "linux")]
async fn show(summary: &str, body: &str) -> Result<(), String> {
    use std::collections::HashMap;
    let conn = zbus::Connection::session()
        .await
        .map_err(|e| e.to_string())?;
    let hints: HashMap<&str, zbus::zvariant::Value<'_>> =
        HashMap::from([("urgency", zbus::zvariant::Value::U8(2))]);
    conn.call_method(
        Some("org.freedesktop.Notifications"),
        "/org/freedesktop/Notifications",
        Some("org.freedesktop.Notifications"),
        "Notify",
        &(
            "davdrive",
            0u32,
            "dialog-warning",
            summary,
            body,
            Vec::<&str>::new(),
            hints,
            -1i32,
        ),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
async fn show(_summary: &str, _body: &str) -> Result<(), String> {
    Err("desktop notifications come with this OS's frontend".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_one_notification_naming_the_files_and_the_way_back() {
        let n = |p: &str| Notice {
            path: p.into(),
            error: "server unreachable".into(),
        };
        let (s, b) = text(&[n("/a/report.pdf")], "/home/u/NAS");
        assert_eq!(s, "Upload failed: report.pdf");
        assert!(
            b.starts_with("/home/u/NAS/a/report.pdf: server unreachable\n"),
            "{b}"
        );
        assert!(b.contains("davdrive status"));
        let many: Vec<Notice> = (0..7).map(|i| n(&format!("/f{i}"))).collect();
        let (s, b) = text(&many, "/m");
        assert_eq!(s, "7 uploads failed");
        assert!(b.contains("/m/f4: ") && !b.contains("/m/f5: ") && b.contains("and 2 more"));
    }
}
