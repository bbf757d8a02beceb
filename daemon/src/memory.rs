//! Handing freed heap memory back to the kernel.
//!
//! supd's large transient allocations (a snapshot of every node built for
//! readers, the buffers of a reconnect storm, a scrape of every GPU) are
//! freed in the middle of glibc's heap, which keeps such pages resident
//! unless they are at its very top. `malloc_trim(0)` releases every whole
//! free page wherever it is. Run off the runtime's workers, every few
//! seconds: a pass costs milliseconds at 16,384 nodes, and without it the
//! resident size only ever grows to the largest moment seen.

use std::time::Duration;

use tokio::sync::watch;

/// How often free pages are given back.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Runs until `stop` turns true.
pub async fn trim_periodically(mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(TRIM_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = ticks.tick() => {}
        }
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // the one libc call, no safe wrapper exists
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes the
    // allocator's locks like any malloc call and touches no Rust object.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
