//! Durations in words for messages (`3m12s`), used by token and diagnose output.

/// Formats a number of seconds compactly: `45s`, `3m12s`, `2h5m`, `3d4h`.
pub fn human_duration(secs: i64) -> String {
    let s = secs.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60, s % 60);
    let body = if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    };
    if secs < 0 { format!("-{body}") } else { body }
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn formats() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(7500), "2h5m");
        assert_eq!(human_duration(90_000), "1d1h");
        assert_eq!(human_duration(-5), "-5s");
    }
}
