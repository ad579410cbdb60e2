//! The few layers the models share: RMSNorm with weight, LayerNorm without affine, the
//! GELU(tanh) feed-forward, and the SiLU-then-Linear of diffusers' `nn.Sequential(SiLU, Linear)`.

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::{gelu_approximate, silu};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::Result;
use crate::weights::{BLOCK, QuantizedMatrix, TensorLoader, WeightSource};

/// The linear layer every model uses (`torch.nn.Linear`), in whichever precision it was loaded:
/// f32, or blockwise 8-/4-bit codes with f16 scales ([`QuantizedMatrix`]'s layout). Models name
/// it through this path only and build it with [`TensorLoader::linear`]; one `forward` serves
/// both.
#[derive(Module, Debug)]
pub struct Linear {
    /// The weight.
    pub weight: LinearWeight,
    /// `[d_out]`, checkpoint key `{prefix}.bias`.
    pub bias: Option<Param<Tensor<1>>>,
}

/// The weight of a [`Linear`].
#[derive(Module, Debug)]
pub enum LinearWeight {
    /// `[d_in, d_out]` (Burn's layout: the transposed checkpoint matrix).
    F32(Param<Tensor<2>>),
    /// Blockwise-quantized `[d_out, d_in]` (the checkpoint's layout) as packed codes and scales:
    /// the CPU's form (dequantized with plain Burn ops, [`BlockWeight::dequantize`]) and the
    /// input of the WGSL kernel [`crate::kernels::qmatmul`].
    Blocks(BlockWeight),
    /// The same values as Burn's own quantized tensor: the form on wgpu devices, multiplied as
    /// [`quantized_matmul`] says (Burn's quantized matmul, measured 8–9× faster than the WGSL
    /// kernel, or dequantized to f32 per call; BENCHMARKS.md).
    Quantized(QuantWeight),
    /// The weight split by output rows into parts that each fit one GPU buffer (the memory
    /// plan's `SplitRows`, made by [`TensorLoader::linear`] when a loader has a
    /// [`LinearLoad::max_part_bytes`](crate::weights::LinearLoad) limit, and by
    /// [`Linear::from_blocks`] for dequantized 4-bit weights): part `p` holds consecutive rows
    /// `[r_p, r_{p+1})` of `[d_out, d_in]` as an `F32`, `Blocks` or `Quantized` weight, and the
    /// layer's output is the parts' outputs concatenated along the last axis.
    Rows(Vec<LinearWeight>),
}

/// A `[d_out, d_in]` matrix as packed codes and scales on the device (see
/// [`crate::weights::QuantizedMatrix`]): value `= scale · (code − 2^(bits−1))`, one scale per
/// 32 consecutive values along `d_in`.
#[derive(Module, Debug)]
pub struct BlockWeight {
    /// `[d_out, d_in · bits / 32]`: the `u32` code words (bit patterns stored as `i32`).
    pub words: Param<Tensor<2, Int>>,
    /// `[d_out, d_in / 32]`: the f16 scales (held as f32, the same values).
    pub scales: Param<Tensor<2>>,
    /// 8 or 4.
    #[module(skip)]
    pub bits: u32,
}

/// A blockwise-quantized `[d_out, d_in]` matrix as one Burn quantized tensor
/// (`DType::QFloat`): symmetric 8-/4-bit values, one f32 scale per 32 consecutive values along
/// `d_in`, the values packed into `u32` words along `d_in`, first value in the lowest bits, each
/// in two's complement. The values are [`QuantizedMatrix`]'s exactly: its offset codes
/// (`code − 2^(bits−1)`) are the same numbers, re-encoded by flipping each code's top bit.
#[derive(Module, Debug)]
pub struct QuantWeight {
    /// `[d_out, d_in]`, quantized.
    pub q: Param<Tensor<2>>,
    /// 8 or 4.
    #[module(skip)]
    pub bits: u32,
}

