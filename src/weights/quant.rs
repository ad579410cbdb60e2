//! Blockwise symmetric 8-bit and 4-bit weights: the layout quantized linear layers keep on the
//! device, made at load time from bf16/f16/f32 values or repacked without loss from GGUF
//! `Q8_0` / `Q4_0` blocks.
//!
//! A `[rows, cols]` matrix (rows = `d_out`, cols = `d_in`, PyTorch's `Linear.weight`) is cut
//! into blocks of [`BLOCK`] consecutive values along `cols`. Each block has one f16 scale `d`
//! and `BLOCK` unsigned codes `u` of `bits` bits; the value is `d · (u − 2^(bits−1))`:
//!
//! - 8-bit: `u = q + 128` with `q ∈ [−128, 127]`: GGUF `Q8_0` (`d · q`), quantized as ggml's
//!   `quantize_row_q8_0_ref` (`d = amax / 127`, `q = round(x / d)`);
//! - 4-bit: `u ∈ [0, 15]`, value `d · (u − 8)`: GGUF `Q4_0` exactly (same codes), quantized as
//!   ggml's `quantize_row_q4_0_ref` (`d = max / −8` with `max` the value of largest magnitude,
//!   `u = min(15, trunc(x / d + 8.5))`).
//!
//! Codes are packed into little-endian `u32` words, `32 / bits` consecutive values per word
//! (value `k` of a word in bits `k·bits ..`), so a row of `cols` values is `cols · bits / 32`
//! words. Scales are `[rows, cols / 32]`.

use half::f16;
use safetensors::Dtype;

use super::par::worker_count;
use super::safetensors::widen_into;

/// Values per block (one scale each).
pub const BLOCK: usize = 32;

/// A quantized `[rows, cols]` matrix on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    /// 8 or 4.
    pub bits: u32,
    /// Outer dimension (`d_out`).
    pub rows: usize,
    /// Inner dimension (`d_in`), a multiple of [`BLOCK`].
    pub cols: usize,
    /// `[rows, cols · bits / 32]` packed codes.
    pub words: Vec<u32>,
    /// `[rows, cols / BLOCK]` scales.
    pub scales: Vec<f16>,
}

impl QuantizedMatrix {
    /// Words per row.
    pub fn row_words(&self) -> usize {
        self.cols * self.bits as usize / 32
    }

    /// The matrix cut into consecutive row ranges of `parts[p]` rows each (they must sum to
    /// `rows`), each with its own words and scales.
    pub fn into_row_parts(self, parts: &[usize]) -> Vec<QuantizedMatrix> {
        debug_assert_eq!(parts.iter().sum::<usize>(), self.rows);
        let (w, c) = (self.row_words(), self.cols / BLOCK);
        let mut start = 0;
        parts
            .iter()
            .map(|&rows| {
                let end = start + rows;
                let part = QuantizedMatrix {
                    bits: self.bits,
                    rows,
                    cols: self.cols,
                    words: self.words[start * w..end * w].to_vec(),
                    scales: self.scales[start * c..end * c].to_vec(),
                };
                start = end;
                part
            })
            .collect()
    }

    /// Quantizes row-major `values` `[rows, cols]` to `bits` (8 or 4); an error if `cols` is
    /// not a multiple of [`BLOCK`], the sizes disagree, or `bits` is neither. Natively the
    /// blocks are split over the CPU's threads (the result does not depend on it).
    pub fn quantize(values: &[f32], rows: usize, cols: usize, bits: u32) -> Result<Self, String> {
        check_sizes(values.len(), rows, cols, bits)?;
        Ok(Self::quantized(Values::F32(values), rows, cols, bits))
    }

