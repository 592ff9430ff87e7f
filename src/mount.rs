//! The mount's lifecycle, for every frontend: connect (adopting a redirect of the mounted
//! URL), probe with failures explained in plain words, catch signals from before the mount
//! exists, announce readiness, and drain uploads on the way out. A frontend (FUSE in
//! `main.rs`, WinFsp later) only creates its kernel session between [`connect`] and
//! [`Lifecycle::serve`], and says how to unmount it.
//!
//! Order of a mount:
//! 1. [`connect`]: the client, a redirect adopted (credentials never follow it to another
//!    host), the core made and probed. A failure is explained from typed facts
//!    ([`crate::dav::Cause`]), never from message text.
//! 2. [`Signals::catch`]: SIGTERM / SIGINT / SIGHUP (Ctrl-C on Windows) are caught before
//!    the kernel session exists, so a signal right after the ready line unmounts cleanly.
//! 3. The frontend mounts, then [`ready`] prints the line a detached parent waits for.
//! 4. [`Lifecycle::serve`]: waits for a signal or for the session to end by itself
//!    (`fusermount -u`); on a signal, waits for running uploads, then unmounts.
//! 5. [`drain`]: sessions never released (a crashed program, a lazy unmount) are ended and
//!    every upload is waited for, before the process exits.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::config::MountConfig;
use crate::dav::client::redact_url;
use crate::dav::{Cause, DavClient, ErrorKind, TlsProblem};
use crate::vfs::{Vfs, VfsConfig, VfsError};

/// The line a mount prints on stdout once it is usable (a detached parent waits for it).
pub const READY: &str = "davdrive: mounted";

/// Makes the client (following a redirect of the mounted URL), the core with `vfs_cfg`, and
/// probes the server. The error says what went wrong and what to do.
pub fn connect(
    cfg: &MountConfig,
    vfs_cfg: VfsConfig,
    rt: &tokio::runtime::Runtime,
) -> Result<Arc<Vfs>, String> {
    let shown_url = redact_url(&cfg.url);
    let client = DavClient::new(cfg.client.clone()).map_err(|e| e.to_string())?;
    // A server that redirects the mounted URL (IIS's HTTP->HTTPS rule, a moved share) is
    // mounted where it points, so later requests go there directly.
    let client = match rt.block_on(client.final_root()) {
        Ok(Some(target)) => {
            let shown_target = redact_url(&target);
            let has_secrets = cfg.client.credentials.is_some()
                || cfg.client.bearer.is_some()
                || cfg.client.client_identity.is_some();
            if has_secrets && !crate::dav::client::credentials_allowed(&cfg.url, &target) {
                return Err(format!(
                    "{shown_url} redirects to {shown_target}, on another host; davdrive \
                     does not send your credentials there. If you trust that server, \
                     mount {shown_target} instead."
                ));
            }
            tracing::info!("{shown_url} redirects to {shown_target}; mounting that URL");
            let mut c = cfg.client.clone();
            // A pin stored by `davdrive trust` for the new origin applies there.
            if c.pins.is_empty()
                && target.scheme() == "https"
                && let Some(file) = crate::config::trust::default_path()
            {
                c.pins = crate::config::trust::pins_for(&file, &target)?;
            }
            c.url = target;
            DavClient::new(c).map_err(|e| e.to_string())?
        }
        // Errors show up, with their explanation, in the probe below.
        Ok(None) | Err(_) => client,
    };
    let vfs = Vfs::new(client, vfs_cfg).map_err(|e| e.to_string())?;
    if let Err(e) = rt.block_on(vfs.probe()) {
        return Err(explain(&e, cfg, rt));
    }
    vfs.watch_recovery(rt.handle());
    vfs.watch_memory(rt.handle());
    Ok(vfs)
}

/// What to tell the user about a probe that failed with `e`.
pub fn explain(e: &VfsError, cfg: &MountConfig, rt: &tokio::runtime::Runtime) -> String {
    let shown_url = redact_url(&cfg.url);
    let mut msg = format!("cannot mount {shown_url}: {e}");
    // A server that requires a client certificate may refuse one we do not send with an
    // alert or by just hanging up; ask the handshake itself.
    let connection_failed = matches!(
        e.kind,
        ErrorKind::TlsFailure | ErrorKind::Io | ErrorKind::Unreachable | ErrorKind::Protocol
    );
    let wants_client_cert = connection_failed
        && cfg.client.client_identity.is_none()
        && rt.block_on(crate::dav::tls::asks_for_client_cert(&cfg.url));
    if wants_client_cert && e.kind != ErrorKind::TlsFailure {
        msg.push_str("\nThe server wants a client certificate: pass --client-cert FILE.");
    }
    let no_credentials = cfg.client.credentials.is_none() && cfg.client.bearer.is_none();
    match &e.cause {
        Some(Cause::HandshakeRefused { .. }) => {
            // The message already says what to check.
        }
        Some(Cause::AuthRefused { offered }) => {
            let only_bearer = offered.len() == 1 && offered[0] == "bearer";
            if only_bearer && cfg.client.bearer.is_none() {
                msg.push_str(
                    "\nThe server wants a bearer token: give a command that prints one with \
                     --token-command, or the token itself in DAVDRIVE_TOKEN.",
                );
            } else if offered.iter().any(|s| s == "negotiate") && no_credentials {
                msg.push_str(&format!(
                    "\nThe server wants Windows authentication (Negotiate). For Kerberos, get \
                     a ticket first (`kinit user@REALM`; davdrive reads the ticket cache named \
                     by KRB5CCNAME, and KRB5_CONFIG or /etc/krb5.conf for the realm); or run \
                     `davdrive login {shown_url}` with your user name (user@REALM for \
                     Kerberos, DOMAIN\\user for NTLM)."
                ));
            } else if no_credentials {
                msg.push_str(&format!(
                    "\nNo credentials were given: run `davdrive login {shown_url}` once, or \
                     pass --user with DAVDRIVE_PASSWORD, or a secrets file."
                ));
            } else {
                msg.push_str(
                    "\nThe server refused the user name and password (for Windows \
                     authentication, give the user as DOMAIN\\user).",
                );
            }
        }
        Some(Cause::Tls(problem)) => explain_tls(*problem, wants_client_cert, cfg, rt, &mut msg),
        Some(Cause::PreconditionFailed) | None => {}
    }
    msg
}

