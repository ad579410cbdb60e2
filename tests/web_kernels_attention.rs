//! The flash-attention WGSL kernel against its plain-Burn twin on the browser's WebGPU
//! (wasm-bindgen-test in headless Chromium; SwiftShader without a GPU), on seeded random q, k, v,
//! and against the same twin on the CPU (Flex) in the same page. Burn's wgpu backend has no
//! fusion in wasm, so this covers the path the worker takes.
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_TIMEOUT=300 wasm-pack test
//! --headless --chrome --test web_kernels_attention` (`-- --nocapture` prints the errors).
#![cfg(target_arch = "wasm32")]

use burn::tensor::{Device, Tensor, TensorData};
use qwen_layered_web::gpu::{read_f32, seeded_values};
use qwen_layered_web::kernels::attention::{
    attention, attention_reference, flash_attention, kernel_supports,
};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// Largest allowed `|kernel − twin| / max(1, |twin|)` (as in `tests/native/kernels_attention.rs`).
const TOL: f32 = 2e-5;

/// Seeded values in [-amp, amp) as `[B, H, S, Dh]`; `view` builds it as the transformer does,
/// a `swap_dims` view of `[B, S, H, Dh]`.
fn seeded(seed: u64, [b, h, s, d]: [usize; 4], amp: f32, view: bool, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = seeded_values(seed, b * h * s * d)
        .into_iter()
        .map(|x| x * amp)
        .collect();
    match view {
        true => {
            Tensor::<4>::from_data(TensorData::new(values, [b, s, h, d]), device).swap_dims(1, 2)
        }
        false => Tensor::from_data(TensorData::new(values, [b, h, s, d]), device),
    }
}

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

async fn read(t: Tensor<4>, device: &Device) -> Vec<f32> {
    read_f32(t, "attention output", device)
        .await
        .expect("async readback")
}

/// The one test that acquires WebGPU (Burn's runtime initialises once per page).
#[wasm_bindgen_test]
async fn flash_attention_matches_the_plain_burn_twin_on_webgpu_and_cpu() {
    let (gpu, setup) = Device::wgpu_options()
        .init_with_setup_async()
        .await
        .expect("Burn acquires a WebGPU device (run Chromium with --enable-unsafe-webgpu)");
    assert_eq!(setup.backend, wgpu::Backend::BrowserWebGpu);
    let cpu = Device::flex();

    // (q shape [B, H, S_q, Dh], S_kv, q amplitude, strided views)
    let cases = [
        ([1, 2, 77, 32], 77, 1.0, true),
        ([2, 3, 45, 16], 130, 2.0, false),
        ([1, 2, 33, 8], 33, 1.0, false),
        ([1, 2, 301, 128], 301, 1.0, true),
        ([1, 2, 200, 128], 200, 8.0, false),
    ];
    for (i, ([b, h, s_q, d], s_kv, amp, view)) in cases.into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let make = |device: &Device| {
            [
                seeded(seed, [b, h, s_q, d], amp, view, device),
                seeded(seed + 1, [b, h, s_kv, d], 1.0, view, device),
                seeded(seed + 2, [b, h, s_kv, d], 1.0, view, device),
            ]
        };
        let [q, k, v] = make(&gpu);
        assert!(kernel_supports(&q, &k, &v), "case {i}: the kernel takes it");
        let got = flash_attention(q.clone(), k.clone(), v.clone()).expect("the kernel launches");
        let got = read(got, &gpu).await;
        let twin = read(attention_reference(q.clone(), k.clone(), v.clone()), &gpu).await;
        let dispatched = read(attention(q, k, v), &gpu).await;
        let [q, k, v] = make(&cpu);
        assert!(!kernel_supports(&q, &k, &v), "the CPU keeps plain Burn");
        let on_cpu = read(attention_reference(q, k, v), &cpu).await;

        let what = format!("case {i} q {:?} S_kv {s_kv}", [b, h, s_q, d]);
        let e_twin = rel_err(&what, &got, &twin);
        let e_cpu = rel_err(&what, &got, &on_cpu);
        console_log!("{what}: kernel vs WebGPU twin {e_twin:.2e}, kernel vs CPU twin {e_cpu:.2e}");
        assert!(
            e_twin <= TOL,
            "{what}: kernel vs WebGPU twin {e_twin:.2e} > {TOL:.0e}"
        );
        assert!(
            e_cpu <= TOL,
            "{what}: kernel vs CPU twin {e_cpu:.2e} > {TOL:.0e}"
        );
        assert_eq!(
            got, dispatched,
            "{what}: attention() runs the kernel on WebGPU"
        );
    }
}
