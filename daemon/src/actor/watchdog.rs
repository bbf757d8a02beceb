//! The systemd watchdog, pinged from the actor's own loop.

use std::time::Duration;

/// The systemd watchdog (`WatchdogSec=`), pinged from the actor's loop
/// itself: the loop wakes at least every half period even when idle, and a
/// loop that is stuck (a hung store write, a runaway decision) stops the
/// pings, so systemd restarts supd. A timer task would keep pinging for a
/// dead loop. Without `WATCHDOG_USEC` (not under systemd) it does nothing.
pub(super) struct Watchdog {
    period: Option<Duration>,
    next: tokio::time::Instant,
}

impl Watchdog {
    pub(super) fn from_env() -> Watchdog {
        Watchdog {
            period: sd_notify::watchdog_enabled().map(|d| d / 2),
            next: tokio::time::Instant::now(),
        }
    }

    /// Resolves when the next ping is due (never without a watchdog).
    pub(super) async fn due(&self) {
        match self.period {
            Some(_) => tokio::time::sleep_until(self.next).await,
            None => std::future::pending().await,
        }
    }

    pub(super) fn ping_if_due(&mut self) {
        let Some(period) = self.period else { return };
        let now = tokio::time::Instant::now();
        if now >= self.next {
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                tracing::warn!(error = %e, "cannot ping the systemd watchdog");
            }
            self.next = now + period;
        }
    }
}
