//! What a Windows mount is called and where it goes, in plain Rust (tested on Linux too):
//! the mount point (`X:`, `*` for the next free letter, or a folder), the volume prefix
//! that makes Explorer treat the drive as a network share, the volume label, and the logon
//! task that mounts a profile at every logon.

use std::path::{Path, PathBuf};

/// Where a Windows mount goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountPoint {
    /// A drive letter (`X:`).
    Drive(char),
    /// The next free drive letter, from Z: down (`*`).
    NextFree,
    /// A folder that must not exist yet (WinFsp makes it); its parent must.
    Directory(PathBuf),
}

impl MountPoint {
    /// Reads a mount point as the user gives it: `X:`, `x:`, `X:\`, `*`, or a path.
    pub fn parse(p: &Path) -> Result<MountPoint, String> {
        let s = p.to_string_lossy();
        let s = s.trim();
        if s == "*" {
            return Ok(MountPoint::NextFree);
        }
        let bare = s.trim_end_matches(['\\', '/']);
        let mut chars = bare.chars();
        if let (Some(letter), Some(':'), None) = (chars.next(), chars.next(), chars.next()) {
            if letter.is_ascii_alphabetic() {
                return Ok(MountPoint::Drive(letter.to_ascii_uppercase()));
            }
            return Err(format!("{s}: not a drive letter (A: to Z:)"));
        }
        if s.is_empty() {
            return Err("no mount point: give a drive letter such as X:, or *".into());
        }
        Ok(MountPoint::Directory(p.to_path_buf()))
    }

    /// Checks what can be checked before mounting: a folder mount point must not exist
    /// (WinFsp creates it as a reparse point) and its parent must.
    pub fn check(&self) -> Result<(), String> {
        let MountPoint::Directory(d) = self else {
            return Ok(());
        };
        if d.exists() {
            return Err(format!(
                "{}: exists already; on Windows a folder mount point must not exist yet \
                 (davdrive makes it), or mount on a drive letter such as X:",
                d.display()
            ));
        }
        match d.parent() {
            Some(parent) if !parent.as_os_str().is_empty() && !parent.is_dir() => Err(format!(
                "{}: the folder {} does not exist",
                d.display(),
                parent.display()
            )),
            _ => Ok(()),
        }
    }

    /// How the mount point is shown and found again (`X:` for a drive).
    pub fn display(&self) -> String {
        match self {
            MountPoint::Drive(c) => format!("{c}:"),
            MountPoint::NextFree => "*".into(),
            MountPoint::Directory(d) => d.display().to_string(),
        }
    }
}

/// The highest free drive letter (Z: down to D:) given the bit mask of used letters
/// (GetLogicalDrives: bit 0 is A:).
pub fn next_free_drive(used: u32) -> Option<char> {
    (3u8..26)
        .rev()
        .find(|i| used & (1 << i) == 0)
        .map(|i| char::from(b'A' + i))
}

/// WinFsp's volume prefix for `url`: `\davdrive\HOST[@PORT]\PATH` with the path's segments.
/// A volume with a prefix is a network volume: Explorer then treats the drive as a network
/// share (icons instead of thumbnails fetched for every file; delete asks to delete for good
/// instead of moving to a Recycle Bin the drive cannot have).
pub fn volume_prefix(url: &url::Url) -> String {
    let mut out = String::from("\\davdrive\\");
    out.push_str(&safe(url.host_str().unwrap_or("server")));
    if let Some(port) = url.port() {
        out.push('@');
        out.push_str(&port.to_string());
    }
    for seg in url.path_segments().into_iter().flatten() {
        if seg.is_empty() {
            continue;
        }
        let decoded = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
        out.push('\\');
        out.push_str(&safe(&decoded));
    }
    // WinFsp's prefix field holds 192 UTF-16 units.
    let mut short = String::new();
    for c in out.chars() {
        if short.encode_utf16().count() + c.len_utf16() > 191 {
            break;
        }
        short.push(c);
    }
    short
}

/// A prefix component: characters a UNC path cannot hold become `_`.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\\' | '/' | ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// The volume label: `--volname`, else the server's host and the last folder of the URL
/// (`dav on nas.example`); at most 32 characters, as NTFS allows.
pub fn volume_label(url: &url::Url, volname: Option<&str>) -> String {
    let label = match volname {
        Some(v) if !v.trim().is_empty() => v.trim().to_owned(),
        _ => {
            let host = url.host_str().unwrap_or("server");
            let last = url
                .path_segments()
                .and_then(|mut s| s.rfind(|x| !x.is_empty()).map(str::to_owned))
                .map(|l| {
                    percent_encoding::percent_decode_str(&l)
                        .decode_utf8_lossy()
                        .into_owned()
                });
            match last {
                Some(l) => format!("{l} on {host}"),
                None => host.to_owned(),
            }
        }
    };
    label.chars().take(32).collect()
}

/// The Task Scheduler's name of the logon task of `profile`.
pub fn logon_task_name(profile: &str) -> String {
    format!("davdrive\\{profile}")
}

