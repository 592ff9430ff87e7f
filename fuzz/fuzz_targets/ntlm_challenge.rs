//! The NTLM CHALLENGE parser on arbitrary bytes, and the AUTHENTICATE message built from
//! whatever parsed.
#![no_main]
use davdrive::dav::ntlm;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = ntlm::parse_challenge(data) {
        let m = ntlm::authenticate(&c, "CORP\\alice", "pw", "WS", &[0xaa; 8]);
        assert!(m.starts_with(b"NTLMSSP\0"));
    }
});
