//! The other WebDAV servers users run, each started once per test binary on 127.0.0.1 and
//! serving a folder of a temp dir that tests seed and check directly on disk:
//!
//! - nginx with its `dav` module and `dav_ext` (PROPFIND, OPTIONS): no ETags in listings, no
//!   LOCK, MKCOL and collection MOVE/DELETE only with a trailing slash;
//! - lighttpd's `mod_webdav` (properties and locks in SQLite);
//! - `rclone serve webdav` (Go's x/net/webdav);
//! - WsgiDAV on cheroot (from PyPI, in a venv scripts/test makes);
//! - SabreDAV 1.8 (Debian's php-sabre-dav, the library inside Nextcloud and ownCloud) on
//!   PHP's built-in server, with its FSExt tree (MD5 ETags) and its Locks plugin.
//!
//! They run as the test process (root in CI), so files on disk need no hand-over. Apache,
//! Orthanc and dav-server have modules of their own; [`targets`] puts Apache with these for
//! the suite in `servers.rs`.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Mutex, OnceLock};

use super::{START_TIMEOUT, free_port, have, spawn_server, wait_for_port};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Apache,
    Nginx,
    Lighttpd,
    Rclone,
    WsgiDav,
    Sabre,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Apache,
        Kind::Nginx,
        Kind::Lighttpd,
        Kind::Rclone,
        Kind::WsgiDav,
        Kind::Sabre,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Apache => "apache",
            Kind::Nginx => "nginx",
            Kind::Lighttpd => "lighttpd",
            Kind::Rclone => "rclone",
            Kind::WsgiDav => "wsgidav",
            Kind::Sabre => "sabredav",
        }
    }
}

/// One running server: what it serves at `url("")` is the folder `root`.
pub struct Server {
    pub kind: Kind,
    pub port: u16,
    /// Served at [`Server::url`]`("")`.
    pub root: PathBuf,
    /// The URL path `root` is served at (`/dav/` or `/`).
    prefix: &'static str,
    /// The server's own directory (configuration, logs, state).
    pub dir: PathBuf,
    _child: Mutex<Option<Child>>,
}

impl Server {
    /// `http://127.0.0.1:PORT/<prefix><sub>/`.
    pub fn url(&self, sub: &str) -> String {
        if sub.is_empty() {
            format!("http://127.0.0.1:{}{}", self.port, self.prefix)
        } else {
            format!("http://127.0.0.1:{}{}{}/", self.port, self.prefix, sub)
        }
    }

    /// SabreDAV only: `<sub>` through its tree without ETags (`/plain/<sub>/`).
    pub fn plain_url(&self, sub: &str) -> String {
        assert_eq!(self.kind, Kind::Sabre, "only SabreDAV serves /plain/");
        format!("http://127.0.0.1:{}/plain/{sub}/", self.port)
    }

    /// A fresh, empty folder `<root>/<name>` (served at `url(name)`).
    pub fn fresh_dir(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        super::apache::give_to_server(&p);
        if self.kind != Kind::Apache {
            // Only Apache drops root; the others run as us.
            let _ = std::os::unix::fs::lchown(&p, Some(0), Some(0));
        }
        p
    }
}

/// The server of `kind`, started on first use; `None` when it is not installed (outside CI;
/// in CI a missing server fails the test).
pub fn server(kind: Kind) -> Option<&'static Server> {
    type Started = Vec<(Kind, Option<&'static Server>)>;
    static SERVERS: OnceLock<Mutex<Started>> = OnceLock::new();
    let all = SERVERS.get_or_init(|| Mutex::new(Vec::new()));
    let mut all = all.lock().expect("servers lock");
    if let Some((_, s)) = all.iter().find(|(k, _)| *k == kind) {
        return *s;
    }
    let started = start(kind).map(|s| &*Box::leak(Box::new(s)));
    all.push((kind, started));
    started
}

