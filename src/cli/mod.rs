//! The command line, defined once with clap. Every option has a long help; values are checked
//! and turned into a [`crate::config::MountConfig`] by the config module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub mod autostart;
pub mod davmount;
pub mod detach;
pub mod docs;
pub mod doctor;
pub mod fstab;
pub mod status;

/// Mount a WebDAV server as a local drive.
#[derive(Debug, Parser)]
#[command(name = "davdrive", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a WebDAV collection on a local directory.
    Mount(Box<MountArgs>),
    /// Unmount a davdrive mount, then wait (with a progress bar) until the uploads of files
    /// written to it are on the server and its daemon has exited.
    Unmount {
        /// The directory where the drive is mounted.
        mountpoint: PathBuf,
        /// Return once unmounted; the daemon finishes the uploads in the background.
        #[arg(long)]
        no_wait: bool,
        /// The cache directory the mount uses, when not the default.
        #[arg(long, env = "DAVDRIVE_CACHE_DIR", value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Forget cached listings so that changes made on the server by others show at once
    /// (the same as sending SIGHUP to the mount's daemon).
    Refresh {
        /// A folder (or file) in a mount: only listings at or below it go. Default: every
        /// listing of every mount.
        path: Option<PathBuf>,
        /// The cache directory the mounts use, when not the default.
        #[arg(long, env = "DAVDRIVE_CACHE_DIR", value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Store a user name and password for URL in the OS keyring (asked for, without echo);
    /// later mounts of URL use them.
    Login {
        /// The URL you mount.
        url: String,
        /// The user name (asked for when not given).
        #[arg(short, long, env = "DAVDRIVE_USER")]
        user: Option<String>,
    },
    /// Remove what `davdrive login` stored for URL.
    Logout {
        /// The URL given to `davdrive login`.
        url: String,
    },
    /// Show a server's certificate (fingerprint, subject, validity) and, once you confirm,
    /// trust exactly that certificate for every later mount of that server.
    Trust {
        /// The https URL of the server.
        url: String,
        /// Do not ask: trust the certificate shown.
        #[arg(long)]
        yes: bool,
    },
    /// Upload the files kept in the recovery folder of URL (or PROFILE) to where they were
    /// going, each only if the file did not change on the server since; say what became of
    /// each. Takes the credential, TLS and network options of `mount`.
    Recover {
        #[command(flatten)]
        args: Box<MountArgs>,
        /// Also upload files for which the server gives no strong entity tag, so that a
        /// change made there since cannot be detected.
        #[arg(long)]
        force: bool,
        /// Delete the kept files of URL instead of uploading them (nothing is sent).
        #[arg(long, conflicts_with = "force")]
        discard: bool,
    },
    /// Examine a server and say, in plain words, what it supports and what davdrive does
    /// about it: WebDAV class and methods, sign-in offered, the certificate, clock, round trip,
    /// ETags, ranges, chunked and partial PUT, preconditions, MOVE/COPY/LOCK, quota,
    /// sync-collection and throughput. Writes (then deletes) a few `.davdrive-doctor-*` files
    /// unless --read-only (then no throughput test either). Takes the credential, TLS and network options of `mount`.
    Doctor {
        #[command(flatten)]
        args: Box<MountArgs>,
        /// Print JSON (the facts and the advice), for a ticket or a script.
        #[arg(long)]
        json: bool,
    },
    /// Mount what a .davmount file (RFC 4709) describes under ~/davdrive/HOST-NAME (or use a
    /// running mount of it) and open the folder it names with the desktop's file manager.
    Open {
        /// The .davmount file.
        file: PathBuf,
        /// Only mount and print the path; open nothing.
        #[arg(long)]
        no_browse: bool,
    },
    /// Write the man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Where `man1/`, `bash/`, `zsh/` and `fish/` go.
        dir: PathBuf,
    },
    /// Mount a profile at every login: a systemd user unit where a user manager runs, else
    /// an XDG autostart entry.
    Autostart {
        #[command(subcommand)]
        action: AutostartAction,
    },
    /// Show every running mount (server state, uploads in flight and queued) and the files
    /// kept in recovery folders after failed uploads, with what to do about them.
    Status {
        /// The cache directory (default: $XDG_CACHE_HOME/davdrive or ~/.cache/davdrive).
        #[arg(long, env = "DAVDRIVE_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
        /// Refresh the display every second until interrupted.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AutostartAction {
    /// Mount PROFILE at every login from now on (and now, with systemd).
    Enable {
        /// A profile of the configuration file, with a mount point.
        profile: String,
        /// The profile file, when not the default.
        #[arg(long, env = "DAVDRIVE_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// How: a systemd user unit or an XDG autostart entry [default: systemd where a
        /// user manager runs].
        #[arg(long = "with", value_enum)]
        with: Option<AutostartKind>,
        /// Write and enable the unit, but do not start it now.
        #[arg(long)]
        no_start: bool,
    },
    /// Stop mounting PROFILE at login (a running systemd mount is stopped).
    Disable { profile: String },
    /// Say how PROFILE is mounted at login, and (systemd) what its mount is doing.
    Status { profile: String },
}

/// How a profile is mounted at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AutostartKind {
    Systemd,
    Xdg,
}

