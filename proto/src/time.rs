//! Wall-clock timestamps as they cross the wire: Unix milliseconds, and the
//! clock supd and the agent decide by.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds, read from the wall clock once per process and
/// advanced by the monotonic clock after that.
///
/// Liveness, grace periods and repetition windows are differences of these
/// times. Read from the wall clock each time, a clock step (NTP correcting
/// a drifted host, an operator's `date -s`) would shift every one of them
/// at once: a step forward marks every node unreachable together (and trips
/// the partition guard), a step back makes silent nodes look fresh for as
/// long as the step. Anchored, time inside one process never jumps; the
/// price is that timestamps stay off by any step taken while the process
/// runs, until it restarts.
pub fn now_unix_ms() -> i64 {
    static ANCHOR: OnceLock<(i64, Instant)> = OnceLock::new();
    let (wall, mono) = ANCHOR.get_or_init(|| (to_unix_ms(SystemTime::now()), Instant::now()));
    let elapsed = i64::try_from(mono.elapsed().as_millis()).unwrap_or(i64::MAX);
    wall.saturating_add(elapsed)
}

/// Milliseconds since the Unix epoch of `t` (0 for times before the epoch).
pub fn to_unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The inverse of [`to_unix_ms`]; negative values clamp to the epoch.
pub fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// RFC 3339 with millisecond precision in UTC, e.g. `2026-11-27T02:26:04.123Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    humantime::format_rfc3339_millis(from_unix_ms(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_clock_never_goes_back_and_starts_at_the_wall_clock() {
        let wall = to_unix_ms(SystemTime::now());
        let a = now_unix_ms();
        let b = now_unix_ms();
        assert!(b >= a);
        // The anchor is taken on first use, within this test or an earlier
        // one of this process: close to the wall clock either way.
        assert!((a - wall).abs() < 60_000, "{a} vs {wall}");
    }

    #[test]
    fn round_trips_and_formats() {
        let ms = 1_795_000_000_123;
        assert_eq!(to_unix_ms(from_unix_ms(ms)), ms);
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-5), "1970-01-01T00:00:00.000Z");
    }
}