/// How a [`LinearWeight::Quantized`] weight is multiplied on wgpu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizedMatmul {
    /// Burn's quantized matmul reads the packed values (no temporary; the form measured as fast
    /// as f32 at 8 bits on the H200).
    Fused,
    /// The weight is dequantized to a temporary f32 matrix (Burn's `dequantize`, at most
    /// [`DEQUANTIZE_MAX_BYTES`]) that Burn's f32 matmul then reads: for 4 bits, where Burn's
    /// quantized matmul measured half the f32 speed, and a tenth at `K = 12288` (BENCHMARKS.md).
    /// Inputs of fewer than [`DEQUANTIZE_MIN_ROWS`] rows (the modulation's `temb`) stay fused.
    Dequantize,
    /// [`QuantizedMatmul::Dequantize`] with f16 operands ([`f16_linear`]: f32 accumulation,
    /// each input row scaled into [-1, 1] first). Only for a wgpu device with `shader-f16`
    /// (whoever sets it checks that: the product fails elsewhere). Not a default: Burn's f16
    /// matmul measured 1.5–1.6× its f32 one at the image-side shapes on an H200, but the
    /// model's forward with it has not been timed yet (BENCHMARKS.md).
    DequantizeF16,
}

/// The largest temporary f32 weight [`QuantizedMatmul::Dequantize`] makes: 128 MiB, WebGPU's
/// default `maxStorageBufferBindingSize`. Larger weights are held as row parts
/// ([`Linear::from_blocks`]).
pub const DEQUANTIZE_MAX_BYTES: usize = 128 << 20;
/// Inputs with fewer rows (tokens × batch) than this multiply a quantized weight fused: for a
/// few rows, writing and reading the f32 weight costs more than the product.
pub const DEQUANTIZE_MIN_ROWS: usize = 16;

/// How quantized weights of `bits` (8 or 4) are multiplied on wgpu unless told otherwise
/// ([`set_quantized_matmul`]): fused at 8 bits, dequantized (f32 operands) at 4.
pub const fn default_quantized_matmul(bits: u32) -> QuantizedMatmul {
    match bits {
        8 => QuantizedMatmul::Fused,
        _ => QuantizedMatmul::Dequantize,
    }
}

/// [`QuantizedMatmul`] per precision, as `u8`s: 8-bit at index 0, 4-bit at index 1.
static QUANTIZED_MATMUL: [std::sync::atomic::AtomicU8; 2] = [
    std::sync::atomic::AtomicU8::new(default_quantized_matmul(8) as u8),
    std::sync::atomic::AtomicU8::new(default_quantized_matmul(4) as u8),
];

fn policy_slot(bits: u32) -> &'static std::sync::atomic::AtomicU8 {
    &QUANTIZED_MATMUL[usize::from(bits != 8)]
}

/// How quantized weights of `bits` (8 or 4) are multiplied on wgpu: by default fused at 8 bits,
/// dequantized at 4 ([`QuantizedMatmul`]).
pub fn quantized_matmul(bits: u32) -> QuantizedMatmul {
    match policy_slot(bits).load(std::sync::atomic::Ordering::Relaxed) {
        x if x == QuantizedMatmul::Dequantize as u8 => QuantizedMatmul::Dequantize,
        x if x == QuantizedMatmul::DequantizeF16 as u8 => QuantizedMatmul::DequantizeF16,
        _ => QuantizedMatmul::Fused,
    }
}

/// Sets [`quantized_matmul`] for `bits` in this process (benchmarks compare the two). Layers
/// built afterwards take it into account for their parts; it applies to every forward.
pub fn set_quantized_matmul(bits: u32, how: QuantizedMatmul) {
    policy_slot(bits).store(how as u8, std::sync::atomic::Ordering::Relaxed);
}

