//! Progress lines from training ranks (untrusted: any process on the node
//! can write to the progress socket): parsed or rejected, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sup_agent::progress::parse_line(data);
});
