//! The background task: the only place that waits on Redis.
//!
//! It flushes counted outcomes (one pipeline of `EVALSHA` per flush), publishes the
//! state changes of this replica, takes probe leases (`SET NX PX`), polls the shared
//! states, and applies the pub/sub messages of the other replicas as they arrive (on
//! the RESP3 push channel of the same connection). Every call has the configured
//! timeout; a failed or late call marks the store local-only until one succeeds.

use std::{
    future::Future,
    sync::{atomic::Ordering::*, Arc, Weak},
    time::Duration,
};

use brownout_core::event::Event;
use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    Msg, PushInfo, PushKind,
};
use tokio::{
    sync::mpsc,
    time::{interval, sleep, timeout, Instant, MissedTickBehavior},
};

use crate::{
    breaker::{Op, Remote, Shared, LEASE_ASKED, LEASE_HELD, LEASE_LOST, LEASE_NONE},
    event::RedisEvent,
};

/// Adds a replica's counts to the key's shared window (two buckets of `window` ms on
/// Redis's clock, the older weighted by how much of it is still inside the window)
/// and opens the key for the fleet when the rate is reached.
///
/// KEYS[1] the open key. ARGV: calls, failures, window ms, threshold, minimum calls,
/// open ms, tripped ms, channel, message.
const FLUSH_LUA: &str = r"
local open = KEYS[1]
local calls = tonumber(ARGV[1])
local fails = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = math.floor(now / window)
local cur = open .. ':w:' .. n
local prev = open .. ':w:' .. (n - 1)
redis.call('HINCRBY', cur, 'c', calls)
redis.call('HINCRBY', cur, 'f', fails)
redis.call('PEXPIRE', cur, window * 2)
if fails == 0 or redis.call('EXISTS', open .. ':tripped') == 1 then
  return 0
end
local weight = 1 - (now - n * window) / window
local c = tonumber(redis.call('HGET', cur, 'c') or 0) + weight * tonumber(redis.call('HGET', prev, 'c') or 0)
local f = tonumber(redis.call('HGET', cur, 'f') or 0) + weight * tonumber(redis.call('HGET', prev, 'f') or 0)
if c >= tonumber(ARGV[5]) and f >= tonumber(ARGV[4]) * c then
  redis.call('SET', open, '1', 'PX', ARGV[6])
  redis.call('SET', open .. ':tripped', '1', 'PX', ARGV[7])
  redis.call('DEL', cur, prev)
  redis.call('PUBLISH', ARGV[8], ARGV[9])
  return 1
end
return 0
";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    Unknown,
    Up,
    Down(Instant),
}

struct Worker {
    shared: Weak<Shared>,
    ns: String,
    channel: String,
    script: redis::Script,
    timeout: Duration,
    replica: u64,
    link: Link,
}

pub(crate) fn reason(error: &redis::RedisError) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connection_refusal() {
        "connect"
    } else if error.is_io_error() || error.is_connection_dropped() {
        "io"
    } else {
        "response"
    }
}

