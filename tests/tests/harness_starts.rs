//! The harness's process starts against the real binaries: a child that finds its port
//! taken is seen to exit at once, with its own words and exit status in the message
//! (before, the harness waited out its limit and said only "timed out"), and `start` moves
//! it to new ports. The taken port stands for one another process bound between the
//! harness choosing it and the child binding it.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use switchyard_tests::client_kit::http_get;
use switchyard_tests::process::NotReady;
use switchyard_tests::{Child, Etcd, Launch, bin_path, ports, start};

fn gateway(tcp: u16, http: u16) -> Command {
    let mut cmd = Command::new(bin_path("switchyard-gateway"));
    cmd.args([
        "--id",
        "gw-h",
        "--no-register",
        "--region",
        "r1",
        "--zone",
        "z1",
    ])
    .args(["--listen", &format!("127.0.0.1:{tcp}")])
    .args(["--http-listen", &format!("127.0.0.1:{http}")]);
    cmd
}

async fn healthz(http: u16) -> Option<()> {
    http_get(&format!("127.0.0.1:{http}"), "/healthz")
        .await
        .filter(|b| b.contains("ok"))
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_on_a_taken_port_is_reported_at_once_with_its_error() {
    let [tcp, http] = ports::reserve_n();
    let _thief = TcpListener::bind(("127.0.0.1", http)).expect("take the port");
    let mut child = Child::spawn_quiet(gateway(tcp, http), "gateway gw-h");
    let t0 = Instant::now();
    let err = child
        .wait_ready(Duration::from_secs(10), "gateway /healthz", || {
            healthz(http)
        })
        .await
        .expect_err("the port is taken");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "seen at its exit, not at the limit: {:?}",
        t0.elapsed()
    );
    let text = err.to_string();
    assert!(
        matches!(
            err,
            NotReady::Exited {
                addr_in_use: true,
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("exit status: 1"), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{http}")) && text.contains("Address already in use"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_moves_a_gateway_off_a_taken_port() {
    let mut thieves = Vec::new();
    let mut attempts = Vec::new();
    let launch = Launch {
        name: "gateway gw-h",
        ready: "gateway /healthz",
        limit: Duration::from_secs(10),
        echo: false,
    };
    let (mut child, [_, http], ()) = start(
        &launch,
        |[tcp, http]: [u16; 2]| {
            // Another process wins the race for the first attempt's port.
            if attempts.is_empty() {
                thieves.push(TcpListener::bind(("127.0.0.1", http)).expect("take the port"));
            }
            attempts.push(http);
            gateway(tcp, http)
        },
        |[_, http]: [u16; 2]| healthz(http),
    )
    .await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[1], http);
    assert!(child.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_moves_an_agent_off_a_taken_port_though_it_does_not_name_the_cause() {
    // The agent prints only "error: binding --http-listen <addr>": the harness finds the
    // port held instead.
    let etcd = Etcd::start().await;
    let prefix = switchyard_tests::unique_prefix();
    let mut thieves = Vec::new();
    let mut attempts = Vec::new();
    let launch = Launch {
        name: "switchyard-agent",
        ready: "agent /healthz",
        limit: Duration::from_secs(10),
        echo: false,
    };
    let (_child, [http], ()) = start(
        &launch,
        |[http]: [u16; 1]| {
            if attempts.is_empty() {
                thieves.push(TcpListener::bind(("127.0.0.1", http)).expect("take the port"));
            }
            attempts.push(http);
            let mut cmd = switchyard_tests::agent::command(&etcd.endpoint(), &prefix, "gw-h");
            cmd.args(["--http-listen", &format!("127.0.0.1:{http}")]);
            cmd
        },
        |[http]: [u16; 1]| healthz(http),
    )
    .await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[1], http);
}
