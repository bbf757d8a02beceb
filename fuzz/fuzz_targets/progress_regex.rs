//! A job's `progress_regex` (from an operator's job spec) and the rank log
//! lines it is matched against (from the training script): the pattern is
//! compiled or refused, and every line matched or not, never a panic.
//! Input: the pattern, a newline, then the log text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (pattern, log) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(p) = sup_proto::progress_regex::ProgressPattern::new(pattern) {
        for line in log.lines() {
            let _ = p.match_line(line);
        }
    }
});
