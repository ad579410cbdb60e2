//! The hand-written WGSL kernels (`src/kernels/`, `shaders/`) against their plain-Burn twins on
//! the browser's WebGPU (wasm-bindgen-test in headless Chromium; SwiftShader without a GPU), on
//! the same seeded cases as the native `tests/native/kernels.rs`. Reads back asynchronously only.
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_TIMEOUT=300 wasm-pack test
//! --headless --chrome --test web_kernels` (`-- --nocapture` prints the measured errors).
#![cfg(target_arch = "wasm32")]

use burn::tensor::Device;
use qwen_layered_web::kernels::qmatmul::{TwinCase, twin_check};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// Relative error allowed between the kernel and its twins, `max |kernel − twin| / max |f64
/// reference|` (the same bound as natively).
const TOL: f32 = 2e-6;

/// The one test that acquires WebGPU (Burn's runtime initialises once per page).
#[wasm_bindgen_test]
async fn qmatmul_matches_its_twins_on_webgpu() {
    let (gpu, setup) = Device::wgpu_options()
        .init_with_setup_async()
        .await
        .expect("Burn acquires a WebGPU device (run Chromium with --enable-unsafe-webgpu)");
    assert_eq!(setup.backend, wgpu::Backend::BrowserWebGpu);
    for case in TwinCase::standard() {
        let check = twin_check(&gpu, case).await.expect("twin check");
        web_sys::console::log_1(
            &format!(
                "{:?}: kernel vs twin(cpu) {:.2e}, kernel vs f64 {:.2e}, \
                 twin(cpu) vs f64 {:.2e}",
                check.case, check.vs_twin_cpu, check.kernel_vs_f64, check.twin_cpu_vs_f64
            )
            .into(),
        );
        check.within(TOL).unwrap_or_else(|msg| panic!("{msg}"));
    }
}
