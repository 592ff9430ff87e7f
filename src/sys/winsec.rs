//! Windows security descriptors: the SID of the user this process runs as, and descriptors
//! made from SDDL text (for the drive's files and the control pipe).

/// A self-relative security descriptor from its SDDL text.
pub fn descriptor(sddl: &str) -> Result<Vec<u8>, String> {
    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Authorization::{
        ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
    };
    let wide: Vec<u16> = sddl.encode_utf16().chain([0]).collect();
    let mut sd = std::ptr::null_mut();
    let mut len = 0u32;
    // SAFETY: `wide` is NUL-terminated; `sd` receives a LocalAlloc'd descriptor of `len`
    // bytes, copied and freed below.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            wide.as_ptr(),
            SDDL_REVISION_1,
            &mut sd,
            &mut len,
        )
    };
    if ok == 0 || sd.is_null() {
        return Err(format!(
            "cannot make the security descriptor {sddl}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the call above made `sd` point to `len` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(sd.cast::<u8>(), len as usize) }.to_vec();
    // SAFETY: `sd` was allocated by LocalAlloc in the call above and is not used again.
    unsafe { LocalFree(sd) };
    Ok(bytes)
}

/// The SID of the user this process runs as, as a string (`S-1-5-21-…`).
pub fn user_sid() -> Result<String, String> {
    use windows_sys::Win32::Foundation::{CloseHandle, LocalFree};
    use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
    use windows_sys::Win32::Security::{GetTokenInformation, TOKEN_QUERY, TOKEN_USER, TokenUser};
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    let mut token = std::ptr::null_mut();
    // SAFETY: the pseudo-handle of this process; `token` receives a handle closed below.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(err("cannot open this process's token"));
    }
    // TOKEN_USER plus its SID: 256 bytes hold any SID; u64 for alignment.
    let mut buf = [0u64; 64];
    let mut needed = 0u32;
    // SAFETY: `buf` is writable for its whole size, given in bytes.
    let ok = unsafe {
        GetTokenInformation(
            token,
            TokenUser,
            buf.as_mut_ptr().cast(),
            std::mem::size_of_val(&buf) as u32,
            &mut needed,
        )
    };
    // SAFETY: `token` was opened above.
    unsafe { CloseHandle(token) };
    if ok == 0 {
        return Err(err("cannot read this process's user"));
    }
    // SAFETY: GetTokenInformation filled `buf` with a TOKEN_USER.
    let sid = unsafe { (*buf.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    let mut text = std::ptr::null_mut();
    // SAFETY: `sid` points into `buf`; `text` receives a LocalAlloc'd string freed below.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 || text.is_null() {
        return Err(err("cannot write this user's SID"));
    }
    // SAFETY: `text` is a NUL-terminated UTF-16 string.
    let len = (0..).take_while(|&i| unsafe { *text.add(i) } != 0).count();
    // SAFETY: `len` units were just read.
    let s = String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(text, len) });
    // SAFETY: allocated by ConvertSidToStringSidW; not used again.
    unsafe { LocalFree(text.cast()) };
    Ok(s)
}
