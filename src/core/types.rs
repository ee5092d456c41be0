//! Validated newtypes: every value that enters the core was parsed once, at the edge, into one of these.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use thiserror::Error;

/// Why a value given from outside is not acceptable. The message is shown to API clients
/// and config authors as-is, so it says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn err(msg: impl Into<String>) -> ParseError {
    ParseError(msg.into())
}

/// An E.164 number: `+`, a country code that does not start with 0, at most 15 digits in all.
/// Stored as its digits in a `u64` (no leading zero is possible), which keeps a
/// million-number pool small and hashing cheap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(u64);

impl PhoneNumber {
    /// Fewest digits accepted: shorter strings are typos, not numbers.
    const MIN_DIGITS: usize = 6;
    const MAX_DIGITS: usize = 15;

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let digits = s.strip_prefix('+').ok_or_else(|| {
            err(format!(
                "{s:?} is not an E.164 number: it must start with '+' and the country code"
            ))
        })?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.is_empty() {
            return Err(err(format!(
                "{s:?} is not an E.164 number: only digits may follow '+'"
            )));
        }
        if digits.starts_with('0') {
            return Err(err(format!(
                "{s:?} is not an E.164 number: a country code never starts with 0"
            )));
        }
        if !(Self::MIN_DIGITS..=Self::MAX_DIGITS).contains(&digits.len()) {
            return Err(err(format!(
                "{s:?} is not an E.164 number: it has {} digits, expected {} to {}",
                digits.len(),
                Self::MIN_DIGITS,
                Self::MAX_DIGITS
            )));
        }
        Ok(PhoneNumber(digits.parse().expect("checked digits")))
    }

    /// Builds a number from its digits; `None` if they do not make a valid E.164 number.
    pub fn from_digits(n: u64) -> Option<Self> {
        let len = n.checked_ilog10()? as usize + 1;
        (Self::MIN_DIGITS..=Self::MAX_DIGITS)
            .contains(&len)
            .then_some(PhoneNumber(n))
    }

    pub fn digits(self) -> u64 {
        self.0
    }

    /// How the number is written for a person in its own country: `08 99 10 00 42` in France,
    /// `0900 123 456` in Switzerland; E.164 elsewhere, which is always dialable.
    pub fn display(self) -> String {
        let d = self.0.to_string();
        let group = |national: &str, sizes: &[usize]| {
            let mut out = String::new();
            let mut rest = national;
            for &n in sizes {
                if rest.len() < n {
                    break;
                }
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(&rest[..n]);
                rest = &rest[n..];
            }
            if !rest.is_empty() {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(rest);
            }
            out
        };
        match (d.strip_prefix("33"), d.strip_prefix("41")) {
            (Some(n), _) if n.len() == 9 => group(&format!("0{n}"), &[2, 2, 2, 2, 2]),
            (_, Some(n)) if n.len() == 9 => group(&format!("0{n}"), &[4, 3, 3]),
            _ => format!("+{d}"),
        }
    }

    /// The number with its last digits hidden, for logs: callers' numbers are personal data.
    pub fn masked(self) -> String {
        let d = self.0.to_string();
        let keep = d.len().saturating_sub(4);
        format!("+{}****", &d[..keep])
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.0)
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.0)
    }
}

impl FromStr for PhoneNumber {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Where a call is sent: the advertiser's real number, or a SIP URI on their own PBX.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Phone(PhoneNumber),
    Sip(Arc<str>),
}

impl Target {
    const MAX_SIP_LEN: usize = 256;

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if let Some(rest) = s.strip_prefix("sip:").or_else(|| s.strip_prefix("sips:")) {
            let ok = !rest.is_empty()
                && s.len() <= Self::MAX_SIP_LEN
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>' && b != b'"');
            return if ok {
                Ok(Target::Sip(s.into()))
            } else {
                Err(err(format!(
                    "{s:?} is not a usable SIP URI: expected sip:user@host, printable ASCII, at most {} characters",
                    Self::MAX_SIP_LEN
                )))
            };
        }
        PhoneNumber::parse(s)
            .map(Target::Phone)
            .map_err(|e| err(format!("target must be an E.164 number or a sip: URI; {e}")))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Phone(p) => p.fmt(f),
            Target::Sip(s) => f.write_str(s),
        }
    }
}

