//! The rate limiter's store: every key's buckets in Redis, taken from atomically by
//! a Lua script, with the key's local buckets as mirror and fallback.

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::*},
        Arc, Mutex, OnceLock, PoisonError, Weak,
    },
    time::Duration,
};

use brownout_core::{error::InvalidConfig, event::Event};
use brownout_limit::{Admission, Admit, Amounts, LimitKey, LimitStore, Resource};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::{interval, timeout, Instant, MissedTickBehavior};

use crate::{config::RedisConfig, event::RedisEvent, keys, worker::reason};

/// A key's buckets on Redis's clock (`TIME`), refilling continuously: one hash per
/// key, `t` the last update (ms), `l1`..`l4` the levels of requests, input tokens,
/// output tokens and tokens, `p` the end of a provider's pause (ms).
///
/// KEYS[1] the key's hash. ARGV[1] the operation; then, for `a` (admit) the longest
/// wait in ms and for `p` (pause) the pause in ms, else nothing; then four pairs of
/// the capacity per minute (0: not limited) and the amount of each resource: what
/// the request needs (`a`), what is given back (`g`), what the provider says remains
/// (`l`, -1: not said), nothing (`p`).
///
/// `a` answers `{0, wait µs}` taken, `{1, wait µs, resource}` refused (longer than it
/// may wait), `{2, resource, need, limit}` larger than a minute's limit; the others
/// `{0}`. Resources are 1 to 4 (0: none, a pause binds).
const LIMIT_LUA: &str = r"
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local h = redis.call('HMGET', KEYS[1], 't', 'l1', 'l2', 'l3', 'l4', 'p')
local at = tonumber(h[1]) or now
local pause = tonumber(h[6]) or 0
local elapsed = math.max(0, now - at)
local base = 2
if op == 'a' or op == 'p' then base = 3 end
local caps, args, levels = {}, {}, {}
for i = 1, 4 do
  local cap = tonumber(ARGV[base + 2 * i - 2])
  caps[i] = cap
  args[i] = tonumber(ARGV[base + 2 * i - 1])
  if cap > 0 then
    local level = tonumber(h[i + 1])
    if level == nil then
      level = cap
    else
      level = math.min(cap, level + cap * elapsed / 60000)
    end
    levels[i] = level
  end
end
local result = {0}
local ttl = 120000
if op == 'a' then
  local wait = 0
  local binding = 0
  if pause > now then wait = pause - now end
  for i = 1, 4 do
    if caps[i] > 0 then
      if args[i] > caps[i] then
        return {2, i, math.ceil(args[i]), caps[i]}
      end
      if levels[i] < args[i] then
        local w = (args[i] - levels[i]) / caps[i] * 60000
        if w > wait then
          wait = w
          binding = i
        end
      end
    end
  end
  if wait > tonumber(ARGV[2]) then
    return {1, math.ceil(wait * 1000), binding}
  end
  for i = 1, 4 do
    if caps[i] > 0 then levels[i] = levels[i] - args[i] end
  end
  ttl = ttl + wait
  result = {0, math.ceil(wait * 1000)}
elseif op == 'g' then
  for i = 1, 4 do
    if caps[i] > 0 then levels[i] = math.min(caps[i], levels[i] + args[i]) end
  end
elseif op == 'l' then
  for i = 1, 4 do
    if caps[i] > 0 and args[i] >= 0 then levels[i] = math.min(levels[i], args[i]) end
  end
elseif op == 'p' then
  pause = math.max(pause, now + tonumber(ARGV[2]))
  for i = 1, 4 do
    if caps[i] > 0 then levels[i] = math.min(levels[i], 0) end
  end
