//! The whole layered pipeline on the browser's WebGPU (wasm-bindgen-test in headless Chromium;
//! SwiftShader without a GPU): the tiny fixture model decomposes fixture case
//! `d_lin_nocfg_l1_s2_50x90` from its recorded prompt embeddings and `noise.packed`, and the
//! result equals diffusers' recorded outputs and the CPU path (Burn's Flex backend, run in the
//! same page) within 1e-3 relative.
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_TIMEOUT=300 wasm-pack test
//! --headless --chrome --test web_pipeline` (the README's browser-test command runs it too).
//! The fixture files are embedded with `include_bytes!` (≈3 MB).
#![cfg(target_arch = "wasm32")]

use std::ops::ControlFlow;

use burn::tensor::{Device, Tensor, TensorData};
use qwen_layered_web::gpu::read_f32;
use qwen_layered_web::pipeline::{
    DecomposeParams, LayeredOutput, LayeredPipeline, Noise, Progress, Traced,
};
use qwen_layered_web::weights::MemorySource;
use safetensors::SafeTensors;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const CASE: &str = "d_lin_nocfg_l1_s2_50x90";
const RECORD: &[u8] = include_bytes!("fixtures/d_lin_nocfg_l1_s2_50x90/record.safetensors");
const INPUT_PNG: &[u8] = include_bytes!("fixtures/d_lin_nocfg_l1_s2_50x90/input.png");
/// Tolerance, relative to max(1, |reference|).
const RTOL: f32 = 1e-3;

fn model_source() -> MemorySource {
    let mut src = MemorySource::new();
    macro_rules! file {
        ($path:literal) => {
            src.insert(
                $path,
                include_bytes!(concat!("fixtures/model/", $path)).to_vec(),
            );
        };
    }
    file!("transformer/config.json");
    file!("transformer/diffusion_pytorch_model.safetensors");
    file!("vae/config.json");
    file!("vae/diffusion_pytorch_model.safetensors");
    file!("scheduler/scheduler_config.json");
    src
}

/// A recorded f32 tensor and its shape.
fn recorded(name: &str) -> (Vec<f32>, Vec<usize>) {
    let st = SafeTensors::deserialize(RECORD).expect("record.safetensors parses");
    let view = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("{CASE}: {name}: {e}"));
    assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (values, view.shape().to_vec())
}

fn recorded_u8(name: &str) -> Vec<u8> {
    let st = SafeTensors::deserialize(RECORD).expect("record.safetensors parses");
    st.tensor(name).expect(name).data().to_vec()
}

fn tensor3(name: &str, device: &Device) -> Tensor<3> {
    let (v, s) = recorded(name);
    Tensor::from_data(TensorData::new(v, [s[0], s[1], s[2]]), device)
}

/// Largest `|got − want| / max(1, |want|)`, after checking the lengths match.
fn rel_err(what: &str, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            assert!(g.is_finite(), "{what}: non-finite value {g}");
            (g - w).abs() / w.abs().max(1.0)
        })
        .fold(0.0, f32::max)
}

struct Run {
    latents: Vec<f32>,
    decoded: Vec<f32>,
    layers: Vec<u8>,
    millis: f64,
    steps: Vec<usize>,
}

async fn run_on(device: &Device) -> Run {
    let t0 = js_sys::Date::now();
    let pipeline = LayeredPipeline::load(&model_source(), device)
        .await
        .expect("tiny pipeline loads");
    let load_ms = js_sys::Date::now() - t0;
    let input = image::load_from_memory(INPUT_PNG)
        .expect("input.png decodes")
        .to_rgba8();
    let params = DecomposeParams {
        layers: 1,
        steps: 2,
        resolution: 64, // the fixture's patched bucket (case.json: bucket.size)
        true_cfg_scale: 4.0,
        cfg_normalize: false,
    };
    let mut steps = Vec::new();
    let mut decoded: Option<Tensor<4>> = None;
    let t1 = js_sys::Date::now();
    let out: LayeredOutput = pipeline
        .run_traced(
            &input,
            &params,
            tensor3("text.prompt.embeds", device),
            None,
            Noise::Packed(tensor3("noise.packed", device)),
            |p| {
                if let Progress::Step { step, .. } = p {
                    steps.push(step);
                }
                ControlFlow::Continue(())
            },
            &mut |name, t| {
                if let ("vae.decode.output", Traced::Image(t)) = (name, t) {
                    decoded = Some(t.clone());
                }
            },
        )
        .await
        .expect("the pipeline runs");
    let latents = read_f32(out.latents, "latents", device).await.unwrap();
    let decoded = read_f32(decoded.expect("decode traced"), "decoded", device)
        .await
        .unwrap();
    let millis = js_sys::Date::now() - t1;
    console_log!("{device:?}: load {load_ms:.0} ms, run {millis:.0} ms");
    assert_eq!(out.layers.len(), 1);
    Run {
        latents,
        decoded,
        layers: out.layers[0].as_raw().clone(),
        millis,
        steps,
    }
}

/// The one test that acquires WebGPU (Burn's runtime initialises once per page).
#[wasm_bindgen_test]
async fn the_tiny_model_decomposes_on_webgpu_like_the_cpu_and_diffusers() {
    let start = js_sys::Date::now();
    let (gpu, setup) = Device::wgpu_options()
        .init_with_setup_async()
        .await
        .expect("Burn acquires a WebGPU device (run Chromium with --enable-unsafe-webgpu)");
    assert_eq!(setup.backend, wgpu::Backend::BrowserWebGpu);

    let on_gpu = run_on(&gpu).await;
    let on_cpu = run_on(&Device::flex()).await;
    assert_eq!(on_gpu.steps, vec![0, 1]);

    let (want_latents, _) = recorded("step1.latents");
    let (want_decoded, shape) = recorded("vae.decode.output");
    assert_eq!(shape, vec![1, 4, 1, 96, 32]);
    let errors = [
        (
            "GPU latents vs diffusers",
            rel_err("latents", &on_gpu.latents, &want_latents),
        ),
        (
            "GPU decode vs diffusers",
            rel_err("decode", &on_gpu.decoded, &want_decoded),
        ),
        (
            "GPU latents vs CPU",
            rel_err("latents", &on_gpu.latents, &on_cpu.latents),
        ),
        (
            "GPU decode vs CPU",
            rel_err("decode", &on_gpu.decoded, &on_cpu.decoded),
        ),
        (
            "CPU latents vs diffusers",
            rel_err("latents", &on_cpu.latents, &want_latents),
        ),
    ];
    for (what, err) in errors {
        console_log!("{what}: max relative error {err:.2e}");
        assert!(err <= RTOL, "{what}: {err:.2e} > {RTOL:.0e}");
    }
    // The uint8 layers: within one level of diffusers' and of the CPU path's.
    let want_layers = recorded_u8("output.layers");
    for (what, other) in [("diffusers", &want_layers), ("CPU", &on_cpu.layers)] {
        assert_eq!(on_gpu.layers.len(), other.len());
        let worst = on_gpu
            .layers
            .iter()
            .zip(other.iter())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        console_log!("GPU layer vs {what}: max difference {worst}/255");
        assert!(worst <= 1, "GPU layer vs {what}: {worst}/255");
    }
    console_log!(
        "WebGPU run {:.0} ms, CPU (Flex, wasm) run {:.0} ms, whole test {:.0} ms",
        on_gpu.millis,
        on_cpu.millis,
        js_sys::Date::now() - start
    );
}
