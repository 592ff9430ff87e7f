//! Kerberos (Negotiate/SPNEGO) end to end: a real KDC and Apache's mod_auth_gssapi on
//! loopback (support/kerberos.rs), real mounts, ordinary file operations.

use std::path::Path;

use crate::support::kerberos::{self, Realm, realm};
use crate::support::{Mount, have_fuse};

fn env_of(r: &Realm, ccache: &Path) -> Vec<(String, String)> {
    r.env(ccache)
}

fn mount(
    r: &Realm,
    sub: &str,
    ccache: &Path,
    extra: &[&str],
    more_env: &[(&str, &str)],
) -> Result<Mount, String> {
    let env = env_of(r, ccache);
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(more_env);
    Mount::try_new(&r.url(sub), extra, &all)
}

#[test]
fn kerberos_ticket_from_kinit_end_to_end() {
    let Some(r) = realm() else { return };
    if !have_fuse() {
        return;
    }
    let dir = r.fresh_dir("tickets");
    std::fs::write(dir.join("report.txt"), b"behind kerberos").expect("write");
    crate::support::apache::give_to_server(&dir);
    let cc = tempfile::tempdir().expect("tempdir");
    let ccache = cc.path().join("cc");
    r.kinit(&ccache);
    // No user name and no password: the ticket is the only credential. Traced at the finest
    // level, to check that no token reaches the log.
    let m = mount(r, "tickets", &ccache, &[], &[("RUST_LOG", "trace")])
        .unwrap_or_else(|e| panic!("{e}"));
    let data = crate::support::list_read_write_mkdir(
        &m,
        "report.txt",
        b"behind kerberos",
        3 << 20,
        "through Kerberos",
    );
    let trace = m.log();
    assert!(trace.contains("authenticating with Kerberos"), "{trace}");
    // The test realm's server is plain HTTP: said once, as for Basic and bearer tokens.
    assert_eq!(
        trace.matches("Kerberos over plain HTTP").count(),
        1,
        "{trace}"
    );
    // SPNEGO tokens are DER: base64 "YII…".
    assert!(
        !trace.contains("Negotiate YI") && !trace.contains("YII"),
        "a token was logged"
    );
    assert!(m.unmount().success());
    assert!(std::fs::read(dir.join("up.bin")).expect("stored") == data);
    assert!(dir.join("folder").is_dir());

    // One challenge, then every request carried a token the server accepted as alice.
    let log = r.requests("tickets");
    let refused: Vec<_> = log.iter().filter(|l| l.status == 401).collect();
    assert_eq!(refused.len(), 1, "{log:#?}");
    let principal = format!("{}@{}", kerberos::USER, kerberos::REALM);
    let authed = log.iter().filter(|l| l.status != 401).count();
    assert!(authed >= 5, "{log:#?}");
    assert!(
        log.iter()
            .filter(|l| l.status != 401)
            .all(|l| l.user == principal),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.method == "PUT" && l.path.ends_with("/up.bin") && l.status < 300)
    );
}

#[test]
fn kerberos_with_password_when_there_is_no_ticket() {
    let Some(r) = realm() else { return };
    if !have_fuse() {
        return;
    }
    let dir = r.fresh_dir("password");
    std::fs::write(dir.join("a.txt"), b"via password").expect("write");
    crate::support::apache::give_to_server(&dir);
    let cc = tempfile::tempdir().expect("tempdir");
    // A ticket cache that does not exist: no kinit was run.
    let ccache = cc.path().join("none");
    let principal = format!("{}@{}", kerberos::USER, kerberos::REALM);
    let m = mount(
        r,
        "password",
        &ccache,
        &["--user", &principal],
        &[("DAVDRIVE_PASSWORD", kerberos::PASSWORD)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read(m.path().join("a.txt")).expect("read"),
        b"via password"
    );
    assert!(m.unmount().success());
    // The ticket lived in memory only; the user's cache was not created.
    assert!(!ccache.exists());
    let log = r.requests("password");
    assert!(
        log.iter().any(|l| l.method == "GET" && l.user == principal),
        "{log:#?}"
    );
}

#[test]
fn kerberos_refusals_say_what_to_do() {
    let Some(r) = realm() else { return };
    if !have_fuse() {
        return;
    }
    r.fresh_dir("refused");
    let cc = tempfile::tempdir().expect("tempdir");
    let ccache = cc.path().join("none");
    // Neither a ticket nor a password.
    let err = mount(r, "refused", &ccache, &[], &[])
        .err()
        .expect("a mount without any credential must fail");
    assert!(err.contains("kinit"), "{err}");
    assert!(err.contains("No Kerberos credentials available"), "{err}");
    // A wrong password: refused, and nothing is mounted.
    let principal = format!("{}@{}", kerberos::USER, kerberos::REALM);
    let err = mount(
        r,
        "refused",
        &ccache,
        &["--user", &principal],
        &[("DAVDRIVE_PASSWORD", "not the password")],
    )
    .err()
    .expect("a wrong password must fail");
    assert!(err.contains("(wrong password)"), "{err}");
    assert!(!err.contains("not the password"), "{err}");
}
