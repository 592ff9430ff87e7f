//! The composition root: parse the command line, build the configuration, start the runtime
//! and the frontend of this OS.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use davdrive::cli::{Cli, Command};

fn main() -> ExitCode {
    // A background mount's daemon gets its secrets over stdin, before anything reads them
    // (clap reads DAVDRIVE_TOKEN).
    #[cfg(target_os = "linux")]
    platform::take_secrets();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Mount(args) => platform::mount(&args),
        Command::Unmount { mountpoint } => platform::unmount(&mountpoint),
        Command::Status { cache_dir } => status(cache_dir),
        Command::Recover { args, force } => recover(&args, force),
        Command::Trust { url, yes } => trust(&url, yes),
        Command::Login { url, user } => login(&url, user),
        Command::Logout { url } => logout(&url),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            let _ = writeln!(std::io::stderr(), "davdrive: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn parse_url(url: &str) -> Result<url::Url, String> {
    let u = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if u.password().is_some() {
        return Err("put no password in the URL".into());
    }
    Ok(u)
}

/// `davdrive login URL`: ask for the password without echo (or read it from standard input
/// when that is not a terminal, for scripts) and keep it in the OS keyring.
fn login(url: &str, user: Option<String>) -> Result<(), String> {
    use std::io::{BufRead, IsTerminal};
    let url = parse_url(url)?;
    let stdin = std::io::stdin();
    let read_line = |prompt: &str| -> Result<String, String> {
        if stdin.is_terminal() {
            eprint!("{prompt}");
        }
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read: {e}"))?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    };
    let user =
        match user.or_else(|| (!url.username().is_empty()).then(|| url.username().to_owned())) {
            Some(u) => u,
            None => read_line("user: ")?,
        };
    if user.is_empty() {
        return Err("no user name given".into());
    }
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("password for {user}: "))
            .map_err(|e| format!("cannot read the password: {e}"))?
    } else {
        read_line("")?
    };
    if password.is_empty() {
        return Err("no password given".into());
    }
    let creds = davdrive::dav::Credentials {
        user,
        password: davdrive::dav::Secret::new(password),
    };
    davdrive::credentials::keyring::store(&url, &creds)?;
    println!(
        "stored the password of {} for {} in the OS keyring",
        creds.user,
        davdrive::dav::client::redact_url(&url)
    );
    Ok(())
}

fn logout(url: &str) -> Result<(), String> {
    let url = parse_url(url)?;
    let shown = davdrive::dav::client::redact_url(&url);
    if davdrive::credentials::keyring::remove(&url)? {
        println!("removed the password for {shown} from the OS keyring");
    } else {
        println!("the OS keyring held nothing for {shown}");
    }
    Ok(())
}

/// `davdrive trust URL`: show the certificate, ask, store its pin.
fn trust(url: &str, yes: bool) -> Result<(), String> {
    use davdrive::config::trust;
    use std::io::BufRead;
    let url = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err("only https servers have certificates to trust".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let cert = rt.block_on(davdrive::dav::tls::peer_certificate(&url))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{} presents this certificate:\n  subject:     {}\n  issuer:      {}\n  valid from:  {}\n  valid until: {}\n  SHA-256:     {}",
        trust::origin(&url),
        cert.subject,
        cert.issuer,
        cert.not_before,
        cert.not_after,
        cert.fingerprint
    );
    let _ = writeln!(
        out,
        "Compare the fingerprint with the one your administrator gave you (on the server: \
         openssl x509 -noout -fingerprint -sha256 -in CERT.pem)."
    );
    if !yes {
        let _ = write!(
            out,
            "Trust this certificate for {}? [y/N] ",
            trust::origin(&url)
        );
        let _ = out.flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err("not trusted; nothing stored".into());
        }
    }
    let file = trust::default_path().ok_or("no HOME to store the pin in")?;
    let pin = davdrive::dav::tls::parse_pin(&cert.fingerprint)?;
    trust::add_pin(&file, &url, &pin)?;
    let _ = writeln!(out, "pinned in {}", file.display());
    Ok(())
}

