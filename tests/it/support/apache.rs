//! Apache httpd 2.4 with mod_dav + mod_dav_fs, configured from scratch in a temp dir.
//!
//! `/redir/x` redirects (308) to `https://127.0.0.1:TLS_PORT/dav/x` as IIS's HTTP→HTTPS
//! rule does; `/downgrade/x` redirects (308) to plain `http://127.0.0.1:PORT/dav/x`. `/dav/` serves `docroot` without authentication; `/auth/` serves `authroot` behind Basic
//! authentication (user `alice`, password [`PASSWORD`]). The access log has one tab-separated
//! line per request: method, decoded path, status, bytes sent (headers included), Range,
//! Transfer-Encoding, bytes received.
//! Apache drops root for `www-data`, so test data is handed to that user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{START_TIMEOUT, free_port, have, spawn_server, wait_for_port};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "correct horse battery staple";

pub struct Apache {
    pub port: u16,
    /// HTTPS with a certificate for 127.0.0.1 ([`Apache::cert`]) issued by a test CA
    /// ([`Apache::ca`]) that no system trusts.
    pub tls_port: u16,
    /// `/auth/away/…` answers (after authentication) with a 307 to `http://localhost:` this
    /// port: another origin, where a test listens to check what reaches it.
    pub away_port: u16,
    /// Plain HTTP that redirects (308) every request to the same path on `tls_port`.
    pub upgrade_port: u16,
    /// HTTPS that demands a client certificate from the test CA (`dir/client.pem` with
    /// `dir/client.key`, or `dir/client.p12` with the password `p12-secret`).
    pub mtls_port: u16,
    pub cert: PathBuf,
    pub ca: PathBuf,
    pub dir: PathBuf,
    pub docroot: PathBuf,
    pub authroot: PathBuf,
    /// Served at `/digest/` behind Digest authentication (same user and password).
    pub digestroot: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
    _child: Mutex<Child>,
}

/// One logged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes_out: u64,
    pub range: String,
    /// The request's `Transfer-Encoding` (`chunked` for a streamed upload, `-` if none).
    pub transfer_encoding: String,
    /// Bytes received, request line and headers included.
    pub bytes_in: u64,
}

/// The shared Apache of this test binary, or `None` when it is not installed (outside CI).
pub fn apache() -> Option<&'static Apache> {
    static APACHE: OnceLock<Option<Apache>> = OnceLock::new();
    APACHE
        .get_or_init(|| {
            if !have("apache2") {
                return None;
            }
            Some(Apache::start())
        })
        .as_ref()
}

fn www_data() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for l in passwd.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.first() == Some(&"www-data")
            && let (Some(u), Some(g)) = (f.get(2), f.get(3))
            && let (Ok(u), Ok(g)) = (u.parse(), g.parse())
        {
            return (u, g);
        }
    }
    (33, 33)
}

