//! Kerberos for `WWW-Authenticate: Negotiate` (RFC 4559), through the system's GSSAPI.
//!
//! Kerberos needs what the machine already has: a realm configuration (`/etc/krb5.conf` or
//! `KRB5_CONFIG`) and a ticket (from `kinit`, or from SSSD/winbind on a domain-joined
//! machine). The system's GSSAPI library reads both, so davdrive uses it rather than a Kerberos
//! of its own: MIT's `libgssapi_krb5.so.2` (or Heimdal's `libgssapi.so.3`), loaded at run
//! time. A machine without it still runs davdrive, with Kerberos unavailable; nothing is
//! needed at build time.
//!
//! Each request carries a fresh SPNEGO token for `HTTP@host` (the first one may ask the KDC
//! for a service ticket; later ones come from the ticket cache). Tokens are not bound to a
//! connection, so the ordinary connection pool and proxies work unchanged; IIS and Apache's
//! mod_auth_gssapi both accept a token on every request. Mutual authentication is not
//! requested: the server's identity is TLS's job (`https://`).
//!
//! Credentials given for the mount decide the identity: a principal name (`user@REALM`) with
//! its password (keyring, secrets file, `DAVDRIVE_PASSWORD`) gets a ticket of its own
//! (`gss_acquire_cred_with_password`), kept in memory for this mount only and never written
//! to the user's ticket cache; other names (`DOMAIN\user`) mean NTLM. Without credentials the
//! ticket cache is used.
//!
//! On Windows the tokens come from SSPI (`sys/sspi.rs`): the logged-on user's own ticket, or one
//! for a principal and password given for the mount. macOS (GSS.framework) is not wired up
//! yet: there [`Kerberos::start`] says so and `Negotiate` falls back to NTLM.

use super::auth::Credentials;

/// A credential that can produce `Negotiate` tokens: the user's ticket cache, or a ticket
/// obtained with a password.
pub struct Kerberos {
    #[cfg(target_os = "linux")]
    imp: gss::Session,
    #[cfg(windows)]
    imp: crate::sys::sspi::Kerberos,
}

impl std::fmt::Debug for Kerberos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kerberos")
    }
}

impl Kerberos {
    /// Whether `credentials` name a Kerberos principal (`user@REALM`) to log in with. Other
    /// names (`DOMAIN\\user`, a bare name) are meant for NTLM or Basic.
    pub fn is_principal(credentials: &Credentials) -> bool {
        credentials.user.contains('@') && !credentials.user.contains('\\')
    }

    /// A session for `host`: with `credentials` (a principal and its password; the ticket is
    /// kept in memory for this session), or else from the user's ticket cache. Proves it works
    /// by producing a first token, which is returned. May block (it can ask the KDC): call it
    /// off the runtime. The error says why, in GSSAPI's words.
    #[cfg(target_os = "linux")]
    pub fn start(
        host: &str,
        credentials: Option<&Credentials>,
    ) -> Result<(Kerberos, Vec<u8>), String> {
        let lib = gss::Library::get()?;
        let service = format!("HTTP@{host}");
        let login = credentials.map(|c| (c.user.as_str(), c.password.expose()));
        let (s, t) = gss::Session::new(lib, &service, login)?;
        Ok((Kerberos { imp: s }, t))
    }

    #[cfg(windows)]
    pub fn start(
        host: &str,
        credentials: Option<&Credentials>,
    ) -> Result<(Kerberos, Vec<u8>), String> {
        let login = credentials.map(|c| (c.user.as_str(), c.password.expose()));
        let imp = crate::sys::sspi::Kerberos::new(host, login)?;
        let first = imp.token()?;
        Ok((Kerberos { imp }, first))
    }

    #[cfg(not(any(target_os = "linux", windows)))]
    pub fn start(
        _host: &str,
        _credentials: Option<&Credentials>,
    ) -> Result<(Kerberos, Vec<u8>), String> {
        Err("Kerberos is not supported on this platform yet".into())
    }

    /// A fresh token for the next request.
    pub fn token(&self) -> Result<Vec<u8>, String> {
        #[cfg(any(target_os = "linux", windows))]
        {
            self.imp.token()
        }
        #[cfg(not(any(target_os = "linux", windows)))]
        {
            Err("Kerberos is not supported on this platform yet".into())
        }
    }
}

#[cfg(target_os = "linux")]
mod gss {
    //! The few GSSAPI calls we need (RFC 2744 C bindings), resolved from the shared library.
    //! Every handle is released on every path; status codes become GSSAPI's own messages.

