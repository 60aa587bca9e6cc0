//! Ids for degraded answers (`msg_…`, `chatcmpl-…`).
//!
//! A counter shared by a config's clones, mixed with a seed: no lock, distinct ids for
//! every answer, and the same sequence for the same seed.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[derive(Clone)]
pub(crate) struct Ids(Arc<State>);

struct State {
    seed: u64,
    next: AtomicU64,
}

impl Ids {
    pub(crate) fn new() -> Self {
        Ids::with_seed(fastrand::u64(..))
    }

    pub(crate) fn with_seed(seed: u64) -> Self {
        Ids(Arc::new(State {
            seed,
            next: AtomicU64::new(0),
        }))
    }

    /// `prefix` followed by 24 letters and digits.
    pub(crate) fn next(&self, prefix: &str) -> String {
        let n = self.0.next.fetch_add(1, Ordering::Relaxed);
        let mut state = self.0.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut id = String::with_capacity(prefix.len() + 24);
        id.push_str(prefix);
        for _ in 0..3 {
            // 62^8 < 2^64: eight letters from each draw are close to uniform.
            let mut draw = splitmix64(&mut state);
            for _ in 0..8 {
                id.push(ALPHABET[(draw % 62) as usize] as char);
                draw /= 62;
            }
        }
        id
    }
}

impl fmt::Debug for Ids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ids").finish_non_exhaustive()
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_repeat_and_never_collide_in_a_run() {
        let a = Ids::with_seed(1);
        let b = Ids::with_seed(1);
        let ids: Vec<String> = (0..1000).map(|_| a.next("msg_")).collect();
        let again: Vec<String> = (0..1000).map(|_| b.next("msg_")).collect();
        assert_eq!(ids, again);
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        assert!(ids.iter().all(|id| id.len() == 28
            && id["msg_".len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())));
        assert_ne!(Ids::with_seed(2).next("msg_"), ids[0]);
    }
}
