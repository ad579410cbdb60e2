//! The quantized linear layer on wgpu: `x · dequant(W)ᵀ (+ b)` in one WGSL kernel that
//! dequantizes the blockwise 8-/4-bit codes of [`BlockWeight`] while staging them in workgroup
//! memory and accumulates in f32. Two tilings ([`Tile`]): `shaders/qmatmul.wgsl` (64×64 per
//! workgroup, 4×4 per invocation) and `shaders/qmatmul_wide.wgsl` (128×128, 8×8); both fit
//! WebGPU's default 16 KiB of workgroup memory. [`Tile::for_shape`] picks one per call.
//!
//! The twin is [`BlockWeight::dequantize`] followed by Burn's matmul (what `Linear::forward`
//! does on the CPU); `tests/native/kernels.rs` and `tests/web_kernels.rs` hold the two equal.

use burn::tensor::{DType, Tensor};

use super::launch::{self, OutputSpec, WgslKernel};
use crate::model::nn::BlockWeight;
use crate::weights::BLOCK;

/// The WGSL source of the 64×64 tiling.
pub const SOURCE: &str = include_str!("../../shaders/qmatmul.wgsl");
/// The WGSL source of the 128×128 tiling.
pub const SOURCE_WIDE: &str = include_str!("../../shaders/qmatmul_wide.wgsl");

/// The kernel's tiling of `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tile {
    /// 64×64 per workgroup, 4×4 per invocation (`shaders/qmatmul.wgsl`): more workgroups,
    /// for short sequences (the text side).
    Square64,
    /// 128×128 per workgroup, 8×8 per invocation (`shaders/qmatmul_wide.wgsl`): half the
    /// workgroup-memory reads per FMA, for long sequences (the image side).
    Wide128,
}

impl Tile {
    /// Rows and columns of `y` per workgroup.
    pub fn size(self) -> usize {
        match self {
            Tile::Square64 => 64,
            Tile::Wide128 => 128,
        }
    }

    /// The tiling for an `[M, K] · [K, N]` product: the wide one once it still gives at least
    /// [`WIDE_MIN_WORKGROUPS`] workgroups, which keeps a large GPU busy.
    pub fn for_shape(m: usize, n: usize) -> Tile {
        let wide = m.div_ceil(128) * n.div_ceil(128);
        if wide >= WIDE_MIN_WORKGROUPS {
            Tile::Wide128
        } else {
            Tile::Square64
        }
    }
}

/// The fewest 128×128 workgroups for which [`Tile::for_shape`] picks the wide tiling: a few
/// per multiprocessor of a large GPU (an H100 has 132).
pub const WIDE_MIN_WORKGROUPS: usize = 512;

/// Whether [`qmatmul`] can run `x · dequant(w)ᵀ`: `x` on a wgpu device, f32 activations and
/// scales, 32-bit code words, 8 or 4 bits.
pub fn supported<const D: usize>(x: &Tensor<D>, w: &BlockWeight) -> bool {
    launch::is_wgpu(&x.device())
        && x.dtype() == DType::F32
        && w.scales.val().dtype() == DType::F32
        && matches!(w.words.val().dtype(), DType::I32 | DType::U32)
        && matches!(w.bits, 8 | 4)
}

/// `x · dequant(w)ᵀ + bias` with the WGSL kernel in the tiling [`Tile::for_shape`] picks
/// (call only where [`supported`]).
///
/// - x: `[..., K]`, w: `[N, K]` (blockwise), bias: `[N]` → `[..., N]`
///
/// # Panics
///
/// When `K` differs from the weight's `d_in` or is not a multiple of 32.
pub fn qmatmul<const D: usize>(
    x: Tensor<D>,
    w: &BlockWeight,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let dims = x.dims();
    let m: usize = dims[..D - 1].iter().product();
    let n = w.scales.dims()[0];
    qmatmul_tiled(x, w, bias, Tile::for_shape(m, n))
}

