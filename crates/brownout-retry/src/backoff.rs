//! How long to wait between attempts.

use brownout_core::error::InvalidConfig;
use std::time::Duration;

/// How a backoff spreads its delays to keep clients from retrying in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Jitter {
    /// "Full jitter": a delay drawn uniformly from `[0, min(cap, base × multiplierⁿ⁻¹))`.
    /// Spreads a burst of clients the most; the default.
    Full,
    /// "Decorrelated jitter": a delay drawn uniformly from `[base, previous × 3)`, capped.
    /// Each delay grows from the one before rather than from the attempt number.
    Decorrelated,
    /// No jitter: exactly `min(cap, base × multiplierⁿ⁻¹)`. Deterministic, which helps in
    /// tests, and bad for a fleet of clients, which then retry together.
    None,
}

/// An exponential backoff: base, cap, growth and jitter, checked at construction.
///
/// The default is full jitter between 0 and `500 ms × 2ⁿ⁻¹`, capped at 8 s: the range
/// of the official Anthropic SDK, with full jitter instead of its ±25 %.
///
/// ```
/// use std::time::Duration;
/// use brownout_retry::Backoff;
///
/// let backoff = Backoff::full_jitter(Duration::from_millis(200), Duration::from_secs(5))?;
/// // The upper bound of the n-th delay, before jitter:
/// assert_eq!(backoff.ceiling(1), Duration::from_millis(200));
/// assert_eq!(backoff.ceiling(3), Duration::from_millis(800));
/// assert_eq!(backoff.ceiling(10), Duration::from_secs(5));
///
/// assert!(Backoff::full_jitter(Duration::from_secs(9), Duration::from_secs(8)).is_err());
/// assert!(backoff.multiplier(f64::NAN).is_err());
/// # Ok::<(), brownout_retry::InvalidConfig>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    multiplier: f64,
    jitter: Jitter,
}

impl Backoff {
    /// Full jitter between 0 and `base × 2ⁿ⁻¹`, capped at `cap`.
    ///
    /// Fails when `cap` is zero or `base` is greater than `cap`.
    pub fn full_jitter(base: Duration, cap: Duration) -> Result<Self, InvalidConfig> {
        Backoff::checked(base, cap, Jitter::Full)
    }

    /// Decorrelated jitter starting at `base`, capped at `cap`.
    ///
    /// Fails when `cap` is zero or `base` is greater than `cap`.
    pub fn decorrelated_jitter(base: Duration, cap: Duration) -> Result<Self, InvalidConfig> {
        Backoff::checked(base, cap, Jitter::Decorrelated)
    }

    /// Exactly `base × 2ⁿ⁻¹`, capped at `cap`, with no jitter.
    ///
    /// Fails when `cap` is zero or `base` is greater than `cap`.
    pub fn exponential(base: Duration, cap: Duration) -> Result<Self, InvalidConfig> {
        Backoff::checked(base, cap, Jitter::None)
    }

    fn checked(base: Duration, cap: Duration, jitter: Jitter) -> Result<Self, InvalidConfig> {
        if cap.is_zero() {
            return Err(invalid(
                "backoff.cap",
                "the cap must be greater than zero".into(),
            ));
        }
        if base > cap {
            return Err(invalid(
                "backoff.base",
                format!("the base ({base:?}) is greater than the cap ({cap:?})"),
            ));
        }
        Ok(Backoff {
            base,
            cap,
            multiplier: 2.0,
            jitter,
        })
    }

    /// Sets how much the ceiling grows per attempt (default 2). Not used by
    /// decorrelated jitter, which grows from the previous delay.
    ///
    /// Fails unless `multiplier` is a finite number of at least 1.
    pub fn multiplier(mut self, multiplier: f64) -> Result<Self, InvalidConfig> {
        if !multiplier.is_finite() || multiplier < 1.0 {
            return Err(invalid(
                "backoff.multiplier",
                format!("the multiplier must be a finite number of at least 1, not {multiplier}"),
            ));
        }
        self.multiplier = multiplier;
        Ok(self)
    }

