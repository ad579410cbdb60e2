//! Auto-captioning (the reference pipeline's `get_image_caption`): when the user's prompt is
//! empty, the resized RGBA image is described by Qwen2.5-VL and the caption becomes the prompt.
//!
//! - [`processor`]: `Qwen2VLImageProcessor` (image → `pixel_values`, `image_grid_thw`).

pub mod processor;
