//! `davdrive autostart enable|disable|status PROFILE`: mounting a profile at login.
//!
//! Where a systemd user manager runs, a user unit `davdrive-PROFILE.service` with
//! `Type=notify`: the mount tells systemd `READY=1` once the root was listed, `STATUS=`
//! while it waits for the network, the server or a locked keyring (`--wait-for-server`:
//! retries with backoff instead of failing at once; `network-online.target` does not exist
//! for user units), and `STOPPING=1` on the way out; the stop timeout leaves time to finish
//! uploads. A mount left behind by a killed daemon ("Transport endpoint is not connected")
//! is cleared by the next start. Elsewhere, an XDG autostart entry runs the same mount
//! command at login.
//!
//! This module writes the files' text; `main.rs` puts them in place and talks to
//! `systemctl`.

use std::path::{Path, PathBuf};

/// The unit's file name for `profile`.
pub fn unit_name(profile: &str) -> String {
    format!("davdrive-{}.service", systemd_escape_name(profile))
}

/// The XDG autostart entry's file name for `profile`.
pub fn desktop_name(profile: &str) -> String {
    format!("davdrive-{}.desktop", systemd_escape_name(profile))
}

/// A unit name part: letters, digits, `_`, `-` and `.` stay; the rest becomes `\xNN` as
/// systemd-escape writes it (`-` kept: profile names are not paths).
fn systemd_escape_name(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// One argument of a unit's `ExecStart=`, quoted: specifiers (`%`) and variables (`$`)
/// are not expanded.
fn unit_arg(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One argument of a desktop entry's `Exec=`, quoted per the Desktop Entry Specification
/// (then escaped once more as a string value of the file).
fn exec_arg(s: &str) -> String {
    let plain = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=@+,".contains(c));
    let quoted = if plain {
        s.to_owned()
    } else {
        let mut q = String::from("\"");
        for c in s.chars() {
            if matches!(c, '"' | '`' | '$' | '\\') {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    };
    quoted.replace('\\', "\\\\").replace('%', "%%")
}

/// A profile name fit for a unit or an autostart entry: no control characters (a newline
/// would add a line of its own to the file), not starting with `-`.
pub fn check_profile_name(profile: &str) -> Result<(), String> {
    if profile.is_empty() || profile.starts_with('-') || profile.chars().any(char::is_control) {
        return Err(format!(
            "{profile:?} cannot name a login mount: use a profile name without control \
             characters that does not start with '-'"
        ));
    }
    Ok(())
}

/// The arguments after the program: mount the profile, waiting for the server.
fn mount_args(profile: &str, config: Option<&Path>, foreground: bool) -> Vec<String> {
    let mut args = vec!["mount".to_owned()];
    if foreground {
        args.push("--foreground".into());
    }
    args.push("--wait-for-server".into());
    if let Some(c) = config {
        args.push("--config".into());
        args.push(c.display().to_string());
    }
    args.push("--".into());
    args.push(profile.to_owned());
    args
}

/// The systemd user unit that mounts `profile` with the program `exe`.
pub fn unit(exe: &Path, profile: &str, config: Option<&Path>) -> String {
    let exec: Vec<String> = std::iter::once(exe.display().to_string())
        .chain(mount_args(profile, config, true))
        .map(|a| unit_arg(&a))
        .collect();
    let desc = profile.replace('%', "%%");
    format!(
        "# Written by `davdrive autostart enable {profile}`; `davdrive autostart disable \
         {profile}` removes it.\n\
         [Unit]\n\
         Description=davdrive: WebDAV mount of the profile {desc}\n\
         # A refused password or a broken profile does not start again and again.\n\
         StartLimitIntervalSec=10min\n\
         StartLimitBurst=5\n\
         \n\
         [Service]\n\
         # READY=1 once the server's root was listed; STATUS= while waiting for it.\n\
         Type=notify\n\
         NotifyAccess=main\n\
         ExecStart={}\n\
         # The server may be unreachable at login: the mount waits for it (--wait-for-server).\n\
         TimeoutStartSec=infinity\n\
         # Uploads of files written before the stop finish first.\n\
         TimeoutStopSec=15min\n\
         KillMode=mixed\n\
         Restart=on-failure\n\
         RestartSec=10s\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        exec.join(" ")
    )
}

/// The XDG autostart entry that mounts `profile` with `exe` at login.
pub fn desktop_entry(exe: &Path, profile: &str, config: Option<&Path>) -> String {
    let exec: Vec<String> = std::iter::once(exe.display().to_string())
        .chain(mount_args(profile, config, false))
        .map(|a| exec_arg(&a))
        .collect();
    format!(
        "[Desktop Entry]\n\
         Type=Application\n\
         Name=davdrive ({profile})\n\
         Comment=Mounts the WebDAV profile {profile} at login\n\
         Exec={}\n\
         Terminal=false\n\
         NoDisplay=true\n\
         X-GNOME-Autostart-enabled=true\n",
        exec.join(" ")
    )
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
pub fn config_home() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
}

/// Runs the OS's tool for login mounts (`systemctl --user …`, `schtasks …`); its error
/// output becomes the error.
pub fn run_tool(program: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_quotes_paths_and_keeps_specifiers_literal() {
        let u = unit(Path::new("/opt/my apps/davdrive"), "n%a$s", None);
        assert!(
            u.contains(
                "ExecStart=\"/opt/my apps/davdrive\" \"mount\" \"--foreground\" \
                 \"--wait-for-server\" \"--\" \"n%%a$$s\"\n"
            ),
            "{u}"
        );
        assert!(u.contains("Type=notify\n") && u.contains("WantedBy=default.target\n"));
        assert_eq!(unit_name("my nas"), "davdrive-my\\x20nas.service");
        assert!(check_profile_name("x\nExecStartPre=/bin/evil").is_err());
        assert!(check_profile_name("--config=/x").is_err());
        assert!(check_profile_name("my nas").is_ok());
    }

    #[test]
    fn the_desktop_entry_quotes_as_the_specification_says() {
        let d = desktop_entry(
            Path::new("/home/a b/davdrive"),
            "nas",
            Some(Path::new("/c/x$y.toml")),
        );
        assert!(
            d.contains(
                "Exec=\"/home/a b/davdrive\" mount --wait-for-server --config \
                 \"/c/x\\\\$y.toml\" -- nas\n"
            ),
            "{d}"
        );
    }
}
