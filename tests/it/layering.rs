//! src/dav and src/vfs must not depend on any kernel frontend: the WinFsp adapter and the
//! FUSE adapter call the same core, so a fix in the core is a fix on every OS.

use std::path::Path;

use crate::support::project_dir;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn core_does_not_import_frontends_or_libc() {
    let mut files = Vec::new();
    for d in ["src/dav", "src/vfs"] {
        rust_files(&project_dir().join(d), &mut files);
    }
    assert!(files.len() >= 8, "found {} files", files.len());
    for f in files {
        let text: String = std::fs::read_to_string(&f)
            .expect("read")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            // std's own OS modules are portable std, not the `windows` crate.
            .map(|l| l.replace("std::os::windows", "std::os::WIN"))
            .collect::<Vec<_>>()
            .join("\n");
        for banned in [
            "fuser",
            "winfsp",
            "windows::",
            "windows_sys",
            "libc::",
            "use libc",
            "crate::fs::",
        ] {
            assert!(
                !text.contains(banned),
                "{} mentions {banned}: the core must stay platform-neutral",
                f.display()
            );
        }
    }
}
