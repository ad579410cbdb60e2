//! Flash-style attention in hand-written WGSL (`shaders/flash_attention.wgsl`): softmax(q·kᵀ/√Dh)·v
//! tile by tile with an online softmax in f32, never storing the `[S_q, S_kv]` scores.
//!
//! [`attention`] runs the kernel on wgpu devices and Burn's own attention everywhere else, so the
//! CPU (Flex) path is unchanged. [`attention_reference`] is the kernel's plain-Burn twin
//! (matmul → softmax → matmul). Tests holding the two equal: `tests/native/kernels_attention.rs`
//! (native wgpu) and `tests/web_kernels_attention.rs` (WebGPU in headless Chromium).
//!
//! The launch goes through [`super::launch`] (a lazy custom op inside fusion natively, a direct
//! launch in the browser; no GPU read either way).

use burn::tensor::activation::softmax;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor};

use super::launch::{OutputSpec, WgslKernel, is_wgpu, launch};
use crate::error::{Error, Result};

/// The WGSL source; `const HEAD_DIM: u32` is prepended per head size (one pipeline each).
const SOURCE: &str = include_str!("../../shaders/flash_attention.wgsl");
/// Query rows per workgroup (`BR` in the shader).
const ROWS_PER_WORKGROUP: usize = 32;
/// Threads per query row (`T` in the shader).
const THREADS_PER_ROW: usize = 4;
/// Largest head size the kernel's workgroup memory is sized for.
pub const MAX_HEAD_DIM: usize = 128;

/// Plain-Burn attention, the kernel's twin: `softmax(q·kᵀ / √Dh) · v`, materializing the scores.
///
/// - q: `[B, H, S_q, Dh]`, k, v: `[B, H, S_kv, Dh]` -> `[B, H, S_q, Dh]`
pub fn attention_reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let head_dim = q.dims()[3];
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(1.0 / (head_dim as f64).sqrt()); // [B, H, S_q, S_kv]
    softmax(scores, 3).matmul(v)
}

/// [`attention_reference`] over runs of query rows, so that the scores held at once
/// (`[B, H, rows, S_kv]` f32) stay within `max_scores_bytes`: Burn's matmul and softmax, no
/// custom kernel, and never the whole `[S_q, S_kv]` matrix (unless it fits the limit). Each
/// run's rows are independent, so the result is the reference's row for row.
///
/// - q: `[B, H, S_q, Dh]`, k, v: `[B, H, S_kv, Dh]` -> `[B, H, S_q, Dh]`
pub fn chunked_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    max_scores_bytes: usize,
) -> Tensor<4> {
    let [b, h, s_q, _] = q.dims();
    let s_kv = k.dims()[2];
    let row_bytes = (b * h * s_kv * 4).max(1);
    let rows = (max_scores_bytes / row_bytes).clamp(1, s_q.max(1));
    if rows >= s_q {
        return attention_reference(q, k, v);
    }
    let runs = (0..s_q)
        .step_by(rows)
        .map(|start| {
            let q_run = q.clone().narrow(2, start, rows.min(s_q - start));
            attention_reference(q_run, k.clone(), v.clone())
        })
        .collect();
    Tensor::cat(runs, 2)
}

/// Non-causal, unmasked attention within a bound on the scores held at once: on wgpu,
/// [`chunked_attention`] when `max_scores_bytes` is given (Burn's matmul and softmax, 3.7×
/// faster than the flash kernel at the real size on an H200 with 1 GiB runs; BENCHMARKS.md),
/// else [`attention`] (the flash kernel, no scores stored). On the CPU, Burn's attention either
/// way.
///
/// - q: `[B, H, S_q, Dh]`, k, v: `[B, H, S_kv, Dh]` -> `[B, H, S_q, Dh]`
pub fn attention_within(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    max_scores_bytes: Option<usize>,
) -> Tensor<4> {
    match max_scores_bytes {
        Some(bytes) if is_wgpu(&q.device()) => chunked_attention(q, k, v, bytes),
        _ => attention(q, k, v),
    }
}

/// Non-causal, unmasked attention: the WGSL kernel where [`kernel_supports`] says so, else
/// Burn's own `attention` (the CPU path and any other device stay as they were).
///
/// - q: `[B, H, S_q, Dh]`, k, v: `[B, H, S_kv, Dh]` (any strides) -> `[B, H, S_q, Dh]`
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    if kernel_supports(&q, &k, &v) {
        // Errs only past u32 indexing (over 4G elements).
        if let Ok(out) = flash_attention(q.clone(), k.clone(), v.clone()) {
            return out;
        }
    }
    burn::tensor::module::attention(q, k, v, None, None, AttentionModuleOptions::default())
}

