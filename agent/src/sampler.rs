//! The probe thread: the one OS thread that owns the [`GpuProbe`], samples it
//! every telemetry interval and publishes the latest sample.
//!
//! A dedicated thread rather than a tokio task because NVML calls block (for
//! seconds on a sick GPU) and NVML's `Device` handles borrow the library
//! object, which is simplest kept on one thread for its whole life. The
//! probe is even opened on this thread, so it never crosses threads at all.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use sup_proto::v1::{GpuInfo, Telemetry};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::probe::{GpuProbe, HealthSample, ProbeError, XidSink};

/// Samples asked for out of turn (after an Xid) come no closer together
/// than this, so an Xid storm cannot turn into an NVML polling storm.
const MIN_EXTRA_SAMPLE_GAP: Duration = Duration::from_millis(100);

/// Handle to the probe thread. Dropping it stops the thread after its
/// current sample.
pub struct Sampler {
    commands: mpsc::Sender<Command>,
    latest: watch::Receiver<Telemetry>,
    health: watch::Receiver<HealthSample>,
}

enum Command {
    SetInterval(Duration),
    SampleNow,
}

/// Asks the probe thread for a sample now, e.g. because an Xid suggests the
/// GPU's state just changed. Cheap to clone; outlives the [`Sampler`]
/// harmlessly (requests to a stopped thread go nowhere).
#[derive(Clone)]
pub struct SampleTrigger {
    commands: mpsc::Sender<Command>,
}

impl SampleTrigger {
    pub fn sample_now(&self) {
        // A send error means the thread is gone: nothing to sample.
        let _ = self.commands.send(Command::SampleNow);
    }
}

impl std::fmt::Debug for SampleTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SampleTrigger")
    }
}

impl Sampler {
    /// Opens the probe with `open` on a new thread, takes the inventory and a
    /// first sample there, and returns once both are known. Any failure on
    /// the way is returned: a node that cannot see its GPUs at startup should
    /// not register as if it had none.
    pub async fn start<F>(
        open: F,
        interval: Duration,
    ) -> Result<(Sampler, Vec<GpuInfo>), ProbeError>
    where
        F: FnOnce() -> Result<Box<dyn GpuProbe>, ProbeError> + Send + 'static,
    {
        Sampler::start_with_xids(open, interval, None).await
    }

