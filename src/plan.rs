//! Sizing a pool before it exists (`leaseline plan`): a request rate and how long each lease
//! holds its number give the offered load, and Erlang-B the numbers it needs. Also the one
//! parser of a blocking target, for the command and `GET /v1/pools/{pool}/capacity` alike.

use std::fmt::Write as _;
use std::time::Duration;

use crate::core::{erlang_b, servers_for};
use crate::duration::fmt_duration;

/// Loads beyond this are refused: they would need more numbers than any pool holds, and the
/// search would take long.
pub const MAX_ERLANGS: f64 = 1_000_000.0;

/// A blocking target: `0.01` or `1%`, strictly between 0 and 1 (no NaN, no exponent).
pub fn parse_blocking(s: &str) -> Result<f64, String> {
    let bad =
        || format!("{s:?} is not a probability between 0 and 1 (exclusive), such as 0.01 or 1%");
    let (digits, scale) = match s.strip_suffix('%') {
        Some(p) => (p, 100.0),
        None => (s, 1.0),
    };
    let b = decimal(digits).ok_or_else(bad)? / scale;
    match b > 0.0 && b < 1.0 {
        true => Ok(b),
        false => Err(bad()),
    }
}

/// A plain decimal (`120`, `0.5`, `.5`): digits and at most one dot, nothing else.
fn decimal(s: &str) -> Option<f64> {
    let plain = !s.is_empty()
        && s.len() <= 32
        && s.bytes().all(|c| c.is_ascii_digit() || c == b'.')
        && s.bytes().filter(|&c| c == b'.').count() <= 1;
    s.parse().ok().filter(|x: &f64| plain && x.is_finite())
}

/// A request rate such as `120/min`, `2/s`, `5000/h` or `40000/d`: requests a second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let bad =
        || format!("{s:?} is not a rate such as \"120/min\", \"2/s\", \"5000/h\" or \"40000/d\"");
    let (n, unit) = s.split_once('/').ok_or_else(bad)?;
    let per = match unit {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        "d" | "day" => 86_400.0,
        _ => return Err(bad()),
    };
    Ok(decimal(n).ok_or_else(bad)? / per)
}

/// A pool sized on paper: what it is offered and what Erlang-B says of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Requests for a new number a second.
    pub rate: f64,
    /// Mean lease lifetime, and the quarantine after it.
    pub ttl: Duration,
    pub quarantine: Duration,
    pub blocking: f64,
    /// A size to judge, if one was given.
    pub numbers: Option<u64>,
}

impl Plan {
    /// How long a number is held per lease.
    pub fn holding(&self) -> Duration {
        self.ttl + self.quarantine
    }

    /// Erlangs offered: requests a second times seconds held.
    pub fn erlangs(&self) -> f64 {
        self.rate * self.holding().as_secs_f64()
    }

    /// Refuses a load no pool could carry.
    pub fn check(&self) -> Result<(), String> {
        match self.erlangs() <= MAX_ERLANGS {
            true => Ok(()),
            false => Err(format!(
                "{:.0} Erlangs offered: more than {MAX_ERLANGS:.0}, which no pool carries",
                self.erlangs()
            )),
        }
    }

    /// The plan as the command prints it.
    pub fn render(&self) -> String {
        let a = self.erlangs();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "offered load: {a:.1} Erlangs ({} requests a second, each holding a number {}: ttl {} + quarantine {})",
            trim(self.rate),
            fmt_duration(self.holding()),
            fmt_duration(self.ttl),
            fmt_duration(self.quarantine),
        );
        let _ = writeln!(
            out,
            "numbers needed for {} blocking: {}",
            percent(self.blocking),
            servers_for(a, self.blocking)
        );
        if let Some(n) = self.numbers {
            let _ = writeln!(
                out,
                "with {n} numbers: {} of requests find none",
                percent(erlang_b(n, a))
            );
        }
        let _ = writeln!(out, "\nblocking  numbers");
        for b in [0.001, 0.01, 0.02, 0.05, 0.1] {
            let _ = writeln!(out, "{:<9} {}", percent(b), servers_for(a, b));
        }
        out
    }
}

/// A probability as a percentage, without trailing zeros.
fn percent(p: f64) -> String {
    format!("{}%", trim(p * 100.0))
}

/// Up to three decimals, without trailing zeros.
fn trim(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_people_write_them() {
        assert_eq!(parse_rate("120/min"), Ok(2.0));
        assert_eq!(parse_rate("2/s"), Ok(2.0));
        assert_eq!(parse_rate("7200/h"), Ok(2.0));
        assert_eq!(parse_rate("0.5/s"), Ok(0.5));
        for bad in [
            "120", "/min", "120/week", "-1/s", "1e3/s", "NaN/s", "inf/s", "1.2.3/s", "é/s",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blocking_is_a_probability_or_a_percentage() {
        assert_eq!(parse_blocking("0.01"), Ok(0.01));
        assert_eq!(parse_blocking("1%"), Ok(0.01));
        assert_eq!(parse_blocking("0.1%"), Ok(0.001));
        for bad in [
            "0", "1", "100%", "0%", "-0.01", "NaN", "inf", "1e-2", "", "%", "0.01%%", "2",
        ] {
            assert!(parse_blocking(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_issues_example_needs_a_few_more_numbers_than_its_erlangs() {
        let p = Plan {
            rate: parse_rate("120/min").unwrap(),
            ttl: Duration::from_secs(15 * 60),
            quarantine: Duration::from_secs(10 * 60),
            blocking: 0.01,
            numbers: Some(3000),
        };
        // 2 a second held 1500 s.
        assert_eq!(p.erlangs(), 3000.0);
        let text = p.render();
        assert!(text.contains("offered load: 3000.0 Erlangs"), "{text}");
        assert!(
            text.contains(&format!(
                "numbers needed for 1% blocking: {}",
                servers_for(3000.0, 0.01)
            )),
            "{text}"
        );
        assert!(text.contains("with 3000 numbers: "), "{text}");
        let huge = Plan { rate: 1e9, ..p };
        assert!(huge.check().is_err());
    }
}
