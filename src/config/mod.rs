//! A validated mount configuration built from the command line, a profile in the
//! configuration file (`profile`) and the environment.
//!
//! `MountConfig`'s `Debug` never shows a password: credentials hold a redacting `Secret`.

pub mod profile;
pub mod trust;

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::cli::{MountArgs, UploadMode};
use crate::credentials;
use crate::dav::client::redact_url;
use crate::dav::{BearerSource, ClientConfig, Credentials, DavError, Secret};
use crate::vfs::cache_dir::{default_base, mount_key};
use crate::vfs::{ReadTuning, UploadPolicy, VfsConfig};
use profile::{Profile, Upload};

/// Everything needed to mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub url: Url,
    pub mountpoint: PathBuf,
    /// The mount point holds a dead FUSE mount (its daemon was killed).
    pub stale_mount: bool,
    pub credentials: Option<Credentials>,
    pub foreground: bool,
    pub allow_other: bool,
    pub client: ClientConfig,
    pub vfs: VfsConfig,
}

/// A configuration error, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<DavError> for ConfigError {
    fn from(e: DavError) -> Self {
        ConfigError(e.to_string())
    }
}

/// Reads a client certificate: PEM (with its key, or the key in `key`) or PKCS#12.
fn client_identity(
    cert: &std::path::Path,
    key: Option<&std::path::Path>,
) -> Result<crate::dav::tls::ClientIdentity, ConfigError> {
    use crate::dav::tls::ClientIdentity;
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| ConfigError(format!("cannot read {}: {e}", p.display())))
    };
    let data = read(cert)?;
    let shown = cert.display();
    if data.starts_with(b"-----BEGIN") || data.windows(11).any(|w| w == b"-----BEGIN ") {
        let key = key.map(read).transpose()?;
        ClientIdentity::from_pem(&data, key.as_deref())
            .map_err(|e| ConfigError(format!("{shown}: {e}")))
    } else {
        let password = std::env::var("DAVDRIVE_CLIENT_CERT_PASSWORD").unwrap_or_default();
        ClientIdentity::from_pkcs12(&data, &password)
            .map_err(|e| ConfigError(format!("{shown}: {e}")))
    }
}

