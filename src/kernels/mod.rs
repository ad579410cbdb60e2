//! Hand-written WGSL compute kernels (sources in `shaders/`) for the wgpu backend, each with a
//! plain-Burn twin that the tests hold it equal to.
//!
//! - [`launch`]: the plumbing from Burn tensors to a precompiled WGSL launch and back.
//! - [`attention`]: flash-style attention (online softmax) for the transformer.
//! - [`qmatmul`]: the blockwise 8-/4-bit quantized linear layer (`shaders/qmatmul.wgsl`,
//!   `shaders/qmatmul_wide.wgsl`). `Linear` on wgpu runs Burn's quantized matmul instead (it
//!   measured faster, BENCHMARKS.md); this kernel stays, twin-tested, for comparison.

pub mod attention;
pub mod launch;
pub mod qmatmul;
