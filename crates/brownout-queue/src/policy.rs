//! Wait or move: one rule for "hold this request for the preferred model, or send it to
//! the next one now".

use std::time::Duration;

/// What a caller with a cascade should do about a target that cannot answer at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Wait this long for the target (zero: it can take the request now).
    Wait(Duration),
    /// Move on: to the next target of a cascade, or hand the answer back.
    Move,
}

impl Choice {
    /// Whether the choice is to wait.
    pub fn is_wait(self) -> bool {
        matches!(self, Choice::Wait(_))
    }
}

/// The wait-or-move rule: wait for the preferred target when the expected wait is at
/// most [`up_to`](Self::up_to), move to the next target when it is longer or unknown.
///
/// The expected wait is whatever the layer asking knows: a server-given delay
/// (`retry-after`), a breaker's remaining open time, the time the queue ahead takes to
/// drain. The queue layer uses it for its [`Health`](brownout_core::health::Health)
/// view (so a fallback outside skips a model only when waiting for it would take longer),
/// and the retry layer can use it for the same decision about a `retry-after`: sleep it
/// when it is short, hand the answer to the cascade when it is long.
///
/// ```
/// use std::time::Duration;
/// use brownout_queue::{Choice, PreferWait};
///
/// let policy = PreferWait::default(); // 500 ms
/// assert_eq!(policy.choose(Some(Duration::from_millis(300))), Choice::Wait(Duration::from_millis(300)));
/// assert_eq!(policy.choose(Some(Duration::from_secs(1))), Choice::Move);
/// assert_eq!(policy.choose(None), Choice::Move); // unknown: do not bet on it
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreferWait {
    up_to: Duration,
}

impl PreferWait {
    /// The default longest wait worth taking: 500 ms, a few hundred milliseconds of
    /// overload burst, and shorter than most lighter models take to answer.
    pub const DEFAULT_UP_TO: Duration = Duration::from_millis(500);

    /// Waits for the preferred target when the expected wait is at most `up_to`.
    pub const fn up_to(up_to: Duration) -> Self {
        PreferWait { up_to }
    }

    /// The longest wait this policy takes.
    pub const fn limit(&self) -> Duration {
        self.up_to
    }

    /// The choice for an expected wait (`None`: unknown, which moves).
    pub fn choose(&self, expected_wait: Option<Duration>) -> Choice {
        prefer_wait_up_to(self.up_to, expected_wait)
    }
}

impl Default for PreferWait {
    fn default() -> Self {
        PreferWait::up_to(PreferWait::DEFAULT_UP_TO)
    }
}

/// The wait-or-move rule as a function: [`Choice::Wait`] when `expected_wait` is known
/// and at most `up_to`, else [`Choice::Move`].
///
/// For a retry layer deciding about a server-given delay: `expected_wait` is the delay
/// it would sleep (the larger of its backoff and the `retry-after`); on
/// [`Choice::Move`] it gives the answer back at once so that a fallback outside sends
/// the request to the next model.
pub fn prefer_wait_up_to(up_to: Duration, expected_wait: Option<Duration>) -> Choice {
    match expected_wait {
        Some(wait) if wait <= up_to => Choice::Wait(wait),
        _ => Choice::Move,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_up_to_the_limit_and_moves_beyond_or_when_unknown() {
        let up_to = Duration::from_millis(500);
        assert_eq!(
            prefer_wait_up_to(up_to, Some(Duration::ZERO)),
            Choice::Wait(Duration::ZERO)
        );
        assert_eq!(prefer_wait_up_to(up_to, Some(up_to)), Choice::Wait(up_to));
        assert_eq!(
            prefer_wait_up_to(up_to, Some(up_to + Duration::from_millis(1))),
            Choice::Move
        );
        assert_eq!(prefer_wait_up_to(up_to, None), Choice::Move);
        assert!(PreferWait::up_to(Duration::ZERO)
            .choose(Some(Duration::ZERO))
            .is_wait());
        assert_eq!(PreferWait::default().limit(), PreferWait::DEFAULT_UP_TO);
    }
}
