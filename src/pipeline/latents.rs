//! The latent packing on a Burn device, and the seeded initial noise.
//!
//! [`pack_latents_tensor`] / [`unpack_latents_tensor`] are the device twins of the slice
//! functions [`super::pack_latents`] / [`super::unpack_latents`] (`_pack_latents` `:405-411`,
//! `_unpack_latents` `:413-428` of `pipeline_qwenimage_layered.py`); `tests/native/layered_parity.rs`
//! holds them equal. They are pure data movement (reshape/permute), so equal means bitwise.
//!
//! Batch size is 1 throughout: the reference pipeline mis-slices its output for batch > 1
//! (`model-spec.md` §2.8), and the browser decomposes one image at a time.

use burn::tensor::{Device, Tensor, TensorData};

use super::dimensions::{Dimensions, pack_latents};
use super::error::PipelineError;
use crate::error::{Error, Result};

/// Latent channels per packed token: a 2×2 patch of each latent channel.
const PATCH_AREA: usize = 4;

fn not_multiple(what: &'static str, value: usize, multiple: usize) -> Error {
    PipelineError::NotMultiple {
        what,
        value,
        multiple,
    }
    .into()
}

/// `_pack_latents` on the device.
///
/// - x: `[F, C, H, W]` latents (frames as the batch axis; `H`, `W` latent sizes, even)
/// - returns `[1, F·(H/2)·(W/2), 4C]`; token `f·(H/2)(W/2) + (y/2)·(W/2) + x/2`, channel
///   `c·4 + (y%2)·2 + x%2`
pub fn pack_latents_tensor(x: Tensor<4>) -> Result<Tensor<3>> {
    let [f, c, h, w] = x.dims();
    if !h.is_multiple_of(2) {
        return Err(not_multiple("latent height", h, 2));
    }
    if !w.is_multiple_of(2) {
        return Err(not_multiple("latent width", w, 2));
    }
    let (h2, w2) = (h / 2, w / 2);
    Ok(x.reshape([f, c, h2, 2, w2, 2])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([1, f * h2 * w2, c * PATCH_AREA]))
}

/// `_unpack_latents` on the device, frame-major.
///
/// - packed: `[1, F·(H/2)·(W/2), 4C]`
/// - `frames` = `F`, `height`/`width` = latent sizes `H`, `W` (even)
/// - returns `[F, C, H, W]`: diffusers' `(1, C, F, H, W)` with the first two axes swapped,
///   i.e. already in the decoder's `(frames as batch, C, H, W)` order
pub fn unpack_latents_tensor(
    packed: Tensor<3>,
    frames: usize,
    height: usize,
    width: usize,
) -> Result<Tensor<4>> {
    let [b, s, c4] = packed.dims();
    if !height.is_multiple_of(2) {
        return Err(not_multiple("latent height", height, 2));
    }
    if !width.is_multiple_of(2) {
        return Err(not_multiple("latent width", width, 2));
    }
    let (h2, w2) = (height / 2, width / 2);
    if b != 1 || s != frames * h2 * w2 || c4 % PATCH_AREA != 0 {
        return Err(Error::Input {
            model: "unpack_latents",
            reason: format!(
                "packed latents {:?} must be [1, {frames}·{h2}·{w2} = {}, 4·C] for {frames} \
                 frames of {height}×{width} latents",
                [b, s, c4],
                frames * h2 * w2
            ),
        });
    }
    let c = c4 / PATCH_AREA;
    Ok(packed
        .reshape([frames, h2, w2, c, 2, 2])
        .permute([0, 3, 1, 4, 2, 5])
        .reshape([frames, c, height, width]))
}

/// SplitMix64: a tiny, well-mixed 64-bit generator (Steele, Lea & Flood 2014).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `(0, 1]` with 53 random bits (never 0, so `ln` is finite).
    fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// `len` standard-normal `f32` values from `seed` (SplitMix64 + Box–Muller, in `f64`, each
/// value rounded once to `f32`).
///
/// Deterministic: the same seed gives the same values on every run and build. It is **not**
/// torch's generator (`torch.Generator("cpu").manual_seed(k)` + `randn`, a Mersenne Twister
/// with its own normal transform), so a seed here never reproduces a seed of the reference;
/// parity runs pass the reference's noise instead ([`super::layered::Noise::Packed`]).
/// Across platforms the values can differ in the last bit only where the platform's `ln`/`cos`
/// round differently (Rust's `f64` `ln`/`sin_cos` call the platform libm natively, `libm` on wasm).
pub fn seeded_normal(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        let r = (-2.0 * rng.next_open01().ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * rng.next_open01()).sin_cos();
        out.push((r * c) as f32);
        out.push((r * s) as f32);
    }
    out.truncate(len);
    out
}

/// The initial noise for `layers` layers at `dims`, drawn like `prepare_latents` (`:496-511`):
/// normal values in the unpacked `(1, N+1, C, H/8, W/8)` layout, then packed.
///
/// - returns `[1, (N+1)·h·w, 4C]` on `device` (`h = H/16`, `w = W/16`, `C` = `latent_channels`)
pub fn seeded_noise(
    seed: u64,
    dims: Dimensions,
    layers: usize,
    latent_channels: usize,
    device: &Device,
) -> Result<Tensor<3>> {
    let [b, f, c, h, w] = dims.noise_shape(1, layers, latent_channels);
    let values = seeded_normal(seed, b * f * c * h * w);
    let packed = pack_latents(&values, b, f, c, h, w)?;
    let shape = [1, dims.noise_seq_len(layers), c * PATCH_AREA];
    Ok(Tensor::from_data(TensorData::new(packed, shape), device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_normal_is_deterministic_and_standard() {
        let a = seeded_normal(42, 20_001);
        assert_eq!(a, seeded_normal(42, 20_001));
        assert_ne!(a[..100], seeded_normal(43, 100)[..]);
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
        assert!(a.iter().all(|v| v.is_finite()));
    }
}
