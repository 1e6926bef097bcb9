//! Health probes for the sidecar — `tcp://host:port` (connects), `http(s)://…` (2xx),
//! `exec:<command>` (exit 0) — and the rise/fall thresholds that turn single results into a
//! steady health verdict.

use std::time::Duration;

use tracing::debug;

use super::http::{self, Target};

/// Why a probe specification was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Not one of the three forms.
    #[error("probe {0:?} is not tcp://host:port, http(s)://host[:port]/path or exec:<command>")]
    Unknown(String),
    /// `http(s)://` that does not parse.
    #[error(transparent)]
    Url(#[from] http::HttpError),
}

/// A parsed probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Healthy when a TCP connection opens.
    Tcp(String),
    /// Healthy on a 2xx answer.
    Http(Target),
    /// Healthy when `sh -c <command>` exits 0.
    Exec(String),
}

impl Probe {
    /// Parses a probe specification.
    pub fn parse(spec: &str) -> Result<Self, ProbeError> {
        if let Some(addr) = spec.strip_prefix("tcp://") {
            let ok = addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            return if ok {
                Ok(Self::Tcp(addr.to_owned()))
            } else {
                Err(ProbeError::Unknown(spec.to_owned()))
            };
        }
        if spec.starts_with("http://") || spec.starts_with("https://") {
            return Ok(Self::Http(Target::parse(spec)?));
        }
        if let Some(cmd) = spec.strip_prefix("exec:")
            && !cmd.trim().is_empty()
        {
            return Ok(Self::Exec(cmd.to_owned()));
        }
        Err(ProbeError::Unknown(spec.to_owned()))
    }

    /// Runs the probe once; false on failure or when `timeout` passes.
    pub async fn check(&self, timeout: Duration) -> bool {
        let result = tokio::time::timeout(timeout, self.check_inner()).await;
        match result {
            Ok(Ok(())) => true,
            Ok(Err(reason)) => {
                debug!(probe = ?self, %reason, "probe failed");
                false
            }
            Err(_) => {
                debug!(probe = ?self, ?timeout, "probe timed out");
                false
            }
        }
    }

    async fn check_inner(&self) -> Result<(), String> {
        match self {
            Self::Tcp(addr) => tokio::net::TcpStream::connect(addr.as_str())
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Self::Http(target) => match http::get(target).await {
                Ok((status, _)) if status.is_success() => Ok(()),
                Ok((status, _)) => Err(format!("status {status}")),
                Err(e) => Err(e.to_string()),
            },
            Self::Exec(cmd) => {
                // kill_on_drop: a command still running at the timeout is killed.
                let status = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await
                    .map_err(|e| e.to_string())?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("exited with {status}"))
                }
            }
        }
    }
}

/// Rise/fall hysteresis: `rise` consecutive successes make an unhealthy gateway healthy,
/// `fall` consecutive failures make a healthy one unhealthy. The first result decides the
/// initial verdict, so a gateway that is up registers as serving without waiting.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    /// Successes needed to become healthy.
    rise: u32,
    /// Failures needed to become unhealthy.
    fall: u32,
    /// The verdict; `None` before the first result.
    healthy: Option<bool>,
    /// Consecutive results against the verdict.
    streak: u32,
}

impl Health {
    /// Thresholds of at least 1.
    pub(crate) fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy: None,
            streak: 0,
        }
    }

    /// Feeds one result; returns the verdict after it.
    pub(crate) fn observe(&mut self, ok: bool) -> bool {
        let Some(healthy) = self.healthy else {
            self.healthy = Some(ok);
            return ok;
        };
        if ok == healthy {
            self.streak = 0;
            return healthy;
        }
        self.streak += 1;
        let needed = if healthy { self.fall } else { self.rise };
        if self.streak >= needed {
            self.healthy = Some(ok);
            self.streak = 0;
        }
        self.healthy.unwrap_or(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_explain() {
        assert_eq!(
            Probe::parse("tcp://127.0.0.1:7200").unwrap(),
            Probe::Tcp("127.0.0.1:7200".into())
        );
        assert!(matches!(
            Probe::parse("http://127.0.0.1:8080/healthz").unwrap(),
            Probe::Http(_)
        ));
        assert_eq!(
            Probe::parse("exec:test -f /tmp/up").unwrap(),
            Probe::Exec("test -f /tmp/up".into())
        );
        for bad in [
            "tcp://nohost",
            "tcp://h:0",
            "exec: ",
            "udp://x:1",
            "127.0.0.1:80",
        ] {
            let e = Probe::parse(bad).unwrap_err();
            assert!(e.to_string().contains("is not"), "{bad}: {e}");
        }
    }

    #[test]
    fn rise_and_fall_need_streaks() {
        let mut h = Health::new(2, 3);
        assert!(h.observe(true));
        assert!(h.observe(false));
        assert!(h.observe(false));
        assert!(h.observe(true), "a success resets the failure streak");
        assert!(h.observe(false));
        assert!(h.observe(false));
        assert!(!h.observe(false), "third failure in a row");
        assert!(!h.observe(true));
        assert!(h.observe(true), "second success in a row");
    }

    #[test]
    fn the_first_result_decides() {
        assert!(!Health::new(2, 3).observe(false));
        assert!(Health::new(2, 3).observe(true));
    }

    #[tokio::test]
    async fn probes_check_real_things() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let t = Duration::from_secs(1);
        assert!(Probe::Tcp(addr.to_string()).check(t).await);
        drop(listener);
        assert!(!Probe::Tcp(addr.to_string()).check(t).await);
        assert!(Probe::Exec("true".into()).check(t).await);
        assert!(!Probe::Exec("exit 3".into()).check(t).await);
        let slow = Probe::Exec("sleep 5".into());
        let started = std::time::Instant::now();
        assert!(!slow.check(Duration::from_millis(100)).await);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