/// Where file managers' trash goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrashMode {
    None,
    Server,
}

/// How new files reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UploadMode {
    /// Stream while the application writes where a probe shows the server handles it.
    Auto,
    /// Always stream (chunked transfer encoding).
    Stream,
    /// Always keep a local copy and upload it with Content-Length on close.
    Spool,
}

#[derive(Debug, Args, Clone)]
pub struct MountArgs {
    /// The collection to mount, e.g. https://server/webdav/ (no password in it), or the
    /// name of a profile in the configuration file.
    #[arg(value_name = "URL|PROFILE")]
    pub url: String,
    /// An existing, empty directory to mount on (may come from the profile).
    pub mountpoint: Option<PathBuf>,
    /// The profile file (default: $XDG_CONFIG_HOME/davdrive/config.toml or
    /// ~/.config/davdrive/config.toml).
    #[arg(long, env = "DAVDRIVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Take the options of this profile, with the URL given first (for /etc/fstab entries:
    /// `URL DIR davdrive user,noauto,profile=NAME`).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,

    /// User name for the server. The password comes from DAVDRIVE_PASSWORD or the secrets
    /// file, never from the command line.
    #[arg(short, long, env = "DAVDRIVE_USER", help_heading = "Credentials")]
    pub user: Option<String>,
    /// A davfs2-style secrets file (`URL user password` per line); refused unless mode 0600.
    #[arg(long, env = "DAVDRIVE_SECRETS", help_heading = "Credentials")]
    pub secrets_file: Option<PathBuf>,

    /// A command that prints a bearer token (OAuth2 / OpenID Connect deployments), run
    /// through the shell when the server asks for a token and again when it refuses one. A
    /// static token can come from DAVDRIVE_TOKEN instead.
    #[arg(long, value_name = "CMD", help_heading = "Credentials")]
    pub token_command: Option<String>,

    /// Stay in the foreground (logs go to stderr) instead of detaching.
    #[arg(short, long, help_heading = "Mount")]
    pub foreground: bool,
    /// Refuse every write.
    #[arg(long, help_heading = "Mount")]
    pub read_only: bool,
    /// Let other users (and root) use the mount. Off by default: the mount is private.
    #[arg(long, help_heading = "Mount")]
    pub allow_other: bool,
    /// While the server cannot be reached (no network yet at login, the server restarting)
    /// or the keyring gives no password yet (locked), keep trying with backoff (up to a
    /// minute apart) instead of failing; used by `davdrive autostart`.
    #[arg(long, help_heading = "Mount")]
    pub wait_for_server: bool,
    /// Windows: the drive's label in Explorer [default: the URL's last folder and host].
    #[arg(long, value_name = "NAME", help_heading = "Mount")]
    pub volname: Option<String>,
    /// Windows: a local (fixed) drive instead of a network drive. A network drive, the
    /// default, is what Explorer expects of a server: no thumbnails fetched for every file,
    /// and deleting asks to delete for good instead of using a Recycle Bin it cannot have.
    #[arg(long, help_heading = "Mount")]
    pub fixed_drive: bool,

