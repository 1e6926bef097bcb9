//! CPU use in cores, from `/proc/stat` deltas: what the sidecar reports when the gateway
//! does not answer `--load-url` (the whole host, which is the gateway's when it runs alone).

/// Busy and total jiffies from the aggregate `cpu` line, and the number of CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Jiffies not idle or waiting on I/O.
    pub busy: u64,
    /// All jiffies.
    pub total: u64,
    /// `cpuN` lines: cores the host has.
    pub cpus: u32,
}

/// Parses the text of `/proc/stat`; `None` when there is no aggregate `cpu` line.
pub fn parse_stat(text: &str) -> Option<Sample> {
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
pub fn cores_between(earlier: &Sample, later: &Sample) -> f64 {
    let total = later.total.saturating_sub(earlier.total);
    if total == 0 {
        return 0.0;
    }
    let busy = later.busy.saturating_sub(earlier.busy);
    busy as f64 / total as f64 * f64::from(later.cpus)
}

/// Reads `/proc/stat` now.
pub fn sample() -> Option<Sample> {
    parse_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
