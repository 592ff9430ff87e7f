//! Mount profiles from the TOML configuration file: `davdrive mount NAME` takes the URL,
//! user, secrets file and options from `[profile.NAME]`.

use std::os::unix::fs::PermissionsExt;

use crate::support::apache::{self, PASSWORD, USER, apache};
use crate::support::{Mount, have_fuse};

#[test]
fn a_profile_supplies_url_credentials_and_options() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.authroot.join("profile");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("report.txt"), b"from a profile").expect("write");
    apache::give_to_server(&dir);
    let url = a.auth_url("profile");

    let conf = tempfile::tempdir().expect("tempdir");
    let secrets = conf.path().join("secrets");
    std::fs::write(&secrets, format!("{url} {USER} \"{PASSWORD}\"\n")).expect("secrets");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let file = conf.path().join("config.toml");
    std::fs::write(
        &file,
        format!(
            "[profile.other]\nurl = \"http://127.0.0.1:1/\"\n\n\
             [profile.pacs]\nurl = \"{url}\"\nuser = \"{USER}\"\n\
             secrets-file = \"{}\"\nread-only = true\ndir-cache-ttl = 5\n",
            secrets.display()
        ),
    )
    .expect("config");
    let cfg = file.to_string_lossy().into_owned();

    let m = Mount::new("pacs", &["--config", &cfg]);
    assert_eq!(
        std::fs::read(m.path().join("report.txt")).expect("read through the profile's login"),
        b"from a profile"
    );
    // Basic over plain HTTP works, with one warning for the whole session.
    let _ = std::fs::read_dir(m.path()).map(|d| d.count());
    assert_eq!(
        m.log()
            .matches("Basic authentication over plain HTTP")
            .count(),
        1,
        "{}",
        m.log()
    );
    let e = std::fs::write(m.path().join("new.txt"), b"x").expect_err("read-only profile");
    assert_eq!(e.raw_os_error(), Some(libc_erofs()), "{e}");
    assert!(m.unmount().success());

    let err = Mount::try_new("nosuch", &["--config", &cfg], &[])
        .err()
        .expect("unknown profile refused");
    assert!(err.contains("no [profile.nosuch]"), "{err}");
    assert!(err.contains("other, pacs"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");

    std::fs::write(
        &file,
        "[profile.pacs]\nurl = \"http://h/\"\nread_only = true\n",
    )
    .expect("config");
    let err = Mount::try_new("pacs", &["--config", &cfg], &[])
        .err()
        .expect("typo refused");
    assert!(err.contains("unknown field `read_only`"), "{err}");
}

fn libc_erofs() -> i32 {
    30 // EROFS on Linux
}
