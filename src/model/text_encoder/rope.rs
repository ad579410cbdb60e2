//! Qwen2.5-VL's multimodal rotary embedding (M-RoPE), rotate-half style.
//!
//! Each token has three position ids (time, height, width). The `head_dim / 2` frequencies
//! `inv_freq[j] = 1 / θ^(2j / head_dim)` are split by `mrope_section` into three runs that
//! take their angle from the time, height and width position respectively; the table is then
//! repeated for the second half of the head (`cat(freqs, freqs)`), and applied as
//! `x·cos + rotate_half(x)·sin`. For text-only input the three ids are equal (`0..S`), which is
//! ordinary 1-D RoPE.
//!
//! <https://github.com/huggingface/transformers/blob/v5.2.0/src/transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py>
//! (`Qwen2_5_VLRotaryEmbedding`, `apply_rotary_pos_emb`; same code in 5.24.0).

use burn::tensor::{Device, Tensor, TensorData};

/// Position ids of a run of tokens, one `[time, height, width]` triple per token (shared by
/// every sequence of the batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RopePositions(pub Vec<[i64; 3]>);

impl RopePositions {
    /// Text positions `offset .. offset + len` on all three axes (the text-only path, and the
    /// tokens generated after a prompt whose positions ended at `offset - 1`).
    pub fn text(offset: i64, len: usize) -> Self {
        Self((0..len as i64).map(|i| [offset + i; 3]).collect())
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The rotary table builder (no weights): `inv_freq` as transformers computes it, in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct TextRope {
    /// `1 / θ^(2j / head_dim)` for `j < head_dim / 2`, computed in f32 like the reference.
    pub inv_freq: Vec<f32>,
    /// How many of the `head_dim / 2` frequencies follow the time, height and width axes.
    pub mrope_section: [usize; 3],
}

/// cos/sin tables on a device, `[S, head_dim]` each.
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// `cos(angle)`, `[S, head_dim]`.
    pub cos: Tensor<2>,
    /// `sin(angle)`, `[S, head_dim]`.
    pub sin: Tensor<2>,
}

impl TextRope {
    /// `inv_freq = 1.0 / (θ ** (arange(0, head_dim, 2).float() / head_dim))` in f32.
    pub fn new(theta: f64, head_dim: usize, mrope_section: [usize; 3]) -> Self {
        let base = theta as f32;
        let inv_freq = (0..head_dim / 2)
            .map(|j| 1.0f32 / base.powf((2 * j) as f32 / head_dim as f32))
            .collect();
        Self {
            inv_freq,
            mrope_section,
        }
    }

    /// The host tables `(cos, sin)`, `[S · head_dim]` each, row-major.
    ///
    /// The angle is `position (f32) · inv_freq (f32)` rounded to f32 as in torch; its cos/sin
    /// are taken in f64 and rounded.
    pub fn host_tables(&self, positions: &RopePositions) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        // Frequency j follows axis `axis_of[j]`.
        let axis_of: Vec<usize> = (0..3)
            .flat_map(|a| std::iter::repeat_n(a, self.mrope_section[a]))
            .collect();
        let mut cos = Vec::with_capacity(positions.len() * 2 * half);
        let mut sin = Vec::with_capacity(positions.len() * 2 * half);
        for pos in &positions.0 {
            let row: Vec<f32> = (0..half)
                .map(|j| pos[axis_of[j]] as f32 * self.inv_freq[j])
                .collect();
            for _ in 0..2 {
                cos.extend(row.iter().map(|&a| (a as f64).cos() as f32));
                sin.extend(row.iter().map(|&a| (a as f64).sin() as f32));
            }
        }
        (cos, sin)
    }

    /// The tables for `positions` on `device`.
    pub fn tables(&self, positions: &RopePositions, device: &Device) -> RopeTables {
        let shape = [positions.len(), 2 * self.inv_freq.len()];
        let (cos, sin) = self.host_tables(positions);
        RopeTables {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }
}

/// `x·cos + rotate_half(x)·sin` with `rotate_half(x) = cat(−x[..., Dh/2:], x[..., :Dh/2])`.
///
/// - x: `[B, H, S, Dh]`, tables `[S, Dh]` → `[B, H, S, Dh]`
pub fn apply_rotary_pos_emb(x: Tensor<4>, rope: &RopeTables) -> Tensor<4> {
    let dh = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, dh / 2);
    let x2 = x.clone().narrow(3, dh / 2, dh / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let cos = rope.cos.clone().unsqueeze::<4>(); // [1, 1, S, Dh]
    let sin = rope.sin.clone().unsqueeze::<4>();
    x * cos + rotated * sin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_positions_make_plain_1d_rope_and_sections_pick_their_axis() {
        let rope = TextRope::new(1e6, 16, [2, 3, 3]);
        assert_eq!(rope.inv_freq[0], 1.0);
        assert!((rope.inv_freq[1] - 1e6f32.powf(-2.0 / 16.0)).abs() < 1e-9);
        let (cos, sin) = rope.host_tables(&RopePositions::text(5, 2));
        assert_eq!(cos.len(), 2 * 16);
        // Row 0 is position 5 on every axis: angle 5·inv_freq[j], both halves.
        for j in 0..8 {
            let a = 5.0f32 * rope.inv_freq[j];
            assert_eq!(cos[j], (a as f64).cos() as f32);
            assert_eq!(sin[8 + j], (a as f64).sin() as f32);
        }
        // Distinct axes: frequencies 0..2 follow t, 2..5 h, 5..8 w.
        let (cos, _) = rope.host_tables(&RopePositions(vec![[1, 2, 3]]));
        let want = |j: usize, p: f32| ((p * rope.inv_freq[j]) as f64).cos() as f32;
        assert_eq!(cos[1], want(1, 1.0));
        assert_eq!(cos[2], want(2, 2.0));
        assert_eq!(cos[4], want(4, 2.0));
        assert_eq!(cos[5], want(5, 3.0));
        assert_eq!(cos[8 + 7], want(7, 3.0));
    }
}
