//! Xid events from NVML, as they happen: one thread registers every GPU for
//! critical-Xid events in an NVML event set and blocks in
//! `nvmlEventSetWait`, so an Xid reaches the health monitor within
//! milliseconds instead of at the next poll.
//!
//! The thread shares the `Nvml` handle with the probe thread (NVML is
//! thread-safe). It never gives up while the agent runs: if waiting fails
//! (a driver hiccup), it re-registers after a backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};
use tracing::{debug, info, warn};

use super::nvml_errors::{classify, ErrorClass};
use super::xid::{XidObservation, XidSink, XidSource};

/// How long one wait blocks: also how quickly the thread notices a stop.
const WAIT_MS: u32 = 500;
const MIN_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// NVML's code for "an Xid it could not decode".
const UNKNOWN_XID: u32 = 999;

pub fn spawn(
    nvml: Arc<Nvml>,
    count: u32,
    sink: XidSink,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    thread::Builder::new()
        .name("nvml-xid-events".into())
        .spawn(move || run(&nvml, count, &sink, &stop))
        .map(|_| ())
}

fn stopped(sink: &XidSink, stop: &AtomicBool) -> bool {
    stop.load(Ordering::Relaxed) || sink.is_closed()
}

fn run(nvml: &Nvml, count: u32, sink: &XidSink, stop: &AtomicBool) {
    let mut retry = MIN_RETRY;
    while !stopped(sink, stop) {
        match register(nvml, count) {
            Ok(Some(watched)) => {
                info!(gpus = watched.gpus.len(), "waiting for NVML Xid events");
                match wait_loop(&watched, sink, stop) {
                    Ok(()) => return,
                    Err(err) => {
                        warn!(error = %err, "waiting for NVML events failed; re-registering")
                    }
                }
                retry = MIN_RETRY;
            }
            Ok(None) => {
                // Nothing to watch: the driver offers no Xid events here.
                // The kernel log, if configured, still reports them.
                warn!("no GPU supports NVML Xid events; relying on polling and the kernel log");
                return;
            }
            Err(err) => warn!(error = %err, "cannot register for NVML Xid events; retrying"),
        }
        sleep_unless_stopped(retry, sink, stop);
        retry = (retry * 2).min(MAX_RETRY);
    }
}

fn sleep_unless_stopped(total: Duration, sink: &XidSink, stop: &AtomicBool) {
    let step = Duration::from_millis(u64::from(WAIT_MS));
    let mut slept = Duration::ZERO;
    while slept < total && !stopped(sink, stop) {
        thread::sleep(step);
        slept += step;
    }
}

struct Watched<'nvml> {
    set: EventSet<'nvml>,
    /// (index, device) of every GPU registered in `set`.
    gpus: Vec<(u32, Device<'nvml>)>,
}

/// Registers every GPU that supports critical-Xid events. A GPU that cannot
/// be registered (lost, or no event support) is skipped and logged; the
/// rest are still watched. `Ok(None)`: none could be.
fn register(nvml: &Nvml, count: u32) -> Result<Option<Watched<'_>>, NvmlError> {
    let mut set = nvml.create_event_set()?;
    let mut gpus: Vec<(u32, Device<'_>)> = Vec::new();
    for index in 0..count {
        let device = match nvml.device_by_index(index) {
            Ok(device) => device,
            Err(err) => {
                warn!(gpu = index, error = %err, "cannot watch this GPU for Xid events");
                continue;
            }
        };
        match device.supported_event_types() {
            Ok(types) if !types.contains(EventTypes::CRITICAL_XID_ERROR) => {
                info!(gpu = index, "GPU does not report Xid events through NVML");
                continue;
            }
            // Registration itself will say whether it works.
            Ok(_) | Err(_) => {}
        }
        match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(registered) => {
                set = registered;
                gpus.push((index, device));
            }
            Err(err) => {
                warn!(gpu = index, error = %err.error, "cannot watch this GPU for Xid events");
                // A failed registration frees the set (nvml-wrapper does,
                // as NVML asks): start a new one with the GPUs that worked.
                set = nvml.create_event_set()?;
                for (_, device) in &gpus {
                    set = device
                        .register_events(EventTypes::CRITICAL_XID_ERROR, set)
                        .map_err(|e| e.error)?;
                }
            }
        }
    }
    Ok((!gpus.is_empty()).then_some(Watched { set, gpus }))
}

/// Delivers events until stopped (`Ok`) or waiting fails (`Err`).
fn wait_loop(watched: &Watched<'_>, sink: &XidSink, stop: &AtomicBool) -> Result<(), NvmlError> {
    loop {
        if stopped(sink, stop) {
            return Ok(());
        }
        let event = match watched.set.wait(WAIT_MS) {
            Ok(event) => event,
            Err(NvmlError::Timeout) => continue,
            // One GPU falling off the bus must not stop the others' events.
            Err(err) if classify(&err) == ErrorClass::FatalForGpu => {
                debug!(error = %err, "event wait reported a lost GPU");
                continue;
            }
            Err(err) => return Err(err),
        };
        let xid = match event.event_data {
            Some(XidError::Value(code)) => u32::try_from(code).unwrap_or(UNKNOWN_XID),
            Some(XidError::Unknown) => UNKNOWN_XID,
            None => continue,
        };
        let Some(gpu_index) = event_gpu(&event.device, &watched.gpus) else {
            warn!(
                xid,
                "NVML reported an Xid for a GPU it cannot name; dropping it"
            );
            continue;
        };
        let delivered = sink.send(XidObservation {
            gpu_index,
            xid,
            at_unix_ms: sup_proto::time::now_unix_ms(),
            source: XidSource::Nvml,
            detail: String::new(),
        });
        if !delivered {
            return Ok(());
        }
    }
}

/// Which registered GPU an event came from. NVML's index query comes
/// first; it may fail on exactly the GPU that just fell off the bus, so the
/// handle itself is compared next. nvml-wrapper exposes handles only
/// through `unsafe`, which this crate does not use, but its `Debug` output
/// prints the handle, which is enough to tell equal ones apart.
fn event_gpu(device: &Device<'_>, gpus: &[(u32, Device<'_>)]) -> Option<u32> {
    if let Ok(index) = device.index() {
        if gpus.iter().any(|(i, _)| *i == index) {
            return Some(index);
        }
    }
    let wanted = format!("{device:?}");
    gpus.iter()
        .find(|(_, d)| format!("{d:?}") == wanted)
        .map(|(i, _)| *i)
}