/// `x · w (+ bias)` with f16 operands: each row of `x` divided by its largest magnitude (so
/// every operand is in [-1, 1] and no partial sum can overflow f16 unless the weights' column
/// sums do), both operands cast to f16, Burn's matmul (f32 accumulation, f16 result), the
/// result cast back to f32 and multiplied by the row's scale. Relative error about 3e-4
/// against the f32 product (the operands' rounding), whatever the inputs' magnitude.
///
/// - x: `[..., d_in]`, w: `[d_in, d_out]`, bias: `[d_out]` → `[..., d_out]`
pub fn f16_linear<const D: usize>(
    x: Tensor<D>,
    w: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    use burn::tensor::FloatDType;
    // [..., 1]; a row of zeros keeps a positive scale (0 / tiny = 0).
    let scale = x.clone().abs().max_dim(D - 1).clamp_min(f32::MIN_POSITIVE);
    let x_h = (x / scale.clone()).cast(FloatDType::F16);
    let w_h = w.cast(FloatDType::F16);
    let y = burn::tensor::module::linear(x_h, w_h, None).cast(FloatDType::F32) * scale;
    match bias {
        Some(b) => y + b.unsqueeze::<D>(),
        None => y,
    }
}

impl QuantWeight {
    /// Burn's scheme for [`QuantizedMatrix`]'s layout.
    pub fn scheme(bits: u32) -> burn::tensor::quantization::QuantScheme {
        use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
        let value = if bits == 8 {
            QuantValue::Q8S
        } else {
            QuantValue::Q4S
        };
        QuantScheme::default()
            .with_value(value)
            .with_store(QuantStore::PackedU32(0))
            .per_block([BLOCK as u8], ScaleDtype::F32)
    }

    /// Uploads a host matrix: its code words, re-encoded while they are copied, then its scales
    /// as f32, in one byte buffer (Burn's layout for a quantized tensor's data). The host words
    /// are freed before the scales are appended.
    pub fn new(m: QuantizedMatrix, device: &Device) -> Self {
        let (rows, cols, bits) = (m.rows, m.cols, m.bits);
        // Offset code c → two's complement of c − 2^(bits−1): flip the top bit of every code.
        let sign_bits = match bits {
            8 => 0x8080_8080u32,
            _ => 0x8888_8888u32,
        };
        let mut bytes = Vec::with_capacity(m.words.len() * 4 + m.scales.len() * 4);
        for w in &m.words {
            bytes.extend_from_slice(&(w ^ sign_bits).to_ne_bytes());
        }
        drop(m.words);
        for s in &m.scales {
            bytes.extend_from_slice(&s.to_f32().to_ne_bytes());
        }
        let data = TensorData::from_bytes_vec(
            bytes,
            [rows, cols],
            burn::tensor::DType::QFloat(Self::scheme(bits)),
        );
        Self {
            q: Param::from_tensor(Tensor::from_data(data, device)),
            bits,
        }
    }

    /// The f32 values, `[d_out, d_in]`.
    pub fn dequantize(&self) -> Tensor<2> {
        self.q.val().dequantize()
    }

    /// `x · Wᵀ (+ bias)` the way `how` says. [`QuantizedMatmul::Dequantize`] falls back to fused
    /// for inputs of fewer than [`DEQUANTIZE_MIN_ROWS`] rows and for weights whose f32 values
    /// exceed [`DEQUANTIZE_MAX_BYTES`] (so does [`QuantizedMatmul::DequantizeF16`]).
    ///
    /// - x: `[..., d_in]`, bias: `[d_out]` → `[..., d_out]`
    pub fn linear<const D: usize>(
        &self,
        x: Tensor<D>,
        bias: Option<Tensor<1>>,
        how: QuantizedMatmul,
    ) -> Tensor<D> {
        let [d_out, d_in] = self.q.dims();
        let rows = x.shape().num_elements() / d_in.max(1);
        let dequantize = how != QuantizedMatmul::Fused
            && rows >= DEQUANTIZE_MIN_ROWS
            && d_out * d_in * 4 <= DEQUANTIZE_MAX_BYTES;
        match (dequantize, how) {
            // [d_out, d_in] f32, a temporary freed after the matmul
            (true, QuantizedMatmul::DequantizeF16) => {
                f16_linear(x, self.dequantize().transpose(), bias)
            }
            (true, _) => burn::tensor::module::linear(x, self.dequantize().transpose(), bias),
            (false, _) => burn::tensor::module::linear(x, self.q.val().transpose(), bias),
        }
    }
}

