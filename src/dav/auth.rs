//! Credentials and the challenge/response logic of HTTP authentication.
//!
//! Credentials are sent only to the origin of the mounted URL, and only after that origin has
//! challenged us once (a 401 with `WWW-Authenticate`); from then on they go out preemptively
//! so that a streamed body is not sent twice. Basic is implemented here; the other schemes
//! (Digest, NTLM, Negotiate, Bearer) come with the authentication issue.
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
