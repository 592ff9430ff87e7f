//! TLS trust beyond the system store: an extra CA for one mount, the explicit `--insecure`
//! escape hatch, and the fingerprint of a certificate we refused, so the error message can
//! say exactly what to trust.

use std::time::Duration;

use sha2::{Digest, Sha256};
use url::Url;

/// The SHA-256 fingerprint of the certificate `url`'s server presents, as `AB:CD:…`.
///
/// Connects without verifying (nothing is sent but an OPTIONS without credentials) only to
/// show the user what they would be trusting; the answer is never used for anything else.
pub async fn peer_fingerprint(url: &Url) -> Option<String> {
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .tls_info(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .ok()?;
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    let resp = client
        .request(reqwest::Method::OPTIONS, u)
        .send()
        .await
        .ok()?;
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>()?;
    let der = info.peer_certificate()?;
    Some(fingerprint(der))
}

/// `AB:CD:…` of the SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprint_format() {
        let f = super::fingerprint(b"abc");
        assert!(f.starts_with("BA:78:16:BF"), "{f}");
        assert_eq!(f.len(), 32 * 3 - 1);
    }
}
