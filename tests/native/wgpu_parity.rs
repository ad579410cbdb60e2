//! The same model code on native wgpu (Vulkan; Mesa lavapipe on the dev box) against the
//! diffusers fixtures: one transformer call, one VAE encode + decode, and the text encoder.
//!
//! All tests share one device ([`common::gpu`]); no adapter is a failure.
//! Run: `cargo test --test native wgpu_parity:: -- --nocapture`.

use crate::common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{Record, check, gpu, model_source};
use qwen_layered_web::model::transformer::{QwenImageTransformer2DModel, TransformerInput};
use qwen_layered_web::model::vae::AutoencoderKLQwenImage;

#[test]
fn transformer_and_vae_match_on_wgpu() {
    let Some(device) = gpu() else { return };
    let rec = Record::load("c_lin_cfg_l2_s2_120x80");
    let src = model_source();

    let model = pollster::block_on(QwenImageTransformer2DModel::load(
        &src,
        "transformer",
        &device,
    ))
    .expect("transformer");
    let shapes = rec.img_shapes();
    let out = model
        .forward(TransformerInput {
            hidden_states: rec.tensor("step1.transformer_in", [1, 96, 64], &device),
            encoder_hidden_states: rec.tensor("text.negative.embeds", [1, 147, 64], &device),
            encoder_hidden_states_mask: None,
            timestep: rec.tensor("step1.timestep", [1], &device),
            img_shapes: &shapes,
            additional_t_cond: Some(Tensor::<1, Int>::from_data(
                TensorData::new(vec![0i64], [1]),
                &device,
            )),
        })
        .expect("forward");
    check(&rec, "step1.uncond.transformer_out", out, 1e-4);

    let vae = pollster::block_on(AutoencoderKLQwenImage::load(&src, "vae", &device)).expect("vae");
    let mean = vae
        .encode(rec.tensor("vae.encode.input", [1, 4, 64, 96], &device))
        .expect("encode");
    check(&rec, "vae.encode.posterior_mean", mean, 1e-4);
    let out = vae
        .decode(rec.tensor("vae.decode.input", [2, 16, 8, 12], &device))
        .expect("decode");
    check(&rec, "vae.decode.output", out, 1e-3);
}

/// The VAE's building blocks on wgpu against Flex, on seeded inputs (diagnoses which op
/// differs when the end-to-end check fails).
#[test]
fn vae_ops_match_flex_on_wgpu() {
    use burn::module::Param;
    use qwen_layered_web::gpu::seeded_values;
    use qwen_layered_web::model::vae::{Conv2d, upsample_nearest2x};

    let Some(device) = gpu() else { return };
    let cpu = common::cpu();
    let x = |d: &Device| {
        Tensor::<4>::from_data(
            TensorData::new(seeded_values(1, 2 * 8 * 6 * 10), [2, 8, 6, 10]),
            d,
        )
    };
    let conv = |d: &Device, stride, pad: (usize, usize)| Conv2d {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(seeded_values(2, 4 * 8 * 9), [4, 8, 3, 3]),
            d,
        )),
        bias: Param::from_tensor(Tensor::from_data(
            TensorData::new(seeded_values(3, 4), [4]),
            d,
        )),
        stride,
        pad_begin: pad.0,
        pad_end: pad.1,
    };
    let both = |name: &str, f: &dyn Fn(&Device) -> Tensor<4>| {
        let (want, got) = (f(&cpu), f(&device));
        let shape = want.dims().to_vec();
        common::assert_close(name, &common::read(got), &common::read(want), &shape, 1e-5);
    };
    both("conv k3 pad 1", &|d| conv(d, 1, (1, 1)).forward(x(d)));
    both("conv k3 stride 2 pad (0, 1)", &|d| {
        conv(d, 2, (0, 1)).forward(x(d))
    });
    both("upsample_nearest2x", &|d| upsample_nearest2x(x(d)));
    let src = model_source();
    let vae_cpu = pollster::block_on(AutoencoderKLQwenImage::load(&src, "vae", &cpu)).expect("vae");
    let vae_gpu =
        pollster::block_on(AutoencoderKLQwenImage::load(&src, "vae", &device)).expect("vae");
    let y = |d: &Device| {
        Tensor::<4>::from_data(
            TensorData::new(seeded_values(4, 2 * 32 * 4 * 6), [2, 32, 4, 6]),
            d,
        )
    };
    let pick = |d: &Device| if d == &cpu { &vae_cpu } else { &vae_gpu };
    both("rms norm", &|d| pick(d).encoder.norm_out.forward(y(d)));
    both("attention block", &|d| {
        pick(d).encoder.mid_block.attentions[0].forward(y(d))
    });
    both("residual block", &|d| {
        pick(d).encoder.mid_block.resnets[0].forward(y(d))
    });
}