    /// [`quantize`](Self::quantize) straight from stored little-endian bf16/f16/f32 bytes
    /// (`rows · cols` values), decoded a block at a time: the same blocks as quantizing
    /// [`to_f32`](super::to_f32) of the bytes, without the f32 copy.
    pub fn quantize_stored(
        bytes: &[u8],
        dtype: Dtype,
        rows: usize,
        cols: usize,
        bits: u32,
    ) -> Result<Self, String> {
        let values = Values::stored(bytes, dtype)?;
        check_sizes(values.len(), rows, cols, bits)?;
        Ok(Self::quantized(values, rows, cols, bits))
    }

    /// Quantizes checked `values`.
    fn quantized(values: Values, rows: usize, cols: usize, bits: u32) -> Self {
        let n = values.len();
        let mut words = vec![0u32; n * bits as usize / 32];
        let mut scales = vec![f16::ZERO; n / BLOCK];
        quantize_into(values, bits, &mut words, &mut scales, worker_count(n));
        Self {
            bits,
            rows,
            cols,
            words,
            scales,
        }
    }

    /// Repacks GGUF `Q8_0` blocks (`f16 d, i8 q[32]`) of a `[rows, cols]` tensor, without loss.
    pub fn from_q8_0(bytes: &[u8], rows: usize, cols: usize) -> Result<Self, String> {
        check_sizes(rows * cols, rows, cols, 8)?;
        let n_blocks = rows * cols / BLOCK;
        if bytes.len() != n_blocks * 34 {
            return Err(format!(
                "{} bytes of Q8_0 for [{rows}, {cols}] ({} expected)",
                bytes.len(),
                n_blocks * 34
            ));
        }
        // A word is 4 codes `q + 128`: the block's `i8` bytes as a little-endian `u32` with
        // the sign bit of each byte flipped.
        let mut words = Vec::with_capacity(n_blocks * 8);
        let mut scales = Vec::with_capacity(n_blocks);
        for b in bytes.chunks_exact(34) {
            scales.push(f16::from_le_bytes([b[0], b[1]]));
            words.extend(
                b[2..]
                    .chunks_exact(4)
                    .map(|q| u32::from_le_bytes([q[0], q[1], q[2], q[3]]) ^ 0x8080_8080),
            );
        }
        Ok(Self {
            bits: 8,
            rows,
            cols,
            words,
            scales,
        })
    }

    /// Repacks GGUF `Q4_0` blocks (`f16 d, u8 qs[16]`: byte `j` holds value `j` in its low
    /// nibble and value `j + 16` in its high nibble) without loss.
    pub fn from_q4_0(bytes: &[u8], rows: usize, cols: usize) -> Result<Self, String> {
        check_sizes(rows * cols, rows, cols, 4)?;
        let n_blocks = rows * cols / BLOCK;
        if bytes.len() != n_blocks * 18 {
            return Err(format!(
                "{} bytes of Q4_0 for [{rows}, {cols}] ({} expected)",
                bytes.len(),
                n_blocks * 18
            ));
        }
        // Values 0..8 and 8..16 are the low nibbles of bytes 0..8 and 8..16, values 16..24
        // and 24..32 their high nibbles: four words, each eight nibbles gathered from the
        // bytes of one little-endian `u64`.
        let mut words = Vec::with_capacity(n_blocks * 4);
        let mut scales = Vec::with_capacity(n_blocks);
        for b in bytes.chunks_exact(18) {
            scales.push(f16::from_le_bytes([b[0], b[1]]));
            let lo = u64::from_le_bytes(b[2..10].try_into().expect("8 bytes"));
            let hi = u64::from_le_bytes(b[10..18].try_into().expect("8 bytes"));
            words.extend([
                gather_nibbles(lo),
                gather_nibbles(hi),
                gather_nibbles(lo >> 4),
                gather_nibbles(hi >> 4),
            ]);
        }
        Ok(Self {
            bits: 4,
            rows,
            cols,
            words,
            scales,
        })
    }

