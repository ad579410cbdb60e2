//! `AutoencoderKLQwenImage` (tiny config, RGBA, single frames, CPU/Flex, f32) against diffusers 0.42.1.
//!
//! Fixtures: `tests/fixtures/` (regenerate with `tests/fixtures/gen_fixtures.py`, see its README).
//! Run: `cargo test --test native vae_parity:: -- --nocapture` (prints every max error).

use crate::common;

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use common::{Record, cases, check, cpu, model_source};
use qwen_layered_web::model::vae::AutoencoderKLQwenImage;

/// Encoder side (before the VAE decoder).
const ATOL_ENCODE: f32 = 1e-4;
/// Decoder output.
const ATOL_DECODE: f32 = 1e-3;

fn load_vae() -> AutoencoderKLQwenImage {
    pollster::block_on(AutoencoderKLQwenImage::load(&model_source(), "vae", &cpu()))
        .expect("tiny VAE loads")
}

/// `[B, C, 1, H, W]` recorded → `[B, C, H, W]` on the CPU device.
fn frame(rec: &Record, name: &str) -> Tensor<4> {
    let s = rec.shape(name);
    assert_eq!(s.len(), 5, "{name}: {s:?}");
    assert_eq!(s[2], 1, "{name}: one frame expected");
    rec.tensor(name, [s[0], s[1], s[3], s[4]], &cpu())
}

#[test]
fn encode_posterior_mean_matches() {
    let vae = load_vae();
    for case in cases() {
        let rec = Record::load(&case);
        if !rec.has("vae.encode.input") {
            continue;
        }
        let x = frame(&rec, "vae.encode.input");
        let mut traced: BTreeMap<String, Tensor<4>> = BTreeMap::new();
        let moments = vae.encode_moments_traced(x, &mut |name, t| {
            traced.insert(name.to_owned(), t.clone());
        });
        let moments = moments.expect("encode");
        let mean = moments.clone().narrow(1, 0, vae.config.z_dim);
        if rec.has("vae_debug.quant_conv.out") {
            for (name, ours) in [
                (
                    "vae_debug.encoder.down_blocks.2.out",
                    "encoder.down_blocks.2",
                ),
                (
                    "vae_debug.encoder.down_blocks.5.out",
                    "encoder.down_blocks.5",
                ),
                (
                    "vae_debug.encoder.down_blocks.8.out",
                    "encoder.down_blocks.8",
                ),
                ("vae_debug.encoder.mid_block.out", "encoder.mid_block"),
                ("vae_debug.encoder.out", "encoder.out"),
            ] {
                check(&rec, name, traced[ours].clone(), ATOL_ENCODE);
            }
            check(&rec, "vae_debug.quant_conv.out", moments, ATOL_ENCODE);
        }
        check(&rec, "vae.encode.posterior_mean", mean.clone(), ATOL_ENCODE);
        check(
            &rec,
            "image_latents.normalized",
            vae.normalize_latents(mean),
            ATOL_ENCODE,
        );
    }
}

#[test]
fn decode_output_matches() {
    let vae = load_vae();
    let mut decoded = 0;
    for case in cases() {
        let rec = Record::load(&case);
        if !rec.has("vae.decode.output") {
            continue;
        }
        let z = frame(&rec, "vae.decode.input");
        let mut traced: BTreeMap<String, Tensor<4>> = BTreeMap::new();
        let out = vae
            .decode_traced(z, &mut |name, t| {
                traced.insert(name.to_owned(), t.clone());
            })
            .expect("decode");
        if rec.has("vae_debug.post_quant_conv.out.layer0") {
            // Debug tensors hold batch row 0 (layer 0) only.
            for (name, ours, atol) in [
                (
                    "vae_debug.post_quant_conv.out.layer0",
                    "post_quant_conv",
                    ATOL_ENCODE,
                ),
                (
                    "vae_debug.decoder.conv_in.out.layer0",
                    "decoder.conv_in",
                    ATOL_ENCODE,
                ),
                (
                    "vae_debug.decoder.mid_block.out.layer0",
                    "decoder.mid_block",
                    ATOL_ENCODE,
                ),
                (
                    "vae_debug.decoder.up_blocks.0.out.layer0",
                    "decoder.up_blocks.0",
                    ATOL_DECODE,
                ),
                (
                    "vae_debug.decoder.up_blocks.1.out.layer0",
                    "decoder.up_blocks.1",
                    ATOL_DECODE,
                ),
                (
                    "vae_debug.decoder.up_blocks.2.out.layer0",
                    "decoder.up_blocks.2",
                    ATOL_DECODE,
                ),
            ] {
                check(&rec, name, traced[ours].clone().narrow(0, 0, 1), atol);
            }
        }
        check(&rec, "vae.decode.output", out, ATOL_DECODE);
        decoded += 1;
    }
    assert!(decoded >= 5, "only {decoded} cases decoded");
}