/// [`qmatmul`] in a given tiling.
///
/// - x: `[..., K]`, w: `[N, K]` (blockwise), bias: `[N]` → `[..., N]`
///
/// # Panics
///
/// When `K` differs from the weight's `d_in` or is not a multiple of 32.
pub fn qmatmul_tiled<const D: usize>(
    x: Tensor<D>,
    w: &BlockWeight,
    bias: Option<Tensor<1>>,
    tile: Tile,
) -> Tensor<D> {
    let dims = x.dims();
    let k = dims[D - 1];
    let m: usize = dims[..D - 1].iter().product();
    let [n, blocks] = w.scales.dims();
    let [_, row_words] = w.words.dims();
    assert_eq!(
        blocks * BLOCK,
        k,
        "qmatmul: x has K = {k}, the weight d_in = {}",
        blocks * BLOCK
    );
    assert_eq!(
        row_words,
        blocks * w.bits as usize,
        "qmatmul: words per row"
    );

    let x2: Tensor<2> = x.reshape([m, k]);
    let scales = w.scales.val();
    let has_bias = bias.is_some();
    // Binding 3 must be bound to a buffer of its own (no aliasing of writable bindings in
    // WebGPU); without a bias a one-element one stands in, never read.
    let bias = bias.unwrap_or_else(|| Tensor::<1>::zeros([1], &scales.device()));
    let (name, source) = match tile {
        Tile::Square64 => ("qmatmul", SOURCE),
        Tile::Wide128 => ("qmatmul_wide", SOURCE_WIDE),
    };
    let kernel = WgslKernel::new(name, source, "main", [16, 16, 1])
        .with_const("BITS", w.bits)
        .with_const("HAS_BIAS", has_bias as u32);
    let size = tile.size();
    let grid = [n.div_ceil(size) as u32, m.div_ceil(size) as u32, 1];
    let mut out = launch::launch(
        kernel,
        vec![
            x2.into_dispatch(),
            w.words.val().into_dispatch(),
            scales.into_dispatch(),
            bias.into_dispatch(),
        ],
        vec![OutputSpec {
            shape: vec![m, n],
            dtype: DType::F32,
        }],
        vec![m as u32, n as u32, k as u32],
        grid,
    );
    let y = Tensor::<2>::from_dispatch(out.remove(0));
    let mut out_dims = dims;
    out_dims[D - 1] = n;
    y.reshape(out_dims)
}

/// The plain-Burn twin of [`qmatmul`]: [`BlockWeight::dequantize`] then Burn's linear (any
/// backend; what the CPU runs).
///
/// - x: `[..., K]`, w: `[N, K]` (blockwise), bias: `[N]` → `[..., N]`
pub fn twin<const D: usize>(x: Tensor<D>, w: &BlockWeight, bias: Option<Tensor<1>>) -> Tensor<D> {
    burn::tensor::module::linear(x, w.dequantize().transpose(), bias)
}

/// One seeded comparison case: `x` `[batch..., K]` (leading dims flattened into M by the kernel),
/// a random `[N, K]` matrix quantized to `bits`, with or without a bias.
#[derive(Debug, Clone, PartialEq)]
pub struct TwinCase {
    /// Leading dims of `x` (their product is M).
    pub lead: Vec<usize>,
    /// `d_in`, a multiple of 32.
    pub k: usize,
    /// `d_out`.
    pub n: usize,
    /// 8 or 4.
    pub bits: u32,
    /// Whether the layer has a bias.
    pub bias: bool,
    /// Seed of x, W and the bias.
    pub seed: u64,
    /// The WGSL kernel in this tiling, or `None` for `Linear::forward` of a layer made by
    /// `Linear::from_blocks` (on wgpu: Burn's quantized matmul on the same values, the form
    /// the models run; held to the same twins and tolerance).
    pub tile: Option<Tile>,
}

impl TwinCase {
    /// The cases both test suites run: ragged M and N (not multiples of either tile), one and
    /// two leading dims, K from one block to several tiles, both bit widths, with and without
    /// bias; each WGSL tiling on some, `Linear::forward` (Burn's quantized matmul on wgpu) on
    /// the rest.
    pub fn standard() -> Vec<TwinCase> {
        let case = |lead: &[usize], k, n, bits, bias, seed, tile| TwinCase {
            lead: lead.to_vec(),
            k,
            n,
            bits,
            bias,
            seed,
            tile,
        };
        let (square, wide) = (Some(Tile::Square64), Some(Tile::Wide128));
        vec![
            case(&[1], 32, 1, 8, false, 1, None),
            case(&[1], 32, 1, 4, true, 2, wide),
            case(&[67], 96, 130, 8, true, 3, wide),
            case(&[67], 96, 130, 4, true, 4, square),
            case(&[130], 256, 65, 8, false, 5, square),
            case(&[130], 256, 65, 4, false, 6, wide),
            case(&[2, 37], 512, 200, 8, true, 7, wide),
            case(&[2, 37], 512, 200, 4, false, 8, None),
            case(&[64], 64, 64, 8, false, 9, None),
            case(&[300], 1024, 96, 4, true, 10, None),
            case(&[2, 1030], 32, 4100, 8, true, 11, wide),
        ]
    }
}

/// How far the kernel is from its twins and from an f64 host reference, as
/// `max |a − b| / max |reference|` (relative to the output's scale).
#[derive(Debug, Clone, PartialEq)]
pub struct TwinCheck {
    /// The case.
    pub case: TwinCase,
    /// Kernel vs the twin on the CPU (Flex).
    pub vs_twin_cpu: f32,
    /// Kernel vs the f64 reference on the host.
    pub kernel_vs_f64: f32,
    /// CPU twin vs the f64 reference (what f32 rounding alone costs).
    pub twin_cpu_vs_f64: f32,
    /// `max |reference|`.
    pub scale: f64,
}

