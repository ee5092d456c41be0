//! A pool's slots by the instant they next matter, in three indexed min-heaps over slot
//! indices: free (by when each became free, then by index: the one free longest goes first),
//! leased (by expiry) and cooling (by the end of quarantine). A slot is in exactly one of
//! them, the one its state names, so one position per slot serves all three: 4 bytes per
//! number and 16 per queued slot, where a general priority queue spent about 60. Four-ary
//! heaps, moving entries into the hole rather than swapping: one position written a level.

use super::super::time::Timestamp;

/// Which of a pool's queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Queue {
    Free = 0,
    Leased = 1,
    Cooling = 2,
}

impl Queue {
    pub(super) const ALL: [Queue; 3] = [Queue::Free, Queue::Leased, Queue::Cooling];
}

/// Children per node: four halve the levels a binary heap walks (20 at a million slots), and
/// a node's children sit side by side in memory.
const ARITY: usize = 4;

#[derive(Debug, Default)]
pub(super) struct Queues {
    /// Each slot's index in the heap of the queue its state names.
    pos: Vec<u32>,
    /// Min-heaps of `(instant, slot)`: the slot's index breaks ties, so the order is total.
    heaps: [Vec<(Timestamp, u32)>; 3],
}

impl Queues {
    /// Queues for `slots` slots, every one free since `freed_at(slot)` (`None`: not free).
    pub(super) fn new(slots: usize, freed_at: impl Fn(u32) -> Option<Timestamp>) -> Self {
        let mut q = Queues {
            pos: vec![0; slots],
            heaps: Default::default(),
        };
        let free = (0..slots as u32)
            .filter_map(|i| freed_at(i).map(|t| (t, i)))
            .collect();
        q.fill(Queue::Free, free);
        q
    }

    /// Fills the empty queue `q` with `entries` at once (a restart).
    pub(super) fn fill(&mut self, q: Queue, entries: Vec<(Timestamp, u32)>) {
        debug_assert!(self.heaps[q as usize].is_empty());
        self.heaps[q as usize] = entries;
        // Heapify bottom-up: O(n), where pushing one by one is O(n log n).
        let len = self.heaps[q as usize].len();
        for i in 0..len {
            self.place(q, i);
        }
        for i in (0..len.div_ceil(ARITY)).rev() {
            self.sift_down(q, i);
        }
    }

    /// Room for `slots` slots (a reload added numbers to the pool).
    pub(super) fn grow(&mut self, slots: usize) {
        if slots > self.pos.len() {
            self.pos.resize(slots, 0);
        }
    }

    pub(super) fn len(&self, q: Queue) -> usize {
        self.heaps[q as usize].len()
    }

    /// The earliest entry of `q`.
    pub(super) fn peek(&self, q: Queue) -> Option<(Timestamp, u32)> {
        self.heaps[q as usize].first().copied()
    }

    /// Where `slot` stands in `q`, if it is there.
    pub(super) fn get(&self, q: Queue, slot: u32) -> Option<Timestamp> {
        let heap = &self.heaps[q as usize];
        let &p = self.pos.get(slot as usize)?;
        heap.get(p as usize)
            .filter(|(_, s)| *s == slot)
            .map(|(t, _)| *t)
    }

    pub(super) fn push(&mut self, q: Queue, slot: u32, at: Timestamp) {
        let heap = &mut self.heaps[q as usize];
        heap.push((at, slot));
        let i = heap.len() - 1;
        self.sift_up(q, i);
    }

    /// Takes the earliest entry of `q`.
    pub(super) fn pop(&mut self, q: Queue) -> Option<(Timestamp, u32)> {
        let first = self.peek(q)?;
        self.remove_at(q, 0);
        Some(first)
    }

    /// Takes `slot` out of `q`, if it is there.
    pub(super) fn remove(&mut self, q: Queue, slot: u32) {
        if self.get(q, slot).is_some() {
            self.remove_at(q, self.pos[slot as usize] as usize);
        }
    }

    /// Files `slot` under another instant in `q`, if it is there.
    pub(super) fn change(&mut self, q: Queue, slot: u32, at: Timestamp) {
        if self.get(q, slot).is_none() {
            return;
        }
        let i = self.pos[slot as usize] as usize;
        let old = std::mem::replace(&mut self.heaps[q as usize][i].0, at);
        if at < old {
            self.sift_up(q, i);
        } else {
            self.sift_down(q, i);
        }
    }

    /// Bytes held: positions and heaps.
    pub(super) fn footprint(&self) -> usize {
        self.pos.capacity() * 4 + self.heaps.iter().map(Vec::capacity).sum::<usize>() * 16
    }

    /// Checks the heaps' order and every slot's position.
    pub(super) fn check(&self) -> Result<(), String> {
        for q in Queue::ALL {
            let heap = &self.heaps[q as usize];
            for (i, &(_, slot)) in heap.iter().enumerate() {
                if self.pos.get(slot as usize) != Some(&(i as u32)) {
                    return Err(format!(
                        "{q:?} queue: slot {slot} at {i} recorded elsewhere"
                    ));
                }
                if i > 0 && heap[(i - 1) / ARITY] > heap[i] {
                    return Err(format!("{q:?} queue: out of order at {i}"));
                }
            }
        }
        Ok(())
    }

