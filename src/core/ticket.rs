//! Ticketing as data: formulas, progress, tickets, passes, their journal events, and the
//! randomness a ticket is drawn from. The rules live in `tickets.rs`.

use std::time::Duration;

use super::time::Timestamp;
use super::types::{
    LeaseId, PassId, PhoneNumber, PoolId, ProgressKey, TenantId, TicketCode, TicketId,
};

/// What a ticketing pool sells: `calls_required` calls, each at least `min_call_secs`, from
/// the same caller within `window`; the code lives `code_ttl` until redeemed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Formula {
    pub calls_required: u32,
    pub min_call_secs: u32,
    pub window: Duration,
    pub code_ttl: Duration,
    /// What the formula costs the caller, for reconciliation: (amount, currency).
    pub price: Option<(String, String)>,
}

/// How a pool's numbers are used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// Numbers are leased to visitors' sessions.
    Dynamic,
    /// Numbers are never leased: calls earn access codes.
    Ticketing(Formula),
}

/// A caller's calls so far toward a formula.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub key: ProgressKey,
    pub calls_done: u32,
    pub window_start: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub id: TicketId,
    pub code: TicketCode,
    pub pool: PoolId,
    pub caller: Option<PhoneNumber>,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub calls: u32,
    pub redeemed_at: Option<Timestamp>,
    pub pass: Option<PassId>,
    /// Its expiry has been written to the journal.
    pub expiry_noted: bool,
    /// The formula's price when the ticket was issued: (amount, currency).
    pub price: Option<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassSource {
    Ticket(TicketId),
    Lease(LeaseId),
}

/// Proof that a buyer paid, valid until `access_until` unless revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pass {
    pub id: PassId,
    pub pool: PoolId,
    pub tenant: TenantId,
    pub source: PassSource,
    pub created_at: Timestamp,
    pub access_until: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl Pass {
    pub fn valid(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && now < self.access_until
    }
}

/// Fresh randomness from the caller (the service draws it from a CSPRNG), so the core stays
/// deterministic: a new ticket's id, and where the search for a free code starts. Independent,
/// so knowing a ticket's id says nothing of its code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Entropy {
    pub id: [u8; 16],
    pub code: u64,
}

/// What the voice server is told about a call on a ticketing number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TicketingAnswer {
    pub calls_done: u32,
    pub calls_missing: u32,
    /// The code to read out, when this call completed the formula.
    pub code: Option<TicketCode>,
    pub ticket: Option<TicketId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketEventKind {
    Issued,
    Redeemed,
    Expired,
}

impl TicketEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketEventKind::Issued => "ticket_issued",
            TicketEventKind::Redeemed => "ticket_redeemed",
            TicketEventKind::Expired => "ticket_expired",
        }
    }
}

/// A line of the journal about a ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketEvent {
    pub kind: TicketEventKind,
    pub at: Timestamp,
    pub ticket: Ticket,
}
