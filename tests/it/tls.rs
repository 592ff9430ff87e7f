//! TLS trust on a real HTTPS server (Apache mod_ssl with a certificate from a CA the test
//! makes):
//! refused by default with the fingerprint in the message, accepted with --ca-cert, and with
//! --insecure only with a loud warning.

use crate::support::apache::{self, apache};
use crate::support::{Mount, have_fuse};

fn openssl_fingerprint(cert: &std::path::Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.trim()
        .split('=')
        .nth(1)
        .expect("fingerprint line")
        .to_owned()
}

#[test]
fn untrusted_certificate_refused_then_trusted_with_ca_cert() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("tls");
    std::fs::write(dir.join("secret.txt"), b"over tls").expect("write");
    apache::give_to_server(&dir);
    let url = a.tls_url("tls");
    let err = Mount::try_new(&url, &[], &[])
        .err()
        .expect("untrusted certificate refused");
    assert!(err.contains("not trusted"), "{err}");
    let fp = openssl_fingerprint(&a.cert);
    assert!(
        err.contains(&fp),
        "message lacks the fingerprint {fp}:\n{err}"
    );
    assert!(err.contains("--ca-cert"), "{err}");

    let ca = a.ca.to_string_lossy().into_owned();
    let m = Mount::new(&url, &["--ca-cert", &ca]);
    assert_eq!(
        std::fs::read(m.path().join("secret.txt")).expect("read"),
        b"over tls"
    );
    assert!(m.unmount().success());

    let m = Mount::new(&url, &["--insecure"]);
    assert_eq!(
        std::fs::read(m.path().join("secret.txt")).expect("read"),
        b"over tls"
    );
    assert!(m.log().contains("NOT checked"), "no warning: {}", m.log());
    assert!(m.unmount().success());
}

#[test]
fn http_to_https_redirect_is_followed_for_propfind_and_put() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("redir");
    std::fs::write(dir.join("before.txt"), b"listed over https").expect("write");
    apache::give_to_server(&dir);
    let url = format!("http://127.0.0.1:{}/redir/redir/", a.port);
    let ca = a.ca.to_string_lossy().into_owned();
    let m = Mount::new(&url, &["--ca-cert", &ca]);
    let names: Vec<String> = std::fs::read_dir(m.path())
        .expect("listing")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["before.txt"]);
    let data = crate::support::pattern(3 << 20, 8);
    std::fs::write(m.path().join("put.bin"), &data).expect("PUT through the redirect");
    assert!(std::fs::read(dir.join("put.bin")).expect("on the server") == data);
    std::fs::create_dir(m.path().join("sub")).expect("MKCOL");
    assert!(dir.join("sub").is_dir());
    assert!(m.log().contains("redirects to https://"), "{}", m.log());
    assert!(m.unmount().success());
}

/// Issue 22, item 10: a redirect from https to plain http is refused, with a message that
/// names the option; with `--allow-http-redirect` it is followed. Before, the mount adopted
/// the http URL silently.
#[test]
fn a_redirect_from_https_to_http_is_refused_unless_allowed() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("downgrade");
    std::fs::write(dir.join("x.txt"), b"plain").expect("write");
    apache::give_to_server(&dir);
    let url = format!("https://127.0.0.1:{}/downgrade/downgrade/", a.tls_port);
    let ca = a.ca.to_string_lossy().into_owned();
    let err = match Mount::try_new(&url, &["--ca-cert", &ca], &[]) {
        Ok(_) => panic!("mounted through a redirect from https to http"),
        Err(e) => e,
    };
    assert!(err.contains("--allow-http-redirect"), "{err}");
    let m = Mount::new(&url, &["--ca-cert", &ca, "--allow-http-redirect"]);
    assert_eq!(
        std::fs::read(m.path().join("x.txt")).expect("read"),
        b"plain"
    );
    assert!(m.log().contains("mounting that URL"), "{}", m.log());
}

