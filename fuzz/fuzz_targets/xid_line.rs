//! Kernel log lines (anything a driver or a user can get into the kernel
//! log): an Xid or nothing, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    if let Some(x) = sup_agent::probe::kernel_log::parse_line(&line) {
        assert!(
            line.contains("NVRM: Xid"),
            "an Xid from a line without the marker"
        );
        let _ = x.detail.len();
    }
});