/// Runs until the store is dropped.
pub(crate) async fn run(shared: Weak<Shared>, mut rx: mpsc::UnboundedReceiver<Op>) {
    let Some(strong) = shared.upgrade() else {
        return;
    };
    let config = strong.config.clone();
    let replica = strong.replica;
    drop(strong);
    let deployment = &config.deployment;
    let mut worker = Worker {
        shared: shared.clone(),
        ns: format!("brownout:{deployment}:breaker:"),
        channel: format!("brownout:{deployment}:breaker"),
        script: redis::Script::new(FLUSH_LUA),
        timeout: config.timeout,
        replica,
        link: Link::Unknown,
    };
    let mut flush = interval(config.flush_interval);
    flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut poll = interval(config.poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut conn: Option<ConnectionManager> = None;
    loop {
        if conn.is_none() {
            match worker.connect().await {
                Ok(c) => {
                    conn = Some(c);
                    poll.reset_immediately();
                }
                Err(reason) => {
                    worker.down(reason);
                    // Ops are answered locally meanwhile; a lease asked for is not given.
                    tokio::select! {
                        _ = sleep(config.poll_interval) => {}
                        op = rx.recv() => match op {
                            None => return,
                            Some(Op::Lease(remote)) => {
                                let _ = remote.lease.compare_exchange(LEASE_ASKED, LEASE_NONE, AcqRel, Acquire);
                            }
                            Some(Op::Open(remote, _) | Op::Close(remote)) => {
                                remote.unsent.fetch_sub(1, AcqRel);
                            }
                            Some(Op::Poll(_)) => {}
                        },
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        tokio::select! {
            op = rx.recv() => {
                let Some(op) = op else { return };
                worker.op(c, op).await;
            }
            _ = flush.tick() => worker.flush(c).await,
            _ = poll.tick() => worker.poll(c).await,
        }
        if shared.strong_count() == 0 {
            return;
        }
    }
}

impl Worker {
    async fn connect(&mut self) -> Result<ConnectionManager, &'static str> {
        let shared = self.shared.upgrade().ok_or("io")?;
        let client = redis::Client::open(shared.config.info.clone()).map_err(|_| "connect")?;
        let weak = self.shared.clone();
        let replica = self.replica;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500))
            .set_automatic_resubscription()
            .set_push_sender(move |push: PushInfo| {
                on_push(&weak, replica, push);
                Ok::<(), std::convert::Infallible>(())
            });
        drop(shared);
        let mut manager = timeout(
            self.timeout,
            client.get_connection_manager_with_config(manager_config),
        )
        .await
        .map_err(|_| "timeout")?
        .map_err(|e| reason(&e))?;
        let channel = self.channel.clone();
        let subscribed = timeout(self.timeout, manager.subscribe(channel)).await;
        match subscribed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(reason(&e)),
            Err(_) => return Err("timeout"),
        }
        let loaded = timeout(
            self.timeout,
            self.script.prepare_invoke().load_async(&mut manager),
        )
        .await;
        match loaded {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(reason(&e)),
            Err(_) => return Err("timeout"),
        }
        self.up();
        Ok(manager)
    }

    /// A Redis call under the timeout; marks the link up or down.
    async fn call<T>(&mut self, call: impl Future<Output = redis::RedisResult<T>>) -> Option<T> {
        match timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                self.up();
                Some(value)
            }
            Ok(Err(e)) => {
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                    // A restarted Redis forgot the script: load it again for next time.
                    return None;
                }
                self.down(reason(&e));
                None
            }
            Err(_) => {
                self.down("timeout");
                None
            }
        }
    }

    fn up(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        shared.connected.store(true, Release);
        if let Link::Down(since) = self.link {
            shared.config.events.emit(Event::detached(
                "redis",
                RedisEvent::SharedStateResumed {
                    down_for: since.elapsed(),
                },
            ));
            // Opens of this replica that the fleet could not hear of: tell it now.
            let now = Instant::now();
            let now_n = shared.nanos(now);
            for remote in shared.remotes() {
                let until = remote.open_until.load(Acquire);
                if remote.mine.load(Acquire) && until > now_n + 1_000_000 {
                    let left = Duration::from_nanos(until - now_n);
                    shared.publish(Op::Open(remote, left));
                }
            }
        }
        self.link = Link::Up;
    }

    fn down(&mut self, reason: &'static str) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        shared.connected.store(false, Release);
        if matches!(self.link, Link::Up | Link::Unknown) {
            shared.config.events.emit(Event::detached(
                "redis",
                RedisEvent::SharedStateLost { reason },
            ));
            self.link = Link::Down(Instant::now());
        }
    }

    fn key(&self, remote: &Remote) -> String {
        format!("{}{}", self.ns, remote.id)
    }

    async fn op(&mut self, c: &mut ConnectionManager, op: Op) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let lease_ms = millis(shared.config.probe_lease);
        drop(shared);
        match op {
            Op::Open(remote, open_for) => {
                let key = self.key(&remote);
                let open_ms = millis(open_for).max(1);
                let mut pipe = redis::pipe();
                pipe.cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("PX")
                    .arg(open_ms)
                    .ignore()
                    .cmd("SET")
                    .arg(format!("{key}:tripped"))
                    .arg(1)
                    .arg("PX")
                    .arg(open_ms + 3 * lease_ms)
                    .ignore()
                    .cmd("DEL")
                    .arg(format!("{key}:probe"))
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(&self.channel)
                    .arg(format!("o {open_ms} {} {}", self.replica, remote.id))
                    .ignore();
                self.call(pipe.query_async::<()>(c)).await;
                remote.unsent.fetch_sub(1, AcqRel);
            }
            Op::Close(remote) => {
                let key = self.key(&remote);
                let mut pipe = redis::pipe();
                pipe.cmd("DEL")
                    .arg(&key)
                    .arg(format!("{key}:tripped"))
                    .arg(format!("{key}:probe"))
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(&self.channel)
                    .arg(format!("c {} {}", self.replica, remote.id))
                    .ignore();
                self.call(pipe.query_async::<()>(c)).await;
                remote.unsent.fetch_sub(1, AcqRel);
            }
            Op::Lease(remote) => {
                let key = format!("{}:probe", self.key(&remote));
                let mut cmd = redis::cmd("SET");
                cmd.arg(key)
                    .arg(self.replica)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease_ms);
                let won = self.call(cmd.query_async::<Option<String>>(c)).await;
                if matches!(won, Some(Some(_))) {
                    if let Some(shared) = self.shared.upgrade() {
                        remote.lease_at.store(shared.nanos(Instant::now()), Release);
                    }
                }
                let next = match won {
                    Some(Some(_)) => LEASE_HELD,
                    Some(None) => LEASE_LOST,
                    None => LEASE_NONE,
                };
                let _ = remote
                    .lease
                    .compare_exchange(LEASE_ASKED, next, AcqRel, Acquire);
            }
            Op::Poll(remote) => self.poll_keys(c, vec![remote]).await,
        }
    }

    async fn flush(&mut self, c: &mut ConnectionManager) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let config = &shared.config;
        let mut batch = Vec::new();
        for remote in shared.remotes() {
            if remote.calls.load(Relaxed) == 0 {
                continue;
            }
            let calls = remote.calls.swap(0, AcqRel);
            let failures = remote.failures.swap(0, AcqRel).min(calls);
            batch.push((remote, calls, failures));
        }
        if batch.is_empty() {
            return;
        }
        let window = millis(config.window).max(1);
        let open_ms = millis(config.open_duration).max(1);
        let tripped_ms = open_ms + 3 * millis(config.probe_lease);
        let mut pipe = redis::pipe();
        for (remote, calls, failures) in &batch {
            pipe.cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(1)
                .arg(self.key(remote))
                .arg(calls)
                .arg(failures)
                .arg(window)
                .arg(config.threshold)
                .arg(config.minimum_calls)
                .arg(open_ms)
                .arg(tripped_ms)
                .arg(&self.channel)
                .arg(format!("o {open_ms} {} {}", self.replica, remote.id));
        }
        let open_for = config.open_duration;
        drop(shared);
        let result = timeout(self.timeout, pipe.query_async::<Vec<i64>>(c)).await;
        match result {
            Ok(Ok(opened)) => {
                self.up();
                let Some(shared) = self.shared.upgrade() else {
                    return;
                };
                for ((remote, _, _), opened) in batch.iter().zip(opened) {
                    if opened == 1 {
                        shared.apply_open(remote, open_for, true);
                    }
                }
            }
            Ok(Err(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // Redis restarted and forgot the script: load it, count these next time.
                let script = self.script.clone();
                self.call(script.prepare_invoke().load_async(c)).await;
                restore(batch);
            }
            Ok(Err(e)) => {
                self.down(reason(&e));
                restore(batch);
            }
            Err(_) => {
                self.down("timeout");
                restore(batch);
            }
        }
    }

    async fn poll(&mut self, c: &mut ConnectionManager) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let remotes = shared.remotes();
        drop(shared);
        if remotes.is_empty() {
            // Still check that Redis answers, to come back to shared state.
            self.call(redis::cmd("PING").query_async::<()>(c)).await;
            return;
        }
        self.poll_keys(c, remotes).await;
    }

    async fn poll_keys(&mut self, c: &mut ConnectionManager, remotes: Vec<Arc<Remote>>) {
        let started = Instant::now();
        let mut pipe = redis::pipe();
        for remote in &remotes {
            let key = self.key(remote);
            pipe.cmd("PTTL")
                .arg(&key)
                .cmd("EXISTS")
                .arg(format!("{key}:tripped"));
        }
        let Some(values) = self.call(pipe.query_async::<Vec<i64>>(c)).await else {
            return;
        };
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let started_n = shared.nanos(started);
        for (remote, pair) in remotes.iter().zip(values.chunks(2)) {
            let [pttl, tripped] = [pair[0], pair.get(1).copied().unwrap_or(0)];
            // A change this replica made after the poll was sent, or has not written
            // yet, wins over the poll.
            if remote.changed.load(Acquire) >= started_n || remote.unsent.load(Acquire) > 0 {
                continue;
            }
            if pttl > 0 {
                let until = remote.open_until.load(Acquire);
                if until == 0 {
                    shared.apply_open(remote, Duration::from_millis(pttl as u64), true);
                } else {
                    let now = shared.nanos(Instant::now());
                    let target = now.saturating_add(pttl as u64 * 1_000_000).max(1);
                    remote.open_until.store(target, Release);
                }
            } else if tripped == 1 {
                // Half-open for the fleet: the open time passed, no probe closed it yet.
                let now = shared.nanos(Instant::now()).max(1);
                let until = remote.open_until.load(Acquire);
                if until == 0 || until > now {
                    remote.open_until.store(now, Release);
                }
                // Whoever held the probe may be gone: ask again (SET NX says no while
                // its lease lives).
                let _ = remote
                    .lease
                    .compare_exchange(LEASE_LOST, LEASE_NONE, AcqRel, Acquire);
            } else if remote.open_until.load(Acquire) != 0 {
                shared.apply_close(remote);
            }
        }
    }
}

