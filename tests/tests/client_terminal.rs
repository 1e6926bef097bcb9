//! Terminal outcomes against real reference gateways: KICK (no reconnect), REJECT{AUTH}
//! (`GaveUp` at once), and every gateway gone (`GaveUp` after the configured attempts, with
//! the events in order and unacknowledged messages handed back).

use std::time::Duration;

use switchyard_client::{Error, Event, GaveUp, KickCode, RejectCode, SendError};
use switchyard_tests::client_kit::{GatewayOpts, GatewayProc, fast_client, wait_event};
use switchyard_tests::init_tracing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_is_terminal_and_never_reconnects() {
    init_tracing();
    // Only a proven identity kicks an existing session (an anonymous one joins beside it).
    let a = GatewayProc::start(
        "gw-a",
        &GatewayOpts {
            auth_secret: Some("s3cret".into()),
            ..Default::default()
        },
    )
    .await;
    let token = switchyard_gateway_agent::gateway::HmacAuth::new("s3cret")
        .token("default", "dup-user", switchyard_identity::unix_now() + 600)
        .unwrap();
    let first = fast_client("dup-user")
        .token(token.clone())
        .bootstrap([a.gateway()])
        .build()
        .unwrap();
    let _m1 = first.connect().await.unwrap();
    // The same account logs in elsewhere: the gateway kicks the old session.
    let second = fast_client("dup-user")
        .token(token)
        .bootstrap([a.gateway()])
        .build()
        .unwrap();
    let _m2 = second.connect().await.unwrap();

    let i = wait_event(&first, "kicked", Duration::from_secs(3), |e| {
        matches!(e, Event::Kicked { .. })
    })
    .await;
    match &first.history()[i] {
        Event::Kicked { code, .. } => assert_eq!(*code, KickCode::LoggedInElsewhere),
        e => panic!("{e:?}"),
    }
    // Well past the reconnect spread and backoff: still nothing after the kick.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let h = first.history();
    assert_eq!(h.len(), i + 1, "events after KICK: {:?}", &h[i..]);
    assert!(matches!(
        first.send("x").await,
        Err(SendError::Ended(_, Error::Kicked { .. }))
    ));
    assert_eq!(
        second.gateway().as_deref(),
        Some("gw-a"),
        "the new session stays"
    );
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_reject_gives_up_without_retrying() {
    init_tracing();
    let a = GatewayProc::start(
        "gw-a",
        &GatewayOpts {
            auth_secret: Some("s3cret".into()),
            ..Default::default()
        },
    )
    .await;
    let b = GatewayProc::start(
        "gw-b",
        &GatewayOpts {
            auth_secret: Some("s3cret".into()),
            ..Default::default()
        },
    )
    .await;
    let client = fast_client("auth-1")
        .token("not-the-hmac")
        .bootstrap([a.gateway(), b.gateway()])
        .build()
        .unwrap();
    let err = client.connect().await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::GaveUp(GaveUp::Refused {
                code: RejectCode::Auth,
                ..
            })
        ),
        "{err}"
    );
    let names: Vec<&str> = client.history().iter().map(Event::name).collect();
    assert_eq!(
        names,
        ["connecting", "gave_up"],
        "no second candidate, no retry"
    );
    assert_eq!(
        b.metric("switchyard_gateway_rejects_total")
            .await
            .unwrap_or(0.0),
        0.0,
        "the second gateway was never asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_down_gives_up_after_the_attempt_limit() {
    init_tracing();
    let mut a = GatewayProc::start("gw-a", &GatewayOpts::default()).await;
    let mut b = GatewayProc::start("gw-b", &GatewayOpts::default()).await;
    let client = fast_client("down-1")
        .max_attempts(3)
        .bootstrap([a.gateway(), b.gateway()])
        .build()
        .unwrap();
    let _m = client.connect().await.unwrap();
    b.child.kill();
    a.child.kill();
    // Sent while the link is (or is about to be) gone: must come back as undelivered.
    let receipt = client.send("lost?").await;
    let i = wait_event(&client, "gave up", Duration::from_secs(10), |e| {
        matches!(e, Event::GaveUp { .. })
    })
    .await;
    let h = client.history();
    let names: Vec<&str> = h[..=i].iter().map(Event::name).collect();
    assert_eq!(
        names,
        [
            "connecting",
            "connected",
            "disconnected",
            "reconnecting",
            "connecting",
            "reconnecting",
            "connecting",
            "reconnecting",
            "connecting",
            "gave_up"
        ]
    );
    let attempts: Vec<u32> = h
        .iter()
        .filter_map(|e| match e {
            Event::Reconnecting { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    match receipt {
        Ok(r) => {
            let back = r.await.unwrap_err();
            assert_eq!(&back.payload[..], b"lost?");
            assert!(matches!(back.reason, Error::GaveUp(_)));
        }
        // The link was already known dead and the client gave up within the send timeout.
        Err(SendError::Ended(p, _)) => assert_eq!(&p[..], b"lost?"),
        Err(e) => panic!("{e}"),
    }
    assert!(matches!(
        client.send("after").await,
        Err(SendError::Ended(..))
    ));
    assert_eq!(client.stats().acked, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_elapsed_bounds_retrying_when_nothing_answers() {
    init_tracing();
    // A port nobody listens on: every attempt is refused at once.
    let dead = switchyard_client::Gateway::new(
        "gw-dead",
        format!("127.0.0.1:{}", switchyard_tests::free_port()),
    );
    let client = fast_client("elapsed-1")
        .max_elapsed(Some(Duration::from_secs(1)))
        .bootstrap([dead])
        .build()
        .unwrap();
    let t0 = std::time::Instant::now();
    let err = client.connect().await.unwrap_err();
    let took = t0.elapsed();
    assert!(
        matches!(&err, Error::GaveUp(GaveUp::TimeLimit { .. })),
        "{err}"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "gave up after {took:?}"
    );
    let delays: Vec<Duration> = client
        .history()
        .iter()
        .filter_map(|e| match e {
            Event::Reconnecting { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert!(
        delays.len() >= 2,
        "kept retrying until the limit: {delays:?}"
    );
    assert!(
        delays.iter().all(|d| *d <= Duration::from_millis(400)),
        "full jitter under the 400 ms cap: {delays:?}"
    );
    assert_eq!(client.history().last().map(Event::name), Some("gave_up"));
}
