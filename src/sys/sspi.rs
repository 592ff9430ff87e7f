//! Windows single sign-on through SSPI: Kerberos and NTLM tokens made by Windows with the
//! logged-on user's own credentials (or with a name and password given for the mount), so
//! an IIS site with Windows authentication mounts with no password typed.
//!
//! - Kerberos ([`Kerberos`]): one token per request for `HTTP/host`, each from a
//!   fresh context of one leg (no mutual authentication asked: the server's identity is TLS's
//!   job), as `dav/kerberos.rs` does with GSSAPI on Linux.
//! - NTLM ([`Context`] over an `NTLM` [`Credential`]): the connection-bound handshake of
//!   `dav/ntlm_transport.rs`, its two client messages made by Windows instead of from a
//!   password.
//!
//! Nothing here runs on Linux, and Wine has no domain to log on to: this is compiled and
//! linked in CI, and untested against a real domain (docs/WINDOWS.md says so).

use std::ffi::c_void;

use windows_sys::Win32::Foundation::{SEC_E_OK, SEC_I_CONTINUE_NEEDED};
use windows_sys::Win32::Security::Authentication::Identity::{
    AcquireCredentialsHandleW, DeleteSecurityContext, FreeContextBuffer, FreeCredentialsHandle,
    ISC_REQ_ALLOCATE_MEMORY, ISC_REQ_CONNECTION, InitializeSecurityContextW, SECBUFFER_TOKEN,
    SECBUFFER_VERSION, SECPKG_CRED_OUTBOUND, SECURITY_NATIVE_DREP, SecBuffer, SecBufferDesc,
};
use windows_sys::Win32::Security::Credentials::SecHandle;

/// SEC_WINNT_AUTH_IDENTITY_W (declared in windows-sys under RPC; the same layout).
#[repr(C)]
struct AuthIdentity {
    user: *mut u16,
    user_len: u32,
    domain: *mut u16,
    domain_len: u32,
    password: *mut u16,
    password_len: u32,
    flags: u32,
}

/// SEC_WINNT_AUTH_IDENTITY_UNICODE.
const IDENTITY_UNICODE: u32 = 2;

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain([0]).collect()
}

/// An SSPI credential of one package (`Kerberos`, `NTLM`) for outbound use.
pub struct Credential {
    handle: SecHandle,
    package: &'static str,
}

// SAFETY: an SSPI credential handle is not bound to a thread; every use below is a call
// that takes it by pointer, and it is freed once, in Drop.
unsafe impl Send for Credential {}
unsafe impl Sync for Credential {}

impl Drop for Credential {
    fn drop(&mut self) {
        // SAFETY: acquired in `acquire`, freed only here.
        unsafe { FreeCredentialsHandle(&self.handle) };
    }
}

impl Credential {
    /// The logged-on user's credential (`login` `None`), or one for a name (`DOMAIN\user`,
    /// `user@REALM`) and password.
    pub fn acquire(package: &'static str, login: Option<(&str, &str)>) -> Result<Self, String> {
        let pkg = wide(package);
        let mut handle = SecHandle::default();
        let mut expiry = 0i64;
        // The identity's strings live until the call returns; SSPI copies them.
        let (mut user, mut domain, mut password);
        let mut identity = None;
        if let Some((name, secret)) = login {
            let (d, u) = match name.split_once('\\') {
                Some((d, u)) => (d, u),
                None => ("", name),
            };
            user = wide(u);
            domain = wide(d);
            password = wide(secret);
            identity = Some(AuthIdentity {
                user: user.as_mut_ptr(),
                user_len: (user.len() - 1) as u32,
                domain: domain.as_mut_ptr(),
                domain_len: (domain.len() - 1) as u32,
                password: password.as_mut_ptr(),
                password_len: (password.len() - 1) as u32,
                flags: IDENTITY_UNICODE,
            });
        }
        let auth = identity.as_ref().map_or(std::ptr::null(), |i| {
            (i as *const AuthIdentity).cast::<c_void>()
        });
        // SAFETY: every pointer is valid for the call or null where SSPI allows it.
        let status = unsafe {
            AcquireCredentialsHandleW(
                std::ptr::null(),
                pkg.as_ptr(),
                SECPKG_CRED_OUTBOUND,
                std::ptr::null(),
                auth,
                None,
                std::ptr::null(),
                &mut handle,
                &mut expiry,
            )
        };
        if status != SEC_E_OK {
            return Err(format!(
                "Windows gives no {package} credential ({})",
                describe(status)
            ));
        }
        Ok(Credential { handle, package })
    }
}

/// One security context: the steps of one handshake.
pub struct Context<'c> {
    cred: &'c Credential,
    target: Vec<u16>,
    handle: Option<SecHandle>,
}

// SAFETY: as for `Credential`: the handle is not thread-bound and is used by one owner.
unsafe impl Send for Context<'_> {}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            // SAFETY: made by InitializeSecurityContextW, deleted only here.
            unsafe { DeleteSecurityContext(h) };
        }
    }
}

impl<'c> Context<'c> {
    /// A context for the service `target` (`HTTP/host`).
    pub fn new(cred: &'c Credential, target: &str) -> Self {
        Context {
            cred,
            target: wide(target),
            handle: None,
        }
    }

