//! TLS trust beyond the system store: an extra CA for one mount, pinned server
//! certificates (`--pin-cert`, `davdrive trust`), the explicit `--insecure` escape hatch, and
//! the fingerprint, subject and validity of a certificate, so that messages can say exactly
//! what to trust.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use sha2::{Digest, Sha256};
use url::Url;

/// `AB:CD:…` of the SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A client certificate and its private key (TLS client authentication), as PEM. Never
/// printed: its `Debug` says which certificate, not the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pem: Vec<u8>,
    subject: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl ClientIdentity {
    /// From PEM: the certificate (chain) and the key, in one file or two.
    pub fn from_pem(cert_pem: &[u8], key_pem: Option<&[u8]>) -> Result<Self, String> {
        let mut pem = cert_pem.to_vec();
        if let Some(k) = key_pem {
            pem.push(b'\n');
            pem.extend_from_slice(k);
        }
        Self::checked(pem)
    }

    /// From a PKCS#12 (.p12/.pfx) archive and its password.
    pub fn from_pkcs12(der: &[u8], password: &str) -> Result<Self, String> {
        let ks = p12_keystore::KeyStore::from_pkcs12(
            der,
            password,
            p12_keystore::Pkcs12ImportPolicy::Relaxed,
        )
        .map_err(|e| format!("cannot open the PKCS#12 file (wrong password?): {e}"))?;
        let (_, chain) = ks
            .private_key_chain()
            .ok_or("the PKCS#12 file holds no private key with its certificate")?;
        let mut pem = String::new();
        for c in chain.certs() {
            pem.push_str(&pem_block("CERTIFICATE", c.as_der()));
        }
        pem.push_str(&pem_block("PRIVATE KEY", chain.key().as_der()));
        Self::checked(pem.into_bytes())
    }

    fn checked(pem: Vec<u8>) -> Result<Self, String> {
        let mut id = ClientIdentity {
            pem,
            subject: String::new(),
        };
        let (certs, _) = id.rustls_parts()?;
        id.subject = summarize(certs[0].as_ref()).subject;
        Ok(id)
    }

    /// The certificate chain and key for rustls.
    pub fn rustls_parts(
        &self,
    ) -> Result<
        (
            Vec<CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        String,
    > {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("client certificate: {e}"))?;
        if certs.is_empty() {
            return Err("the client certificate file holds no certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(&self.pem)
            .map_err(|_| "no private key for the client certificate (give it with --client-key)")?;
        Ok((certs, key))
    }

    /// For reqwest.
    pub fn reqwest(&self) -> Result<reqwest::Identity, String> {
        reqwest::Identity::from_pem(&self.pem).map_err(|e| format!("client certificate: {e}"))
    }

    /// The certificate's subject, for messages.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// Parses a pin as given by the user: 64 hex digits, colons and case ignored.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
    let hex: String = pin.chars().filter(|c| *c != ':').collect();
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>();
    match bytes {
        Some(b) if b.len() == 32 => {
            let mut out = [0u8; 32];
            out.copy_from_slice(&b);
            Ok(out)
        }
        _ => Err(format!(
            "{pin:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
        )),
    }
}

/// A verifier for certificates the user vouched for: exactly the pinned ones (whoever issued
/// them, whatever name or dates they carry: that is what pinning a self-signed certificate
/// means), or, with no pins, anything (`--insecure`). The handshake signature is still
/// checked against the certificate's key, so only the holder of its private key gets through.
#[derive(Debug)]
struct VouchedVerifier {
    /// `None`: accept any certificate.
    pins: Option<Vec<[u8; 32]>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for VouchedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pins) = &self.pins else {
            return Ok(ServerCertVerified::assertion());
        };
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if pins.contains(&got) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate {} is not the pinned one",
                fingerprint(end_entity.as_ref())
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls configuration with a [`VouchedVerifier`].
fn vouched_config(
    pins: Option<Vec<[u8; 32]>>,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(VouchedVerifier {
        pins,
        provider: provider.clone(),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    with_identity(cfg, identity)
}

/// A rustls configuration that trusts only the pinned certificates (for
/// `reqwest::ClientBuilder::tls_backend_preconfigured`).
pub fn pinned_config(
    pins: &[[u8; 32]],
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, String> {
    let mut cfg = vouched_config(Some(pins.to_vec()), identity)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A rustls configuration for `--insecure` (used where reqwest's own switch cannot be).
pub fn accept_any_config(
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, String> {
    vouched_config(None, identity)
}

/// Finishes a rustls configuration with or without a client certificate.
pub fn with_identity(
    cfg: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, String> {
    match identity {
        None => Ok(cfg.with_no_client_auth()),
        Some(id) => {
            let (certs, key) = id.rustls_parts()?;
            cfg.with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
    }
}

/// What `davdrive trust` shows about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
}

/// Fetches the certificate `url`'s server presents (without trusting it) and summarises it.
pub async fn peer_certificate(url: &Url) -> Result<CertSummary, String> {
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .tls_info(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    let resp = client
        .request(reqwest::Method::OPTIONS, u)
        .send()
        .await
        .map_err(|e| format!("cannot reach the server: {e}"))?;
    let der = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .ok_or("the server presented no certificate (is the URL https?)")?;
    Ok(summarize(der))
}

/// Whether the server at `url` asks for a client certificate in its TLS handshake. A server
/// that requires one and gets none may answer with an alert or just hang up (TLS 1.3 sends
/// that alert after the handshake, and a reset can overtake it), so a failed mount asks this
/// separately to say what is missing. Any failure to find out is `false`.
pub async fn asks_for_client_cert(url: &Url) -> bool {
    #[derive(Debug, Default)]
    struct Asked(std::sync::atomic::AtomicBool);
    impl rustls::client::ResolvesClientCert for Asked {
        fn resolve(
            &self,
            _hints: &[&[u8]],
            _schemes: &[SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            None
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    if url.scheme() != "https" {
        return false;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(VouchedVerifier {
        pins: None,
        provider: provider.clone(),
    });
    let asked = Arc::new(Asked::default());
    let Ok(builder) =
        rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
    else {
        return false;
    };
    let cfg = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(asked.clone());
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let Ok(name) = ServerName::try_from(host.clone()) else {
        return false;
    };
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .ok()
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), handshake).await;
    asked.0.load(std::sync::atomic::Ordering::SeqCst)
}

/// The certificates `url`'s server presents, leaf first, as sent (without trusting them):
/// what `davdrive doctor` shows of the chain.
pub async fn peer_chain(url: &Url) -> Result<Vec<CertSummary>, String> {
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Err("no host in the URL".into());
    };
    if url.scheme() != "https" {
        return Err("not an https URL".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(VouchedVerifier {
        pins: None,
        provider: provider.clone(),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok::<_, String>(
            tls.get_ref()
                .1
                .peer_certificates()
                .unwrap_or_default()
                .iter()
                .map(|c| summarize(c.as_ref()))
                .collect(),
        )
    };
    tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .map_err(|_| "no TLS handshake within 10 s".to_string())?
}

/// Fingerprint, subject and issuer CN (or whole name), validity of a DER certificate. The
/// fields are best effort: a certificate we cannot parse still has its fingerprint.
pub fn summarize(der: &[u8]) -> CertSummary {
    let mut s = CertSummary {
        fingerprint: fingerprint(der),
        subject: "?".into(),
        issuer: "?".into(),
        not_before: "?".into(),
        not_after: "?".into(),
    };
    let _ = der::fill(der, &mut s);
    s
}

/// A minimal DER walk over an X.509 certificate: just enough for names and dates.
mod der {
    use super::CertSummary;

    /// One TLV: (tag, content, rest).
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        let (len, hdr) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *b.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let end = hdr.checked_add(len)?;
        Some((tag, b.get(hdr..end)?, b.get(end..)?))
    }

    /// The CN of a Name, else all its printable values joined.
    fn name(b: &[u8]) -> String {
        let mut parts = Vec::new();
        let mut cn = None;
        let mut rdns = b;
        while let Some((_, set, rest)) = tlv(rdns) {
            rdns = rest;
            let mut atvs = set;
            while let Some((_, atv, rest)) = tlv(atvs) {
                atvs = rest;
                let Some((0x06, oid, rest)) = tlv(atv) else {
                    continue;
                };
                let Some((_, value, _)) = tlv(rest) else {
                    continue;
                };
                // Shown on a terminal: control characters could redraw what the user reads.
                let text: String = String::from_utf8_lossy(value)
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect();
                if oid == [0x55, 0x04, 0x03] {
                    cn = Some(text.clone());
                }
                parts.push(text);
            }
        }
        cn.unwrap_or_else(|| parts.join(", "))
    }

    fn time(tag: u8, v: &[u8]) -> String {
        let t: String = String::from_utf8_lossy(v)
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        // UTCTime YYMMDDHHMMSSZ, GeneralizedTime YYYYMMDDHHMMSSZ.
        let full = if tag == 0x17 {
            let century = if t.get(..2).and_then(|y| y.parse::<u32>().ok()) < Some(50) {
                "20"
            } else {
                "19"
            };
            format!("{century}{t}")
        } else {
            t
        };
        match (
            full.get(..4),
            full.get(4..6),
            full.get(6..8),
            full.get(8..10),
            full.get(10..12),
        ) {
            (Some(y), Some(mo), Some(d), Some(h), Some(mi)) => format!("{y}-{mo}-{d} {h}:{mi} UTC"),
            _ => full,
        }
    }

    pub fn fill(der: &[u8], s: &mut CertSummary) -> Option<()> {
        let (_, cert, _) = tlv(der)?;
        let (_, tbs, _) = tlv(cert)?;
        let mut rest = tbs;
        // [0] version is optional.
        if rest.first() == Some(&0xa0) {
            rest = tlv(rest)?.2;
        }
        let (_, _serial, r) = tlv(rest)?;
        let (_, _sigalg, r) = tlv(r)?;
        let (_, issuer, r) = tlv(r)?;
        let (_, validity, r) = tlv(r)?;
        let (_, subject, _) = tlv(r)?;
        s.issuer = name(issuer);
        s.subject = name(subject);
        let (t1, nb, vr) = tlv(validity)?;
        let (t2, na, _) = tlv(vr)?;
        s.not_before = time(t1, nb);
        s.not_after = time(t2, na);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprint_format() {
        let f = super::fingerprint(b"abc");
        assert!(f.starts_with("BA:78:16:BF"), "{f}");
        assert_eq!(f.len(), 32 * 3 - 1);
    }

    #[test]
    fn pins_parse_with_or_without_colons() {
        let f = super::fingerprint(b"abc");
        let a = super::parse_pin(&f).expect("colons");
        let b = super::parse_pin(&f.replace(':', "").to_lowercase()).expect("plain");
        assert_eq!(a, b);
        assert!(super::parse_pin("AB:CD").is_err());
        assert!(super::parse_pin(&"zz".repeat(32)).is_err());
        assert!(super::parse_pin("é").is_err());
    }

    #[test]
    fn garbage_certificates_still_have_a_fingerprint() {
        for junk in [&b""[..], b"\x30", b"\x30\x84\xff\xff\xff\xff", &[0x30; 100]] {
            let s = super::summarize(junk);
            assert_eq!(s.fingerprint, super::fingerprint(junk));
        }
    }
}