#[test]
fn credentials_never_follow_a_redirect_to_another_host() {
    use std::io::{BufRead, BufReader, Write};
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    // Another origin (localhost instead of 127.0.0.1) that records what it is sent.
    let listener = std::net::TcpListener::bind(("127.0.0.1", a.away_port)).expect("bind away");
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut head = String::new();
            let mut r = BufReader::new(&conn);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                head.push_str(&line);
                line.clear();
            }
            if let Ok(mut h) = seen.lock() {
                h.push(head);
            }
            let _ = (&conn).write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"away\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let url = a.auth_url("away");
    let err = Mount::try_new(
        &url,
        &["--user", apache::USER],
        &[("DAVDRIVE_PASSWORD", apache::PASSWORD)],
    )
    .err()
    .expect("a redirect to another host with credentials is refused");
    assert!(err.contains("another host"), "{err}");
    assert!(!err.contains(apache::PASSWORD), "{err}");
    let heads = heads.lock().expect("heads").clone();
    assert!(!heads.is_empty(), "the redirect was not followed at all");
    for h in &heads {
        assert!(
            !h.to_ascii_lowercase().contains("authorization"),
            "credentials reached another origin:\n{h}"
        );
    }
}

#[test]
fn a_trace_log_of_a_whole_session_holds_no_secret() {
    use base64::Engine as _;
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    for root in [&a.authroot, &a.digestroot] {
        let dir = root.join("trace");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("r.txt"), b"read me").expect("write");
        apache::give_to_server(&dir);
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        apache::USER,
        apache::PASSWORD
    ));
    for url in [a.auth_url("trace"), a.digest_url("trace")] {
        let m = Mount::try_new(
            &url,
            &["--user", apache::USER, "-vv"],
            &[
                ("DAVDRIVE_PASSWORD", apache::PASSWORD),
                ("RUST_LOG", "trace"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::read_dir(m.path()).map(|d| d.count());
        assert_eq!(
            std::fs::read(m.path().join("r.txt")).expect("read"),
            b"read me"
        );
        std::fs::write(m.path().join("w.txt"), b"written").expect("write");
        let _ = std::fs::read(m.path().join("missing.txt"));
        let log = m.log();
        assert!(m.unmount().success());
        assert!(log.lines().count() > 20, "not a trace log:\n{log}");
        for secret in [apache::PASSWORD, basic.as_str(), "response=\""] {
            assert!(!log.contains(secret), "{secret:?} in the log of {url}");
        }
        assert!(
            !log.to_ascii_lowercase().contains("authorization: "),
            "an Authorization header in the log of {url}"
        );
    }
}

/// Issue 22, item 9: a user name in the URL is taken as the user and stripped from request
/// URLs. Before, the HTTP library sent its own `Authorization` from it (the user with an
/// empty password) before any challenge; now exactly one header goes, and only after the
/// server asked.
#[test]
fn a_user_in_the_url_is_the_user_and_sends_one_authorization_after_the_challenge() {
    use crate::support::dav_server::DavServer;
    if !have_fuse() {
        return;
    }
    let s = DavServer::start_basic("alice", "s3cret");
    std::fs::write(s.root.join("doc.txt"), b"for alice").expect("write");
    let url = format!("http://alice@127.0.0.1:{}/", s.port);
    let m = Mount::try_new(&url, &[], &[("DAVDRIVE_PASSWORD", "s3cret")])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read(m.path().join("doc.txt")).expect("read"),
        b"for alice"
    );
    let auths = s.authorizations();
    assert_eq!(
        auths.first().map(String::as_str),
        Some(""),
        "an Authorization before the challenge: {auths:?}"
    );
    assert!(
        auths.iter().all(|a| !a.contains(" | ")),
        "two Authorization headers in one request: {auths:?}"
    );
    // "alice:" with an empty password, the HTTP library's own header.
    assert!(
        auths
            .iter()
            .all(|a| a.split(" | ").all(|h| h != "Basic YWxpY2U6")),
        "the URL's user sent without a password: {auths:?}"
    );
    assert!(
        auths.iter().any(|a| a == "Basic YWxpY2U6czNjcmV0"),
        "{auths:?}"
    );
    assert!(!m.log().contains("s3cret"), "the password in the log");
    assert!(m.unmount().success());
}

/// Issue 22, item 11: a background mount prints the start's warnings on the terminal (a
/// password or a bearer token over plain HTTP), not only in the daemon's log; and the log is
/// plain text (issue 21: it held colour escape codes).
#[test]
fn a_background_mount_shows_its_warnings_and_logs_plain_text() {
    use crate::support::dav_server::DavServer;
    use std::process::Command;
    use std::sync::{Arc, Mutex};
    if !have_fuse() || !crate::support::have("timeout") {
        return;
    }
    let basic = DavServer::start_basic("alice", "s3cret");
    let token = Arc::new(Mutex::new("tok".to_owned()));
    let bearer = DavServer::start_bearer(token);
    let conf = tempfile::tempdir().expect("tempdir");
    let file = conf.path().join("token");
    std::fs::write(&file, "tok\n").expect("token");
    let cmd = format!("cat '{}'", file.display());
    struct Case {
        url: String,
        args: Vec<String>,
        env: Vec<(&'static str, &'static str)>,
        warning: &'static str,
    }
    let cases = [
        Case {
            url: basic.url(),
            args: vec!["--user".into(), "alice".into()],
            env: vec![("DAVDRIVE_PASSWORD", "s3cret")],
            warning: "Basic authentication over plain HTTP",
        },
        Case {
            url: bearer.url(),
            args: vec!["--token-command".into(), cmd],
            env: vec![],
            warning: "bearer token goes over plain HTTP",
        },
    ];
    for Case {
        url,
        args,
        env,
        warning,
    } in cases
    {
        let cache = tempfile::tempdir().expect("cache");
        let mnt = tempfile::tempdir().expect("mnt");
        let mut c = Command::new("timeout");
        c.arg("60")
            .arg(env!("CARGO_BIN_EXE_davdrive"))
            .arg("mount")
            .arg(&url)
            .arg(mnt.path())
            .arg("--cache-dir")
            .arg(cache.path())
            .args(&args)
            .env_remove("DAVDRIVE_PASSWORD");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("davdrive mount");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let _unmount = Unmount(mnt.path().to_path_buf());
        assert!(out.status.success(), "{stderr}");
        // The warning comes when the server first challenges us: read a file to be sure the
        // mount is in use, then look (the start already listed the root, which challenged).
        assert!(
            stderr.contains(warning),
            "{url}: no warning on the terminal: {stderr:?}"
        );
        assert!(!stderr.contains("s3cret") && !stderr.contains("tok\n"));
        let log = stdout
            .lines()
            .find_map(|l| l.strip_prefix("davdrive: logging to "))
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| panic!("no log path in {stdout:?}"));
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(!text.contains('\u{1b}'), "colour codes in the log file");
    }
}

