//! Names as the server has them, and names as the local OS can show them.
//!
//! A server may list names that the local OS cannot hold: Orthanc generates folder names of
//! 518 bytes (Linux allows 255) and names with `: * ? " < > |` (illegal on Windows). Such a
//! name is shown under a *mapped* local name; the directory listing keeps both, so the local
//! name always leads back to the exact server name. Mapped names are deterministic (the same
//! server name maps to the same local name on every mount), so paths stay stable:
//!
//! - too long: the longest prefix that fits (on a character boundary), then `~` and 8 hex
//!   digits of a hash of the full name, then the original extension when it is short;
//! - Windows-illegal characters: replaced by their full-width look-alikes (`:` → `：`), and a
//!   trailing dot or space gets the same treatment, as rclone and the OneDrive client do.
//!
//! Names that decode to nothing usable never reach here: the protocol layer skips them.

/// Which names the local OS accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamePolicy {
    /// Longest name in bytes of UTF-8 (POSIX) or UTF-16 units (Windows).
    pub max_len: usize,
    /// Whether Windows' character and trailing-dot rules apply.
    pub windows: bool,
    /// Whether the path-based layer looks names up ignoring case (case-preserving): on for
    /// Windows, whose programs open `A.TXT` expecting `a.txt`.
    pub case_insensitive: bool,
}

impl NamePolicy {
    /// Linux and macOS: 255 bytes.
    pub const fn posix() -> Self {
        NamePolicy {
            max_len: 255,
            windows: false,
            case_insensitive: false,
        }
    }

    /// Windows: 255 UTF-16 units, no `\ / : * ? " < > |`, no trailing dot or space.
    pub const fn windows() -> Self {
        NamePolicy {
            max_len: 255,
            windows: true,
            case_insensitive: true,
        }
    }

    /// The policy of the OS we run on.
    pub const fn native() -> Self {
        if cfg!(windows) {
            Self::windows()
        } else {
            Self::posix()
        }
    }

    fn len(&self, s: &str) -> usize {
        if self.windows {
            s.encode_utf16().count()
        } else {
            s.len()
        }
    }

    /// The local name for a server name; equal to it when it is legal as is.
    pub fn to_local(&self, server: &str) -> String {
        let mut name = if self.windows {
            windows_safe(server)
        } else {
            server.to_owned()
        };
        if self.len(&name) > self.max_len {
            name = self.shorten(&name, server);
        }
        name
    }

    fn shorten(&self, name: &str, server: &str) -> String {
        let tag = format!("~{:08x}", (fnv1a(server.as_bytes()) & 0xffff_ffff) as u32);
        let ext = match name.rfind('.') {
            Some(i) if i > 0 && name.len() - i <= 16 => &name[i..],
            _ => "",
        };
        let budget = self.max_len - self.len(&tag) - self.len(ext);
        let stem_src = &name[..name.len() - ext.len()];
        let mut stem = String::new();
        for ch in stem_src.chars() {
            let mut probe = stem.clone();
            probe.push(ch);
            if self.len(&probe) > budget {
                break;
            }
            stem = probe;
        }
        format!("{stem}{tag}{ext}")
    }
}

/// Whether a name is hidden by convention (a leading dot): Windows' hidden attribute, so
/// that `.git` or `.DS_Store` look on Windows as they do in a Linux file manager.
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('.') && name != "." && name != ".."
}

fn windows_safe(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| match c {
            '\\' => '＼',
            ':' => '：',
            '*' => '＊',
            '?' => '？',
            '"' => '＂',
            '<' => '＜',
            '>' => '＞',
            '|' => '｜',
            c if (c as u32) < 0x20 => char::from_u32(0x2400 + c as u32).unwrap_or('�'),
            c => c,
        })
        .collect();
    if out.ends_with('.') {
        out.pop();
        out.push('．');
    } else if out.ends_with(' ') {
        out.pop();
        out.push('␠');
    }
    let stem = out.split('.').next().unwrap_or("").to_ascii_uppercase();
    let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit());
    if reserved {
        out.insert(0, '＿');
    }
    out
}

/// FNV-1a, 64 bits: stable across runs and platforms (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_names_are_unchanged() {
        let p = NamePolicy::posix();
        for n in [
            "a",
            "a b",
            "100% #1?+&",
            "Ünïcødé ✓",
            "a:b*c?\"d<e>f|g",
            "x.",
        ] {
            assert_eq!(p.to_local(n), n);
        }
    }

    #[test]
    fn long_names_are_shortened_deterministically_and_keep_extension() {
        let p = NamePolicy::posix();
        let long = format!("{}.dcm", "N".repeat(514));
        let a = p.to_local(&long);
        assert!(a.len() <= 255, "{}", a.len());
        assert!(a.ends_with(".dcm"));
        assert!(a.contains('~'));
        assert_eq!(a, p.to_local(&long));
        let other = format!("{}.dcm", "N".repeat(515));
        assert_ne!(a, p.to_local(&other));
        // Multi-byte characters are never split.
        let wide = "é".repeat(300);
        let w = p.to_local(&wide);
        assert!(w.len() <= 255);
        assert!(std::str::from_utf8(w.as_bytes()).is_ok());
    }

    #[test]
    fn dot_names_are_hidden() {
        assert!(is_hidden(".git"));
        assert!(!is_hidden("a.txt"));
        assert!(!is_hidden(".."));
    }

    #[test]
    fn windows_names() {
        let w = NamePolicy::windows();
        assert_eq!(
            w.to_local("EDGE-WINCHARS - Win^Chars - a:b*c?\"d<e>f|ghi"),
            "EDGE-WINCHARS - Win^Chars - a：b＊c？＂d＜e＞f｜ghi"
        );
        assert_eq!(w.to_local("CT - ends with dot."), "CT - ends with dot．");
        assert_eq!(w.to_local("con.txt"), "＿con.txt");
        assert_eq!(w.to_local("COM1"), "＿COM1");
        assert_eq!(w.to_local("COMPUTER"), "COMPUTER");
    }
}
