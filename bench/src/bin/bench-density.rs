//! Gateway density (issue 8.5): idle connections with heartbeats on one reference gateway,
//! and the same load on a plain tokio echo server (the floor: sockets and tasks with no
//! protocol logic), in the same run.
//!
//! For each server, as a separate process: wait until it listens, read its private memory
//! (`/proc/<pid>/smaps_rollup`), open `--conns` connections from `--holders` client
//! processes (this binary re-run in a hidden holder mode; each connection binds a source
//! address in 127.0.0.2… before connecting, so the ephemeral port range of one address is
//! no limit), send HELLO on each, then one 5-byte PING per connection every
//! `--heartbeat-interval` at a random phase. Once every connection has sent a heartbeat,
//! memory is read again and CPU time (utime + stime, all threads, `/proc/<pid>/stat`) over
//! `--window`; CPU is divided by the heartbeats answered per second in that window.
//!
//! The holders speak contract 3 minimally (no client-lib: it would cost the client side far
//! more than the server side being measured): the answer to HELLO must be WELCOME (or, from
//! the echo server, the HELLO itself), the answer to a PING a PONG (or the PING itself).
//!
//! Target: ≤ 8 KiB of user-space memory per connection on the gateway. The issue asks for
//! 50 000 connections; one process here may hold only `RLIMIT_NOFILE` (hard limit 20 000)
//! descriptors, so the run uses the largest count that fits and says so.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use rand::Rng;
use switchyard_bench::procfs;
use switchyard_bench::rawconn::{
    self, KIND_HELLO, KIND_PING, KIND_PONG, KIND_WELCOME, PING, read_kind,
};
use switchyard_gateway_agent::raise_fd_limit;
use switchyard_tests::{Child, bin_path, free_port};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// Gateway density against a plain echo server.
#[derive(Debug, Parser)]
#[command(name = "bench-density")]
struct Args {
    /// Small, fast run: 4 000 connections, 20 s CPU window.
    #[arg(long)]
    quick: bool,
    /// Connections per server (default 19 000, 4 000 with --quick; lowered to what the
    /// open-file limit allows).
    #[arg(long)]
    conns: Option<usize>,
    /// Heartbeat interval of the clients (and told to them by the gateway in WELCOME).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// CPU measurement window (default 60 s, 20 s with --quick).
    #[arg(long, value_parser = humantime::parse_duration)]
    window: Option<Duration>,
    /// Client processes holding the connections (more when the open-file limit needs it).
    #[arg(long, default_value_t = 2)]
    holders: usize,
    /// Source addresses per server, 127.0.0.2 upwards.
    #[arg(long, default_value_t = 8)]
    source_addrs: u8,
    /// The gateway binary to measure (default: `switchyard-gateway` next to this one), e.g.
    /// another build to compare.
    #[arg(long)]
    gateway_bin: Option<std::path::PathBuf>,
    /// Hidden: run the plain tokio echo server on this address.
    #[arg(long, hide = true)]
    echo_server: Option<SocketAddr>,
    /// Hidden: holder mode, connecting to this address.
    #[arg(long, hide = true)]
    hold: Option<SocketAddr>,
    /// Hidden (holder): index, for unique client ids.
    #[arg(long, hide = true, default_value_t = 0)]
    hold_index: usize,
    /// Hidden (holder): connections to open.
    #[arg(long, hide = true, default_value_t = 0)]
    hold_conns: usize,
    /// Hidden (holder): first source address is 127.0.0.<this>.
    #[arg(long, hide = true, default_value_t = 2)]
    hold_src_first: u8,
    /// Hidden (holder): exit after this long whatever happens.
    #[arg(long, hide = true, default_value = "10m", value_parser = humantime::parse_duration)]
    hold_for: Duration,
}

