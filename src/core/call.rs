//! Calls as data: a call's start, end and record, where it went and why (`Reason`,
//! `Attribution`), and return routes. The rules that decide them live in `calls.rs`.

use super::money::Charge;
use super::ticket::{Entropy, TicketingAnswer};
use super::time::Timestamp;
use super::types::{CallId, Code, LeaseId, ListingId, PhoneNumber, PoolId, ReturnKey, Target};

/// Why a call went where it went. Precedence: code, return, active, grace, caller (see
/// [`Allocator::attribute`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The caller typed a live code on the pool's shared number.
    Code,
    /// The caller's number is the one the visitor typed on the page, on a line nobody holds
    /// (the shared number without a code, or a free number of the pool).
    Caller,
    /// The caller already called this number for a listing, within the return window.
    Return,
    /// The number's live lease.
    Active,
    /// The number's last lease ended less than `grace` ago.
    Grace,
    /// A pool number nobody holds.
    NotLeased,
    /// Not a number Leaseline manages.
    UnknownNumber,
    /// A ticketing number: the call counts toward the caller's formula (no lease involved).
    Ticketing,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Code,
        Reason::Caller,
        Reason::Return,
        Reason::Active,
        Reason::Grace,
        Reason::NotLeased,
        Reason::UnknownNumber,
        Reason::Ticketing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Code => "code",
            Reason::Caller => "caller",
            Reason::Return => "return",
            Reason::Active => "active",
            Reason::Grace => "grace",
            Reason::NotLeased => "not_leased",
            Reason::UnknownNumber => "unknown_number",
            Reason::Ticketing => "ticketing",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn attributed(self) -> bool {
        !matches!(self, Reason::NotLeased | Reason::UnknownNumber)
    }
}

/// Where a call goes and who gets the credit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribution {
    pub reason: Reason,
    pub pool: Option<PoolId>,
    pub lease: Option<LeaseId>,
    pub target: Option<Target>,
    pub listing: Option<ListingId>,
}

/// A return caller's route: after their first attributed call on `key.number` for a listing,
/// their later calls there reach that listing until `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReturnRoute {
    pub key: ReturnKey,
    pub lease: LeaseId,
    pub listing: ListingId,
    pub target: Option<Target>,
    pub first_at: Timestamp,
    pub until: Timestamp,
}

/// The start of a call, as telephony reports it.
#[derive(Clone, Debug)]
pub struct CallStart {
    pub id: CallId,
    pub called: PhoneNumber,
    pub caller: Option<PhoneNumber>,
    pub code: Option<Code>,
    pub at: Timestamp,
    /// Randomness for a ticket this call may complete.
    pub entropy: Entropy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallEnd {
    pub at: Timestamp,
    pub duration_secs: u32,
}

/// A call as recorded: its start, the answer given, and its end once known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub id: CallId,
    pub called: PhoneNumber,
    pub caller: Option<PhoneNumber>,
    pub code: Option<Code>,
    pub started_at: Timestamp,
    pub attribution: Attribution,
    pub end: Option<CallEnd>,
    /// What it cost under its pool's tariff, once its duration is known (none without a
    /// tariff).
    pub charge: Option<Charge>,
    /// It counted toward its lease's `calls` (or its caller's ticketing formula).
    pub counted: bool,
    /// On a ticketing number: the formula's progress after this call, and any code issued.
    pub ticketing: Option<TicketingAnswer>,
}