impl BlockWeight {
    /// Uploads a host matrix. Its code words become the upload's `i32`s in place (the same
    /// allocation, no second copy of the largest host buffer while loading).
    pub fn new(m: QuantizedMatrix, device: &Device) -> Self {
        let (rows, row_words, scale_cols) = (m.rows, m.row_words(), m.cols / BLOCK);
        let scales: Vec<f32> = m.scales.iter().map(|s| s.to_f32()).collect();
        let words: Vec<i32> = m.words.into_iter().map(|w| w as i32).collect();
        Self {
            words: Param::initialized(
                ParamId::new(),
                Tensor::<2, Int>::from_data(TensorData::new(words, [rows, row_words]), device),
            ),
            scales: Param::from_tensor(Tensor::from_data(
                TensorData::new(scales, [rows, scale_cols]),
                device,
            )),
            bits: m.bits,
        }
    }

    /// The f32 values with plain Burn ops (the twin a fused GPU kernel is tested against).
    ///
    /// → `[d_out, d_in]`
    pub fn dequantize(&self) -> Tensor<2> {
        let words = self.words.val(); // [R, W]
        let [rows, n_words] = words.dims();
        let per_word = (32 / self.bits) as usize;
        let mask = (1i64 << self.bits) - 1;
        let offset = (1u32 << (self.bits - 1)) as f32;
        let codes: Vec<Tensor<2>> = (0..per_word)
            .map(|k| {
                words
                    .clone()
                    .bitwise_right_shift_scalar(k as i64 * self.bits as i64)
                    .bitwise_and_scalar(mask)
                    .float()
            })
            .collect();
        let cols = n_words * per_word;
        let values = Tensor::stack::<3>(codes, 2).reshape([rows, cols / BLOCK, BLOCK]) - offset;
        let scales = self.scales.val().unsqueeze_dim::<3>(2); // [R, C/32, 1]
        (values * scales).reshape([rows, cols])
    }
}

impl Linear {
    /// An f32 layer from the checkpoint's `[d_out, d_in]` weight (kept as a transposed view).
    pub fn from_f32(weight: Tensor<2>, bias: Option<Param<Tensor<1>>>) -> Self {
        Self {
            weight: LinearWeight::F32(Param::from_tensor(weight.transpose())),
            bias,
        }
    }

    /// A quantized layer in the form its device runs fastest: on wgpu Burn's own quantized
    /// tensor ([`LinearWeight::Quantized`]), elsewhere packed blocks ([`LinearWeight::Blocks`]).
    ///
    /// On wgpu, when [`quantized_matmul`] dequantizes this precision and the weight's f32
    /// values would exceed [`DEQUANTIZE_MAX_BYTES`], the weight is held as row parts
    /// ([`LinearWeight::Rows`]) of at most that size each, so that no temporary f32 weight is
    /// larger than one WebGPU binding is guaranteed to be.
    pub fn from_blocks(
        weight: QuantizedMatrix,
        bias: Option<Param<Tensor<1>>>,
        device: &Device,
    ) -> Self {
        if !crate::kernels::launch::is_wgpu(device) {
            return Self {
                weight: LinearWeight::Blocks(BlockWeight::new(weight, device)),
                bias,
            };
        }
        // Row parts whose f32 values fit DEQUANTIZE_MAX_BYTES each (one part when fused).
        let parts = match quantized_matmul(weight.bits) {
            QuantizedMatmul::Dequantize | QuantizedMatmul::DequantizeF16 => {
                crate::weights::split_rows(
                    weight.rows,
                    4 * weight.cols as u64,
                    DEQUANTIZE_MAX_BYTES as u64,
                )
                .unwrap_or_else(|_| vec![weight.rows])
            }
            QuantizedMatmul::Fused => vec![weight.rows],
        };
        let weight = if parts.len() == 1 {
            LinearWeight::Quantized(QuantWeight::new(weight, device))
        } else {
            LinearWeight::Rows(
                weight
                    .into_row_parts(&parts)
                    .into_iter()
                    .map(|part| LinearWeight::Quantized(QuantWeight::new(part, device)))
                    .collect(),
            )
        };
        Self { weight, bias }
    }

