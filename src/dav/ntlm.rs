//! NTLM (MS-NLMP) messages for IIS "Windows authentication": the NEGOTIATE message we send,
//! the server's CHALLENGE we parse, and the AUTHENTICATE message with an NTLMv2 response.
//! LM and NTLMv1 responses are never produced.
//!
//! This module is pure: bytes in, bytes out. The HTTP side (the `WWW-Authenticate: NTLM`
//! exchange, kept on one connection) lives in the client. The CHALLENGE parser takes
//! anything a server (or an attacker in its place) sends and answers with an error, never a
//! panic; it is fuzzed (`fuzz/fuzz_targets/ntlm_challenge.rs`).

use hmac_md5::hmac_md5;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

pub const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
pub const REQUEST_TARGET: u32 = 0x0000_0004;
pub const NEGOTIATE_NTLM: u32 = 0x0000_0200;
pub const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
pub const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
pub const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
pub const NEGOTIATE_128: u32 = 0x2000_0000;
pub const NEGOTIATE_56: u32 = 0x8000_0000;

/// What we ask for: Unicode strings, NTLM with extended session security (NTLMv2 in
/// practice), target information for the NTLMv2 blob.
pub const CLIENT_FLAGS: u32 = NEGOTIATE_UNICODE
    | REQUEST_TARGET
    | NEGOTIATE_NTLM
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_TARGET_INFO
    | NEGOTIATE_128
    | NEGOTIATE_56;

/// AV pair ids (MS-NLMP 2.2.2.1) we look at.
const AV_EOL: u16 = 0;
const AV_TIMESTAMP: u16 = 7;

/// Largest CHALLENGE message accepted (real ones are a few hundred bytes).
const MAX_CHALLENGE: usize = 64 * 1024;

/// A parsed CHALLENGE_MESSAGE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub flags: u32,
    pub server_challenge: [u8; 8],
    /// The raw AV pairs (TargetInfo), echoed inside the NTLMv2 response.
    pub target_info: Vec<u8>,
    /// MsvAvTimestamp from TargetInfo, when the server sent one.
    pub timestamp: Option<[u8; 8]>,
    /// The server's target (domain) name, decoded.
    pub target_name: String,
}

