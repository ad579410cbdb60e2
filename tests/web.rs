//! Browser tests (wasm-bindgen-test in headless Chromium, WebGPU through SwiftShader).
//!
//! Run with `bash scripts/test.sh` (all tests) or `wasm-pack test --headless --chrome`
//! (see README). They fail when WebGPU is missing: the device must be a real WebGPU device.
#![cfg(target_arch = "wasm32")]

use burn::tensor::Device;
use qwen_layered_web::gpu::matmul_self_test;
use qwen_layered_web::web::adapter::request_adapter_facts;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// One test acquires the device: Burn's runtime can be initialised once per page.
#[wasm_bindgen_test]
async fn burn_matmul_on_webgpu_matches_the_cpu_backend() {
    let facts = match request_adapter_facts().await {
        Ok(facts) => facts,
        Err(_) => {
            panic!("no WebGPU adapter: run Chromium with --enable-unsafe-webgpu (webdriver.json)")
        }
    };
    let (device, setup) = Device::wgpu_options()
        .init_with_setup_async()
        .await
        .expect("Burn acquires a WebGPU device");
    assert_eq!(
        setup.backend,
        wgpu::Backend::BrowserWebGpu,
        "Burn must run on the browser's WebGPU"
    );
    // The device got the adapter's maximum limits, not WebGPU's defaults (128 MiB binding).
    let limits = setup.device.limits();
    assert!(limits.max_storage_buffer_binding_size >= 128 << 20);
    web_sys::console::log_1(
        &format!(
            "adapter {} {} fallback={} maxStorageBufferBindingSize={} features={:?}",
            facts.vendor,
            facts.architecture,
            facts.is_fallback,
            limits.max_storage_buffer_binding_size,
            facts.features
        )
        .into(),
    );

    // Non-square, non-multiple-of-tile shapes catch indexing errors in the kernels.
    for (m, k, n) in [(64, 48, 32), (33, 65, 17)] {
        let check = matmul_self_test(&device, m, k, n, 11)
            .await
            .expect("matmul runs and reads back");
        check.within(1e-4).unwrap_or_else(|msg| panic!("{msg}"));
        // A result of all zeros would also "match" zeros: the CPU value must be non-trivial.
        assert!(check.cpu_value.abs() > 0.0 || check.max_abs_err == 0.0);
    }
}

#[wasm_bindgen_test]
fn a_non_image_file_is_an_error_not_a_panic() {
    let err = qwen_layered_web::image_io::decode_image("notes.txt", b"plain text").unwrap_err();
    assert!(err.to_string().contains("not an image"));
}

/// The real checkpoint's sizes in a safetensors header, read on wasm32 (32-bit `usize`): the
/// text encoder's 152064 × 3584 bf16 embedding (1.09 GB: more bits than a `u32` counts) and a
/// tensor past 4 GiB in a ~5 GB shard. The `safetensors` crate's `Metadata` refused both here,
/// so the page could read neither the real text encoder nor the real transformer's shards.
#[wasm_bindgen_test]
async fn real_sized_safetensors_headers_parse_on_wasm32() {
    use qwen_layered_web::weights::{SafetensorsFolder, SyntheticSource, SyntheticTensor};
    let source = SyntheticSource::new(
        "text_encoder/model.safetensors",
        vec![
            SyntheticTensor::linear_weight("model.embed_tokens", 3584, 152_064),
            SyntheticTensor::linear_weight("filler", 50_000, 40_000), // 4 GB
            SyntheticTensor::linear_weight("lm_head", 3584, 152_064),
        ],
        1,
    )
    .expect("synthetic file");
    let folder = SafetensorsFolder::open(&source, "text_encoder")
        .await
        .expect("the header parses on wasm32");
    let embed = folder.get("model.embed_tokens.weight").expect("embedding");
    let bf16_bytes = 152_064 * 3584 * 2; // 1.09 GB: 17.4 G bits
    assert_eq!(
        (embed.shape.as_slice(), embed.len),
        (&[152_064, 3584][..], bf16_bytes)
    );
    let head = folder.get("lm_head.weight").expect("lm_head");
    assert!(head.offset > 1 << 32, "lm_head at {}", head.offset);
    assert_eq!(head.offset + head.len, source.len());
}
