//! Percentiles and summaries, and how a process-driving driver ends with its summary line.

use std::future::Future;
use std::time::Duration;

/// Runs a driver to its one-line summary and prints it. Ctrl-C ends the run early; either
/// way `run` is dropped before the process exits, which stops every process it started
/// (the harness kills children on drop). An error prints `name: error="…"` (still one
/// line a script can parse) and exits 1.
pub async fn finish<F>(name: &str, run: F)
where
    F: Future<Output = anyhow::Result<String>>,
{
    let outcome = tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; every process started is stopped")),
    };
    match outcome {
        Ok(summary) => println!("{summary}"),
        Err(e) => {
            println!("{name}: error={:?}", format!("{e:#}"));
            std::process::exit(1);
        }
    }
}

/// The `q` quantile (0.0–1.0) of `values` by nearest rank; `None` when empty.
pub fn quantile(values: &[Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// `p50=…ms p99=…ms max=…ms` for a set of durations (`-` when empty).
pub fn latency_summary(values: &[Duration]) -> String {
    let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{}", d.as_millis()));
    format!(
        "p50={}ms p99={}ms max={}ms",
        ms(quantile(values, 0.5)),
        ms(quantile(values, 0.99)),
        ms(quantile(values, 1.0))
    )
}

/// Largest count over the mean count (1.0 = perfectly even); `None` when there is nothing.
pub fn max_over_mean<I: IntoIterator<Item = usize>>(counts: I) -> Option<f64> {
    let counts: Vec<usize> = counts.into_iter().collect();
    let total: usize = counts.iter().sum();
    if counts.is_empty() || total == 0 {
        return None;
    }
    let mean = total as f64 / counts.len() as f64;
    Some(*counts.iter().max()? as f64 / mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&v, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(latency_summary(&[]), "p50=-ms p99=-ms max=-ms");
    }

    #[test]
    fn balance_ratio() {
        assert_eq!(max_over_mean([10, 10, 10]), Some(1.0));
        assert_eq!(max_over_mean([20, 10, 0]), Some(2.0));
        assert_eq!(max_over_mean([0, 0]), None);
    }
}
