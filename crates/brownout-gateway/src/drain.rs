//! The graceful stop of the served connections, for [`Gateway::serve`](crate::Gateway::serve).
//!
//! [`Drain::watch`] wraps each connection; [`Drain::shutdown`] asks every watched
//! connection to finish the request it is serving and close (hyper's
//! `graceful_shutdown`), and waits until all of them have ended. This is what
//! hyper-util's `GracefulShutdown` does, made cheaper where it is paid, on every poll
//! of a connection: hyper-util's watcher polls a `watch` channel's `changed()` future
//! each time (a lock and a waker comparison in tokio's `Notify`, about 450
//! instructions a request in the gateway bench's `wiring` row), where a watched
//! connection here reads one flag and compares its task's waker with the one it
//! registered on its first poll (a task's waker does not change), registering again
//! only when it did.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll, Waker},
};

use hyper::{body::Incoming, server::conn::http1, service::HttpService};
use tokio::sync::Notify;

/// Connections that are told to finish and close on [`shutdown`](Drain::shutdown).
#[derive(Default)]
pub(crate) struct Drain {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Set once, by `shutdown`.
    draining: AtomicBool,
    watchers: Mutex<Watchers>,
    /// Notified when the last watched connection ends.
    ended: Notify,
}

#[derive(Default)]
struct Watchers {
    next: u64,
    open: usize,
    /// Each open connection's task, to wake on `shutdown`.
    wakers: HashMap<u64, Waker>,
}

impl Shared {
    fn watchers(&self) -> std::sync::MutexGuard<'_, Watchers> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drain {
    /// `connection`, watched: it is asked to close gracefully on `shutdown`.
    pub(crate) fn watch<C: Graceful>(&self, connection: C) -> Watched<C> {
        let mut watchers = self.shared.watchers();
        let id = watchers.next;
        watchers.next += 1;
        watchers.open += 1;
        drop(watchers);
        Watched {
            connection,
            shared: self.shared.clone(),
            id,
            waker: None,
            asked: false,
        }
    }

    /// The connections open now.
    pub(crate) fn count(&self) -> usize {
        self.shared.watchers().open
    }

    /// Asks every watched connection to finish and close, and waits until all have
    /// ended (a connection watched later is asked on its first poll).
    pub(crate) async fn shutdown(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        let wakers = std::mem::take(&mut self.shared.watchers().wakers);
        for waker in wakers.into_values() {
            waker.wake();
        }
        loop {
            let ended = self.shared.ended.notified();
            tokio::pin!(ended);
            // Registered before the count is read, so that the last connection's
            // notice cannot fall between the two.
            ended.as_mut().enable();
            if self.shared.watchers().open == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// A connection that can be asked to finish the request it serves and then close.
pub(crate) trait Graceful: Future {
    /// Asks it: hyper's `graceful_shutdown`.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::Connection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::Connection::graceful_shutdown(self);
    }
}

pin_project_lite::pin_project! {
    /// A connection of a [`Drain`]: counted until it is dropped.
    pub(crate) struct Watched<C> {
        #[pin]
        connection: C,
        shared: Arc<Shared>,
        id: u64,
        // The waker registered for this connection's task.
        waker: Option<Waker>,
        // Whether the connection was asked to close.
        asked: bool,
    }

    impl<C> PinnedDrop for Watched<C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let mut watchers = this.shared.watchers();
            watchers.wakers.remove(this.id);
            watchers.open -= 1;
            let last = watchers.open == 0;
            drop(watchers);
            if last {
                this.shared.ended.notify_waiters();
            }
        }
    }
}

impl<C: Graceful> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.asked {
            if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                this.shared
                    .watchers()
                    .wakers
                    .insert(*this.id, cx.waker().clone());
                *this.waker = Some(cx.waker().clone());
            }
            // Read after the waker is registered: a `shutdown` that took the wakers
            // before this one was in set the flag first.
            if this.shared.draining.load(Ordering::SeqCst) {
                *this.asked = true;
                this.connection.as_mut().graceful_shutdown();
            }
        }
        this.connection.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A connection that ends once it is asked to close, counting its polls.
    struct Conn {
        asked: bool,
        polls: Arc<AtomicUsize>,
    }

    impl Future for Conn {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.asked {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    impl Graceful for Conn {
        fn graceful_shutdown(mut self: Pin<&mut Self>) {
            self.asked = true;
        }
    }

    #[tokio::test]
    async fn shutdown_wakes_each_idle_connection_and_waits_for_all_to_end() {
        let drain = Drain::default();
        let polls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let conn = drain.watch(Conn {
                    asked: false,
                    polls: polls.clone(),
                });
                tokio::spawn(conn)
            })
            .collect();
        // Each connection polled once, then idle: nothing wakes it but the drain.
        while polls.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(drain.count(), 3);
        drain.shutdown().await;
        assert_eq!(drain.count(), 0);
        for task in tasks {
            assert!(task.is_finished());
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_connection_first_polled_after_shutdown_is_asked_at_once() {
        let drain = Drain::default();
        let conn = drain.watch(Conn {
            asked: false,
            polls: Arc::default(),
        });
        drain.shared.draining.store(true, Ordering::SeqCst);
        conn.await;
        assert_eq!(drain.count(), 0);
        // Nothing left open: shutdown returns at once.
        drain.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_with_no_connection_returns_at_once() {
        Drain::default().shutdown().await;
    }
}
