//! Continuously refilling buckets: one per limited resource, one set per key.
//!
//! A bucket holds up to one minute's limit and refills at the limit per minute,
//! continuously: a key that has been quiet can send a minute's worth at once, and one
//! that is busy sends at the limit's rate, smoothly, with no window edge to burst at
//! (the token-bucket shape Anthropic documents for its own limits). A request takes
//! what it needs from every limited bucket at once. When a bucket lacks room, the
//! request may still take it, leaving the bucket in debt, and wait until the debt is
//! refilled: the waiting requests are then ordered by their debts (first come, first
//! served) without a queue of their own, and a request never waits longer than the
//! time its debt says (GCRA's virtual scheduling, for several resources at once).

use std::{fmt, time::Duration};

use tokio::time::Instant;

/// One minute: the period of every limit.
pub(crate) const MINUTE: Duration = Duration::from_secs(60);

/// A resource a provider limits per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Resource {
    /// Requests per minute (RPM).
    Requests,
    /// Input (prompt) tokens per minute (Anthropic's ITPM).
    InputTokens,
    /// Output (completion) tokens per minute (Anthropic's OTPM).
    OutputTokens,
    /// Input and output tokens together per minute (OpenAI's TPM).
    Tokens,
}

impl Resource {
    /// Every resource: requests, input tokens, output tokens, tokens.
    pub const ALL: [Resource; 4] = [
        Resource::Requests,
        Resource::InputTokens,
        Resource::OutputTokens,
        Resource::Tokens,
    ];

    pub(crate) fn index(self) -> usize {
        match self {
            Resource::Requests => 0,
            Resource::InputTokens => 1,
            Resource::OutputTokens => 2,
            Resource::Tokens => 3,
        }
    }

    /// A short lowercase name, as in events (`"input_tokens"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Requests => "requests",
            Resource::InputTokens => "input_tokens",
            Resource::OutputTokens => "output_tokens",
            Resource::Tokens => "tokens",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Requests => "requests",
            Resource::InputTokens => "input tokens",
            Resource::OutputTokens => "output tokens",
            Resource::Tokens => "tokens",
        })
    }
}

/// Amounts of each [`Resource`]: what one request takes from a key's buckets, or
/// what a settlement gives back.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Amounts(pub(crate) [f64; 4]);

impl Amounts {
    /// What one request takes: one request, `input` tokens in, `output` reserved, and
    /// both as tokens.
    pub fn request(input: u64, output: u64) -> Amounts {
        let (input, output) = (input as f64, output as f64);
        Amounts([1.0, input, output, input + output])
    }

    /// Input and output tokens given back (negative: taken), no request: a settlement.
    pub fn tokens(input: f64, output: f64) -> Amounts {
        Amounts([0.0, input, output, input + output])
    }

    /// The amount of `resource`.
    pub fn get(&self, resource: Resource) -> f64 {
        self.0[resource.index()]
    }

    /// Whether every amount is zero.
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|a| *a == 0.0)
    }

    /// Adds `other` to these amounts.
    pub fn add(&mut self, other: &Amounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    configured: Option<u64>,
    learned: Option<u64>,
    level: f64,
}

impl Bucket {
    fn capacity(&self) -> Option<u64> {
        match (self.configured, self.learned) {
            (Some(c), Some(l)) => Some(c.min(l)),
            (c, l) => c.or(l),
        }
    }
}

/// The buckets of one key.
#[derive(Debug)]
pub(crate) struct Buckets {
    buckets: [Bucket; 4],
    at: Instant,
    paused_until: Option<Instant>,
}

/// What a [`LimitStore`](crate::LimitStore) decided of a request.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Admit {
    /// Taken; send after this wait (zero: at once).
    Taken(Duration),
    /// Not taken: there is room only after this wait, longer than the request may wait.
    Refused {
        /// When there is room.
        wait: Duration,
        /// The limit that binds (`None`: the key is paused, or the store refuses).
        resource: Option<Resource>,
    },
    /// Not taken: the request needs more than a whole minute's limit.
    Oversized {
        /// The limit.
        resource: Resource,
        /// What the request needs of it.
        need: u64,
        /// The limit per minute.
        limit: u64,
    },
}

/// What a bucket holds now, for the handle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Remaining {
    /// The resource.
    pub resource: Resource,
    /// The limit per minute in force: the configured one, tightened by what the
    /// provider said.
    pub limit: u64,
    /// What could be taken now; negative while requests wait for room.
    pub remaining: f64,
}

