//! Workspace binaries run as separate OS processes, killed when the test ends.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

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
#[derive(Debug)]
pub struct Child {
    inner: Option<std::process::Child>,
    name: String,
}

impl Child {
    /// Spawns `cmd`; panics with `name` if it cannot start.
    pub fn spawn(mut cmd: Command, name: &str) -> Self {
        let inner = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            inner: Some(inner),
            name: name.to_owned(),
        }
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
            let _ = c.wait();
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
                Ok(Some(status)) => return status.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return None;
                }
            }
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.inner
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
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