/// Counts that did not reach Redis go with the next flush.
fn restore(batch: Vec<(Arc<Remote>, u32, u32)>) {
    for (remote, calls, failures) in batch {
        remote.calls.fetch_add(calls, Relaxed);
        remote.failures.fetch_add(failures, Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A pub/sub message of another replica: `o {ms} {replica} {id}` or `c {replica} {id}`.
fn on_push(shared: &Weak<Shared>, replica: u64, push: PushInfo) {
    let Some(shared) = shared.upgrade() else {
        return;
    };
    if push.kind == PushKind::Disconnection {
        shared.connected.store(false, Release);
        return;
    }
    if push.kind != PushKind::Message {
        return;
    }
    let Some(msg) = Msg::from_push_info(push) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(msg.get_payload_bytes()) else {
        return;
    };
    let mut parts = text.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("o"), Some(ms), Some(from), Some(id)) => {
            let (Ok(ms), Ok(from)) = (ms.parse::<u64>(), from.parse::<u64>()) else {
                return;
            };
            if from == replica {
                return;
            }
            if let Some(remote) = shared.remote_by_id(id) {
                shared.apply_open(&remote, Duration::from_millis(ms), true);
            }
        }
        (Some("c"), Some(from), Some(id), None) => {
            if from.parse::<u64>() == Ok(replica) {
                return;
            }
            if let Some(remote) = shared.remote_by_id(id) {
                shared.apply_close(&remote);
            }
        }
        _ => {}
    }
}