end
if pause > now then ttl = ttl + pause - now end
local fields = {'t', now, 'p', pause}
for i = 1, 4 do
  if caps[i] > 0 then
    fields[#fields + 1] = 'l' .. i
    fields[#fields + 1] = levels[i]
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
local left = redis.call('PTTL', KEYS[1])
if left < ttl then redis.call('PEXPIRE', KEYS[1], math.ceil(ttl)) end
return result
";

/// What a [`RedisLimitStore`] does while Redis is away (down, slow past the timeout,
/// or not reached yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailMode {
    /// Admit from this process's buckets for the key (the default): every request is
    /// still decided, against this replica's own view of the limits, so a fleet may
    /// together exceed them while Redis is away; no request fails because Redis did.
    Open,
    /// Refuse every request until Redis answers: a `429` `rate_limit_error` in the
    /// provider's shape (or the limiter's `RateLimited` error), `retry-after` this
    /// long. For a fleet that must never exceed a provider's limits.
    Closed {
        /// The `retry-after` of the refusals.
        retry_after: Duration,
    },
}

/// Rate-limit buckets shared by the replicas of a deployment through Redis: give it
/// to `RateLimitConfig::store`. See the [crate docs](crate#shared-rate-limits) for
/// what it sends and what happens when Redis is away.
#[derive(Clone)]
pub struct RedisLimitStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    mode: FailMode,
    ns: String,
    script: redis::Script,
    /// Made by the background task once Redis first answers; it reconnects by itself.
    conn: OnceLock<ConnectionManager>,
    /// Whether Redis answered the last call.
    connected: AtomicBool,
    /// When Redis was lost, for the event that says it is back.
    down_since: Mutex<Option<Instant>>,
    /// Whether the loss was told (a [`RedisEvent::SharedStateLost`]).
    told: AtomicBool,
    /// Settlements, learned limits and pauses for the next flush.
    pending: Mutex<Vec<Pending>>,
    /// Admissions sent to Redis (one round trip each).
    admissions: AtomicU64,
    /// Pipelines the background task sent (one round trip each).
    flushes: AtomicU64,
}

/// Per-key data: the key's name in Redis.
struct RedisName(String);

enum Pending {
    Give(Arc<LimitKey>, Amounts),
    Learn(Arc<LimitKey>, Resource, u64),
    Pause(Arc<LimitKey>, Duration),
}

impl RedisLimitStore {
    /// A store in the Redis of `redis`, doing `mode` while Redis is away. Uses the
    /// config's [`timeout`](RedisConfig::timeout) for every call,
    /// [`flush_interval`](RedisConfig::flush_interval) for batched settlements, and
    /// [`poll_interval`](RedisConfig::poll_interval) for checking a lost Redis.
    ///
    /// Must be called inside a Tokio runtime: it starts the background task that
    /// connects and flushes, which ends when the last clone of the store is dropped.
    /// It does not wait for Redis: until Redis answers, the store is as when Redis is
    /// away (see [`is_shared`](Self::is_shared)).
    pub fn new(redis: RedisConfig, mode: FailMode) -> Result<Self, InvalidConfig> {
        redis.validate()?;
        if let FailMode::Closed { retry_after } = mode {
            if retry_after < Duration::from_millis(1) || retry_after > Duration::from_secs(3600) {
                return Err(InvalidConfig::new(
                    "redis",
                    "fail_closed.retry_after",
                    "must be between 1 ms and an hour",
                ));
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            InvalidConfig::new("redis", "runtime", "must be created inside a Tokio runtime")
        })?;
        let inner = Arc::new(Inner {
            ns: format!("brownout:{}:limit:", redis.deployment),
            config: redis,
            mode,
            script: redis::Script::new(LIMIT_LUA),
            conn: OnceLock::new(),
            connected: AtomicBool::new(false),
            down_since: Mutex::new(Some(Instant::now())),
            told: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
            admissions: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        });
        runtime.spawn(run(Arc::downgrade(&inner)));
        Ok(RedisLimitStore { inner })
    }

    /// Whether Redis answered the store's last call: `false` while the store decides
    /// locally (or refuses, fail-closed).
    pub fn is_shared(&self) -> bool {
        self.inner.connected.load(Acquire)
    }

