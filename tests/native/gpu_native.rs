//! Native wgpu (Vulkan; Mesa lavapipe in CI) runs the same Burn code as the browser.
//! Needs a Vulkan driver: `apt-get install mesa-vulkan-drivers` (the test command installs it).

use qwen_layered_web::gpu::matmul_self_test;

use crate::common;

#[test]
fn burn_matmul_on_native_wgpu_matches_the_cpu_backend() {
    let Some((device, report)) = common::gpu_with_report() else {
        return;
    };
    eprintln!("{}", report.lines().join("\n"));
    assert!(report.limits.max_buffer_size > 0);
    for (m, k, n) in [(64, 48, 32), (33, 65, 17)] {
        let check = pollster::block_on(matmul_self_test(&device, m, k, n, 3)).unwrap();
        check.within(1e-4).unwrap_or_else(|msg| panic!("{msg}"));
    }
}