    /// The first delay's ceiling.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The longest delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The jitter strategy.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The delay before retry number `retry` (1 for the first retry) would be without
    /// jitter: `min(cap, base × multiplier^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(1024) as i32;
        let secs = self.base.as_secs_f64() * self.multiplier.powi(exponent);
        if !secs.is_finite() || secs >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::from_secs_f64(secs).min(self.cap)
        }
    }

    /// The delay before retry number `retry`, given the previous delay (for decorrelated
    /// jitter; the base before the first retry) and `unit`, a random draw from `[0, 1)`.
    ///
    /// Pure, so that tests can check the bounds without a random number generator.
    pub fn delay(&self, retry: u32, previous: Duration, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        match self.jitter {
            Jitter::None => self.ceiling(retry),
            Jitter::Full => self.ceiling(retry).mul_f64(unit),
            Jitter::Decorrelated => {
                let low = self.base.as_secs_f64();
                let high =
                    (previous.max(self.base).as_secs_f64() * 3.0).min(self.cap.as_secs_f64());
                let secs = low + (high - low).max(0.0) * unit;
                Duration::from_secs_f64(secs).min(self.cap)
            }
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(8),
            multiplier: 2.0,
            jitter: Jitter::Full,
        }
    }
}

/// A backoff setting refused: the retry layer's [`InvalidConfig`], naming the setting.
fn invalid(key: &'static str, reason: String) -> InvalidConfig {
    InvalidConfig::new("retry", key, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use brownout_core::rng::SharedRng;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn constructors_validate() {
        let err = Backoff::full_jitter(MS * 10, MS * 5).unwrap_err();
        assert_eq!(err.key(), "backoff.base");
        assert_eq!(
            err.to_string(),
            "invalid retry setting `backoff.base`: the base (10ms) is greater than the cap (5ms)"
        );
        let err = Backoff::decorrelated_jitter(Duration::ZERO, Duration::ZERO).unwrap_err();
        assert_eq!(err.key(), "backoff.cap");
        assert_eq!(err.reason(), "the cap must be greater than zero");
        let b = Backoff::exponential(MS, MS).unwrap();
        for bad in [f64::NAN, f64::INFINITY, 0.5, -2.0] {
            assert!(b.multiplier(bad).is_err(), "{bad}");
        }
        assert!(b.multiplier(1.0).is_ok());
        // Equal base and cap is fine, and so is a zero base.
        assert!(Backoff::full_jitter(Duration::ZERO, MS).is_ok());
    }

    #[test]
    fn ceilings_grow_and_cap_without_overflow() {
        let b = Backoff::default();
        let ceilings: Vec<u64> = (1..=7).map(|n| b.ceiling(n).as_millis() as u64).collect();
        assert_eq!(ceilings, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(8));
        let b = Backoff::exponential(MS * 100, Duration::from_secs(60))
            .unwrap()
            .multiplier(3.0)
            .unwrap();
        assert_eq!(b.ceiling(3), MS * 900);
        assert_eq!(b.delay(3, Duration::ZERO, 0.123), MS * 900, "no jitter");
    }

    #[test]
    fn full_jitter_stays_within_bounds_over_many_draws() {
        let b = Backoff::default();
        let rng = SharedRng::with_seed(42);
        for retry in 1..=8 {
            let ceiling = b.ceiling(retry);
            let draws: Vec<Duration> = (0..2000)
                .map(|_| b.delay(retry, b.base(), rng.f64()))
                .collect();
            assert!(draws.iter().all(|d| *d < ceiling || ceiling.is_zero()));
            // The draws spread over the range: some in the lowest and highest tenth.
            assert!(draws.iter().any(|d| *d < ceiling / 10), "retry {retry}");
            assert!(draws.iter().any(|d| *d > ceiling * 9 / 10), "retry {retry}");
        }
        assert_eq!(b.delay(1, b.base(), 0.0), Duration::ZERO);
        assert_eq!(b.delay(1, b.base(), f64::NAN), Duration::ZERO);
    }

    #[test]
    fn decorrelated_jitter_stays_within_bounds_over_many_draws() {
        let b = Backoff::decorrelated_jitter(MS * 100, Duration::from_secs(2)).unwrap();
        let rng = SharedRng::with_seed(7);
        let mut previous = b.base();
        for retry in 1..=2000 {
            let next = b.delay(retry, previous, rng.f64());
            assert!(next >= b.base(), "{next:?}");
            assert!(next <= b.cap(), "{next:?}");
            assert!(next <= previous * 3, "{next:?} after {previous:?}");
            previous = next;
        }
    }
}