    /// [`Sampler::start`], and the probe's own Xid events (NVML's event
    /// set) go to `xids` once the inventory is taken. A probe that cannot
    /// watch Xids still starts: polling and other sources remain.
    pub async fn start_with_xids<F>(
        open: F,
        interval: Duration,
        xids: Option<XidSink>,
    ) -> Result<(Sampler, Vec<GpuInfo>), ProbeError>
    where
        F: FnOnce() -> Result<Box<dyn GpuProbe>, ProbeError> + Send + 'static,
    {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (commands, command_rx) = mpsc::channel();
        thread::Builder::new()
            .name("gpu-probe".into())
            .spawn(move || {
                let started = open().and_then(|mut probe| {
                    let inventory = probe.inventory()?;
                    if let Some(sink) = xids {
                        match probe.watch_xids(sink) {
                            Ok(true) => info!("watching the probe's Xid events"),
                            Ok(false) => {}
                            Err(err) => warn!(error = %err, "cannot watch the probe's Xid events"),
                        }
                    }
                    let first = take_sample(probe.as_mut())?;
                    let health = probe.health()?;
                    Ok((probe, inventory, first, health))
                });
                let (probe, inventory, first, health) = match started {
                    Ok(started) => started,
                    Err(err) => {
                        // The receiver only goes away if startup was abandoned.
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                let (latest_tx, latest_rx) = watch::channel(first);
                let (health_tx, health_rx) = watch::channel(health);
                if ready_tx.send(Ok((inventory, latest_rx, health_rx))).is_ok() {
                    sample_loop(probe, &latest_tx, &health_tx, &command_rx, interval);
                }
            })
            .map_err(|e| ProbeError::ThreadGone(format!("cannot spawn the probe thread: {e}")))?;

        let (inventory, latest, health) = ready_rx.await.map_err(|_| {
            ProbeError::ThreadGone("the probe thread panicked while opening the probe".into())
        })??;
        Ok((
            Sampler {
                commands,
                latest,
                health,
            },
            inventory,
        ))
    }

    /// Follows the latest sample.
    pub fn subscribe(&self) -> watch::Receiver<Telemetry> {
        self.latest.clone()
    }

    /// Follows the latest health signals (taken with every sample).
    pub fn subscribe_health(&self) -> watch::Receiver<HealthSample> {
        self.health.clone()
    }

    /// A handle that asks for a sample out of turn.
    pub fn trigger(&self) -> SampleTrigger {
        SampleTrigger {
            commands: self.commands.clone(),
        }
    }

    /// Changes the sampling interval (supd may suggest one). The next sample
    /// comes one new interval from now.
    pub fn set_interval(&self, interval: Duration) {
        // A send error means the thread is gone; subscribers find out from
        // their closed watch channel, which is where it is handled.
        let _ = self.commands.send(Command::SetInterval(interval));
    }
}

fn sample_loop(
    mut probe: Box<dyn GpuProbe>,
    latest: &watch::Sender<Telemetry>,
    health: &watch::Sender<HealthSample>,
    commands: &mpsc::Receiver<Command>,
    mut interval: Duration,
) {
    let mut next = Instant::now() + interval;
    let mut last = Instant::now();
    let mut failing = Failing::default();
    loop {
        match commands.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(Command::SetInterval(new)) => {
                if new != interval && !new.is_zero() {
                    info!(interval = %humantime::format_duration(new), "telemetry interval changed");
                    interval = new;
                    next = Instant::now() + interval;
                }
            }
            Ok(Command::SampleNow) => {
                // Out of turn: the regular schedule is left as it is.
                if last.elapsed() >= MIN_EXTRA_SAMPLE_GAP {
                    sample_once(probe.as_mut(), latest, health, &mut failing);
                    last = Instant::now();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                sample_once(probe.as_mut(), latest, health, &mut failing);
                last = Instant::now();
                // Skip slots missed while a slow sample ran rather than
                // sampling back to back to catch up.
                next += interval;
                let now = Instant::now();
                if next < now {
                    next = now + interval;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[derive(Default)]
struct Failing {
    sample: bool,
    health: bool,
}

/// Takes telemetry and health; each failure is logged when it starts and
/// when it clears. On failure nothing new is published: the stale
/// `sampled_at` tells supd the readings are old, and the health monitor
/// keeps judging on the last signals it had.
fn sample_once(
    probe: &mut dyn GpuProbe,
    latest: &watch::Sender<Telemetry>,
    health: &watch::Sender<HealthSample>,
    failing: &mut Failing,
) {
    match take_sample(probe) {
        Ok(sample) => {
            if std::mem::take(&mut failing.sample) {
                info!("GPU sampling recovered");
            }
            latest.send_replace(sample);
        }
        Err(err) => {
            if !std::mem::replace(&mut failing.sample, true) {
                warn!(error = %err, "GPU sampling failed");
            }
        }
    }
    match probe.health() {
        Ok(signals) => {
            if std::mem::take(&mut failing.health) {
                info!("GPU health polling recovered");
            }
            // Only a change wakes the health monitor.
            health.send_if_modified(|current| {
                let changed = *current != signals;
                if changed {
                    *current = signals;
                }
                changed
            });
        }
        Err(err) => {
            if !std::mem::replace(&mut failing.health, true) {
                warn!(error = %err, "GPU health polling failed");
            }
        }
    }
}

fn take_sample(probe: &mut dyn GpuProbe) -> Result<Telemetry, ProbeError> {
    let gpus = probe.sample()?;
    Ok(Telemetry {
        sampled_at_unix_ms: sup_proto::time::now_unix_ms(),
        gpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::SimProbe;
    use sup_proto::v1::GpuReading;

    #[tokio::test]
    async fn publishes_inventory_and_fresh_samples() {
        let (sampler, inventory) = Sampler::start(
            || Ok(Box::new(SimProbe::new("n", 2)) as Box<dyn GpuProbe>),
            Duration::from_millis(10),
        )
        .await
        .expect("sim starts");
        assert_eq!(inventory.len(), 2);
        let mut latest = sampler.subscribe();
        let first = latest.borrow_and_update().clone();
        assert_eq!(first.gpus.len(), 2);
        assert!(first.sampled_at_unix_ms > 0);
        tokio::time::timeout(Duration::from_secs(5), latest.changed())
            .await
            .expect("a new sample within 5s")
            .expect("sampler alive");
        assert!(latest.borrow().sampled_at_unix_ms >= first.sampled_at_unix_ms);
    }

    struct Broken;
    impl GpuProbe for Broken {
        fn inventory(&self) -> Result<Vec<GpuInfo>, ProbeError> {
            Ok(Vec::new())
        }
        fn sample(&mut self) -> Result<Vec<GpuReading>, ProbeError> {
            Err(ProbeError::ThreadGone("broken on purpose".into()))
        }
    }

    #[tokio::test]
    async fn open_and_first_sample_failures_are_returned() {
        let err = Sampler::start(
            || Err(ProbeError::ThreadGone("cannot open on purpose".into())),
            Duration::from_secs(1),
        )
        .await
        .err()
        .expect("open failure returned");
        assert!(err.to_string().contains("cannot open on purpose"), "{err}");

        let err = Sampler::start(
            || Ok(Box::new(Broken) as Box<dyn GpuProbe>),
            Duration::from_secs(1),
        )
        .await
        .err()
        .expect("first sample failure returned");
        assert!(err.to_string().contains("broken on purpose"), "{err}");
    }

    #[tokio::test]
    async fn dropping_the_sampler_stops_the_thread() {
        let (sampler, _) = Sampler::start(
            || Ok(Box::new(SimProbe::new("n", 1)) as Box<dyn GpuProbe>),
            Duration::from_millis(5),
        )
        .await
        .expect("sim starts");
        let mut latest = sampler.subscribe();
        drop(sampler);
        // The thread drops its sender when it exits, which closes the watch.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while latest.changed().await.is_ok() {}
        })
        .await;
        assert!(closed.is_ok(), "probe thread did not stop");
    }
}
