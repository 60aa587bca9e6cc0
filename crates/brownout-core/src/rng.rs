//! Injectable randomness, so that jitter is reproducible in tests.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

/// A random number generator shared by all clones of a service.
///
/// Clones draw from one sequence, so two clones never sleep in lockstep, and a seed
/// fixes the whole sequence. The lock is taken only to draw a jitter, which happens
/// only on the failure path.
#[derive(Clone)]
pub struct SharedRng(Arc<Mutex<fastrand::Rng>>);

impl SharedRng {
    /// A generator seeded from the process's entropy.
    pub fn new() -> Self {
        SharedRng::from_rng(fastrand::Rng::new())
    }

    /// A generator with a fixed seed: the same seed gives the same draws.
    pub fn with_seed(seed: u64) -> Self {
        SharedRng::from_rng(fastrand::Rng::with_seed(seed))
    }

    fn from_rng(rng: fastrand::Rng) -> Self {
        SharedRng(Arc::new(Mutex::new(rng)))
    }

    /// A float uniformly drawn from `[0, 1)`.
    pub fn f64(&self) -> f64 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).f64()
    }
}

impl Default for SharedRng {
    fn default() -> Self {
        SharedRng::new()
    }
}

impl fmt::Debug for SharedRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRng").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_draws_repeat_and_clones_share_a_sequence() {
        let a = SharedRng::with_seed(7);
        let b = SharedRng::with_seed(7);
        let draws_a: Vec<f64> = (0..8).map(|_| a.f64()).collect();
        let draws_b: Vec<f64> = (0..8).map(|_| b.f64()).collect();
        assert_eq!(draws_a, draws_b);
        assert!(draws_a.iter().all(|x| (0.0..1.0).contains(x)));

        let c = SharedRng::with_seed(7);
        let d = c.clone();
        let first = c.f64();
        assert_ne!(first, d.f64(), "a clone continues the sequence");
    }
}
