//! Credentials and the challenge/response logic of HTTP authentication.
//!
//! Credentials are sent only to the origin of the mounted URL, and only after that origin has
//! challenged us once (a 401 with `WWW-Authenticate`); from then on they go out preemptively
//! so that a streamed body is not sent twice. Basic and Digest (RFC 7616) are implemented
//! here, and Bearer tokens (static, or printed by a command that is run again when the
//! server refuses the token).
//!
//! A [`Secret`] never prints: its `Debug` and `Display` say `<redacted>`.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A password or token. Cannot be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where bearer tokens come from.
#[derive(Clone, PartialEq, Eq)]
pub enum BearerSource {
    /// One token for the whole mount (`DAVDRIVE_TOKEN`).
    Static(Secret),
    /// A command run through the shell; its standard output (trimmed) is the token. Run when
    /// the server first asks for a token and again whenever it refuses one.
    Command(String),
}

impl fmt::Debug for BearerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BearerSource::Static(_) => f.write_str("Static(<redacted>)"),
            BearerSource::Command(c) => f.debug_tuple("Command").field(c).finish(),
        }
    }
}

/// The environment variables that may carry secrets. A background mount hands them to its
/// daemon over a pipe, not in its environment (readable in /proc for the life of the mount),
/// and commands davdrive runs never inherit them.
pub const SECRET_VARS: &[&str] = &[
    "DAVDRIVE_PASSWORD",
    "DAVDRIVE_TOKEN",
    "DAVDRIVE_PROXY_PASSWORD",
    "DAVDRIVE_CLIENT_CERT_PASSWORD",
];

impl BearerSource {
    /// The current token. Blocking: runs the command, if any (at most `limit`).
    pub fn fetch(&self, limit: std::time::Duration) -> Result<Secret, String> {
        let cmd = match self {
            BearerSource::Static(t) => return Ok(t.clone()),
            BearerSource::Command(c) => c,
        };
        #[cfg(windows)]
        let mut proc = {
            let mut p = std::process::Command::new("cmd");
            p.arg("/C").arg(cmd);
            p
        };
        #[cfg(not(windows))]
        let mut proc = {
            let mut p = std::process::Command::new("sh");
            p.arg("-c").arg(cmd);
            p
        };
        for var in SECRET_VARS {
            proc.env_remove(var);
        }
        let mut child = proc
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run the token command: {e}"))?;
        // Read both pipes on their own threads (a chatty command must not block on a full
        // pipe), keeping at most 64 KiB of each.
        let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                if let Some(mut p) = pipe {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = p.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let room = (64 * 1024usize).saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
                let _ = tx.send(kept);
            });
            rx
        };
        use std::io::Read;
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("the token command took longer than {limit:?}"));
                }
                Err(e) => return Err(format!("token command: {e}")),
            }
        };
        // A process the command left behind may hold the pipes open: do not wait for it.
        let grace = std::time::Duration::from_secs(2);
        let out_bytes = stdout.recv_timeout(grace).unwrap_or_default();
        let err_bytes = stderr.recv_timeout(grace).unwrap_or_default();
        if !status.success() {
            let err = String::from_utf8_lossy(&err_bytes);
            return Err(format!(
                "the token command failed ({status}): {}",
                err.lines().next().unwrap_or("")
            ));
        }
        let token = String::from_utf8(out_bytes)
            .map_err(|_| "the token command printed something that is not UTF-8".to_owned())?;
        let token = token.trim();
        if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
            return Err("the token command printed no usable token (one line, no spaces)".into());
        }
        Ok(Secret::new(token))
    }
}

/// A user name and password for the mounted server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: Secret,
}

impl Credentials {
    /// The value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.user, self.password.expose());
        format!("Basic {}", STANDARD.encode(raw.as_bytes()))
    }
}