    /// Round trips to Redis so far: admissions (one per admitted or refused request
    /// while Redis answers) and the background task's pipelines.
    pub fn round_trips(&self) -> RoundTrips {
        RoundTrips {
            admissions: self.inner.admissions.load(Relaxed),
            flushes: self.inner.flushes.load(Relaxed),
        }
    }
}

/// What [`RedisLimitStore::round_trips`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RoundTrips {
    /// One `EVALSHA` per request decided in Redis.
    pub admissions: u64,
    /// Pipelines of settlements, learned limits and pauses, one per
    /// [`flush_interval`](RedisConfig::flush_interval) at most, and the pings that
    /// check a lost Redis.
    pub flushes: u64,
}

impl fmt::Debug for RedisLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimitStore")
            .field("redis", &self.inner.config)
            .field("mode", &self.inner.mode)
            .field("shared", &self.is_shared())
            .finish()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Inner {
    fn name<'k>(&self, key: &'k LimitKey) -> std::borrow::Cow<'k, str> {
        let made = key.data(|| RedisName(self.make_name(key)));
        match made {
            Some(name) => std::borrow::Cow::Borrowed(&name.0),
            // A key another store's data claimed (never with one layer, one store):
            // made again, namespaced and fingerprinted all the same.
            None => std::borrow::Cow::Owned(self.make_name(key)),
        }
    }

    fn make_name(&self, key: &LimitKey) -> String {
        let deployment = &self.config.deployment;
        let mut out = self.ns.clone();
        match key.model() {
            Some(model) => {
                out.push_str(&keys::id(deployment, model));
                if let Some(caller) = key.caller() {
                    let mut hasher =
                        blake3::Hasher::new_derive_key("brownout-redis limit caller v1");
                    hasher.update(deployment.as_bytes());
                    hasher.update(&[0]);
                    hasher.update(caller.as_bytes());
                    out.push_str("/fp:");
                    for byte in &hasher.finalize().as_bytes()[..16] {
                        out.push_str(&format!("{byte:02x}"));
                    }
                }
            }
            None => out.push_str(&keys::id(deployment, key.name())),
        }
        out
    }

    /// The four capacities of the key now (configured, tightened by what was
    /// learned), 0 for none, and the amounts, as the script's pairs.
    fn pairs(inv: &mut redis::ScriptInvocation<'_>, key: &LimitKey, amounts: [f64; 4]) {
        let caps = key.local().capacities();
        for (cap, amount) in caps.iter().zip(amounts) {
            inv.arg(cap.unwrap_or(0)).arg(amount);
        }
    }

    /// A call failed: local (or closed) from now, said once.
    fn lost(&self, why: &'static str) {
        if self.connected.swap(false, AcqRel) {
            *self
                .down_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
        self.unreached(why);
    }

    /// Redis was not reached (while away, or at start): said once per outage.
    fn unreached(&self, why: &'static str) {
        if !self.told.swap(true, AcqRel) {
            self.config.events.emit(Event::detached(
                "redis",
                RedisEvent::SharedStateLost { reason: why },
            ));
        }
    }

    /// Redis answers: back on the shared buckets; said if the loss was.
    fn resumed(&self) {
        if !self.connected.swap(true, AcqRel) {
            let since = self
                .down_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if self.told.swap(false, AcqRel) {
                self.config.events.emit(Event::detached(
                    "redis",
                    RedisEvent::SharedStateResumed {
                        down_for: since.map_or(Duration::ZERO, |s| s.elapsed()),
                    },
                ));
            }
        }
    }

    /// The decision while Redis is away.
    fn away(&self, key: &LimitKey, need: &Amounts, now: Instant, max_wait: Duration) -> Admit {
        match self.mode {
            FailMode::Open => key.local().admit(need, now, max_wait),
            FailMode::Closed { retry_after } => Admit::Refused {
                wait: retry_after,
                resource: None,
            },
        }
    }

    fn queue(&self, op: Pending) {
        if self.connected.load(Acquire) {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(op);
        }
    }
}

