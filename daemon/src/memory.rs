//! What supd's allocator holds, for `/metrics`: the bytes the program has
//! allocated, and the pages the allocator keeps resident for them (the
//! difference is fragmentation and freed pages not yet given back).
//!
//! The supd binary installs jemalloc as its allocator (`src/main.rs`) and
//! says so here; a program that links this library with another allocator
//! reports nothing rather than the figures of an allocator it does not use.

use std::sync::atomic::{AtomicBool, Ordering};

static JEMALLOC: AtomicBool = AtomicBool::new(false);

/// Called by a binary whose global allocator is tikv-jemallocator.
pub fn jemalloc_installed() {
    JEMALLOC.store(true, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy)]
pub struct HeapStats {
    /// Bytes allocated by the program.
    pub allocated: u64,
    /// Bytes in pages the allocator holds resident (its metadata included).
    pub resident: u64,
}

/// The allocator's figures now, if it is jemalloc.
pub fn heap() -> Option<HeapStats> {
    if !JEMALLOC.load(Ordering::Relaxed) {
        return None;
    }
    read()
}

#[cfg(not(target_env = "msvc"))]
fn read() -> Option<HeapStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The statistics are a copy refreshed when the epoch advances.
    epoch::advance().ok()?;
    Some(HeapStats {
        allocated: stats::allocated::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
    })
}

#[cfg(target_env = "msvc")]
fn read() -> Option<HeapStats> {
    None
}
