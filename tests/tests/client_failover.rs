//! Client failover against real reference gateways as separate processes: a killed gateway,
//! a frozen one (only the app heartbeat can tell), messages in flight around a failover,
//! `network_changed()`, and a drain with GOAWAY.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard_client::{DisconnectCause, Event, Setback};
use switchyard_tests::client_kit::{
    GatewayOpts, GatewayProc, fast_client, wait_connected, wait_event,
};
use switchyard_tests::{eventually, init_tracing};

async fn two_gateways() -> (GatewayProc, GatewayProc) {
    let opts = GatewayOpts::default();
    (
        GatewayProc::start("gw-a", &opts).await,
        GatewayProc::start("gw-b", &opts).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_gateway_moves_the_client_to_another() {
    init_tracing();
    let (mut a, b) = two_gateways().await;
    let client = fast_client("kill-1")
        .bootstrap([a.gateway(), b.gateway()])
        .build()
        .unwrap();
    let _messages = client.connect().await.unwrap();
    assert_eq!(
        client.gateway().as_deref(),
        Some("gw-a"),
        "first in the list"
    );

    let t0 = Instant::now();
    a.child.kill();
    let now_on = wait_connected(&client, Some("gw-a"), Duration::from_secs(10)).await;
    let took = t0.elapsed();
    eprintln!("failover after SIGKILL took {took:?}");
    assert_eq!(now_on, "gw-b");
    // Reset seen at once; the rest is the 0-100 ms spread plus a loopback login.
    assert!(took < Duration::from_secs(2), "failover took {took:?}");

    let h = client.history();
    let names: Vec<&str> = h.iter().map(Event::name).collect();
    assert_eq!(
        names,
        [
            "connecting",
            "connected",
            "disconnected",
            "reconnecting",
            "connecting",
            "connected"
        ]
    );
    // One crash, one cause: a killed gateway is a closed link whatever the timing (EOF or
    // reset).
    assert!(
        matches!(
            &h[2],
            Event::Disconnected {
                cause: DisconnectCause::LinkClosed { .. },
                ..
            }
        ),
        "{:?}",
        h[2]
    );
    match &h[3] {
        Event::Reconnecting {
            attempt,
            delay,
            after,
        } => {
            assert_eq!(*attempt, 1);
            assert!(matches!(
                after,
                Setback::Lost(DisconnectCause::LinkClosed { .. })
            ));
            assert!(
                *delay <= Duration::from_millis(100),
                "first retry within the spread"
            );
        }
        e => panic!("{e:?}"),
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_gateway_is_detected_by_the_heartbeat_and_left() {
    init_tracing();
    let (a, b) = two_gateways().await;
    // 400 ms interval + 400 ms timeout (fast_client).
    let client = fast_client("stop-1")
        .bootstrap([a.gateway(), b.gateway()])
        .build()
        .unwrap();
    let _messages = client.connect().await.unwrap();
    assert_eq!(client.gateway().as_deref(), Some("gw-a"));

    // SIGSTOP: the kernel keeps the socket open and ACKs at TCP level; only PING/PONG tells.
    a.child.signal("STOP");
    let t0 = Instant::now();
    let i = wait_event(&client, "heartbeat timeout", Duration::from_secs(5), |e| {
        matches!(
            e,
            Event::Disconnected {
                cause: DisconnectCause::HeartbeatTimeout { .. },
                ..
            }
        )
    })
    .await;
    let detected = t0.elapsed();
    eprintln!("frozen gateway detected after {detected:?} (bound: interval + timeout = 800 ms)");
    // Worst case: the link went write-idle just before the freeze; plus polling and
    // scheduling slack on a loaded 2-core machine.
    assert!(
        detected <= Duration::from_millis(800 + 500),
        "detected after {detected:?}"
    );
    assert_eq!(
        client.history()[..i]
            .iter()
            .filter(|e| e.name() == "disconnected")
            .count(),
        0
    );
    let on = wait_connected(&client, Some("gw-a"), Duration::from_secs(5)).await;
    assert_eq!(on, "gw-b");
    a.child.signal("CONT");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_around_a_failover_are_acked_in_order_or_handed_back() {
    init_tracing();
    let (mut a, b) = two_gateways().await;
    let client = fast_client("msgs-1")
        .bootstrap([a.gateway(), b.gateway()])
        .build()
        .unwrap();
    let mut messages = client.connect().await.unwrap();

    // Echoes come back through the gateway's application hook: each one is the gateway
    // end's count of a frame it took.
    let echoes = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), messages.recv()).await
        {
            got.push(m);
        }
        got
    });

    const N: usize = 300;
    let mut receipts = Vec::with_capacity(N);
    for i in 0..N {
        if i == N / 2 {
            a.child.kill();
        }
        let r = client
            .send(Bytes::from(format!("m{i:04}")))
            .await
            .unwrap_or_else(|e| panic!("send {i}: {e}"));
        receipts.push(r);
        // A burst right before the kill leaves frames in flight without an ACK.
        if !(N / 2 - 40..N / 2).contains(&i) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut acked = 0;
    let mut handed_back = 0;
    let mut seqs = Vec::new();
    for r in receipts {
        seqs.push(r.seq());
        match tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("receipt resolves")
        {
            Ok(()) => acked += 1,
            Err(_) => handed_back += 1,
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "numbered in order"
    );
    assert_eq!(acked + handed_back, N, "none missing");
    assert_eq!(
        handed_back, 0,
        "the failover succeeded, so every message was acknowledged"
    );
    assert_eq!(client.gateway().as_deref(), Some("gw-b"));

    let got = echoes.await.unwrap();
    let stats = client.stats();
    eprintln!(
        "sent {N}, acked {acked}, echoes {}, stats {stats:?}",
        got.len()
    );
    // Every message reached a gateway application; first arrivals are in send order.
    let mut first_seen: HashMap<Bytes, usize> = HashMap::new();
    let mut order = Vec::new();
    for m in &got {
        let c = first_seen.entry(m.clone()).or_insert(0);
        if *c == 0 {
            order.push(m.clone());
        }
        *c += 1;
    }
    let expected: Vec<Bytes> = (0..N).map(|i| Bytes::from(format!("m{i:04}"))).collect();
    assert_eq!(
        order, expected,
        "each message echoed, first arrivals in order"
    );
    // Duplicates only among frames resent because no ACK covered them when the link died.
    let dup_indexes: Vec<usize> = first_seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(m, _)| {
            std::str::from_utf8(&m[1..])
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .collect();
    assert!(
        dup_indexes.len() as u64 <= stats.resent,
        "{dup_indexes:?} vs {stats:?}"
    );
    if let Some(first_resent_index) = stats.last_resend_from.checked_sub(seqs[0]) {
        let first_resent_index = first_resent_index as usize;
        assert!(
            dup_indexes.iter().all(|i| *i >= first_resent_index),
            "duplicates {dup_indexes:?} start before the resend point {first_resent_index}"
        );
    }
    assert_eq!(stats.acked, N as u64);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_changed_reconnects_at_once() {
    init_tracing();
    let (a, b) = two_gateways().await;
    let client = fast_client("net-1")
        // A long spread: an immediate reconnect cannot be this spread's luck.
        .reconnect_spread(Duration::from_secs(5))
        .bootstrap([a.gateway(), b.gateway()])
        .build()
        .unwrap();
    let _messages = client.connect().await.unwrap();
    let before = client.history().len();
    let t0 = Instant::now();
    client.network_changed(Some("cellular".into()));
    wait_event(&client, "disconnected", Duration::from_secs(2), |e| {
        matches!(
            e,
            Event::Disconnected {
                cause: DisconnectCause::NetworkChanged,
                ..
            }
        )
    })
    .await;
    let i = eventually(Duration::from_secs(3), "reconnected", || async {
        let h = client.history();
        h.iter()
            .skip(before)
            .position(|e| matches!(e, Event::Connected { .. }))
    })
    .await;
    let took = t0.elapsed();
    eprintln!("network_changed -> connected in {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let names: Vec<&str> = client.history()[before..=before + i]
        .iter()
        .map(Event::name)
        .collect();
    assert_eq!(
        names,
        ["disconnected", "connecting", "connected"],
        "no backoff wait"
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_with_goaway_moves_every_client_inside_the_window() {
    init_tracing();
    let window = Duration::from_millis(1500);
    let mut a = GatewayProc::start(
        "gw-a",
        &GatewayOpts {
            drain_window: Some(window),
            ..Default::default()
        },
    )
    .await;
    let b = GatewayProc::start("gw-b", &GatewayOpts::default()).await;
    let mut clients = Vec::new();
    for i in 0..6 {
        let c = fast_client(&format!("drain-{i}"))
            .bootstrap([a.gateway(), b.gateway()])
            .build()
            .unwrap();
        let m = c.connect().await.unwrap();
        assert_eq!(c.gateway().as_deref(), Some("gw-a"));
        clients.push((c, m));
    }
    // Traffic in flight during the drain.
    let mut receipts = Vec::new();
    for (c, _) in &clients {
        receipts.push(c.send("before").await.unwrap());
    }
    let t0 = Instant::now();
    a.child.signal("TERM");
    for (c, _) in &clients {
        for _ in 0..5 {
            receipts.push(c.send("during").await.unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (c, _) in &clients {
        wait_connected(c, Some("gw-a"), window + Duration::from_secs(2)).await;
    }
    let moved = t0.elapsed();
    eprintln!("6 clients moved off a draining gateway in {moved:?} (window {window:?})");
    // GOAWAY lands inside the window, and each client moves at a random moment inside it.
    assert!(
        moved < window + Duration::from_secs(1),
        "moved after {moved:?}"
    );
    for (c, _) in &clients {
        let h = c.history();
        assert!(
            h.iter().any(|e| matches!(
                e,
                Event::Disconnected {
                    cause: DisconnectCause::GoAway { .. },
                    ..
                }
            )),
            "{h:?}"
        );
        assert!(!h.iter().any(|e| e.name() == "gave_up"));
    }
    for r in receipts {
        tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .expect("receipt resolves")
            .expect("no message lost in the drain");
    }
    assert_eq!(
        a.child.wait_timeout(Duration::from_secs(5)),
        Some(0),
        "drained gateway exits 0"
    );
    for (c, _) in &clients {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_link_carries_data_and_fails_over() {
    init_tracing();
    let (mut a, b) = two_gateways().await;
    let client = fast_client("ws-1")
        .protocol(switchyard_client::Protocol::Ws)
        .bootstrap([
            switchyard_client::Gateway::new(&a.id, &a.ws),
            switchyard_client::Gateway::new(&b.id, &b.ws),
        ])
        .build()
        .unwrap();
    let mut messages = client.connect().await.unwrap();
    assert_eq!(client.gateway().as_deref(), Some("gw-a"));
    client.send("over ws").await.unwrap().await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(2), messages.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo[..], b"over ws");
    a.child.kill();
    assert_eq!(
        wait_connected(&client, Some("gw-a"), Duration::from_secs(5)).await,
        "gw-b"
    );
    client.send("after").await.unwrap().await.unwrap();
    client.close().await;
}
