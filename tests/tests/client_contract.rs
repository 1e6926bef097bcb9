//! What the client library promises an app, checked on the wire against a scripted gateway
//! peer: an app that never reads (or reads slowly) cannot freeze the client or make it
//! acknowledge what the app has not been handed; `send()` behaves as documented in every
//! phase; `close()` hands back what was not acknowledged even after the client ended by
//! itself or its task crashed; `REJECT.retry_after_ms` is honoured; `connect()` ends at the
//! login deadline naming what it tried; oversized payloads are refused at `send()`; the
//! token provider is called once per round.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use switchyard_client::{Error, Event, GaveUp, RejectCode, SendError, Setback, Undelivered};
use switchyard_tests::client_kit::{fast_client, wait_connected, wait_event};
use switchyard_tests::scripted::{Answer, ScriptedGateway};
use switchyard_tests::{eventually, init_tracing};
use tokio::time::Instant;

const WELCOME: Answer = Answer::Welcome {
    heartbeat_interval_ms: 0,
    idle_timeout_ms: 0,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_never_reads_cannot_freeze_the_client() {
    init_tracing();
    let peer = ScriptedGateway::start(WELCOME, false).await;
    let client = fast_client("never-reads")
        .bootstrap([peer.gateway("gw-s")])
        .inbound_buffer(4)
        .send_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let _messages = client.connect().await.unwrap(); // bound, never read
    for i in 0..20 {
        peer.push(format!("down-{i}"));
    }
    wait_event(&client, "inbound_full", Duration::from_secs(3), |e| {
        matches!(e, Event::InboundFull { buffered: 4 })
    })
    .await;
    // The link lives on: PINGs keep flowing for several heartbeat intervals (400 ms)...
    let paused = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(peer.pings_since(paused) >= 2, "heartbeats stopped");
    assert_eq!(
        client.gateway().as_deref(),
        Some("gw-s"),
        "{:?}",
        client.history()
    );
    // ...only what the app could see was acknowledged...
    assert!(
        peer.max_ack() <= 4,
        "acked {} with 4 buffered",
        peer.max_ack()
    );
    // ...send() still queues, and close() returns promptly with what is unacknowledged.
    let t = Instant::now();
    let receipt = client.send("up-1").await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "send took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let back = tokio::time::timeout(Duration::from_secs(3), client.close())
        .await
        .expect("close() returned");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "close took {:?}",
        t.elapsed()
    );
    assert_eq!(back, ["up-1"]);
    assert!(matches!(
        receipt.await,
        Err(Undelivered {
            reason: Error::Closed,
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_everything_in_order_and_acks_follow_its_reads() {
    init_tracing();
    let peer = ScriptedGateway::start(WELCOME, true).await;
    let client = fast_client("slow-reader")
        .bootstrap([peer.gateway("gw-s")])
        .inbound_buffer(4)
        .build()
        .unwrap();
    let mut messages = client.connect().await.unwrap();
    const N: usize = 30;
    for i in 0..N {
        peer.push(format!("m{i:02}"));
    }
    for k in 1..=N {
        let m = tokio::time::timeout(Duration::from_secs(5), messages.recv())
            .await
            .expect("message in time")
            .expect("stream open");
        assert_eq!(m, format!("m{:02}", k - 1), "in order");
        // Delivered = read + buffered: an ACK never runs ahead of what the app could see.
        assert!(
            peer.max_ack() <= (k + 4) as u64,
            "ack {} after {k} reads",
            peer.max_ack()
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    eventually(
        Duration::from_secs(3),
        "every message acknowledged",
        || async { (peer.max_ack() == N as u64).then_some(()) },
    )
    .await;
    assert_eq!(client.stats().received, N as u64);
    // Upstream keeps working through all of it.
    client.send("up").await.unwrap().await.unwrap();
    // An app that drops its stream: what arrives is discarded, never acknowledged.
    drop(messages);
    peer.push("after-drop");
    eventually(Duration::from_secs(3), "discarded", || async {
        (client.stats().discarded == 1).then_some(())
    })
    .await;
    assert_eq!(peer.max_ack(), N as u64);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_waits_in_every_phase_without_a_link_and_fails_fast_once_ended() {
    init_tracing();
    let peer = ScriptedGateway::start(WELCOME, true).await;
    let client = fast_client("phases")
        .bootstrap([peer.gateway("gw-s")])
        .reconnect_spread(Duration::from_millis(600))
        .send_timeout(Duration::from_secs(4))
        .build()
        .unwrap();
    // Before connect(): send() waits for the link, then goes through.
    let early = tokio::spawn({
        let c = client.clone();
        async move { c.send("before-connect").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!early.is_finished(), "send() before connect() must wait");
    let _m = client.connect().await.unwrap();
    early.await.unwrap().unwrap().await.unwrap();
    // Connected: queued at once and acknowledged.
    client.send("connected").await.unwrap().await.unwrap();
    // Link lost, no gateway answers yet: gateway() is None from `Disconnected` on, and
    // send() waits for the next link instead of queueing at once.
    peer.answer(Answer::Silent);
    peer.drop_all();
    let i = wait_event(&client, "disconnected", Duration::from_secs(3), |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    assert_eq!(client.gateway(), None);
    let between = tokio::spawn({
        let c = client.clone();
        async move { c.send("between-links").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!between.is_finished(), "send() between links must wait");
    peer.answer(WELCOME);
    let receipt = between.await.unwrap().unwrap();
    assert!(
        client
            .history()
            .iter()
            .skip(i)
            .any(|e| matches!(e, Event::Connected { .. })),
        "send() returned before the next link: {:?}",
        client.history()
    );
    receipt.await.unwrap();
    assert_eq!(
        wait_connected(&client, None, Duration::from_secs(1)).await,
        "gw-s"
    );
    // Ended: refused at once, payload handed back.
    client.close().await;
    let t = Instant::now();
    match client.send("after-close").await {
        Err(SendError::Ended(p, Error::Closed)) => assert_eq!(p, "after-close"),
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_payload_is_refused_at_send_and_the_link_stays() {
    init_tracing();
    let peer = ScriptedGateway::start(WELCOME, true).await;
    let client = fast_client("big")
        .bootstrap([peer.gateway("gw-s")])
        .max_frame(1024)
        .build()
        .unwrap();
    let _m = client.connect().await.unwrap();
    match client.send(vec![0u8; 1024]).await {
        Err(SendError::TooLarge(p, max)) => {
            assert_eq!(p.len(), 1024);
            assert_eq!(max, 1024 - 9);
        }
        other => panic!("{other:?}"),
    }
    client.send(vec![1u8; 1015]).await.unwrap().await.unwrap();
    assert_eq!(peer.hellos().len(), 1, "no reconnect");
    assert_eq!(client.stats().queued, 1);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_after_a_kick_or_giving_up_still_hands_back_the_unacknowledged() {
    init_tracing();
    let peer = ScriptedGateway::start(WELCOME, false).await;
    let client = fast_client("kicked")
        .bootstrap([peer.gateway("gw-s")])
        .build()
        .unwrap();
    let _m = client.connect().await.unwrap();
    for p in ["a", "b", "c"] {
        drop(client.send(p).await.unwrap());
    }
    eventually(Duration::from_secs(2), "frames written", || async {
        (peer.data().len() == 3).then_some(())
    })
    .await;
    peer.kick();
    wait_event(&client, "kicked", Duration::from_secs(3), |e| {
        matches!(e, Event::Kicked { .. })
    })
    .await;
    assert_eq!(client.close().await, ["a", "b", "c"]);
    assert!(client.close().await.is_empty(), "handed back once");

    // Giving up: the only gateway goes away for good.
    let peer = ScriptedGateway::start(WELCOME, false).await;
    let client = fast_client("gives-up")
        .bootstrap([peer.gateway("gw-s")])
        .max_attempts(1)
        .build()
        .unwrap();
    let _m = client.connect().await.unwrap();
    drop(client.send("d").await.unwrap());
    eventually(Duration::from_secs(2), "frame written", || async {
        (peer.data().len() == 1).then_some(())
    })
    .await;
    drop(peer);
    wait_event(&client, "gave_up", Duration::from_secs(5), |e| {
        matches!(e, Event::GaveUp { .. })
    })
    .await;
    assert_eq!(client.close().await, ["d"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_driver_still_hands_every_message_back() {
    init_tracing();
    let peer = ScriptedGateway::start(WELCOME, false).await;
    let calls = Arc::new(AtomicU32::new(0));
    let client = fast_client("crash")
        .bootstrap([peer.gateway("gw-s")])
        .token_provider({
            let calls = calls.clone();
            move || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    assert!(n == 0, "a bug in the app's token provider");
                    Ok::<_, String>("t".into())
                }
            }
        })
        .build()
        .unwrap();
    let _m = client.connect().await.unwrap();
    let receipt = client.send("kept").await.unwrap();
    eventually(Duration::from_secs(2), "frame written", || async {
        (peer.data().len() == 1).then_some(())
    })
    .await;
    client.network_changed(None); // reconnect: the token provider panics inside the driver
    match tokio::time::timeout(Duration::from_secs(3), receipt).await {
        Ok(Err(Undelivered {
            payload,
            reason: Error::Crashed(_),
        })) => assert_eq!(payload, "kept"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.send("x").await,
        Err(SendError::Ended(_, Error::Crashed(_)))
    ));
    assert_eq!(client.close().await, ["kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_from_a_reject_is_honoured() {
    init_tracing();
    let peer = ScriptedGateway::start(Answer::Reject(RejectCode::Overloaded, 1500), false).await;
    let client = fast_client("busy")
        .bootstrap([peer.gateway("gw-s")])
        .max_attempts(2)
        .build()
        .unwrap();
    let err = client.connect().await.unwrap_err();
    assert!(
        matches!(err, Error::GaveUp(GaveUp::AttemptLimit { attempts: 2, .. })),
        "{err}"
    );
    let hellos = peer.hellos();
    assert_eq!(hellos.len(), 2);
    let gap = hellos[1] - hellos[0];
    // The backoff alone would be at most 100 ms here.
    assert!(
        gap >= Duration::from_millis(1500),
        "came back after {gap:?}"
    );
    let delay = client.history().iter().find_map(|e| match e {
        Event::Reconnecting { delay, .. } => Some(*delay),
        _ => None,
    });
    assert_eq!(delay, Some(Duration::from_millis(1500)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_ends_at_the_login_deadline_naming_what_it_tried() {
    init_tracing();
    let silent = ScriptedGateway::start(Answer::Silent, false).await;
    let client = fast_client("deadline")
        .bootstrap([silent.gateway("gw-silent")])
        .connect_timeout(Duration::from_secs(10))
        .login_timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let t = Instant::now();
    let err = client.connect().await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    match err {
        Error::GaveUp(GaveUp::LoginDeadline {
            after,
            attempts: 1,
            trying,
            ..
        }) => {
            assert_eq!(after, Duration::from_millis(800));
            assert_eq!(trying, ["gw-silent"]);
        }
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_provider_is_called_once_per_round() {
    init_tracing();
    let counting = |calls: &Arc<AtomicU32>| {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, String>("t".into()) }
        }
    };
    // With routers the token is the Route bearer, so every round needs it, even one that
    // ends with nothing to try.
    let calls = Arc::new(AtomicU32::new(0));
    let client = fast_client("nowhere")
        .routers(["http://127.0.0.1:9"])
        .token_provider(counting(&calls))
        .max_attempts(2)
        .build()
        .unwrap();
    match client.connect().await.unwrap_err() {
        Error::GaveUp(GaveUp::AttemptLimit {
            last: Setback::NoCandidates { detail },
            ..
        }) => assert!(detail.contains("no router answered"), "{detail}"),
        other => panic!("{other}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Without routers it is fetched for the HELLO only; the fallback after a router that
    // did not answer reuses the round's token.
    let peer = ScriptedGateway::start(WELCOME, false).await;
    for routers in [&[][..], &["http://127.0.0.1:9"][..]] {
        let calls = Arc::new(AtomicU32::new(0));
        let client = fast_client("fallback")
            .routers(routers.iter().copied())
            .bootstrap([peer.gateway("gw-s")])
            .token_provider(counting(&calls))
            .build()
            .unwrap();
        let _m = client.connect().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "routers {routers:?}");
        client.close().await;
    }
    assert_eq!(peer.hello_tokens(), ["t", "t"]);
}
