//! Host-side index maths of the Qwen2.5-VL vision tower for one image or clip (`grid_thw`):
//! patch positions, the window permutation, attention segments and the 2-D rotary tables.
//! Everything here is integers (and one f32 table) computed once per image.
//!
//! <transformers 5.24 `vision_utils.py`: `get_vision_position_ids`, `get_vision_cu_seqlens`,
//! `get_vision_window_index`; `modeling_qwen2_5_vl.py` `Qwen2_5_VLVisionRotaryEmbedding`.>

use super::config::VisionConfig;

/// Index layout of one image through the tower.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionLayout {
    /// `(row, column)` in patches of every patch, in `pixel_values` order (merge-block major).
    pub positions: Vec<(usize, usize)>,
    /// `window_index`: the merged-token permutation (`[N / merge²]`) that groups windows.
    pub window_index: Vec<usize>,
    /// Windowed-attention segments `(start, len)` in patches, in permuted order
    /// (`cu_window_seqlens` without the empty windows).
    pub window_segments: Vec<(usize, usize)>,
    /// Full-attention segments (one per frame), in patches.
    pub full_segments: Vec<(usize, usize)>,
}

impl VisionLayout {
    /// The layout of a `[t, h, w]` patch grid (`h`, `w` multiples of the merge size).
    pub fn new(cfg: &VisionConfig, [t, h, w]: [usize; 3]) -> Self {
        let m = cfg.spatial_merge_size;
        let mut positions = Vec::with_capacity(t * h * w);
        for _ in 0..t {
            for by in 0..h / m {
                for bx in 0..w / m {
                    for iy in 0..m {
                        for ix in 0..m {
                            positions.push((by * m + iy, bx * m + ix));
                        }
                    }
                }
            }
        }
        let (lh, lw) = (h / m, w / m);
        let ws = cfg.window_tokens();
        // Python pads by `ws - n % ws`: a whole empty window when n is a multiple of ws.
        let (nwh, nww) = ((lh + ws - lh % ws) / ws, (lw + ws - lw % ws) / ws);
        let unit = cfg.merge_unit();
        let mut window_index = Vec::with_capacity(t * lh * lw);
        let mut window_segments = Vec::new();
        let mut start = 0;
        for f in 0..t {
            for wy in 0..nwh {
                for wx in 0..nww {
                    let before = window_index.len();
                    for y in wy * ws..((wy + 1) * ws).min(lh) {
                        for x in wx * ws..((wx + 1) * ws).min(lw) {
                            window_index.push(f * lh * lw + y * lw + x);
                        }
                    }
                    let len = (window_index.len() - before) * unit;
                    if len > 0 {
                        window_segments.push((start, len));
                        start += len;
                    }
                }
            }
        }
        let full_segments = (0..t).map(|f| (f * h * w, h * w)).collect();
        Self {
            positions,
            window_index,
            window_segments,
            full_segments,
        }
    }

    /// Number of patches.
    pub fn patches(&self) -> usize {
        self.positions.len()
    }

    /// Patch permutation: row `i` of the permuted sequence is patch `patch_order()[i]`.
    pub fn patch_order(&self, unit: usize) -> Vec<usize> {
        self.window_index
            .iter()
            .flat_map(|&wi| (0..unit).map(move |u| wi * unit + u))
            .collect()
    }

    /// `argsort(window_index)`: merged token `j` of the output is row `reverse()[j]` of the
    /// permuted merger output.
    pub fn reverse(&self) -> Vec<usize> {
        let mut rev = vec![0; self.window_index.len()];
        for (i, &wi) in self.window_index.iter().enumerate() {
            rev[wi] = i;
        }
        rev
    }