/// Per-connection memory target.
const TARGET_BYTES: u64 = 8 * 1024;
/// What the issue asks for.
const TARGET_CONNS: usize = 50_000;
/// Descriptors a server or holder needs besides its connections (listeners, epoll, pipes).
const FD_SLACK: u64 = 100;
/// Logins in flight per holder.
const LOGIN_CONCURRENCY: usize = 128;

fn main() {
    let args = Args::parse();
    // Children inherit the limit: the servers and holders get it too.
    let fd_limit = match raise_fd_limit() {
        Ok(limit) => limit.unwrap_or(u64::MAX),
        Err(e) => {
            eprintln!("cannot raise the open-file limit: {e}");
            rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(u64::MAX)
        }
    };
    if let Some(addr) = args.echo_server {
        // Like the gateway: tokio's default multi-threaded runtime.
        let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
        return rt.block_on(echo_server(addr));
    }
    if let Some(addr) = args.hold {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        return rt.block_on(hold(&args, addr));
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(&args, fd_limit) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; every process started is stopped")),
        }
    });
    drop(rt);
    match outcome {
        Ok(summary) => println!("{summary}"),
        Err(e) => {
            println!("bench-density: error={:?}", format!("{e:#}"));
            std::process::exit(1);
        }
    }
}

/// The floor: tokio's README echo server, byte for byte in spirit (a 1 KiB buffer in the
/// task, read then write back), plus a pause on accept errors so running out of
/// descriptors does not spin.
async fn echo_server(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.expect("bind echo server");
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let mut buf = [0; 1024];
            loop {
                let n = match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if socket.write_all(&buf[0..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// Holder mode

/// PINGs every `tick`, each answer counted, until the connection fails.
async fn beat(
    s: &mut TcpStream,
    tick: &mut tokio::time::Interval,
    answers: &AtomicU64,
) -> std::io::Result<std::convert::Infallible> {
    loop {
        tick.tick().await;
        s.write_all(&PING).await?;
        match read_kind(s).await? {
            KIND_PONG | KIND_PING => answers.fetch_add(1, Ordering::Relaxed),
            k => return Err(std::io::Error::other(format!("answer to PING: {k:#04x}"))),
        };
    }
}

/// One connection's heartbeats until `until`: a PING every `every` at a random phase;
/// a connection that breaks before `until` is counted as lost.
async fn heartbeats(
    mut s: TcpStream,
    every: Duration,
    until: Instant,
    answers: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
) {
    let phase = every.mul_f64(rand::rng().random_range(0.0..1.0));
    let mut tick = tokio::time::interval_at(Instant::now() + phase, every);
    if let Ok(Err(_)) = tokio::time::timeout_at(until, beat(&mut s, &mut tick, &answers)).await {
        lost.fetch_add(1, Ordering::Relaxed);
    }
}

/// Holder mode: prints `CONNECTED <ok> <failed> <first error>` once every login was tried,
/// then `ANSWERS <answered> <lost>` every 200 ms until `--hold-for` has passed.
async fn hold(args: &Args, dst: SocketAddr) {
    let until = Instant::now() + args.hold_for;
    let answers = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let results: Vec<std::io::Result<()>> = futures::stream::iter(0..args.hold_conns)
        .map(|i| {
            let src = Ipv4Addr::new(
                127,
                0,
                0,
                args.hold_src_first + (i % usize::from(args.source_addrs)) as u8,
            );
            let id = format!("density-{}-{i}", args.hold_index);
            let (answers, lost) = (answers.clone(), lost.clone());
            let every = args.heartbeat_interval;
            async move {
                let s = match rawconn::hello(dst, Some(src.into()), id).await? {
                    // The echo server sends the HELLO back.
                    (s, KIND_WELCOME | KIND_HELLO) => s,
                    (_, k) => {
                        return Err(std::io::Error::other(format!(
                            "answer to HELLO has kind {k:#04x}"
                        )));
                    }
                };
                tokio::spawn(heartbeats(s, every, until, answers, lost));
                Ok(())
            }
        })
        .buffer_unordered(LOGIN_CONCURRENCY)
        .collect()
        .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let first_error = results
        .iter()
        .find_map(|r| r.as_ref().err().map(ToString::to_string))
        .unwrap_or_else(|| "-".into());
    println!("CONNECTED {ok} {} {first_error}", results.len() - ok);
    while Instant::now() < until {
        println!(
            "ANSWERS {} {}",
            answers.load(Ordering::Relaxed),
            lost.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Driver

/// What one holder reported last.
#[derive(Debug, Clone, Default)]
struct Report {
    /// Logins that worked and that failed (once all were tried), and the first error.
    connected: Option<(u64, u64, String)>,
    /// Heartbeats answered so far.
    answers: u64,
    /// Connections that broke during heartbeats.
    lost: u64,
    /// The holder exited.
    gone: bool,
}

/// Parses one holder line into `report`.
fn apply_line(report: &mut Report, line: &str) {
    let mut parts = line.splitn(4, ' ');
    match parts.next() {
        Some("CONNECTED") => {
            let ok = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let failed = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let error = parts.next().unwrap_or("-").to_owned();
            report.connected = Some((ok, failed, error));
        }
        Some("ANSWERS") => {
            report.answers = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            report.lost = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
        _ => {}
    }
}

/// A holder process and its latest report.
struct Holder {
    child: tokio::process::Child,
    report: watch::Receiver<Report>,
}

fn spawn_holder(
    args: &Args,
    dst: SocketAddr,
    index: usize,
    conns: usize,
    src_first: u8,
    hold_for: Duration,
) -> Result<Holder> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--hold", &dst.to_string()])
        .args(["--hold-index", &index.to_string()])
        .args(["--hold-conns", &conns.to_string()])
        .args(["--hold-src-first", &src_first.to_string()])
        .args(["--source-addrs", &args.source_addrs.to_string()])
        .args([
            "--heartbeat-interval",
            &format!("{}ms", args.heartbeat_interval.as_millis()),
        ])
        .args(["--hold-for", &format!("{}s", hold_for.as_secs())])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting a holder")?;
    let stdout = child.stdout.take().context("holder stdout")?;
    let (tx, rx) = watch::channel(Report::default());
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tx.send_modify(|r| apply_line(r, &line));
        }
        tx.send_modify(|r| r.gone = true);
    });
    Ok(Holder { child, report: rx })
}

/// One server's figures.
#[derive(Debug)]
struct Figures {
    conns: u64,
    before: u64,
    after: u64,
    end: u64,
    hb_per_s: f64,
    cpu_pct: f64,
    lost: u64,
}

impl Figures {
    /// Private bytes per connection, at the end of the window (after heartbeats flowed).
    fn bytes_per_conn(&self) -> u64 {
        self.end.saturating_sub(self.before) / self.conns.max(1)
    }

    /// CPU % of one core per 1 000 heartbeats/s.
    fn cpu_per_1k(&self) -> f64 {
        if self.hb_per_s > 0.0 {
            self.cpu_pct / (self.hb_per_s / 1000.0)
        } else {
            f64::NAN
        }
    }
}

fn sum(holders: &[Holder], f: impl Fn(&Report) -> u64) -> u64 {
    holders.iter().map(|h| f(&h.report.borrow())).sum()
}

/// The load both servers get.
#[derive(Debug, Clone, Copy)]
struct Plan {
    conns: usize,
    holders: usize,
    window: Duration,
}

/// Loads the server (already started), measures it, stops everything.
async fn measure(
    args: &Args,
    plan: Plan,
    name: &str,
    mut server: Child,
    addr: SocketAddr,
    src_first: u8,
) -> Result<Figures> {
    let Plan {
        conns,
        holders,
        window,
    } = plan;
    let pid = server.pid();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline || !server.is_running() {
            bail!(
                "{}",
                server.report(&format!("{name} does not listen on {addr}"))
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = procfs::private_memory(pid)?;

    // Generous: logins at a few thousand per second, then the window.
    let login_limit = Duration::from_secs(30) + Duration::from_millis(20) * conns as u32;
    let hold_for = login_limit + args.heartbeat_interval * 2 + window + Duration::from_secs(30);
    let mut hs = Vec::with_capacity(holders);
    for i in 0..holders {
        let share = conns / holders + usize::from(i < conns % holders);
        hs.push(spawn_holder(args, addr, i, share, src_first, hold_for)?);
    }
    let t_login = Instant::now();
    for h in &mut hs {
        let r = tokio::time::timeout_at(
            t_login + login_limit,
            h.report.wait_for(|r| r.connected.is_some() || r.gone),
        )
        .await;
        match r {
            Ok(Ok(r)) if r.connected.is_some() => {}
            _ => bail!("{name}: a holder did not finish logging in within {login_limit:?}"),
        }
    }
    let took = t_login.elapsed();
    let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
    for h in &hs {
        if let Some((o, f, e)) = &h.report.borrow().connected {
            ok += o;
            failed += f;
            if *f > 0 {
                errors.push(e.clone());
            }
        }
    }
    println!(
        "{name}: {ok} connections logged in ({failed} failed{}) in {:.1} s from {} processes",
        if errors.is_empty() {
            String::new()
        } else {
            format!(", first error: {}", errors[0])
        },
        took.as_secs_f64(),
        hs.len()
    );
    if ok == 0 {
        bail!("{name}: no connection logged in");
    }
    // Every connection sends its first PING within one interval: then buffers and timers
    // are in the state an idle connection lives in.
    tokio::time::sleep(args.heartbeat_interval + Duration::from_secs(1)).await;
    let after = procfs::private_memory(pid)?;
    let (cpu0, ans0, t0) = (
        procfs::cpu_time(pid)?,
        sum(&hs, |r| r.answers),
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    let (cpu1, ans1, t1) = (
        procfs::cpu_time(pid)?,
        sum(&hs, |r| r.answers),
        Instant::now(),
    );
    let end = procfs::private_memory(pid)?;
    let lost = sum(&hs, |r| r.lost);
    let secs = (t1 - t0).as_secs_f64();
    let figures = Figures {
        conns: ok,
        before,
        after,
        end,
        hb_per_s: ans1.saturating_sub(ans0) as f64 / secs,
        cpu_pct: (cpu1.saturating_sub(cpu0)).as_secs_f64() / secs * 100.0,
        lost,
    };
    println!(
        "{name}: private memory {:.1} MiB before, {:.1} MiB after login + 1 heartbeat, {:.1} MiB after the {:.0} s window => {} bytes/conn; \
         {:.0} heartbeats/s answered, CPU {:.2}% of a core => {:.3}% per 1 000 heartbeats/s; {lost} connections lost",
        figures.before as f64 / 1048576.0,
        figures.after as f64 / 1048576.0,
        figures.end as f64 / 1048576.0,
        secs,
        figures.bytes_per_conn(),
        figures.hb_per_s,
        figures.cpu_pct,
        figures.cpu_per_1k(),
    );
    for mut h in hs {
        let _ = h.child.kill().await;
    }
    server.kill();
    Ok(figures)
}

async fn run(args: &Args, fd_limit: u64) -> Result<String> {
    let window = args
        .window
        .unwrap_or(Duration::from_secs(if args.quick { 20 } else { 60 }));
    let wanted = args
        .conns
        .unwrap_or(if args.quick { 4_000 } else { 19_000 });
    // The server holds every connection in one process: that is the binding limit.
    let fits = fd_limit.saturating_sub(FD_SLACK) as usize;
    let conns = wanted.min(fits);
    if conns < wanted {
        println!(
            "open-file limit {fd_limit}: {wanted} connections do not fit in one server process, running {conns}"
        );
    }
    let holders = args.holders.max(conns.div_ceil(fits.max(1))).max(1);
    let s = args.source_addrs;
    if s == 0 || s > 120 {
        bail!("--source-addrs must be 1..=120 (two sets of them fit in 127.0.0.2..=127.0.0.254)");
    }
    println!(
        "{conns} connections per server (issue: {TARGET_CONNS}; open-file limit {fd_limit} per process), \
         {holders} holder processes, {s} source addresses each, heartbeat every {} ms, CPU window {} s",
        args.heartbeat_interval.as_millis(),
        window.as_secs()
    );

    let gw_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let gateway_bin = args
        .gateway_bin
        .clone()
        .unwrap_or_else(|| bin_path("switchyard-gateway"));
    println!("gateway binary: {}", gateway_bin.display());
    let mut cmd = std::process::Command::new(gateway_bin);
    switchyard_tests::one_address_for_all(&mut cmd);
    cmd.args(["--no-register", "--id", "gw-density"])
        .args(["--listen", &gw_addr.to_string()])
        .args(["--capacity", &(conns + 100).to_string()])
        .args([
            "--heartbeat-interval",
            &format!("{}ms", args.heartbeat_interval.as_millis()),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let plan = Plan {
        conns,
        holders,
        window,
    };
    let gw = measure(
        args,
        plan,
        "gateway",
        Child::spawn(cmd, "switchyard-gateway"),
        gw_addr,
        2,
    )
    .await?;

    let echo_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["--echo-server", &echo_addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // Fresh source addresses: the gateway run's sockets may still sit in TIME_WAIT.
    let echo = measure(
        args,
        plan,
        "echo",
        Child::spawn(cmd, "echo server"),
        echo_addr,
        2 + s,
    )
    .await?;

    let gw_b = gw.bytes_per_conn();
    println!(
        "gateway over the echo floor: {} bytes/conn more ({:.1}x), CPU per 1 000 heartbeats/s {:.2}x",
        gw_b.saturating_sub(echo.bytes_per_conn()),
        gw_b as f64 / echo.bytes_per_conn().max(1) as f64,
        gw.cpu_per_1k() / echo.cpu_per_1k()
    );
    Ok(format!(
        "bench-density: conns={} conns_target={TARGET_CONNS} fd_limit={fd_limit} heartbeat_ms={} hb_per_s={:.0} \
         gw_bytes_per_conn={gw_b} echo_bytes_per_conn={} target_bytes={TARGET_BYTES} \
         gw_cpu_pct={:.2} echo_cpu_pct={:.2} gw_cpu_pct_per_1k_hb={:.3} echo_cpu_pct_per_1k_hb={:.3} \
         lost={} target_met={}",
        gw.conns.min(echo.conns),
        args.heartbeat_interval.as_millis(),
        gw.hb_per_s,
        echo.bytes_per_conn(),
        gw.cpu_pct,
        echo.cpu_pct,
        gw.cpu_per_1k(),
        echo.cpu_per_1k(),
        gw.lost + echo.lost,
        gw_b <= TARGET_BYTES && gw.lost == 0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_lines_update_the_report() {
        let mut r = Report::default();
        apply_line(&mut r, "ANSWERS 10 0");
        assert_eq!((r.answers, r.lost), (10, 0));
        apply_line(&mut r, "CONNECTED 9 1 connection refused (os error 111)");
        assert_eq!(
            r.connected,
            Some((9, 1, "connection refused (os error 111)".into()))
        );
        apply_line(&mut r, "something else");
        assert_eq!(r.answers, 10);
    }

    #[test]
    fn per_connection_figures() {
        let f = Figures {
            conns: 1000,
            before: 1_000_000,
            after: 8_000_000,
            end: 9_000_000,
            hb_per_s: 2000.0,
            cpu_pct: 3.0,
            lost: 0,
        };
        assert_eq!(f.bytes_per_conn(), 8000);
        assert!((f.cpu_per_1k() - 1.5).abs() < 1e-9);
    }
}
