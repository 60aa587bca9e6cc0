//! The response cache's store: a local tier in front, Redis behind.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering::*},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use brownout_cache::{
    CacheConfig, CacheKey, CacheStore, CachedResponse, LocalCacheStore, StoreFuture,
};
use brownout_core::{error::InvalidConfig, provider::CREDENTIAL_HEADERS};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use redis::aio::ConnectionManager;
use tokio::{
    sync::mpsc,
    time::{interval, sleep, Instant, MissedTickBehavior},
};

use crate::{
    link::{connect, Link},
    RedisConfig,
};

/// The layer name of this store's events.
const LAYER: &str = "redis-cache";

/// Writes waiting for the background task; more are dropped (the local tier has them).
const QUEUE: usize = 1024;

/// Writes sent in one pipeline.
const BATCH: usize = 64;

/// Stores an entry with its lifetime as the key's expiration, indexes it by expiry
/// time, and trims the index (and the entries it names) to the fleet's bound.
///
/// KEYS[1] the entry, KEYS[2] the index. ARGV: the value, its lifetime in ms, the
/// most entries.
const WRITE_LUA: &str = r"
local px = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', px)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + px, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  local old = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #old, 2 do
    redis.call('DEL', old[i])
  end
end
if redis.call('PTTL', KEYS[2]) < px then
  redis.call('PEXPIRE', KEYS[2], px)
end
return over
";

/// The value's format: a version byte, so that a later format is told apart.
const FORMAT: u8 = 1;

/// Response cache entries shared by the replicas of a deployment through Redis, with
/// a local tier in front. Give it to
/// [`CacheConfig::store`](brownout_cache::CacheConfig::store).
///
/// ```no_run
/// use brownout_cache::{CacheConfig, CacheLayer};
/// use brownout_redis::{RedisCacheStore, RedisConfig};
///
/// # async fn run() -> Result<(), brownout_core::error::InvalidConfig> {
/// let cache = CacheConfig::new();
/// let store = RedisCacheStore::new(RedisConfig::new("redis://127.0.0.1:6379", "prod")?, &cache)?;
/// let layer = CacheLayer::new(cache.store(store));
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
///
/// # What is stored, where
///
/// - **Keys**: `brownout:{deployment}:cache:{fingerprint}`, the fingerprint 32 hex
///   digits of a BLAKE3 hash (keyed by the deployment) of the layer's
///   [`CacheKey`], itself a digest of the request and the caller's credential: the
///   per-caller partition is in the key as it is in the local store, and no
///   credential reaches Redis. Replicas of one deployment compute the same key for the
///   same request and caller.
/// - **Values**: the answer's status, version, headers and body, in a small binary
///   form (a version byte first). The providers' credential headers, `set-cookie`,
///   and any header marked sensitive are left out.
/// - **Lifetimes as Redis expirations**: each entry expires after the config's
///   `ttl + stale_window`. Its age is read back from its remaining time (`PTTL`, on
///   Redis's clock, so replicas' clocks need not agree): fresh for the first `ttl`,
///   servable as stale for the `stale_window` after.
/// - **A bound on entries**: a sorted set `brownout:{deployment}:cache:index` of the
///   entries by expiry time. The writer's script (one `EVALSHA` per entry, pipelined)
///   drops the expired and, past the config's
///   [`max_entries`](brownout_cache::CacheConfig::max_entries) for the whole fleet,
///   deletes the entries that expire first. An answer longer than
///   [`max_entry_bytes`](brownout_cache::CacheConfig::max_entry_bytes) is not
///   stored (the layer does not even offer it). Give Redis a `maxmemory` with
///   `maxmemory-policy volatile-ttl` (or `allkeys-lru`, if the Redis holds nothing
///   else) as a last guard on the bytes; every key here has an expiration.
///
/// # Reads and writes
///
/// - A read looks in the local tier (a [`LocalCacheStore`] with the config's bounds)
///   first; a fresh local entry answers without Redis. Otherwise (a miss, or an entry
///   past its ttl) it asks Redis (`GET` and `PTTL`, pipelined, under the
///   [`timeout`](RedisConfig::timeout)) and keeps the younger of the two, copying
///   Redis's into the local tier. So a replica answers from the fleet's last good
///   answer, and a restarted replica from the answers stored before it started.
/// - A write goes to the local tier at once and to a queue; a background task sends
///   the queue in pipelines of up to 64. A key this replica wrote less than a second
///   ago is not written again (a repeated question refreshes the fleet's copy once a
///   second at most, not on every answer). When the queue is full or Redis is away,
///   writes are dropped: the local tier has them.
///
/// # On failure
///
/// Every Redis call has the config's [`timeout`](RedisConfig::timeout). When one
/// fails, the store emits [`RedisEvent::SharedStateLost`](crate::RedisEvent) (layer
/// `"redis-cache"`) and answers from the local tier only, without asking Redis, until
/// the background task's `PING` answers again: then
/// [`SharedStateResumed`](crate::RedisEvent::SharedStateResumed). The task pings every
/// [`poll_interval`](RedisConfig::poll_interval) (500 ms by default), also while Redis
/// answers, so that a replica serving from its local tier learns of an outage too.
/// No request fails because Redis did.
#[derive(Clone)]
pub struct RedisCacheStore {
    shared: Arc<Shared>,
}

