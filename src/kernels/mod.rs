//! Hand-written WGSL compute kernels (sources in `shaders/`) for the wgpu backend, each with a
//! plain-Burn twin that the tests hold it equal to.
//!
//! - [`launch`]: the plumbing from Burn tensors to a precompiled WGSL launch and back.
//! - [`attention`]: flash-style attention (online softmax) for the transformer.
//! - [`qmatmul`]: the blockwise 8-/4-bit quantized linear layer (`shaders/qmatmul.wgsl`).

pub mod attention;
pub mod launch;
pub mod qmatmul;
