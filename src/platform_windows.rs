//! Windows: `davdrive mount URL X:` through WinFsp, `davdrive unmount X:` through the
//! mount's control pipe, and login mounts as a per-user logon task.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use davdrive::cli::{MountArgs, detach};
use davdrive::config::MountConfig;
use davdrive::fs::winfsp::{self, WinFspOptions};
use davdrive::mount::{self, windows as win};
use davdrive::vfs::windows::WinFs;

/// CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP: the daemon has no console to close and
/// does not get the Ctrl-C of the console it was started from.
const DETACHED_FLAGS: u32 = 0x0800_0000 | 0x0000_0200;
/// CREATE_BREAKAWAY_FROM_JOB.
const CREATE_BREAKAWAY_FROM_JOB: u32 = 0x0100_0000;

pub fn mount(args: &MountArgs) -> Result<(), String> {
    let cfg = MountConfig::from_args(args, 0, 0).map_err(|e| e.to_string())?;
    if !cfg.foreground && std::env::var_os(detach::DETACHED).is_none() {
        let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
        return spawn_detached(&cfg.vfs.cache_dir.join("daemon.log"), argv);
    }
    run_foreground(args, cfg)
}

fn spawn_detached(log: &Path, argv: Vec<OsString>) -> Result<(), String> {
    use std::os::windows::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    // The cache directory is under the user's own profile (%LOCALAPPDATA%), which other
    // users cannot read.
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open the log {}: {e}", log.display()))?;
    let start = log_file.metadata().map_or(0, |m| m.len());
    let (mut cmd, secrets) = detach::daemon_command(&exe, argv, log_file);
    // Out of the job of whoever started us (a terminal, ssh, Task Scheduler), whose end
    // would end the mount; a job that forbids it gets a child inside it.
    let child = match cmd
        .creation_flags(DETACHED_FLAGS | CREATE_BREAKAWAY_FROM_JOB)
        .spawn()
    {
        Ok(c) => c,
        Err(_) => cmd
            .creation_flags(DETACHED_FLAGS)
            .spawn()
            .map_err(|e| format!("cannot start the daemon: {e}"))?,
    };
    detach::handshake(child, &secrets, log, start)
}

fn run_foreground(args: &MountArgs, first: MountConfig) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("davdrive-io")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let mut signals = mount::Signals::catch(&rt);
    let first = std::cell::Cell::new(Some(first));
    let make = || {
        let cfg = match first.take() {
            Some(c) => c,
            None => MountConfig::from_args(args, 0, 0).map_err(|e| e.to_string())?,
        };
        let vfs_cfg = cfg.vfs.clone();
        Ok((cfg, vfs_cfg))
    };
    let Some((mut cfg, vfs)) =
        mount::connect_patiently(make, args.wait_for_server, &mut signals, &rt)?
    else {
        tracing::info!("stopped while waiting for the server");
        return Ok(());
    };
    let at = match win::MountPoint::parse(&cfg.mountpoint)? {
        win::MountPoint::NextFree => {
            // SAFETY: no arguments; returns a bit mask.
            let used = unsafe { windows_sys::Win32::Storage::FileSystem::GetLogicalDrives() };
            win::MountPoint::Drive(win::next_free_drive(used).ok_or("no drive letter is free")?)
        }
        m => m,
    };
    // A network volume (the default) on a drive letter; a folder mount point is a fixed
    // volume.
    let network = !args.fixed_drive && matches!(at, win::MountPoint::Drive(_));
    let opts = WinFspOptions {
        label: win::volume_label(&cfg.url, args.volname.as_deref()),
        prefix: network.then(|| win::volume_prefix(&cfg.url)),
        read_only: cfg.vfs.read_only,
        allow_other: cfg.allow_other,
    };
    let at = PathBuf::from(at.display());
    // Fires when WinFsp's dispatcher stops: after a stop of ours, or when the drive is
    // removed from outside (then the mount ends as if unmounted).
    let (stopped, ended) = tokio::sync::oneshot::channel::<()>();
    let mut session = winfsp::mount(
        WinFs::new(vfs.clone()),
        rt.handle().clone(),
        &at,
        &opts,
        stopped,
    )?;
    cfg.mountpoint = at.clone();
    let _control = mount::serve_control(&cfg, &vfs, &rt);
    mount::ready(&cfg.url, &at);
    let mut life = mount::Lifecycle { vfs, signals };
    life.serve(&rt, ended, || session.stop());
    rt.block_on(mount::drain(&life.vfs));
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