/// Gives `path` (recursively) to the user Apache runs as.
pub fn give_to_server(path: &Path) {
    let (u, g) = www_data();
    let walk = walk(path);
    for p in walk {
        let _ = std::os::unix::fs::lchown(&p, Some(u), Some(g));
    }
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir()
        && let Ok(rd) = std::fs::read_dir(p)
    {
        for e in rd.flatten() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

/// Starts `apache2 -f conf` (with extra environment) and waits until it listens on `port`.
///
/// Apache's worker processes outlive a parent killed by PR_SET_PDEATHSIG. A small shell holds
/// our end of a pipe: when this test binary exits, the pipe closes and the shell stops Apache
/// gracefully, workers included, then removes the directory of `conf` (the server's temp
/// dir, which the static holding it never drops: each run left ~180 MB in /tmp).
pub fn run_apache(conf: &Path, port: u16, env: &[(&str, &Path)]) -> Child {
    let dir = conf
        .parent()
        .expect("the configuration lives in the server's directory");
    let mut child = spawn_server(
        "apache2",
        &["-f".as_ref(), conf.as_os_str(), "-DFOREGROUND".as_ref()],
        dir,
        env,
        Stdio::inherit(),
    );
    wait_for_port(port, &mut child, START_TIMEOUT);
    child
}

impl Apache {
    fn start() -> Apache {
        let tmp = tempfile::Builder::new()
            .prefix("davdrive-apache")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let docroot = dir.join("www");
        let authroot = dir.join("authwww");
        let digestroot = dir.join("digestwww");
        let run = dir.join("run");
        for d in [&docroot, &authroot, &digestroot, &run] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        {
            use md5::Digest as _;
            let realm = "davdrive digest";
            let ha1 = md5::Md5::digest(format!("{USER}:{realm}:{PASSWORD}").as_bytes());
            let hex: String = ha1.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::write(dir.join("htdigest"), format!("{USER}:{realm}:{hex}\n"))
                .expect("write htdigest");
        }
        give_to_server(&dir);
        let status = Command::new("htpasswd")
            .arg("-cbB")
            .arg(dir.join("htpasswd"))
            .arg(USER)
            .arg(PASSWORD)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("htpasswd (apache2-utils)");
        assert!(status.success(), "htpasswd failed");
        let port = free_port();
        let tls_port = free_port();
        let away_port = free_port();
        let upgrade_port = free_port();
        let mtls_port = free_port();
        std::fs::create_dir_all(authroot.join("away")).expect("mkdir away");
        // A test CA and a server certificate for 127.0.0.1 signed by it.
        let ca = dir.join("ca.pem");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let ext = dir.join("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write ext");
        let openssl = |args: &[&str]| {
            let st = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(st.success(), "openssl {args:?} failed");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=davdrive test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        // Certificates issued by the test CA: a key, a request, the signed certificate.
        let issue = |subject: &str, key: &str, cert: &str, ext: &str| {
            let csr = format!("{cert}.csr");
            openssl(&[
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", key, "-out",
                &csr,
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                cert,
            ]);
        };
        issue("/CN=127.0.0.1", "key.pem", "cert.pem", "server.ext");
        // A client certificate from the same CA, as PEM and as PKCS#12.
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .expect("write client ext");
        issue(
            "/CN=davdrive test client",
            "client.key",
            "client.pem",
            "client.ext",
        );
        openssl(&[
            "pkcs12",
            "-export",
            "-inkey",
            "client.key",
            "-in",
            "client.pem",
            "-out",
            "client.p12",
            "-passout",
            "pass:p12-secret",
        ]);
        let m = "/usr/lib/apache2/modules";
        let log = dir.join("access.log");
        let conf = format!(
            r#"ServerRoot "{dir}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile "{dir}/httpd.pid"
DefaultRuntimeDir "{run}"
ErrorLog "{dir}/error.log"
LogLevel warn
User www-data
Group www-data
LoadModule mpm_event_module {m}/mod_mpm_event.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule authn_core_module {m}/mod_authn_core.so
LoadModule authn_file_module {m}/mod_authn_file.so
LoadModule auth_basic_module {m}/mod_auth_basic.so
LoadModule auth_digest_module {m}/mod_auth_digest.so
LoadModule authz_user_module {m}/mod_authz_user.so
LoadModule alias_module {m}/mod_alias.so
LoadModule dav_module {m}/mod_dav.so
LoadModule dav_fs_module {m}/mod_dav_fs.so
LoadModule ssl_module {m}/mod_ssl.so
LoadModule rewrite_module {m}/mod_rewrite.so
LoadModule socache_shmcb_module {m}/mod_socache_shmcb.so
Listen 127.0.0.1:{tls_port}
SSLSessionCache "shmcb:{run}/ssl_scache(512000)"
Listen 127.0.0.1:{upgrade_port}
<VirtualHost 127.0.0.1:{upgrade_port}>
    Redirect 308 / https://127.0.0.1:{tls_port}/
</VirtualHost>
Listen 127.0.0.1:{mtls_port}
<VirtualHost 127.0.0.1:{mtls_port}>
    SSLEngine on
    SSLCertificateFile "{cert}"
    SSLCertificateKeyFile "{key}"
    SSLCACertificateFile "{dir}/ca.pem"
    SSLVerifyClient require
    SSLVerifyDepth 2
</VirtualHost>
<VirtualHost 127.0.0.1:{tls_port}>
    SSLEngine on
    SSLCertificateFile "{cert}"
    SSLCertificateKeyFile "{key}"
</VirtualHost>
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 5
EnableSendfile On
LimitRequestBody 0
Timeout 60
DavLockDB "{run}/davlock"
LogFormat "%m\t%U\t%>s\t%O\t%{{Range}}i\t%{{Transfer-Encoding}}i\t%I" davlog
CustomLog "{log}" davlog
DocumentRoot "{docroot}"
<Directory />
    AllowOverride None
    Require all denied
</Directory>
RedirectMatch 308 ^/redir/(.*)$ https://127.0.0.1:{tls_port}/dav/$1
RedirectMatch 308 ^/downgrade/(.*)$ http://127.0.0.1:{port}/dav/$1
Alias /dav/ "{docroot}/"
<Directory "{docroot}">
    Dav On
    Options None
    Require all granted
</Directory>
# A share without entity tags (as nginx and Orthanc): no ETag header, an empty getetag.
<Directory "{docroot}/no-etag">
    FileETag None
</Directory>
# A share that refuses deletes (as Orthanc's views may): 403 for every DELETE.
<Directory "{docroot}/no-delete">
    # mod_rewrite refuses to work in a directory without it.
    Options FollowSymLinks
    RewriteEngine On
    RewriteCond %{{REQUEST_METHOD}} =DELETE
    RewriteRule ^ - [F]
</Directory>
Alias /auth/ "{authroot}/"
<Directory "{authroot}">
    Dav On
    Options None
    AuthType Basic
    AuthName "davdrive test"
    AuthUserFile "{dir}/htpasswd"
    Require valid-user
</Directory>
<Directory "{authroot}/away">
    Options FollowSymLinks
    RewriteEngine On
    RewriteRule ^(.*)$ http://localhost:{away_port}/$1 [R=307,L]
</Directory>
Alias /digest/ "{digestroot}/"
<Directory "{digestroot}">
    Dav On
    Options None
    AuthType Digest
    AuthName "davdrive digest"
    AuthDigestProvider file
    AuthUserFile "{dir}/htdigest"
    Require valid-user
</Directory>
"#,
            dir = dir.display(),
            run = run.display(),
            docroot = docroot.display(),
            authroot = authroot.display(),
            digestroot = digestroot.display(),
            log = log.display(),
            cert = cert.display(),
            key = key.display(),
        );
        let conf_path = dir.join("httpd.conf");
        std::fs::write(&conf_path, conf).expect("write conf");
        let child = run_apache(&conf_path, port, &[]);
        Apache {
            port,
            tls_port,
            away_port,
            upgrade_port,
            mtls_port,
            cert,
            ca,
            dir,
            docroot,
            authroot,
            digestroot,
            log,
            _tmp: tmp,
            _child: Mutex::new(child),
        }
    }

    /// As [`Apache::settled_requests`], until `done` holds for them (at most 10 s; then the
    /// last answer, for the caller's assertion to show).
    pub fn settled_until(&self, prefix: &str, done: impl Fn(&[Logged]) -> bool) -> Vec<Logged> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reqs = self.settled_requests(prefix);
            if done(&reqs) || Instant::now() >= deadline {
                return reqs;
            }
        }
    }

    /// The requests under `prefix` once those of a mount that just started are logged (its
    /// PROPFIND of the mounted collection): the count to compare later ones with. Apache
    /// writes a log line after it sent the answer, so a request the mount already has an
    /// answer to may still be missing from the log.
    pub fn after_mount(&self, prefix: &str) -> Vec<Logged> {
        self.settled_until(prefix, |r| r.iter().any(|x| x.method == "PROPFIND"))
    }

    /// The requests under `prefix` once a PUT of `path` (as logged, e.g. `/dav/x/f.txt`) is
    /// among them.
    pub fn after_put(&self, prefix: &str, path: &str) -> Vec<Logged> {
        self.settled_until(prefix, |r| {
            r.iter().any(|x| x.method == "PUT" && x.path == path)
        })
    }

    /// `http://127.0.0.1:PORT/dav/<sub>/`.
    pub fn url(&self, sub: &str) -> String {
        if sub.is_empty() {
            format!("http://127.0.0.1:{}/dav/", self.port)
        } else {
            format!("http://127.0.0.1:{}/dav/{}/", self.port, sub)
        }
    }

    /// `https://127.0.0.1:TLS_PORT/dav/<sub>/` (self-signed).
    pub fn tls_url(&self, sub: &str) -> String {
        format!("https://127.0.0.1:{}/dav/{}/", self.tls_port, sub)
    }

    /// `http://127.0.0.1:PORT/digest/<sub>/` (Digest authentication).
    pub fn digest_url(&self, sub: &str) -> String {
        format!("http://127.0.0.1:{}/digest/{}/", self.port, sub)
    }

    /// `http://127.0.0.1:PORT/auth/<sub>/`.
    pub fn auth_url(&self, sub: &str) -> String {
        format!("http://127.0.0.1:{}/auth/{}/", self.port, sub)
    }

    /// A fresh directory `docroot/<name>` owned by the server user.
    pub fn fresh_dir(&self, name: &str) -> PathBuf {
        let p = self.docroot.join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        give_to_server(&p);
        p
    }

    /// Requests logged so far whose decoded path starts with `/dav/<prefix>`.
    ///
    /// Apache writes the line when the response is done; callers that just finished a
    /// request see it, as the log is unbuffered.
    pub fn requests(&self, prefix: &str) -> Vec<Logged> {
        let want = format!("/dav/{prefix}");
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                if f.len() < 5 {
                    return None;
                }
                Some(Logged {
                    method: f[0].to_owned(),
                    path: f[1].to_owned(),
                    status: f[2].parse().unwrap_or(0),
                    bytes_out: f[3].parse().unwrap_or(0),
                    range: f[4].to_owned(),
                    transfer_encoding: f.get(5).copied().unwrap_or("-").to_owned(),
                    bytes_in: f.get(6).and_then(|v| v.parse().ok()).unwrap_or(0),
                })
            })
            .filter(|r| r.path.starts_with(&want))
            .collect()
    }

    /// The requests under `prefix` once the requests whose answers we have are logged.
    ///
    /// Apache logs a request after the client has seen the response, so a count taken right
    /// after a file operation could miss its last request. This sends a sentinel request and
    /// waits (bounded) until it appears in the log; sentinels are not returned. Another
    /// worker may still be writing the line of a request answered just before: where a test
    /// knows what it expects, [`Apache::settled_until`] waits for that.
    pub fn settled_requests(&self, prefix: &str) -> Vec<Logged> {
        use std::io::{Read, Write};
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sentinel = format!("/dav/{prefix}/.sentinel-{n}");
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = write!(s, "HEAD {sentinel} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all = self.requests(prefix);
            if all.iter().any(|r| r.path == sentinel) {
                return all
                    .into_iter()
                    .filter(|r| !r.path.contains("/.sentinel-"))
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "Apache did not log the sentinel request"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
