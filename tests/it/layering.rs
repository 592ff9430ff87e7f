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

/// The module of a source file: `src/vfs/write.rs` → `vfs::write`, `src/vfs/mod.rs` → `vfs`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

/// Module paths named by `text`: `crate::a::b`, `super::x` (relative to `me`), with one level
/// of `{a, b::c}` groups expanded.
fn references(text: &str, me: &[String], is_dir_module: bool) -> Vec<Vec<String>> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    // The module `super` means: the parent of this file's module (for mod.rs, of the folder).
    let mut base_of_super = me.to_vec();
    if !is_dir_module || !me.is_empty() {
        base_of_super.pop();
    }
    for (start, _) in text
        .match_indices("crate::")
        .chain(text.match_indices("super::"))
    {
        // Skip `super::` inside `super::super::` chains' tails and identifiers ending in them.
        if start > 0 {
            let prev = text[..start].chars().next_back().unwrap_or(' ');
            if prev.is_alphanumeric() || prev == '_' || prev == ':' {
                continue;
            }
        }
        let mut rest = &text[start..];
        let mut path: Vec<String> = if rest.starts_with("crate::") {
            rest = &rest["crate::".len()..];
            Vec::new()
        } else {
            let mut p = base_of_super.clone();
            rest = &rest["super::".len()..];
            while let Some(r) = rest.strip_prefix("super::") {
                p.pop();
                rest = r;
            }
            p
        };
        loop {
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let item = item.trim();
                    let mut p = path.clone();
                    for seg in item.split("::") {
                        let id = ident(seg.trim());
                        if id.is_empty() || id == "self" {
                            break;
                        }
                        p.push(id);
                    }
                    out.push(p);
                }
                break;
            }
            let id = ident(rest);
            if id.is_empty() {
                out.push(path);
                break;
            }
            rest = &rest[id.len()..];
            path.push(id);
            match rest.strip_prefix("::") {
                Some(r) => rest = r,
                None => {
                    out.push(path);
                    break;
                }
            }
        }
    }
    out
}

/// No two modules of src/ import each other, directly or through others (a child naming
/// its own ancestors does not count: the ancestor declares it).
#[test]
fn no_import_cycles_between_modules() {
    let src = project_dir().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: Vec<(Vec<String>, std::path::PathBuf)> = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let known: std::collections::HashSet<Vec<String>> =
        modules.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: std::collections::BTreeMap<
        Vec<String>,
        std::collections::BTreeSet<Vec<String>>,
    > = Default::default();
    for (me, file) in &modules {
        let is_dir_module = file
            .file_name()
            .is_some_and(|n| n == "mod.rs" || n == "lib.rs" || n == "main.rs");
        let text: String = std::fs::read_to_string(file)
            .expect("read")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        // Test modules may reach anywhere.
        let text = text.split("#[cfg(test)]").next().unwrap_or("").to_owned();
        for mut r in references(&text, me, is_dir_module) {
            while !r.is_empty() && !known.contains(&r) {
                r.pop();
            }
            let ancestor = r.len() <= me.len() && me[..r.len()] == r[..];
            if r.is_empty() || ancestor || &r == me {
                continue;
            }
            edges.entry(me.clone()).or_default().insert(r);
        }
    }
    // Depth-first search for a cycle, printing it.
    fn visit(
        m: &Vec<String>,
        edges: &std::collections::BTreeMap<Vec<String>, std::collections::BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut std::collections::HashSet<Vec<String>>,
    ) -> Option<String> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let cycle: Vec<String> = stack[i..].iter().chain([m]).map(|p| p.join("::")).collect();
            return Some(cycle.join(" -> "));
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.clone());
        None
    }
    assert!(edges.len() > 10, "the import graph looks empty: {edges:?}");
    let mut done = std::collections::HashSet::new();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            panic!("an import cycle: {cycle}");
        }
    }
}
