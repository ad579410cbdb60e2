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

    /// Quantizes row-major `values` `[rows, cols]` to `bits` (8 or 4); an error if `cols` is
    /// not a multiple of [`BLOCK`], the sizes disagree, or `bits` is neither.
    pub fn quantize(values: &[f32], rows: usize, cols: usize, bits: u32) -> Result<Self, String> {
        check_sizes(values.len(), rows, cols, bits)?;
        let mut codes = Vec::with_capacity(values.len());
        let mut scales = Vec::with_capacity(values.len() / BLOCK);
        for block in values.chunks_exact(BLOCK) {
            if bits == 8 {
                let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                scales.push(f16::from_f32(d));
                codes.extend(block.iter().map(|x| ((x * id).round() as i32 + 128) as u8));
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
        Ok(Self {
            bits,
            rows,
            cols,
            words: pack(&codes, bits),
            scales,
        })
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
        let mut codes = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(n_blocks);
        for b in bytes.chunks_exact(34) {
            scales.push(f16::from_le_bytes([b[0], b[1]]));
            codes.extend(b[2..].iter().map(|&q| q ^ 0x80)); // i8 → q + 128
        }
        Ok(Self {
            bits: 8,
            rows,
            cols,
            words: pack(&codes, 8),
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
        let mut codes = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(n_blocks);
        for b in bytes.chunks_exact(18) {
            scales.push(f16::from_le_bytes([b[0], b[1]]));
            codes.extend(b[2..].iter().map(|q| q & 0xF));
            codes.extend(b[2..].iter().map(|q| q >> 4));
        }
        Ok(Self {
            bits: 4,
            rows,
            cols,
            words: pack(&codes, 4),
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

fn check_sizes(n: usize, rows: usize, cols: usize, bits: u32) -> Result<(), String> {
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
}
