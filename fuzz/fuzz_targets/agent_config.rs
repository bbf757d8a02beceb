//! sup-agent's TOML config file and the Xid rule table (both operator
//! files): parsed or refused, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = sup_agent::config::FileConfig::parse(text);
    let _ = sup_agent::health::rules::Rules::parse(text);
});