struct Shared {
    local: LocalCacheStore,
    link: Link,
    conn: Mutex<Option<ConnectionManager>>,
    config: RedisConfig,
    ns: String,
    index: String,
    fingerprint: [u8; 32],
    ttl: Duration,
    lifetime_ms: u64,
    max_entries: u64,
    max_entry_bytes: usize,
    writes: mpsc::Sender<(CacheKey, Arc<CachedResponse>)>,
    dropped: AtomicU64,
}

impl RedisCacheStore {
    /// A store for a cache layer of `cache` (its lifetimes and bounds: those of the
    /// local tier, and of the entries in Redis) shared through the Redis of `redis`.
    ///
    /// Must be called inside a Tokio runtime: it starts the background task that
    /// writes to Redis, which ends when the last clone of the store is dropped. It
    /// does not wait for Redis: until Redis answers, the store is local.
    pub fn new(redis: RedisConfig, cache: &CacheConfig) -> Result<Self, InvalidConfig> {
        redis.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            InvalidConfig::new("redis", "runtime", "must be created inside a Tokio runtime")
        })?;
        let (ttl, stale) = cache.lifetimes();
        let (max_entries, _, max_entry_bytes) = cache.bounds();
        let lifetime_ms = millis(ttl.saturating_add(stale)).max(1);
        let deployment = redis.deployment.clone();
        let (writes, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            local: LocalCacheStore::new(cache),
            link: Link::new(redis.events.clone(), LAYER),
            conn: Mutex::new(None),
            ns: format!("brownout:{deployment}:cache:"),
            index: format!("brownout:{deployment}:cache:index"),
            fingerprint: blake3::derive_key("brownout-redis cache key v1", deployment.as_bytes()),
            config: redis,
            ttl,
            lifetime_ms,
            max_entries: max_entries.max(1),
            max_entry_bytes,
            writes,
            dropped: AtomicU64::new(0),
        });
        runtime.spawn(run(Arc::downgrade(&shared), rx));
        Ok(RedisCacheStore { shared })
    }

    /// Whether Redis answered the store's last call: `false` while the store is local
    /// only.
    pub fn is_shared(&self) -> bool {
        self.shared.link.is_up()
    }

    /// The Redis key of an entry: `brownout:{deployment}:cache:{fingerprint}`.
    pub fn redis_key(&self, key: &CacheKey) -> String {
        self.shared.key(key)
    }

    /// How many writes were dropped because the queue was full.
    pub fn dropped_writes(&self) -> u64 {
        self.shared.dropped.load(Relaxed)
    }
}

impl Shared {
    fn key(&self, key: &CacheKey) -> String {
        let hash = blake3::keyed_hash(&self.fingerprint, key);
        let mut out = String::with_capacity(self.ns.len() + 32);
        out.push_str(&self.ns);
        for byte in &hash.as_bytes()[..16] {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 15)]));
        }
        out
    }

    fn connection(&self) -> Option<ConnectionManager> {
        if !self.link.is_up() {
            return None;
        }
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        let local = self.local.get(key).await;
        if local
            .as_ref()
            .is_some_and(|e| e.stored_at().elapsed() < self.ttl)
        {
            return local;
        }
        let Some(mut conn) = self.connection() else {
            return local;
        };
        let mut pipe = redis::pipe();
        let name = self.key(key);
        pipe.cmd("GET").arg(&name).cmd("PTTL").arg(&name);
        let asked = Instant::now();
        let answer = self
            .link
            .call(
                self.config.timeout,
                pipe.query_async::<(Option<Vec<u8>>, i64)>(&mut conn),
            )
            .await;
        let Some((Some(value), pttl)) = answer else {
            return local;
        };
        let Some(remote) = decode(&value, pttl, asked) else {
            return local;
        };
        if local
            .as_ref()
            .is_some_and(|l| l.stored_at() >= remote.stored_at())
        {
            return local;
        }
        let remote = Arc::new(remote);
        self.local.insert_arc(*key, remote.clone()).await;
        Some(remote)
    }

    async fn insert(&self, key: CacheKey, entry: CachedResponse) {
        let entry = Arc::new(entry);
        let previous = self.local.get(&key).await;
        self.local.insert_arc(key, entry.clone()).await;
        if entry.body().len() > self.max_entry_bytes {
            return;
        }
        // A key written lately by this replica is not written again: its copy in Redis
        // is at most a second older than this one.
        if previous.is_some_and(|p| p.stored_at().elapsed() < Duration::from_secs(1)) {
            return;
        }
        if !self.link.is_up() {
            return;
        }
        if self.writes.try_send((key, entry)).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for RedisCacheStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheStore")
            .field("redis", &self.shared.config)
            .field("local", &self.shared.local)
            .field("shared", &self.is_shared())
            .finish()
    }
}