    /// The values, row-major `[rows, cols]` (the host twin of the device dequantization).
    pub fn dequantize(&self) -> Vec<f32> {
        let per_word = 32 / self.bits as usize;
        let mask = (1u32 << self.bits) - 1;
        let offset = 1i32 << (self.bits - 1);
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for (i, &w) in self.words.iter().enumerate() {
            for k in 0..per_word {
                let value_index = i * per_word + k;
                let d = self.scales[value_index / BLOCK].to_f32();
                let u = ((w >> (k as u32 * self.bits)) & mask) as i32;
                out.push((u - offset) as f32 * d);
            }
        }
        out
    }
}

/// The values a quantization reads: f32, or stored little-endian bf16/f16/f32 bytes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Values<'a> {
    F32(&'a [f32]),
    /// Bytes whose length is a whole number of `dtype` values.
    Stored(&'a [u8], Dtype),
}

impl<'a> Values<'a> {
    /// Stored `bytes` of `dtype` (bf16, f16 or f32, a whole number of values).
    pub(super) fn stored(bytes: &'a [u8], dtype: Dtype) -> Result<Self, String> {
        match dtype {
            Dtype::BF16 | Dtype::F16 | Dtype::F32
                if bytes.len().is_multiple_of(dtype.bitsize() / 8) =>
            {
                Ok(Values::Stored(bytes, dtype))
            }
            Dtype::BF16 | Dtype::F16 | Dtype::F32 => Err(format!(
                "{} bytes is not a whole number of {dtype:?} values",
                bytes.len()
            )),
            other => Err(format!(
                "dtype {other:?} is not supported (bf16, f16 or f32 expected)"
            )),
        }
    }

    fn len(&self) -> usize {
        match *self {
            Values::F32(v) => v.len(),
            Values::Stored(b, dtype) => b.len() / (dtype.bitsize() / 8),
        }
    }

    /// The values before block `at`, and the ones from it on.
    fn split_at_block(self, at: usize) -> (Self, Self) {
        match self {
            Values::F32(v) => {
                let (a, b) = v.split_at(at * BLOCK);
                (Values::F32(a), Values::F32(b))
            }
            Values::Stored(bytes, dtype) => {
                let (a, b) = bytes.split_at(at * BLOCK * (dtype.bitsize() / 8));
                (Values::Stored(a, dtype), Values::Stored(b, dtype))
            }
        }
    }

    /// Block `b`'s values.
    #[inline]
    fn block(&self, b: usize, out: &mut [f32; BLOCK]) {
        match *self {
            Values::F32(v) => out.copy_from_slice(&v[b * BLOCK..(b + 1) * BLOCK]),
            Values::Stored(bytes, dtype) => {
                let w = dtype.bitsize() / 8 * BLOCK;
                widen_into(&bytes[b * w..(b + 1) * w], dtype, out);
            }
        }
    }
}

/// Quantizes all blocks of `values` to `bits` into `words` (`bits` words per block) and
/// `scales` (one per block), on `workers` threads natively (contiguous runs of blocks).
pub(super) fn quantize_into(
    values: Values,
    bits: u32,
    words: &mut [u32],
    scales: &mut [f16],
    workers: usize,
) {
    let blocks = scales.len();
    debug_assert_eq!(values.len(), blocks * BLOCK);
    debug_assert_eq!(words.len(), blocks * bits as usize);
    let run = |values: Values, words: &mut [u32], scales: &mut [f16]| match bits {
        8 => quantize_blocks::<8>(values, words, scales),
        _ => quantize_blocks::<4>(values, words, scales),
    };
    let per = blocks.div_ceil(workers.max(1)).max(1);
    if workers <= 1 || per >= blocks {
        return run(values, words, scales);
    }
    let mut values = values;
    let mut parts = Vec::with_capacity(workers);
    for (w, sc) in words
        .chunks_mut(per * bits as usize)
        .zip(scales.chunks_mut(per))
    {
        let (mine, rest) = values.split_at_block(sc.len());
        values = rest;
        parts.push((mine, w, sc));
    }
    super::par::run_parts(parts, |(v, w, sc)| run(v, w, sc));
}

/// Quantizes every block of `values` (`BITS` words and one scale each).
fn quantize_blocks<const BITS: u32>(values: Values, words: &mut [u32], scales: &mut [f16]) {
    let mut x = [0f32; BLOCK];
    for (b, (w, s)) in words
        .chunks_exact_mut(BITS as usize)
        .zip(scales.iter_mut())
        .enumerate()
    {
        values.block(b, &mut x);
        *s = if BITS == 8 {
            quantize_block_q8(&x, w)
        } else {
            quantize_block_q4(&x, w)
        };
    }
}

/// ggml's `quantize_row_q8_0_ref` for one block: `d = amax / 127`, `q = round(x / d)`, stored
/// as `q + 128`, four codes per word (first lowest).
#[inline]
fn quantize_block_q8(x: &[f32; BLOCK], words: &mut [u32]) -> f16 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut codes = [0u8; BLOCK];
    if id.is_finite() {
        // |x · id| ≤ 128 (or NaN), so the vectorisable rounding below is exact.
        for (c, v) in codes.iter_mut().zip(x) {
            *c = round_small(v * id).wrapping_add(128) as u8;
        }
    } else {
        // `d` so small that `1 / d` overflows: the plain formula (saturating casts).
        for (c, v) in codes.iter_mut().zip(x) {
            *c = ((v * id).round() as i32).wrapping_add(128) as u8;
        }
    }
    for (w, c) in words.iter_mut().zip(codes.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    f16::from_f32(d)
}

/// ggml's `quantize_row_q4_0_ref` for one block: `d = max / −8` (`max` the value of largest
/// magnitude, the first of equals), `u = min(15, trunc(x / d + 8.5))`, eight codes per word.
#[inline]
fn quantize_block_q4(x: &[f32; BLOCK], words: &mut [u32]) -> f16 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut codes = [0u32; BLOCK];
    for (c, v) in codes.iter_mut().zip(x) {
        *c = trunc_0_15(v * id + 8.5);
    }
    for (w, c) in words.iter_mut().zip(codes.chunks_exact(8)) {
        *w = c
            .iter()
            .enumerate()
            .fold(0u32, |w, (k, &u)| w | (u << (k as u32 * 4)));
    }
    f16::from_f32(d)
}

