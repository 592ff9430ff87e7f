//! The profile file parser and the secrets-file line splitter on arbitrary text: a result or
//! a clear error, never a panic.
#![no_main]
use davdrive::config::profile;
use davdrive::credentials::split_fields;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = profile::parse(text, "config.toml") {
        assert!(e.0.starts_with("config.toml"));
    }
    for line in text.lines() {
        let _ = split_fields(line);
    }
});