/// Prints the error of every traced encoder stage on wgpu (a debugging aid; never fails).
#[test]
#[ignore = "debugging aid: cargo test --test native wgpu_parity::encoder_stages -- --ignored --nocapture"]
fn encoder_stages_on_wgpu() {
    let Some(device) = gpu() else { return };
    let rec = Record::load("a_lin_cfgnorm_l3_s3_64");
    let vae = pollster::block_on(AutoencoderKLQwenImage::load(
        &model_source(),
        "vae",
        &device,
    ))
    .expect("vae");
    let x = rec.tensor("vae.encode.input", [1, 4, 64, 64], &device);
    let conv_in = vae.encoder.conv_in.forward(x.clone());
    let cpu = common::cpu();
    let vae_cpu = pollster::block_on(AutoencoderKLQwenImage::load(&model_source(), "vae", &cpu))
        .expect("vae");
    let want =
        vae_cpu
            .encoder
            .conv_in
            .forward(rec.tensor("vae.encode.input", [1, 4, 64, 64], &cpu));
    let e = common::read(conv_in)
        .iter()
        .zip(common::read(want))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("conv_in vs flex: {e:.3e}");
    let mut traced = Vec::new();
    let moments = vae
        .encode_moments_traced(x, &mut |n, t| traced.push((n.to_owned(), t.clone())))
        .expect("encode");
    for (name, t) in traced {
        let fixture = format!("vae_debug.{name}.out");
        let want = if rec.has(&fixture) {
            fixture
        } else if name == "encoder.out" {
            "vae_debug.encoder.out".into()
        } else {
            continue;
        };
        let (w, _) = rec.f32(&want);
        let e = common::read(t)
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("{name}: {e:.3e}");
    }
    let (w, _) = rec.f32("vae_debug.quant_conv.out");
    let e = common::read(moments)
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("quant_conv: {e:.3e}");
}

/// Bisects the encoder's mid block on wgpu against Flex at the fixture's shape.
#[test]
#[ignore = "debugging aid: cargo test --test native wgpu_parity::mid_block_parts -- --ignored --nocapture"]
fn mid_block_parts_on_wgpu() {
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use qwen_layered_web::gpu::seeded_values;
    let Some(device) = gpu() else { return };
    let cpu = common::cpu();
    let src = model_source();
    let vae_cpu = pollster::block_on(AutoencoderKLQwenImage::load(&src, "vae", &cpu)).expect("vae");
    let vae_gpu =
        pollster::block_on(AutoencoderKLQwenImage::load(&src, "vae", &device)).expect("vae");
    let pick = |d: &Device| if d == &cpu { &vae_cpu } else { &vae_gpu };
    let report = |name: &str, f: &dyn Fn(&Device) -> Vec<f32>| {
        let (want, got) = (f(&cpu), f(&device));
        let e = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("{name}: {e:.3e}");
    };
    for (b, c, h, w) in [(1, 32, 8, 8), (1, 32, 4, 6), (2, 32, 8, 8), (1, 32, 16, 16)] {
        let y = move |d: &Device| {
            Tensor::<4>::from_data(
                TensorData::new(seeded_values(4, b * c * h * w), [b, c, h, w]),
                d,
            )
        };
        report(&format!("{:?} resnet", [b, c, h, w]), &|d| {
            common::read(pick(d).encoder.mid_block.resnets[0].forward(y(d)))
        });
        report(&format!("{:?} attention block", [b, c, h, w]), &|d| {
            common::read(pick(d).encoder.mid_block.attentions[0].forward(y(d)))
        });
        let s = h * w;
        let qkv = move |d: &Device, seed| {
            Tensor::<4>::from_data(
                TensorData::new(seeded_values(seed, b * s * c), [b, 1, s, c]),
                d,
            )
        };
        report(
            &format!("{:?} raw attention, contiguous", [b, 1, s, c]),
            &|d| {
                common::read(attention(
                    qkv(d, 7),
                    qkv(d, 8),
                    qkv(d, 9),
                    None,
                    None,
                    AttentionModuleOptions::default(),
                ))
            },
        );
    }
}