/// 2^23: adding it to a float in `[0, 2^23)` rounds it to a whole number (ties to even), whose
/// value then sits in the low mantissa bits.
const MAGIC: f32 = 8_388_608.0;

/// The whole number `r` (`0 ≤ r < 2^23`) as an integer, from its bits.
#[inline]
fn whole_to_i32(r: f32) -> i32 {
    ((r + MAGIC).to_bits() - MAGIC.to_bits()) as i32
}

/// `v.round() as i32` (half away from zero, NaN → 0) for `|v| < 2^22` or NaN, without a
/// float-to-int cast the compiler cannot vectorise (x86-64 has no vector `round` before
/// SSE4.1, and Rust's saturating `as` is scalarised): round to nearest-even with [`MAGIC`],
/// then move a tie that went down back up.
#[inline]
fn round_small(v: f32) -> i32 {
    let a = v.abs();
    let even = (a + MAGIC) - MAGIC;
    let r = if a - even == 0.5 { even + 1.0 } else { even };
    let q = if a < 4_194_304.0 { whole_to_i32(r) } else { 0 };
    if v < 0.0 { -q } else { q }
}

/// `(w.trunc() as i32).clamp(0, 15)` (NaN → 0), vectorisable: clamp first, then floor with
/// [`MAGIC`] (for `w ≥ 0` truncation is the floor).
#[inline]
fn trunc_0_15(w: f32) -> u32 {
    let w = if w >= 0.0 { w } else { 0.0 };
    let w = if w <= 15.0 { w } else { 15.0 };
    let near = (w + MAGIC) - MAGIC;
    let floor = if near > w { near - 1.0 } else { near };
    whole_to_i32(floor) as u32
}

