//! supd's TOML config file: parsed and validated, or a clear error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Config::load reads a file; a scratch one per process is reused.
    thread_local! {
        static FILE: tempfile::NamedTempFile = tempfile::NamedTempFile::new().expect("scratch file");
    }
    FILE.with(|f| {
        std::fs::write(f.path(), data).expect("write scratch file");
        let _ = supd::config::Config::load(Some(f.path()), Default::default());
    });
});
