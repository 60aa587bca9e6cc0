//! Which stripe of shared counts a thread writes to.
//!
//! State that every thread writes on every call (a success count, a reference count)
//! is split in stripes, each on cache lines of its own, so that two threads calling
//! at once write to different lines and their cores do not pass one line back and
//! forth. A thread's stripe is the order in which it first asked, modulo the count.

use std::{
    cell::Cell,
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
};

/// How many stripes: twice the cores (a power of two, 2 to 16), so that the threads of
/// a runtime with one worker per core seldom share one.
pub(crate) fn stripe_count() -> usize {
    static STRIPES: OnceLock<usize> = OnceLock::new();
    *STRIPES.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .saturating_mul(2)
            .next_power_of_two()
            .clamp(2, 16)
    })
}

/// The calling thread's stripe, below [`stripe_count`].
#[inline]
pub(crate) fn this_stripe() -> usize {
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    static THREADS: AtomicUsize = AtomicUsize::new(0);
    STRIPE
        .try_with(|stripe| {
            if stripe.get() == usize::MAX {
                stripe.set(THREADS.fetch_add(1, Ordering::Relaxed) % stripe_count());
            }
            stripe.get()
        })
        .unwrap_or(0)
}
