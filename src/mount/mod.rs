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
//!    With `--wait-for-server` ([`connect_patiently`]), a server that cannot be reached yet
//!    (no network at login) or a keyring that gives no password yet is waited for, with
//!    backoff, and said in the log and to systemd (`notify`).
//! 2. [`Signals::catch`]: SIGTERM / SIGINT (Ctrl-C on Windows) are caught before the kernel
//!    session exists, so a signal right after the ready line unmounts cleanly. SIGHUP drops
//!    the cached listings instead (`davdrive refresh`).
//! 3. The frontend mounts, then [`ready`] prints the line a detached parent waits for, tells
//!    systemd `READY=1`, and the control socket (`control`) starts answering `davdrive
//!    status`.
//! 4. [`Lifecycle::serve`]: waits for a signal or for the session to end by itself
//!    (`fusermount -u`); on a signal, waits for running uploads, then unmounts.
//! 5. [`drain`]: sessions never released (a crashed program, a lazy unmount) are ended and
//!    every upload is waited for, before the process exits.

pub mod control;
pub mod desktop;
pub mod notify;
pub mod windows;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::MountConfig;
use crate::dav::client::redact_url;
use crate::dav::{Cause, DavClient, ErrorKind, TlsProblem};
use crate::vfs::{Vfs, VfsConfig, VfsError};

/// The line a mount prints on stdout once it is usable (a detached parent waits for it).
pub const READY: &str = "davdrive: mounted";

/// Why a mount could not start: what to tell the user, and whether trying again later may
/// succeed (the server or the network is not there yet, the keyring gave no password).
#[derive(Debug)]
pub struct Refusal {
    pub message: String,
    pub transient: bool,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Refusal {
            message,
            transient: false,
        }
    }
}

impl From<Refusal> for String {
    fn from(r: Refusal) -> Self {
        r.message
    }
}

/// The longest wait between two tries of [`connect_patiently`].
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// [`connect`] with the configuration `make` builds (built again at every try: a keyring
/// unlocked meanwhile gives its password). When `patient`, a transient refusal (see
/// [`Refusal`]) is tried again after 1 s, then twice as long each time up to a minute, and
/// the wait is said in the log and to systemd (`STATUS=`). `Ok(None)`: a stop signal came
/// while waiting.
pub fn connect_patiently<F>(
    make: F,
    patient: bool,
    signals: &mut Signals,
    rt: &tokio::runtime::Runtime,
) -> Result<Option<(MountConfig, Arc<Vfs>)>, String>
where
    F: Fn() -> Result<(MountConfig, VfsConfig), String>,
{
    let mut backoff = Duration::from_secs(1);
    loop {
        let (cfg, vfs_cfg) = make()?;
        let refusal = match connect(&cfg, vfs_cfg, rt) {
            Ok(vfs) => return Ok(Some((cfg, vfs))),
            Err(r) if patient && r.transient => r,
            Err(r) => return Err(r.message),
        };
        let first_line = refusal.message.lines().next().unwrap_or("").to_owned();
        tracing::warn!("{first_line}; trying again in {} s", backoff.as_secs());
        notify::status(&format!(
            "waiting: {first_line}; next try in {} s",
            backoff.as_secs()
        ));
        let stopped = rt.block_on(async {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => return false,
                    sig = signals.recv() => if sig == Signal::Stop { return true },
                }
            }
        });
        if stopped {
            return Ok(None);
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The client of `cfg`, for the URL the server redirects the mounted URL to, when it does
/// (IIS's HTTP->HTTPS rule, a moved share): later requests go there directly. Credentials
/// never follow a redirect to another host: that is refused, saying what to mount instead.
pub fn client_following_redirect(
    cfg: &MountConfig,
    rt: &tokio::runtime::Runtime,
) -> Result<DavClient, String> {
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
        // Errors show up, with their explanation, in the caller's first request.
        Ok(None) | Err(_) => client,
    };
    Ok(client)
}