impl CacheStore for RedisCacheStore {
    fn get<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<Arc<CachedResponse>>> {
        Box::pin(self.shared.get(key))
    }

    fn insert(&self, key: CacheKey, entry: CachedResponse) -> StoreFuture<'_, ()> {
        Box::pin(self.shared.insert(key, entry))
    }

    /// The local tier's entries and bytes.
    fn usage(&self) -> StoreFuture<'_, (u64, u64)> {
        Box::pin(self.shared.local.usage())
    }
}

/// The background task: connects, writes the queue in pipelines, and pings to come
/// back to shared state. Runs until the store is dropped.
async fn run(
    shared: std::sync::Weak<Shared>,
    mut rx: mpsc::Receiver<(CacheKey, Arc<CachedResponse>)>,
) {
    let Some(strong) = shared.upgrade() else {
        return;
    };
    let config = strong.config.clone();
    drop(strong);
    let script = redis::Script::new(WRITE_LUA);
    let mut ping = interval(config.poll_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut conn: Option<ConnectionManager> = None;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if conn.is_none() {
            match connect(&config).await {
                Ok(mut c) => {
                    let loaded = strong
                        .link
                        .call(config.timeout, script.prepare_invoke().load_async(&mut c))
                        .await;
                    if loaded.is_some() {
                        *strong.conn.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(c.clone());
                        conn = Some(c);
                    }
                }
                Err(reason) => strong.link.down(reason),
            }
            if conn.is_none() {
                drop(strong);
                // Writes meanwhile are dropped: the local tier has them.
                tokio::select! {
                    _ = sleep(config.poll_interval) => {}
                    write = rx.recv() => if write.is_none() { return },
                }
                continue;
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        drop(strong);
        tokio::select! {
            write = rx.recv() => {
                let Some(write) = write else { return };
                let mut batch = vec![write];
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(write) => batch.push(write),
                        Err(_) => break,
                    }
                }
                let Some(strong) = shared.upgrade() else { return };
                if strong.link.is_up() {
                    write_batch(&strong, &script, c, batch).await;
                }
            }
            _ = ping.tick() => {
                // Also while up: a replica answering from its local tier may not ask
                // Redis for a long time, and should still know it is away.
                let Some(strong) = shared.upgrade() else { return };
                let was_up = strong.link.is_up();
                let pinged = strong
                    .link
                    .call(config.timeout, redis::cmd("PING").query_async::<()>(c))
                    .await;
                if pinged.is_some() && !was_up {
                    // A restarted Redis has forgotten the script.
                    let _ = strong
                        .link
                        .call(config.timeout, script.prepare_invoke().load_async(c))
                        .await;
                }
            }
        }
    }
}