/// Reads the admit script's answer.
fn decode(answer: &[i64]) -> Option<Admit> {
    let resource = |i: i64| match i {
        1 => Some(Resource::Requests),
        2 => Some(Resource::InputTokens),
        3 => Some(Resource::OutputTokens),
        4 => Some(Resource::Tokens),
        _ => None,
    };
    let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
    match answer {
        [0, wait, ..] => Some(Admit::Taken(micros(*wait))),
        [1, wait, r, ..] => Some(Admit::Refused {
            wait: micros(*wait),
            resource: resource(*r),
        }),
        [2, r, need, limit, ..] => Some(Admit::Oversized {
            resource: resource(*r)?,
            need: u64::try_from(*need).ok()?,
            limit: u64::try_from(*limit).ok()?,
        }),
        _ => None,
    }
}

impl LimitStore for RedisLimitStore {
    fn admit(
        &self,
        key: &Arc<LimitKey>,
        need: &Amounts,
        now: Instant,
        max_wait: Duration,
    ) -> Admission {
        let inner = &self.inner;
        let conn = match inner.conn.get() {
            Some(conn) if inner.connected.load(Acquire) => conn.clone(),
            _ => return Admission::Ready(inner.away(key, need, now, max_wait)),
        };
        let inner = self.inner.clone();
        let key = key.clone();
        let need = *need;
        Admission::Pending(Box::pin(async move {
            let mut conn = conn;
            let mut inv = inner.script.key(&*inner.name(&key));
            inv.arg("a").arg(max_wait.as_secs_f64() * 1000.0);
            Inner::pairs(&mut inv, &key, Resource::ALL.map(|r| need.get(r)));
            inner.admissions.fetch_add(1, Relaxed);
            let answer = timeout(
                inner.config.timeout,
                inv.invoke_async::<Vec<i64>>(&mut conn),
            )
            .await;
            let asked = now;
            let now = Instant::now();
            match answer {
                Ok(Ok(answer)) => match decode(&answer) {
                    Some(Admit::Taken(wait)) => {
                        // Mirrored, so the local buckets know this replica's share if
                        // they must take over.
                        key.local().charge(&need, now);
                        // Redis counted the wait from when the script ran, somewhere
                        // in the round trip; the layer counts from `asked`. Counted
                        // from the answer, the request is never sent early.
                        if wait.is_zero() {
                            Admit::Taken(wait)
                        } else {
                            Admit::Taken(wait + now.saturating_duration_since(asked))
                        }
                    }
                    Some(admit) => admit,
                    None => {
                        inner.lost("response");
                        inner.away(&key, &need, now, max_wait)
                    }
                },
                Ok(Err(e)) => {
                    inner.lost(reason(&e));
                    inner.away(&key, &need, now, max_wait)
                }
                Err(_) => {
                    inner.lost("timeout");
                    inner.away(&key, &need, now, max_wait)
                }
            }
        }))
    }

    fn give_back(&self, key: &Arc<LimitKey>, amounts: &Amounts, now: Instant) {
        key.local().give_back(amounts, now);
        self.inner.queue(Pending::Give(key.clone(), *amounts));
    }

    fn learn(
        &self,
        key: &Arc<LimitKey>,
        resource: Resource,
        limit: Option<u64>,
        remaining: Option<u64>,
        now: Instant,
    ) -> bool {
        let changed = key.local().learn(resource, limit, remaining, now);
        if let Some(remaining) = remaining {
            self.inner
                .queue(Pending::Learn(key.clone(), resource, remaining));
        }
        changed
    }

    fn pause(&self, key: &Arc<LimitKey>, until: Instant, now: Instant) {
        key.local().pause(until, now);
        self.inner.queue(Pending::Pause(
            key.clone(),
            until.saturating_duration_since(now),
        ));
    }
}

