//! A hashed timing wheel of deadlines, in ticks. It mirrors the entries the store persists
//! under big-endian tick keys; this copy only answers "what is due" without touching disk.

/// 4096 one-second slots: about 68 minutes per turn. Entries further out share a slot with
/// nearer ones and are skipped (not fired) until their own tick comes round.
const SLOTS: usize = 4096;

#[derive(Debug)]
pub struct Wheel<T> {
    /// Each entry under its tick's slot, with the tick's turn (`tick / SLOTS`; the slot gives
    /// the rest): a `u32` where the tick would take a `u64`, so an entry of a 4-byte handle
    /// is 8 bytes. Empty (not `SLOTS` empty vectors) until the first entry.
    slots: Vec<Vec<(u32, T)>>,
    /// Entries filed for a tick already passed (restored after a restart, or a deadline set
    /// in the past): they fire on the very next advance.
    overdue: Vec<(u64, T)>,
    /// Entries whose turn does not fit a `u32` (a deadline half a million years away, from
    /// durations that saturate): looked at on every advance, and as good as never due.
    far: Vec<(u64, T)>,
    /// Every tick up to and including this one has been fired.
    done_through: u64,
    len: usize,
}

impl<T: Copy> Wheel<T> {
    /// A wheel that has fired everything up to `done_through`.
    pub fn new(done_through: u64) -> Self {
        Wheel {
            slots: Vec::new(),
            overdue: Vec::new(),
            far: Vec::new(),
            done_through,
            len: 0,
        }
    }

    /// Entries pending, stale ones included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The last tick fully fired: readiness and lag are measured against it.
    pub fn done_through(&self) -> u64 {
        self.done_through
    }

    pub fn insert(&mut self, tick: u64, id: T) {
        if tick <= self.done_through {
            self.overdue.push((tick, id));
        } else {
            if self.slots.is_empty() {
                self.slots.resize_with(SLOTS, Vec::new);
            }
            match u32::try_from(tick / SLOTS as u64) {
                Ok(turn) => self.slots[tick as usize % SLOTS].push((turn, id)),
                Err(_) => self.far.push((tick, id)),
            }
        }
        self.len += 1;
    }

    /// Every pending entry, with its tick, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (u64, T)> + '_ {
        let slotted = self.slots.iter().enumerate().flat_map(|(s, slot)| {
            slot.iter()
                .map(move |&(turn, id)| (u64::from(turn) * SLOTS as u64 + s as u64, id))
        });
        slotted.chain(self.overdue.iter().chain(&self.far).copied())
    }

    /// Bytes held by the wheel's entries (capacity, not length).
    pub fn footprint(&self) -> usize {
        let slotted: usize = self.slots.iter().map(Vec::capacity).sum();
        slotted * std::mem::size_of::<(u32, T)>()
            + (self.overdue.capacity() + self.far.capacity()) * std::mem::size_of::<(u64, T)>()
            + self.slots.capacity() * std::mem::size_of::<Vec<(u32, T)>>()
    }

    /// Moves every entry due at or before `through` into `out`, in no particular order.
    pub fn advance(&mut self, through: u64, out: &mut Vec<(u64, T)>) {
        self.len -= self.overdue.len();
        out.append(&mut self.overdue);
        if through <= self.done_through {
            return;
        }
        let mut i = 0;
        while i < self.far.len() {
            if self.far[i].0 <= through {
                out.push(self.far.swap_remove(i));
                self.len -= 1;
            } else {
                i += 1;
            }
        }
        // After a pause longer than a turn (a restart, a clock step) each slot is visited once.
        let span = match self.slots.is_empty() {
            true => 0,
            false => (through - self.done_through).min(SLOTS as u64),
        };
        for t in through + 1 - span..=through {
            let s = t as usize % SLOTS;
            let slot = &mut self.slots[s];
            let before = slot.len();
            let mut i = 0;
            while i < slot.len() {
                let tick = u64::from(slot[i].0) * SLOTS as u64 + s as u64;
                if tick <= through {
                    out.push((tick, slot.swap_remove(i).1));
                } else {
                    i += 1;
                }
            }
            self.len -= before - slot.len();
        }
        self.done_through = through;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::LeaseId;

    fn id(n: u8) -> LeaseId {
        LeaseId::from_bytes([n; 16])
    }

    fn due(w: &mut Wheel<LeaseId>, through: u64) -> Vec<(u64, LeaseId)> {
        let mut out = Vec::new();
        w.advance(through, &mut out);
        out.sort();
        out
    }

    #[test]
    fn entries_fire_at_their_tick_not_before() {
        let mut w = Wheel::new(0);
        w.insert(5, id(1));
        assert!(due(&mut w, 4).is_empty());
        assert_eq!(due(&mut w, 5), vec![(5, id(1))]);
        assert!(w.is_empty());
    }

    #[test]
    fn entries_a_turn_away_wait_for_their_own_turn() {
        let mut w = Wheel::new(0);
        w.insert(3 + SLOTS as u64, id(2));
        assert!(due(&mut w, 3).is_empty());
        assert_eq!(w.len(), 1);
        assert_eq!(
            due(&mut w, 3 + SLOTS as u64),
            vec![(3 + SLOTS as u64, id(2))]
        );
    }

    #[test]
    fn a_long_pause_fires_everything_overdue_at_once() {
        let mut w = Wheel::new(0);
        for n in 1..=10u8 {
            w.insert(n as u64 * 1000, id(n));
        }
        assert_eq!(due(&mut w, 1_000_000).len(), 10);
        assert!(w.is_empty());
    }

    #[test]
    fn a_deadline_past_any_turn_still_fires_at_its_tick() {
        let mut w = Wheel::new(0);
        let far = u64::MAX / 2;
        w.insert(far, id(3));
        w.insert(5, id(4));
        let mut all: Vec<_> = w.entries().collect();
        all.sort();
        assert_eq!(all, vec![(5, id(4)), (far, id(3))]);
        assert_eq!(due(&mut w, 1_000_000), vec![(5, id(4))]);
        assert_eq!(due(&mut w, far), vec![(far, id(3))]);
        assert!(w.is_empty());
    }

    #[test]
    fn an_entry_filed_in_the_past_fires_on_the_next_advance() {
        let mut w = Wheel::new(100);
        w.insert(50, id(7));
        assert_eq!(due(&mut w, 100), vec![(50, id(7))]);
    }
}
