//! How many threads host-side weight conversion (widening, quantizing) may use: the CPU's
//! threads natively, one in the browser (wasm has no threads here).

/// Values a worker should have at least for a thread to be worth starting (a thread costs
/// tens of microseconds; widening or quantizing 64 Ki values takes about as long).
pub(super) const MIN_VALUES_PER_WORKER: usize = 1 << 16;

/// The workers to convert `values` values with: at most the CPU's threads, at least one, and
/// none with fewer than [`MIN_VALUES_PER_WORKER`] values. Always 1 on wasm.
pub(super) fn worker_count(values: usize) -> usize {
    (values / MIN_VALUES_PER_WORKER).clamp(1, threads())
}

/// Runs `work` on every part: all but the last on scoped threads natively, the last on this
/// thread; one after another on wasm.
pub(super) fn run_parts<T: Send>(parts: Vec<T>, work: impl Fn(T) + Sync) {
    #[cfg(not(target_arch = "wasm32"))]
    std::thread::scope(|s| {
        let work = &work;
        let mut parts = parts.into_iter().peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_some() {
                s.spawn(move || work(part));
            } else {
                work(part);
            }
        }
    });
    #[cfg(target_arch = "wasm32")]
    parts.into_iter().for_each(work);
}

#[cfg(not(target_arch = "wasm32"))]
fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(target_arch = "wasm32")]
fn threads() -> usize {
    1
}