/// Whether [`flash_attention`] takes these tensors: f32 on a wgpu device, matching batch, heads
/// and head size, `Dh` a multiple of 4 up to [`MAX_HEAD_DIM`], non-empty sequences.
pub fn kernel_supports(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> bool {
    let ([b, h, s_q, dh], [kb, kh, s_kv, kd]) = (q.dims(), k.dims());
    let shapes_ok = v.dims() == k.dims()
        && [kb, kh, kd] == [b, h, dh]
        && dh % 4 == 0
        && (4..=MAX_HEAD_DIM).contains(&dh)
        && s_q > 0
        && s_kv > 0
        && b > 0
        && h > 0;
    let f32_ok = [q.dtype(), k.dtype(), v.dtype()]
        .iter()
        .all(|d| *d == DType::F32);
    shapes_ok && f32_ok && [q, k, v].iter().all(|t| is_wgpu(&t.device()))
}

/// The WGSL kernel. Errors (with the reason) where [`kernel_supports`] is false.
///
/// - q: `[B, H, S_q, Dh]`, k, v: `[B, H, S_kv, Dh]` (any strides) -> `[B, H, S_q, Dh]` contiguous
pub fn flash_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Result<Tensor<4>> {
    flash_attention_tiled(q, k, v, DEFAULT_KEYS_PER_TILE)
}

/// Keys per tile of [`flash_attention`]: 8 (12 KiB of workgroup memory at `Dh` = 128, within
/// WebGPU's default 16 KiB). 16 keys (24 KiB) ran 2.3× slower on an H200 (BENCHMARKS.md).
pub const DEFAULT_KEYS_PER_TILE: u32 = 8;

/// Workgroup memory of the kernel at `keys` per tile: the key and value tiles, the partial
/// sums, the shared tile count.
pub fn workgroup_bytes(head_dim: usize, keys: u32) -> usize {
    let keys = keys as usize;
    2 * keys * head_dim * 4 + ROWS_PER_WORKGROUP * keys * THREADS_PER_ROW * 4 + 4
}

/// [`flash_attention`] with `keys_per_tile` keys per tile (8 or 16). Errs where the device does
/// not grant its workgroup memory ([`workgroup_bytes`]).
///
/// - q: `[B, H, S_q, Dh]`, k, v: `[B, H, S_kv, Dh]` (any strides) -> `[B, H, S_q, Dh]` contiguous
pub fn flash_attention_tiled(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    keys_per_tile: u32,
) -> Result<Tensor<4>> {
    if !kernel_supports(&q, &k, &v) {
        return Err(Error::Gpu(format!(
            "flash attention: unsupported inputs q {:?} {:?}, k {:?} {:?}, v {:?} {:?} on {:?} \
             (needs f32 on wgpu, equal B/H/Dh, Dh a multiple of 4 and at most {MAX_HEAD_DIM})",
            q.dims(),
            q.dtype(),
            k.dims(),
            k.dtype(),
            v.dims(),
            v.dtype(),
            q.device()
        )));
    }
    let [b, h, s_q, dh] = q.dims();
    let s_kv = k.dims()[2];
    let as_u32 = |x: usize, what: &str| {
        u32::try_from(x)
            .map_err(|_| Error::Gpu(format!("flash attention: {what} = {x} exceeds u32")))
    };
    as_u32(b * h * s_q.max(s_kv) * dh, "elements of q/k/v/out")?;
    let keys = keys_per_tile;
    let granted = super::launch::wgpu_client(&q.device())
        .map_or(0, |c| c.properties().hardware.max_shared_memory_size);
    if ![8, 16].contains(&keys) || workgroup_bytes(dh, keys) > granted {
        return Err(Error::Gpu(format!(
            "flash attention: {keys} keys per tile need {} bytes of workgroup memory at head \
             size {dh}; the device grants {granted} (and the kernel takes 8 or 16)",
            workgroup_bytes(dh, keys)
        )));
    }

    // Params, as laid out in the shader (2 × vec4, 32 bytes); `launch` binds the inputs
    // contiguous, which is the layout the kernel reads.
    let scale = 1.0 / (dh as f32).sqrt();
    let mut params = vec![0u32; 8];
    params[..4].copy_from_slice(&[b as u32, h as u32, s_q as u32, s_kv as u32]);
    params[4] = scale.to_bits();

    let kernel = WgslKernel::new("flash_attention", SOURCE, "flash_attention", [128, 1, 1])
        .with_const("HEAD_DIM", dh as u32)
        .with_const("BC", keys);
    let grid = [
        as_u32(s_q.div_ceil(ROWS_PER_WORKGROUP), "workgroups along S_q")?,
        h as u32,
        b as u32,
    ];
    let out = launch(
        kernel,
        vec![q.into_dispatch(), k.into_dispatch(), v.into_dispatch()],
        vec![OutputSpec {
            shape: vec![b, h, s_q, dh],
            dtype: DType::F32,
        }],
        params,
        grid,
    )
    .pop()
    .ok_or_else(|| Error::Gpu("flash attention: the launch returned no output".into()))?;
    Ok(Tensor::from_dispatch(out))
}