/// Makes the client (following a redirect of the mounted URL), the core with `vfs_cfg`, and
/// probes the server. The error says what went wrong and what to do.
pub fn connect(
    cfg: &MountConfig,
    vfs_cfg: VfsConfig,
    rt: &tokio::runtime::Runtime,
) -> Result<Arc<Vfs>, Refusal> {
    let client = client_following_redirect(cfg, rt)?;
    let vfs = Vfs::new(client, vfs_cfg).map_err(|e| e.to_string())?;
    if let Err(e) = rt.block_on(vfs.probe()) {
        let no_credentials = cfg.client.credentials.is_none() && cfg.client.bearer.is_none();
        // Worth another try later: the network or the server is not there yet, or a
        // password is wanted and the keyring (locked at login) gave none.
        let transient = matches!(
            e.kind,
            ErrorKind::Unreachable | ErrorKind::TimedOut | ErrorKind::Busy
        ) || (no_credentials && e.kind == ErrorKind::AuthRequired);
        return Err(Refusal {
            message: explain(&e, cfg, rt),
            transient,
        });
    }
    vfs.watch_recovery(rt.handle());
    vfs.watch_memory(rt.handle());
    vfs.watch_changes(rt.handle());
    vfs.watch_locks(rt.handle());
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

/// What a caught signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM, SIGINT (Ctrl-C): unmount once the uploads are done.
    Stop,
    /// SIGHUP: drop cached listings, as `davdrive refresh` does.
    Refresh,
}

/// A `stop` asked through the control socket (`davdrive unmount` on Windows).
static STOP: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Asks the running mount to stop as SIGTERM does (see [`Signals::recv`]).
pub fn request_stop() {
    // A permit is kept if nobody waits yet.
    STOP.notify_one();
}

/// The signals a mount answers, caught from before the mount exists.
pub struct Signals {
    #[cfg(unix)]
    caught: Vec<(tokio::signal::unix::Signal, Signal)>,
}

impl Signals {
    /// Starts catching SIGTERM, SIGINT and SIGHUP (Ctrl-C elsewhere).
    pub fn catch(rt: &tokio::runtime::Runtime) -> Signals {
        let _in_runtime = rt.enter();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let caught = [
                (SignalKind::terminate(), Signal::Stop),
                (SignalKind::interrupt(), Signal::Stop),
                (SignalKind::hangup(), Signal::Refresh),
            ]
            .into_iter()
            .filter_map(|(k, what)| signal(k).ok().map(|s| (s, what)))
            .collect();
            Signals { caught }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for one of the signals, or a `stop` through the control socket.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            s = self.caught() => s,
            _ = STOP.notified() => Signal::Stop,
        }
    }

    async fn caught(&mut self) -> Signal {
        #[cfg(unix)]
        {
            if self.caught.is_empty() {
                return std::future::pending::<Signal>().await;
            }
            let waits = self.caught.iter_mut().map(|(s, what)| {
                let what = *what;
                Box::pin(async move {
                    s.recv().await;
                    what
                })
            });
            futures_util::future::select_all(waits).await.0
        }
        #[cfg(not(unix))]
        {
            // A daemon without a console never gets Ctrl-C: it is stopped through its
            // control pipe (`davdrive unmount`).
            match tokio::signal::ctrl_c().await {
                Ok(()) => Signal::Stop,
                Err(_) => std::future::pending::<Signal>().await,
            }
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
    notify::notify(&format!(
        "READY=1\nSTATUS=mounted {shown_url} on {}",
        mountpoint.display()
    ));
}

/// Starts answering `davdrive status` for this mount (see [`control`]); the socket goes
/// when the returned guard is dropped.
pub fn serve_control(
    cfg: &MountConfig,
    vfs: &Arc<Vfs>,
    rt: &tokio::runtime::Runtime,
) -> Option<control::ControlSocket> {
    let base = cfg.vfs.cache_dir.parent()?;
    let info = control::MountInfo {
        pid: std::process::id(),
        url: redact_url(&cfg.url),
        mountpoint: std::path::absolute(&cfg.mountpoint).unwrap_or_else(|_| cfg.mountpoint.clone()),
        cache_dir: cfg.vfs.cache_dir.clone(),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        async_close: cfg.vfs.async_close,
    };
    control::serve(base, vfs.clone(), info, rt.handle())
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
        let vfs = self.vfs.clone();
        let signals = &mut self.signals;
        let signalled = rt.block_on(async move {
            tokio::pin!(ended);
            loop {
                tokio::select! {
                    sig = signals.recv() => match sig {
                        Signal::Stop => return true,
                        Signal::Refresh => {
                            let n = vfs.refresh(None);
                            tracing::info!("SIGHUP: dropped {n} cached listing(s)");
                        }
                    },
                    _ = &mut ended => return false,
                }
            }
        });
        if signalled {
            tracing::info!("unmounting on signal");
            notify::notify("STOPPING=1");
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
    notify::notify("STOPPING=1");
    let busy = vfs.activity().uploads.len();
    if busy > 0 {
        notify::status(&format!("unmounted; finishing {busy} upload(s)"));
    }
    vfs.stop_waiting_for_the_server();
    vfs.release_all().await;
    vfs.wait_for_uploads().await;
    vfs.release_locks().await;
}
