//! A Kerberos realm on loopback: MIT's KDC (`krb5kdc`) with its own database, and an Apache
//! whose `/krb/` is mod_dav behind mod_auth_gssapi (`AuthType GSSAPI`, SPNEGO), with the
//! service key for `HTTP/localhost` in a keytab. What an Active Directory domain with IIS's
//! Windows authentication looks like to a Kerberos client.
//!
//! Clients find the realm through [`Realm::krb5_conf`] (`KRB5_CONFIG`) and get tickets with
//! [`Realm::kinit`] into a ticket cache of the test's own (`KRB5CCNAME`); the machine's
//! Kerberos configuration is never touched. The access log's last field is the authenticated
//! user (`alice@DAVDRIVE.TEST`, or `-`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::apache::{give_to_server, run_apache};
use super::{START_TIMEOUT, free_port, have, in_ci, spawn_owned, wait_for_port};

pub const REALM: &str = "DAVDRIVE.TEST";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "Kerberos-2026!";

pub struct Realm {
    /// Apache's port; the URL's host must be `localhost` (the service principal's name).
    pub port: u16,
    pub krb5_conf: PathBuf,
    pub docroot: PathBuf,
    pub dir: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
    _kdc: Mutex<Child>,
    _apache: Mutex<Child>,
}

/// One logged request: method, decoded path, status, authenticated user (`-` if none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub user: String,
}

/// The shared realm of this test binary, or `None` outside CI when a part is missing.
pub fn realm() -> Option<&'static Realm> {
    static REALM_: OnceLock<Option<Realm>> = OnceLock::new();
    REALM_.get_or_init(Realm::start).as_ref()
}

const GSSAPI_MODULE: &str = "/usr/lib/apache2/modules/mod_auth_gssapi.so";

