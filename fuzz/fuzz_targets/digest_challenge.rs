//! WWW-Authenticate parsing (scheme list and Digest challenges) on arbitrary header values,
//! and a response computed from whatever parsed.
#![no_main]
use davdrive::dav::auth::{DigestChallenge, offered_schemes};
use davdrive::dav::{Credentials, Secret};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Several header lines, as a server may send several WWW-Authenticate headers.
    let headers: Vec<&str> = text.split('\n').collect();
    let _ = offered_schemes(headers.iter().copied());
    if let Some(c) = DigestChallenge::parse(headers.iter().copied()) {
        let creds = Credentials {
            user: "alice".into(),
            password: Secret::new("pw"),
        };
        let v = c.authorization(&creds, "PROPFIND", "/dav/x", 1, "cnonce");
        assert!(
            !v.contains('\n') && !v.contains('\r'),
            "header injection: {v:?}"
        );
    }
});
