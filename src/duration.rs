//! Durations as the configuration and the command line write them: `90s`, `15m`, `2h`, `1d`,
//! `1y`, `500ms`, or several together (`1h30m`). A leaf: the config, the webhooks' settings and
//! `leaseline plan` all read durations this way.

use std::fmt;
use std::time::Duration;

/// `90s`, `15m`, `2h`, `1d`, `500ms`, or several together (`1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected = "expected a duration such as \"90s\", \"15m\", \"2h\" or \"1h30m\"";
    let mut total: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(expected.into());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(expected.into());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| expected.to_string())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(expected.into()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .ok_or("duration too long")?;
    }
    Ok(Duration::from_millis(total))
}

/// The shortest way to write a duration in the config's own syntax.
pub fn fmt_duration(d: Duration) -> String {
    struct D(u64);
    impl fmt::Display for D {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut ms = self.0;
            if ms == 0 {
                return f.write_str("0s");
            }
            for (unit, size) in [
                ("d", 86_400_000),
                ("h", 3_600_000),
                ("m", 60_000),
                ("s", 1000),
                ("ms", 1),
            ] {
                if ms >= size {
                    write!(f, "{}{unit}", ms / size)?;
                    ms %= size;
                }
            }
            Ok(())
        }
    }
    D(d.as_millis() as u64).to_string()
}