impl MountConfig {
    pub fn from_args(args: &MountArgs, uid: u32, gid: u32) -> Result<Self, ConfigError> {
        // A first argument that is not a URL names a profile; the command line wins over it.
        let profile = match (&args.profile, args.url.contains("://")) {
            (Some(name), true) => {
                let mut p = profile::load(name, args.config.as_deref())?;
                p.url = args.url.clone();
                p
            }
            (Some(name), false) if *name != args.url => {
                return Err(ConfigError(format!(
                    "two profiles named ({:?} and {name:?}): give the URL and the profile, \
                     or the profile alone",
                    args.url
                )));
            }
            (None, true) => Profile::for_url(&args.url),
            (_, false) => profile::load(&args.url, args.config.as_deref())?,
        };
        let url = Url::parse(&profile.url)
            .map_err(|e| ConfigError(format!("{:?} is not a URL: {e}", profile.url)))?;
        if url.password().is_some() {
            return Err(ConfigError(
                "put no password in the URL: use DAVDRIVE_PASSWORD or a secrets file".into(),
            ));
        }
        let mountpoint = args
            .mountpoint
            .clone()
            .or_else(|| profile.mountpoint.as_deref().map(profile::expand_home))
            .ok_or_else(|| {
                ConfigError("no mount point: give one after the URL or in the profile".into())
            })?;
        let stale_mount = if cfg!(windows) {
            // A drive letter, `*`, or a folder that WinFsp makes (it must not exist).
            crate::mount::windows::MountPoint::parse(&mountpoint)
                .and_then(|m| m.check())
                .map_err(ConfigError)?;
            false
        } else {
            check_mount_dir(&mountpoint)?
        };
        // A path option: the command line's, else the profile's with `~` expanded.
        let path = |cli: &Option<PathBuf>, prof: &Option<PathBuf>| {
            cli.clone()
                .or_else(|| prof.as_deref().map(profile::expand_home))
        };
        let user = args.user.as_deref().or(profile.user.as_deref());
        let secrets = path(&args.secrets_file, &profile.secrets_file);
        let credentials =
            credentials::resolve(&url, user, secrets.as_deref()).map_err(ConfigError)?;
        // A user name in the URL (`https://alice@host/dav/`) is a user, like --user (taken
        // by `resolve` above), and never goes into request URLs: the HTTP library would
        // send its own `Authorization` from it before any challenge, beside ours.
        let mut url = url;
        let _ = url.set_username("");
        let secs =
            |cli: Option<u64>, prof: Option<u64>, default: u64| cli.or(prof).unwrap_or(default);
        let flag = |cli: bool, prof: Option<bool>| cli || prof.unwrap_or(false);
        let mut client = ClientConfig::new(url.clone());
        client.credentials = credentials.clone();
        client.bearer = match args.token_command.clone().or(profile.token_command.clone()) {
            Some(cmd) => Some(BearerSource::Command(cmd)),
            None => std::env::var("DAVDRIVE_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty())
                .map(|t| BearerSource::Static(Secret::new(t.trim()))),
        };
        client.connect_timeout =
            Duration::from_secs(secs(args.connect_timeout, profile.connect_timeout, 10).max(1));
        client.progress_timeout =
            Duration::from_secs(secs(args.timeout, profile.timeout, 30).max(1));
        client.retry_budget = Duration::from_secs(secs(args.retry_time, profile.retry_time, 30));
        let listing_mib = args
            .max_listing_mib
            .or(profile.max_listing_mib)
            .unwrap_or(64);
        if listing_mib == 0 || listing_mib > 4096 {
            return Err(ConfigError("max-listing-mib: between 1 and 4096".into()));
        }
        client.max_listing_bytes = (listing_mib as usize) << 20;
        let ca = path(&args.ca_cert, &profile.ca_cert);
        if let Some(ca) = &ca {
            client.extra_ca_pem = Some(std::fs::read(ca).map_err(|e| {
                ConfigError(format!(
                    "cannot read the CA certificate {}: {e}",
                    ca.display()
                ))
            })?);
        }
        client.insecure = flag(args.insecure, profile.insecure);
        client.allow_http_redirect = flag(args.allow_http_redirect, profile.allow_http_redirect);
        let mut pins = Vec::new();
        for p in args.pin_cert.iter().chain(profile.pin_cert.iter()) {
            pins.push(crate::dav::tls::parse_pin(p).map_err(ConfigError)?);
        }
        if pins.is_empty()
            && url.scheme() == "https"
            && let Some(file) = trust::default_path()
        {
            pins = trust::pins_for(&file, &url).map_err(ConfigError)?;
        }
        client.pins = pins;
        let cert = path(&args.client_cert, &profile.client_cert);
        let key = path(&args.client_key, &profile.client_key);
        if let Some(cert) = cert {
            client.client_identity = Some(client_identity(&cert, key.as_deref())?);
        } else if key.is_some() {
            return Err(ConfigError("--client-key needs --client-cert".into()));
        }
        if let Some(p) = args.proxy.as_deref().or(profile.proxy.as_deref()) {
            let mut purl =
                Url::parse(p).map_err(|e| ConfigError(format!("proxy {p:?} is not a URL: {e}")))?;
            if purl.password().is_some() {
                return Err(ConfigError(
                    "put no password in the proxy URL: use DAVDRIVE_PROXY_PASSWORD".into(),
                ));
            }
            let user = (!purl.username().is_empty()).then(|| purl.username().to_owned());
            let _ = purl.set_username("");
            let credentials = match (user, std::env::var("DAVDRIVE_PROXY_PASSWORD")) {
                (Some(user), Ok(pw)) => Some(Credentials {
                    user,
                    password: Secret::new(pw),
                }),
                (Some(_), Err(_)) => {
                    return Err(ConfigError(
                        "the proxy URL names a user but DAVDRIVE_PROXY_PASSWORD is not set".into(),
                    ));
                }
                (None, _) => None,
            };
            client.proxy = Some(crate::dav::ProxyConfig {
                url: purl,
                credentials,
            });
        }
        let base = path(&args.cache_dir, &profile.cache_dir).unwrap_or_else(default_base);
        let key = mount_key(
            &redact_url(&url),
            credentials.as_ref().map(|c| c.user.as_str()),
        );
        let upload = match (args.upload, profile.upload) {
            (Some(UploadMode::Auto), _) | (None, Some(Upload::Auto) | None) => UploadPolicy::Auto,
            (Some(UploadMode::Stream), _) | (None, Some(Upload::Stream)) => UploadPolicy::Stream,
            (Some(UploadMode::Spool), _) | (None, Some(Upload::Spool)) => UploadPolicy::Spool,
        };
        let vfs = VfsConfig {
            dir_ttl: Duration::from_secs(secs(args.dir_cache_ttl, profile.dir_cache_ttl, 30)),
            kernel_ttl: Duration::from_secs(secs(args.kernel_ttl, profile.kernel_ttl, 1)),
            read_only: flag(args.read_only, profile.read_only),
            uid,
            gid,
            cache_dir: base.join(key),
            upload,
            keep_os_litter_local: !flag(args.upload_os_files, profile.upload_os_files),
            server_trash: args.trash == Some(crate::cli::TrashMode::Server),
            direct_reads: flag(args.direct_io, profile.direct_io),
            store_reads: !args.no_store_reads && profile.store_reads.unwrap_or(true),
            segment_size: (args.segment_size)
                .or(profile.segment_size)
                .unwrap_or(16)
                .saturating_mul(1 << 20),
            async_close: flag(args.async_close, profile.async_close),
            lock_files: flag(args.lock, profile.lock),
            prefetch_listings: (args.prefetch_listings)
                .or(profile.prefetch_listings)
                .unwrap_or(64),
            revalidate: Duration::from_secs(secs(args.revalidate, profile.revalidate, 2)),
            revalidate_for: Duration::from_secs(secs(
                args.revalidate_for,
                profile.revalidate_for,
                120,
            )),
            upload_retry: Duration::from_secs(secs(
                args.upload_retry_time,
                profile.upload_retry_time,
                60,
            )),
            read: ReadTuning {
                idle: Duration::from_secs(secs(args.read_idle, profile.read_idle, 20)),
                ..ReadTuning::default()
            },
            ..VfsConfig::default()
        };
        Ok(MountConfig {
            url,
            mountpoint,
            stale_mount,
            credentials,
            foreground: flag(args.foreground, profile.foreground),
            allow_other: flag(args.allow_other, profile.allow_other),
            client,
            vfs,
        })
    }
}

/// Checks a FUSE mount point: an existing directory. Returns whether it holds a mount whose
/// daemon was killed ("Transport endpoint is not connected"), which the frontend clears
/// away before mounting again.
fn check_mount_dir(mountpoint: &std::path::Path) -> Result<bool, ConfigError> {
    let md = std::fs::metadata(mountpoint);
    let stale_mount = md
        .as_ref()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotConnected);
    let md = match md {
        Ok(md) => Some(md),
        Err(_) if stale_mount => None,
        Err(e) => {
            return Err(ConfigError(format!(
                "mount point {}: {e}",
                mountpoint.display()
            )));
        }
    };
    if md.is_some_and(|md| !md.is_dir()) {
        return Err(ConfigError(format!(
            "mount point {} is not a directory",
            mountpoint.display()
        )));
    }
    Ok(stale_mount)
}
