//! One transformer block with seeded random weights (PyTorch's default init), loaded by the
//! real loader in f32, 8-bit and 4-bit and run on the same seeded inputs on the CPU backend
//! (Flex): the quantized outputs must stay within cosine 0.999 (8-bit) and 0.99 (4-bit) of the
//! f32 ones (issue 6 item 6).
//!
//! - `quantized_full_size_block_agrees_with_f32` (ignored: minutes in an unoptimised build):
//!   the real width (3072 = 24 heads × 128, MLP 12288: 340M weights) on a short sequence
//!   (3 frames of 4×4 = 48 image tokens + 16 text tokens). Run it optimised:
//!   `cargo test --profile native --test native fullsize_block:: -- --ignored --nocapture`.
//!   The same check at the real 9600 + 300 tokens: `qwen-layered-bench cosine` (BENCHMARKS.md).
//! - `quantized_narrow_block_agrees_with_f32` (CI): the same code with 2 heads × 128 (width
//!   256), a few seconds even unoptimised.

use burn::tensor::Device;
use qwen_layered_web::bench::{Agreement, BlockShape, HEADS, block_agreement};
use qwen_layered_web::weights::Precision;

fn check(heads: usize) -> [Agreement; 2] {
    let shape = BlockShape::frames(3, 4, 4, 16);
    let results = pollster::block_on(block_agreement(
        &shape,
        heads,
        1,
        2,
        &[Precision::Q8, Precision::Q4],
        &Device::flex(),
    ))
    .expect("synthetic block loads and runs");
    for a in &results {
        println!(
            "{heads} heads, {:?} vs f32 ({} image + {} text tokens): cosine image {:.6}, text \
             {:.6}; updates (output - input): image {:.6}, text {:.6}",
            a.precision,
            shape.s_img(),
            shape.s_txt,
            a.img,
            a.txt,
            a.img_delta,
            a.txt_delta
        );
    }
    let [q8, q4] = results[..] else {
        panic!("two precisions asked, {} results", results.len())
    };
    assert!(q8.img >= 0.999 && q8.txt >= 0.999, "8-bit: {q8:?}");
    assert!(q4.img >= 0.99 && q4.txt >= 0.99, "4-bit: {q4:?}");
    // The check sees the quantization at all: 4-bit is measurably further from f32 than 8-bit,
    // and neither is bit-identical to f32.
    assert!(
        q4.img_delta < q8.img_delta && q8.img_delta < 1.0,
        "{q8:?} {q4:?}"
    );
    [q8, q4]
}

#[test]
#[ignore = "340M weights: minutes unoptimised; run with --profile native -- --ignored"]
fn quantized_full_size_block_agrees_with_f32() {
    check(HEADS);
}

#[test]
fn quantized_narrow_block_agrees_with_f32() {
    check(2);
}
