//! Money, exactly: amounts in whole cents (`Money`), tariff rates in ten-thousandths
//! (`Rate`), currencies as ISO 4217 codes, and what a call costs under a pool's `Tariff`.
//! Integers only: a float never holds an amount, and rounding happens once, half-up to the
//! cent, where an amount is made from a rate.

use std::fmt;

use super::types::ParseError;

fn err(msg: impl Into<String>) -> ParseError {
    ParseError(msg.into())
}

/// The largest amount accepted from outside: 10 million in any currency, far above any call
/// or purchase, and far below where sums of them could overflow an `i64` of cents.
const MAX_CENTS: i64 = 1_000_000_000;

/// Parses `"12"`, `"2.9"`, `"2.99"` (up to `max_decimals` decimals) into units of
/// `10^-max_decimals`; `None` if it is not such a decimal or exceeds `max_units`.
fn parse_fixed(s: &str, max_decimals: u32, max_units: i64) -> Option<i64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || int.len() > 12 || !digits(int) || !digits(frac) {
        return None;
    }
    if s.contains('.') && frac.is_empty() || frac.len() > max_decimals as usize {
        return None;
    }
    let scale = 10i64.pow(max_decimals);
    let frac_units = match frac.is_empty() {
        true => 0,
        false => frac.parse::<i64>().ok()? * 10i64.pow(max_decimals - frac.len() as u32),
    };
    let units = int
        .parse::<i64>()
        .ok()?
        .checked_mul(scale)?
        .checked_add(frac_units)?;
    (units <= max_units).then_some(units)
}

/// An amount of money in whole cents (hundredths of the currency's unit), never negative
/// where it comes from outside. Written as a decimal string with two decimals: `"6.78"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn from_cents(cents: i64) -> Money {
        Money(cents)
    }

    pub fn cents(self) -> i64 {
        self.0
    }

    /// A decimal string from a client or a config: digits, then at most two decimals after
    /// a dot (`"2.99"`, `"5"`, `"0.5"`); no sign, no exponent, no comma, at most 10 million.
    pub fn parse(s: &str) -> Result<Money, ParseError> {
        parse_fixed(s, 2, MAX_CENTS).map(Money).ok_or_else(|| {
            err(format!(
                "{s:?} is not an amount: expected a decimal string with at most two decimals, such as \"2.99\" (at most 10000000)"
            ))
        })
    }

    pub fn saturating_add(self, o: Money) -> Money {
        Money(self.0.saturating_add(o.0))
    }

    pub fn saturating_sub(self, o: Money) -> Money {
        Money(self.0.saturating_sub(o.0))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let c = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", c / 100, c % 100)
    }
}

/// A tariff's price, in ten-thousandths of the currency's unit: a per-minute rate may be
/// finer than a cent (`"0.0125"`); amounts made from it are rounded to the cent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(i64);

impl Rate {
    /// `"2.99"`, `"3.13"`, `"0.0125"`: at most four decimals, at most 10 million.
    pub fn parse(s: &str) -> Result<Rate, ParseError> {
        parse_fixed(s, 4, MAX_CENTS * 100).map(Rate).ok_or_else(|| {
            err(format!(
                "{s:?}: expected a decimal such as \"2.99\" (at most four decimals)"
            ))
        })
    }

    pub fn ten_thousandths(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Rate {
    /// Two decimals at least, more only where the rate has them: `"2.99"`, `"0.0125"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (int, frac) = (self.0 / 10_000, self.0 % 10_000);
        let mut frac = format!("{frac:04}");
        while frac.len() > 2 && frac.ends_with('0') {
            frac.pop();
        }
        write!(f, "{int}.{frac}")
    }
}

/// An ISO 4217 currency code: three capital letters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(s: &str) -> Result<Currency, ParseError> {
        match s.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Currency([a, b, c])),
            _ => Err(err(format!(
                "{s:?} is not an ISO 4217 currency code such as \"EUR\""
            ))),
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("validated ASCII")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a pool's calls are priced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TariffUnit {
    /// Once per answered call (at least one second long), whatever its length.
    PerCall,
    /// Per minute of `billed_seconds`: the duration rounded up to a multiple of
    /// `increment_secs` (the billing pulse; 1 s bills to the second).
    PerMinute { increment_secs: u32 },
}