    use std::ffi::{c_int, c_void};
    use std::ptr;
    use std::sync::OnceLock;

    type Om = u32;
    type Handle = *mut c_void;

    #[repr(C)]
    struct Buffer {
        length: usize,
        value: *mut c_void,
    }

    impl Buffer {
        fn empty() -> Buffer {
            Buffer {
                length: 0,
                value: ptr::null_mut(),
            }
        }
        fn borrowed(b: &[u8]) -> Buffer {
            Buffer {
                length: b.len(),
                value: b.as_ptr() as *mut c_void,
            }
        }
    }

    #[repr(C)]
    struct Oid {
        length: u32,
        elements: *mut c_void,
    }

    #[repr(C)]
    struct OidSet {
        count: usize,
        elements: *mut Oid,
    }

    /// DER contents of the object identifiers we name.
    const NT_HOSTBASED_SERVICE: &[u8] = b"\x2a\x86\x48\x86\xf7\x12\x01\x02\x01\x04"; // 1.2.840.113554.1.2.1.4
    const NT_USER_NAME: &[u8] = b"\x2a\x86\x48\x86\xf7\x12\x01\x02\x01\x01"; // 1.2.840.113554.1.2.1.1
    const MECH_KRB5: &[u8] = b"\x2a\x86\x48\x86\xf7\x12\x01\x02\x02"; // 1.2.840.113554.1.2.2
    const MECH_SPNEGO: &[u8] = b"\x2b\x06\x01\x05\x05\x02"; // 1.3.6.1.5.5.2

    fn oid(bytes: &'static [u8]) -> Oid {
        Oid {
            length: bytes.len() as u32,
            elements: bytes.as_ptr() as *mut c_void,
        }
    }

    const GSS_C_GSS_CODE: c_int = 1;
    const GSS_C_MECH_CODE: c_int = 2;
    const GSS_C_INITIATE: c_int = 1;
    const GSS_C_INDEFINITE: Om = 0xffff_ffff;

    fn failed(major: Om) -> bool {
        major & 0xffff_0000 != 0
    }

    type ImportName = unsafe extern "C" fn(*mut Om, *mut Buffer, *mut Oid, *mut Handle) -> Om;
    type ReleaseHandle = unsafe extern "C" fn(*mut Om, *mut Handle) -> Om;
    type InitSecContext = unsafe extern "C" fn(
        *mut Om,
        Handle,
        *mut Handle,
        Handle,
        *mut Oid,
        Om,
        Om,
        *mut c_void,
        *mut Buffer,
        *mut *mut Oid,
        *mut Buffer,
        *mut Om,
        *mut Om,
    ) -> Om;
    type DeleteSecContext = unsafe extern "C" fn(*mut Om, *mut Handle, *mut Buffer) -> Om;
    type ReleaseBuffer = unsafe extern "C" fn(*mut Om, *mut Buffer) -> Om;
    type DisplayStatus =
        unsafe extern "C" fn(*mut Om, Om, c_int, *mut Oid, *mut Om, *mut Buffer) -> Om;
    type AcquireCredWithPassword = unsafe extern "C" fn(
        *mut Om,
        Handle,
        *mut Buffer,
        Om,
        *mut OidSet,
        c_int,
        *mut Handle,
        *mut *mut OidSet,
        *mut Om,
    ) -> Om;

    pub struct Library {
        _lib: libloading::Library,
        import_name: ImportName,
        release_name: ReleaseHandle,
        init_sec_context: InitSecContext,
        delete_sec_context: DeleteSecContext,
        release_buffer: ReleaseBuffer,
        display_status: DisplayStatus,
        release_cred: ReleaseHandle,
        acquire_cred_with_password: Option<AcquireCredWithPassword>,
    }

    impl Library {
        /// The process's GSSAPI library, loaded once.
        pub fn get() -> Result<&'static Library, String> {
            static LIB: OnceLock<Result<Library, String>> = OnceLock::new();
            LIB.get_or_init(Library::load)
                .as_ref()
                .map_err(Clone::clone)
        }

        fn load() -> Result<Library, String> {
            let names = ["libgssapi_krb5.so.2", "libgssapi.so.3"];
            let mut why = Vec::new();
            for name in names {
                // SAFETY: loading a system library runs its initialisers; GSSAPI's are benign.
                match unsafe { libloading::Library::new(name) } {
                    Ok(lib) => return Library::resolve(lib).map_err(|e| format!("{name}: {e}")),
                    Err(e) => why.push(e.to_string()),
                }
            }
            Err(format!(
                "no GSSAPI library (install libgssapi-krb5-2): {}",
                why.join("; ")
            ))
        }