impl Buckets {
    pub(crate) fn new(limits: [Option<u64>; 4], now: Instant) -> Self {
        let buckets = limits.map(|configured| Bucket {
            configured,
            learned: None,
            level: configured.unwrap_or(0) as f64,
        });
        Buckets {
            buckets,
            at: now,
            paused_until: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        if elapsed.is_zero() {
            return;
        }
        self.at = now;
        let minutes = elapsed.as_secs_f64() * (1.0 / 60.0);
        for b in &mut self.buckets {
            if let Some(cap) = b.capacity() {
                let cap = cap as f64;
                if b.level < cap {
                    b.level = (b.level + cap * minutes).min(cap);
                }
            }
        }
    }

    /// Takes `need` if the request may wait `max_wait` for it.
    pub(crate) fn admit(&mut self, need: &Amounts, now: Instant, max_wait: Duration) -> Admit {
        self.refill(now);
        let mut wait = self
            .paused_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        let mut binding = None;
        for (r, b) in Resource::ALL.iter().zip(&self.buckets) {
            let Some(cap) = b.capacity() else { continue };
            let n = need.0[r.index()];
            if n > cap as f64 {
                return Admit::Oversized {
                    resource: *r,
                    need: n.ceil() as u64,
                    limit: cap,
                };
            }
            if b.level < n {
                let minutes = (n - b.level) / cap as f64;
                let t = Duration::from_secs_f64(minutes * MINUTE.as_secs_f64());
                if t > wait {
                    wait = t;
                    binding = Some(*r);
                }
            }
        }
        if wait > max_wait {
            return Admit::Refused {
                wait,
                resource: binding,
            };
        }
        for (r, b) in Resource::ALL.iter().zip(&mut self.buckets) {
            if b.capacity().is_some() {
                b.level -= need.0[r.index()];
            }
        }
        Admit::Taken(wait)
    }

    /// Gives back `amounts` of each resource, by [`Resource::index`], at once.
    ///
    /// Amounts that only give back need no refill first: capped at the limit, adding
    /// before or after the refill that comes with the next call gives the same
    /// level. Taking more (a negative amount) refills first, so that what the
    /// refill would have added beyond the limit is not counted.
    pub(crate) fn give_back_all(&mut self, amounts: [f64; 4], now: Instant) {
        if amounts.iter().any(|a| *a < 0.0) {
            self.refill(now);
        }
        for (b, amount) in self.buckets.iter_mut().zip(amounts) {
            if let Some(cap) = b.capacity() {
                b.level = (b.level + amount).min(cap as f64);
            }
        }
    }

    /// Takes `need` whatever the level: a request another store admitted, mirrored
    /// here so that the local buckets know of it if they must take over.
    pub(crate) fn charge(&mut self, need: &Amounts, now: Instant) {
        self.refill(now);
        for (b, n) in self.buckets.iter_mut().zip(need.0) {
            if let Some(cap) = b.capacity() {
                b.level = (b.level - n).max(-(cap as f64));
            }
        }
    }

    /// The limit per minute in force for `resource`.
    pub(crate) fn capacity(&self, resource: Resource) -> Option<u64> {
        self.buckets[resource.index()].capacity()
    }

    /// What the provider said of `resource`: its limit, and what remains of it. The
    /// limit in force never rises above the configured one, and the level only falls.
    pub(crate) fn learn(
        &mut self,
        resource: Resource,
        limit: Option<u64>,
        remaining: Option<u64>,
        now: Instant,
    ) -> bool {
        self.refill(now);
        let b = &mut self.buckets[resource.index()];
        let before = (b.capacity(), b.level);
        if let Some(limit) = limit.filter(|l| *l > 0) {
            let had = b.capacity();
            b.learned = Some(limit);
            if had.is_none() {
                // A limit first learned: what remains is what the provider says.
                b.level = remaining.unwrap_or(limit) as f64;
            }
        }
        if let Some(cap) = b.capacity() {
            b.level = b.level.min(cap as f64);
            if let Some(remaining) = remaining {
                b.level = b.level.min(remaining as f64);
            }
        }
        before != (b.capacity(), b.level)
    }

    /// A 429 asked to wait `delay`: nothing is sent before then, and the buckets
    /// refill only from now.
    pub(crate) fn pause(&mut self, until: Instant, now: Instant) {
        self.refill(now);
        self.paused_until = Some(self.paused_until.map_or(until, |t| t.max(until)));
        for b in &mut self.buckets {
            b.level = b.level.min(0.0);
        }
    }

    /// When the key's pause ends, if it is paused.
    pub(crate) fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|t| *t > now)
    }

    /// Whether every bucket is full and nothing is paused: an idle key.
    pub(crate) fn is_idle(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.paused_until(now).is_none()
            && self
                .buckets
                .iter()
                .all(|b| b.capacity().is_none_or(|cap| b.level >= cap as f64))
    }

    /// What every limited bucket holds now.
    pub(crate) fn remaining(&mut self, now: Instant) -> Vec<Remaining> {
        self.refill(now);
        Resource::ALL
            .iter()
            .zip(&self.buckets)
            .filter_map(|(r, b)| {
                Some(Remaining {
                    resource: *r,
                    limit: b.capacity()?,
                    remaining: b.level,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpm(n: u64) -> [Option<u64>; 4] {
        [Some(n), None, None, None]
    }

    #[test]
    fn refills_continuously_and_orders_waiters_by_debt() {
        let t0 = Instant::now();
        let mut b = Buckets::new(rpm(60), t0);
        let one = Amounts::request(0, 0);
        for _ in 0..60 {
            assert_eq!(
                b.admit(&one, t0, Duration::ZERO),
                Admit::Taken(Duration::ZERO)
            );
        }
        // Empty: the next waits one second, the one after two.
        assert_eq!(
            b.admit(&one, t0, Duration::from_secs(5)),
            Admit::Taken(Duration::from_secs(1))
        );
        assert_eq!(
            b.admit(&one, t0, Duration::from_secs(5)),
            Admit::Taken(Duration::from_secs(2))
        );
        assert!(matches!(
            b.admit(&one, t0, Duration::from_millis(2500)),
            Admit::Refused {
                resource: Some(Resource::Requests),
                ..
            }
        ));
        // Half a minute later, 30 refilled, 2 of them owed.
        let t1 = t0 + Duration::from_secs(30);
        let left = b.remaining(t1)[0].remaining;
        assert!((left - 28.0).abs() < 1e-6, "{left}");
    }

    #[test]
    fn giving_back_before_or_after_the_refill_is_the_same() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(6);
        for (level, back) in [(10.0, 5.0), (95.0, 20.0), (-30.0, 10.0), (50.0, 0.0)] {
            // Taken down to `level` at t0, given `back` at t1, read at t1.
            let mut a = Buckets::new(rpm(100), t0);
            a.buckets[0].level = level;
            a.give_back_all([back, 0.0, 0.0, 0.0], t1);
            let mut b = Buckets::new(rpm(100), t0);
            b.buckets[0].level = level;
            b.refill(t1);
            b.buckets[0].level = (b.buckets[0].level + back).min(100.0);
            let (ra, rb) = (a.remaining(t1)[0].remaining, b.remaining(t1)[0].remaining);
            assert!((ra - rb).abs() < 1e-9, "{level} + {back}: {ra} vs {rb}");
        }
    }

    #[test]
    fn oversized_requests_are_told_at_once() {
        let t0 = Instant::now();
        let mut b = Buckets::new([None, Some(1000), None, None], t0);
        assert_eq!(
            b.admit(&Amounts::request(1001, 0), t0, Duration::from_secs(60)),
            Admit::Oversized {
                resource: Resource::InputTokens,
                need: 1001,
                limit: 1000
            }
        );
    }

    #[test]
    fn learning_tightens_and_never_loosens_past_the_configuration() {
        let t0 = Instant::now();
        let mut b = Buckets::new(rpm(100), t0);
        assert!(b.learn(Resource::Requests, Some(50), Some(10), t0));
        let r = b.remaining(t0)[0];
        assert_eq!((r.limit, r.remaining), (50, 10.0));
        b.learn(Resource::Requests, Some(1000), Some(1000), t0);
        assert_eq!(b.remaining(t0)[0].limit, 100);
        // A limit nobody configured is learned as it is.
        b.learn(Resource::Tokens, Some(40_000), Some(39_000), t0);
        let tokens = b.remaining(t0)[1];
        assert_eq!((tokens.resource, tokens.limit), (Resource::Tokens, 40_000));
        assert_eq!(tokens.remaining, 39_000.0);
    }

    #[test]
    fn a_pause_holds_every_request() {
        let t0 = Instant::now();
        let mut b = Buckets::new(rpm(600), t0);
        b.pause(t0 + Duration::from_secs(5), t0);
        assert_eq!(
            b.admit(&Amounts::request(0, 0), t0, Duration::from_secs(10)),
            Admit::Taken(Duration::from_secs(5))
        );
        assert!(matches!(
            b.admit(&Amounts::request(0, 0), t0, Duration::from_secs(1)),
            Admit::Refused { .. }
        ));
    }
}
