//! Download progress as a person reads it: bytes done of total, the rate (smoothed), and the
//! time left.

/// A snapshot of a download's progress (`Default`: nothing counted yet).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Bytes present (verified earlier, resumed, or received now) over all files.
    pub done_bytes: u64,
    /// Bytes of all files.
    pub total_bytes: u64,
    /// Files verified and committed.
    pub files_done: usize,
    /// Files in the plan.
    pub files_total: usize,
    /// The file that last received bytes.
    pub current_file: String,
    /// Bytes per second, smoothed (0 until measured).
    pub rate_bytes_per_s: f64,
    /// Seconds left at the current rate (`None` until a rate is known).
    pub eta_s: Option<f64>,
}

impl Progress {
    /// `done / total` in 0..=1 (1 for an empty plan).
    pub fn fraction(&self) -> f64 {
        if self.total_bytes == 0 {
            1.0
        } else {
            self.done_bytes as f64 / self.total_bytes as f64
        }
    }
}

/// Accumulates received bytes and timestamps into [`Progress`].
#[derive(Debug, Clone)]
pub struct ProgressTracker {
    progress: Progress,
    /// Time and network bytes of the last rate sample.
    last_sample: Option<(f64, u64)>,
    /// Bytes received over the network (not resumed ones), for the rate.
    network_bytes: u64,
}

/// Rate samples closer than this are merged (ms).
const SAMPLE_MS: f64 = 250.0;
/// Weight of a new rate sample in the moving average.
const SMOOTHING: f64 = 0.3;

impl ProgressTracker {
    /// A tracker for `files_total` files of `total_bytes` in all.
    pub fn new(total_bytes: u64, files_total: usize) -> Self {
        Self {
            progress: Progress {
                total_bytes,
                files_total,
                ..Progress::default()
            },
            last_sample: None,
            network_bytes: 0,
        }
    }

    /// Bytes already present before this run (committed or resumed), not counted in the rate.
    pub fn add_present(&mut self, bytes: u64) {
        self.progress.done_bytes =
            (self.progress.done_bytes + bytes).min(self.progress.total_bytes);
    }

    /// Bytes that a failed hash check threw away.
    pub fn remove(&mut self, bytes: u64) {
        self.progress.done_bytes = self.progress.done_bytes.saturating_sub(bytes);
    }

    /// A file was verified and committed.
    pub fn file_done(&mut self) {
        self.progress.files_done += 1;
    }

    /// `bytes` arrived for `file` at `now_ms` (a monotonic clock in milliseconds).
    pub fn received(&mut self, file: &str, bytes: u64, now_ms: f64) {
        self.add_present(bytes);
        self.network_bytes += bytes;
        if self.progress.current_file != file {
            self.progress.current_file = file.to_owned();
        }
        match self.last_sample {
            None => self.last_sample = Some((now_ms, self.network_bytes)),
            Some((t0, b0)) if now_ms - t0 >= SAMPLE_MS => {
                let rate = (self.network_bytes - b0) as f64 * 1000.0 / (now_ms - t0);
                let p = &mut self.progress;
                p.rate_bytes_per_s = if p.rate_bytes_per_s == 0.0 {
                    rate
                } else {
                    SMOOTHING * rate + (1.0 - SMOOTHING) * p.rate_bytes_per_s
                };
                self.last_sample = Some((now_ms, self.network_bytes));
            }
            Some(_) => {}
        }
        let p = &mut self.progress;
        p.eta_s = (p.rate_bytes_per_s > 0.0)
            .then(|| (p.total_bytes - p.done_bytes) as f64 / p.rate_bytes_per_s);
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Progress {
        self.progress.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_follow_the_bytes_over_time() {
        let mut t = ProgressTracker::new(10_000, 2);
        t.add_present(1_000); // resumed: not part of the rate
        t.received("a", 1_000, 0.0);
        assert_eq!(t.snapshot().eta_s, None);
        t.received("a", 1_000, 500.0); // 1000 B in 0.5 s = 2000 B/s
        let p = t.snapshot();
        assert_eq!(p.done_bytes, 3_000);
        assert!((p.rate_bytes_per_s - 2_000.0).abs() < 1e-9);
        assert!((p.eta_s.unwrap() - 3.5).abs() < 1e-9);
        assert!((p.fraction() - 0.3).abs() < 1e-12);
        t.received("b", 4_000, 1_500.0); // 4000 B/s sample, smoothed
        let p = t.snapshot();
        assert!((p.rate_bytes_per_s - (0.3 * 4_000.0 + 0.7 * 2_000.0)).abs() < 1e-9);
        assert_eq!(p.current_file, "b");
        t.remove(4_000);
        assert_eq!(t.snapshot().done_bytes, 3_000);
    }
}