/// Why a CHALLENGE message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed NTLM challenge: {0}")]
pub struct NtlmError(pub &'static str);

/// The NEGOTIATE_MESSAGE (type 1): no domain or workstation supplied.
pub fn negotiate() -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&CLIENT_FLAGS.to_le_bytes());
    // DomainNameFields and WorkstationFields: empty, offset after the fixed part.
    for _ in 0..2 {
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&32u32.to_le_bytes());
    }
    m
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, NtlmError> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or(NtlmError("truncated"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, NtlmError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(NtlmError("truncated"))
}

/// The payload a `(len, maxlen, offset)` field descriptor at `at` points to.
fn field(b: &[u8], at: usize) -> Result<&[u8], NtlmError> {
    let len = u16_at(b, at)? as usize;
    let off = u32_at(b, at + 4)? as usize;
    let end = off
        .checked_add(len)
        .ok_or(NtlmError("field out of range"))?;
    b.get(off..end).ok_or(NtlmError("field out of range"))
}

fn utf16le(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// Parses a CHALLENGE_MESSAGE (type 2).
pub fn parse_challenge(b: &[u8]) -> Result<Challenge, NtlmError> {
    if b.len() > MAX_CHALLENGE {
        return Err(NtlmError("too long"));
    }
    if b.get(..8) != Some(SIGNATURE.as_slice()) {
        return Err(NtlmError("no NTLMSSP signature"));
    }
    if u32_at(b, 8)? != 2 {
        return Err(NtlmError("not a CHALLENGE message"));
    }
    let flags = u32_at(b, 20)?;
    let mut server_challenge = [0u8; 8];
    server_challenge.copy_from_slice(b.get(24..32).ok_or(NtlmError("truncated"))?);
    let name = field(b, 12)?;
    let target_name = if flags & NEGOTIATE_UNICODE != 0 {
        utf16le(name)
    } else {
        String::from_utf8_lossy(name).into_owned()
    };
    let (target_info, timestamp) = if flags & NEGOTIATE_TARGET_INFO != 0 {
        let info = field(b, 40)?;
        (info.to_vec(), check_av_pairs(info)?)
    } else {
        (Vec::new(), None)
    };
    if flags & NEGOTIATE_NTLM == 0 && flags & NEGOTIATE_EXTENDED_SESSIONSECURITY == 0 {
        return Err(NtlmError("the server offers no NTLM we speak"));
    }
    Ok(Challenge {
        flags,
        server_challenge,
        target_info,
        timestamp,
        target_name,
    })
}

/// Walks the AV pairs (they must end with MsvAvEOL) and returns MsvAvTimestamp if present.
fn check_av_pairs(info: &[u8]) -> Result<Option<[u8; 8]>, NtlmError> {
    let mut at = 0;
    let mut timestamp = None;
    loop {
        let id = u16_at(info, at)?;
        let len = u16_at(info, at + 2)? as usize;
        let value = info
            .get(at + 4..at + 4 + len)
            .ok_or(NtlmError("AV pair out of range"))?;
        if id == AV_EOL {
            return Ok(timestamp);
        }
        if id == AV_TIMESTAMP {
            let t: [u8; 8] = value
                .try_into()
                .map_err(|_| NtlmError("timestamp is not 8 bytes"))?;
            timestamp = Some(t);
        }
        at += 4 + len;
    }
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// NTOWFv2 (MS-NLMP 3.3.2): HMAC-MD5 keyed with the NT hash over UPPER(user) + domain.
pub fn ntowf_v2(user: &str, domain: &str, password: &str) -> [u8; 16] {
    use md4::Digest as _;
    let nt_hash: [u8; 16] = md4::Md4::digest(utf16(password)).into();
    let mut who = utf16(&user.to_uppercase());
    who.extend_from_slice(&utf16(domain));
    hmac_md5(&nt_hash, &[&who])
}

/// The parts of an NTLMv2 answer (MS-NLMP 3.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Response {
    pub lm: Vec<u8>,
    pub nt: Vec<u8>,
    pub session_base_key: [u8; 16],
}

/// Computes the NTLMv2 responses for `challenge` given the client's nonce and the time
/// (Windows FILETIME, little endian) to use when the server sent no timestamp.
pub fn v2_response(
    key: &[u8; 16],
    server_challenge: &[u8; 8],
    target_info: &[u8],
    client_challenge: &[u8; 8],
    time: [u8; 8],
    server_timestamp: bool,
) -> V2Response {
    let mut temp = Vec::with_capacity(28 + target_info.len() + 4);
    temp.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
    temp.extend_from_slice(&time);
    temp.extend_from_slice(client_challenge);
    temp.extend_from_slice(&[0; 4]);
    temp.extend_from_slice(target_info);
    temp.extend_from_slice(&[0; 4]);
    let proof = hmac_md5(key, &[server_challenge, &temp]);
    let mut nt = proof.to_vec();
    nt.extend_from_slice(&temp);
    // With a server timestamp, MS-NLMP says the LM response is all zeros.
    let lm = if server_timestamp {
        vec![0; 24]
    } else {
        let mut lm = hmac_md5(key, &[server_challenge, client_challenge]).to_vec();
        lm.extend_from_slice(client_challenge);
        lm
    };
    V2Response {
        lm,
        nt,
        session_base_key: hmac_md5(key, &[&proof]),
    }
}

/// Splits `DOMAIN\user` (or `user@domain`, left whole as UPN) into (domain, user).
pub fn split_user(login: &str) -> (&str, &str) {
    match login.split_once('\\') {
        Some((d, u)) => (d, u),
        None => ("", login),
    }
}

/// Windows FILETIME of now: 100 ns ticks since 1601-01-01.
pub fn filetime_now() -> [u8; 8] {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ticks = (since_unix.as_nanos() / 100) as u64 + 116_444_736_000_000_000;
    ticks.to_le_bytes()
}

/// The AUTHENTICATE_MESSAGE (type 3) answering `challenge` for `login` (`DOMAIN\user` or
/// `user`), with an NTLMv2 response. `client_challenge` must be random.
pub fn authenticate(
    challenge: &Challenge,
    login: &str,
    password: &str,
    workstation: &str,
    client_challenge: &[u8; 8],
) -> Vec<u8> {
    let (domain, user) = split_user(login);
    let key = ntowf_v2(user, domain, password);
    let time = challenge.timestamp.unwrap_or_else(filetime_now);
    let r = v2_response(
        &key,
        &challenge.server_challenge,
        &challenge.target_info,
        client_challenge,
        time,
        challenge.timestamp.is_some(),
    );
    let flags = CLIENT_FLAGS & (challenge.flags | NEGOTIATE_UNICODE);
    let payloads: [Vec<u8>; 6] = [
        r.lm,
        r.nt,
        utf16(domain),
        utf16(user),
        utf16(workstation),
        Vec::new(), // EncryptedRandomSessionKey: no key exchange negotiated
    ];
    // Fixed part: signature, type, six field descriptors, flags, version (8) = 72 bytes.
    let fixed = 8 + 4 + 6 * 8 + 4 + 8;
    let mut m = Vec::with_capacity(fixed + payloads.iter().map(Vec::len).sum::<usize>());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&3u32.to_le_bytes());
    let mut off = fixed;
    for p in &payloads {
        let len = u16::try_from(p.len()).unwrap_or(u16::MAX);
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&(off as u32).to_le_bytes());
        off += p.len();
    }
    m.extend_from_slice(&flags.to_le_bytes());
    // Version: 10.0, NTLM revision 15 (informational only).
    m.extend_from_slice(&[10, 0, 0, 0, 0, 0, 0, 15]);
    for p in &payloads {
        m.extend_from_slice(p);
    }
    m
}