    fn remove_at(&mut self, q: Queue, i: usize) {
        let heap = &mut self.heaps[q as usize];
        let last = heap.len() - 1;
        heap.swap(i, last);
        heap.pop();
        if i < last {
            // The moved entry may belong above or below its new place.
            let i = self.sift_up(q, i);
            self.sift_down(q, i);
        }
    }

    /// Records where the entry at `i` of `q` is.
    fn place(&mut self, q: Queue, i: usize) {
        let slot = self.heaps[q as usize][i].1;
        self.pos[slot as usize] = i as u32;
    }

    /// Moves the entry at `i` up to its place, shifting each greater ancestor down into the
    /// hole it leaves: one position written per level. Returns where it landed.
    fn sift_up(&mut self, q: Queue, mut i: usize) -> usize {
        let (heap, pos) = (&mut self.heaps[q as usize], &mut self.pos);
        let item = heap[i];
        while i > 0 {
            let parent = (i - 1) / ARITY;
            if heap[parent] <= item {
                break;
            }
            heap[i] = heap[parent];
            pos[heap[i].1 as usize] = i as u32;
            i = parent;
        }
        heap[i] = item;
        pos[item.1 as usize] = i as u32;
        i
    }

    /// Moves the entry at `i` down to its place, shifting the least child up into the hole
    /// at each level.
    fn sift_down(&mut self, q: Queue, mut i: usize) {
        let (heap, pos) = (&mut self.heaps[q as usize], &mut self.pos);
        let len = heap.len();
        let item = heap[i];
        loop {
            let first = ARITY * i + 1;
            if first >= len {
                break;
            }
            let least = (first..(first + ARITY).min(len))
                .min_by_key(|&c| heap[c])
                .expect("at least one child");
            if item <= heap[least] {
                break;
            }
            heap[i] = heap[least];
            pos[heap[i].1 as usize] = i as u32;
            i = least;
        }
        heap[i] = item;
        pos[item.1 as usize] = i as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn free_slots_come_out_least_recently_freed_first_then_by_index() {
        let freed = [5, 1, 9, 1, 3];
        let mut q = Queues::new(5, |i| Some(t(freed[i as usize])));
        q.check().unwrap();
        let order: Vec<u32> = std::iter::from_fn(|| q.pop(Queue::Free).map(|(_, s)| s)).collect();
        assert_eq!(order, vec![1, 3, 4, 0, 2]);
    }

    #[test]
    fn slots_move_between_queues_and_keep_their_positions() {
        let mut q = Queues::new(8, |i| (i % 2 == 0).then(|| t(0)));
        for i in (1..8).step_by(2) {
            q.push(Queue::Leased, i, t(100 - u64::from(i)));
        }
        q.check().unwrap();
        assert_eq!(q.peek(Queue::Leased), Some((t(93), 7)));
        q.change(Queue::Leased, 7, t(200));
        assert_eq!(q.peek(Queue::Leased), Some((t(95), 5)));
        q.remove(Queue::Leased, 5);
        q.push(Queue::Cooling, 5, t(50));
        q.change(Queue::Leased, 1, t(10));
        q.check().unwrap();
        assert_eq!(q.get(Queue::Cooling, 5), Some(t(50)));
        assert_eq!(q.get(Queue::Leased, 5), None);
        assert_eq!(q.peek(Queue::Leased), Some((t(10), 1)));
        assert_eq!((q.len(Queue::Free), q.len(Queue::Leased)), (4, 3));
    }

    proptest::proptest! {
        /// Any sequence of pushes, changes, removals and pops agrees with a sorted set.
        #[test]
        fn the_queues_agree_with_a_sorted_set(ops in proptest::collection::vec((0u8..4, 0u32..40, 0u64..50), 0..300)) {
            use std::collections::BTreeSet;
            let mut q = Queues::new(40, |_| None);
            let mut model: BTreeSet<(Timestamp, u32)> = BTreeSet::new();
            for (op, slot, ms) in ops {
                let here = q.get(Queue::Leased, slot);
                match (op, here) {
                    (0, None) => {
                        q.push(Queue::Leased, slot, t(ms));
                        model.insert((t(ms), slot));
                    }
                    (1, Some(old)) => {
                        q.change(Queue::Leased, slot, t(ms));
                        model.remove(&(old, slot));
                        model.insert((t(ms), slot));
                    }
                    (2, Some(old)) => {
                        q.remove(Queue::Leased, slot);
                        model.remove(&(old, slot));
                    }
                    (3, _) => {
                        proptest::prop_assert_eq!(q.pop(Queue::Leased), model.pop_first());
                    }
                    _ => {}
                }
                q.check().map_err(proptest::test_runner::TestCaseError::fail)?;
                proptest::prop_assert_eq!(q.peek(Queue::Leased), model.first().copied());
                proptest::prop_assert_eq!(q.len(Queue::Leased), model.len());
            }
        }
    }
}