    /// A quantized layer as packed blocks on any device (on wgpu it runs the WGSL kernel; the
    /// kernel tests and benchmarks use it).
    pub fn from_block_weight(weight: BlockWeight, bias: Option<Param<Tensor<1>>>) -> Self {
        Self {
            weight: LinearWeight::Blocks(weight),
            bias,
        }
    }

    /// `(d_in, d_out)`.
    pub fn dims(&self) -> (usize, usize) {
        self.weight.dims()
    }

    /// `x · Wᵀ + b`. A quantized weight on a wgpu device is Burn's quantized tensor, multiplied as
    /// [`quantized_matmul`] says ([`LinearWeight::Quantized`]); packed blocks on a wgpu device go through
    /// the WGSL kernel [`crate::kernels::qmatmul`]; elsewhere (the CPU) they are dequantized to
    /// f32 with plain Burn ops first, the kernel's twin. A weight split by rows
    /// runs part by part and concatenates the outputs (then adds the bias).
    ///
    /// - x: `[..., d_in]` → `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.weight.apply(x, self.bias.as_ref().map(|b| b.val()))
    }
}

impl LinearWeight {
    /// `(d_in, d_out)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            LinearWeight::F32(w) => {
                let [d_in, d_out] = w.dims();
                (d_in, d_out)
            }
            LinearWeight::Blocks(b) => {
                let [d_out, _] = b.scales.dims();
                let [_, w] = b.words.dims();
                (w * 32 / b.bits as usize, d_out)
            }
            LinearWeight::Quantized(q) => {
                let [d_out, d_in] = q.q.dims();
                (d_in, d_out)
            }
            LinearWeight::Rows(parts) => {
                let d_in = parts.first().map_or(0, |p| p.dims().0);
                (d_in, parts.iter().map(|p| p.dims().1).sum())
            }
        }
    }

    /// `x · Wᵀ (+ bias)`.
    ///
    /// - x: `[..., d_in]`, bias: `[d_out]` → `[..., d_out]`
    fn apply<const D: usize>(&self, x: Tensor<D>, bias: Option<Tensor<1>>) -> Tensor<D> {
        match self {
            LinearWeight::F32(w) => burn::tensor::module::linear(x, w.val(), bias),
            LinearWeight::Blocks(b) if crate::kernels::qmatmul::supported(&x, b) => {
                crate::kernels::qmatmul::qmatmul(x, b, bias)
            }
            LinearWeight::Blocks(b) => crate::kernels::qmatmul::twin(x, b, bias),
            LinearWeight::Quantized(q) => q.linear(x, bias, quantized_matmul(q.bits)),
            LinearWeight::Rows(parts) => {
                let outputs = parts.iter().map(|p| p.apply(x.clone(), None)).collect();
                let y = Tensor::cat(outputs, D - 1);
                match bias {
                    Some(b) => y + b.unsqueeze::<D>(),
                    None => y,
                }
            }
        }
    }

    /// The f32 values, `[d_out, d_in]` (parts of a split weight concatenated): for tests and
    /// checks, never on a forward path.
    pub fn dequantize(&self) -> Tensor<2> {
        match self {
            LinearWeight::F32(w) => w.val().transpose(),
            LinearWeight::Blocks(b) => b.dequantize(),
            LinearWeight::Quantized(q) => q.dequantize(),
            LinearWeight::Rows(parts) => {
                Tensor::cat(parts.iter().map(|p| p.dequantize()).collect(), 0)
            }
        }
    }

    /// 8 or 4 for a quantized weight (of its first part when split), `None` for f32.
    pub fn bits(&self) -> Option<u32> {
        match self {
            LinearWeight::F32(_) => None,
            LinearWeight::Blocks(b) => Some(b.bits),
            LinearWeight::Quantized(q) => Some(q.bits),
            LinearWeight::Rows(parts) => parts.first().and_then(|p| p.bits()),
        }
    }

    /// The parts this weight is stored in (1 unless split by rows).
    pub fn parts(&self) -> usize {
        match self {
            LinearWeight::Rows(parts) => parts.len(),
            _ => 1,
        }
    }
}