/// The Task Scheduler XML of a per-user logon task that runs `exe mount --profile PROFILE`
/// for `user` (`DOMAIN\name`), not elevated: a drive mounted by an elevated process lives in
/// the administrator token's logon session, which Explorer does not see. The mount detaches
/// as from a terminal (no console window stays), breaking away from the task's job where
/// Windows allows it.
pub fn logon_task_xml(profile: &str, user: &str, exe: &Path, config: Option<&Path>) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>Mounts the davdrive profile {profile} at logon.</Description>
  </RegistrationInfo>
  <Triggers>
    <LogonTrigger>
      <Enabled>true</Enabled>
      <UserId>{user}</UserId>
    </LogonTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>{user}</UserId>
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <Hidden>false</Hidden>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>"{exe}"</Command>
      <Arguments>mount --profile {profile} --wait-for-server{config}</Arguments>
    </Exec>
  </Actions>
</Task>
"#,
        profile = esc(profile),
        user = esc(user),
        exe = esc(&exe.display().to_string()),
        config = config
            .map(|c| format!(" --config &quot;{}&quot;", esc(&c.display().to_string())))
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_as_users_write_them() {
        let p = |s: &str| MountPoint::parse(Path::new(s));
        assert_eq!(p("X:"), Ok(MountPoint::Drive('X')));
        assert_eq!(p("x:"), Ok(MountPoint::Drive('X')));
        assert_eq!(p("X:\\"), Ok(MountPoint::Drive('X')));
        assert_eq!(p("*"), Ok(MountPoint::NextFree));
        assert!(p("1:").is_err());
        assert_eq!(
            p("C:\\Users\\me\\NAS"),
            Ok(MountPoint::Directory(PathBuf::from("C:\\Users\\me\\NAS")))
        );
        assert_eq!(MountPoint::Drive('Q').display(), "Q:");
    }

    #[test]
    fn a_folder_mount_point_must_not_exist_but_its_parent_must() {
        let tmp = std::env::temp_dir();
        let e = MountPoint::Directory(tmp.clone())
            .check()
            .expect_err("exists");
        assert!(e.contains("must not exist yet"), "{e}");
        assert!(
            MountPoint::Directory(tmp.join("davdrive-no-such-mount"))
                .check()
                .is_ok()
        );
        let e = MountPoint::Directory(tmp.join("no-such-parent-x").join("m"))
            .check()
            .expect_err("no parent");
        assert!(e.contains("does not exist"), "{e}");
        assert!(MountPoint::Drive('X').check().is_ok());
    }

    #[test]
    fn the_next_free_letter_counts_down_from_z() {
        assert_eq!(next_free_drive(0b100), Some('Z')); // only C: used
        assert_eq!(next_free_drive(1 << 25), Some('Y'));
        assert_eq!(next_free_drive(!0b111), None); // D: to Z: all used
        assert_eq!(next_free_drive(!(1 << 3)), Some('D'));
    }

    #[test]
    fn the_prefix_names_host_port_and_path() {
        let u = |s: &str| url::Url::parse(s).expect("url");
        assert_eq!(
            volume_prefix(&u("https://nas.example/remote.php/dav/files/alice/")),
            "\\davdrive\\nas.example\\remote.php\\dav\\files\\alice"
        );
        assert_eq!(
            volume_prefix(&u("http://127.0.0.1:8042/webdav/")),
            "\\davdrive\\127.0.0.1@8042\\webdav"
        );
        assert_eq!(
            volume_prefix(&u("http://h/a%3Ab/Caf%C3%A9/")),
            "\\davdrive\\h\\a_b\\Café"
        );
        let long = format!("http://h/{}/", "x".repeat(400));
        assert!(volume_prefix(&u(&long)).encode_utf16().count() <= 191);
    }

    #[test]
    fn labels_are_short_and_say_where() {
        let u = |s: &str| url::Url::parse(s).expect("url");
        assert_eq!(
            volume_label(&u("http://pacs.local:8042/webdav/"), None),
            "webdav on pacs.local"
        );
        assert_eq!(volume_label(&u("https://nas/"), None), "nas");
        assert_eq!(volume_label(&u("https://nas/"), Some("Team")), "Team");
        assert_eq!(
            volume_label(&u("https://nas/"), Some(&"L".repeat(40))).len(),
            32
        );
    }

    #[test]
    fn the_logon_task_runs_the_profile_unelevated_for_its_user() {
        let x = logon_task_xml(
            "pacs",
            "HOSPITAL\\rad1",
            Path::new("C:\\Program Files\\davdrive\\davdrive.exe"),
            None,
        );
        assert!(x.contains("<UserId>HOSPITAL\\rad1</UserId>"));
        assert!(x.contains("<RunLevel>LeastPrivilege</RunLevel>"));
        assert!(x.contains("<LogonType>InteractiveToken</LogonType>"));
        assert!(x.contains("<Arguments>mount --profile pacs --wait-for-server</Arguments>"));
        assert!(x.contains("<Command>\"C:\\Program Files\\davdrive\\davdrive.exe\"</Command>"));
        let esc = logon_task_xml(
            "a<b",
            "u&v",
            Path::new("x.exe"),
            Some(Path::new("C:\\a b.toml")),
        );
        assert!(esc.contains("a&lt;b") && esc.contains("u&amp;v"));
        assert!(esc.contains("--wait-for-server --config &quot;C:\\a b.toml&quot;</Arguments>"));
        assert_eq!(logon_task_name("pacs"), "davdrive\\pacs");
    }
}
