//! Where passwords come from. Nothing else in davdrive reads them.
//!
//! Order: `DAVDRIVE_PASSWORD` in the environment, then a davfs2-style secrets file
//! (`URL-or-mountpoint user password` per line, `#` comments, refused unless its mode is
//! 0600 or stricter), then the OS keyring (`davdrive login URL`, see [`keyring`]). Passwords
//! are never accepted as command-line arguments, where `ps` would show them.

pub mod keyring;

use std::path::Path;

use url::Url;

use crate::dav::{Credentials, Secret};

/// Finds credentials for `url`. `None` when no user name is known.
pub fn resolve(
    url: &Url,
    user: Option<&str>,
    secrets_file: Option<&Path>,
) -> Result<Option<Credentials>, String> {
    // `DOMAIN%5Calice` in a URL is the user `DOMAIN\alice`.
    let url_user = (!url.username().is_empty()).then(|| {
        percent_encoding::percent_decode_str(url.username())
            .decode_utf8_lossy()
            .into_owned()
    });
    let user = user.map(str::to_owned).or(url_user);
    if let Ok(pw) = std::env::var("DAVDRIVE_PASSWORD") {
        let Some(user) = user else {
            return Err(
                "DAVDRIVE_PASSWORD is set but no user: pass --user or DAVDRIVE_USER".into(),
            );
        };
        return Ok(Some(Credentials {
            user,
            password: Secret::new(pw),
        }));
    }
    if let Some(path) = secrets_file
        && let Some(c) = from_secrets_file(path, url, user.as_deref())?
    {
        return Ok(Some(c));
    }
    match keyring::find(url)? {
        Some(c) if user.as_deref().is_none_or(|u| u == c.user) => Ok(Some(c)),
        _ => Ok(None),
    }
}

fn from_secrets_file(
    path: &Path,
    url: &Url,
    user: Option<&str>,
) -> Result<Option<Credentials>, String> {
    check_private(path)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read secrets file {}: {e}", path.display()))?;
    let want = url.as_str().trim_end_matches('/');
    for (n, line) in text.lines().enumerate() {
        let fields = split_fields(line)
            .map_err(|e| format!("secrets file {} line {}: {e}", path.display(), n + 1))?;
        let [target, u, pw, ..] = fields.as_slice() else {
            continue;
        };
        let (target, u, pw) = (target.as_str(), u.as_str(), pw.clone());
        if target.trim_end_matches('/') != want {
            continue;
        }
        if user.is_some_and(|wanted| wanted != u) {
            continue;
        }
        return Ok(Some(Credentials {
            user: u.to_owned(),
            password: Secret::new(pw),
        }));
    }
    Ok(None)
}

/// Splits a secrets-file line into fields the way davfs2 does: whitespace separates, `"`
/// quotes (so a password may contain spaces), `\\` escapes the next character, and `#`
/// outside quotes starts a comment.
pub fn split_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut in_field = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars.next().ok_or("a line ends with a lone backslash")?;
                cur.push(next);
                in_field = true;
            }
            '"' => {
                quoted = !quoted;
                in_field = true;
            }
            '#' if !quoted => break,
            c if c.is_whitespace() && !quoted => {
                if in_field {
                    fields.push(std::mem::take(&mut cur));
                    in_field = false;
                }
            }
            c => {
                cur.push(c);
                in_field = true;
            }
        }
    }
    if quoted {
        return Err("a quote is not closed".into());
    }
    if in_field {
        fields.push(cur);
    }
    Ok(fields)
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(path)
        .map_err(|e| format!("cannot read secrets file {}: {e}", path.display()))?;
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "secrets file {} has mode {mode:03o}; run `chmod 600 {}` first",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn fields_split_like_davfs2() {
        let f = |l: &str| split_fields(l).expect(l);
        assert_eq!(
            f("http://h/ alice s3cret"),
            ["http://h/", "alice", "s3cret"]
        );
        assert_eq!(
            f("  http://h/\talice  \"correct horse\" # note"),
            ["http://h/", "alice", "correct horse"]
        );
        assert_eq!(f(r#"u a pa\"ss\\w\ rd"#), ["u", "a", "pa\"ss\\w rd"]);
        assert_eq!(f(r#"u a "has#hash""#), ["u", "a", "has#hash"]);
        assert_eq!(f(r#"u a """#), ["u", "a", ""]);
        assert!(f("# only a comment").is_empty());
        assert!(split_fields("u a \"open").is_err());
        assert!(split_fields("u a x\\").is_err());
    }

    #[test]
    fn secrets_file_must_be_private_and_matches_url() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("secrets");
        std::fs::write(
            &f,
            "# comment\nhttp://h/other/ bob pw0\nhttp://h/dav/ alice s3cret\n",
        )
        .expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let url = Url::parse("http://h/dav").expect("url");
        let err = from_secrets_file(&f, &url, None).expect_err("refused");
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = from_secrets_file(&f, &url, None)
            .expect("ok")
            .expect("found");
        assert_eq!(c.user, "alice");
        assert_eq!(c.password.expose(), "s3cret");
        assert!(
            from_secrets_file(&f, &url, Some("carol"))
                .expect("ok")
                .is_none()
        );
    }
}