/// diffusers `RMSNorm(dim, eps, elementwise_affine=True)` over the last axis:
/// `x * rsqrt(mean(x², -1) + eps) * weight` (the variance in f32).
///
/// <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/normalization.py#L510-L567>
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `[dim]`, checkpoint key `{prefix}.weight`.
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// Loads `{prefix}.weight` `[dim]`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        dim: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            weight: l.param(&format!("{prefix}.weight"), [dim]).await?,
            eps,
        })
    }

    /// - x: `[..., dim]` → `[..., dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let variance = x.clone().square().mean_dim(D - 1); // [..., 1]
        let weight = self.weight.val().unsqueeze::<D>(); // [1, ..., dim]
        x * (variance + self.eps).sqrt().recip() * weight
    }
}

/// `nn.LayerNorm(dim, elementwise_affine=False, eps)` over the last axis (biased variance).
///
/// - x: `[..., dim]` → `[..., dim]`
pub fn layer_norm<const D: usize>(x: Tensor<D>, eps: f64) -> Tensor<D> {
    let (var, mean) = x.clone().var_mean_bias(D - 1); // [..., 1] each
    (x - mean) * (var + eps).sqrt().recip()
}

/// `x * (1 + scale) + shift` with per-sample modulation vectors.
///
/// - x: `[B, S, D]`, shift/scale: `[B, D]` → `[B, S, D]`
pub fn modulate(x: Tensor<3>, shift: Tensor<2>, scale: Tensor<2>) -> Tensor<3> {
    x * (scale.unsqueeze_dim::<3>(1) + 1.0) + shift.unsqueeze_dim::<3>(1)
}

/// diffusers `FeedForward(dim, dim_out=dim, activation_fn="gelu-approximate")` (mult 4):
/// `net.2(GELU_tanh(net.0.proj(x)))` (`net.1` is a dropout).
///
/// <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/attention.py>
#[derive(Module, Debug)]
pub struct FeedForward {
    /// `net.0.proj`: `[dim → 4·dim]`.
    pub proj_in: Linear,
    /// `net.2`: `[4·dim → dim]`.
    pub proj_out: Linear,
}

impl FeedForward {
    /// Loads `{prefix}.net.0.proj` and `{prefix}.net.2`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        dim: usize,
    ) -> Result<Self> {
        Ok(Self {
            proj_in: l
                .linear(&format!("{prefix}.net.0.proj"), dim, 4 * dim, true)
                .await?,
            proj_out: l
                .linear(&format!("{prefix}.net.2"), 4 * dim, dim, true)
                .await?,
        })
    }

    /// - x: `[B, S, dim]` → `[B, S, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let hidden = self.proj_in.forward(x);
        crate::model::profile::mark("mlp proj_in");
        let hidden = gelu_approximate(hidden);
        crate::model::profile::mark("gelu");
        self.proj_out.forward(hidden)
    }

    /// [`forward`](Self::forward) on runs of at most `max_tokens` consecutive tokens, one after
    /// another, so that the `[B, ≤ max_tokens, 4·dim]` hidden activation is the largest buffer
    /// (the memory plan's `ChunkSequence`; tokens are independent in an MLP). A sequence of
    /// `S > max_tokens` tokens runs as `⌈S / max_tokens⌉` runs of equal length (the last may be
    /// shorter); a shorter one, or `None`, runs in one piece.
    ///
    /// - x: `[B, S, dim]` → `[B, S, dim]`
    pub fn forward_chunked(&self, x: Tensor<3>, max_tokens: Option<usize>) -> Tensor<3> {
        let s = x.dims()[1];
        match max_tokens {
            Some(max) if s > max.max(1) => {
                let parts = x.chunk(s.div_ceil(max.max(1)), 1);
                Tensor::cat(parts.into_iter().map(|p| self.forward(p)).collect(), 1)
            }
            _ => self.forward(x),
        }
    }
}