impl Realm {
    fn start() -> Option<Realm> {
        if !have("krb5kdc") || !have("kdb5_util") || !have("kinit") || !have("apache2") {
            return None;
        }
        if !Path::new(GSSAPI_MODULE).exists() {
            assert!(!in_ci(), "libapache2-mod-auth-gssapi is missing");
            eprintln!("SKIPPED: libapache2-mod-auth-gssapi is not installed");
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix("davdrive-krb")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let kdc_port = free_port();
        let port = free_port();
        let krb5_conf = dir.join("krb5.conf");
        let kdc_conf = dir.join("kdc.conf");
        let d = dir.display();
        std::fs::write(
            &krb5_conf,
            format!(
                "[libdefaults]
    default_realm = {REALM}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
[realms]
    {REALM} = {{
        kdc = 127.0.0.1:{kdc_port}
    }}
[domain_realm]
    localhost = {REALM}
"
            ),
        )
        .expect("write krb5.conf");
        std::fs::write(
            &kdc_conf,
            format!(
                "[kdcdefaults]
    kdc_listen = 127.0.0.1:{kdc_port}
    kdc_tcp_listen = 127.0.0.1:{kdc_port}
[realms]
    {REALM} = {{
        database_name = {d}/principal
        key_stash_file = {d}/stash
        acl_file = {d}/kadm5.acl
    }}
[logging]
    kdc = FILE:{d}/kdc.log
"
            ),
        )
        .expect("write kdc.conf");
        let krb = |program: &str, args: &[&str]| {
            let out = Command::new(program)
                .args(args)
                .env("KRB5_CONFIG", &krb5_conf)
                .env("KRB5_KDC_PROFILE", &kdc_conf)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e}"));
            assert!(
                out.status.success(),
                "{program} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        krb(
            "kdb5_util",
            &["create", "-s", "-r", REALM, "-P", "master-key-for-tests"],
        );
        krb(
            "kadmin.local",
            &["-q", &format!("addprinc -pw {PASSWORD} {USER}")],
        );
        krb("kadmin.local", &["-q", "addprinc -randkey HTTP/localhost"]);
        let keytab = dir.join("http.keytab");
        krb(
            "kadmin.local",
            &[
                "-q",
                &format!("ktadd -k {} HTTP/localhost", keytab.display()),
            ],
        );
        let mut kdc_cmd = Command::new("krb5kdc");
        kdc_cmd
            .args(["-n", "-P"])
            .arg(dir.join("kdc.pid"))
            .env("KRB5_CONFIG", &krb5_conf)
            .env("KRB5_KDC_PROFILE", &kdc_conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let mut kdc = spawn_owned(kdc_cmd).expect("spawn krb5kdc");
        wait_for_port(kdc_port, &mut kdc, START_TIMEOUT);

        let docroot = dir.join("www");
        let run = dir.join("run");
        for p in [&docroot, &run] {
            std::fs::create_dir_all(p).expect("mkdir");
        }
        give_to_server(&dir);
        let m = "/usr/lib/apache2/modules";
        let log = dir.join("access.log");
        let conf = format!(
            r#"ServerRoot "{d}"
ServerName localhost
Listen 127.0.0.1:{port}
PidFile "{d}/httpd.pid"
DefaultRuntimeDir "{run}"
ErrorLog "{d}/error.log"
LogLevel warn
User www-data
Group www-data
LoadModule mpm_event_module {m}/mod_mpm_event.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule authn_core_module {m}/mod_authn_core.so
LoadModule authz_user_module {m}/mod_authz_user.so
LoadModule auth_gssapi_module {GSSAPI_MODULE}
LoadModule alias_module {m}/mod_alias.so
LoadModule dav_module {m}/mod_dav.so
LoadModule dav_fs_module {m}/mod_dav_fs.so
DavLockDB "{run}/davlock"
KeepAlive On
LogFormat "%m\t%U\t%>s\t%u" krblog
CustomLog "{log}" krblog
<Directory />
    AllowOverride None
    Require all denied
</Directory>
Alias /krb/ "{docroot}/"
<Directory "{docroot}">
    Dav On
    Options None
    AuthType GSSAPI
    AuthName "Windows authentication"
    GssapiCredStore keytab:{keytab}
    Require valid-user
</Directory>
"#,
            run = run.display(),
            docroot = docroot.display(),
            log = log.display(),
            keytab = keytab.display(),
        );
        let conf_path = dir.join("httpd.conf");
        std::fs::write(&conf_path, conf).expect("write httpd.conf");
        let apache = run_apache(&conf_path, port, &[("KRB5_CONFIG", &krb5_conf)]);
        Some(Realm {
            port,
            krb5_conf,
            docroot,
            dir,
            log,
            _tmp: tmp,
            _kdc: Mutex::new(kdc),
            _apache: Mutex::new(apache),
        })
    }

    /// `http://localhost:PORT/krb/<sub>/`.
    pub fn url(&self, sub: &str) -> String {
        format!("http://localhost:{}/krb/{sub}/", self.port)
    }

    /// A fresh directory `docroot/<name>` owned by the server user.
    pub fn fresh_dir(&self, name: &str) -> PathBuf {
        let p = self.docroot.join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        give_to_server(&p);
        p
    }

    /// `kinit alice` into the ticket cache file `ccache` (the password on stdin).
    pub fn kinit(&self, ccache: &Path) {
        let mut child = Command::new("kinit")
            .arg(USER)
            .env("KRB5_CONFIG", &self.krb5_conf)
            .env("KRB5CCNAME", format!("FILE:{}", ccache.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kinit");
        if let Some(mut stdin) = child.stdin.take() {
            writeln!(stdin, "{PASSWORD}").expect("password to kinit");
        }
        let out = child.wait_with_output().expect("kinit");
        assert!(
            out.status.success(),
            "kinit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The environment a client of this realm runs with, its tickets in `ccache`.
    pub fn env(&self, ccache: &Path) -> Vec<(String, String)> {
        vec![
            ("KRB5_CONFIG".into(), self.krb5_conf.display().to_string()),
            ("KRB5CCNAME".into(), format!("FILE:{}", ccache.display())),
        ]
    }

    /// Requests logged so far under `/krb/<prefix>`.
    pub fn requests(&self, prefix: &str) -> Vec<Logged> {
        let want = format!("/krb/{prefix}");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() == 4 && f[1].starts_with(&want)).then(|| Logged {
                    method: f[0].to_owned(),
                    path: f[1].to_owned(),
                    status: f[2].parse().unwrap_or(0),
                    user: f[3].to_owned(),
                })
            })
            .collect()
    }
}
