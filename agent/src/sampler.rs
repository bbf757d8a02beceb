//! The probe thread: the one OS thread that owns the [`GpuProbe`], samples it
//! every telemetry interval and publishes the latest sample.
//!
//! A dedicated thread rather than a tokio task because NVML calls block (for
//! seconds on a sick GPU) and NVML's `Device` handles borrow the library
//! object, which is simplest kept on one thread for its whole life. The
//! probe is even opened on this thread, so it never crosses threads at all.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sup_proto::v1::{GpuInfo, Telemetry};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::probe::{GpuProbe, ProbeError};

/// Handle to the probe thread. Dropping it stops the thread after its
/// current sample.
pub struct Sampler {
    commands: mpsc::Sender<Command>,
    latest: watch::Receiver<Telemetry>,
}

enum Command {
    SetInterval(Duration),
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
        let (ready_tx, ready_rx) = oneshot::channel();
        let (commands, command_rx) = mpsc::channel();
        thread::Builder::new()
            .name("gpu-probe".into())
            .spawn(move || {
                let started = open().and_then(|mut probe| {
                    let inventory = probe.inventory()?;
                    let first = take_sample(probe.as_mut())?;
                    Ok((probe, inventory, first))
                });
                let (probe, inventory, first) = match started {
                    Ok(started) => started,
                    Err(err) => {
                        // The receiver only goes away if startup was abandoned.
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                let (latest_tx, latest_rx) = watch::channel(first);
                if ready_tx.send(Ok((inventory, latest_rx))).is_ok() {
                    sample_loop(probe, &latest_tx, &command_rx, interval);
                }
            })
            .map_err(|e| ProbeError::ThreadGone(format!("cannot spawn the probe thread: {e}")))?;

        let (inventory, latest) = ready_rx.await.map_err(|_| {
            ProbeError::ThreadGone("the probe thread panicked while opening the probe".into())
        })??;
        Ok((Sampler { commands, latest }, inventory))
    }

    /// Follows the latest sample.
    pub fn subscribe(&self) -> watch::Receiver<Telemetry> {
        self.latest.clone()
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
    commands: &mpsc::Receiver<Command>,
    mut interval: Duration,
) {
    let mut next = Instant::now() + interval;
    let mut failing = false;
    loop {
        match commands.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(Command::SetInterval(new)) => {
                if new != interval && !new.is_zero() {
                    info!(interval = %humantime::format_duration(new), "telemetry interval changed");
                    interval = new;
                    next = Instant::now() + interval;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                match take_sample(probe.as_mut()) {
                    Ok(sample) => {
                        if failing {
                            info!("GPU sampling recovered");
                            failing = false;
                        }
                        latest.send_replace(sample);
                    }
                    // Keep publishing nothing new: the stale `sampled_at`
                    // tells supd the readings are old.
                    Err(err) => {
                        if !failing {
                            warn!(error = %err, "GPU sampling failed");
                            failing = true;
                        }
                    }
                }
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

fn take_sample(probe: &mut dyn GpuProbe) -> Result<Telemetry, ProbeError> {
    let gpus = probe.sample()?;
    Ok(Telemetry {
        sampled_at_unix_ms: unix_ms(SystemTime::now()),
        gpus,
    })
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