/// A lease's id: 128 random bits, shown as 32 lowercase hex digits. Unguessable, so
/// holding it is what authorises a browser to read and renew its own lease.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId([u8; 16]);

impl LeaseId {
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        LeaseId(b)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let mut b = [0u8; 16];
        if s.len() != 32 || hex::decode_to_slice(s, &mut b).is_err() {
            return Err(err("a lease id is 32 hexadecimal digits"));
        }
        Ok(LeaseId(b))
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseId({self})")
    }
}

/// Checks a short opaque label chosen by a site (session, listing): 1 to 128 bytes,
/// no control characters, so it can be logged, stored and compared safely.
fn label(what: &str, s: &str) -> Result<Arc<str>, ParseError> {
    const MAX: usize = 128;
    if s.is_empty() {
        return Err(err(format!("{what} must not be empty")));
    }
    if s.len() > MAX {
        return Err(err(format!(
            "{what} is {} bytes long; at most {MAX} are accepted",
            s.len()
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(err(format!("{what} must not contain control characters")));
    }
    Ok(s.into())
}

macro_rules! label_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, ParseError> {
                label($what, s).map($name)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

label_type!(
    /// The visitor's browser session, as the site names it (a cookie value, say).
    SessionId,
    "session"
);
label_type!(
    /// The ad the visitor is looking at.
    ListingId,
    "listing"
);
label_type!(
    /// Whose leases these are: keys of one tenant share leases, other tenants never see them.
    TenantId,
    "tenant"
);

/// A telephony platform's id for one call (a SIP Call-ID, a Twilio CallSid): 1 to 128
/// printable bytes. Starts and ends of the same call carry the same id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(Arc<str>);

impl CallId {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        label("call_id", s).map(CallId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A fixed-size key for the call (the first 16 bytes of its SHA-256), used where keys must
    /// have one length: wheel entries and store keys.
    pub fn key(&self) -> CallKey {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(self.0.as_bytes());
        CallKey(d[..16].try_into().expect("16 bytes"))
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallId({:?})", &*self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(pub [u8; 16]);

/// A keypad code on a shared number: four digits, leading zeros kept (`0042`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(u16);

impl Code {
    pub const SPACE: u16 = 10_000;

    pub fn new(n: u16) -> Option<Code> {
        (n < Self::SPACE).then_some(Code(n))
    }

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.len() != 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(format!(
                "{s:?} is not a code: expected four digits, such as \"0042\""
            )));
        }
        Ok(Code(s.parse().expect("four digits")))
    }

    pub fn value(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.0)
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Code({:04})", self.0)
    }
}

/// A share of something, in whole thousandths (0 to 1000): what pages may hold of a pool's
/// numbers and of its codes. Thousandths keep floats out of the core and its answers exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Share(u16);

impl Share {
    pub const ALL: Share = Share(1000);

    pub const fn from_permille(p: u16) -> Option<Share> {
        if p <= 1000 {
            Some(Share(p))
        } else {
            None
        }
    }

    pub fn permille(self) -> u16 {
        self.0
    }

    /// How many of `n` the share allows, rounded down: below [`Share::ALL`], what is left
    /// is never rounded away.
    pub fn of(self, n: usize) -> usize {
        (n as u64 * u64::from(self.0) / 1000) as usize
    }
}

impl Default for Share {
    fn default() -> Self {
        Share::ALL
    }
}

/// A return caller's route is keyed by who calls and which number they call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReturnKey {
    pub caller: PhoneNumber,
    pub number: PhoneNumber,
}

/// A 128-bit random id shown as 32 hex digits (tickets, passes): unguessable.
macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, ParseError> {
                let mut b = [0u8; 16];
                if s.len() != 32 || hex::decode_to_slice(s, &mut b).is_err() {
                    return Err(err(concat!("a ", stringify!($name), " is 32 hexadecimal digits")));
                }
                Ok($name(b))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }
    };
}

random_id!(
    /// A ticket issued on a ticketing number.
    TicketId
);
random_id!(
    /// An access pass, given at redeem: "let this buyer in until `access_until`".
    PassId
);

/// An access code read out to the caller: eight digits, leading zeros kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TicketCode(u32);