/// Issue 22, item 8: a background mount's daemon holds no secret in its environment or on
/// its command line (/proc shows both to the user's other processes for the life of the
/// mount), and a token command does not inherit secrets. Before, DAVDRIVE_PASSWORD stayed in
/// /proc/PID/environ.
#[test]
fn secrets_stay_out_of_the_daemons_environment_and_child_commands() {
    use crate::support::dav_server::DavServer;
    use std::process::Command;
    use std::sync::{Arc, Mutex};
    if !have_fuse() || !crate::support::have("timeout") {
        return;
    }
    let s = DavServer::start_basic("alice", "s3cret-pw");
    std::fs::write(s.root.join("doc.txt"), b"for alice").expect("write");
    let cache = tempfile::tempdir().expect("cache");
    let mnt = tempfile::tempdir().expect("mnt");
    let out = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_davdrive"))
        .arg("mount")
        .arg(s.url())
        .arg(mnt.path())
        .args(["--user", "alice", "--cache-dir"])
        .arg(cache.path())
        .env("DAVDRIVE_PASSWORD", "s3cret-pw")
        .output()
        .expect("davdrive mount");
    let _unmount = Unmount(mnt.path().to_path_buf());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(mnt.path().join("doc.txt")).expect("read"),
        b"for alice"
    );
    let daemons = crate::support::daemons_of(mnt.path());
    assert_eq!(daemons.len(), 1, "one daemon: {daemons:?}");
    let environ = std::fs::read(format!("/proc/{}/environ", daemons[0])).expect("environ");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", daemons[0])).expect("cmdline");
    for (what, bytes) in [("environment", &environ), ("command line", &cmdline)] {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains("s3cret-pw"),
            "the password in the daemon's {what}"
        );
    }
    // A token command inherits no secret (DAVDRIVE_PASSWORD set for no reason here).
    let token = Arc::new(Mutex::new("tok".to_owned()));
    let b = DavServer::start_bearer(token);
    let conf = tempfile::tempdir().expect("conf");
    let seen = conf.path().join("env");
    let cmd = format!("env > '{}'; echo tok", seen.display());
    let m = Mount::try_new(
        &b.url(),
        &["--token-command", &cmd, "--user", "alice"],
        &[("DAVDRIVE_PASSWORD", "s3cret-pw")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::read_dir(m.path()).expect("list").count();
    let env = std::fs::read_to_string(&seen).expect("the command ran");
    assert!(
        !env.contains("s3cret-pw"),
        "the token command inherited a secret"
    );
    assert!(m.unmount().success());
}

/// Unmounts a background mount when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_davdrive"))
            .arg("unmount")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn bearer_tokens_from_a_command_are_renewed_when_refused() {
    use crate::support::dav_server::DavServer;
    use std::sync::{Arc, Mutex};
    if !have_fuse() {
        return;
    }
    let token = Arc::new(Mutex::new("tok-1".to_owned()));
    let s = DavServer::start_bearer(token.clone());
    std::fs::write(s.root.join("doc.txt"), b"behind a token").expect("write");
    let conf = tempfile::tempdir().expect("tempdir");
    let file = conf.path().join("token");
    std::fs::write(&file, "tok-1\n").expect("token");
    let cmd = format!("cat '{}'", file.display());
    let m = Mount::new(&s.url(), &["--token-command", &cmd, "--dir-cache-ttl", "0"]);
    assert_eq!(
        std::fs::read(m.path().join("doc.txt")).expect("read with the token"),
        b"behind a token"
    );
    // The token expires: the server refuses it, the command is run again for a new one.
    std::fs::write(&file, "tok-2\n").expect("token");
    *token.lock().expect("lock") = "tok-2".into();
    std::fs::write(m.path().join("new.txt"), b"with a renewed token").expect("write");
    assert_eq!(
        std::fs::read(s.root.join("new.txt")).expect("stored"),
        b"with a renewed token"
    );
    let auths = s.authorizations();
    assert_eq!(
        auths.first().map(String::as_str),
        Some(""),
        "sent before a challenge"
    );
    assert!(auths.iter().any(|a| a == "Bearer tok-2"));
    assert!(
        !m.log().contains("tok-"),
        "a token in the log:\n{}",
        m.log()
    );
    assert!(m.unmount().success());

    // A command that fails is reported as such.
    let err = Mount::try_new(&s.url(), &["--token-command", "echo nope >&2; exit 3"], &[])
        .err()
        .expect("no token, no mount");
    assert!(err.contains("token command failed"), "{err}");
}

#[test]
fn pinned_certificates_and_davdrive_trust() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("pin");
    std::fs::write(dir.join("p.txt"), b"pinned").expect("write");
    apache::give_to_server(&dir);
    let url = a.tls_url("pin");
    let fp = openssl_fingerprint(&a.cert);
    let home = tempfile::tempdir().expect("config home");
    let xdg = home.path().to_string_lossy().into_owned();
    let env = [("XDG_CONFIG_HOME", xdg.as_str())];

    // The right pin: accepted although no trusted CA issued the certificate.
    let m = Mount::try_new(&url, &["--pin-cert", &fp], &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read(m.path().join("p.txt")).expect("read"),
        b"pinned"
    );
    assert!(m.unmount().success());

    // A wrong pin: refused, naming the certificate actually presented.
    let wrong = "00".repeat(32);
    let err = Mount::try_new(&url, &["--pin-cert", &wrong], &env)
        .err()
        .expect("wrong pin refused");
    assert!(err.contains("not the one pinned"), "{err}");
    assert!(err.contains(&fp), "{err}");
    assert!(err.contains("davdrive trust"), "{err}");

    // `davdrive trust` shows the certificate and stores the pin; later mounts need nothing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_davdrive"))
        .args(["trust", &url, "--yes"])
        .env("XDG_CONFIG_HOME", &xdg)
        .output()
        .expect("davdrive trust");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&fp), "{text}");
    assert!(text.contains("subject:     127.0.0.1"), "{text}");
    assert!(text.contains("issuer:      davdrive test CA"), "{text}");
    assert!(text.contains("valid until: 20"), "{text}");
    let m = Mount::try_new(&url, &[], &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read(m.path().join("p.txt")).expect("read"),
        b"pinned"
    );
    assert!(m.unmount().success());

    // Without an answer, `trust` stores nothing.
    let other = tempfile::tempdir().expect("other home");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_davdrive"))
        .args(["trust", &url])
        .env("XDG_CONFIG_HOME", other.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("davdrive trust");
    assert!(!out.status.success());
    assert!(!other.path().join("davdrive/trusted-certs").exists());
}

