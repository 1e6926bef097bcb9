//! CPU use in cores: the whole host from `/proc/stat` deltas (what the sidecar reports when
//! the gateway does not answer `--load-url`; the gateway's own when it runs alone), and one
//! process's from `/proc/<pid>/stat` (what the reference gateway reports of itself, so other
//! work on the host neither moves its record nor costs etcd writes).

use std::time::Duration;

/// Busy and total jiffies from the aggregate `cpu` line, and the number of CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Jiffies not idle or waiting on I/O.
    pub(crate) busy: u64,
    /// All jiffies.
    pub(crate) total: u64,
    /// `cpuN` lines: cores the host has.
    pub(crate) cpus: u32,
}

/// Parses the text of `/proc/stat`; `None` when there is no aggregate `cpu` line.
pub(crate) fn parse_stat(text: &str) -> Option<Sample> {
    let mut sample = None;
    let mut cpus = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {
                let values: Vec<u64> = fields.map_while(|f| f.parse().ok()).collect();
                if values.len() < 4 {
                    return None;
                }
                let total: u64 = values.iter().take(8).sum();
                // idle (3) and iowait (4) are not busy.
                let idle = values[3] + values.get(4).copied().unwrap_or(0);
                sample = Some((total - idle, total));
            }
            Some(name) if name.starts_with("cpu") => cpus += 1,
            _ => {}
        }
    }
    let (busy, total) = sample?;
    Some(Sample {
        busy,
        total,
        cpus: cpus.max(1),
    })
}

/// Cores in use between two samples (0 when no time passed).
pub(crate) fn cores_between(earlier: &Sample, later: &Sample) -> f64 {
    let total = later.total.saturating_sub(earlier.total);
    if total == 0 {
        return 0.0;
    }
    let busy = later.busy.saturating_sub(earlier.busy);
    busy as f64 / total as f64 * f64::from(later.cpus)
}

/// Reads `/proc/stat` now.
pub(crate) fn sample() -> Option<Sample> {
    parse_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// `utime + stime` in clock ticks from the text of `/proc/<pid>/stat` (all threads).
pub(crate) fn process_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may itself hold spaces or ')':
    // count fields from the last ')'. After it come field 3 (state) onwards, so utime
    // (field 14) and stime (field 15) are the 12th and 13th.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time (user + system, every thread) process `pid` has used so far.
pub fn process_cpu_time(pid: u32) -> std::io::Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks =
        process_ticks(&text).ok_or_else(|| std::io::Error::other("unparsable /proc/<pid>/stat"))?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// Cores a process used between two readings of its CPU time `wall` apart (0 when no time
/// passed).
pub(crate) fn process_cores(earlier: Duration, later: Duration, wall: Duration) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    later.saturating_sub(earlier).as_secs_f64() / wall.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ticks_survive_odd_command_names() {
        let stat = "4242 (my (odd) gw) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    1234 567 0 0 20 0 3 0 100 1000000 250 18446744073709551615";
        assert_eq!(process_ticks(stat), Some(1234 + 567));
        assert_eq!(process_ticks("4242 (gw) S 1"), None);
        assert!(process_cpu_time(std::process::id()).is_ok());
        let s = Duration::from_secs;
        assert!((process_cores(s(10), s(11), s(2)) - 0.5).abs() < 1e-9);
        assert_eq!(process_cores(s(10), s(11), Duration::ZERO), 0.0);
    }

    #[test]
    fn parses_and_measures_cores() {
        let a = parse_stat(
            "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\n\
             cpu1 50 0 50 350 50 0 0 0 0 0\nintr 1 2 3\n",
        )
        .unwrap();
        assert_eq!(
            a,
            Sample {
                busy: 200,
                total: 1000,
                cpus: 2
            }
        );
        // 100 of 200 jiffies busy on 2 cores = 1 core.
        let b = Sample {
            busy: 300,
            total: 1200,
            cpus: 2,
        };
        assert!((cores_between(&a, &b) - 1.0).abs() < 1e-9);
        assert_eq!(cores_between(&a, &a), 0.0);
        assert!(parse_stat("intr 1 2").is_none());
        assert!(sample().is_some());
    }
}
