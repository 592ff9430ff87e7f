//! The composition root: parse the command line, build the configuration, start the runtime
//! and the frontend of this OS.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use davdrive::cli::{Cli, Command, status};

/// The davdrive cache directory: `--cache-dir`, else the default.
fn base(cache_dir: Option<std::path::PathBuf>) -> std::path::PathBuf {
    cache_dir.unwrap_or_else(davdrive::vfs::cache_dir::default_base)
}

/// `davdrive unmount`: unmounts, then (unless `no_wait`) waits for the daemon to finish
/// its uploads and exit.
fn unmount(
    mountpoint: &std::path::Path,
    no_wait: bool,
    cache_dir: Option<std::path::PathBuf>,
) -> Result<(), String> {
    let running = status::find_mount(&base(cache_dir), mountpoint);
    platform::unmount(mountpoint, running.as_ref().map(|(sock, _)| sock.as_path()))?;
    match running {
        Some((sock, _)) if !no_wait => status::wait_for_daemon(&sock, mountpoint),
        Some(_) => Ok(()),
        None => {
            eprintln!(
                "davdrive: unmounted; no davdrive daemon answered for {} (another cache \
                 directory? pass --cache-dir), so this did not wait for its uploads",
                mountpoint.display()
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    // Run by mount(8) as /sbin/mount.davdrive (an /etc/fstab entry, `mount -t davdrive`).
    #[cfg(target_os = "linux")]
    if let Some(code) = platform::as_mount_helper() {
        return code;
    }
    // A background mount's daemon gets its secrets over stdin, before anything reads them
    // (clap reads DAVDRIVE_TOKEN).
    davdrive::cli::detach::take_secrets();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Mount(args) => platform::mount(&args),
        Command::Unmount {
            mountpoint,
            no_wait,
            cache_dir,
        } => unmount(&mountpoint, no_wait, cache_dir),
        Command::Status {
            cache_dir,
            json,
            watch,
        } => status::status(&base(cache_dir), json, watch),
        Command::Open { file, no_browse } => platform::open(&file, no_browse),
        Command::GenerateDocs { dir } => davdrive::cli::docs::generate(&dir),
        Command::Autostart { action } => platform::autostart(action),
        Command::Refresh { path, cache_dir } => status::refresh(&base(cache_dir), path.as_deref()),
        Command::Recover {
            args,
            force,
            discard,
        } => recover(&args, force, discard),
        Command::Doctor { args, json } => doctor(&args, json),
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

/// The configuration of `args` for a command that mounts nothing (`doctor`, `recover`).
fn config_without_mount(
    args: &davdrive::cli::MountArgs,
) -> Result<davdrive::config::MountConfig, String> {
    let mut args = args.clone();
    // Nothing is mounted: any directory satisfies the configuration's check.
    args.mountpoint.get_or_insert_with(std::env::temp_dir);
    #[cfg(unix)]
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    #[cfg(not(unix))]
    let (uid, gid) = (0, 0);
    davdrive::config::MountConfig::from_args(&args, uid, gid).map_err(|e| e.to_string())
}

/// `davdrive doctor URL`: what the server supports and what davdrive does about it.
fn doctor(args: &davdrive::cli::MountArgs, json: bool) -> Result<(), String> {
    let cfg = config_without_mount(args)?;
    davdrive::cli::doctor::run(&cfg, json, args.read_only)
}

/// `davdrive recover URL`: uploads what the recovery folder of URL's mounts holds.
fn recover(args: &davdrive::cli::MountArgs, force: bool, discard: bool) -> Result<(), String> {
    use davdrive::vfs::recovery::{self, Outcome};
    let cfg = config_without_mount(args)?;
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
    if discard {
        for k in &kept {
            k.remove();
            let path = k.path.as_ref().map_or("?".into(), |p| p.to_string());
            let _ = writeln!(out, "deleted the kept copy of {path}");
        }
        let _ = writeln!(out, "{} discarded", kept.len());
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
    use std::ffi::OsString;
    use std::path::Path;
    use std::process::{Command as Proc, ExitCode, Stdio};

    use davdrive::cli::{MountArgs, detach};
    use davdrive::config::MountConfig;
    use davdrive::dav::client::redact_url;
    use davdrive::fs::fuse::{self, FuseOptions};
    use davdrive::mount;

    pub fn mount(args: &MountArgs) -> Result<(), String> {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let cfg = MountConfig::from_args(args, uid, gid).map_err(|e| e.to_string())?;
        if !cfg.foreground && std::env::var_os(detach::DETACHED).is_none() {
            let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
            return spawn_detached(&cfg.vfs.cache_dir.join("daemon.log"), argv);
        }
        run_foreground(args, cfg, uid, gid)
    }

    /// When this program runs as mount(8)'s helper (`mount.davdrive`, `mount.fuse.davdrive`):
    /// mounts as `davdrive mount` would with the `-o` options (see `cli::fstab`) and returns
    /// mount(8)'s exit code: 0 once mounted, 1 for a usage error, 32 for a failed mount.
    pub fn as_mount_helper() -> Option<ExitCode> {
        use clap::CommandFactory;
        let argv0 = std::env::args_os().next()?;
        let name = Path::new(&argv0)
            .file_name()?
            .to_string_lossy()
            .into_owned();
        if name != "mount.davdrive" && name != "mount.fuse.davdrive" {
            return None;
        }
        let fail = |code: u8, msg: &str| {
            eprintln!("mount.davdrive: {msg}");
            Some(ExitCode::from(code))
        };
        let cli = davdrive::cli::Cli::command();
        let options: Vec<(String, bool)> = cli
            .find_subcommand("mount")
            .map(|m| {
                m.get_arguments()
                    .filter_map(|a| {
                        let long = a.get_long()?.to_owned();
                        Some((long, a.get_action().takes_values()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let call = match davdrive::cli::fstab::parse(&args, &options) {
            Ok(c) => c,
            Err(e) => return fail(1, &e),
        };
        // SAFETY: geteuid cannot fail and touches no memory.
        let root = unsafe { libc::geteuid() } == 0;
        match (&call.setuid, root) {
            (Some(user), true) => {
                if let Err(e) = become_user(user) {
                    return fail(1, &e);
                }
            }
            (Some(_), false) => return fail(1, "only root can mount for another user (setuid=)"),
            (None, true) if call.per_user => {
                return fail(
                    1,
                    "this entry is a per-user mount (user/users): root, or systemd's \
                     automount, cannot mount it for its user. Add setuid=USER to its \
                     options (the user whose keyring and configuration it uses), or mount \
                     it as that user",
                );
            }
            (None, _) => {}
        }
        // mount(8) removes HOME and PATH from a helper's environment.
        fill_login_environment();
        crate::init_logging(u8::from(call.verbose));
        for o in &call.ignored {
            tracing::warn!("ignoring the unknown option {o:?} (-s)");
        }
        let cfg = match mount_config_of(&call.davdrive_args) {
            Ok(c) => c,
            Err(e) => return fail(1, e.trim()),
        };
        if call.fake {
            return Some(ExitCode::SUCCESS);
        }
        if !cfg.stale_mount && is_mount_point(&cfg.mountpoint) {
            return fail(
                32,
                &format!("{} is already mounted", cfg.mountpoint.display()),
            );
        }
        match spawn_detached(&cfg.vfs.cache_dir.join("daemon.log"), call.davdrive_args) {
            Ok(()) => Some(ExitCode::SUCCESS),
            Err(e) => fail(32, &e),
        }
    }

    /// `davdrive open FILE.davmount`.
    pub fn open(file: &Path, no_browse: bool) -> Result<(), String> {
        use davdrive::cli::davmount;
        let xml = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let d = davmount::parse(&xml).map_err(|e| format!("{}: {e}", file.display()))?;
        let shown = redact_url(&d.url);
        let base = davdrive::vfs::cache_dir::default_base();
        let running = davdrive::mount::control::running(&base)
            .answering
            .into_iter()
            .map(|(_, r)| r.mount)
            .find(|m| m.url.trim_end_matches('/') == shown.trim_end_matches('/'));
        let mountpoint = match running {
            Some(m) => {
                println!("{shown} is already mounted on {}", m.mountpoint.display());
                m.mountpoint
            }
            None => {
                let home = std::env::var_os("HOME").ok_or("no HOME")?;
                let dir = Path::new(&home)
                    .join("davdrive")
                    .join(davmount::folder_name(&d.url));
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let mut argv: Vec<OsString> =
                    vec!["mount".into(), d.url.as_str().into(), dir.clone().into()];
                if let Some(u) = &d.username {
                    argv.push("--user".into());
                    argv.push(u.into());
                }
                let log = mount_config_of(&argv)?.vfs.cache_dir.join("daemon.log");
                spawn_detached(&log, argv)?;
                dir
            }
        };
        // The folder, never a file the server chose: opening a file would run whatever
        // application handles it (a document with macros, a .desktop file) unasked.
        let target = match &d.open {
            Some(o) => {
                let t = mountpoint.join(o.trim_start_matches('/'));
                if t.is_dir() {
                    t
                } else {
                    t.parent().map_or(mountpoint.clone(), Path::to_path_buf)
                }
            }
            None => mountpoint.clone(),
        };
        if no_browse {
            println!("{}", target.display());
            return Ok(());
        }
        match Proc::new("xdg-open").arg(&target).status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("xdg-open {} failed ({s})", target.display())),
            Err(e) => Err(format!(
                "mounted on {}, but cannot run xdg-open to show it: {e}",
                mountpoint.display()
            )),
        }
    }

    /// Whether a systemd user manager runs for this user.
    fn systemd_user_manager() -> bool {
        if !Path::new("/run/systemd/system").is_dir() {
            return false;
        }
        Proc::new("systemctl")
            .args(["--user", "is-system-running"])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| {
                let state = String::from_utf8_lossy(&o.stdout);
                matches!(
                    state.trim(),
                    "running" | "degraded" | "starting" | "initializing" | "maintenance"
                )
            })
    }

    fn systemctl(args: &[&str]) -> Result<(), String> {
        let mut all = vec!["--user"];
        all.extend_from_slice(args);
        davdrive::cli::autostart::run_tool("systemctl", &all)
    }

    /// `davdrive autostart ...`.
    pub fn autostart(action: davdrive::cli::AutostartAction) -> Result<(), String> {
        use davdrive::cli::autostart as auto;
        use davdrive::cli::{AutostartAction, AutostartKind};
        let home = auto::config_home().ok_or("no HOME: cannot find ~/.config")?;
        let units = home.join("systemd").join("user");
        let xdg = home.join("autostart");
        match action {
            AutostartAction::Enable {
                profile,
                config,
                with,
                no_start,
            } => {
                auto::check_profile_name(&profile)?;
                let p = davdrive::config::profile::load(&profile, config.as_deref())
                    .map_err(|e| e.to_string())?;
                if p.mountpoint.is_none() {
                    return Err(format!(
                        "the profile {profile} has no mountpoint: add mountpoint = \"~/...\" to it"
                    ));
                }
                let exe = std::env::current_exe()
                    .and_then(std::fs::canonicalize)
                    .map_err(|e| format!("cannot find myself: {e}"))?;
                if exe.starts_with(std::env::temp_dir())
                    || exe.components().any(|c| c.as_os_str() == "target")
                {
                    eprintln!(
                        "davdrive: warning: {} looks like a build or temporary copy; login mounts will run it from there",
                        exe.display()
                    );
                }
                let config = config.map(|c| std::path::absolute(&c).unwrap_or(c));
                let manager = systemd_user_manager();
                let kind = with.unwrap_or(if manager {
                    AutostartKind::Systemd
                } else {
                    AutostartKind::Xdg
                });
                match kind {
                    AutostartKind::Systemd => {
                        let name = auto::unit_name(&profile);
                        std::fs::create_dir_all(&units)
                            .map_err(|e| format!("{}: {e}", units.display()))?;
                        let file = units.join(&name);
                        std::fs::write(&file, auto::unit(&exe, &profile, config.as_deref()))
                            .map_err(|e| format!("{}: {e}", file.display()))?;
                        println!("wrote {}", file.display());
                        if manager {
                            systemctl(&["daemon-reload"])?;
                            if no_start {
                                systemctl(&["enable", &name])?;
                                println!("enabled {name}: it mounts {profile} at every login");
                            } else {
                                systemctl(&["enable", "--now", "--no-block", &name])?;
                                println!(
                                    "enabled and started {name}: {profile} is mounted now and at every login (`davdrive autostart status {profile}`)"
                                );
                            }
                        } else {
                            // No manager to ask (a sudo shell, a container): the link
                            // `systemctl enable` would make.
                            let wants = units.join("default.target.wants");
                            std::fs::create_dir_all(&wants)
                                .map_err(|e| format!("{}: {e}", wants.display()))?;
                            let link = wants.join(&name);
                            let _ = std::fs::remove_file(&link);
                            std::os::unix::fs::symlink(Path::new("..").join(&name), &link)
                                .map_err(|e| format!("{}: {e}", link.display()))?;
                            println!(
                                "enabled {name}; no systemd user manager runs now, so it starts at the next login"
                            );
                        }
                    }
                    AutostartKind::Xdg => {
                        std::fs::create_dir_all(&xdg)
                            .map_err(|e| format!("{}: {e}", xdg.display()))?;
                        let file = xdg.join(auto::desktop_name(&profile));
                        std::fs::write(
                            &file,
                            auto::desktop_entry(&exe, &profile, config.as_deref()),
                        )
                        .map_err(|e| format!("{}: {e}", file.display()))?;
                        println!(
                            "wrote {}: the desktop mounts {profile} at every login",
                            file.display()
                        );
                    }
                }
                Ok(())
            }
            AutostartAction::Disable { profile } => {
                let name = auto::unit_name(&profile);
                let unit = units.join(&name);
                let desktop = xdg.join(auto::desktop_name(&profile));
                let mut done = false;
                if unit.exists() {
                    if systemd_user_manager() {
                        systemctl(&["disable", "--now", &name])?;
                    }
                    let _ = std::fs::remove_file(units.join("default.target.wants").join(&name));
                    std::fs::remove_file(&unit).map_err(|e| format!("{}: {e}", unit.display()))?;
                    if systemd_user_manager() {
                        let _ = systemctl(&["daemon-reload"]);
                    }
                    println!("removed {}", unit.display());
                    done = true;
                }
                if desktop.exists() {
                    std::fs::remove_file(&desktop)
                        .map_err(|e| format!("{}: {e}", desktop.display()))?;
                    println!("removed {}", desktop.display());
                    done = true;
                }
                if !done {
                    println!("{profile} was not mounted at login");
                }
                Ok(())
            }
            AutostartAction::Status { profile } => {
                let name = auto::unit_name(&profile);
                let unit = units.join(&name);
                let desktop = xdg.join(auto::desktop_name(&profile));
                if unit.exists() {
                    let enabled = units.join("default.target.wants").join(&name).exists();
                    println!(
                        "{profile}: systemd user unit {} ({})",
                        unit.display(),
                        if enabled { "enabled" } else { "not enabled" }
                    );
                    if systemd_user_manager()
                        && let Ok(o) = Proc::new("systemctl")
                            .args([
                                "--user",
                                "show",
                                "-p",
                                "ActiveState,SubState,StatusText",
                                &name,
                            ])
                            .output()
                    {
                        for line in String::from_utf8_lossy(&o.stdout).lines() {
                            println!("  {line}");
                        }
                    }
                }
                if desktop.exists() {
                    println!("{profile}: XDG autostart entry {}", desktop.display());
                }
                if !unit.exists() && !desktop.exists() {
                    println!(
                        "{profile} is not mounted at login (`davdrive autostart enable {profile}`)"
                    );
                }
                Ok(())
            }
        }
    }

    /// The configuration of `davdrive ARGV` (a `mount` command line made by the mount
    /// helper or `open`), checked as the command line itself would be.
    fn mount_config_of(argv: &[OsString]) -> Result<MountConfig, String> {
        use clap::Parser;
        let full: Vec<OsString> = std::iter::once(OsString::from("davdrive"))
            .chain(argv.iter().cloned())
            .collect();
        let parsed = davdrive::cli::Cli::try_parse_from(&full).map_err(|e| e.to_string())?;
        let davdrive::cli::Command::Mount(margs) = parsed.command else {
            return Err("not a mount".into());
        };
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        MountConfig::from_args(&margs, uid, gid).map_err(|e| e.to_string())
    }

    /// Root mounting for `user` (`setuid=`): takes that user's ids, groups and login
    /// environment, for good.
    fn become_user(user: &str) -> Result<(), String> {
        let cname = std::ffi::CString::new(user).map_err(|_| format!("bad user name {user:?}"))?;
        // SAFETY: getpwnam returns a pointer to static storage or null; we copy out of it
        // before any other call could overwrite it.
        let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
        if pw.is_null() {
            return Err(format!("setuid={user}: no such user"));
        }
        // SAFETY: pw is not null (checked) and points to a valid passwd.
        let (uid, gid, home) = unsafe {
            let p = &*pw;
            let home = std::ffi::CStr::from_ptr(p.pw_dir)
                .to_string_lossy()
                .into_owned();
            (p.pw_uid, p.pw_gid, home)
        };
        // SAFETY: plain system calls on values we own; each result is checked.
        unsafe {
            if libc::initgroups(cname.as_ptr(), gid) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(format!(
                    "cannot become {user}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        // SAFETY: plain system call; root could take root back, the user cannot.
        if unsafe { libc::setuid(0) } == 0 {
            return Err(format!("could not drop root's privileges for {user}"));
        }
        let runtime = format!("/run/user/{uid}");
        // Nothing of root's environment but the language: no secrets, no root's
        // configuration or cache paths, no service manager's socket.
        let keep: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| {
                let k = k.to_string_lossy();
                k == "LANG" || k == "LANGUAGE" || k.starts_with("LC_") || k == "TZ"
            })
            .collect();
        // SAFETY: single-threaded: called first thing in main.
        unsafe {
            for (k, _) in std::env::vars_os() {
                std::env::remove_var(k);
            }
            for (k, v) in keep {
                std::env::set_var(k, v);
            }
            std::env::set_var("HOME", &home);
            std::env::set_var("USER", user);
            std::env::set_var("LOGNAME", user);
            std::env::set_var(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
            if Path::new(&runtime).is_dir() {
                std::env::set_var("XDG_RUNTIME_DIR", &runtime);
                if Path::new(&runtime).join("bus").exists() {
                    std::env::set_var(
                        "DBUS_SESSION_BUS_ADDRESS",
                        format!("unix:path={runtime}/bus"),
                    );
                }
            }
        }
        Ok(())
    }

    /// HOME from the user database and a standard PATH, where missing.
    fn fill_login_environment() {
        if std::env::var_os("HOME").is_none_or(|h| h.is_empty()) {
            // SAFETY: getpwuid returns static storage or null; copied out at once.
            let home = unsafe {
                let pw = libc::getpwuid(libc::getuid());
                (!pw.is_null()).then(|| {
                    std::ffi::CStr::from_ptr((*pw).pw_dir)
                        .to_string_lossy()
                        .into_owned()
                })
            };
            if let Some(h) = home {
                // SAFETY: single-threaded: called first thing in main.
                unsafe { std::env::set_var("HOME", h) };
            }
        }
        if std::env::var_os("PATH").is_none_or(|p| p.is_empty()) {
            // SAFETY: as above.
            unsafe {
                std::env::set_var(
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                )
            };
        }
    }

    /// Whether something is mounted on `dir` (per /proc/self/mountinfo).
    fn is_mount_point(dir: &Path) -> bool {
        let Ok(want) = std::fs::canonicalize(dir) else {
            return false;
        };
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return false;
        };
        info.lines().any(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|mp| Path::new(&unescape_mountinfo(mp)) == want)
        })
    }

    /// mountinfo writes space, tab, newline and backslash as `\ooo`.
    fn unescape_mountinfo(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\'
                && i + 3 < b.len()
                && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
            {
                let v = b[i + 1..i + 4]
                    .iter()
                    .fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Runs `davdrive ARGV` detached from the terminal and waits until the child says the
    /// mount is ready (or failed), so that `davdrive mount` returns only for a usable mount.
    fn spawn_detached(log: &Path, argv: Vec<OsString>) -> Result<(), String> {
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
        let (mut cmd, secrets) = detach::daemon_command(&exe, argv, log_file);
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
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the daemon: {e}"))?;
        detach::handshake(child, &secrets, log, start)
    }

    fn run_foreground(
        args: &MountArgs,
        first: MountConfig,
        uid: u32,
        gid: u32,
    ) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("davdrive-io")
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        let mut signals = mount::Signals::catch(&rt);
        if first.stale_mount {
            tracing::warn!(
                "{} held a mount whose davdrive is gone (\"Transport endpoint is not \
                 connected\"); detaching it before mounting again",
                first.mountpoint.display()
            );
            lazy_unmount(&first.mountpoint);
        }
        let first = std::cell::Cell::new(Some(first));
        let make = || {
            let cfg = match first.take() {
                Some(c) => c,
                None => MountConfig::from_args(args, uid, gid).map_err(|e| e.to_string())?,
            };
            let mut vfs_cfg = cfg.vfs.clone();
            vfs_cfg.open_direct = Some(fuse::open_direct);
            vfs_cfg.process_of = Some(fuse::process_of);
            Ok((cfg, vfs_cfg))
        };
        let Some((cfg, vfs)) =
            mount::connect_patiently(make, args.wait_for_server, &mut signals, &rt)?
        else {
            tracing::info!("stopped while waiting for the server");
            return Ok(());
        };
        let opts = FuseOptions {
            fsname: redact_url(&cfg.url),
            allow_other: cfg.allow_other,
            read_only: cfg.vfs.read_only,
        };
        let mut session = fuse::mount(vfs.clone(), rt.handle().clone(), &cfg.mountpoint, &opts)
            .map_err(|e| explain_mount_error(&e, &cfg.mountpoint))?;
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
        let _control = mount::serve_control(&cfg, &vfs, &rt);
        mount::desktop::forward(
            &vfs,
            &rt,
            &std::path::absolute(&cfg.mountpoint).unwrap_or_else(|_| cfg.mountpoint.clone()),
        );
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

    /// What to tell the user when the kernel session cannot be made.
    fn explain_mount_error(e: &std::io::Error, mountpoint: &Path) -> String {
        let mut msg = format!("cannot mount on {}: {e}", mountpoint.display());
        let dev = Path::new("/dev/fuse");
        let usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev)
            .map_err(|e| e.kind());
        match usable {
            Err(std::io::ErrorKind::NotFound) => msg.push_str(
                "\n/dev/fuse does not exist: the FUSE kernel module is not loaded (`sudo \
                 modprobe fuse`; in a container, start it with `--device /dev/fuse`).",
            ),
            Err(std::io::ErrorKind::PermissionDenied) => msg.push_str(
                "\nThis user cannot open /dev/fuse. On a desktop it is usable by everyone \
                 (mode 0666, set by the fuse3 package's udev rule): install fuse3 (`sudo apt \
                 install fuse3`) or ask the administrator to run `sudo chmod 0666 /dev/fuse`.",
            ),
            _ => {}
        }
        let fusermount = ["/usr/bin/fusermount3", "/bin/fusermount3"]
            .iter()
            .any(|p| Path::new(p).exists());
        // SAFETY: geteuid cannot fail and touches no memory.
        if !fusermount && unsafe { libc::geteuid() } != 0 {
            msg.push_str(
                "\nfusermount3 is missing: an ordinary user mounts through it. Install fuse3.",
            );
        }
        msg
    }

    fn lazy_unmount(mountpoint: &Path) {
        let _ = Proc::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(mountpoint)
            .status();
    }

    pub fn unmount(mountpoint: &Path, _control: Option<&Path>) -> Result<(), String> {
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

#[cfg(windows)]
#[path = "platform_windows.rs"]
mod platform;

#[cfg(not(any(target_os = "linux", windows)))]
mod platform {
    use std::path::Path;

    use davdrive::cli::MountArgs;

    pub fn mount(_args: &MountArgs) -> Result<(), String> {
        Err(
            "mounting on this OS comes with its frontend (WinFsp on Windows, macFUSE on macOS)"
                .into(),
        )
    }

    pub fn unmount(_mountpoint: &Path, _control: Option<&Path>) -> Result<(), String> {
        Err("unmounting on this OS comes with its frontend".into())
    }

    pub fn open(_file: &Path, _no_browse: bool) -> Result<(), String> {
        Err("mounting on this OS comes with its frontend".into())
    }

    pub fn autostart(_action: davdrive::cli::AutostartAction) -> Result<(), String> {
        Err("autostart on this OS comes with its frontend (a logon task on Windows)".into())
    }
}
