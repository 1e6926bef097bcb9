//! The command lines every binary shares (DESIGN contract 4, docs/operations.md): exit 2
//! for a usage or configuration error, 1 for a failure while running, and `switchyardctl`
//! reading `SWITCHYARD_*` and `--config` like the others.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use switchyard_tests::{Cluster, bin_path, free_port, init_tracing};

const BINARIES: [&str; 4] = [
    "switchyard-router",
    "switchyard-agent",
    "switchyard-gateway",
    "switchyardctl",
];

/// Runs `bin` with `args` and no `SWITCHYARD_*` from the test's environment; a binary
/// still running after 30 s fails the test rather than hanging it.
fn run(bin: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin_path(bin));
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHYARD_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the binary");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{bin} {args:?} still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    f.write_all(text.as_bytes()).expect("write");
    f
}

#[test]
fn unknown_flags_and_unreadable_config_files_exit_2_everywhere() {
    for bin in BINARIES {
        let o = run(bin, &["--no-such-flag"]);
        assert_eq!(code(&o), Some(2), "{bin} --no-such-flag: {}", stderr(&o));
        let mut args = vec!["--config", "/nonexistent/switchyard.toml"];
        if bin == "switchyardctl" {
            args.push("gateways");
        }
        let o = run(bin, &args);
        assert_eq!(
            code(&o),
            Some(2),
            "{bin} with a missing file: {}",
            stderr(&o)
        );
    }
}

#[test]
fn invalid_values_exit_2_before_anything_runs() {
    // Each is past clap (the flags exist and parse) and refused by validation.
    let dead_etcd = format!("http://127.0.0.1:{}", free_port());
    let cases: [(&str, Vec<&str>); 5] = [
        ("switchyard-router", vec!["--prefix", "no-leading-slash"]),
        (
            "switchyard-agent",
            vec![
                "--etcd",
                &dead_etcd,
                "--id",
                "bad id",
                "--tcp-addr",
                "127.0.0.1:1",
                "--capacity",
                "10",
            ],
        ),
        (
            "switchyard-agent",
            vec![
                "--etcd",
                &dead_etcd,
                "--id",
                "gw-1",
                "--tcp-addr",
                "127.0.0.1:1",
                "--capacity",
                "10",
                "--ttl",
                "1500ms",
            ],
        ),
        (
            "switchyard-gateway",
            vec![
                "--etcd",
                &dead_etcd,
                "--id",
                "gw-1",
                "--listen",
                "127.0.0.1:0",
                "--label",
                "no-equals-sign",
            ],
        ),
        ("switchyardctl", vec!["--router", "not a url", "gateways"]),
    ];
    for (bin, args) in cases {
        let o = run(bin, &args);
        assert_eq!(code(&o), Some(2), "{bin} {args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("error"), "{bin}: {}", stderr(&o));
    }
}

#[test]
fn runtime_failures_exit_1() {
    let dead_url = format!("http://127.0.0.1:{}", free_port());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    // etcd is reached lazily (a router outlives an etcd outage), so a taken port is the
    // failure every server binary meets at once.
    let cases: [(&str, Vec<&str>); 4] = [
        (
            "switchyard-router",
            vec!["--etcd", &dead_url, "--listen", &taken],
        ),
        (
            "switchyard-agent",
            vec![
                "--etcd",
                &dead_url,
                "--id",
                "gw-1",
                "--tcp-addr",
                "127.0.0.1:1",
                "--capacity",
                "10",
                "--http-listen",
                &taken,
            ],
        ),
        (
            "switchyard-gateway",
            vec!["--id", "gw-1", "--no-register", "--listen", &taken],
        ),
        (
            "switchyardctl",
            vec!["--router", &dead_url, "--timeout", "1s", "gateways"],
        ),
    ];
    for (bin, args) in cases {
        let o = run(bin, &args);
        assert_eq!(code(&o), Some(1), "{bin} {args:?}: {}", stderr(&o));
    }
}

#[test]
fn help_shows_defaults() {
    for (bin, default) in [
        ("switchyard-router", "[default: 127.0.0.1:7100]"),
        ("switchyard-agent", "[default: http://127.0.0.1:2379]"),
        ("switchyard-gateway", "[default: /switchyard]"),
        ("switchyardctl", "[default: http://127.0.0.1:7100]"),
    ] {
        let o = run(bin, &["--help"]);
        assert_eq!(code(&o), Some(0));
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(
            help.contains(default),
            "{bin} --help lacks {default}:\n{help}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyardctl_takes_its_router_from_env_and_config_file() {
    init_tracing();
    let cluster = Cluster::start(1, &[]).await;
    let live = cluster.router_urls()[0].clone();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gateways = |env: Option<&str>, file: Option<&str>| {
        let mut cmd = Command::new(bin_path("switchyardctl"));
        cmd.env_remove("SWITCHYARD_ROUTER")
            .env_remove("SWITCHYARD_CONFIG");
        if let Some(url) = env {
            cmd.env("SWITCHYARD_ROUTER", url);
        }
        let f = file.map(|url| toml_file(&format!("router = {url:?}\ntimeout = \"2s\"\n")));
        if let Some(f) = &f {
            cmd.arg("--config").arg(f.path());
        }
        cmd.args(["gateways", "--output", "json"]).output().unwrap()
    };
    let ok = |o: &Output| {
        assert_eq!(code(o), Some(0), "{}", stderr(o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["source"], "router");
    };
    ok(&gateways(Some(&live), None));
    ok(&gateways(None, Some(&live)));
    // The environment wins over the file, and either is really used: a dead router fails.
    ok(&gateways(Some(&live), Some(&dead)));
    let o = gateways(None, Some(&dead));
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&dead), "{}", stderr(&o));
}
