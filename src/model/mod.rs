//! The models of Qwen-Image-Layered (text encoder, transformer, VAE), one implementation for every Burn device
//! (Flex on the CPU for tests, wgpu natively, WebGPU in the browser): synchronous maths, no
//! browser code. Weights come through [`crate::weights`].

pub mod nn;
pub mod profile;
pub mod text_encoder;
pub mod transformer;
pub mod vae;
pub mod vision;

use crate::error::{Error, Result};
use crate::weights::{Precision, QuantizedLayout, SafetensorsFolder};

/// The stored 8-/4-bit copy of `component` (`transformer` or `text_encoder`: the components
/// kept quantized) in `precision`, planned from the headers of its safetensors checkpoint
/// `folder`; `origin` (`repo@revision`, or a folder) is written into the copy.
pub fn stored_copy_layout(
    component: &str,
    folder: &SafetensorsFolder,
    precision: Precision,
    origin: &str,
) -> Result<QuantizedLayout> {
    match component {
        "transformer" => transformer::QwenImageTransformer2DModel::stored_quantized_layout(
            folder, precision, origin,
        ),
        "text_encoder" => text_encoder::stored_quantized_layout(folder, precision, origin),
        other => Err(Error::Config {
            file: format!("{other}/"),
            reason: "no stored quantized copy is made of this component (only of the \
                     transformer and the text encoder)"
                .into(),
        }),
    }
}
