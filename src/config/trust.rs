//! Server certificates the user chose to trust with `davdrive trust URL` (trust on first
//! use, explicitly): one line per origin in `$XDG_CONFIG_HOME/davdrive/trusted-certs`
//! (`https://host:port SHA256-FINGERPRINT`), consulted by every mount of that origin.
//!
//! Pins are public data (fingerprints, not secrets); the file is still written 0600 like the
//! rest of the user's davdrive configuration.

use std::path::{Path, PathBuf};

use url::Url;

use crate::dav::tls::parse_pin;

/// `scheme://host:port` of a URL, the key pins are stored under.
pub fn origin(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// The default pin file, next to the profiles.
pub fn default_path() -> Option<PathBuf> {
    super::profile::default_path().map(|p| p.with_file_name("trusted-certs"))
}

/// Pins stored for `url`'s origin in `file` (none when the file does not exist). A line that
/// does not parse is an error, not silently skipped: it may be the pin the user relies on.
pub fn pins_for(file: &Path, url: &Url) -> Result<Vec<[u8; 32]>, String> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    pins_in(&text, &file.display().to_string(), url)
}

/// As [`pins_for`], from the text of the file named `file` (for error messages).
pub fn pins_in(text: &str, file: &str, url: &Url) -> Result<Vec<[u8; 32]>, String> {
    let want = origin(url);
    let mut pins = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (o, pin) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{file} line {}: expected `ORIGIN SHA256`", n + 1))?;
        let pin = parse_pin(pin.trim()).map_err(|e| format!("{file} line {}: {e}", n + 1))?;
        if o == want {
            pins.push(pin);
        }
    }
    Ok(pins)
}

/// Adds a pin for `url`'s origin (keeping any others for it).
pub fn add_pin(file: &Path, url: &Url, pin: &[u8; 32]) -> Result<(), String> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut text = std::fs::read_to_string(file).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{} {}\n", origin(url), fingerprint_hex(pin)));
    let tmp = file.with_extension("tmp");
    crate::sys::files::write_private(&tmp, text.as_bytes())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, file).map_err(|e| format!("{}: {e}", file.display()))
}

fn fingerprint_hex(pin: &[u8; 32]) -> String {
    pin.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether `fp` (as `fingerprint` prints it) is one of `pins`.
pub fn is_pinned(pins: &[[u8; 32]], fp: &str) -> bool {
    parse_pin(fp).is_ok_and(|p| pins.contains(&p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dav::tls::fingerprint;

    #[test]
    fn pins_round_trip_per_origin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("d/trusted-certs");
        let a = Url::parse("https://h.example/dav/").expect("url");
        let b = Url::parse("https://h.example:8443/dav/").expect("url");
        assert!(pins_for(&f, &a).expect("no file").is_empty());
        let pin = parse_pin(&fingerprint(b"cert")).expect("pin");
        add_pin(&f, &a, &pin).expect("add");
        assert_eq!(pins_for(&f, &a).expect("read"), [pin]);
        assert!(pins_for(&f, &b).expect("read").is_empty(), "other port");
        assert!(is_pinned(&[pin], &fingerprint(b"cert")));
        std::fs::write(&f, "https://h.example:443 nonsense\n").expect("write");
        assert!(pins_for(&f, &a).is_err());
    }
}
