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