    /// The next token: the first with no input, the next from the server's token. Returns
    /// the token and whether the handshake wants another step.
    pub fn step(&mut self, input: Option<&[u8]>) -> Result<(Vec<u8>, bool), String> {
        let mut in_copy = input.map(<[u8]>::to_vec).unwrap_or_default();
        let mut in_buf = SecBuffer {
            cbBuffer: in_copy.len() as u32,
            BufferType: SECBUFFER_TOKEN,
            pvBuffer: in_copy.as_mut_ptr().cast(),
        };
        let in_desc = SecBufferDesc {
            ulVersion: SECBUFFER_VERSION,
            cBuffers: 1,
            pBuffers: &mut in_buf,
        };
        let mut out_buf = SecBuffer {
            cbBuffer: 0,
            BufferType: SECBUFFER_TOKEN,
            pvBuffer: std::ptr::null_mut(),
        };
        let mut out_desc = SecBufferDesc {
            ulVersion: SECBUFFER_VERSION,
            cBuffers: 1,
            pBuffers: &mut out_buf,
        };
        let mut new_handle = SecHandle::default();
        let mut attrs = 0u32;
        let mut expiry = 0i64;
        let previous = self
            .handle
            .as_ref()
            .map_or(std::ptr::null(), |h| h as *const SecHandle);
        // SAFETY: the buffers above live until the call returns; SSPI allocates the output
        // token (ISC_REQ_ALLOCATE_MEMORY), copied and freed below.
        let status = unsafe {
            InitializeSecurityContextW(
                &self.cred.handle,
                previous,
                self.target.as_ptr(),
                ISC_REQ_ALLOCATE_MEMORY | ISC_REQ_CONNECTION,
                0,
                SECURITY_NATIVE_DREP,
                if input.is_some() {
                    &in_desc
                } else {
                    std::ptr::null()
                },
                0,
                &mut new_handle,
                &mut out_desc,
                &mut attrs,
                &mut expiry,
            )
        };
        if self.handle.is_none() && (status == SEC_E_OK || status == SEC_I_CONTINUE_NEEDED) {
            self.handle = Some(new_handle);
        }
        let token = if out_buf.pvBuffer.is_null() {
            Vec::new()
        } else {
            // SAFETY: SSPI wrote `cbBuffer` bytes there.
            let t = unsafe {
                std::slice::from_raw_parts(out_buf.pvBuffer.cast::<u8>(), out_buf.cbBuffer as usize)
            }
            .to_vec();
            // SAFETY: allocated by SSPI for this call.
            unsafe { FreeContextBuffer(out_buf.pvBuffer) };
            t
        };
        match status {
            SEC_E_OK => Ok((token, false)),
            SEC_I_CONTINUE_NEEDED => Ok((token, true)),
            other => Err(format!(
                "Windows cannot make a {} token for {} ({})",
                self.cred.package,
                String::from_utf16_lossy(&self.target[..self.target.len() - 1]),
                describe(other)
            )),
        }
    }
}

/// Kerberos tokens for one service: each request's from a fresh one-leg context.
pub struct Kerberos {
    cred: Credential,
    target: String,
}

impl Kerberos {
    /// For `HTTP/host`, as the logged-on user or as `login` (`user@REALM`, password).
    pub fn new(host: &str, login: Option<(&str, &str)>) -> Result<Self, String> {
        Ok(Kerberos {
            cred: Credential::acquire("Kerberos", login)?,
            target: format!("HTTP/{host}"),
        })
    }

    pub fn token(&self) -> Result<Vec<u8>, String> {
        let mut ctx = Context::new(&self.cred, &self.target);
        match ctx.step(None)? {
            (t, false) if !t.is_empty() => Ok(t),
            (_, true) => Err(format!(
                "Kerberos for {} wants more than one step (no ticket for the service?)",
                self.target
            )),
            _ => Err("Kerberos made an empty token".into()),
        }
    }
}

/// SSPI's status codes that users meet, in words.
fn describe(status: i32) -> String {
    let text = match status as u32 {
        0x8009_030E => "no credentials: not logged on to a domain",
        0x8009_0311 => "no domain controller could be reached",
        0x8009_0303 => "the server's service name is unknown to the domain (no SPN HTTP/host)",
        0x8009_0305 => "the security package is not installed",
        0x8009_0308 => "the server's token is not valid",
        0x8009_030C => "the logon was refused",
        _ => "",
    };
    if text.is_empty() {
        format!("SSPI status {:#010x}", status as u32)
    } else {
        format!("{text}; SSPI status {:#010x}", status as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wine has the packages but no domain: a current-user Kerberos credential may or may not
    /// be given, and a token must fail with words, never crash.
    #[test]
    fn kerberos_without_a_domain_fails_with_words() {
        match Kerberos::new("127.0.0.1", None) {
            Ok(k) => {
                if let Err(e) = k.token() {
                    assert!(e.contains("HTTP/127.0.0.1") || e.contains("SSPI"), "{e}");
                }
            }
            Err(e) => assert!(e.contains("Kerberos"), "{e}"),
        }
    }

    #[test]
    fn statuses_are_described() {
        assert!(describe(0x8009_030Eu32 as i32).contains("not logged on"));
        assert!(describe(0x1234).contains("0x00001234"));
    }
}