async fn write_batch(
    shared: &Shared,
    script: &redis::Script,
    c: &mut ConnectionManager,
    mut batch: Vec<(CacheKey, Arc<CachedResponse>)>,
) {
    // The last write of a key wins.
    batch.reverse();
    let mut seen = std::collections::HashSet::new();
    batch.retain(|(key, _)| seen.insert(*key));
    let mut pipe = redis::pipe();
    for (key, entry) in &batch {
        let lived = millis(entry.stored_at().elapsed());
        let left = shared.lifetime_ms.saturating_sub(lived);
        if left == 0 {
            continue;
        }
        pipe.cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(2)
            .arg(shared.key(key))
            .arg(&shared.index)
            .arg(encode(entry, shared.lifetime_ms))
            .arg(left)
            .arg(shared.max_entries)
            .ignore();
    }
    for attempt in 0..2 {
        let result = tokio::time::timeout(shared.config.timeout, pipe.query_async::<()>(c)).await;
        match result {
            Ok(Ok(())) => return shared.link.up(),
            Ok(Err(e))
                if attempt == 0
                    && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // A restarted Redis forgot the script: load it and send the batch again.
                let loaded = shared
                    .link
                    .call(shared.config.timeout, script.prepare_invoke().load_async(c))
                    .await;
                if loaded.is_none() {
                    return;
                }
            }
            Ok(Err(e)) => return shared.link.down(crate::worker::reason(&e)),
            Err(_) => return shared.link.down("timeout"),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether a response header may go to Redis: never a credential or a cookie.
fn storable(name: &HeaderName, value: &HeaderValue) -> bool {
    !value.is_sensitive() && *name != header::SET_COOKIE && !CREDENTIAL_HEADERS.contains(name)
}

/// `FORMAT`, the lifetime it was written with (ms, u64), status (u16), version (u8),
/// the header count (u16), each header as name length (u16), name, value length
/// (u32), value; then the body. Big-endian.
fn encode(entry: &CachedResponse, lifetime_ms: u64) -> Vec<u8> {
    let headers: Vec<_> = entry
        .headers()
        .iter()
        .filter(|(n, v)| storable(n, v))
        .take(usize::from(u16::MAX))
        .collect();
    let size = 16
        + headers
            .iter()
            .map(|(n, v)| 6 + n.as_str().len() + v.len())
            .sum::<usize>()
        + entry.body().len();
    let mut out = Vec::with_capacity(size);
    out.push(FORMAT);
    out.extend_from_slice(&lifetime_ms.to_be_bytes());
    out.extend_from_slice(&entry.status().as_u16().to_be_bytes());
    out.push(version_byte(entry.version()));
    out.extend_from_slice(&(headers.len() as u16).to_be_bytes());
    for (name, value) in headers {
        let name = name.as_str().as_bytes();
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(entry.body());
    out
}

/// An entry read back from `value`, whose key had `pttl` ms left when asked at
/// `asked`; `None` for a value this version cannot read, or no expiration.
fn decode(value: &[u8], pttl: i64, asked: Instant) -> Option<CachedResponse> {
    let mut r = Reader(value);
    if r.take(1)?[0] != FORMAT {
        return None;
    }
    let lifetime = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let status = StatusCode::from_u16(u16::from_be_bytes(r.take(2)?.try_into().ok()?)).ok()?;
    let version = byte_version(r.take(1)?[0])?;
    let count = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
    let mut headers = HeaderMap::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
        let name = HeaderName::from_bytes(r.take(usize::from(len))?).ok()?;
        let len = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
        let value = HeaderValue::from_bytes(r.take(usize::try_from(len).ok()?)?).ok()?;
        headers.append(name, value);
    }
    let body = Bytes::copy_from_slice(r.0);
    let left = u64::try_from(pttl).ok().filter(|&ms| ms > 0)?;
    let age = Duration::from_millis(lifetime.saturating_sub(left));
    let stored_at = asked.checked_sub(age)?;
    Some(CachedResponse::new(
        status, version, headers, body, stored_at,
    ))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
}

fn version_byte(version: Version) -> u8 {
    match version {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => 2,
    }
}

fn byte_version(byte: u8) -> Option<Version> {
    Some(match byte {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_11,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> CachedResponse {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.append("x-extra", HeaderValue::from_static("one"));
        headers.append("x-extra", HeaderValue::from_static("two"));
        headers.insert(
            header::SET_COOKIE,
            HeaderValue::from_static("session=secret"),
        );
        headers.insert("x-api-key", HeaderValue::from_static("sk-ant-secret"));
        let mut marked = HeaderValue::from_static("Bearer sk-secret");
        marked.set_sensitive(true);
        headers.insert("x-echo", marked);
        CachedResponse::new(
            StatusCode::CREATED,
            Version::HTTP_2,
            headers,
            Bytes::from_static(b"{\"text\":\"Paris.\"}"),
            Instant::now(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_reads_back_as_written_without_credentials() {
        let written = entry();
        let value = encode(&written, 60_000);
        let text = String::from_utf8_lossy(&value);
        assert!(!text.contains("secret"), "{text}");
        tokio::time::advance(Duration::from_secs(100)).await;
        let asked = Instant::now();
        // 15 s of its 60 s are gone.
        let read = decode(&value, 45_000, asked).unwrap();
        assert_eq!(read.status(), StatusCode::CREATED);
        assert_eq!(read.version(), Version::HTTP_2);
        assert_eq!(read.body(), written.body());
        assert_eq!(asked - read.stored_at(), Duration::from_secs(15));
        let extra: Vec<_> = read.headers().get_all("x-extra").iter().collect();
        assert_eq!(extra, ["one", "two"]);
        assert_eq!(read.headers()["content-type"], "application/json");
        for gone in ["set-cookie", "x-api-key", "x-echo"] {
            assert!(read.headers().get(gone).is_none(), "{gone} was stored");
        }
    }

    #[test]
    fn a_value_it_cannot_read_is_no_entry() {
        let value = encode(&entry(), 60_000);
        let now = Instant::now();
        assert!(decode(&value, -2, now).is_none(), "no expiration: not ours");
        assert!(
            decode(&value[..20], 1000, now).is_none(),
            "cut in its headers"
        );
        assert!(decode(&value[..10], 1000, now).is_none());
        let mut other = value.clone();
        other[0] = 9;
        assert!(decode(&other, 1000, now).is_none());
        assert!(decode(b"", 1000, now).is_none());
    }
}
