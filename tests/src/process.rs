//! Workspace binaries run as separate OS processes, killed when the test ends, with the
//! last lines they wrote kept for the failure message; and [`start`], which starts one on
//! fresh ports and waits until it is up, again on new ports when it could not bind.

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::ports;

/// Lines of a child's output kept for a failure message: enough for the error and the few
/// log lines before it, short enough to read in a test report.
pub const TAIL_LINES: usize = 40;

/// Longest line kept, in bytes: one JSON log line must not fill a failure message.
const MAX_LINE: usize = 2_000;

/// Starts tried per child by [`start`]: one port conflict is already rare, two in a row
/// would mean something else is wrong, and the third failure is reported.
pub const START_ATTEMPTS: usize = 3;

/// How often readiness is checked: quick enough not to slow a test, rare enough not to
/// load a 2-core machine.
const POLL: Duration = Duration::from_millis(20);

/// How long a report waits for the pipes of an exited child to reach their end, so its
/// last line (usually the error) is in the message.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// Path of a workspace binary (`switchyard-agent`, `switchyard-gateway`, …). Cargo builds
/// every workspace binary before running `cargo test --workspace`; when run alone, build
/// them first with `cargo build --workspace --bins`.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // A test runs from target/<profile>/deps/, a binary (the demo, benches) from
    // target/<profile>/: look next to the executable, then one level up.
    let here = exe.parent().expect("exe dir");
    let path = [here.join(name), here.parent().unwrap_or(here).join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| here.join(name));
    assert!(
        path.is_file(),
        "{} not built: run `cargo build --workspace --bins` (cargo test --workspace does it)",
        path.display()
    );
    path
}

/// A child process that is killed (SIGKILL) when dropped, so no test leaves one behind.
/// Its stdout and stderr are read by two threads that keep the last [`TAIL_LINES`] lines
/// (and, unless quiet, copy each line to the harness's stderr, which libtest shows for a
/// failing test only).
#[derive(Debug)]
pub struct Child {
    /// The process; `None` once reaped by [`Child::kill`] or [`Child::wait_timeout`], so
    /// dropping never signals a pid the system may have reused.
    inner: Option<std::process::Child>,
    /// Names the process in panics and in its copied output.
    name: String,
    /// Its last lines, shared with the threads reading its pipes.
    output: Arc<Output>,
    /// How it ended, once known: a report made after it was reaped still says it.
    status: Option<ExitStatus>,
}

impl Child {
    /// Spawns `cmd` with its stdout and stderr captured (whatever `cmd` said about them)
    /// and copied, line by line and prefixed with `name`, to the harness's stderr. Panics
    /// with `name` if it cannot start.
    pub fn spawn(cmd: Command, name: &str) -> Self {
        Self::spawn_with(cmd, name, true)
    }

    /// Like [`Child::spawn`], keeping the last lines for failure messages without copying
    /// them anywhere: for children whose output is noise even in a failed test's report.
    pub fn spawn_quiet(cmd: Command, name: &str) -> Self {
        Self::spawn_with(cmd, name, false)
    }