/// Every server installed here (all of them in CI), Apache first.
pub fn targets() -> Vec<&'static Server> {
    Kind::ALL.iter().filter_map(|k| server(*k)).collect()
}

/// WsgiDAV's launcher: `$WSGIDAV`, the venv scripts/test makes, or one on the PATH.
fn wsgidav() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("WSGIDAV").map(PathBuf::from),
        Some(PathBuf::from("/opt/davdrive-test/wsgidav/bin/wsgidav")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.is_file() {
            return Some(c);
        }
    }
    have("wsgidav").then(|| PathBuf::from("wsgidav"))
}

/// Where a server serves from, at which URL path, and how it is started.
type Launch = (PathBuf, &'static str, PathBuf, Vec<String>);

fn start(kind: Kind) -> Option<Server> {
    let needs = match kind {
        Kind::Apache => {
            let a = super::apache::apache()?;
            return Some(Server {
                kind,
                port: a.port,
                root: a.docroot.clone(),
                prefix: "/dav/",
                dir: a.dir.clone(),
                _child: Mutex::new(None),
            });
        }
        Kind::Nginx => "nginx",
        Kind::Lighttpd => "lighttpd",
        Kind::Rclone => "rclone",
        Kind::WsgiDav => "",
        Kind::Sabre => "php",
    };
    if !needs.is_empty() && !have(needs) {
        return None;
    }
    // A static's temp dir is never dropped: the wrapper of spawn_server removes it when the
    // test binary exits.
    let dir = tempfile::Builder::new()
        .prefix(&format!("davdrive-{}", kind.name()))
        .tempdir()
        .expect("tempdir")
        .keep();
    let port = free_port();
    let (root, prefix, program, args): (PathBuf, &'static str, PathBuf, Vec<String>) = match kind {
        Kind::Apache => unreachable!("handled above"),
        Kind::Nginx => {
            let www = dir.join("www");
            let root = www.join("dav");
            std::fs::create_dir_all(&root).expect("mkdir");
            std::fs::create_dir_all(dir.join("tmp")).expect("mkdir");
            let module = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so";
            if !Path::new(module).exists() {
                assert!(
                    !super::in_ci(),
                    "nginx's dav_ext module is missing: install libnginx-mod-http-dav-ext"
                );
                eprintln!("SKIPPED: nginx's dav_ext module is not installed");
                return None;
            }
            let d = dir.display();
            let conf = format!(
                "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;
load_module {module};
events {{}}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {www};
    client_max_body_size 0;
    location /dav/ {{
      dav_methods PUT DELETE MKCOL COPY MOVE;
      dav_ext_methods PROPFIND OPTIONS;
      create_full_put_path on;
      dav_access user:rw group:rw;
    }}
  }}
}}
",
                www = www.display()
            );
            let path = dir.join("nginx.conf");
            std::fs::write(&path, conf).expect("nginx.conf");
            (
                root,
                "/dav/",
                "nginx".into(),
                vec!["-c".into(), path.display().to_string()],
            )
        }
        Kind::Lighttpd => {
            let www = dir.join("www");
            let root = www.join("dav");
            std::fs::create_dir_all(&root).expect("mkdir");
            std::fs::create_dir_all(dir.join("tmp")).expect("mkdir");
            let d = dir.display();
            let conf = format!(
                r#"server.document-root = "{www}"
server.port = {port}
server.bind = "127.0.0.1"
server.modules = ("mod_webdav", "mod_accesslog")
server.upload-dirs = ("{d}/tmp")
server.errorlog = "{d}/error.log"
accesslog.filename = "{d}/access.log"
$HTTP["url"] =~ "^/dav($|/)" {{
  webdav.activate = "enable"
  webdav.is-readonly = "disable"
  webdav.sqlite-db-name = "{d}/webdav.db"
}}
"#,
                www = www.display()
            );
            let path = dir.join("lighttpd.conf");
            std::fs::write(&path, conf).expect("lighttpd.conf");
            (
                root,
                "/dav/",
                "lighttpd".into(),
                vec!["-D".into(), "-f".into(), path.display().to_string()],
            )
        }
        Kind::Rclone => {
            let root = dir.join("www");
            std::fs::create_dir_all(&root).expect("mkdir");
            (
                root.clone(),
                "/",
                "rclone".into(),
                vec![
                    "serve".into(),
                    "webdav".into(),
                    root.display().to_string(),
                    "--addr".into(),
                    format!("127.0.0.1:{port}"),
                    // No configuration file of the machine's, none written.
                    "--config".into(),
                    "/dev/null".into(),
                    // The tests change files behind its back, as another program on the
                    // server would: without this rclone shows its cached view for 5 minutes.
                    "--dir-cache-time".into(),
                    "0s".into(),
                    "--log-file".into(),
                    dir.join("rclone.log").display().to_string(),
                ],
            )
        }
        Kind::WsgiDav => {
            let exe = wsgidav()?;
            let root = dir.join("www");
            std::fs::create_dir_all(&root).expect("mkdir");
            (
                root.clone(),
                "/",
                exe,
                vec![
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    port.to_string(),
                    "--root".into(),
                    root.display().to_string(),
                    "--auth".into(),
                    "anonymous".into(),
                    "--no-config".into(),
                    "-q".into(),
                ],
            )
        }
        Kind::Sabre => {
            if !Path::new("/usr/share/php/Sabre/autoload.php").exists() {
                assert!(
                    !super::in_ci(),
                    "SabreDAV is missing: install php-sabre-dav"
                );
                eprintln!("SKIPPED: SabreDAV (php-sabre-dav) is not installed");
                return None;
            }
            let root = dir.join("www");
            std::fs::create_dir_all(&root).expect("mkdir");
            std::fs::create_dir_all(dir.join("state")).expect("mkdir");
            std::fs::write(dir.join("server.php"), SABRE_SERVER).expect("server.php");
            (
                root,
                "/",
                "php".into(),
                vec![
                    "-S".into(),
                    format!("127.0.0.1:{port}"),
                    dir.join("server.php").display().to_string(),
                ],
            )
        }
    };
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let state = dir.join("state");
    let env: Vec<(&str, &Path)> = vec![
        ("DAV_ROOT", root.as_path()),
        ("DAV_STATE", state.as_path()),
        // PHP's built-in server answers one request at a time unless told otherwise.
        ("PHP_CLI_SERVER_WORKERS", Path::new("8")),
    ];
    let log = std::fs::File::create(dir.join("stderr.log")).expect("stderr log");
    let mut child = spawn_server(
        program.to_str().expect("a UTF-8 program path"),
        &args,
        &dir,
        &env,
        Stdio::from(log),
    );
    wait_for_port(port, &mut child, START_TIMEOUT);
    Some(Server {
        kind,
        port,
        root,
        prefix,
        dir,
        _child: Mutex::new(Some(child)),
    })
}

/// SabreDAV's front controller: the FSExt tree (ETags from the content's MD5, properties in
/// `.sabredav` files it hides) at `/`, the plain FS tree (no ETags) at `/plain/`, locks in a
/// file.
const SABRE_SERVER: &str = r#"<?php
require_once 'Sabre/autoload.php';
// The same folder at /plain/ through the FS tree: no ETags at all.
$plain = strpos($_SERVER['REQUEST_URI'], '/plain/') === 0;
$root = $plain
    ? new \Sabre\DAV\FS\Directory(getenv('DAV_ROOT'))
    : new \Sabre\DAV\FSExt\Directory(getenv('DAV_ROOT'));
$server = new \Sabre\DAV\Server($root);
$server->setBaseUri($plain ? '/plain/' : '/');
$server->addPlugin(new \Sabre\DAV\Locks\Plugin(
    new \Sabre\DAV\Locks\Backend\File(getenv('DAV_STATE') . '/locks')));
$server->exec();
"#;