#[test]
fn proxies_from_the_option_and_from_the_environment() {
    use crate::support::http_proxy::HttpProxy;
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("proxied");
    std::fs::write(dir.join("x.txt"), b"via a proxy").expect("write");
    apache::give_to_server(&dir);

    // --proxy, plain HTTP: absolute-form requests through the proxy.
    let proxy = HttpProxy::start();
    let purl = format!("http://127.0.0.1:{}", proxy.port);
    let m = Mount::new(&a.url("proxied"), &["--proxy", &purl]);
    assert_eq!(
        std::fs::read(m.path().join("x.txt")).expect("read"),
        b"via a proxy"
    );
    std::fs::write(m.path().join("y.txt"), b"up").expect("write through the proxy");
    assert!(m.unmount().success());
    let lines = proxy.first_lines();
    let origin = format!("http://127.0.0.1:{}/dav/proxied/", a.port);
    assert!(
        lines.iter().any(|l| l.contains(&origin)),
        "nothing went through the proxy: {lines:?}"
    );
    assert_eq!(std::fs::read(dir.join("y.txt")).expect("stored"), b"up");

    // HTTPS_PROXY from the environment: a CONNECT tunnel for TLS.
    let proxy = HttpProxy::start();
    let purl = format!("http://127.0.0.1:{}", proxy.port);
    let ca = a.ca.to_string_lossy().into_owned();
    let tls_dir = a.fresh_dir("proxied-tls");
    std::fs::write(tls_dir.join("t.txt"), b"tunnelled").expect("write");
    apache::give_to_server(&tls_dir);
    let m = Mount::try_new(
        &a.tls_url("proxied-tls"),
        &["--ca-cert", &ca],
        &[("HTTPS_PROXY", purl.as_str()), ("NO_PROXY", "")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read(m.path().join("t.txt")).expect("read"),
        b"tunnelled"
    );
    assert!(m.unmount().success());
    let lines = proxy.first_lines();
    let connect = format!("CONNECT 127.0.0.1:{} ", a.tls_port);
    assert!(
        lines.iter().any(|l| l.starts_with(&connect)),
        "no CONNECT through the proxy: {lines:?}"
    );
}

#[test]
fn login_stores_the_password_in_the_keyutils_keyring() {
    use std::io::Write;
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.authroot.join("keyring");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("k.txt"), b"from the keyring").expect("write");
    apache::give_to_server(&dir);
    let url = a.auth_url("keyring");
    let davdrive = |args: &[&str], input: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_davdrive"))
            .args(args)
            .env("DAVDRIVE_KEYRING", "keyutils")
            .env_remove("DAVDRIVE_USER")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("davdrive");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("davdrive output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = davdrive(
        &["login", &url, "--user", apache::USER],
        &format!("{}\n", apache::PASSWORD),
    );
    assert!(ok, "{text}");
    assert!(!text.contains(apache::PASSWORD), "{text}");

    // The mount needs nothing but the URL.
    let env = [("DAVDRIVE_KEYRING", "keyutils")];
    let m = Mount::try_new(&url, &[], &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read(m.path().join("k.txt")).expect("read"),
        b"from the keyring"
    );
    assert!(m.unmount().success());

    let (ok, text) = davdrive(&["logout", &url], "");
    assert!(ok && text.contains("removed"), "{text}");
    let err = Mount::try_new(&url, &[], &env)
        .err()
        .expect("no credentials after logout");
    assert!(err.contains("credentials"), "{err}");
    let (ok, text) = davdrive(&["logout", &url], "");
    assert!(ok && text.contains("held nothing"), "{text}");
}