/// What a pool's calls cost the caller: `{ per_call = "2.99", currency = "EUR" }` or
/// `{ per_minute = "3.13", currency = "CHF", increment = "20s" }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tariff {
    pub rate: Rate,
    pub unit: TariffUnit,
    pub currency: Currency,
}

/// What one call cost: the seconds billed and the amount, in the tariff's currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    pub billed_secs: u32,
    pub amount: Money,
    pub currency: Currency,
}

impl Tariff {
    /// What a call that lasted `duration_secs` costs. An unanswered call (0 s) costs nothing.
    /// Per call: the rate (rounded to the cent), `billed_secs` being the duration. Per minute:
    /// `rate × billed_secs / 60`, rounded half-up to the cent, `billed_secs` being the
    /// duration rounded up to a multiple of the increment.
    pub fn charge(&self, duration_secs: u32) -> Charge {
        let (billed_secs, amount) = match self.unit {
            _ if duration_secs == 0 => (0, Money::ZERO),
            TariffUnit::PerCall => (duration_secs, Money(half_up(self.rate.0 as u128, 100))),
            TariffUnit::PerMinute { increment_secs } => {
                let inc = u64::from(increment_secs.max(1));
                let billed = u64::from(duration_secs).div_ceil(inc) * inc;
                // ten-thousandths × seconds / 60 s / 100 (ten-thousandths per cent)
                let cents = half_up(self.rate.0 as u128 * u128::from(billed), 6000);
                (u32::try_from(billed).unwrap_or(u32::MAX), Money(cents))
            }
        };
        Charge {
            billed_secs,
            amount,
            currency: self.currency,
        }
    }

