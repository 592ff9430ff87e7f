//! `mount.davdrive`: the mount(8) helper, so that `/etc/fstab` entries and `mount -t
//! davdrive URL DIR -o OPTIONS` work:
//!
//! ```text
//! https://srv/dav  /home/u/NAS  davdrive  noauto,user,_netdev,nofail,profile=nas  0 0
//! ```
//!
//! mount(8) runs `/sbin/mount.davdrive SPEC DIR [-s] [-f] [-n] [-v] [-o OPTIONS] [-t TYPE]`
//! (for a `user` entry, as the user, with a cleaned environment). This module turns that
//! into the arguments of `davdrive mount`, so that every `-o` option means exactly what the
//! command-line option of the same name means (`cache_dir=D` is `--cache-dir D`,
//! `async_close` is `--async-close`): one definition, checked by clap.
//!
//! - mount(8)'s own options and the kernel's generic ones are accepted and ignored:
//!   `user`, `users`, `noauto`, `_netdev`, `nofail`, `x-*` (`x-systemd.automount`), `rw`,
//!   `nosuid`, `nodev`, `noexec`, `noatime`, ... (FUSE mounts by a user are always `nosuid`
//!   and `nodev`).
//! - `ro` is `--read-only`; `username=NAME` is `--user NAME` (the server's user name:
//!   `user` belongs to mount(8)); `setuid=USER` makes root mount for USER (systemd's
//!   automount runs helpers as root).
//! - A password is refused: /etc/fstab and process arguments are readable by every user.
//!   `davdrive login URL` keeps it in the OS keyring; `secrets_file=FILE` names a 0600 file.
//! - Anything else unknown is an error, unless `-s` (sloppy) asks for a warning instead.

use std::ffi::OsString;

/// What mount(8) asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperCall {
    /// The arguments of `davdrive` (starting with `mount`).
    pub davdrive_args: Vec<OsString>,
    /// `setuid=USER`: root mounts for this user.
    pub setuid: Option<String>,
    /// The entry is a per-user one (`user`, `users`).
    pub per_user: bool,
    /// `-f`: check everything, mount nothing.
    pub fake: bool,
    /// `-v`.
    pub verbose: bool,
    /// Options ignored with `-s`, to warn about.
    pub ignored: Vec<String>,
    /// The mount point as given.
    pub mountpoint: OsString,
}

/// Options of mount(8) and of the kernel that mean nothing to davdrive.
const IGNORED: &[&str] = &[
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "auto",
    "noauto",
    "_netdev",
    "nofail",
    "defaults",
    "rw",
    "exec",
    "noexec",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "sync",
    "async",
    "dirsync",
    "loud",
    "silent",
];

/// Option names that would carry a secret.
const SECRETS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pw",
    "secret",
    "token",
    "passphrase",
];

/// Splits mount options at commas outside double quotes; quotes are removed.
pub fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.retain(|o| !o.is_empty());
    out
}

