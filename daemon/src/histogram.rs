//! A fixed-bucket histogram of relaxed atomics: the writer observes into
//! it, and the metrics render it. A scrape may see one bucket a sample
//! ahead of the sum, never a torn value.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A fixed-bucket histogram: counts per upper bound, a sum and a count.
pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// One more than `bounds`: the last is +Inf.
    counts: Vec<AtomicU64>,
    /// Sum of observations, in millionths of the unit.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }

    pub(crate) fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// (upper bound, count in that bucket); the last bound is +Inf.
    pub(crate) fn buckets(&self) -> Vec<(f64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    self.bounds.get(i).copied().unwrap_or(f64::INFINITY),
                    c.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// The upper bound of the bucket holding quantile `q`; 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        let buckets = self.buckets();
        let total: u64 = buckets.iter().map(|b| b.1).sum();
        if total == 0 {
            return 0.0;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bound, n) in &buckets {
            seen += n;
            if seen >= rank {
                return if bound.is_finite() {
                    *bound
                } else {
                    self.bounds.last().copied().unwrap_or(0.0)
                };
            }
        }
        0.0
    }

    pub(crate) fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.buckets() {
            cumulative += n;
            let le = if bound.is_finite() {
                format!("{bound}")
            } else {
                "+Inf".to_owned()
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[f64] = &[
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
    ];

    #[test]
    fn histogram_buckets_quantiles_and_text() {
        let h = Histogram::new(BOUNDS);
        for v in [1.0, 3.0, 3.0, 20.0, 5000.0] {
            h.observe(v);
        }
        assert_eq!(h.buckets().iter().map(|b| b.1).sum::<u64>(), 5);
        assert_eq!(h.quantile(0.5), 4.0);
        assert_eq!(h.quantile(0.99), 1024.0);
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"4\"} 3\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 5\n"), "{s}");
        assert!(s.contains("x_count 5\n"), "{s}");
        assert!(s.contains("x_sum 5027\n"), "{s}");
    }
}