impl TwinCheck {
    /// An error message when any kernel error exceeds `tol`.
    pub fn within(&self, tol: f32) -> std::result::Result<(), String> {
        let worst = self.vs_twin_cpu.max(self.kernel_vs_f64);
        if worst <= tol {
            Ok(())
        } else {
            Err(format!("qmatmul error {worst:e} over {tol:e}: {self:?}"))
        }
    }
}

/// Runs `case` through the kernel on `gpu` (the WGSL kernel in the case's tiling, or
/// `Linear::forward`), the twin on the CPU, and an f64 host reference; reads back
/// asynchronously (works in the browser). The twin is not also run on `gpu`: that is Burn's f32
/// matmul, which `gpu_native` holds to the CPU backend, and on a software driver each new shape
/// costs several kernel compilations (seconds each on lavapipe) for no extra coverage.
pub async fn twin_check(gpu: &burn::tensor::Device, case: TwinCase) -> crate::Result<TwinCheck> {
    use crate::gpu::{read_f32, seeded_values};
    use crate::model::nn::Linear;
    use crate::weights::QuantizedMatrix;
    use burn::module::Param;
    use burn::tensor::TensorData;

    let TwinCase {
        ref lead,
        k,
        n,
        bits,
        bias,
        seed,
        tile: _,
    } = case;
    let m: usize = lead.iter().product();
    let xs = seeded_values(seed, m * k);
    let ws: Vec<f32> = seeded_values(seed + 1, n * k)
        .into_iter()
        .map(|v| v * 0.1)
        .collect();
    let bs = bias.then(|| seeded_values(seed + 2, n));
    let q = QuantizedMatrix::quantize(&ws, n, k, bits).map_err(crate::Error::Gpu)?;

    // f64 reference from the exact dequantized values.
    let wd = q.dequantize();
    let mut reference = vec![0f64; m * n];
    for (i, row) in reference.chunks_exact_mut(n).enumerate() {
        for (j, out) in row.iter_mut().enumerate() {
            let mut acc: f64 = bs.as_ref().map_or(0.0, |b| b[j] as f64);
            for kk in 0..k {
                acc += xs[i * k + kk] as f64 * wd[j * k + kk] as f64;
            }
            *out = acc;
        }
    }

    let x_dims: Vec<usize> = lead.iter().copied().chain([k]).collect();
    let layer = |device: &burn::tensor::Device| {
        let b = bs.as_ref().map(|b| {
            Param::from_tensor(Tensor::<1>::from_data(
                TensorData::new(b.clone(), [n]),
                device,
            ))
        });
        let x = Tensor::<3>::from_data(TensorData::new(xs.clone(), pad3(&x_dims)), device);
        (Linear::from_blocks(q.clone(), b, device), x)
    };

    let (gpu_layer, x) = layer(gpu);
    let blocks = crate::model::nn::BlockWeight::new(q.clone(), gpu);
    let w = &blocks;
    if !supported(&x, w) {
        return Err(crate::Error::Gpu(format!(
            "qmatmul is not supported on {gpu:?}"
        )));
    }
    let out = match case.tile {
        None => gpu_layer.forward(x),
        Some(tile) => qmatmul_tiled(x, w, gpu_layer.bias.as_ref().map(|b| b.val()), tile),
    };
    let kernel = read_f32(out, "qmatmul output", gpu).await?;
    let cpu = burn::tensor::Device::flex();
    let (cpu_layer, x) = layer(&cpu);
    let twin_cpu = read_f32(cpu_layer.forward(x), "qmatmul twin output", &cpu).await?;

    let scale = reference
        .iter()
        .fold(0f64, |a, v| a.max(v.abs()))
        .max(1e-30);
    let rel = |a: &[f32], b: &[f32]| -> f32 {
        let worst = a
            .iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, |m, e| if e.is_nan() { f32::NAN } else { m.max(e) });
        (worst as f64 / scale) as f32
    };
    let rel64 = |a: &[f32]| -> f32 {
        let worst = a
            .iter()
            .zip(&reference)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0f64, |m, e| if e.is_nan() { f64::NAN } else { m.max(e) });
        (worst / scale) as f32
    };
    if kernel.len() != m * n {
        return Err(crate::Error::Gpu(format!(
            "qmatmul output has {} values, expected {}",
            kernel.len(),
            m * n
        )));
    }
    Ok(TwinCheck {
        vs_twin_cpu: rel(&kernel, &twin_cpu),
        kernel_vs_f64: rel64(&kernel),
        twin_cpu_vs_f64: rel64(&twin_cpu),
        scale,
        case,
    })
}

/// `[a, b, k]` from 1–2 leading dims plus `k`.
fn pad3(dims: &[usize]) -> [usize; 3] {
    match dims {
        [k] => [1, 1, *k],
        [m, k] => [1, *m, *k],
        [a, b, k] => [*a, *b, *k],
        _ => panic!("twin cases have at most two leading dims, got {dims:?}"),
    }
}
