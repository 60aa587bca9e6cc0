//! A sliding window of counts: a ring of buckets with running sums, so that adding a
//! record and reading the sums are constant work.

use std::time::Duration;

/// Buckets per window: the window slides by a twentieth of its length.
const BUCKETS: usize = 20;

#[derive(Debug)]
pub(super) struct Window {
    bucket: Duration,
    /// Per bucket: (records, hits).
    counts: [(u64, u64); BUCKETS],
    /// The index (since the origin, in buckets) of the newest bucket.
    head: u64,
    total: u64,
    hits: u64,
}

impl Window {
    pub(super) fn new(window: Duration) -> Self {
        Window {
            bucket: (window / BUCKETS as u32).max(Duration::from_millis(1)),
            counts: [(0, 0); BUCKETS],
            head: 0,
            total: 0,
            hits: 0,
        }
    }

    /// Counts one record at `at` (time since the origin), a hit or not.
    pub(super) fn add(&mut self, at: Duration, hit: bool) {
        let index = (at.as_nanos() / self.bucket.as_nanos().max(1)) as u64;
        self.advance(index);
        let slot = &mut self.counts[(self.head % BUCKETS as u64) as usize];
        slot.0 += 1;
        self.total += 1;
        if hit {
            slot.1 += 1;
            self.hits += 1;
        }
    }

    /// Moves the head to `index`, emptying the buckets that fall out of the window.
    fn advance(&mut self, index: u64) {
        if index <= self.head {
            return;
        }
        let steps = (index - self.head).min(BUCKETS as u64);
        for i in 1..=steps {
            let slot = &mut self.counts[((self.head + i) % BUCKETS as u64) as usize];
            self.total -= slot.0;
            self.hits -= slot.1;
            *slot = (0, 0);
        }
        self.head = index;
    }

    /// (records, hits) in the window.
    pub(super) fn sums(&self) -> (u64, u64) {
        (self.total, self.hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_buckets_fall_out_and_sums_follow() {
        let mut w = Window::new(Duration::from_secs(20)); // 1 s buckets
        w.add(Duration::from_millis(100), true);
        w.add(Duration::from_millis(900), false);
        w.add(Duration::from_secs(5), true);
        assert_eq!(w.sums(), (3, 2));
        // 20 s after the first bucket, it falls out; the one at 5 s stays.
        w.add(Duration::from_secs(20), false);
        assert_eq!(w.sums(), (2, 1));
        w.add(Duration::from_secs(25), false);
        assert_eq!(w.sums(), (2, 0));
        // A long silence empties everything.
        w.add(Duration::from_secs(1000), true);
        assert_eq!(w.sums(), (1, 1));
    }
}
