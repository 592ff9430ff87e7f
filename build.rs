//! Build script: delay-load linking of WinFsp on Windows targets. A no-op on
//! every other target (no build-dependencies, nothing to run).
//!
//! WinFsp's DLL must be delay-loaded: the exe has to start on machines without
//! WinFsp, and `winfsp::winfsp_init()` loads the DLL at run time. This is what
//! `winfsp::build::winfsp_link_delayload()` does, re-implemented here so that
//! `winfsp` is not needed as a build-dependency (its `docsrs` feature, used by
//! `winfsp-prebuilt-bindings`, would reach the host copy too), and extended
//! with the `x86_64-pc-windows-gnu` cross-check that `scripts/windows-check` runs.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("windows") {
        return;
    }

    let var = |k: &str| env::var(k).unwrap_or_default();
    let (arch, target_env, abi) = (
        var("CARGO_CFG_TARGET_ARCH"),
        var("CARGO_CFG_TARGET_ENV"),
        var("CARGO_CFG_TARGET_ABI"),
    );
    let dll = match arch.as_str() {
        "x86_64" => "winfsp-x64",
        "x86" => "winfsp-x86",
        "aarch64" => "winfsp-a64",
        other => panic!("WinFsp: unsupported target architecture {other:?}"),
    };

    match (target_env.as_str(), abi.as_str()) {
        // Native Windows build with MSVC (winfsp-sys links the import library).
        ("msvc", _) => {
            println!("cargo:rustc-link-lib=dylib=delayimp");
            println!("cargo:rustc-link-arg=/DELAYLOAD:{dll}.dll");
        }
        // llvm-mingw: lld lowers --delayload itself.
        ("gnu", "llvm") => println!("cargo:rustc-link-arg=-Wl,--delayload={dll}.dll"),
        // GNU ld has no --delayload: build a delay-import library from the
        // .def file with dlltool and link it after the rlibs (hence link-arg,
        // not link-lib). libmingwex provides __delayLoadHelper2.
        ("gnu", _) => gnu_delaylib(dll, &arch),
        (other, _) => panic!("WinFsp: unsupported target environment {other:?}"),
    }
}

fn gnu_delaylib(dll: &str, arch: &str) {
    let def = PathBuf::from(var_os("CARGO_MANIFEST_DIR")).join(format!("windows/{dll}.def"));
    println!("cargo:rerun-if-changed={}", def.display());
    println!("cargo:rerun-if-env-changed=DLLTOOL");
    assert!(
        def.is_file(),
        "{} is missing (see its header in windows/winfsp-x64.def for how to generate it)",
        def.display()
    );
    let out = PathBuf::from(var_os("OUT_DIR")).join(format!("lib{dll}-delay.a"));

    // $DLLTOOL, else the mingw-w64 cross tool when cross-compiling, else plain `dlltool` (MSYS2).
    let dlltool = env::var("DLLTOOL").unwrap_or_else(|_| {
        let triple = match arch {
            "x86" => "i686-w64-mingw32",
            _ => "x86_64-w64-mingw32",
        };
        if env::var("HOST").ok() == env::var("TARGET").ok() {
            "dlltool".to_owned()
        } else {
            format!("{triple}-dlltool")
        }
    });
    let status = Command::new(&dlltool)
        .arg("--input-def")
        .arg(&def)
        .args(["--dllname", &format!("{dll}.dll"), "--output-delaylib"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {dlltool} (install gcc-mingw-w64 / binutils-mingw-w64): {e}")
        });
    assert!(status.success(), "{dlltool} failed: {status}");

    println!("cargo:rustc-link-arg={}", out.display());
    println!("cargo:rustc-link-arg=-lmingwex");
    println!("cargo:rustc-link-arg=-lkernel32");
}

fn var_os(key: &str) -> std::ffi::OsString {
    env::var_os(key).unwrap_or_else(|| panic!("cargo did not set {key}"))
}
