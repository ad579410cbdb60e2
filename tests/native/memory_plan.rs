//! The memory plan end to end on the tiny model (CPU/Flex, f32): limits forced low enough that
//! the plan streams the transformer through a ring of one block, splits its weights over 64 KiB
//! by rows, runs its MLPs on chunks of the sequence, encodes and decodes the VAE in small tiles
//! and gathers the text embedding on the host. The planned run gives the same latents and
//! layers as the normal all-resident, unsplit, unchunked run with the same VAE tiling. (Tiling
//! itself changes the result, as in diffusers: the difference to the untiled run is printed.)
//!
//! Inputs: `tests/fixtures/a_lin_cfgnorm_l3_s3_64` (64×64, 3 layers, CFG; run here with 2
//! steps instead of 3 to keep the test short) and the tiny model in `tests/fixtures/model`.
//! Run: `cargo test --test native memory_plan:: -- --nocapture` (prints the plan and the differences).

use crate::common;

use std::ops::ControlFlow;

use burn::tensor::Tensor;
use common::{Record, cpu, fixtures_dir, model_source, read};
use qwen_layered_web::gpu::KeyLimits;
use qwen_layered_web::model::text_encoder::QwenTextConfig;
use qwen_layered_web::model::transformer::{
    QwenImageTransformer2DModel, QwenImageTransformerConfig,
};
use qwen_layered_web::model::vae::AutoencoderKLQwenImageConfig;
use qwen_layered_web::pipeline::{
    DecomposeParams, FlowMatchEulerDiscreteConfig, LayeredOutput, LayeredPipeline, MemoryBudget,
    Noise, PlanRequest, PlannedPipeline, PromptEmbeds, TensorAction, TransformerResidency,
    encode_prompts_then_free, plan_memory,
};
use qwen_layered_web::text::TextEncoderLoad;
use qwen_layered_web::weights::Precision;

const CASE: &str = "a_lin_cfgnorm_l3_s3_64";

fn json(file: &str) -> serde_json::Value {
    let path = fixtures_dir().join("model").join(file);
    serde_json::from_slice(&std::fs::read(&path).expect("config")).expect("config parses")
}

fn tensor3(rec: &Record, name: &str) -> Tensor<3> {
    let s = rec.shape(name);
    rec.tensor(name, [s[0], s[1], s[2]], &cpu())
}

/// The case's image, parameters (2 steps), text embeddings and noise.
fn inputs(rec: &Record) -> (image::RgbaImage, DecomposeParams, PromptEmbeds, Noise) {
    let call = &rec.json["call"];
    let params = DecomposeParams {
        layers: call["layers"].as_u64().unwrap() as usize,
        steps: 2,
        resolution: rec.json["bucket"]["size"].as_u64().unwrap() as u32,
        true_cfg_scale: call["true_cfg_scale"].as_f64().unwrap() as f32,
        cfg_normalize: call["cfg_normalize"].as_bool().unwrap(),
    };
    let image = image::open(fixtures_dir().join(CASE).join("input.png"))
        .unwrap()
        .to_rgba8();
    let embeds = PromptEmbeds {
        prompt: tensor3(rec, "text.prompt.embeds"),
        negative: Some(tensor3(rec, "text.negative.embeds")),
    };
    (
        image,
        params,
        embeds,
        Noise::Packed(tensor3(rec, "noise.packed")),
    )
}

fn run(pipeline: &LayeredPipeline, rec: &Record) -> LayeredOutput {
    let (image, params, embeds, noise) = inputs(rec);
    let go = |_| ControlFlow::Continue(());
    pollster::block_on(pipeline.run(&image, &params, embeds.prompt, embeds.negative, noise, go))
        .expect("run")
}