/// The schemes offered in `WWW-Authenticate` headers, lower-cased (`basic`, `digest`, ...).
pub fn offered_schemes<'a>(headers: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out = Vec::new();
    for h in headers {
        // Each header may hold several challenges separated by commas; a scheme token is a
        // word not followed by '=' (parameters are `k=v`).
        for part in h.split(',') {
            let word = part.split_whitespace().next().unwrap_or("");
            if !word.is_empty() && !word.contains('=') {
                let w = word.to_ascii_lowercase();
                if !out.contains(&w) {
                    out.push(w);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let c = Credentials {
            user: "alice".into(),
            password: Secret::new("hunter2"),
        };
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert_eq!(c.basic_header(), "Basic YWxpY2U6aHVudGVyMg==");
    }

    #[test]
    fn schemes_are_found() {
        let v = offered_schemes(
            [
                "Basic realm=\"Orthanc Secure Area\"",
                "Digest realm=\"x\", qop=\"auth\", nonce=\"abc\", Negotiate",
            ]
            .into_iter(),
        );
        assert_eq!(v, vec!["basic", "digest", "negotiate"]);
    }
}

/// A parsed `WWW-Authenticate: Digest …` challenge (RFC 7616).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestChallenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: DigestAlgorithm,
    /// Whether the server offers `qop=auth` (we never use `auth-int`).
    pub qop_auth: bool,
    pub stale: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

/// Splits `k=v, k="v, with comma"` auth parameters; tolerant of spacing and case.
fn auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = r.char_indices();
            let mut end = r.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            rest = r.get(end..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        if !key.is_empty() {
            out.push((key, value));
        }
    }
    out
}

impl DigestChallenge {
    /// Parses the Digest challenge among `WWW-Authenticate` header values, if any.
    pub fn parse<'a>(headers: impl Iterator<Item = &'a str>) -> Option<DigestChallenge> {
        for h in headers {
            let t = h.trim_start();
            let Some(params) = t
                .get(..6)
                .filter(|p| p.eq_ignore_ascii_case("digest"))
                .map(|_| &t[6..])
            else {
                continue;
            };
            let mut realm = None;
            let mut nonce = None;
            let mut opaque = None;
            let mut algorithm = DigestAlgorithm::Md5;
            let mut qop_auth = false;
            let mut stale = false;
            let mut supported = true;
            for (k, v) in auth_params(params) {
                // Values are echoed in our Authorization header: control characters (CR, LF)
                // would corrupt it. No real server sends them (found by fuzzing).
                if v.chars().any(char::is_control) {
                    supported = false;
                }
                match k.as_str() {
                    "realm" => realm = Some(v),
                    "nonce" => nonce = Some(v),
                    "opaque" => opaque = Some(v),
                    "stale" => stale = v.eq_ignore_ascii_case("true"),
                    "qop" => qop_auth = v.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth")),
                    "algorithm" => {
                        algorithm = match v.to_ascii_uppercase().as_str() {
                            "MD5" => DigestAlgorithm::Md5,
                            "MD5-SESS" => DigestAlgorithm::Md5Sess,
                            "SHA-256" => DigestAlgorithm::Sha256,
                            "SHA-256-SESS" => DigestAlgorithm::Sha256Sess,
                            _ => {
                                supported = false;
                                DigestAlgorithm::Md5
                            }
                        }
                    }
                    _ => {}
                }
            }
            if let (Some(realm), Some(nonce), true) = (realm, nonce, supported) {
                return Some(DigestChallenge {
                    realm,
                    nonce,
                    opaque,
                    algorithm,
                    qop_auth,
                    stale,
                });
            }
        }
        None
    }

    fn hash(&self, s: &str) -> String {
        use md5::Digest as _;
        match self.algorithm {
            DigestAlgorithm::Md5 | DigestAlgorithm::Md5Sess => hex(&md5::Md5::digest(s.as_bytes())),
            DigestAlgorithm::Sha256 | DigestAlgorithm::Sha256Sess => {
                hex(&sha2::Sha256::digest(s.as_bytes()))
            }
        }
    }

    /// The `Authorization` value for `method` on `uri` (the request target), with nonce
    /// count `nc` and client nonce `cnonce`.
    pub fn authorization(
        &self,
        creds: &Credentials,
        method: &str,
        uri: &str,
        nc: u32,
        cnonce: &str,
    ) -> String {
        let mut ha1 = self.hash(&format!(
            "{}:{}:{}",
            creds.user,
            self.realm,
            creds.password.expose()
        ));
        if matches!(
            self.algorithm,
            DigestAlgorithm::Md5Sess | DigestAlgorithm::Sha256Sess
        ) {
            ha1 = self.hash(&format!("{ha1}:{}:{cnonce}", self.nonce));
        }
        let ha2 = self.hash(&format!("{method}:{uri}"));
        let nc = format!("{nc:08x}");
        let response = if self.qop_auth {
            self.hash(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce))
        } else {
            self.hash(&format!("{ha1}:{}:{ha2}", self.nonce))
        };
        let alg = match self.algorithm {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Md5Sess => "MD5-sess",
            DigestAlgorithm::Sha256 => "SHA-256",
            DigestAlgorithm::Sha256Sess => "SHA-256-sess",
        };
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut v = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", algorithm={alg}, response=\"{response}\"",
            q(&creds.user),
            q(&self.realm),
            q(&self.nonce),
            q(uri)
        );
        if self.qop_auth {
            v.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{}\"", q(cnonce)));
        }
        if let Some(o) = &self.opaque {
            v.push_str(&format!(", opaque=\"{}\"", q(o)));
        }
        v
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod digest_tests {
    use super::*;

    fn rfc7616(alg: &str) -> DigestChallenge {
        let h = format!(
            "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm={alg}, \
             nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
             opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
        );
        DigestChallenge::parse([h.as_str()].into_iter()).expect("challenge")
    }

    #[test]
    fn rfc7616_examples() {
        let creds = Credentials {
            user: "Mufasa".into(),
            password: Secret::new("Circle of Life"),
        };
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        for (alg, want) in [
            ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
            (
                "SHA-256",
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let c = rfc7616(alg);
            assert!(c.qop_auth);
            let v = c.authorization(&creds, "GET", "/dir/index.html", 1, cnonce);
            assert!(v.contains(&format!("response=\"{want}\"")), "{alg}: {v}");
            assert!(
                v.contains("nc=00000001") && v.contains("opaque=\"FQhe"),
                "{v}"
            );
            assert!(!v.contains("Circle of Life"));
        }
    }

    #[test]
    fn challenges_parse_leniently_and_refuse_unknown_algorithms() {
        let c = DigestChallenge::parse(
            [
                "Basic realm=\"x\"",
                "digest realm=\"r, with comma\",nonce=abc,stale=TRUE",
            ]
            .into_iter(),
        )
        .expect("digest");
        assert_eq!(c.realm, "r, with comma");
        assert_eq!(c.nonce, "abc");
        assert!(c.stale && !c.qop_auth);
        assert_eq!(c.algorithm, DigestAlgorithm::Md5);
        assert!(
            DigestChallenge::parse(["Digest realm=\"r\"".to_owned().as_str()].into_iter())
                .is_none()
        );
        assert!(
            DigestChallenge::parse(["Digest realm=r, nonce=n, algorithm=SHA-512-256"].into_iter())
                .is_none()
        );
        // Found by fuzzing: control characters would be echoed into our Authorization value.
        for hostile in [
            "Digest realm=\"a\\\"b\", nonce=unquoted\r\r92-256\"",
            "Digest realm=\"r\", nonce=\"n\nX-Injected: 1\"",
        ] {
            assert!(
                DigestChallenge::parse([hostile].into_iter()).is_none(),
                "{hostile:?}"
            );
        }
        for junk in [
            "Digest",
            "Digest ,,,",
            "Digest realm=\"unterminated",
            "Digest =x",
        ] {
            let _ = DigestChallenge::parse([junk].into_iter());
        }
    }
}
