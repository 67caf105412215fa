//! The settings parser: any TOML text either loads into valid settings or gives errors naming
//! keys — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ghgate::config::Settings::from_toml_str(text) {
        Ok(settings) => assert!(settings.validate().is_ok(), "loaded settings validate again"),
        Err(errors) => assert!(!errors.to_string().is_empty(), "an error says something"),
    }
});
