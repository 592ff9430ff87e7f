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