#[test]
fn a_forced_low_limit_plan_streams_tiles_and_matches_the_normal_run() {
    let rec = Record::load(CASE);
    let transformer: QwenImageTransformerConfig =
        serde_json::from_value(json("transformer/config.json")).unwrap();
    let vae: AutoencoderKLQwenImageConfig =
        serde_json::from_value(json("vae/config.json")).unwrap();
    let text = QwenTextConfig::from_json(&json("text_encoder/config.json"), "config").unwrap();
    let request = PlanRequest {
        transformer: &transformer,
        vae: &vae,
        text: Some(&text),
        precision: Precision::F32,
        text_precision: Precision::F32,
        width: 64,
        height: 64,
        layers: 3,
        text_tokens: rec.shape("text.prompt.embeds")[1],
        text_kept_bytes: None,
    };
    // 64 KiB per buffer, and device memory for everything but 1.5 blocks' worth of the 2.
    let limits = KeyLimits {
        max_buffer_size: 64 << 10,
        max_storage_buffer_binding_size: 64 << 10,
        max_compute_workgroup_storage_size: 16384,
        max_compute_invocations_per_workgroup: 256,
    };
    let ample = MemoryBudget {
        limits: limits.clone(),
        device_bytes: 1 << 30,
    };
    let e = plan_memory(&ample, &request).unwrap().estimate;
    let fixed = e.transformer_other_bytes + e.vae_bytes + e.transformer_activation_bytes;
    let budget = MemoryBudget {
        limits,
        device_bytes: fixed + e.block_bytes * 3 / 2,
    };
    let plan = plan_memory(&budget, &request).expect("a plan");
    println!("plan: {plan:#?}");
    assert_eq!(
        plan.transformer,
        TransformerResidency::Streaming { ring: 1 }
    );
    let tiling = plan.vae_tiling.expect("the VAE is tiled");
    assert_eq!((tiling.min_height, tiling.stride_height), (32, 24));
    assert!(plan.gathers_embedding_on_host(), "288 × 64 f32 > 64 KiB");
    assert!(
        plan.oversized
            .iter()
            .any(|o| o.name == "transformer_blocks.*.img_mod.1.weight"
                && o.action == TensorAction::SplitRows { parts: 2 })
    );

    let source = model_source();
    let scheduler = |p: &mut LayeredPipeline| {
        let file = rec.json["scheduler"]["config_file"].as_str().unwrap();
        let text = std::fs::read_to_string(fixtures_dir().join(file)).unwrap();
        p.scheduler_config = FlowMatchEulerDiscreteConfig::from_json_str(&text).unwrap();
    };

    // The normal run: all blocks resident, VAE in one piece.
    let mut normal = pollster::block_on(LayeredPipeline::load(&source, &cpu())).unwrap();
    scheduler(&mut normal);
    let want = run(&normal, &rec);

    // The planned run, loaded as a worker would: a ring of R blocks streamed from the source,
    // tiled VAE.
    let mut planned = pollster::block_on(PlannedPipeline::load(
        &source,
        &cpu(),
        &plan,
        Precision::F32,
    ))
    .unwrap();
    scheduler(&mut planned.pipeline);
    assert!(planned.pipeline.transformer.transformer_blocks.is_empty());
    // The MLP hidden activation [S, 256] is over 64 KiB past 64 tokens: the image MLP's 80
    // tokens (5 · 16) run as 2 chunks of 40.
    assert!(plan.mlp_chunks() > 1, "{}", plan.mlp_chunks());
    assert_eq!(plan.estimate.mlp_max_tokens, 64);
    assert_eq!(planned.pipeline.transformer.mlp_max_tokens, Some(64));
    // The attention's runs of scores as planned (none when the ring takes the room).
    let scores = plan.estimate.attention_scores_bytes as usize;
    assert_eq!(
        planned.pipeline.transformer.attention_scores_bytes,
        (scores > 0).then_some(scores)
    );
    // Weights over 64 KiB are stored in parts of rows, as the plan says (the streamed blocks
    // are loaded the same way; the ring is empty after the run, so a resident copy is read).
    let split = pollster::block_on(QwenImageTransformer2DModel::load_precision(
        &source,
        "transformer",
        &cpu(),
        plan.linear_load(Precision::F32),
    ))
    .unwrap();
    assert_eq!(split.transformer_blocks[0].img_mod.weight.parts(), 2);
    assert_eq!(split.transformer_blocks[0].attn.to_q.weight.parts(), 1);
    let (image, params, embeds, noise) = inputs(&rec);
    let got = pollster::block_on(planned.run(&image, &params, embeds, noise, |_| {
        ControlFlow::Continue(())
    }))
    .expect("planned run");
    let stream = planned.stream.as_ref().expect("the plan streams");
    assert!(
        stream.resident().is_empty(),
        "the ring is released before the VAE decode"
    );
    let stats = stream.stats();
    println!("stream: {stats:?}");
    // 2 steps × 2 blocks (the CFG pair of forwards shares each block), plus the preload, minus
    // block 0 of the first step.
    assert_eq!(stats.peak_resident, 1);
    assert_eq!(stats.loads, 4);
    assert_eq!(
        stats.evictions, 4,
        "3 in the ring, 1 released before decoding"
    );

    // The same VAE tiling with all blocks resident, whole weights and MLPs: equal latents and
    // layers.
    plan.apply_vae(&mut normal);
    let tiled = run(&normal, &rec);
    let max_diff = |a: &LayeredOutput, b: &LayeredOutput| {
        let (a, b) = (read(a.latents.clone()), read(b.latents.clone()));
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    // Split weights and chunked MLPs run smaller matmuls, whose sums the CPU kernels may order
    // differently: equal up to float rounding (3.5e-6 measured on latents of magnitude ~1).
    let latent_err = max_diff(&got, &tiled);
    assert!(latent_err <= 2e-5, "final latents differ by {latent_err}");
    assert_eq!(got.layers.len(), 3);
    let mut layer_diff = 0;
    for (i, (g, t)) in got.layers.iter().zip(&tiled.layers).enumerate() {
        let d = g
            .as_raw()
            .iter()
            .zip(t.as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .max();
        layer_diff = layer_diff.max(d.unwrap_or(0));
        assert!(d <= Some(1), "layer {i}: {d:?}/255");
    }
    let untiled_latents = max_diff(&got, &want);
    let tiling_diff = got
        .layers
        .iter()
        .zip(&want.layers)
        .flat_map(|(g, w)| g.as_raw().iter().zip(w.as_raw()))
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap();
    println!(
        "final latents: max |planned − resident, same tiling| = {latent_err:e}, layers up to \
         {layer_diff}/255; vs the untiled run: latents {untiled_latents:e}, layers up to \
         {tiling_diff}/255"
    );

    // A forward carrying more tokens than the device's largest buffer holds is refused with
    // the numbers before anything runs.
    planned.pipeline.transformer.max_tokens = Some(40);
    let (image, params, embeds, noise) = inputs(&rec);
    let err = pollster::block_on(planned.run(&image, &params, embeds, noise, |_| {
        ControlFlow::Continue(())
    }))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("image, ") && err.contains("which holds 40"),
        "{err}"
    );
}

#[test]
fn prompts_are_encoded_by_a_text_encoder_freed_before_the_transformer_loads() {
    let source = model_source();
    let embeds = pollster::block_on(encode_prompts_then_free(
        &source,
        &cpu(),
        "A red apple and a blue cup on a wooden table.",
        Some(" "),
        512,
        // The plan's HostGather, executed: the embedding table never reaches the device.
        TextEncoderLoad::gathered(Precision::F32),
    ))
    .expect("encodes");
    // The fixture's embeddings of the same prompts, from diffusers' encode_prompt.
    let rec = Record::load(CASE);
    for (got, name) in [
        (embeds.prompt, "text.prompt.embeds"),
        (embeds.negative.expect("negative"), "text.negative.embeds"),
    ] {
        let (want, shape) = rec.f32(name);
        assert_eq!(got.dims().to_vec(), shape, "{name}");
        common::assert_close(name, &read(got), &want, &shape, 1e-4);
    }
}

/// The forced limits of the browser test (`tests/e2e/phased.test.mjs`): its URL query, parsed
/// as the page parses it, plans the tiny model as the worker does, at Load (the 64 bucket
/// square, 2 layers) and for its run (a 40×24 picture in the 64 bucket: 96×64): a ring of 1 of the 2
/// blocks, the VAE tiled in 32-pixel tiles one layer at a time.
pub const E2E_STREAMED: &str = "?gpu-max-binding=64K&gpu-max-buffer=64K&gpu-budget=4980K";
/// The browser test's GGUF run (the transformer from `tests/fixtures/gguf`'s Q8_0 file, kept in
/// 8-bit: 170 KiB a block), at the 32 bucket: the same buffer limits and a budget that holds
/// the rest of the model and one block, not two, at Load and for the run.
pub const E2E_GGUF_STREAMED: &str = "?gpu-max-binding=64K&gpu-max-buffer=64K&gpu-budget=4300K";
/// The browser test's reference run: the same buffer limits and a budget of 1 GiB: every
/// block resident, the same VAE tiling (so the two runs must give the same layers).
pub const E2E_RESIDENT: &str = "?gpu-max-binding=64K&gpu-max-buffer=64K&gpu-budget=1G";

#[test]
fn the_browser_tests_forced_limits_stream_a_ring_of_one_and_tile_the_vae() {
    use qwen_layered_web::pipeline::{Dimensions, MemoryPlan, ModelConfigs};
    use qwen_layered_web::protocol::{MemoryOverrides, MemorySettings};

    let configs = pollster::block_on(ModelConfigs::read(&model_source())).unwrap();
    // SwiftShader's limits (any larger ones give the same plan: the forced ones are smaller).
    let device = KeyLimits {
        max_buffer_size: 1 << 30,
        max_storage_buffer_binding_size: 128 << 20,
        max_compute_workgroup_storage_size: 32768,
        max_compute_invocations_per_workgroup: 256,
    };
    let plan =
        |query: &str, resolution: u32, size: (usize, usize), precision: Precision| -> MemoryPlan {
            let overrides = MemoryOverrides::from_query(query).unwrap();
            let settings = MemorySettings {
                budget_bytes: overrides.budget.unwrap(),
                max_binding: overrides.max_binding,
                max_buffer: overrides.max_buffer,
                resolution,
                layers: 2,
            };
            let budget = settings.budget(&device);
            let plan = configs
                .plan(&budget, precision, Precision::F32, size, 2)
                .unwrap_or_else(|e| panic!("{query} {size:?}: {e}"));
            let e = plan.estimate;
            let fixed = e.transformer_other_bytes + e.vae_bytes + e.transformer_activation_bytes;
            println!(
                "{query} {size:?} {precision:?}: {}; fixed {fixed}, block {}, budget {}",
                plan.describe(2),
                e.block_bytes,
                budget.device_bytes
            );
            plan
        };
    // The plan at Load (the bucket's square) and for the run (the test picture's 40×24 at that
    // bucket).
    let sizes = |bucket: u32| {
        let dims = Dimensions::for_image_any_bucket(bucket, 40, 24).unwrap();
        let side = bucket as usize;
        [
            ("load", (side, side)),
            ("run", (dims.width as usize, dims.height as usize)),
        ]
    };
    // A query that streams a ring of 1, and the reference run's (resident) with the same VAE
    // plan; returns the streamed plan.
    let streamed_beside_resident =
        |query: &str, bucket: u32, size, precision, what: &str| -> MemoryPlan {
            let streamed = plan(query, bucket, size, precision);
            assert_eq!(
                streamed.transformer,
                TransformerResidency::Streaming { ring: 1 },
                "{what}"
            );
            let resident = plan(E2E_RESIDENT, bucket, size, precision);
            assert!(resident.is_resident(), "{what}");
            assert_eq!(
                (resident.vae_tiling, resident.vae_slicing),
                (streamed.vae_tiling, streamed.vae_slicing),
                "{what}: the reference run decodes alike"
            );
            streamed
        };
    for (what, size) in sizes(64) {
        let streamed = streamed_beside_resident(E2E_STREAMED, 64, size, Precision::F32, what);
        let tiling = streamed.vae_tiling.expect("tiled");
        assert_eq!((tiling.min_width, tiling.stride_width), (32, 24), "{what}");
        assert!(streamed.vae_slicing, "{what}");
        let words = streamed.describe(configs.transformer.num_layers);
        assert!(
            words.contains("streamed, a ring of 1 of 2 blocks"),
            "{words}"
        );
        assert!(words.contains("VAE: tiled, 32×32-pixel tiles"), "{words}");
    }
    // The run's picture spans more than one tile.
    assert_eq!(sizes(64)[1].1, (96, 64));
    // The GGUF source's 8-bit transformer, at the 32 bucket (a 32×32 picture decoded whole, one
    // layer at a time, not in the 12 tiles above: the tiled VAE is most of a run's time on
    // SwiftShader): a ring of 1 with its own budget, resident with the reference run's.
    for (what, size) in sizes(32) {
        let what = format!("{what}: GGUF");
        streamed_beside_resident(E2E_GGUF_STREAMED, 32, size, Precision::Q8, &what);
    }
    // Without the forced limits the default budget keeps the tiny model resident and whole.
    let plan = configs
        .plan(
            &MemorySettings {
                budget_bytes: qwen_layered_web::pipeline::default_budget_bytes(&device),
                max_binding: None,
                max_buffer: None,
                resolution: 64,
                layers: 2,
            }
            .budget(&device),
            Precision::F32,
            Precision::F32,
            (64, 64),
            2,
        )
        .unwrap();
    assert!(plan.is_resident());
    assert_eq!((plan.vae_tiling, plan.vae_slicing), (None, false));
}

/// The browser test of a resident model whose run does not fit beside it
/// (`tests/e2e/models.test.mjs`): the tiny model kept 4-bit (transformer and text encoder, as
/// the `tiny-test-q4` entry does) with this budget stays loaded after a Load at the 32 bucket
/// (2 layers), and a 40×24 picture run at the 64 bucket (96×64) plans it phased, so the page
/// frees it and loads each phase again, from the stored copies (the checkpoints are gone).
/// Loads keep the model between 4450 and 4750 KiB here; runs from 4800 KiB.
pub const E2E_GOES_PHASED: &str = "?gpu-budget=4600K";

#[test]
fn a_resident_q4_model_goes_phased_for_a_larger_run_under_the_browser_tests_budget() {
    use qwen_layered_web::model::text_encoder::device_bytes;
    use qwen_layered_web::pipeline::{Dimensions, ModelConfigs};
    use qwen_layered_web::protocol::{MemoryOverrides, MemorySettings};
    use qwen_layered_web::text::TextEncoderLoad;
    use qwen_layered_web::weights::{Checkpoint, SafetensorsFolder};

    let source = model_source();
    let configs = pollster::block_on(ModelConfigs::read(&source)).unwrap();
    let folder = pollster::block_on(SafetensorsFolder::open(&source, "text_encoder")).unwrap();
    // What the worker counts (`text_kept_bytes`): the captioning parts too.
    let load = TextEncoderLoad::gathered(Precision::Q4).options(true);
    let text_kept = device_bytes(&Checkpoint::Safetensors(folder), load, true);
    let device = KeyLimits {
        max_buffer_size: 1 << 30,
        max_storage_buffer_binding_size: 128 << 20,
        max_compute_workgroup_storage_size: 32768,
        max_compute_invocations_per_workgroup: 256,
    };
    let overrides = MemoryOverrides::from_query(E2E_GOES_PHASED).unwrap();
    let settings = MemorySettings {
        budget_bytes: overrides.budget.unwrap(),
        max_binding: overrides.max_binding,
        max_buffer: overrides.max_buffer,
        resolution: 32,
        layers: 2,
    };
    let plan = |size| {
        let budget = settings.budget(&device);
        let (p, t) = (Precision::Q4, Some(text_kept));
        configs.plan_keeping(&budget, p, p, size, 2, t).unwrap()
    };
    let at_load = plan((32, 32));
    assert!(at_load.keep_loaded, "{}", at_load.describe(2));
    let run = Dimensions::for_image_any_bucket(64, 40, 24).unwrap();
    let for_run = plan((run.width as usize, run.height as usize));
    assert!(!for_run.keep_loaded, "{}", for_run.describe(2));
}
