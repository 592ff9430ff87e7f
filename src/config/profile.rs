//! Named mount profiles in a TOML file, so that `davdrive mount pacs` (and the login-time
//! auto-mount) need no long command line.
//!
//! ```toml
//! [profile.pacs]
//! url = "https://pacs.example.org/webdav/"
//! mountpoint = "~/PACS"
//! user = "radiology"
//! ca-cert = "/etc/davdrive/pacs-ca.pem"
//! dir-cache-ttl = 60
//! ```
//!
//! Keys are the long command-line options without their dashes' leading `--`; an option
//! given on the command line wins over the profile. Unknown keys are errors (a typo must not
//! silently fall back to a default), and a `password` key is refused: passwords belong in
//! the keyring or a 0600 secrets file, not in a configuration file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

use super::ConfigError;

/// How new files reach the server (the profile spelling of `--upload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upload {
    Auto,
    Stream,
    Spool,
}

/// One `[profile.NAME]` table. Every field is optional except the URL.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Profile {
    pub url: String,
    pub mountpoint: Option<PathBuf>,
    pub user: Option<String>,
    pub secrets_file: Option<PathBuf>,
    pub token_command: Option<String>,
    pub foreground: Option<bool>,
    pub read_only: Option<bool>,
    pub allow_other: Option<bool>,
    pub cache_dir: Option<PathBuf>,
    pub upload: Option<Upload>,
    pub upload_os_files: Option<bool>,
    pub segment_size: Option<u64>,
    pub async_close: Option<bool>,
    pub lock: Option<bool>,
    pub dir_cache_ttl: Option<u64>,
    pub prefetch_listings: Option<usize>,
    pub revalidate: Option<u64>,
    pub revalidate_for: Option<u64>,
    pub kernel_ttl: Option<u64>,
    pub direct_io: Option<bool>,
    pub store_reads: Option<bool>,
    pub ca_cert: Option<PathBuf>,
    pub insecure: Option<bool>,
    pub allow_http_redirect: Option<bool>,
    pub pin_cert: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub proxy: Option<String>,
    pub connect_timeout: Option<u64>,
    pub timeout: Option<u64>,
    pub read_idle: Option<u64>,
    pub retry_time: Option<u64>,
    pub upload_retry_time: Option<u64>,
    pub max_listing_mib: Option<u64>,
    /// Only here to be refused with a useful message.
    password: Option<toml::Value>,
}

impl Profile {
    /// A profile holding nothing but a URL: a mount from the command line alone.
    pub fn for_url(url: &str) -> Self {
        Profile {
            url: url.to_owned(),
            ..Profile::default()
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    profile: BTreeMap<String, Profile>,
}

/// Longest accepted time value (seconds): one week. Larger values are surely mistakes.
const MAX_SECONDS: u64 = 7 * 24 * 3600;

/// Parses and checks a profile file. `origin` names the file in error messages.
pub fn parse(text: &str, origin: &str) -> Result<BTreeMap<String, Profile>, ConfigError> {
    let file: ProfileFile =
        toml::from_str(text).map_err(|e| ConfigError(format!("{origin}: {e}")))?;
    for (name, p) in &file.profile {
        check(name, p).map_err(|e| ConfigError(format!("{origin}: [profile.{name}]: {e}")))?;
    }
    Ok(file.profile)
}

fn check(name: &str, p: &Profile) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("a profile name may use only letters, digits, '-', '_' and '.'".into());
    }
    if p.password.is_some() {
        return Err("passwords do not belong in the configuration file: use \
                    `davdrive login URL` (OS keyring) or a 0600 secrets file"
            .into());
    }
    let url = Url::parse(&p.url).map_err(|e| format!("url {:?}: {e}", p.url))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "url {:?}: only http and https are supported",
            p.url
        ));
    }
    if url.password().is_some() {
        return Err("url: put no password in the URL".into());
    }
    for (key, v) in [
        ("dir-cache-ttl", p.dir_cache_ttl),
        ("kernel-ttl", p.kernel_ttl),
        ("connect-timeout", p.connect_timeout),
        ("timeout", p.timeout),
        ("read-idle", p.read_idle),
        ("retry-time", p.retry_time),
        ("upload-retry-time", p.upload_retry_time),
    ] {
        if v.is_some_and(|s| s > MAX_SECONDS) {
            return Err(format!("{key}: at most {MAX_SECONDS} seconds"));
        }
    }
    Ok(())
}

/// `~` or `~/x` → the home directory (Windows: `%USERPROFILE%`); other paths unchanged.
pub fn expand_home(p: &Path) -> PathBuf {
    let home = || {
        let var = if cfg!(windows) { "USERPROFILE" } else { "HOME" };
        std::env::var_os(var).map(PathBuf::from)
    };
    match p.to_str() {
        Some("~") => home().unwrap_or_else(|| p.to_path_buf()),
        Some(s) if s.starts_with("~/") => match home() {
            Some(h) => h.join(&s[2..]),
            None => p.to_path_buf(),
        },
        _ => p.to_path_buf(),
    }
}

