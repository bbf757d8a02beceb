//! The job spec parser (TOML from `supctl job submit`, any operator): any
//! input is a spec or an error, never a panic; an accepted spec is sane.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = supd::jobspec::parse(text) {
        assert!(!spec.name.is_empty(), "accepted a spec without a name");
        assert!(spec.min_nodes() <= spec.nodes, "min_nodes above nodes");
        let _ = spec.best_node_count(spec.nodes);
    }
});
