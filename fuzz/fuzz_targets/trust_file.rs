//! The trusted-certificates file (`davdrive trust`): pins or an error naming the file and
//! the line, never a panic; a pin written the way `davdrive trust` writes it is read back.
#![no_main]
use davdrive::config::trust;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(url) = url::Url::parse("https://nas.example:8443/dav/") else {
        return;
    };
    match trust::pins_in(text, "trusted-certs", &url) {
        Ok(_) => {
            let pin = [0x5a; 32];
            let hex: Vec<String> = pin.iter().map(|b| format!("{b:02X}")).collect();
            let line = format!("\n{} {}\n", trust::origin(&url), hex.join(":"));
            let more = format!("{text}{line}");
            let pins = trust::pins_in(&more, "trusted-certs", &url).expect("a good line added");
            assert!(pins.contains(&pin));
        }
        Err(e) => assert!(e.starts_with("trusted-certs line "), "{e}"),
    }
});
