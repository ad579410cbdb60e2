//! Stage marks for profiling a forward pass: `mark("stage")` at the end of each stage of the
//! transformer block. They do nothing unless a hook is installed; `qwen-layered-bench block
//! --profile` installs one that waits for the device at each mark and records the time since the
//! previous one. Waiting at every mark stops GPU work from overlapping and fused kernels from
//! spanning two stages, so a profiled forward is slower than a plain one; the bench prints both.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a hook is called with: the name of the stage that just ended.
pub type Hook = Box<dyn Fn(&'static str) + Send + Sync>;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static HOOK: RwLock<Option<Hook>> = RwLock::new(None);

/// Ends the stage `stage`: calls the installed hook, if any (one relaxed load otherwise).
pub fn mark(stage: &'static str) {
    if !ACTIVE.load(Ordering::Relaxed) {
        return;
    }
    if let Ok(hook) = HOOK.read()
        && let Some(hook) = hook.as_ref()
    {
        hook(stage);
    }
}

/// Installs `hook` (or removes the current one with `None`) for every later [`mark`].
pub fn set_hook(hook: Option<Hook>) {
    let active = hook.is_some();
    if let Ok(mut slot) = HOOK.write() {
        *slot = hook;
    }
    ACTIVE.store(active, Ordering::Relaxed);
}