    fn spawn_with(mut cmd: Command, name: &str, echo: bool) -> Self {
        let mut inner = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let output = Arc::new(Output::default());
        let stdout = inner
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>);
        let stderr = inner
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>);
        for (stream, pipe) in [("stdout", stdout), ("stderr", stderr)] {
            if let Some(pipe) = pipe {
                output.read(pipe, name, stream, echo);
            }
        }
        Self {
            inner: Some(inner),
            name: name.to_owned(),
            output,
            status: None,
        }
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.inner.as_ref().map_or(0, std::process::Child::id)
    }

    /// Sends a signal by name (`TERM`, `INT`, `STOP`, `CONT`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.name);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.inner.take() {
            let _ = c.kill();
            if let Ok(status) = c.wait() {
                self.status.get_or_insert(status);
            }
        }
    }

    /// SIGTERM, wait up to `limit`, then SIGKILL. Returns the exit code if it exited.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        self.inner.as_ref()?;
        self.signal("TERM");
        self.wait_timeout(limit)
    }

    /// Waits up to `limit` for the process to exit by itself; SIGKILL after that.
    /// Returns the exit code when it exited within the limit.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<i32> {
        let mut c = self.inner.take()?;
        let deadline = Instant::now() + limit;
        loop {
            match c.try_wait() {
                Ok(Some(status)) => {
                    self.status.get_or_insert(status);
                    return status.code();
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = c.kill();
                    if let Ok(status) = c.wait() {
                        self.status.get_or_insert(status);
                    }
                    return None;
                }
            }
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none() && self.inner.is_some()
    }

    /// How the process ended, or `None` while it runs (or when it was never reaped).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(Ok(Some(status))) = self.inner.as_mut().map(std::process::Child::try_wait)
        {
            self.status = Some(status);
        }
        self.status
    }

    /// The last lines the process wrote, each tagged with its stream, one per line; empty
    /// when it wrote nothing. Once it has exited, waits briefly for the pipes to drain so
    /// the final line is there.
    pub fn output_tail(&mut self) -> String {
        if self.exit_status().is_some() || self.inner.is_none() {
            self.output.wait_closed(DRAIN_WAIT);
        }
        self.output.tail()
    }

    /// A failure message: `what` went wrong with this process, how it stands (exit status,
    /// or still running), and the last lines it wrote.
    pub fn report(&mut self, what: &str) -> String {
        let state = match self.exit_status() {
            Some(status) => format!("it exited ({status})"),
            None if self.inner.is_some() => format!("it is still running (pid {})", self.pid()),
            None => "it was killed".to_owned(),
        };
        let tail = self.output_tail();
        let tail = if tail.is_empty() {
            "it wrote nothing".to_owned()
        } else {
            format!("the last lines it wrote:\n{tail}")
        };
        format!("{}: {what}; {state}; {tail}", self.name)
    }

    /// Waits until `check` returns `Some` (each call bounded by what is left of `limit`)
    /// while the process keeps running. Fails as soon as the process exits (a check that
    /// succeeds then is answered by someone else, on a port the child could not get), or
    /// when `limit` passes; either way with a [`Child::report`] naming `what`.
    pub async fn wait_ready<T, F, Fut>(
        &mut self,
        limit: Duration,
        what: &str,
        mut check: F,
    ) -> Result<T, NotReady>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        let polls = limit.as_millis() / POLL.as_millis() + 1;
        for _ in 0..polls {
            if self.exit_status().is_some() {
                return Err(self.exited(what));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Ok(Some(v)) = tokio::time::timeout(left, check()).await {
                if self.exit_status().is_some() {
                    return Err(self.exited(what));
                }
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        if self.exit_status().is_some() {
            return Err(self.exited(what));
        }
        Err(NotReady::TimedOut {
            report: self.report(&format!(
                "did not start: timed out after {limit:?} waiting for: {what}"
            )),
        })
    }

    /// Like [`Child::wait_ready`], panicking with the report on failure.
    pub async fn ready<T, F, Fut>(&mut self, limit: Duration, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        match self.wait_ready(limit, what, check).await {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    fn exited(&mut self, what: &str) -> NotReady {
        let report = self.report(&format!("did not start: exited before {what}"));
        NotReady::Exited {
            addr_in_use: says_addr_in_use(&self.output.tail()),
            report,
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(c) = self.inner.as_mut() {
            // A frozen (SIGSTOPped) process still dies on SIGKILL.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Why a child did not become ready.
#[derive(Debug)]
pub enum NotReady {
    /// It exited first.
    Exited {
        /// Whether its output says an address was in use: the one failure a start with
        /// other ports can cure.
        addr_in_use: bool,
        /// [`Child::report`]: exit status and last lines.
        report: String,
    },
    /// It ran past the limit without being ready.
    TimedOut {
        /// [`Child::report`]: still running, and its last lines.
        report: String,
    },
}

impl NotReady {
    /// True when the child exited because one of `ports` was taken: its output says so, or
    /// (for a binary that prints only the outermost error) one of them is held now.
    pub fn port_conflict(&self, ports: &[u16]) -> bool {
        match self {
            Self::Exited { addr_in_use, .. } => {
                *addr_in_use || ports.iter().any(|p| !ports::is_free(*p))
            }
            Self::TimedOut { .. } => false,
        }
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited { report, .. } | Self::TimedOut { report } => f.write_str(report),
        }
    }
}

/// How [`start`] starts one child and knows it is up.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    /// Names the child in failure messages and in its copied output.
    pub name: &'a str,
    /// What being up means, for the timeout message (e.g. `gateway /healthz`).
    pub ready: &'a str,
    /// How long one attempt may take to be up: long enough for a loaded 2-core machine,
    /// short enough that a stuck start fails the test instead of its overall timeout.
    pub limit: Duration,
    /// Whether its lines are copied to the harness's stderr ([`Child::spawn`]) or only
    /// kept for the failure message ([`Child::spawn_quiet`]).
    pub echo: bool,
}

/// Starts a child on `N` fresh ports ([`ports::reserve_n`]): `command` builds its command
/// for the given ports, and it is up once `ready` (called with the same ports) returns
/// `Some`. When the child exits because a port was taken, starts it again on new ports, up
/// to [`START_ATTEMPTS`] times. Panics with the child's exit status and last lines when it
/// exits otherwise or is not up within the launch's limit.
pub async fn start<const N: usize, T, C, F, Fut>(
    launch: &Launch<'_>,
    mut command: C,
    mut ready: F,
) -> (Child, [u16; N], T)
where
    C: FnMut([u16; N]) -> Command,
    F: FnMut([u16; N]) -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let mut conflicts = Vec::new();
    for _ in 0..START_ATTEMPTS {
        let ports = ports::reserve_n::<N>();
        let mut child = Child::spawn_with(command(ports), launch.name, launch.echo);
        match child
            .wait_ready(launch.limit, launch.ready, || ready(ports))
            .await
        {
            Ok(v) => return (child, ports, v),
            Err(e) if e.port_conflict(&ports) => {
                eprintln!("{e}\n(a port was taken: starting again on new ports)");
                conflicts.push(e.to_string());
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!(
        "{} did not start in {START_ATTEMPTS} attempts, each ending on a port conflict:\n{}",
        launch.name,
        conflicts.join("\n")
    );
}

/// True when a child's output says it could not bind because the address was taken, in
/// the words Rust (`std::io::Error`) and Go (etcd) use.
pub fn says_addr_in_use(output: &str) -> bool {
    let lower = output.to_ascii_lowercase();
    lower.contains("address already in use")
        || lower.contains("addrinuse")
        || lower.contains("os error 98")
}

/// The last lines of a child's output, shared with the threads reading its pipes.
#[derive(Debug, Default)]
struct Output {
    /// The lines, and how many pipes are still open.
    state: Mutex<OutputState>,
    /// Signalled when a pipe reaches its end, so a report can wait for the last lines.
    closed: Condvar,
}

#[derive(Debug, Default)]
struct OutputState {
    /// The last [`TAIL_LINES`] lines, each prefixed with its stream.
    lines: VecDeque<String>,
    /// Lines dropped from the front, so the message says the tail is partial.
    dropped: u64,
    /// Pipes still being read: at zero every line the child wrote is in `lines`.
    open: u8,
}

impl Output {
    /// Reads `pipe` on a thread of its own until it ends (the child exited or was killed),
    /// keeping the last lines and, when `echo`, copying them to the harness's stderr.
    fn read(self: &Arc<Self>, pipe: Box<dyn Read + Send>, name: &str, stream: &str, echo: bool) {
        self.lock().open += 1;
        let me = Arc::clone(self);
        let (tag, prefix) = (stream.to_owned(), name.to_owned());
        let spawned = std::thread::Builder::new()
            .name(format!("{name} {stream}"))
            .spawn(move || {
                let (name, stream) = (prefix, tag);
                let mut reader = BufReader::new(pipe);
                let mut buf = Vec::new();
                // Ends at end of file, which the child's exit brings: bounded by its life.
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            // Children log with colours even into a pipe (tracing's
                            // default): escape codes only make a message hard to read.
                            let line = strip_ansi(&String::from_utf8_lossy(&buf));
                            let line = line.trim_end_matches(['\n', '\r']);
                            if echo {
                                eprintln!("[{name}] {line}");
                            }
                            me.push(format!("  [{stream}] {}", clip(line)));
                        }
                    }
                }
                me.lock().open -= 1;
                me.closed.notify_all();
            });
        if let Err(e) = spawned {
            self.lock().open -= 1;
            panic!("cannot start the thread reading {name}'s {stream}: {e}");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, line: String) {
        let mut state = self.lock();
        if state.lines.len() == TAIL_LINES {
            state.lines.pop_front();
            state.dropped += 1;
        }
        state.lines.push_back(line);
    }

    /// Waits up to `limit` for every pipe to reach its end.
    fn wait_closed(&self, limit: Duration) {
        let state = self.lock();
        let _ = self
            .closed
            .wait_timeout_while(state, limit, |s| s.open > 0)
            .unwrap_or_else(PoisonError::into_inner);
    }

    fn tail(&self) -> String {
        let state = self.lock();
        let mut text = String::new();
        if state.dropped > 0 {
            text.push_str(&format!("  ({} earlier lines not shown)\n", state.dropped));
        }
        for line in &state.lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// `text` without ANSI escape sequences (`ESC [ … final byte`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, up to the final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `line` cut to [`MAX_LINE`] bytes at a character boundary.
fn clip(line: &str) -> String {
    if line.len() <= MAX_LINE {
        return line.to_owned();
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &line[..end], line.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[tokio::test]
    async fn a_child_that_exits_at_once_is_reported_with_its_status_and_output() {
        // All on stderr: lines from two pipes are kept in the order their threads read
        // them, which need not be the order they were written in.
        let mut child = Child::spawn_quiet(
            sh(
                "exec >&2; echo 'first line'; for i in $(seq 1 60); do echo noise $i; done; \
                echo 'boom: the known message'; exit 3",
            ),
            "quitter",
        );
        let err = child
            .wait_ready(Duration::from_secs(10), "never", || async { None::<()> })
            .await
            .expect_err("it exits");
        let text = err.to_string();
        assert!(
            matches!(
                err,
                NotReady::Exited {
                    addr_in_use: false,
                    ..
                }
            ),
            "{text}"
        );
        assert!(
            text.starts_with("quitter: did not start: exited before never"),
            "{text}"
        );
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("[stderr] boom: the known message"), "{text}");
        assert!(text.contains("[stderr] noise 60"), "{text}");
        // Only the tail: the first of 62 lines is gone, and the message says so.
        assert!(!text.contains("first line"), "{text}");
        assert!(text.contains("22 earlier lines not shown"), "{text}");
        assert!(!err.port_conflict(&[]));
    }

    #[tokio::test]
    async fn a_child_that_never_gets_ready_is_reported_running_with_its_output() {
        let mut child = Child::spawn_quiet(
            sh("echo 'on stdout'; echo 'still starting' >&2; exec sleep 30"),
            "slow",
        );
        let t0 = Instant::now();
        let err = child
            .wait_ready(Duration::from_millis(300), "slow /healthz", || async {
                None::<()>
            })
            .await
            .expect_err("never ready");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "bounded by the limit"
        );
        let text = err.to_string();
        assert!(matches!(err, NotReady::TimedOut { .. }), "{text}");
        assert!(
            text.contains("timed out after 300ms waiting for: slow /healthz"),
            "{text}"
        );
        assert!(text.contains("still running (pid"), "{text}");
        assert!(text.contains("[stderr] still starting"), "{text}");
        assert!(text.contains("[stdout] on stdout"), "{text}");
    }

    #[tokio::test]
    #[should_panic(expected = "[stderr] error: bad flag --nope")]
    async fn start_panics_with_the_output_of_a_child_that_fails_for_another_reason() {
        let launch = Launch {
            name: "bad-flags",
            ready: "never",
            limit: Duration::from_secs(10),
            echo: false,
        };
        start::<1, (), _, _, _>(
            &launch,
            |_| sh("echo 'error: bad flag --nope' >&2; exit 2"),
            |_| async { None },
        )
        .await;
    }

    #[tokio::test]
    async fn start_retries_on_new_ports_when_the_child_finds_its_address_taken() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("tried");
        let up = dir.path().join("up");
        let mut seen = Vec::new();
        let launch = Launch {
            name: "unlucky",
            ready: "up file",
            limit: Duration::from_secs(10),
            echo: false,
        };
        // Fails like a Rust binary on a taken port the first time, comes up the second.
        let script = format!(
            "if [ -e {m} ]; then touch {u}; exec sleep 30; else touch {m}; \
             echo 'error: binding --listen 127.0.0.1:1: Address already in use (os error 98)' >&2; \
             exit 1; fi",
            m = marker.display(),
            u = up.display()
        );
        let (_child, ports, ()) = start::<2, _, _, _, _>(
            &launch,
            |ports| {
                seen.push(ports);
                sh(&script)
            },
            |_| {
                let up = up.clone();
                async move { up.exists().then_some(()) }
            },
        )
        .await;
        assert_eq!(seen.len(), 2, "one retry: {seen:?}");
        assert_eq!(seen[1], ports);
        assert!(
            seen[0].iter().all(|p| !ports.contains(p)),
            "new ports: {seen:?}"
        );
    }

    #[tokio::test]
    async fn a_taken_port_counts_as_a_conflict_even_when_the_child_does_not_say_so() {
        // Some binaries print only "error: binding --http-listen <addr>", not the cause.
        let port = ports::reserve();
        let _thief = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
        let mut child = Child::spawn_quiet(sh("echo 'error: binding' >&2; exit 1"), "terse");
        let err = child
            .wait_ready(Duration::from_secs(10), "never", || async { None::<()> })
            .await
            .expect_err("it exits");
        assert!(matches!(
            err,
            NotReady::Exited {
                addr_in_use: false,
                ..
            }
        ));
        assert!(err.port_conflict(&[port]), "the port is held: {err}");
        assert!(
            !err.port_conflict(&[ports::reserve()]),
            "a free port: {err}"
        );
    }

    #[test]
    fn colour_codes_are_dropped_from_kept_lines() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m boom"),
            "2026 ERROR boom"
        );
        assert_eq!(strip_ansi("plain [x] text"), "plain [x] text");
    }

    #[test]
    fn addr_in_use_is_recognised_in_rust_and_go_words() {
        assert!(says_addr_in_use(
            "error: binding 127.0.0.1:1: Address already in use (os error 98)"
        ));
        assert!(says_addr_in_use(
            "listen tcp 127.0.0.1:2379: bind: address already in use"
        ));
        assert!(!says_addr_in_use("error: invalid value for --capacity"));
    }
}