mod hmac_md5 {
    use md5::{Digest, Md5};

    /// HMAC-MD5 (RFC 2104) over the concatenation of `parts`.
    pub fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..16].copy_from_slice(&Md5::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let mut inner = Md5::new();
        inner.update(k.map(|b| b ^ 0x36));
        for p in parts {
            inner.update(p);
        }
        let mut outer = Md5::new();
        outer.update(k.map(|b| b ^ 0x5c));
        outer.update(inner.finalize());
        outer.finalize().into()
    }

    #[test]
    fn rfc2104_vector() {
        // RFC 2104 test vector 2.
        let mac = hmac_md5(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(hex(&mac), "750c783e6ab0b503eaa86e310a5db738");
    }

    #[cfg(test)]
    pub fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::hmac_md5::hex;
    use super::*;

    /// MS-NLMP 4.2.4: the NTLMv2 example (User / Domain / Password, server "Server").
    #[test]
    fn ms_nlmp_ntlmv2_vectors() {
        let key = ntowf_v2("User", "Domain", "Password");
        assert_eq!(hex(&key), "0c868a403bfd7a93a3001ef22ef02e3f");
        let server_challenge = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        let mut info = Vec::new();
        for (id, name) in [(2u16, "Domain"), (1, "Server")] {
            let v = utf16(name);
            info.extend_from_slice(&id.to_le_bytes());
            info.extend_from_slice(&(v.len() as u16).to_le_bytes());
            info.extend_from_slice(&v);
        }
        info.extend_from_slice(&[0; 4]);
        let r = v2_response(&key, &server_challenge, &info, &[0xaa; 8], [0; 8], false);
        assert_eq!(
            hex(&r.lm),
            "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa"
        );
        assert_eq!(hex(&r.nt[..16]), "68cd0ab851e51c96aabc927bebef6a1c");
        assert_eq!(hex(&r.session_base_key), "8de40ccadbc14a82f15cb0ad0de95ca3");
    }

    fn challenge_bytes(flags: u32, name: &str, info: &[u8]) -> Vec<u8> {
        let name = utf16(name);
        let mut m = Vec::new();
        m.extend_from_slice(SIGNATURE);
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(&(name.len() as u16).to_le_bytes());
        m.extend_from_slice(&(name.len() as u16).to_le_bytes());
        m.extend_from_slice(&56u32.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&(info.len() as u16).to_le_bytes());
        m.extend_from_slice(&(info.len() as u16).to_le_bytes());
        m.extend_from_slice(&((56 + name.len()) as u32).to_le_bytes());
        m.extend_from_slice(&[10, 0, 0, 0, 0, 0, 0, 15]);
        m.extend_from_slice(&name);
        m.extend_from_slice(info);
        m
    }

    #[test]
    fn challenge_round_trip_and_authenticate_layout() {
        let mut info = vec![7, 0, 8, 0, 9, 9, 9, 9, 9, 9, 9, 9];
        info.extend_from_slice(&[0; 4]);
        let c = parse_challenge(&challenge_bytes(CLIENT_FLAGS, "CORP", &info)).expect("valid");
        assert_eq!(c.server_challenge, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(c.target_name, "CORP");
        assert_eq!(c.timestamp, Some([9; 8]));
        let m = authenticate(&c, "CORP\\alice", "pw", "WS", &[0xaa; 8]);
        assert_eq!(&m[..8], SIGNATURE);
        assert_eq!(u32_at(&m, 8), Ok(3));
        // LM response all zeros when the server sent a timestamp.
        assert_eq!(field(&m, 12).expect("lm"), &[0u8; 24][..]);
        let nt = field(&m, 20).expect("nt");
        assert_eq!(&nt[16 + 8..16 + 16], &[9; 8], "server time echoed");
        assert_eq!(field(&m, 28).expect("domain"), utf16("CORP").as_slice());
        assert_eq!(field(&m, 36).expect("user"), utf16("alice").as_slice());
        assert_eq!(field(&m, 44).expect("ws"), utf16("WS").as_slice());
    }

    #[test]
    fn hostile_challenges_are_errors() {
        let good = challenge_bytes(CLIENT_FLAGS, "CORP", &[0, 0, 0, 0]);
        assert!(parse_challenge(&good).is_ok());
        for n in 0..good.len() {
            assert!(parse_challenge(&good[..n]).is_err(), "truncated at {n}");
        }
        let mut bad = good.clone();
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes()); // name offset
        assert!(parse_challenge(&bad).is_err());
        let mut bad = good.clone();
        bad[40..42].copy_from_slice(&0xffffu16.to_le_bytes()); // info length
        assert!(parse_challenge(&bad).is_err());
        // AV pairs without EOL.
        let no_eol = challenge_bytes(CLIENT_FLAGS, "C", &[2, 0, 2, 0, 65, 0]);
        assert!(parse_challenge(&no_eol).is_err());
        assert!(
            parse_challenge(&negotiate()).is_err(),
            "a type 1 is no challenge"
        );
    }
}