/// Asks the mount that answers on `control` to unmount (once its uploads are done).
pub fn unmount(mountpoint: &Path, control: Option<&Path>) -> Result<(), String> {
    let control = control.ok_or_else(|| {
        format!(
            "no davdrive mount answers for {} (another cache directory? pass --cache-dir)",
            mountpoint.display()
        )
    })?;
    mount::control::request(control, "stop")
        .map(|_| ())
        .map_err(|e| format!("the mount of {} does not answer: {e}", mountpoint.display()))
}

pub fn open(_file: &Path, _no_browse: bool) -> Result<(), String> {
    Err(
        ".davmount files are not handled on Windows yet: mount the URL with `davdrive mount URL *`"
            .into(),
    )
}

/// `davdrive autostart ...`: a logon task of the user (Task Scheduler), not elevated.
pub fn autostart(action: davdrive::cli::AutostartAction) -> Result<(), String> {
    use davdrive::cli::AutostartAction;
    use davdrive::cli::autostart as auto;
    match action {
        AutostartAction::Enable {
            profile,
            config,
            with,
            no_start,
        } => {
            auto::check_profile_name(&profile)?;
            if with.is_some() {
                return Err(
                    "--with is for Linux; Windows mounts at logon with a logon task".into(),
                );
            }
            let p = davdrive::config::profile::load(&profile, config.as_deref())
                .map_err(|e| e.to_string())?;
            if p.mountpoint.is_none() {
                return Err(format!(
                    "the profile {profile} has no mountpoint: add mountpoint = \"X:\" (or \"*\") to it"
                ));
            }
            let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
            let config = config.map(|c| std::path::absolute(&c).unwrap_or(c));
            let user = match (std::env::var("USERDOMAIN"), std::env::var("USERNAME")) {
                (Ok(d), Ok(u)) => format!("{d}\\{u}"),
                (_, Ok(u)) => u,
                _ => return Err("cannot tell who is logged on (no USERNAME)".into()),
            };
            let xml = win::logon_task_xml(&profile, &user, &exe, config.as_deref());
            let file =
                std::env::temp_dir().join(format!("davdrive-task-{}.xml", std::process::id()));
            // The Task Scheduler reads UTF-16 with a byte-order mark.
            let mut bytes = vec![0xFF, 0xFE];
            bytes.extend(xml.encode_utf16().flat_map(u16::to_le_bytes));
            std::fs::write(&file, bytes).map_err(|e| format!("{}: {e}", file.display()))?;
            let name = win::logon_task_name(&profile);
            let made = schtasks(&[
                "/Create",
                "/TN",
                &name,
                "/XML",
                &file.to_string_lossy(),
                "/F",
            ]);
            let _ = std::fs::remove_file(&file);
            made?;
            println!("registered the logon task {name}: {profile} is mounted at every logon");
            if !no_start {
                schtasks(&["/Run", "/TN", &name])?;
                println!("started it now");
            }
            Ok(())
        }
        AutostartAction::Disable { profile } => {
            auto::check_profile_name(&profile)?;
            let name = win::logon_task_name(&profile);
            schtasks(&["/Delete", "/TN", &name, "/F"])?;
            println!(
                "removed the logon task {name} (a running mount stays until `davdrive unmount`)"
            );
            Ok(())
        }
        AutostartAction::Status { profile } => {
            auto::check_profile_name(&profile)?;
            let name = win::logon_task_name(&profile);
            match schtasks(&["/Query", "/TN", &name]) {
                Ok(()) => println!("{profile}: mounted at logon by the task {name}"),
                Err(_) => println!("{profile}: not mounted at logon"),
            }
            Ok(())
        }
    }
}

fn schtasks(args: &[&str]) -> Result<(), String> {
    davdrive::cli::autostart::run_tool("schtasks", args)
}