/// The background task: connects, flushes what was queued, and checks a lost Redis
/// until it answers again. Ends when the store is dropped.
async fn run(weak: Weak<Inner>) {
    let Some(inner) = weak.upgrade() else { return };
    let config = inner.config.clone();
    drop(inner);
    let mut tick = interval(config.flush_interval.min(config.poll_interval));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_check: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.connected.load(Acquire) {
            flush(&inner).await;
            continue;
        }
        // Away: check every poll interval.
        if last_check.is_some_and(|t| t.elapsed() < config.poll_interval) {
            continue;
        }
        last_check = Some(Instant::now());
        let checked = match inner.conn.get() {
            None => connect(&inner).await.map(|conn| {
                let _ = inner.conn.set(conn);
            }),
            Some(conn) => {
                // The script again: a Redis that restarted has forgotten it.
                let mut conn = conn.clone();
                inner.flushes.fetch_add(1, Relaxed);
                let load = inner.script.load_async(&mut conn);
                match timeout(config.timeout, load).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(reason(&e)),
                    Err(_) => Err("timeout"),
                }
            }
        };
        match checked {
            Ok(()) => inner.resumed(),
            Err(why) => inner.unreached(why),
        }
    }
}

async fn connect(inner: &Inner) -> Result<ConnectionManager, &'static str> {
    let client = redis::Client::open(inner.config.info.clone()).map_err(|_| "connect")?;
    let t = inner.config.timeout;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(t))
        .set_response_timeout(Some(t))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let mut conn = timeout(t, client.get_connection_manager_with_config(manager_config))
        .await
        .map_err(|_| "timeout")?
        .map_err(|e| reason(&e))?;
    inner.flushes.fetch_add(1, Relaxed);
    match timeout(t, inner.script.load_async(&mut conn)).await {
        Ok(Ok(_)) => Ok(conn),
        Ok(Err(e)) => Err(reason(&e)),
        Err(_) => Err("timeout"),
    }
}

/// Sends what was queued since the last flush, one pipeline, settlements of a key
/// added together.
async fn flush(inner: &Inner) {
    let ops = std::mem::take(&mut *inner.pending.lock().unwrap_or_else(PoisonError::into_inner));
    if ops.is_empty() {
        return;
    }
    let Some(conn) = inner.conn.get() else { return };
    let mut gives: Vec<(Arc<LimitKey>, Amounts)> = Vec::new();
    let mut others = Vec::new();
    for op in ops {
        match op {
            Pending::Give(key, amounts) => {
                match gives.iter_mut().find(|(k, _)| Arc::ptr_eq(k, &key)) {
                    Some((_, sum)) => sum.add(&amounts),
                    None => gives.push((key, amounts)),
                }
            }
            other => others.push(other),
        }
    }
    let mut pipe = redis::pipe();
    for (key, amounts) in &gives {
        if amounts.is_zero() {
            continue;
        }
        let mut inv = inner.script.key(&*inner.name(key));
        inv.arg("g");
        Inner::pairs(&mut inv, key, Resource::ALL.map(|r| amounts.get(r)));
        pipe.invoke_script(&inv).ignore();
    }
    for op in &others {
        match op {
            Pending::Learn(key, resource, remaining) => {
                let mut inv = inner.script.key(&*inner.name(key));
                inv.arg("l");
                let said = Resource::ALL.map(|r| {
                    if r == *resource {
                        *remaining as f64
                    } else {
                        -1.0
                    }
                });
                Inner::pairs(&mut inv, key, said);
                pipe.invoke_script(&inv).ignore();
            }
            Pending::Pause(key, delay) => {
                let mut inv = inner.script.key(&*inner.name(key));
                inv.arg("p").arg(millis(*delay));
                Inner::pairs(&mut inv, key, [0.0; 4]);
                pipe.invoke_script(&inv).ignore();
            }
            Pending::Give(..) => {}
        }
    }
    let mut conn = conn.clone();
    inner.flushes.fetch_add(1, Relaxed);
    match timeout(inner.config.timeout, pipe.query_async::<()>(&mut conn)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            // Redis restarted between two calls: load the script for next time; these
            // settlements stay local.
            let _ = timeout(inner.config.timeout, inner.script.load_async(&mut conn)).await;
        }
        Ok(Err(e)) => inner.lost(reason(&e)),
        Err(_) => inner.lost("timeout"),
    }
}