/// NTLM behind a proxy: each authenticated connection is a CONNECT tunnel through it, with
/// the proxy's login, given with --proxy or by HTTP_PROXY.
#[test]
fn ntlm_through_a_proxy_tunnels() {
    use crate::support::http_proxy::HttpProxy;
    use crate::support::ntlm::{self, NtlmServer};
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let Some(server) = NtlmServer::start(a.port) else {
        return;
    };
    let dir = a.fresh_dir("ntlm-proxy");
    std::fs::write(dir.join("via.txt"), b"tunnelled").expect("write");
    apache::give_to_server(&dir);
    let url = format!("http://127.0.0.1:{}/dav/ntlm-proxy/", server.port);
    let login = format!("{}\\{}", ntlm::DOMAIN, ntlm::USER);
    let tunnel = format!("CONNECT 127.0.0.1:{} HTTP/1.1", server.port);
    use base64::Engine as _;
    let proxy_login = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("px-user:px pass")
    );
    for via_env in [false, true] {
        let proxy = HttpProxy::start();
        let purl = format!("http://px-user@127.0.0.1:{}", proxy.port);
        let env_url = format!("http://px-user:px%20pass@127.0.0.1:{}", proxy.port);
        let (args, env): (Vec<&str>, Vec<(&str, &str)>) = if via_env {
            (
                vec!["--user", &login],
                vec![
                    ("DAVDRIVE_PASSWORD", ntlm::PASSWORD),
                    ("HTTP_PROXY", &env_url),
                ],
            )
        } else {
            (
                vec!["--user", &login, "--proxy", &purl],
                vec![
                    ("DAVDRIVE_PASSWORD", ntlm::PASSWORD),
                    ("DAVDRIVE_PROXY_PASSWORD", "px pass"),
                ],
            )
        };
        let m = Mount::try_new(&url, &args, &env)
            .unwrap_or_else(|e| panic!("{e}\n{:?}", server.log_lines()));
        assert_eq!(
            std::fs::read(m.path().join("via.txt")).expect("read through the tunnel"),
            b"tunnelled"
        );
        let name = format!("up-{via_env}.bin");
        let data = crate::support::pattern(1 << 20, 5);
        std::fs::write(m.path().join(&name), &data).expect("write through the tunnel");
        assert!(m.unmount().success());
        assert!(std::fs::read(dir.join(&name)).expect("stored") == data);
        let lines = proxy.lines_with_login();
        assert!(
            lines.contains(&(tunnel.clone(), proxy_login.clone())),
            "no tunnel with the proxy's login (env: {via_env}): {lines:?}"
        );
    }
    assert!(
        server
            .log_lines()
            .iter()
            .any(|l| l.starts_with("verified alice CORP")),
        "{:?}",
        server.log_lines()
    );
}

