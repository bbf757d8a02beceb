//! Checkpoint metadata readers: the input becomes a checkpoint directory
//! (Megatron's tracker file, whose content is written non-atomically by the
//! job, and directory names), scanned with every layout.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("scratch dir");
    // First line: directory names separated by '/'-free tokens; the rest:
    // the Megatron tracker file's bytes.
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (names, tracker) = data.split_at(split);
    for name in String::from_utf8_lossy(names).split(' ').take(8) {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            continue;
        }
        let d = dir.path().join(name);
        if std::fs::create_dir_all(&d).is_ok() {
            let _ = std::fs::write(d.join(".metadata"), b"");
            let _ = std::fs::write(d.join("COMPLETE"), b"");
        }
        let _ = sup_agent::checkpoint::trailing_number(name);
    }
    let _ = std::fs::write(
        dir.path().join("latest_checkpointed_iteration.txt"),
        tracker,
    );
    for layout in ["dcp", "megatron", "orbax", "marker:COMPLETE"] {
        if let Ok(found) = sup_agent::checkpoint::scan(dir.path(), layout) {
            for c in found {
                assert!(
                    std::path::Path::new(&c.path).starts_with(dir.path()),
                    "escaped the directory"
                );
            }
        }
    }
    let _ = sup_agent::checkpoint::scan(dir.path(), &String::from_utf8_lossy(tracker));
});