    /// `cos` and `sin` `[N, head_dim]` in **permuted** order: per patch, the angles
    /// `[row·inv_freq ‖ col·inv_freq]` (each `head_dim/4`), the whole repeated twice
    /// (rotate-half layout). f32 as in torch: `inv_freq = 1 / θ^(2i/(head_dim/2))`.
    pub fn rotary(&self, cfg: &VisionConfig) -> (Vec<f32>, Vec<f32>) {
        let hd = cfg.head_dim();
        let spatial = hd / 2;
        let inv_freq: Vec<f32> = (0..spatial / 2)
            .map(|i| {
                let e = (2 * i) as f32 / spatial as f32;
                1.0 / (cfg.rope_theta as f32).powf(e)
            })
            .collect();
        let order = self.patch_order(cfg.merge_unit());
        let (mut cos, mut sin) = (Vec::with_capacity(order.len() * hd), Vec::new());
        sin.reserve(order.len() * hd);
        for &p in &order {
            let (r, c) = self.positions[p];
            let angles: Vec<f32> = inv_freq
                .iter()
                .map(|&f| r as f32 * f)
                .chain(inv_freq.iter().map(|&f| c as f32 * f))
                .collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        (cos, sin)
    }
}

/// Segments padded into a `[groups, len]` batch for one attention call.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentBatch {
    /// Number of segments.
    pub groups: usize,
    /// Longest segment.
    pub len: usize,
    /// `[groups · len]`: the sequence row feeding each slot (0 for padding slots).
    pub gather: Vec<i64>,
    /// `[groups · len]`: true where a slot is padding (masked as a key).
    pub padding: Vec<bool>,
    /// `[N]`: the slot holding each sequence row.
    pub scatter: Vec<i64>,
}

impl SegmentBatch {
    /// Batches contiguous `(start, len)` segments that cover `0..n` in order.
    pub fn new(segments: &[(usize, usize)], n: usize) -> Self {
        let len = segments.iter().map(|s| s.1).max().unwrap_or(0);
        let groups = segments.len();
        let mut gather = vec![0i64; groups * len];
        let mut padding = vec![true; groups * len];
        let mut scatter = vec![0i64; n];
        for (g, &(start, l)) in segments.iter().enumerate() {
            for j in 0..l {
                gather[g * len + j] = (start + j) as i64;
                padding[g * len + j] = false;
                scatter[start + j] = (g * len + j) as i64;
            }
        }
        Self {
            groups,
            len,
            gather,
            padding,
            scatter,
        }
    }

    /// Whether every segment has the same length (no padding at all).
    pub fn is_dense(&self) -> bool {
        self.padding.iter().all(|p| !p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VisionConfig {
        VisionConfig {
            depth: 2,
            hidden_size: 32,
            intermediate_size: 64,
            num_heads: 2,
            in_channels: 3,
            out_hidden_size: 64,
            patch_size: 14,
            spatial_merge_size: 2,
            temporal_patch_size: 2,
            window_size: 112,
            fullatt_block_indexes: vec![1],
            rope_theta: 10_000.0,
        }
    }

    /// transformers' `get_vision_window_index` for grid [1, 6, 12] (merged 3×6, window 4):
    /// window_index and cu_window_seqlens printed from Python.
    #[test]
    fn window_index_matches_transformers() {
        let l = VisionLayout::new(&cfg(), [1, 6, 12]);
        assert_eq!(
            l.window_index,
            vec![0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15, 4, 5, 10, 11, 16, 17]
        );
        let cu: Vec<usize> = std::iter::once(0)
            .chain(l.window_segments.iter().map(|s| s.0 + s.1))
            .collect();
        assert_eq!(cu, vec![0, 48, 72]);
        assert_eq!(l.full_segments, vec![(0, 72)]);
        // An exact multiple of the window adds an empty padded window, which is dropped.
        let l = VisionLayout::new(&cfg(), [1, 8, 8]);
        assert_eq!(l.window_segments, vec![(0, 64)]);
    }

    #[test]
    fn positions_are_merge_block_major() {
        let l = VisionLayout::new(&cfg(), [1, 4, 4]);
        assert_eq!(
            &l.positions[..6],
            &[(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3)]
        );
        assert_eq!(l.reverse(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn segment_batch_pads_and_scatters() {
        let b = SegmentBatch::new(&[(0, 3), (3, 1)], 4);
        assert_eq!((b.groups, b.len), (2, 3));
        assert_eq!(b.gather, vec![0, 1, 2, 3, 0, 0]);
        assert_eq!(b.padding, vec![false, false, false, false, true, true]);
        assert_eq!(b.scatter, vec![0, 1, 2, 3]);
        assert!(!b.is_dense());
    }
}