/// Where the profile file is looked for when `--config` is not given:
/// `$XDG_CONFIG_HOME/davdrive/config.toml`, else `~/.config/davdrive/config.toml`; on
/// Windows `%APPDATA%\davdrive\config.toml` (a HOME that Git Bash sets does not move it).
pub fn default_path() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|x| !x.is_empty());
    if cfg!(windows) {
        return var("APPDATA").map(|a| PathBuf::from(a).join("davdrive").join("config.toml"));
    }
    if let Some(x) = var("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(x).join("davdrive/config.toml"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".config/davdrive/config.toml"))
}

/// Loads profile `name` from `file` (or the default file).
pub fn load(name: &str, file: Option<&Path>) -> Result<Profile, ConfigError> {
    let path = match file {
        Some(f) => f.to_path_buf(),
        None => default_path().ok_or_else(|| {
            ConfigError("no HOME to find the configuration file in: pass --config FILE".into())
        })?,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ConfigError(format!(
            "{name:?} is not a URL, so it was taken as a profile name, but the configuration \
             file {} cannot be read: {e}",
            path.display()
        ))
    })?;
    let shown = path.display().to_string();
    let mut all = parse(&text, &shown)?;
    let known = all.keys().cloned().collect::<Vec<_>>().join(", ");
    all.remove(name).ok_or_else(|| {
        ConfigError(format!(
            "{shown}: no [profile.{name}] (profiles there: {known})"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_profile() {
        let text = r#"
            [profile.pacs]
            url = "https://pacs.example.org/webdav/"
            mountpoint = "~/PACS"
            user = "radiology"
            read-only = true
            upload = "spool"
            segment-size = 64
            async-close = true
            dir-cache-ttl = 60
            ca-cert = "/etc/davdrive/ca.pem"

            [profile.home]
            url = "http://127.0.0.1:8080/dav/"
        "#;
        let p = parse(text, "t").expect("valid");
        assert_eq!(p.len(), 2);
        let pacs = &p["pacs"];
        assert_eq!(pacs.user.as_deref(), Some("radiology"));
        assert_eq!(pacs.read_only, Some(true));
        assert_eq!(pacs.upload, Some(Upload::Spool));
        assert_eq!(pacs.segment_size, Some(64));
        assert_eq!(pacs.async_close, Some(true));
        assert_eq!(pacs.dir_cache_ttl, Some(60));
        assert_eq!(p["home"].mountpoint, None);
    }

    #[test]
    fn refuses_what_would_silently_go_wrong() {
        for (text, needle) in [
            (
                "[profile.a]\nurl = \"http://h/\"\nread_olny = true\n",
                "unknown field",
            ),
            (
                "[profile.a]\nurl = \"http://h/\"\npassword = \"x\"\n",
                "passwords do not",
            ),
            (
                "[profile.a]\nurl = \"http://u:pw@h/\"\n",
                "no password in the URL",
            ),
            ("[profile.a]\nurl = \"ftp://h/\"\n", "only http and https"),
            ("[profile.a]\nurl = \"not a url\"\n", "url"),
            ("[profile.a]\nmountpoint = \"/m\"\n", "missing field `url`"),
            (
                "[profile.a]\nurl = \"http://h/\"\ntimeout = -1\n",
                "timeout",
            ),
            (
                "[profile.a]\nurl = \"http://h/\"\ntimeout = 99999999\n",
                "at most",
            ),
            (
                "[profile.a]\nurl = \"http://h/\"\nupload = \"fast\"\n",
                "upload",
            ),
            ("[profile.\"a b\"]\nurl = \"http://h/\"\n", "profile name"),
            ("[mount]\nurl = \"http://h/\"\n", "unknown field"),
            ("[profile.a\nurl = 1", "TOML parse error"),
        ] {
            let e = parse(text, "config.toml").expect_err(text).0;
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(e.starts_with("config.toml"), "{e}");
            assert!(!e.contains("pw@"), "{e}");
        }
    }

    #[test]
    fn expands_the_home_directory() {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if let Some(h) = home {
            assert_eq!(expand_home(Path::new("~/PACS")), h.join("PACS"));
        }
        assert_eq!(expand_home(Path::new("/m/~x")), PathBuf::from("/m/~x"));
    }

    #[cfg(windows)]
    #[test]
    fn on_windows_profiles_live_in_appdata_and_caches_in_localappdata() {
        let appdata = std::env::var_os("APPDATA").expect("Windows sets APPDATA");
        assert_eq!(
            default_path(),
            Some(PathBuf::from(appdata).join("davdrive").join("config.toml"))
        );
        let local = std::env::var_os("LOCALAPPDATA").expect("Windows sets LOCALAPPDATA");
        assert_eq!(
            crate::vfs::cache_dir::default_base(),
            PathBuf::from(local).join("davdrive")
        );
    }
}