#[test]
fn text_encoder_matches_on_wgpu() {
    let Some(device) = gpu() else { return };
    let rec = Record::load("c_lin_cfg_l2_s2_120x80");
    let encoder = pollster::block_on(qwen_layered_web::text::PromptEncoder::load(
        &model_source(),
        &device,
    ))
    .expect("prompt encoder");
    // One prompt only: every new sequence length compiles new kernels (slow on lavapipe).
    let text = rec.json["call"]["prompt"].as_str().expect("text");
    let embeds = encoder.encode(text, 512).expect("encode");
    check(&rec, "text.prompt.embeds", embeds, 1e-4);

    // The cached path on the GPU: a prefill, then a chunk after it, each written into the
    // fixed-capacity cache and attending over all its slots with the step's mask (single
    // tokens: the ignored `caption_parity::vision_tower_and_caption_match_on_wgpu`).
    let (ids, _) = rec.i64("text.prompt.input_ids");
    let lm = &encoder.text_encoder;
    let ids_tensor = |ids: &[i64]| {
        Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &device)
    };
    let mut cache = lm.new_cache(ids.len());
    let split = 150;
    let first = lm
        .forward(ids_tensor(&ids[..split]), Some(&mut cache))
        .expect("prefill");
    let rest = lm
        .forward(ids_tensor(&ids[split..]), Some(&mut cache))
        .expect("chunk after the prefill");
    let hidden = Tensor::cat(vec![first, rest], 1).narrow(1, 34, ids.len() - 34);
    check(&rec, "text.prompt.embeds", hidden, 1e-4);

    // The browser's settings: 8-bit linear layers (the WGSL qmatmul kernel) and the token
    // embedding's rows read from the weight file and uploaded, against the same on Flex.
    use qwen_layered_web::text::{PromptEncoder, TextEncoderLoad};
    use qwen_layered_web::weights::Precision;
    let src = model_source();
    let q8 = TextEncoderLoad::gathered(Precision::Q8);
    let on = |device: &Device| {
        let enc = pollster::block_on(PromptEncoder::load_with(&src, device, q8)).expect("q8");
        common::read(pollster::block_on(enc.encode_from(&src, text, 512)).expect("encode"))
    };
    let (got, want) = (on(&device), on(&common::cpu()));
    let shape = rec.shape("text.prompt.embeds");
    common::assert_close("q8, gathered: wgpu vs Flex", &got, &want, &shape, 1e-4);
}

/// Quantized linear layers (8- and 4-bit blocks) give the same values and outputs on wgpu as
/// on Flex: the dequantization's integer shifts and masks are exact on both.
#[test]
fn quantized_linear_matches_flex_on_wgpu() {
    use qwen_layered_web::model::nn::Linear;
    use qwen_layered_web::weights::QuantizedMatrix;
    let Some(device) = gpu() else { return };
    let cpu = common::cpu();
    let (d_in, d_out) = (96, 40);
    let weights: Vec<f32> = (0..d_in * d_out)
        .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 300.0)
        .collect();
    let x: Vec<f32> = (0..3 * d_in)
        .map(|i| ((i * 31 % 17) as f32 - 8.0) / 5.0)
        .collect();
    let bias: Vec<f32> = (0..d_out).map(|i| i as f32 / 10.0).collect();
    for bits in [8, 4] {
        let m = QuantizedMatrix::quantize(&weights, d_out, d_in, bits).expect("quantize");
        let run = |device: &Device| {
            let bias = burn::module::Param::from_tensor(Tensor::<1>::from_data(
                TensorData::new(bias.clone(), [d_out]),
                device,
            ));
            let linear = Linear::from_blocks(m.clone(), Some(bias), device);
            let input = Tensor::<2>::from_data(TensorData::new(x.clone(), [3, d_in]), device);
            let weight = linear.weight.dequantize();
            (common::read(weight), common::read(linear.forward(input)))
        };
        let (w_cpu, y_cpu) = run(&cpu);
        let (w_gpu, y_gpu) = run(&device);
        assert_eq!(w_cpu, m.dequantize(), "{bits}-bit: Flex vs host twin");
        assert_eq!(w_gpu, w_cpu, "{bits}-bit: wgpu vs Flex dequantization");
        common::assert_close(
            &format!("{bits}-bit linear, wgpu vs flex"),
            &y_gpu,
            &y_cpu,
            &[3, d_out],
            1e-4,
        );
    }
}

