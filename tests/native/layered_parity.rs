//! `LayeredPipeline` end to end (tiny model, CPU/Flex, f32) against diffusers 0.42.1
//! `QwenImageLayeredPipeline.__call__`, for every fixture case: from `input.png`, the text
//! embeddings and `noise.packed` to the uint8 layers, compared stage by stage.
//!
//! Fixtures: `tests/fixtures/` (regenerate with `tests/fixtures/gen_fixtures.py`, see its README).
//! Run: `cargo test --test native layered_parity:: -- --nocapture` (prints every max error).

use crate::common;

use std::ops::ControlFlow;

use burn::tensor::{Tensor, TensorData};
use common::{Record, assert_close, cases, cpu, fixtures_dir, model_source, read};
use qwen_layered_web::Error;
use qwen_layered_web::pipeline::{
    DecomposeParams, FlowMatchEulerDiscreteConfig, LayeredPipeline, Noise, Progress, Traced,
    pack_latents, pack_latents_tensor, seeded_normal, unpack_latents, unpack_latents_tensor,
};

/// Everything before the VAE decoder (noise predictions, latents after each step).
const ATOL: f32 = 1e-4;
/// The VAE decoder output.
const ATOL_DECODE: f32 = 1e-3;

fn load_pipeline() -> LayeredPipeline {
    pollster::block_on(LayeredPipeline::load(&model_source(), &cpu())).expect("tiny pipeline loads")
}

/// The case's scheduler config (`case.json: scheduler.config_file`, relative to the fixtures).
fn scheduler_config(rec: &Record) -> FlowMatchEulerDiscreteConfig {
    let file = rec.json["scheduler"]["config_file"]
        .as_str()
        .expect("scheduler.config_file");
    let text = std::fs::read_to_string(fixtures_dir().join(file)).expect("scheduler config");
    FlowMatchEulerDiscreteConfig::from_json_str(&text).expect("scheduler config parses")
}

fn params(rec: &Record) -> DecomposeParams {
    let call = &rec.json["call"];
    DecomposeParams {
        layers: call["layers"].as_u64().expect("layers") as usize,
        steps: call["num_inference_steps"].as_u64().expect("steps") as usize,
        resolution: rec.json["bucket"]["size"].as_u64().expect("bucket") as u32,
        true_cfg_scale: call["true_cfg_scale"].as_f64().expect("scale") as f32,
        cfg_normalize: call["cfg_normalize"].as_bool().expect("cfg_normalize"),
    }
}

fn tensor3(rec: &Record, name: &str) -> Tensor<3> {
    let s = rec.shape(name);
    rec.tensor(name, [s[0], s[1], s[2]], &cpu())
}

fn input_image(case: &str) -> image::RgbaImage {
    image::open(fixtures_dir().join(case).join("input.png"))
        .expect("input.png decodes")
        .to_rgba8()
}

#[test]
fn tensor_pack_and_unpack_equal_the_slice_twins() {
    for (frames, c, h, w) in [(4, 16, 8, 12), (1, 16, 6, 4), (2, 3, 2, 2)] {
        let x = seeded_normal(frames as u64, frames * c * h * w);
        let want = pack_latents(&x, 1, frames, c, h, w).expect("slice pack");
        let t = Tensor::<4>::from_data(TensorData::new(x.clone(), [frames, c, h, w]), &cpu());
        let packed = pack_latents_tensor(t).expect("tensor pack");
        assert_eq!(packed.dims(), [1, frames * h * w / 4, 4 * c]);
        assert_eq!(read(packed.clone()), want, "pack {frames}x{c}x{h}x{w}");

        // The slice unpack gives (1, C, F, H, W); the tensor one [F, C, H, W].
        let unpacked = unpack_latents(&want, 1, frames, c, h, w).expect("slice unpack");
        let got = unpack_latents_tensor(packed, frames, h, w).expect("tensor unpack");
        assert_eq!(
            read(got.clone().swap_dims(0, 1)),
            unpacked,
            "unpack {frames}x{c}x{h}x{w}"
        );
        assert_eq!(read(got), x, "unpack(pack(x)) = x");
    }
    let odd = Tensor::<4>::zeros([1, 4, 3, 4], &cpu());
    let err = pack_latents_tensor(odd).expect_err("odd height");
    assert!(err.to_string().contains("latent height = 3"), "{err}");
}

