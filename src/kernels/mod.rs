//! Hand-written WGSL compute kernels (sources in `shaders/`) for the wgpu backend, each with a
//! plain-Burn twin that the tests hold it equal to.
//!
//! - [`launch`]: the plumbing from Burn tensors to a precompiled WGSL launch and back.

pub mod launch;
