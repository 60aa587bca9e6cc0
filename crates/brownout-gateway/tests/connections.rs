//! Connection caps on loopback: beyond the cap per client address, or in all, a new
//! connection is answered 503 with `retry-after`; a freed slot is usable again.

mod common;

use std::time::Duration;

use brownout_sim::Script;
use common::{anthropic, client, header, Setup};
use tokio::net::TcpStream;

/// Connections that stay open (and idle) until dropped.
async fn hold(setup: &Setup, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(TcpStream::connect(setup.gateway).await.unwrap());
    }
    held
}

async fn status_of_a_new_connection(setup: &Setup) -> (u16, Option<String>) {
    let request = anthropic(
        &setup.url("/v1/messages"),
        "claude-sonnet-4-5",
        "Hello",
        false,
    );
    // A fresh client: a fresh connection.
    let response = client().request(request).await.unwrap();
    let retry_after = header(&response, "retry-after").map(str::to_owned);
    (response.status().as_u16(), retry_after)
}

/// Waits until the gateway has counted `held` connections: a request on a new one is
/// refused. Accepting runs on the gateway's task, so give it a moment.
async fn until_refused(setup: &Setup) -> (u16, Option<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = status_of_a_new_connection(setup).await;
        if answer.0 == 503 || tokio::time::Instant::now() > deadline {
            return answer;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn beyond_the_cap_per_client_address_a_connection_gets_503_with_retry_after() {
    let setup = Setup::start_with(Script::new().seed(1), "[connections]\nper_client = 3\n").await;
    // Below the cap, answered.
    assert_eq!(status_of_a_new_connection(&setup).await.0, 200);
    let held = hold(&setup, 3).await;
    let (status, retry_after) = until_refused(&setup).await;
    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(
        setup.sim.stats().received,
        1,
        "refused before any upstream call"
    );
    drop(held);
    // The slots free as the held connections close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while status_of_a_new_connection(&setup).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "still refused");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn beyond_the_total_cap_a_connection_gets_503() {
    let setup = Setup::start_with(
        Script::new().seed(1),
        "[connections]\nper_client = 100\ntotal = 2\n",
    )
    .await;
    let _held = hold(&setup, 2).await;
    let (status, retry_after) = until_refused(&setup).await;
    assert_eq!(status, 503);
    assert!(retry_after.is_some());
}
