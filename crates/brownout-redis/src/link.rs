//! Whether a store's Redis answers, with the events of its changes.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering::*},
        Mutex, PoisonError,
    },
    time::Duration,
};

use brownout_core::event::{Event, Events};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::{timeout, Instant};

use crate::{event::RedisEvent, worker::reason, RedisConfig};

#[derive(Clone, Copy)]
enum State {
    Unknown,
    Up,
    Down(Instant),
}

/// A store's view of its Redis: up or down, and since when. Emits
/// [`RedisEvent::SharedStateLost`] on the first failure and
/// [`RedisEvent::SharedStateResumed`] on the first success after it, under the store's
/// layer name.
pub(crate) struct Link {
    connected: AtomicBool,
    state: Mutex<State>,
    events: Events,
    layer: &'static str,
}

impl Link {
    pub(crate) fn new(events: Events, layer: &'static str) -> Self {
        Link {
            connected: AtomicBool::new(false),
            state: Mutex::new(State::Unknown),
            events,
            layer,
        }
    }

    /// Whether the last call answered.
    pub(crate) fn is_up(&self) -> bool {
        self.connected.load(Acquire)
    }

    pub(crate) fn up(&self) {
        if self.connected.swap(true, AcqRel) {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let State::Down(since) = *state {
            self.events.emit(Event::detached(
                self.layer,
                RedisEvent::SharedStateResumed {
                    down_for: since.elapsed(),
                },
            ));
        }
        *state = State::Up;
    }

    pub(crate) fn down(&self, reason: &'static str) {
        self.connected.store(false, Release);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*state, State::Up | State::Unknown) {
            self.events.emit(Event::detached(
                self.layer,
                RedisEvent::SharedStateLost { reason },
            ));
            *state = State::Down(Instant::now());
        }
    }

    /// Runs one Redis call under `limit`; marks the link up or down by its result.
    pub(crate) async fn call<T>(
        &self,
        limit: Duration,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match timeout(limit, call).await {
            Ok(Ok(value)) => {
                self.up();
                Some(value)
            }
            Ok(Err(e)) => {
                self.down(reason(&e));
                None
            }
            Err(_) => {
                self.down("timeout");
                None
            }
        }
    }
}

/// A connection manager to the Redis of `config`, every call bounded by its timeout.
pub(crate) async fn connect(config: &RedisConfig) -> Result<ConnectionManager, &'static str> {
    let client = redis::Client::open(config.info.clone()).map_err(|_| "connect")?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.timeout))
        .set_response_timeout(Some(config.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    timeout(
        config.timeout,
        client.get_connection_manager_with_config(manager_config),
    )
    .await
    .map_err(|_| "timeout")?
    .map_err(|e| reason(&e))
}