#[test]
fn ntlm_windows_authentication_end_to_end() {
    use crate::support::ntlm::{self, NtlmServer};
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let Some(server) = NtlmServer::start(a.port) else {
        return;
    };
    let dir = a.fresh_dir("ntlm");
    std::fs::write(dir.join("report.txt"), b"behind windows auth").expect("write");
    apache::give_to_server(&dir);
    let url = format!("http://127.0.0.1:{}/dav/ntlm/", server.port);
    let login = format!("{}\\{}", ntlm::DOMAIN, ntlm::USER);
    let m = Mount::try_new(
        &url,
        &["--user", &login],
        &[("DAVDRIVE_PASSWORD", ntlm::PASSWORD)],
    )
    .unwrap_or_else(|e| panic!("{e}\n{:?}", server.log_lines()));
    let data = crate::support::list_read_write_mkdir(
        &m,
        "report.txt",
        b"behind windows auth",
        2 << 20,
        "through NTLM",
    );
    assert!(m.unmount().success());
    assert!(std::fs::read(dir.join("up.bin")).expect("stored") == data);
    assert!(dir.join("folder").is_dir());

    let log = server.log_lines();
    let verified = log
        .iter()
        .filter(|l| l.starts_with("verified alice CORP"))
        .count();
    let requests = log.iter().filter(|l| l.starts_with("request ")).count();
    assert!(verified >= 1, "{log:#?}");
    assert!(!log.iter().any(|l| l.starts_with("refused")), "{log:#?}");
    // Connections stay authenticated: far fewer handshakes than requests.
    assert!(
        requests > 2 * verified,
        "{verified} handshakes for {requests} requests"
    );

    // The same over HTTPS, as IIS serves it, with the test CA trusted for this mount.
    let key = a.dir.join("key.pem");
    if let Some(tls) = NtlmServer::start_tls(a.port, &a.cert, &key) {
        let url = format!("https://127.0.0.1:{}/dav/ntlm/", tls.port);
        let ca = a.ca.to_string_lossy().into_owned();
        let m = Mount::try_new(
            &url,
            &["--user", &login, "--ca-cert", &ca],
            &[("DAVDRIVE_PASSWORD", ntlm::PASSWORD)],
        )
        .unwrap_or_else(|e| panic!("{e}\n{:?}", tls.log_lines()));
        assert_eq!(
            std::fs::read(m.path().join("report.txt")).expect("read over https"),
            b"behind windows auth"
        );
        assert!(m.unmount().success());
        assert!(
            tls.log_lines()
                .iter()
                .any(|l| l.starts_with("verified alice CORP")),
            "{:?}",
            tls.log_lines()
        );
    }

    // A server whose OPTIONS is anonymous: the handshake moves to a PROPFIND.
    if let Some(anon) = NtlmServer::start_anonymous_options(a.port) {
        let url = format!("http://127.0.0.1:{}/dav/ntlm/", anon.port);
        let m = Mount::try_new(
            &url,
            &["--user", &login],
            &[("DAVDRIVE_PASSWORD", ntlm::PASSWORD)],
        )
        .unwrap_or_else(|e| panic!("{e}\n{:?}", anon.log_lines()));
        assert_eq!(
            std::fs::read(m.path().join("report.txt")).expect("read"),
            b"behind windows auth"
        );
        assert!(m.unmount().success());
        assert!(
            anon.log_lines()
                .iter()
                .any(|l| l.starts_with("verified alice CORP")),
            "{:?}",
            anon.log_lines()
        );
    }

    // A wrong password is refused with a message that says so.
    let err = Mount::try_new(&url, &["--user", &login], &[("DAVDRIVE_PASSWORD", "wrong")])
        .err()
        .expect("wrong password refused");
    assert!(err.contains("NTLM authentication failed"), "{err}");
    assert!(!err.contains("wrong\""), "{err}");
}