        fn resolve(lib: libloading::Library) -> Result<Library, libloading::Error> {
            // SAFETY: the types are RFC 2744's prototypes for these names.
            unsafe {
                Ok(Library {
                    import_name: *lib.get(b"gss_import_name\0")?,
                    release_name: *lib.get(b"gss_release_name\0")?,
                    init_sec_context: *lib.get(b"gss_init_sec_context\0")?,
                    delete_sec_context: *lib.get(b"gss_delete_sec_context\0")?,
                    release_buffer: *lib.get(b"gss_release_buffer\0")?,
                    display_status: *lib.get(b"gss_display_status\0")?,
                    release_cred: *lib.get(b"gss_release_cred\0")?,
                    acquire_cred_with_password: lib
                        .get(b"gss_acquire_cred_with_password\0")
                        .ok()
                        .map(|s| *s),
                    _lib: lib,
                })
            }
        }

        /// GSSAPI's words for a status pair.
        fn message(&self, major: Om, minor: Om) -> String {
            let mut parts = Vec::new();
            for (code, kind) in [(major, GSS_C_GSS_CODE), (minor, GSS_C_MECH_CODE)] {
                if kind == GSS_C_MECH_CODE && minor == 0 {
                    continue;
                }
                let mut ctx: Om = 0;
                // Bounded: a library that never clears the context cannot loop us forever.
                for _ in 0..8 {
                    let mut m: Om = 0;
                    let mut buf = Buffer::empty();
                    // No mechanism: the library finds the one the minor code belongs to.
                    // SAFETY: out-pointers are valid; the buffer is released below.
                    let st = unsafe {
                        (self.display_status)(
                            &mut m,
                            code,
                            kind,
                            ptr::null_mut(),
                            &mut ctx,
                            &mut buf,
                        )
                    };
                    if failed(st) {
                        break;
                    }
                    if !buf.value.is_null() && buf.length > 0 {
                        // SAFETY: GSSAPI returned `length` readable bytes at `value`.
                        let s = unsafe {
                            std::slice::from_raw_parts(buf.value as *const u8, buf.length)
                        };
                        let text = String::from_utf8_lossy(s).trim().to_owned();
                        if !text.is_empty() && !parts.contains(&text) {
                            parts.push(text);
                        }
                    }
                    // SAFETY: releasing the buffer GSSAPI allocated.
                    unsafe { (self.release_buffer)(&mut m, &mut buf) };
                    if ctx == 0 {
                        break;
                    }
                }
            }
            if parts.is_empty() {
                format!("GSSAPI error {major:#x}/{minor}")
            } else {
                parts.join(": ")
            }
        }

        fn import(&self, name: &str, kind: &'static [u8]) -> Result<Name<'_>, String> {
            let mut minor: Om = 0;
            let mut out: Handle = ptr::null_mut();
            let mut buf = Buffer::borrowed(name.as_bytes());
            let mut nt = oid(kind);
            // SAFETY: the buffer outlives the call; `out` receives a name we release in Drop.
            let major = unsafe { (self.import_name)(&mut minor, &mut buf, &mut nt, &mut out) };
            if failed(major) {
                return Err(self.message(major, minor));
            }
            Ok(Name { lib: self, h: out })
        }
    }

