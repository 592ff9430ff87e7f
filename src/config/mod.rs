//! A validated mount configuration built from the command line and the environment.
//!
//! `MountConfig`'s `Debug` never shows a password: credentials hold a redacting `Secret`.

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::cli::{MountArgs, UploadMode};
use crate::credentials;
use crate::dav::client::redact_url;
use crate::dav::{ClientConfig, Credentials, DavError};
use crate::vfs::cache_dir::{default_base, mount_key};
use crate::vfs::{UploadPolicy, VfsConfig};

/// Everything needed to mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub url: Url,
    pub mountpoint: PathBuf,
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

impl MountConfig {
    pub fn from_args(args: &MountArgs, uid: u32, gid: u32) -> Result<Self, ConfigError> {
        let url = Url::parse(&args.url)
            .map_err(|e| ConfigError(format!("{:?} is not a URL: {e}", args.url)))?;
        if url.password().is_some() {
            return Err(ConfigError(
                "put no password in the URL: use DAVDRIVE_PASSWORD or a secrets file".into(),
            ));
        }
        let md = std::fs::metadata(&args.mountpoint)
            .map_err(|e| ConfigError(format!("mount point {}: {e}", args.mountpoint.display())))?;
        if !md.is_dir() {
            return Err(ConfigError(format!(
                "mount point {} is not a directory",
                args.mountpoint.display()
            )));
        }
        let credentials =
            credentials::resolve(&url, args.user.as_deref(), args.secrets_file.as_deref())
                .map_err(ConfigError)?;
        let mut client = ClientConfig::new(url.clone());
        client.credentials = credentials.clone();
        client.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
        client.progress_timeout = Duration::from_secs(args.timeout.max(1));
        client.retry_budget = Duration::from_secs(args.retry_time);
        if let Some(ca) = &args.ca_cert {
            client.extra_ca_pem = Some(std::fs::read(ca).map_err(|e| {
                ConfigError(format!(
                    "cannot read the CA certificate {}: {e}",
                    ca.display()
                ))
            })?);
        }
        client.insecure = args.insecure;
        let base = args.cache_dir.clone().unwrap_or_else(default_base);
        let key = mount_key(
            &redact_url(&url),
            credentials.as_ref().map(|c| c.user.as_str()),
        );
        let vfs = VfsConfig {
            dir_ttl: Duration::from_secs(args.dir_cache_ttl),
            kernel_ttl: Duration::from_secs(args.kernel_ttl),
            read_only: args.read_only,
            uid,
            gid,
            cache_dir: base.join(key),
            upload: match args.upload {
                UploadMode::Auto => UploadPolicy::Auto,
                UploadMode::Stream => UploadPolicy::Stream,
                UploadMode::Spool => UploadPolicy::Spool,
            },
            keep_os_litter_local: !args.upload_os_files,
            ..VfsConfig::default()
        };
        Ok(MountConfig {
            url,
            mountpoint: args.mountpoint.clone(),
            credentials,
            foreground: args.foreground,
            allow_other: args.allow_other,
            client,
            vfs,
        })
    }
}