fn explain_tls(
    problem: TlsProblem,
    wants_client_cert: bool,
    cfg: &MountConfig,
    rt: &tokio::runtime::Runtime,
    msg: &mut String,
) {
    let shown_url = redact_url(&cfg.url);
    let cert = rt
        .block_on(crate::dav::tls::peer_certificate(&cfg.url))
        .ok();
    let host = cfg.url.host_str().unwrap_or("");
    let subject = cert.as_ref().map_or("?", |c| c.subject.as_str());
    let not_after = cert.as_ref().map_or("?", |c| c.not_after.as_str());
    let mut untrusted = false;
    match problem {
        TlsProblem::WrongName => msg.push_str(&format!(
            "\nThe server's certificate is not valid for {host} (it is for {subject}): mount \
             the server under a name its certificate holds."
        )),
        TlsProblem::Expired => msg.push_str(&format!(
            "\nThe server's certificate expired ({not_after}); its administrator must renew it."
        )),
        TlsProblem::NotYetValid => msg
            .push_str("\nThe server's certificate is not valid yet: check this computer's clock."),
        TlsProblem::ClientCertWanted => {
            msg.push_str("\nThe server wants a client certificate: pass --client-cert FILE.")
        }
        TlsProblem::HandshakeRefused if cfg.client.client_identity.is_none() => {
            msg.push_str("\nThe server wants a client certificate: pass --client-cert FILE.")
        }
        _ if wants_client_cert => {
            msg.push_str("\nThe server wants a client certificate: pass --client-cert FILE.")
        }
        _ if cfg.client.pins.is_empty() => {
            untrusted = true;
            msg.push_str("\nThe server's certificate is not trusted by this system.");
        }
        _ => {
            untrusted = true;
            msg.push_str("\nThe server's certificate is not the one pinned for it.");
        }
    }
    if let Some(c) = &cert {
        msg.push_str(&format!(
            "\nIt is issued to {} by {}, valid {} to {}; its SHA-256 fingerprint is {}.",
            c.subject, c.issuer, c.not_before, c.not_after, c.fingerprint
        ));
    }
    if untrusted {
        msg.push_str(&format!(
            "\nIf you trust it: `davdrive trust {shown_url}` pins it after showing it (or \
             --pin-cert SHA256), or pass --ca-cert FILE.pem with the certificate of the CA \
             that issued it; --insecure turns checking off (not recommended)."
        ));
    }
}

/// The signals that end a mount, caught from before the mount exists.
pub struct Signals {
    #[cfg(unix)]
    caught: Vec<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Starts catching SIGTERM, SIGINT and SIGHUP (Ctrl-C elsewhere).
    pub fn catch(rt: &tokio::runtime::Runtime) -> Signals {
        let _in_runtime = rt.enter();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let caught = [
                SignalKind::terminate(),
                SignalKind::interrupt(),
                SignalKind::hangup(),
            ]
            .into_iter()
            .filter_map(|k| signal(k).ok())
            .collect();
            Signals { caught }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for one of the signals.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            if self.caught.is_empty() {
                return std::future::pending::<()>().await;
            }
            let waits = self.caught.iter_mut().map(|s| Box::pin(s.recv()));
            futures_util::future::select_all(waits).await;
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Tells whoever started the mount that it is usable: the ready line on stdout (read by
/// the parent of a detached mount) and the log.
pub fn ready(url: &url::Url, mountpoint: &Path) {
    let shown_url = redact_url(url);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{READY} {shown_url} on {}", mountpoint.display());
    let _ = out.flush();
    tracing::info!(url = %shown_url, mountpoint = %mountpoint.display(), "mounted");
}

/// A running mount, between the frontend's kernel session and the process's end.
pub struct Lifecycle {
    pub vfs: Arc<Vfs>,
    pub signals: Signals,
}

impl Lifecycle {
    /// Waits until a signal comes or `ended` fires (the kernel session ended by itself). On
    /// a signal, running uploads finish first, then `unmount` ends the session. Returns
    /// whether a signal ended the mount.
    pub fn serve(
        &mut self,
        rt: &tokio::runtime::Runtime,
        ended: tokio::sync::oneshot::Receiver<()>,
        unmount: impl FnOnce(),
    ) -> bool {
        let signalled = rt.block_on(async {
            tokio::select! {
                _ = self.signals.recv() => true,
                _ = ended => false,
            }
        });
        if signalled {
            tracing::info!("unmounting on signal");
            self.vfs.stop_waiting_for_the_server();
            rt.block_on(self.vfs.wait_for_uploads());
            unmount();
        }
        signalled
    }
}

/// Ends every session the kernel never released (a crashed application, a lazy unmount) and
/// waits for every upload, before the process exits.
pub async fn drain(vfs: &Arc<Vfs>) {
    vfs.stop_waiting_for_the_server();
    vfs.release_all().await;
    vfs.wait_for_uploads().await;
}