    struct Name<'a> {
        lib: &'a Library,
        h: Handle,
    }

    impl Drop for Name<'_> {
        fn drop(&mut self) {
            let mut m: Om = 0;
            // SAFETY: a name from gss_import_name, released once.
            unsafe { (self.lib.release_name)(&mut m, &mut self.h) };
        }
    }

    /// A target and the credential tokens are made with (null: the default ticket cache).
    pub struct Session {
        lib: &'static Library,
        target: Name<'static>,
        cred: Handle,
    }

    // SAFETY: GSSAPI handles are plain pointers the library allows to be used from any thread
    // (MIT krb5 is thread-safe for distinct contexts; names and credentials are only read).
    unsafe impl Send for Session {}
    unsafe impl Sync for Session {}

    impl Drop for Session {
        fn drop(&mut self) {
            let mut m: Om = 0;
            if !self.cred.is_null() {
                // SAFETY: a credential we own, released once.
                unsafe { (self.lib.release_cred)(&mut m, &mut self.cred) };
            }
        }
    }

    impl Session {
        /// A session for `service` (`HTTP@host`) with the default credential or one obtained
        /// with `password`, and its first token.
        pub fn new(
            lib: &'static Library,
            service: &str,
            password: Option<(&str, &str)>,
        ) -> Result<(Session, Vec<u8>), String> {
            let target = lib.import(service, NT_HOSTBASED_SERVICE)?;
            let cred = match password {
                None => ptr::null_mut(),
                Some((user, pw)) => acquire_with_password(lib, user, pw)?,
            };
            let s = Session { lib, target, cred };
            let first = s.token()?;
            Ok((s, first))
        }

        /// The first token of a fresh SPNEGO context for the target. The context is dropped
        /// at once: without mutual authentication the server's answer needs no processing.
        pub fn token(&self) -> Result<Vec<u8>, String> {
            self.token_with(MECH_SPNEGO).map_err(|e| {
                // SPNEGO's own words about the ticket cache ("cannot find mechanisms to
                // negotiate") hide the reason; Kerberos says it (no ticket cache, expired
                // ticket). A password credential is SPNEGO's only: its errors stand.
                if self.cred.is_null()
                    && e.contains("SPNEGO")
                    && let Err(krb5) = self.token_with(MECH_KRB5)
                {
                    return hint(krb5);
                }
                hint(e)
            })
        }

        fn token_with(&self, mech: &'static [u8]) -> Result<Vec<u8>, String> {
            let lib = self.lib;
            let mut minor: Om = 0;
            let mut ctx: Handle = ptr::null_mut();
            let mut mech = oid(mech);
            let mut input = Buffer::empty();
            let mut output = Buffer::empty();
            // SAFETY: all pointers are valid for the call; the context and output buffer are
            // released below on every path.
            let major = unsafe {
                (lib.init_sec_context)(
                    &mut minor,
                    self.cred,
                    &mut ctx,
                    self.target.h,
                    &mut mech,
                    0,
                    0,
                    ptr::null_mut(),
                    &mut input,
                    ptr::null_mut(),
                    &mut output,
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            };
            let token = if !output.value.is_null() && output.length > 0 {
                // SAFETY: GSSAPI returned `length` readable bytes at `value`.
                unsafe { std::slice::from_raw_parts(output.value as *const u8, output.length) }
                    .to_vec()
            } else {
                Vec::new()
            };
            let mut m: Om = 0;
            // SAFETY: releasing what init_sec_context allocated (null-safe in GSSAPI).
            unsafe {
                (lib.release_buffer)(&mut m, &mut output);
                if !ctx.is_null() {
                    (lib.delete_sec_context)(&mut m, &mut ctx, ptr::null_mut());
                }
            }
            if failed(major) {
                return Err(lib.message(major, minor));
            }
            if token.is_empty() {
                return Err("GSSAPI produced no token".into());
            }
            Ok(token)
        }
    }

    /// Kerberos's message, with what it usually means where that is not obvious.
    fn hint(message: String) -> String {
        let meaning = if message.contains("Decrypt integrity check failed")
            || message.contains("Preauthentication failed")
        {
            " (wrong password)"
        } else if message.contains("not found in Kerberos database") {
            " (unknown user or service principal; is the server's name right?)"
        } else if message.contains("Cannot contact any KDC") {
            " (check the realm's kdc in krb5.conf)"
        } else {
            ""
        };
        format!("{message}{meaning}")
    }

    /// A Kerberos credential (in memory) from a user name and password.
    fn acquire_with_password(lib: &Library, user: &str, password: &str) -> Result<Handle, String> {
        let Some(acquire) = lib.acquire_cred_with_password else {
            return Err("this GSSAPI library cannot log in with a password; run kinit".into());
        };
        let name = lib.import(user, NT_USER_NAME)?;
        let mut spnego = oid(MECH_SPNEGO);
        let mut mechs = OidSet {
            count: 1,
            elements: &mut spnego,
        };
        let mut pw = Buffer::borrowed(password.as_bytes());
        let mut minor: Om = 0;
        let mut cred: Handle = ptr::null_mut();
        // SAFETY: inputs outlive the call; the credential is owned by the Session.
        let major = unsafe {
            acquire(
                &mut minor,
                name.h,
                &mut pw,
                GSS_C_INDEFINITE,
                // For SPNEGO, which gets Kerberos credentials beneath it.
                &mut mechs,
                GSS_C_INITIATE,
                &mut cred,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if failed(major) {
            return Err(hint(lib.message(major, minor)));
        }
        Ok(cred)
    }
}