#[test]
fn client_certificates_pem_and_pkcs12() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("mtls");
    std::fs::write(dir.join("m.txt"), b"mutual tls").expect("write");
    apache::give_to_server(&dir);
    let url = format!("https://127.0.0.1:{}/dav/mtls/", a.mtls_port);
    let ca = a.ca.to_string_lossy().into_owned();
    let file = |n: &str| a.dir.join(n).to_string_lossy().into_owned();

    let err = Mount::try_new(&url, &["--ca-cert", &ca], &[])
        .err()
        .expect("no client certificate, no mount");
    assert!(err.contains("wants a client certificate"), "{err}");

    let m = Mount::new(
        &url,
        &[
            "--ca-cert",
            &ca,
            "--client-cert",
            &file("client.pem"),
            "--client-key",
            &file("client.key"),
        ],
    );
    assert_eq!(
        std::fs::read(m.path().join("m.txt")).expect("read"),
        b"mutual tls"
    );
    assert!(m.unmount().success());

    let p12 = file("client.p12");
    let m = Mount::try_new(
        &url,
        &["--ca-cert", &ca, "--client-cert", &p12],
        &[("DAVDRIVE_CLIENT_CERT_PASSWORD", "p12-secret")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read(m.path().join("m.txt")).expect("read"),
        b"mutual tls"
    );
    assert!(m.unmount().success());

    let err = Mount::try_new(
        &url,
        &["--ca-cert", &ca, "--client-cert", &p12],
        &[("DAVDRIVE_CLIENT_CERT_PASSWORD", "wrong")],
    )
    .err()
    .expect("wrong PKCS#12 password");
    assert!(err.contains("wrong password?"), "{err}");
    assert!(!err.contains("p12-secret"), "{err}");
}

