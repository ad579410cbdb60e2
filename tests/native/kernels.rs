//! The hand-written WGSL kernels (`src/kernels/`, `shaders/`) against their plain-Burn twins on
//! native wgpu (Vulkan; Mesa lavapipe on the dev box and in CI), on seeded random inputs.
//!
//! No adapter is a failure ([`common::gpu`]).
//! Run: `cargo test --test native kernels:: -- --nocapture` (prints the measured errors and a timing).

use crate::common;

use std::time::Instant;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use qwen_layered_web::gpu::seeded_values;
use qwen_layered_web::kernels::qmatmul::{TwinCase, twin, twin_check};
use qwen_layered_web::model::nn::{BlockWeight, Linear, QuantWeight, QuantizedMatmul};
use qwen_layered_web::weights::QuantizedMatrix;

use common::gpu;

/// Relative error allowed between the kernel and its twins (both accumulate in f32, in a
/// different order): `max |kernel − twin| / max |f64 reference|`.
const TOL: f32 = 2e-6;

#[test]
fn qmatmul_matches_its_twins_on_wgpu() {
    let Some(device) = gpu() else { return };
    for case in TwinCase::standard() {
        let check = pollster::block_on(twin_check(&device, case)).expect("twin check");
        eprintln!(
            "{:?}: kernel vs twin(cpu) {:.2e}, kernel vs f64 {:.2e}, \
             twin(cpu) vs f64 {:.2e}",
            check.case, check.vs_twin_cpu, check.kernel_vs_f64, check.twin_cpu_vs_f64
        );
        check.within(TOL).unwrap_or_else(|msg| panic!("{msg}"));
    }
}

/// Both ways a quantized weight is multiplied on wgpu (Burn's quantized matmul, and Burn's
/// `dequantize` then its f32 matmul) give the twin's product, at 8 and 4 bits, for inputs above
/// and below `DEQUANTIZE_MIN_ROWS` (which stay fused), with and without a bias.
#[test]
fn fused_and_dequantized_quantized_matmuls_match_the_twin_on_wgpu() {
    let Some(device) = gpu() else { return };
    let (k, n) = (96, 70);
    for (bits, rows, seed) in [(8, 37, 31), (4, 37, 32), (4, 3, 33), (8, 1, 34)] {
        let q = QuantizedMatrix::quantize(&seeded_values(seed, n * k), n, k, bits).unwrap();
        let x = Tensor::<2>::from_data(
            TensorData::new(seeded_values(seed + 100, rows * k), [rows, k]),
            &device,
        );
        let bias = (rows > 2).then(|| {
            Tensor::<1>::from_data(TensorData::new(seeded_values(seed + 200, n), [n]), &device)
        });
        let twin_y = twin(
            x.clone(),
            &BlockWeight::new(q.clone(), &device),
            bias.clone(),
        );
        let scale: f32 = twin_y.clone().abs().max().into_scalar();
        let weight = QuantWeight::new(q, &device);
        for how in [QuantizedMatmul::Fused, QuantizedMatmul::Dequantize] {
            let y = weight.linear(x.clone(), bias.clone(), how);
            assert_eq!(y.dims(), [rows, n]);
            let diff: f32 = (y - twin_y.clone()).abs().max().into_scalar();
            eprintln!(
                "{bits}-bit, {rows} rows, {how:?}: max |y - twin| / max |twin| = {:.2e}",
                diff / scale
            );
            assert!(
                diff <= 1e-5 * scale,
                "{bits}-bit, {rows} rows, {how:?}: {diff} of {scale}"
            );
        }
    }
}

/// A wrong kernel must fail the check: the same layer with one flipped code word differs.
#[test]
fn twin_check_detects_a_corrupted_weight() {
    let Some(device) = gpu() else { return };
    let (m, k, n) = (5, 64, 9);
    let q = QuantizedMatrix::quantize(&seeded_values(11, n * k), n, k, 8).unwrap();
    let mut bad = q.clone();
    bad.words[3] ^= 0x0000_ff00;
    let x = Tensor::<2>::from_data(TensorData::new(seeded_values(12, m * k), [m, k]), &device);
    let good = Linear::from_blocks(q.clone(), None, &device).forward(x.clone());
    let twin_bad = twin(x, &BlockWeight::new(bad, &device), None);
    let diff: f32 = (good - twin_bad).abs().max().into_scalar();
    assert!(diff > 1e-3, "a changed code word changed nothing ({diff})");
}

/// Kernel vs twin time at a moderate shape (printed, not asserted: lavapipe is a CPU, and the
/// numbers swing with the machine's load). Every call gets a differently scaled `x`, so no
/// result can be reused. Run: `cargo test --test native kernels::qmatmul_timing_on_wgpu -- --ignored --nocapture`.
#[test]
#[ignore = "timing only; run explicitly"]
fn qmatmul_timing_on_wgpu() {
    let Some(device) = gpu() else { return };
    let (m, k, n) = (256, 1024, 1024);
    let x = Tensor::<2>::from_data(TensorData::new(seeded_values(21, m * k), [m, k]), &device);
    for bits in [8, 4] {
        let q = QuantizedMatrix::quantize(&seeded_values(22, n * k), n, k, bits).unwrap();
        let bias = Param::from_tensor(Tensor::<1>::from_data(
            TensorData::new(seeded_values(23, n), [n]),
            &device,
        ));
        let layer = Linear::from_blocks(q.clone(), Some(bias), &device);
        let blocks = BlockWeight::new(q.clone(), &device);
        let w = &blocks;
        let time = |f: &dyn Fn(Tensor<2>) -> Tensor<2>| {
            let _ = f(x.clone()).into_data(); // warm-up: compile, autotune
            let reps = 3;
            let start = Instant::now();
            for r in 0..reps {
                let _ = f(x.clone() * (r + 2) as f32).into_data();
            }
            start.elapsed().as_secs_f64() / reps as f64
        };
        let kernel = time(&|x| layer.forward(x));
        let twin_t = time(&|x| twin(x, w, layer.bias.as_ref().map(|b| b.val())));
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        eprintln!(
            "qmatmul {bits}-bit M={m} K={k} N={n}: Linear::forward (Burn quantized matmul) {:.0} ms ({:.2} GFLOP/s), \
             twin (dequantize + Burn matmul) {:.0} ms ({:.2} GFLOP/s), incl. readback",
            kernel * 1e3,
            gflop / kernel,
            twin_t * 1e3,
            gflop / twin_t
        );
    }
}