/// `davdrive recover URL`: uploads what the recovery folder of URL's mounts holds.
fn recover(args: &davdrive::cli::MountArgs, force: bool) -> Result<(), String> {
    use davdrive::vfs::recovery::{self, Outcome};
    let mut args = args.clone();
    // Nothing is mounted: any directory satisfies the configuration's check.
    args.mountpoint.get_or_insert_with(std::env::temp_dir);
    #[cfg(unix)]
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    #[cfg(not(unix))]
    let (uid, gid) = (0, 0);
    let cfg =
        davdrive::config::MountConfig::from_args(&args, uid, gid).map_err(|e| e.to_string())?;
    let kept = recovery::list(&cfg.vfs.cache_dir.join("recovery"));
    let mut out = std::io::stdout().lock();
    if kept.is_empty() {
        let _ = writeln!(
            out,
            "nothing kept for {}",
            davdrive::dav::client::redact_url(&cfg.url)
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let client = davdrive::dav::DavClient::new(cfg.client.clone()).map_err(|e| e.to_string())?;
    let (mut uploaded, mut left) = (0, 0);
    for mut k in kept {
        let path = k.path.as_ref().map_or("?".into(), |p| p.to_string());
        match rt.block_on(recovery::upload(&client, &k, force)) {
            Outcome::Uploaded { size } => {
                uploaded += 1;
                let _ = writeln!(out, "uploaded {path} ({size} bytes)");
            }
            Outcome::Later(why) => {
                left += 1;
                let _ = writeln!(
                    out,
                    "kept {path} in {}: {why}; try again later",
                    k.data.display()
                );
            }
            Outcome::Kept(why) => {
                left += 1;
                let _ = writeln!(out, "kept {path} in {}: {why}", k.data.display());
                let reason = format!("{}; then not uploaded: {why}", k.reason);
                k.give_up(&reason);
            }
        }
    }
    let _ = writeln!(out, "{uploaded} uploaded, {left} kept");
    if left > 0 {
        return Err(format!(
            "{left} file(s) could not be uploaded; they stay where shown"
        ));
    }
    Ok(())
}

/// Lists what is kept in recovery folders.
fn status(cache_dir: Option<std::path::PathBuf>) -> Result<(), String> {
    let base = cache_dir.unwrap_or_else(davdrive::vfs::cache_dir::default_base);
    let kept = davdrive::vfs::cache_dir::list_recovered(&base);
    let mut out = std::io::stdout().lock();
    if kept.is_empty() {
        let _ = writeln!(
            out,
            "no files waiting in recovery folders under {}",
            base.display()
        );
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{} file(s) could not be uploaded and are kept locally:",
        kept.len()
    );
    for k in kept {
        let path = k.path.as_ref().map_or("?".into(), |p| p.to_string());
        let _ = writeln!(
            out,
            "  {}{}\n    kept in {}\n    why: {}",
            k.url.trim_end_matches('/'),
            path,
            k.data.display(),
            k.reason
        );
        let next = if k.retry {
            "the mount uploads it by itself once the server answers".to_owned()
        } else {
            format!(
                "`davdrive recover {}` uploads it if the file did not change on the server \
                 since; or copy it by hand, then delete it",
                k.url
            )
        };
        let _ = writeln!(out, "    next: {next}");
    }
    Ok(())
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "davdrive=info",
        1 => "davdrive=debug",
        _ => "davdrive=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a terminal: the daemon's log file gets plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

#[cfg(target_os = "linux")]
mod platform {
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Command as Proc, Stdio};

    use davdrive::cli::MountArgs;
    use davdrive::config::MountConfig;
    use davdrive::dav::client::redact_url;
    use davdrive::fs::fuse::{self, FuseOptions};
    use davdrive::mount::{self, READY};
    /// Set in the environment of the detached child of a background mount.
    const DETACHED: &str = "DAVDRIVE_DETACHED";

    pub fn mount(args: &MountArgs) -> Result<(), String> {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let cfg = MountConfig::from_args(args, uid, gid).map_err(|e| e.to_string())?;
        if !cfg.foreground && std::env::var_os(DETACHED).is_none() {
            return spawn_detached(&cfg.vfs.cache_dir.join("daemon.log"));
        }
        run_foreground(cfg)
    }

    /// In the daemon of a background mount: takes the secrets its parent sends over stdin
    /// (`NAME\0value\0` pairs, only the names of `SECRET_VARS`) into this process's
    /// variables. They never were in its environment block, which /proc shows to the user's
    /// other processes for the life of the mount.
    pub fn take_secrets() {
        use std::io::Read;
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
            let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value))
            else {
                continue;
            };
            if davdrive::dav::auth::SECRET_VARS.contains(&name) {
                // SAFETY: called first thing in main, before any other thread exists.
                unsafe { std::env::set_var(name, value) };
            }
        }
    }

    /// Re-runs this command detached from the terminal and waits until the child says the
    /// mount is ready (or failed), so that `davdrive mount` returns only for a usable mount.
    fn spawn_detached(log: &Path) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
        // The daemon must not hold our caller's terminal or pipes open: its log goes to a
        // file in the mount's cache directory. The log names files and servers: private to
        // the user, in a private folder made so before the log is, and never written through
        // a symbolic link planted in its place.
        if let Some(dir) = log.parent() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let log_file = {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(log)
                .map_err(|e| {
                    if e.raw_os_error() == Some(libc::ELOOP) {
                        format!(
                            "the log {} is a symbolic link: davdrive does not write its log \
                             through one; remove it",
                            log.display()
                        )
                    } else {
                        format!("cannot open the log {}: {e}", log.display())
                    }
                })?;
            // A log made by an earlier version may be readable by others.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("{}: {e}", log.display()))?;
            f
        };
        // Where this start's lines begin in the log (it is appended to).
        let start = log_file.metadata().map_or(0, |m| m.len());
        let mut cmd = Proc::new(exe);
        // Secrets go over a pipe, not into the daemon's environment.
        let mut secrets = Vec::new();
        for var in davdrive::dav::auth::SECRET_VARS {
            if let Ok(v) = std::env::var(var) {
                secrets.extend_from_slice(var.as_bytes());
                secrets.push(0);
                secrets.extend_from_slice(v.as_bytes());
                secrets.push(0);
            }
            cmd.env_remove(var);
        }
        cmd.args(std::env::args_os().skip(1))
            .env(DETACHED, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        // SAFETY: setsid is async-signal-safe; it detaches the child from our session so
        // that closing the terminal does not kill the mount.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the daemon: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            // Dropped at the end of this block: the daemon reads to the end.
            stdin
                .write_all(&secrets)
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
        let tail = std::fs::read_to_string(log).unwrap_or_default();
        let last: Vec<&str> = tail.lines().rev().take(3).collect();
        let detail: Vec<&str> = last.into_iter().rev().collect();
        Err(format!(
            "the mount failed ({status}): {}\n(full log: {})",
            detail.join("\n"),
            log.display()
        ))
    }

    /// The warnings the daemon logged from byte `start` of its log on.
    fn start_warnings(log: &Path, start: u64) -> Vec<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut text = String::new();
        let read = std::fs::File::open(log).and_then(|mut f| {
            f.seek(SeekFrom::Start(start))?;
            f.take(1 << 20).read_to_string(&mut text)
        });
        if read.is_err() {
            return Vec::new();
        }
        text.lines()
            .filter_map(|l| l.split_once(" WARN ").map(|(_, w)| w.trim().to_owned()))
            .collect()
    }

    fn run_foreground(cfg: MountConfig) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("davdrive-io")
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        let mut vfs_cfg = cfg.vfs.clone();
        vfs_cfg.open_direct = Some(fuse::open_direct);
        vfs_cfg.process_of = Some(fuse::process_of);
        let vfs = mount::connect(&cfg, vfs_cfg, &rt)?;
        let signals = mount::Signals::catch(&rt);
        let opts = FuseOptions {
            fsname: redact_url(&cfg.url),
            allow_other: cfg.allow_other,
            read_only: cfg.vfs.read_only,
        };
        let mut session = fuse::mount(vfs.clone(), rt.handle().clone(), &cfg.mountpoint, &opts)
            .map_err(|e| format!("cannot mount on {}: {e}", cfg.mountpoint.display()))?;
        let mut unmounter = session.unmount_callable();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let runner = std::thread::Builder::new()
            .name("davdrive-fuse".into())
            .spawn(move || {
                let r = session.run();
                let _ = done_tx.send(());
                r
            })
            .map_err(|e| format!("cannot start the FUSE loop: {e}"))?;
        fuse::raise_read_ahead(&cfg.mountpoint);
        mount::ready(&cfg.url, &cfg.mountpoint);
        let mut life = mount::Lifecycle { vfs, signals };
        life.serve(&rt, done_rx, || {
            if let Err(e) = unmounter.unmount() {
                tracing::warn!("unmount failed ({e}); detaching lazily");
                lazy_unmount(&cfg.mountpoint);
            }
        });
        match runner.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("FUSE loop ended: {e}"),
            Err(_) => return Err("the FUSE loop panicked".into()),
        }
        rt.block_on(mount::drain(&life.vfs));
        rt.shutdown_timeout(std::time::Duration::from_secs(2));
        Ok(())
    }

    fn lazy_unmount(mountpoint: &Path) {
        let _ = Proc::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(mountpoint)
            .status();
    }

    pub fn unmount(mountpoint: &Path) -> Result<(), String> {
        let out = Proc::new("fusermount3")
            .arg("-u")
            .arg(mountpoint)
            .output()
            .or_else(|_| Proc::new("umount").arg(mountpoint).output())
            .map_err(|e| format!("cannot run fusermount3 or umount: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let msg = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "cannot unmount {}: {}",
            mountpoint.display(),
            msg.trim()
        ))
    }
}

#[cfg(not(target_os = "linux"))]
mod platform {
    use std::path::Path;

    use davdrive::cli::MountArgs;

    pub fn mount(_args: &MountArgs) -> Result<(), String> {
        Err(
            "mounting on this OS comes with its frontend (WinFsp on Windows, macFUSE on macOS)"
                .into(),
        )
    }

    pub fn unmount(_mountpoint: &Path) -> Result<(), String> {
        Err("unmounting on this OS comes with its frontend".into())
    }
}
