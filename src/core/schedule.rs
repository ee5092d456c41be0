//! The schedule: every record's next deadline, in timing wheels. Filing a deadline also
//! writes its wheel entry to the outbox, so memory and disk cannot disagree about what is due.
//! Leases' deadlines, the most numerous, are filed by the lease's slot in `Leasing`'s slab
//! (a `u32` handle, 8 bytes an entry where a `Due` takes 32); the entry written to the outbox
//! names the lease by id, as the store keeps it, and `Leasing` turns a fired handle back into
//! that id.

use super::directory::Directory;
use super::outbox::Outbox;
use super::time::Timestamp;
use super::traffic::Traffic;
use super::types::{Due, LeaseId};
use super::wheel::Wheel;
use super::Effect;

#[derive(Debug)]
pub(super) struct Schedule {
    /// Leases' deadlines, by slot in `Leasing`'s slab.
    leases: Wheel<u32>,
    /// Every other record's deadlines, and leases' entries restored for a record that is
    /// gone (they fire, are deleted, and find nothing). Both wheels advance together.
    others: Wheel<Due>,
}

/// A wheel entry come due.
#[derive(Clone, Copy, Debug)]
pub(super) enum Fired {
    /// A lease's deadline, by its slot: `Leasing` knows its id.
    Lease(u32),
    Other(Due),
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
        self.others.insert(tick, due);
        out.effects.push(Effect::PutWheel(tick, due));
    }

    /// Files lease `id`, in slot `slot` of the slab, to be looked at again at `deadline`.
    pub(super) fn at_lease(
        &mut self,
        deadline: Timestamp,
        id: LeaseId,
        slot: u32,
        out: &mut Outbox,
    ) {
        let tick = deadline.tick_ceil();
        self.leases.insert(tick, slot);
        out.effects.push(Effect::PutWheel(tick, Due::Lease(id)));
    }

    /// Files an entry as it was persisted (recovery): nothing to write.
    pub(super) fn restore(&mut self, tick: u64, due: Due) {
        self.others.insert(tick, due);
    }

    /// Files a lease's entry as it was persisted, by the slot its lease was restored in.
    pub(super) fn restore_lease(&mut self, tick: u64, slot: u32) {
        self.leases.insert(tick, slot);
    }

    /// Takes every entry due at `now`, with the tick it was filed under.
    pub(super) fn due(&mut self, now: Timestamp) -> Vec<(u64, Fired)> {
        let mut leases = Vec::new();
        self.leases.advance(now.tick_floor(), &mut leases);
        let mut others = Vec::new();
        self.others.advance(now.tick_floor(), &mut others);
        let leases = leases.into_iter().map(|(t, slot)| (t, Fired::Lease(slot)));
        let others = others.into_iter().map(|(t, due)| (t, Fired::Other(due)));
        leases.chain(others).collect()
    }

    /// The slots of every lease entry pending, once per entry.
    pub(super) fn lease_slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.leases.entries().map(|(_, slot)| slot)
    }

    /// Entries pending, stale ones included.
    pub(super) fn len(&self) -> usize {
        self.leases.len() + self.others.len()
    }

    /// The last tick fully fired.
    pub(super) fn done_through(&self) -> u64 {
        self.leases.done_through()
    }

    /// Bytes held by the wheels' entries, by wheel.
    pub(super) fn footprint(&self) -> [(&'static str, usize); 2] {
        [
            ("wheel: leases' entries", self.leases.footprint()),
            ("wheel: other entries", self.others.footprint()),
        ]
    }
}

/// What a part needs to make a change: the pools as configured, the schedule to file
/// deadlines in, the pools' traffic counts, and the outbox its effects and notices go to, in
/// order.
pub(super) struct Cx<'a> {
    pub(super) dir: &'a Directory,
    pub(super) sched: &'a mut Schedule,
    pub(super) traffic: &'a mut Traffic,
    pub(super) out: &'a mut Outbox,
}