impl TicketCode {
    pub const SPACE: u32 = 100_000_000;

    pub fn new(n: u32) -> Option<TicketCode> {
        (n < Self::SPACE).then_some(TicketCode(n))
    }

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("an access code is eight digits"));
        }
        Ok(TicketCode(s.parse().expect("eight digits")))
    }

    pub fn value(self) -> u32 {
        self.0
    }
}

impl fmt::Display for TicketCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08}", self.0)
    }
}

impl fmt::Debug for TicketCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TicketCode(********)")
    }
}

/// A caller's progress through a ticketing pool's formula is keyed by pool and caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProgressKey {
    pub pool: PoolId,
    pub caller: PhoneNumber,
}

/// What a timing wheel entry points at: each kind of record with a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Due {
    Lease(LeaseId),
    Call(CallKey),
    Return(ReturnKey),
    Ticket(TicketId),
    Pass(PassId),
    Progress(ProgressKey),
}

/// A pool's index in the allocator, fixed for the life of the process (names are for the edges).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId(pub u32);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn e164_accepts_french_and_swiss_premium_numbers() {
        assert_eq!(
            PhoneNumber::parse("+33899100042").unwrap().to_string(),
            "+33899100042"
        );
        assert!(PhoneNumber::parse("+41900123456").is_ok());
    }

    #[test]
    fn e164_rejects_what_is_not_a_number() {
        for bad in [
            "33899100042",
            "+0899",
            "+33 899",
            "+",
            "+1234567890123456",
            "+12a45678",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn display_uses_national_format() {
        let fr = PhoneNumber::parse("+33899100042").unwrap();
        assert_eq!(fr.display(), "08 99 10 00 42");
        let ch = PhoneNumber::parse("+41900123456").unwrap();
        assert_eq!(ch.display(), "0900 123 456");
        let uk = PhoneNumber::parse("+447911123456").unwrap();
        assert_eq!(uk.display(), "+447911123456");
    }

    #[test]
    fn masked_hides_the_last_four_digits() {
        let n = PhoneNumber::parse("+33612345678").unwrap();
        assert_eq!(n.masked(), "+3361234****");
    }

    #[test]
    fn lease_ids_round_trip_through_hex_and_reject_other_lengths() {
        let id = LeaseId::from_bytes([0xab; 16]);
        assert_eq!(LeaseId::parse(&id.to_string()).unwrap(), id);
        assert!(LeaseId::parse("abcd").is_err());
        assert!(LeaseId::parse(&"zz".repeat(16)).is_err());
    }

    #[test]
    fn labels_are_bounded_and_printable() {
        assert!(SessionId::parse("").is_err());
        assert!(SessionId::parse(&"x".repeat(129)).is_err());
        assert!(SessionId::parse("a\nb").is_err());
        assert!(SessionId::parse("cookie-42").is_ok());
    }

    #[test]
    fn a_share_rounds_down_so_the_rest_is_never_lost() {
        let s = Share::from_permille(800).unwrap();
        assert_eq!(s.of(1001), 800);
        assert_eq!(s.of(10_000), 8000);
        assert_eq!(s.of(1), 0, "one number stays for servers");
        assert_eq!(Share::ALL.of(7), 7);
        assert!(Share::from_permille(1001).is_none());
    }

    #[test]
    fn targets_are_numbers_or_sip_uris() {
        assert!(matches!(
            Target::parse("+33612345678"),
            Ok(Target::Phone(_))
        ));
        assert!(matches!(
            Target::parse("sip:adv@pbx.example"),
            Ok(Target::Sip(_))
        ));
        assert!(Target::parse("sip:").is_err());
        assert!(Target::parse("0612345678").is_err());
    }

    proptest! {
        #[test]
        fn every_valid_number_round_trips(n in 100_000u64..=999_999_999_999_999u64) {
            let p = PhoneNumber::from_digits(n).unwrap();
            prop_assert_eq!(PhoneNumber::parse(&p.to_string()).unwrap(), p);
        }

        #[test]
        fn parsing_never_panics(s in ".{0,40}") {
            let _ = PhoneNumber::parse(&s);
            let _ = Target::parse(&s);
            let _ = LeaseId::parse(&s);
        }
    }
}