/// The Qwen2 / Qwen2.5-VL SwiGLU MLP: `down_proj(silu(gate_proj(x)) · up_proj(x))` (the language
/// model's without biases, the vision tower's with).
///
/// Checkpoint keys under `….mlp.`: `gate_proj`, `up_proj` (`[I, D]`), `down_proj` (`[D, I]`).
#[derive(Module, Debug)]
pub struct SwiGluMlp {
    /// `[D → I]`.
    pub gate_proj: Linear,
    /// `[D → I]`.
    pub up_proj: Linear,
    /// `[I → D]`.
    pub down_proj: Linear,
}

impl SwiGluMlp {
    /// Loads `{prefix}.{gate,up,down}_proj` (and their biases when `bias`).
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        hidden: usize,
        intermediate: usize,
        bias: bool,
    ) -> Result<Self> {
        let p = |name: &str| format!("{prefix}.{name}");
        Ok(Self {
            gate_proj: l
                .linear(&p("gate_proj"), hidden, intermediate, bias)
                .await?,
            up_proj: l.linear(&p("up_proj"), hidden, intermediate, bias).await?,
            down_proj: l
                .linear(&p("down_proj"), intermediate, hidden, bias)
                .await?,
        })
    }

    /// - x: `[..., D]` → `[..., D]`
    pub fn forward<const N: usize>(&self, x: Tensor<N>) -> Tensor<N> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

/// `Linear(silu(x))`: diffusers' `nn.Sequential(nn.SiLU(), nn.Linear(..))` (`img_mod`, `txt_mod`)
/// and the `AdaLayerNormContinuous` embedding path.
///
/// - x: `[B, d_in]` → `[B, d_out]`
pub fn silu_linear(linear: &Linear, x: Tensor<2>) -> Tensor<2> {
    linear.forward(silu(x))
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::gpu::seeded_values;

    fn tensor<const D: usize>(seed: u64, shape: [usize; D]) -> Tensor<D> {
        let n = shape.iter().product();
        Tensor::from_data(
            TensorData::new(seeded_values(seed, n), shape),
            &Device::flex(),
        )
    }

    #[test]
    fn a_chunked_mlp_equals_the_whole_one() {
        let dim = 8;
        let bias = |seed| Some(Param::from_tensor(tensor(seed, [dim])));
        let mlp = FeedForward {
            proj_in: Linear::from_f32(tensor(1, [4 * dim, dim]), None),
            proj_out: Linear::from_f32(tensor(2, [dim, 4 * dim]), bias(3)),
        };
        let x = tensor(4, [2, 7, dim]);
        let whole: Vec<f32> = mlp.forward(x.clone()).into_data().try_to_vec().unwrap();
        // Runs of 1, 2 (4 runs), 3 (3 runs, the last of 1), 4, 6 tokens; 0 is taken as 1;
        // 7 and more, or no limit, is one piece.
        for max in [
            None,
            Some(0),
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(6),
            Some(7),
            Some(9),
        ] {
            let y = mlp.forward_chunked(x.clone(), max);
            assert_eq!(y.dims(), [2, 7, dim]);
            let y: Vec<f32> = y.into_data().try_to_vec().unwrap();
            let diff = whole
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-6, "runs of {max:?} tokens: {diff}");
        }
    }
}
