//! Native wgpu (Vulkan; Mesa lavapipe in CI) runs the same Burn code as the browser.
//! Needs a Vulkan driver: `apt-get install mesa-vulkan-drivers` (the test command installs it).
#![cfg(not(target_arch = "wasm32"))]

use burn::tensor::Device;
use qwen_layered_web::gpu::{GpuReport, matmul_self_test};

#[test]
fn burn_matmul_on_native_wgpu_matches_the_cpu_backend() {
    let (device, setup) = Device::wgpu_options().init_with_setup().unwrap_or_else(|err| {
        panic!("no native GPU adapter ({err}); install mesa-vulkan-drivers for lavapipe")
    });
    let report = GpuReport::from_native(&setup.adapter, &setup.device);
    eprintln!("{}", report.lines().join("\n"));
    assert!(report.limits.max_buffer_size > 0);
    for (m, k, n) in [(64, 48, 32), (33, 65, 17)] {
        let check = pollster::block_on(matmul_self_test(&device, m, k, n, 3)).unwrap();
        assert!(
            check.max_abs_err <= 1e-4,
            "[{m},{k}]x[{k},{n}]: max |gpu-cpu| {} at {} (gpu {}, cpu {})",
            check.max_abs_err,
            check.worst_index,
            check.gpu_value,
            check.cpu_value
        );
    }
}
