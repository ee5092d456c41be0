//! The schedule: every record's next deadline, in a timing wheel. Filing a deadline also
//! writes its wheel entry to the outbox, so memory and disk cannot disagree about what is due.

use super::directory::Directory;
use super::outbox::Outbox;
use super::time::Timestamp;
use super::types::{Due, LeaseId};
use super::wheel::Wheel;
use super::Effect;

#[derive(Debug)]
pub(super) struct Schedule {
    /// Leases' deadlines, the most numerous, in a wheel of their own: an entry there is a
    /// tick and an id (24 bytes), where a `Due` of any kind makes it 32.
    leases: Wheel<LeaseId>,
    /// Every other record's deadlines. Both wheels advance together.
    others: Wheel<Due>,
}

impl Schedule {
    pub(super) fn new() -> Self {
        Schedule {
            leases: Wheel::new(0),
            others: Wheel::new(0),
        }
    }

    /// Files `due` to be looked at again at `deadline` (rounded up to its tick).
    pub(super) fn at(&mut self, deadline: Timestamp, due: Due, out: &mut Outbox) {
        let tick = deadline.tick_ceil();
        self.restore(tick, due);
        out.effects.push(Effect::PutWheel(tick, due));
    }

    /// Files an entry as it was persisted (recovery): nothing to write.
    pub(super) fn restore(&mut self, tick: u64, due: Due) {
        match due {
            Due::Lease(id) => self.leases.insert(tick, id),
            other => self.others.insert(tick, other),
        }
    }

    /// Takes every entry due at `now`, with the tick it was filed under.
    pub(super) fn due(&mut self, now: Timestamp) -> Vec<(u64, Due)> {
        let mut leases = Vec::new();
        self.leases.advance(now.tick_floor(), &mut leases);
        let mut due: Vec<(u64, Due)> = leases
            .into_iter()
            .map(|(tick, id)| (tick, Due::Lease(id)))
            .collect();
        self.others.advance(now.tick_floor(), &mut due);
        due
    }

    /// Entries pending, stale ones included.
    pub(super) fn len(&self) -> usize {
        self.leases.len() + self.others.len()
    }

    /// The last tick fully fired.
    pub(super) fn done_through(&self) -> u64 {
        self.leases.done_through()
    }
}

/// What a part needs to make a change: the pools as configured, the schedule to file
/// deadlines in, and the outbox its effects and notices go to, in order.
pub(super) struct Cx<'a> {
    pub(super) dir: &'a Directory,
    pub(super) sched: &'a mut Schedule,
    pub(super) out: &'a mut Outbox,
}