#[test]
fn every_case_matches_the_reference_end_to_end() {
    let mut pipeline = load_pipeline();
    let mut checked = 0;
    for case in cases() {
        let rec = Record::load(&case);
        pipeline.scheduler_config = scheduler_config(&rec);
        let params = params(&rec);
        let negative = rec
            .has("text.negative.embeds")
            .then(|| tensor3(&rec, "text.negative.embeds"));
        let mut traced: Vec<(String, Vec<f32>)> = Vec::new();
        let mut steps_seen = Vec::new();
        let out = pollster::block_on(pipeline.run_traced(
            &input_image(&case),
            &params,
            tensor3(&rec, "text.prompt.embeds"),
            negative,
            Noise::Packed(tensor3(&rec, "noise.packed")),
            |p| {
                if let Progress::Step { step, .. } = p {
                    steps_seen.push(step);
                }
                ControlFlow::Continue(())
            },
            &mut |name, t| {
                let values = match t {
                    Traced::Packed(t) => read(t.clone()),
                    Traced::Image(t) => read(t.clone()),
                };
                traced.push((name.to_owned(), values));
            },
        ))
        .unwrap_or_else(|e| panic!("{case}: run failed: {e}"));
        assert_eq!(steps_seen, (0..params.steps).collect::<Vec<_>>(), "{case}");

        let mut worst = [0f32; 3]; // noise_pred, latents, decode output
        for (name, got) in &traced {
            let (atol, slot) = match name.as_str() {
                n if n.ends_with(".noise_pred") => (ATOL, Some(0)),
                n if n.ends_with(".latents") => (ATOL, Some(1)),
                "vae.decode.output" => (ATOL_DECODE, Some(2)),
                _ => (ATOL, None),
            };
            let (want, shape) = rec.f32(name);
            let err = assert_close(&format!("{case}: {name}"), got, &want, &shape, atol);
            if let Some(i) = slot {
                worst[i] = worst[i].max(err);
            }
        }

        // Final latents, and the uint8 layers within 1/255.
        let last = format!("step{}.latents", params.steps - 1);
        let (want, shape) = rec.f32(&last);
        assert_close(
            &format!("{case}: final latents"),
            &read(out.latents.clone()),
            &want,
            &shape,
            ATOL,
        );
        let (want, shape) = rec.u8("output.layers");
        let [n, h, w, _] = shape[..] else {
            panic!("{case}: output.layers {shape:?}")
        };
        assert_eq!(out.layers.len(), n, "{case}: layer count");
        let (mut off_by_one, mut worse) = (0usize, 0usize);
        for (k, layer) in out.layers.iter().enumerate() {
            assert_eq!(
                layer.dimensions(),
                (w as u32, h as u32),
                "{case}: layer {k} size"
            );
            let want = &want[k * h * w * 4..(k + 1) * h * w * 4];
            for (i, (&g, &e)) in layer.as_raw().iter().zip(want).enumerate() {
                match g.abs_diff(e) {
                    0 => {}
                    1 => off_by_one += 1,
                    d => {
                        worse += 1;
                        eprintln!("{case}: layer {k} byte {i}: got {g}, expected {e} (diff {d})");
                    }
                }
            }
        }
        eprintln!(
            "{case}: max err noise_pred {:.2e}, latents {:.2e}, decode {:.2e}; output.layers: \
             {off_by_one} of {} bytes differ by 1, {worse} by more",
            worst[0],
            worst[1],
            worst[2],
            want.len()
        );
        assert_eq!(
            worse, 0,
            "{case}: {worse} output bytes differ by more than 1"
        );
        checked += 1;
    }
    assert_eq!(checked, 6, "every fixture case a–f");
}

#[test]
fn progress_can_cancel_between_steps() {
    let pipeline = load_pipeline();
    let rec = Record::load("d_lin_nocfg_l1_s2_50x90");
    let mut reports = Vec::new();
    let result = pollster::block_on(pipeline.run(
        &input_image("d_lin_nocfg_l1_s2_50x90"),
        &params(&rec),
        tensor3(&rec, "text.prompt.embeds"),
        None,
        Noise::Seed(5),
        |p| {
            reports.push(p);
            if matches!(p, Progress::Step { step: 0, .. }) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    ));
    match result {
        Err(Error::Cancelled { at }) => assert_eq!(at, "after denoising step 1 of 2"),
        other => panic!("expected a cancellation, got {other:?}"),
    }
    assert!(matches!(
        reports[0],
        Progress::Prepared {
            width: 32,
            height: 96,
            layers: 1,
            steps: 2,
            cfg: false
        }
    ));
    assert_eq!(reports[1], Progress::Encoded);
    assert_eq!(reports.len(), 3);
}

#[test]
fn seeded_runs_are_deterministic_and_wrong_shapes_are_named() {
    let pipeline = load_pipeline();
    let rec = Record::load("e_exp_cfg1_l4_s2_48");
    let image = input_image("e_exp_cfg1_l4_s2_48");
    let params = DecomposeParams {
        layers: 2,
        steps: 1,
        ..params(&rec)
    };
    let run = |noise| {
        pollster::block_on(pipeline.run(
            &image,
            &params,
            tensor3(&rec, "text.prompt.embeds"),
            None,
            noise,
            |_| ControlFlow::Continue(()),
        ))
    };
    let a = run(Noise::Seed(9)).expect("seeded run");
    let b = run(Noise::Seed(9)).expect("seeded run");
    assert_eq!(a.layers, b.layers);
    assert_eq!(read(a.latents), read(b.latents));

    let err = run(Noise::Packed(Tensor::zeros([1, 7, 64], &cpu()))).expect_err("wrong noise");
    assert!(
        err.to_string()
            .contains("noise [1, 7, 64] must be [1, 12, 64]"),
        "{err}"
    );
}