/// f16 operands (`QuantizedMatmul::DequantizeF16`: `f16_linear`, each input row scaled into
/// [-1, 1], Burn's f16 matmul) give the f32 product of the same dequantized weight within
/// 1e-3 (relative L2) on wgpu with `shader-f16`: also for rows whose values would overflow f16
/// unscaled (1e5, summed over 512 terms) and for a row of zeros; the bias is added in f32.
#[test]
fn f16_operands_match_the_f32_product_on_wgpu() {
    use qwen_layered_web::gpu::FeatureState;
    use qwen_layered_web::model::nn::{QuantWeight, QuantizedMatmul};
    use qwen_layered_web::weights::QuantizedMatrix;
    let Some((device, report)) = common::gpu_with_report() else {
        return;
    };
    if report.shader_f16 != FeatureState::Enabled {
        eprintln!(
            "SKIPPED: this adapter has no shader-f16 ({:?})",
            report.description
        );
        return;
    }
    let (d_in, d_out, rows) = (512, 96, 24);
    let weights: Vec<f32> = (0..d_in * d_out)
        .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 3000.0)
        .collect();
    let mut x: Vec<f32> = (0..rows * d_in)
        .map(|i| ((i * 31 % 17) as f32 - 8.0) / 5.0)
        .collect();
    // Row 1 far beyond f16's range once summed; row 2 all zeros.
    x[d_in..2 * d_in].iter_mut().for_each(|v| *v *= 1e5);
    x[2 * d_in..3 * d_in].fill(0.0);
    let bias: Vec<f32> = (0..d_out).map(|i| i as f32 / 10.0).collect();
    let input = Tensor::<2>::from_data(TensorData::new(x, [rows, d_in]), &device);
    let b = Tensor::<1>::from_data(TensorData::new(bias, [d_out]), &device);
    for bits in [8, 4] {
        let m = QuantizedMatrix::quantize(&weights, d_out, d_in, bits).expect("quantize");
        let w = QuantWeight::new(m, &device);
        let f32_product = w.linear(input.clone(), Some(b.clone()), QuantizedMatmul::Dequantize);
        let f16_product = w.linear(
            input.clone(),
            Some(b.clone()),
            QuantizedMatmul::DequantizeF16,
        );
        let (want, got) = (common::read(f32_product), common::read(f16_product));
        assert!(got.iter().all(|v| v.is_finite()), "{bits}-bit: not finite");
        let err: f32 = want.iter().zip(&got).map(|(a, b)| (a - b) * (a - b)).sum();
        let norm: f32 = want.iter().map(|a| a * a).sum();
        for (r, name) in [(0, "an ordinary row"), (1, "a row of 1e5s")] {
            let row = |v: &[f32]| v[r * d_out..(r + 1) * d_out].to_vec();
            let (a, b) = (row(&want), row(&got));
            let e: f32 = a.iter().zip(&b).map(|(a, b)| (a - b) * (a - b)).sum();
            let n: f32 = a.iter().map(|a| a * a).sum();
            let rel = (e / n).sqrt();
            eprintln!("{bits}-bit, {name}: relative L2 error {rel:.2e}");
            assert!(rel < 1e-3, "{bits}-bit, {name}: {rel:.2e}");
        }
        let zero_row = &got[2 * d_out..3 * d_out];
        assert_eq!(
            zero_row,
            &want[2 * d_out..3 * d_out],
            "a row of zeros gives the bias"
        );
        eprintln!(
            "{bits}-bit: relative L2 error {:.2e} overall",
            (err / norm).sqrt()
        );
    }
}