pub(super) fn check_sizes(n: usize, rows: usize, cols: usize, bits: u32) -> Result<(), String> {
    if bits != 8 && bits != 4 {
        return Err(format!("{bits}-bit blocks are not supported (8 or 4)"));
    }
    if cols == 0 || !cols.is_multiple_of(BLOCK) {
        return Err(format!(
            "the inner dimension {cols} is not a positive multiple of the block size {BLOCK}"
        ));
    }
    if rows.checked_mul(cols) != Some(n) {
        return Err(format!("{n} values for shape [{rows}, {cols}]"));
    }
    Ok(())
}

/// Packs `bits`-bit codes, `32 / bits` per little-endian word, first code lowest.
/// The low nibble of each byte of `x`, byte `i`'s in bits `4i..4i + 4` of the result.
#[inline]
fn gather_nibbles(x: u64) -> u32 {
    let mut t = x & 0x0F0F_0F0F_0F0F_0F0F;
    t = (t | (t >> 4)) & 0x00FF_00FF_00FF_00FF;
    t = (t | (t >> 8)) & 0x0000_FFFF_0000_FFFF;
    t = (t | (t >> 16)) & 0x0000_0000_FFFF_FFFF;
    t as u32
}

/// Codes packed into words the plain way (the tests' oracle).
#[cfg(test)]
fn pack(codes: &[u8], bits: u32) -> Vec<u32> {
    let per_word = 32 / bits as usize;
    codes
        .chunks_exact(per_word)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u32, |w, (k, &u)| w | (u32::from(u) << (k as u32 * bits)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time repacking of `Q8_0`/`Q4_0` blocks equals unpacking every code and
    /// packing them again, on blocks of every byte value.
    #[test]
    fn gguf_blocks_repack_as_code_by_code() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut byte = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        let (rows, cols) = (3, 96);
        let blocks = rows * cols / BLOCK;
        let q8: Vec<u8> = (0..blocks * 34).map(|_| byte()).collect();
        let q4: Vec<u8> = (0..blocks * 18).map(|_| byte()).collect();
        let m8 = QuantizedMatrix::from_q8_0(&q8, rows, cols).expect("q8");
        let m4 = QuantizedMatrix::from_q4_0(&q4, rows, cols).expect("q4");
        let (mut c8, mut c4) = (Vec::new(), Vec::new());
        for b in q8.chunks_exact(34) {
            c8.extend(b[2..].iter().map(|&q| q ^ 0x80));
        }
        for b in q4.chunks_exact(18) {
            c4.extend(b[2..].iter().map(|q| q & 0xF));
            c4.extend(b[2..].iter().map(|q| q >> 4));
        }
        assert_eq!(m8.words, pack(&c8, 8));
        assert_eq!(m4.words, pack(&c4, 4));
        // Bit patterns: random scales include NaNs.
        let bits = |s: &[f16]| s.iter().map(|d| d.to_bits()).collect::<Vec<_>>();
        let scale = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
        let want8: Vec<u16> = q8.chunks_exact(34).map(scale).collect();
        let want4: Vec<u16> = q4.chunks_exact(18).map(scale).collect();
        assert_eq!((bits(&m8.scales), bits(&m4.scales)), (want8, want4));
    }

    #[test]
    fn round_trips_within_a_step_and_repacks_gguf_blocks_exactly() {
        let values: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for bits in [8, 4] {
            let q = QuantizedMatrix::quantize(&values, 2, 64, bits).expect("quantize");
            assert_eq!(q.words.len(), 2 * q.row_words());
            let back = q.dequantize();
            for (b, (x, y)) in values.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
                let d = q.scales[b].to_f32().abs();
                for (x, y) in x.iter().zip(y) {
                    // Half a step, plus the f16 rounding of the scale over up to 8 (4-bit) or
                    // 128 (8-bit) steps. 4-bit: a whole step, since values of the sign
                    // opposite to the block's extreme are clipped at +7 steps (ggml's Q4_0
                    // maps the extreme to −8).
                    let (steps, err) = if bits == 8 { (128.0, 0.5) } else { (8.0, 1.0) };
                    assert!(
                        (x - y).abs() <= err * d + steps * d * 1e-3,
                        "{bits}: {x} vs {y}"
                    );
                }
            }
        }
        // A Q8_0 block: d = 0.5, q = -128..=-97; a Q4_0 block: d = -0.25, nibbles 0..=15 twice.
        let mut q8 = f16::from_f32(0.5).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i: i32| (i - 128) as i8 as u8));
        let m = QuantizedMatrix::from_q8_0(&q8, 1, 32).expect("q8_0");
        let want: Vec<f32> = (0..32).map(|i| (i as f32 - 128.0) * 0.5).collect();
        assert_eq!(m.dequantize(), want);
        let mut q4 = f16::from_f32(-0.25).to_le_bytes().to_vec();
        q4.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let m = QuantizedMatrix::from_q4_0(&q4, 1, 32).expect("q4_0");
        let want: Vec<f32> = (0..16)
            .map(|j| (j as f32 - 8.0) * -0.25)
            .chain((0..16).map(|j| ((15 - j) as f32 - 8.0) * -0.25))
            .collect();
        assert_eq!(m.dequantize(), want);
        assert!(QuantizedMatrix::quantize(&values, 4, 32, 4).is_ok());
        assert!(
            QuantizedMatrix::quantize(&values, 8, 16, 8).is_err(),
            "cols 16"
        );
        assert!(
            QuantizedMatrix::quantize(&values, 2, 64, 3).is_err(),
            "3 bits"
        );
        assert!(
            QuantizedMatrix::from_q8_0(&q8[..30], 1, 32).is_err(),
            "short"
        );
    }

    /// The quantizer as it was before it was vectorised and split over threads (one block
    /// after the other, `round` / `trunc` and saturating casts), the reference for bit
    /// identity. The `+ 128` wraps as the release build did.
    fn reference(values: &[f32], bits: u32) -> (Vec<u32>, Vec<f16>) {
        let mut codes = Vec::new();
        let mut scales = Vec::new();
        for block in values.chunks_exact(BLOCK) {
            if bits == 8 {
                let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                scales.push(f16::from_f32(d));
                codes.extend(
                    block
                        .iter()
                        .map(|x| ((x * id).round() as i32).wrapping_add(128) as u8),
                );
            } else {
                let mut amax = 0f32;
                let mut max = 0f32;
                for &x in block {
                    if amax < x.abs() {
                        amax = x.abs();
                        max = x;
                    }
                }
                let d = max / -8.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                scales.push(f16::from_f32(d));
                codes.extend(
                    block
                        .iter()
                        .map(|x| ((x * id + 8.5).trunc() as i32).clamp(0, 15) as u8),
                );
            }
        }
        (pack(&codes, bits), scales)
    }

    /// Values that stress the rounding: exact halves and their neighbours at every step of
    /// a block, ±0, NaN, ±∞, subnormals, blocks all zero, all −0, tiny (so that `1 / d`
    /// overflows) and huge, plus seeded ordinary ones.
    fn hard_values(n: usize) -> Vec<f32> {
        let mut v: Vec<f32> = crate::gpu::seeded_values(11, n);
        let specials = [
            0.5,
            -0.5,
            1.5,
            -2.5,
            0.49999997,
            -0.49999997,
            126.5,
            -127.5,
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-45,
            -3e-39,
            f32::MAX,
            f32::MIN_POSITIVE,
        ];
        for (i, x) in v.iter_mut().enumerate() {
            let k = i % BLOCK;
            // Around the halves: exactly, one ulp under and over.
            let half = (k as f32 - 16.0) * 3.0 + 0.5;
            let near = match i % 3 {
                0 => half,
                1 => f32::from_bits(half.to_bits() - 1),
                _ => f32::from_bits(half.to_bits() + 1),
            };
            match (i / BLOCK) % 10 {
                // Extreme 127 (8-bit: d = 1, so x / d is x) or ±8 (4-bit: d = ∓1, so
                // x / d + 8.5 lands on and next to whole numbers).
                0 => *x = if k == 0 { 127.0 } else { near },
                1 => *x = if k == 5 { 8.0 } else { near / 6.0 },
                2 => *x = if k == 31 { -8.0 } else { near / 6.0 },
                3 => *x = specials[i % specials.len()],
                4 => *x = 0.0,
                5 => *x = -0.0,
                6 => *x *= 1e-39,
                7 => *x *= 1e30,
                8 => {
                    *x = if k == 0 {
                        0.0
                    } else {
                        0.49999997 * (k % 3) as f32
                    }
                }
                _ => {}
            }
        }
        v
    }

    #[test]
    fn vectorised_threaded_quantization_equals_the_reference_bit_for_bit() {
        for (rows, cols) in [(1, 32), (3, 96), (7, 160), (13, 32 * 9)] {
            let values = hard_values(rows * cols);
            for bits in [8, 4] {
                let (words, scales) = reference(&values, bits);
                let scale_bits = |s: &[f16]| s.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
                let q = QuantizedMatrix::quantize(&values, rows, cols, bits).expect("quantize");
                assert_eq!(q.words, words, "{bits}-bit [{rows}, {cols}] codes");
                assert_eq!(
                    scale_bits(&q.scales),
                    scale_bits(&scales),
                    "{bits}-bit scales"
                );
                for workers in [2, 3, 5, 64] {
                    let mut w = vec![0; words.len()];
                    let mut s = vec![f16::ZERO; scales.len()];
                    quantize_into(Values::F32(&values), bits, &mut w, &mut s, workers);
                    assert_eq!(w, words, "{bits}-bit, {workers} workers");
                    assert_eq!(scale_bits(&s), scale_bits(&scales), "{workers} workers");
                }
            }
        }
    }

    #[test]
    fn quantizing_stored_bytes_equals_quantizing_their_f32_values() {
        let (rows, cols) = (5, 96);
        let values = hard_values(rows * cols);
        let stored: [(Dtype, Vec<u8>); 3] = [
            (
                Dtype::BF16,
                values
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
            (
                Dtype::F16,
                values
                    .iter()
                    .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
            (
                Dtype::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        ];
        for (dtype, bytes) in &stored {
            let widened = super::super::to_f32(bytes, *dtype, "k", "f").expect("widen");
            for bits in [8, 4] {
                let want = QuantizedMatrix::quantize(&widened, rows, cols, bits).expect("f32");
                let got = QuantizedMatrix::quantize_stored(bytes, *dtype, rows, cols, bits)
                    .expect("stored");
                assert_eq!(got.words, want.words, "{dtype:?} {bits}-bit");
                let b = |m: &QuantizedMatrix| {
                    m.scales.iter().map(|s| s.to_bits()).collect::<Vec<u16>>()
                };
                assert_eq!(b(&got), b(&want), "{dtype:?} {bits}-bit scales");
            }
        }
        assert!(QuantizedMatrix::quantize_stored(&[0; 63], Dtype::BF16, 1, 32, 8).is_err());
        assert!(QuantizedMatrix::quantize_stored(&[0; 64], Dtype::BF16, 1, 31, 8).is_err());
        assert!(QuantizedMatrix::quantize_stored(&[0; 256], Dtype::I64, 1, 32, 8).is_err());
    }
}