#[test]
fn certificate_errors_say_what_is_wrong() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    a.fresh_dir("names");
    let ca = a.ca.to_string_lossy().into_owned();
    // Trusted issuer, wrong name: the certificate is for 127.0.0.1, not localhost.
    let url = format!("https://localhost:{}/dav/names/", a.tls_port);
    let err = Mount::try_new(&url, &["--ca-cert", &ca], &[])
        .err()
        .expect("name mismatch refused");
    assert!(
        err.contains("not valid for localhost (it is for 127.0.0.1)"),
        "{err}"
    );

    // A server that demands a client certificate we do not have.
    a.fresh_dir("nocert");
    let url = format!("https://127.0.0.1:{}/dav/nocert/", a.mtls_port);
    let err = Mount::try_new(&url, &["--ca-cert", &ca], &[])
        .err()
        .expect("no client certificate");
    assert!(err.contains("--client-cert"), "{err}");
    // The hint does not depend on how the server hangs up: the handshake itself is asked
    // whether a client certificate is wanted.
    let rt = crate::support::rt();
    let wants = |u: &str| {
        let u = url::Url::parse(u).expect("url");
        rt.block_on(davdrive::dav::tls::asks_for_client_cert(&u))
    };
    assert!(wants(&url), "the mTLS server asks for a client certificate");
    assert!(
        !wants(&a.tls_url("names")),
        "the plain TLS server does not ask for one"
    );
}

#[test]
fn authentication_errors_say_what_to_do() {
    use crate::support::dav_server::DavServer;
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    a.fresh_dir("x");
    let url = a.auth_url("");
    let err = Mount::try_new(&url, &[], &[])
        .err()
        .expect("no credentials");
    assert!(err.contains("davdrive login"), "{err}");
    let err = Mount::try_new(
        &url,
        &["--user", apache::USER],
        &[("DAVDRIVE_PASSWORD", "not it")],
    )
    .err()
    .expect("wrong password");
    assert!(err.contains("refused the user name and password"), "{err}");
    assert!(!err.contains("not it"), "{err}");
    let token = std::sync::Arc::new(std::sync::Mutex::new("t".to_owned()));
    let s = DavServer::start_bearer(token);
    let err = Mount::try_new(&s.url(), &[], &[]).err().expect("no token");
    assert!(err.contains("--token-command"), "{err}");
}