/// Parses the helper's command line (without argv[0]). `mount_options` lists the long
/// options of `davdrive mount` and whether each takes a value.
pub fn parse(args: &[OsString], mount_options: &[(String, bool)]) -> Result<HelperCall, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let (mut sloppy, mut fake, mut verbose) = (false, false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        match s.as_ref() {
            "-o" | "--options" => {
                let v = it.next().ok_or("-o needs a value")?;
                options.extend(split_options(&v.to_string_lossy()));
            }
            "-t" | "--types" => {
                let t = it.next().ok_or("-t needs a value")?;
                let t = t.to_string_lossy();
                if t != "davdrive" && t != "fuse.davdrive" {
                    return Err(format!("mount.davdrive cannot mount type {t:?}"));
                }
            }
            "-N" | "--namespace" => {
                return Err("mount.davdrive cannot mount in another namespace (-N)".into());
            }
            "-h" | "--help" => {
                return Err("usage: mount.davdrive URL|PROFILE DIR [-s] [-f] [-n] [-v] \
                            [-o OPTIONS]; OPTIONS are those of `davdrive mount --help`, \
                            written as name=value or name"
                    .into());
            }
            o if o.starts_with("-o") && o.len() > 2 => options.extend(split_options(&o[2..])),
            o if o.starts_with('-') && o.len() > 1 && !o.starts_with("--") => {
                for f in o[1..].chars() {
                    match f {
                        's' => sloppy = true,
                        'f' => fake = true,
                        'n' => {}
                        'v' => verbose = true,
                        _ => return Err(format!("mount.davdrive: unknown flag -{f}")),
                    }
                }
            }
            o if o.starts_with("--") => return Err(format!("mount.davdrive: unknown flag {o}")),
            _ => positional.push(a.clone()),
        }
    }
    let [spec, dir] = <[OsString; 2]>::try_from(positional)
        .map_err(|_| "mount.davdrive needs the URL (or profile) and the directory")?;
    let mut davdrive_args: Vec<OsString> = vec!["mount".into(), spec, dir.clone()];
    // Later options win (mount(8) appends the command line's to the fstab entry's).
    let mut chosen: Vec<(String, Option<String>)> = Vec::new();
    let (mut setuid, mut per_user, mut ignored) = (None, false, Vec::new());
    for o in options {
        let (key, value) = match o.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (o.clone(), None),
        };
        let lower = key.to_ascii_lowercase();
        if SECRETS.contains(&lower.as_str()) || lower.contains("password") {
            return Err(format!(
                "refusing the option {key:?}: a password in /etc/fstab or on a command line \
                 is readable by every user of this computer. Store it with `davdrive login \
                 URL` (the OS keyring), or name a file only you can read with \
                 secrets_file=FILE (mode 0600)"
            ));
        }
        if lower == "user" || lower == "users" {
            per_user = true;
        }
        if IGNORED.contains(&lower.as_str())
            || lower.starts_with("x-")
            || lower == "comment"
            || (lower == "user" && value.is_some())
        {
            continue;
        }
        match (lower.as_str(), value) {
            ("setuid", Some(u)) => setuid = Some(u),
            ("ro", None) => chosen.push(("read-only".into(), None)),
            ("username", Some(u)) => chosen.push(("user".into(), Some(u))),
            ("foreground" | "f", _) => {
                return Err(
                    "the option foreground makes no sense for mount(8), which waits \
                            for the helper: leave it out"
                        .into(),
                );
            }
            (_, value) => {
                let name = lower.replace('_', "-");
                match mount_options.iter().find(|(n, _)| *n == name) {
                    Some((_, true)) if value.is_none() => {
                        return Err(format!("the option {key} needs a value: {key}=..."));
                    }
                    Some((_, false)) if value.is_some() => {
                        return Err(format!("the option {key} takes no value"));
                    }
                    Some(_) => chosen.push((name, value)),
                    None if sloppy => ignored.push(o.clone()),
                    None => {
                        return Err(format!(
                            "unknown option {key:?} (the options are those of `davdrive \
                             mount --help`, written as name=value or name; -s ignores \
                             unknown ones)"
                        ));
                    }
                }
            }
        }
    }
    // The last value of each option wins; flags stay once.
    let mut seen = std::collections::HashSet::new();
    let mut keep = Vec::new();
    for (name, value) in chosen.into_iter().rev() {
        // Options given several times on the command line (pins) keep every value.
        let repeatable = name == "pin-cert";
        if repeatable || seen.insert(name.clone()) {
            keep.push((name, value));
        }
    }
    keep.reverse();
    for (name, value) in keep {
        match value {
            Some(v) => davdrive_args.push(format!("--{name}={v}").into()),
            None => davdrive_args.push(format!("--{name}").into()),
        }
    }
    Ok(HelperCall {
        davdrive_args,
        setuid,
        per_user,
        fake,
        verbose,
        ignored,
        mountpoint: dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Vec<(String, bool)> {
        vec![
            ("profile".into(), true),
            ("cache-dir".into(), true),
            ("async-close".into(), false),
            ("read-only".into(), false),
            ("user".into(), true),
            ("dir-cache-ttl".into(), true),
            ("pin-cert".into(), true),
        ]
    }

    fn call(args: &[&str]) -> Result<HelperCall, String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse(&args, &opts())
    }

    fn strings(c: &HelperCall) -> Vec<String> {
        c.davdrive_args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn an_fstab_user_entry_becomes_the_same_mount_command() {
        // What mount(8) passes for `noauto,user,_netdev,nofail,x-systemd.automount,profile=nas`.
        let c = call(&[
            "https://srv/dav",
            "/home/u/NAS",
            "-o",
            "rw,noexec,nosuid,nodev,profile=nas,user,_netdev,nofail",
        ])
        .expect("parses");
        assert_eq!(
            strings(&c),
            ["mount", "https://srv/dav", "/home/u/NAS", "--profile=nas"]
        );
        assert!(c.per_user && !c.fake && c.setuid.is_none());
    }

    #[test]
    fn options_map_onto_the_command_line_and_the_last_value_wins() {
        let c = call(&[
            "-s",
            "-f",
            "-n",
            "-v",
            "https://srv/dav",
            "/m",
            "-o",
            "ro,async_close,cache_dir=\"/c,d\",dir_cache_ttl=5,x-gvfs-show,comment=hi",
            "-o",
            "dir_cache_ttl=7,username=DOMAIN\\alice,setuid=bob,pin_cert=a,pin_cert=b,mystery",
            "-t",
            "davdrive",
        ])
        .expect("parses");
        assert_eq!(
            strings(&c),
            [
                "mount",
                "https://srv/dav",
                "/m",
                "--read-only",
                "--async-close",
                "--cache-dir=/c,d",
                "--dir-cache-ttl=7",
                "--user=DOMAIN\\alice",
                "--pin-cert=a",
                "--pin-cert=b",
            ]
        );
        assert_eq!(c.setuid.as_deref(), Some("bob"));
        assert!(c.fake && c.verbose);
        assert_eq!(c.ignored, ["mystery"]);
    }

    #[test]
    fn passwords_unknown_options_and_wrong_shapes_are_refused_clearly() {
        for (args, wanted) in [
            (
                vec!["u", "/m", "-o", "password=x"],
                "readable by every user",
            ),
            (vec!["u", "/m", "-o", "user_password=x"], "davdrive login"),
            (vec!["u", "/m", "-o", "mystery"], "unknown option"),
            (vec!["u", "/m", "-o", "cache_dir"], "needs a value"),
            (vec!["u", "/m", "-o", "async_close=1"], "takes no value"),
            (vec!["u", "/m", "-o", "foreground"], "waits"),
            (vec!["u", "/m", "-t", "nfs"], "cannot mount type"),
            (vec!["u"], "needs the URL"),
            (vec!["u", "/m", "-x"], "unknown flag"),
        ] {
            let e = call(&args).expect_err("refused");
            assert!(e.contains(wanted), "{args:?}: {e}");
        }
    }

    #[test]
    fn split_keeps_quoted_commas() {
        assert_eq!(
            split_options("a,b=\"x,y\",,c"),
            ["a".to_owned(), "b=x,y".into(), "c".into()]
        );
    }
}
