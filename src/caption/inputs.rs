//! The multimodal prompt: the caption template's token ids with the one `<|image_pad|>`
//! expanded to one token per merged image patch (`Qwen2VLProcessor.replace_image_token`), and
//! the 3-D M-RoPE position ids of `Qwen2_5_VLModel.get_rope_index` (transformers 5.24).
//!
//! Positions: text tokens count up by one on all three axes; the image's merged tokens get
//! `(start, start + row, start + col)` (`start` = the position after the preceding text, the
//! temporal axis stays `start` for a still image), and the text after the image resumes at
//! `start + max(rows, cols)`. Generated tokens continue from `max(position) + 1`.

use crate::error::{Error, Result};
use crate::model::text_encoder::RopePositions;

/// Token ids of the special tokens the caption prompt uses (`text_encoder/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisionTokenIds {
    /// `image_token_id` (`<|image_pad|>`: 151655 real, 268 in the tiny fixture vocabulary).
    pub image: u32,
}

/// The expanded prompt for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct MultimodalPrompt {
    /// `input_ids` with `image_tokens` copies of the image token.
    pub input_ids: Vec<u32>,
    /// Index of the first image token.
    pub image_start: usize,
    /// Number of image tokens (`t·h·w / merge²`).
    pub image_tokens: usize,
    /// One `[t, h, w]` position triple per token.
    pub positions: RopePositions,
    /// `mrope_position_deltas`: `max(position) + 1 − len`; generated token `k` (0-based) sits
    /// at position `len + k + delta` on all three axes.
    pub rope_delta: i64,
}

impl MultimodalPrompt {
    /// Expands the single image token of `template_ids` for a `[t, h, w]` patch grid merged by
    /// `merge` and computes the positions.
    pub fn new(
        template_ids: &[u32],
        ids: VisionTokenIds,
        grid_thw: [usize; 3],
        merge: usize,
    ) -> Result<Self> {
        let bad = |reason: String| Error::Input {
            model: "Qwen2VLProcessor",
            reason,
        };
        let slots: Vec<usize> = template_ids
            .iter()
            .enumerate()
            .filter(|&(_, &t)| t == ids.image)
            .map(|(i, _)| i)
            .collect();
        let &[image_start] = slots.as_slice() else {
            return Err(bad(format!(
                "the caption prompt must hold exactly one image token (id {}), found {}",
                ids.image,
                slots.len()
            )));
        };
        let [t, h, w] = grid_thw;
        if merge == 0 || h % merge != 0 || w % merge != 0 || t == 0 {
            return Err(bad(format!(
                "grid_thw {grid_thw:?} is not divisible by the merge size {merge}"
            )));
        }
        let (lt, lh, lw) = (t, h / merge, w / merge);
        let image_tokens = lt * lh * lw;
        let mut input_ids = Vec::with_capacity(template_ids.len() + image_tokens - 1);
        input_ids.extend_from_slice(&template_ids[..image_start]);
        input_ids.extend(std::iter::repeat_n(ids.image, image_tokens));
        input_ids.extend_from_slice(&template_ids[image_start + 1..]);

        let mut pos = Vec::with_capacity(input_ids.len());
        let start = image_start as i64;
        pos.extend((0..start).map(|p| [p; 3]));
        for f in 0..lt as i64 {
            for r in 0..lh as i64 {
                for c in 0..lw as i64 {
                    pos.push([f + start, r + start, c + start]);
                }
            }
        }
        let after = start + lh.max(lw) as i64;
        let rest = (template_ids.len() - image_start - 1) as i64;
        pos.extend((0..rest).map(|p| [after + p; 3]));
        let max = pos.iter().flatten().copied().max().unwrap_or(-1);
        let rope_delta = max + 1 - input_ids.len() as i64;
        Ok(Self {
            input_ids,
            image_start,
            image_tokens,
            positions: RopePositions(pos),
            rope_delta,
        })
    }

    /// Position of generated token `k` (0-based; the token fed back at step `k + 1`).
    pub fn generated_position(&self, k: usize) -> i64 {
        self.input_ids.len() as i64 + k as i64 + self.rope_delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_and_positions_like_get_rope_index() {
        // text(2) <img> text(3) with a 1×4×6 grid, merge 2 → 2×3 = 6 image tokens.
        let p = MultimodalPrompt::new(
            &[1, 2, 9, 3, 4, 5],
            VisionTokenIds { image: 9 },
            [1, 4, 6],
            2,
        )
        .unwrap();
        assert_eq!(p.input_ids, vec![1, 2, 9, 9, 9, 9, 9, 9, 3, 4, 5]);
        assert_eq!((p.image_start, p.image_tokens), (2, 6));
        let want: Vec<[i64; 3]> = vec![
            [0, 0, 0],
            [1, 1, 1],
            [2, 2, 2],
            [2, 2, 3],
            [2, 2, 4],
            [2, 3, 2],
            [2, 3, 3],
            [2, 3, 4],
            [5, 5, 5],
            [6, 6, 6],
            [7, 7, 7],
        ];
        assert_eq!(p.positions.0, want);
        assert_eq!(p.rope_delta, 8 - 11);
        assert_eq!(p.generated_position(0), 8);
        assert!(MultimodalPrompt::new(&[1, 2], VisionTokenIds { image: 9 }, [1, 2, 2], 2).is_err());
    }
}
