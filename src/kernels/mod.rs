//! Hand-written GPU kernels (WGSL in `shaders/`), each with a plain-Burn twin.

pub mod attention;
