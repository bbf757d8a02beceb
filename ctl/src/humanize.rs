//! Small value formatters shared by the tables: ages, timestamps, readings,
//! and keeping free text on one line.

use std::time::Duration;

use sup_proto::time::from_unix_ms;

/// Shown for a value that is absent (never zero: a missing reading is not 0).
pub const NONE: &str = "-";

/// "3s ago", "4m12s ago", "5h ago"; `-` when the timestamp is unset (0).
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return NONE.to_owned();
    }
    // A timestamp slightly in the future is clock skew between hosts, not
    // something to show as a negative age.
    let elapsed = u64::try_from(now_ms.saturating_sub(then_ms)).unwrap_or(0);
    format!("{} ago", age(Duration::from_millis(elapsed)))
}

/// Compact age, precise when recent and coarse when old (the habit of
/// kubectl's AGE column): 45s, 4m12s, 47m, 5h3m, 30h, 3d4h, 12d.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h, days) = (s / 60, s / 3600, s / 86_400);
    let with = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        with(m, "m", s % 60, "s")
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        with(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if days < 8 {
        with(days, "d", h % 24, "h")
    } else {
        format!("{days}d")
    }
}

/// RFC 3339 in UTC to the second, e.g. `2026-03-01T12:00:05Z`; `-` when unset.
pub fn timestamp(ms: i64) -> String {
    if ms <= 0 {
        return NONE.to_owned();
    }
    humantime::format_rfc3339_seconds(from_unix_ms(ms)).to_string()
}

/// Text from the server goes into table cells and one-line messages; a
/// newline or control character in it would break the layout.
pub fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_control())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_owned()
}

/// Shortens to at most `max` characters (not bytes), marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let keep = max.saturating_sub(3);
    let mut out: String = s.chars().take(keep).collect();
    out.push_str("...");
    out
}

pub fn or_none(s: &str) -> String {
    if s.is_empty() {
        NONE.to_owned()
    } else {
        one_line(s)
    }
}

pub fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| NONE.to_owned())
}

/// A rate with an SI suffix: `950`, `12.3k`, `4.56M`.
pub fn si(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        NONE.to_owned()
    } else if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A 0-1 ratio as a percentage: `41.3%`.
pub fn percent(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}%", v * 100.0)
    } else {
        NONE.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_precise_when_recent_and_coarse_when_old() {
        let secs = |s| age(Duration::from_secs(s));
        assert_eq!(secs(0), "0s");
        assert_eq!(secs(3), "3s");
        assert_eq!(secs(119), "119s");
        assert_eq!(secs(120), "2m");
        assert_eq!(secs(252), "4m12s");
        assert_eq!(secs(47 * 60 + 5), "47m");
        assert_eq!(secs(5 * 3600 + 3 * 60), "5h3m");
        assert_eq!(secs(30 * 3600), "30h");
        assert_eq!(secs(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(secs(12 * 86_400 + 5), "12d");
    }

    #[test]
    fn ago_handles_unset_and_skewed_timestamps() {
        let now = 1_000_000;
        assert_eq!(ago(now, now - 3_000), "3s ago");
        assert_eq!(ago(now, now - 3_999), "3s ago");
        assert_eq!(ago(now, 0), "-");
        assert_eq!(ago(now, now + 5_000), "0s ago");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(timestamp(0), "-");
    }

    #[test]
    fn truncate_counts_characters_not_bytes() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdefghij", 6), "abc...");
        assert_eq!(truncate("ééééééééé", 5), "éé...");
    }

    #[test]
    fn one_line_removes_newlines() {
        assert_eq!(one_line("xid 79\non gpu 3\r\n"), "xid 79 on gpu 3");
    }

    #[test]
    fn si_and_percent() {
        assert_eq!(si(950.0), "950");
        assert_eq!(si(12_345.0), "12.3k");
        assert_eq!(si(4_560_000.0), "4.560M");
        assert_eq!(si(2.5), "2.5");
        assert_eq!(percent(0.4151), "41.5%");
        assert_eq!(percent(f64::NAN), NONE);
    }
}