    /// Where journals, spool files and the recovery folder live.
    #[arg(
        long,
        env = "DAVDRIVE_CACHE_DIR",
        value_name = "DIR",
        help_heading = "Writing"
    )]
    pub cache_dir: Option<PathBuf>,
    /// How new files are uploaded [default: auto].
    #[arg(long, value_enum, help_heading = "Writing")]
    pub upload: Option<UploadMode>,
    /// Where deleting to the trash from a file manager goes: `none` tells GIO and KIO that
    /// the drive has no trash (they offer to delete for good, like on a network share, and
    /// KDE keeps a copy in your home trash); `server` lets them make `.Trash-UID` at the
    /// mount's root on the server, seen by every other client [default: none].
    #[arg(long, value_enum, help_heading = "Writing")]
    pub trash: Option<TrashMode>,
    /// Upload OS litter too (.DS_Store, ._*, Thumbs.db, desktop.ini); by default such files
    /// are kept locally for the lifetime of the mount.
    #[arg(long, help_heading = "Writing")]
    pub upload_os_files: bool,
    /// Files larger than this many MiB go up in resumable segments of this size, where the
    /// server takes partial PUTs (probed once); 0 sends every file in one request
    /// [default: 16].
    #[arg(long, value_name = "MIB", help_heading = "Writing")]
    pub segment_size: Option<u64>,
    /// close() returns once the written data is in the cache directory and the upload goes
    /// on behind it (at most 4 at once); fsync() still waits for the server. Faster copies
    /// of many small files; a failed upload is reported in the log and `davdrive status`
    /// instead of by close().
    #[arg(long, help_heading = "Writing")]
    pub async_close: bool,
    /// Lock a file on the server (WebDAV LOCK) while it is open for writing here, so that
    /// other clients see it locked; a file someone else locked then fails to open for
    /// writing (EBUSY). Locks expire on the server within 2 minutes if davdrive dies.
    #[arg(long, help_heading = "Writing")]
    pub lock: bool,

    /// Seconds a directory listing is trusted before it is fetched again [default: 30].
    #[arg(long, value_name = "SECONDS", help_heading = "Caching")]
    pub dir_cache_ttl: Option<u64>,
    /// When a folder is opened, fetch the listings of up to N of its subfolders ahead, 8 at
    /// a time (what file managers, `find` and `du` read next; one request per subfolder even
    /// when nobody goes there); 0: never [default: 64].
    #[arg(long, value_name = "N", help_heading = "Caching")]
    pub prefetch_listings: Option<usize>,
    /// Seconds between checks of the folders in use (opened or looked in lately, see
    /// --revalidate-for)
    /// and of files open for reading, so that changes made on the server by others show
    /// within about that (one small request per folder and open file per check); 0: never,
    /// changes then show when a listing expires [default: 2].
    #[arg(long, value_name = "SECONDS", help_heading = "Caching")]
    pub revalidate: Option<u64>,
    /// Seconds a folder counts as in use after it was last opened or looked in: checked by
    /// --revalidate until then, never after [default: 120].
    #[arg(long, value_name = "SECONDS", help_heading = "Caching")]
    pub revalidate_for: Option<u64>,
    /// Seconds the kernel may cache names and attributes before asking davdrive again
    /// [default: 1].
    #[arg(long, value_name = "SECONDS", help_heading = "Caching")]
    pub kernel_ttl: Option<u64>,
    /// Largest directory listing accepted, in MiB of the server's answer; a folder whose
    /// listing is larger fails to list (EIO, said once in the log) instead of taking the
    /// daemon's memory [default: 64].
    #[arg(long, value_name = "MIB", help_heading = "Caching")]
    pub max_listing_mib: Option<u64>,
    /// Read files opened read-only straight from the stream, bypassing the kernel's page
    /// cache: faster for large sequential reads (media, archives, disk images); slower for
    /// programs that read in small pieces and for files read again (nothing is cached).
    #[arg(long, help_heading = "Caching")]
    pub direct_io: bool,
    /// Do not keep the bytes of files read on local disk (by default they are kept in the
    /// cache directory, up to 256 MiB per mount, and read again from there while the file's
    /// version is unchanged).
    #[arg(long, help_heading = "Caching")]
    pub no_store_reads: bool,

    /// Also trust this CA (or self-signed server) certificate, PEM, for this mount only.
    #[arg(long, value_name = "FILE.pem", help_heading = "TLS")]
    pub ca_cert: Option<PathBuf>,
    /// Accept only the server certificate with this SHA-256 fingerprint (colons optional),
    /// whoever issued it: for self-signed certificates. `davdrive trust URL` stores a pin.
    #[arg(long, value_name = "SHA256", help_heading = "TLS")]
    pub pin_cert: Vec<String>,
    /// A client certificate for servers that demand one: PEM (certificate and key, or the
    /// key in --client-key) or PKCS#12 (.p12/.pfx, its password in
    /// DAVDRIVE_CLIENT_CERT_PASSWORD).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub client_cert: Option<PathBuf>,
    /// The private key of --client-cert, PEM, when it is in a file of its own.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub client_key: Option<PathBuf>,
    /// Do not check the server's certificate at all. Dangerous; prefer --ca-cert.
    #[arg(long, help_heading = "TLS")]
    pub insecure: bool,

    /// Follow a redirect from https:// to plain http:// (refused by default: everything,
    /// credentials included, would then cross the network readable).
    #[arg(long, help_heading = "TLS")]
    pub allow_http_redirect: bool,

    /// Send every request through this HTTP proxy, e.g. http://proxy:3128 (a user name may
    /// be given as http://user@proxy:3128, its password in DAVDRIVE_PROXY_PASSWORD). Without
    /// it, HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY apply; nothing is auto-discovered.
    #[arg(long, value_name = "URL", help_heading = "Network")]
    pub proxy: Option<String>,
    /// Seconds to wait for a TCP/TLS connection [default: 10].
    #[arg(long, value_name = "SECONDS", help_heading = "Network")]
    pub connect_timeout: Option<u64>,
    /// Seconds without any progress before a request fails (a transfer that keeps moving is
    /// never cut) [default: 30].
    #[arg(long, value_name = "SECONDS", help_heading = "Network")]
    pub timeout: Option<u64>,
    /// Seconds a file may stay open unread before its transfer is let go (connection closed,
    /// read-ahead freed); the next read goes on with a new request. 0: never [default: 20].
    #[arg(long, value_name = "SECONDS", help_heading = "Network")]
    pub read_idle: Option<u64>,
    /// Seconds during which a request is retried while the server answers 429, 502, 503 or
    /// 504 (honouring Retry-After); 0 turns retries off [default: 30].
    #[arg(long, value_name = "SECONDS", help_heading = "Network")]
    pub retry_time: Option<u64>,
    /// Seconds an upload keeps trying while the server cannot be reached (a dropped VPN, a
    /// server restarting), before close() fails; the data is then kept and uploaded by the
    /// mount once the server answers, unless the file changed there meanwhile. Reads still
    /// fail at once [default: 60].
    #[arg(long, value_name = "SECONDS", help_heading = "Writing")]
    pub upload_retry_time: Option<u64>,
}