    /// The shortest call (in whole seconds, at least 1) whose charge reaches `amount`; `None`
    /// when no call of up to a day would (a per-call rate below it). What a caller paying by
    /// phone is held on the line for.
    pub fn secs_to_reach(&self, amount: Money) -> Option<u32> {
        const DAY: u32 = 86_400;
        if self.charge(DAY).amount < amount {
            return None;
        }
        // The charge grows with the duration: the first second reaching it, by bisection.
        let (mut lo, mut hi) = (1, DAY);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.charge(mid).amount >= amount {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Some(lo)
    }

    /// `"2.99 EUR per call"`, `"3.13 CHF per minute, billed by 20 s"`.
    pub fn describe(&self) -> String {
        match self.unit {
            TariffUnit::PerCall => format!("{} {} per call", self.rate, self.currency),
            TariffUnit::PerMinute { increment_secs: 1 } => {
                format!("{} {} per minute", self.rate, self.currency)
            }
            TariffUnit::PerMinute { increment_secs } => format!(
                "{} {} per minute, billed by {increment_secs} s",
                self.rate, self.currency
            ),
        }
    }
}

/// `n / d` rounded half-up (both non-negative), saturating at `i64::MAX`.
fn half_up(n: u128, d: u128) -> i64 {
    i64::try_from((n + d / 2) / d).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortest_paying_call_is_found_to_the_second() {
        // 60.00 a minute is 1.00 a second: 2.50 needs 3 s (2 s pay 2.00).
        let t = per_minute("60.00", 1);
        assert_eq!(t.secs_to_reach(Money::parse("2.50").unwrap()), Some(3));
        assert_eq!(t.secs_to_reach(Money::parse("2.00").unwrap()), Some(2));
        assert_eq!(t.secs_to_reach(Money::ZERO), Some(1));
        // Billed by 20 s pulses: 0.50 at 3.00 a minute is one pulse (1.00 per 20 s), reached
        // from the first second.
        assert_eq!(
            per_minute("3.00", 20).secs_to_reach(Money::parse("0.50").unwrap()),
            Some(1)
        );
        // 3.13 a minute: 5.00 needs 95.85… s, so 96 s (95 s bill 4.96).
        let t = per_minute("3.13", 1);
        assert_eq!(t.secs_to_reach(Money::parse("5.00").unwrap()), Some(96));
        assert!(t.charge(95).amount < Money::parse("5.00").unwrap());
        let per_call = Tariff {
            rate: Rate::parse("2.99").unwrap(),
            unit: TariffUnit::PerCall,
            currency: Currency::parse("EUR").unwrap(),
        };
        assert_eq!(
            per_call.secs_to_reach(Money::parse("2.99").unwrap()),
            Some(1)
        );
        assert_eq!(per_call.secs_to_reach(Money::parse("3.00").unwrap()), None);
    }

    fn per_minute(rate: &str, inc: u32) -> Tariff {
        Tariff {
            rate: Rate::parse(rate).unwrap(),
            unit: TariffUnit::PerMinute {
                increment_secs: inc,
            },
            currency: Currency::parse("CHF").unwrap(),
        }
    }

    #[test]
    fn amounts_parse_to_cents_and_print_with_two_decimals() {
        for (s, cents, shown) in [
            ("2.99", 299, "2.99"),
            ("5", 500, "5.00"),
            ("0.5", 50, "0.50"),
            ("0", 0, "0.00"),
            ("10000000", 1_000_000_000, "10000000.00"),
        ] {
            let m = Money::parse(s).unwrap();
            assert_eq!(m.cents(), cents, "{s}");
            assert_eq!(m.to_string(), shown);
        }
        for bad in [
            "",
            "-1",
            "+1",
            "2,99",
            "2.999",
            "1e3",
            ".5",
            "5.",
            " 5",
            "NaN",
            "10000000.01",
            "99999999999999999999",
            "٣",
        ] {
            assert!(Money::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rates_keep_four_decimals_and_print_only_what_they_have() {
        assert_eq!(Rate::parse("3.13").unwrap().to_string(), "3.13");
        assert_eq!(Rate::parse("0.0125").unwrap().to_string(), "0.0125");
        assert_eq!(Rate::parse("2").unwrap().to_string(), "2.00");
        assert!(Rate::parse("0.00001").is_err());
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("EURO").is_err());
        assert_eq!(Currency::parse("CHF").unwrap().as_str(), "CHF");
    }

    #[test]
    fn per_minute_bills_whole_increments_rounded_half_up_to_the_cent() {
        // 3.13/min by the second: 100 s → 5.2166… → 5.22
        let c = per_minute("3.13", 1).charge(100);
        assert_eq!((c.billed_secs, c.amount.to_string()), (100, "5.22".into()));
        // by 20 s pulses: 41 s bills 60 s → 3.13
        let c = per_minute("3.13", 20).charge(41);
        assert_eq!((c.billed_secs, c.amount.to_string()), (60, "3.13".into()));
        // 40 s is exactly two pulses
        assert_eq!(per_minute("3.13", 20).charge(40).billed_secs, 40);
        // exactly half a cent rounds up: 0.30/min × 1 s = 0.005 → 0.01
        assert_eq!(per_minute("0.30", 1).charge(1).amount.to_string(), "0.01");
        // just under half a cent rounds down: 0.2999 × 1 s / 60 = 0.0049983 → 0.00
        assert_eq!(per_minute("0.2999", 1).charge(1).amount.to_string(), "0.00");
        // unanswered
        let c = per_minute("3.13", 20).charge(0);
        assert_eq!((c.billed_secs, c.amount), (0, Money::ZERO));
        // never overflows
        let c = per_minute("10000000", 1).charge(u32::MAX);
        assert!(c.amount.cents() > 0);
    }

    #[test]
    fn per_call_charges_an_answered_call_once() {
        let t = Tariff {
            rate: Rate::parse("2.99").unwrap(),
            unit: TariffUnit::PerCall,
            currency: Currency::parse("EUR").unwrap(),
        };
        assert_eq!(t.charge(1).amount.to_string(), "2.99");
        assert_eq!(t.charge(3600).amount.to_string(), "2.99");
        assert_eq!(t.charge(3600).billed_secs, 3600);
        assert_eq!(t.charge(0).amount, Money::ZERO);
        // a rate finer than a cent is rounded half-up once per call
        let fine = Tariff {
            rate: Rate::parse("2.995").unwrap(),
            ..t
        };
        assert_eq!(fine.charge(5).amount.to_string(), "3.00");
    }
}
