//! Block streaming (tiny transformer, CPU/Flex, f32 and 8-bit, from safetensors and from GGUF):
//! a transformer that keeps only a ring of `R` blocks resident and reads the others from the
//! weight source when their turn comes gives the same output as the all-resident model, and
//! never holds more than `R`.
//!
//! Run: `cargo test --test native transformer_streaming:: -- --nocapture`.

use crate::common;

use burn::tensor::{Int, Tensor, TensorData};
use common::{cpu, fixtures_dir, model_source, read};
use qwen_layered_web::gpu::seeded_values;
use qwen_layered_web::model::transformer::{
    BlockProvider, QwenImageTransformer2DModel, QwenImageTransformerConfig, ResidentBlocks,
    TransformerInput,
};
use qwen_layered_web::weights::{DirSource, Precision, read_json};

fn tensor3(seed: u64, shape: [usize; 3]) -> Tensor<3> {
    let values = seeded_values(seed, shape.iter().product());
    Tensor::from_data(TensorData::new(values, shape), &cpu())
}

/// Seeded inputs for the tiny model: 2 frames of 4×4 tokens (+ 1 condition) and 7 text tokens.
fn input<'a>(shapes: &'a [Vec<(usize, usize, usize)>], seed: u64, t: f32) -> TransformerInput<'a> {
    let s_img: usize = shapes[0].iter().map(|(f, h, w)| f * h * w).sum();
    TransformerInput {
        hidden_states: tensor3(seed, [1, s_img, 64]),
        encoder_hidden_states: tensor3(seed + 1, [1, 7, 64]),
        encoder_hidden_states_mask: None,
        timestep: Tensor::from_data(TensorData::new(vec![t], [1]), &cpu()),
        img_shapes: shapes,
        additional_t_cond: Some(Tensor::<1, Int>::from_data(
            TensorData::new(vec![0i64], [1]),
            &cpu(),
        )),
    }
}

/// Streaming against resident for the tiny model's safetensors, or (`gguf`) for one of the
/// GGUF files of `tests/fixtures/gguf` (made by `gen_gguf.py` from the same weights).
fn check(precision: Precision, gguf: Option<&str>) {
    let (source, gguf_source) = (model_source(), DirSource::new(fixtures_dir().join("gguf")));
    let config: QwenImageTransformerConfig =
        pollster::block_on(read_json(&source, "transformer/config.json")).expect("config");
    let resident = pollster::block_on(async {
        match gguf {
            None => {
                QwenImageTransformer2DModel::load_precision(
                    &source,
                    "transformer",
                    &cpu(),
                    precision,
                )
                .await
            }
            Some(file) => {
                QwenImageTransformer2DModel::load_gguf(
                    &gguf_source,
                    file,
                    &config,
                    &cpu(),
                    precision,
                )
                .await
            }
        }
    })
    .expect("resident transformer loads");
    let n = resident.config.num_layers;
    assert_eq!(n, 2, "the tiny model has two blocks");
    let (skeleton, mut stream) = pollster::block_on(async {
        match gguf {
            None => {
                QwenImageTransformer2DModel::load_streaming(
                    &source,
                    "transformer",
                    &cpu(),
                    precision,
                    1,
                )
                .await
            }
            Some(file) => {
                QwenImageTransformer2DModel::load_streaming_gguf(
                    &gguf_source,
                    file,
                    &config,
                    &cpu(),
                    precision,
                    1,
                )
                .await
            }
        }
    })
    .expect("streaming transformer loads");
    assert!(skeleton.transformer_blocks.is_empty());
    assert_eq!(
        stream.resident(),
        vec![0],
        "block 0 is loaded to check the layout"
    );

    let shapes = vec![vec![(1, 4, 4), (1, 4, 4), (1, 4, 4)]];
    let mut worst = 0f32;
    for (k, t) in [0.9f32, 0.4, 0.05].into_iter().enumerate() {
        let want = read(resident.forward(input(&shapes, 10 + k as u64, t)).unwrap());
        let got = read(
            pollster::block_on(
                skeleton.forward_with(input(&shapes, 10 + k as u64, t), &mut stream),
            )
            .unwrap(),
        );
        // The same forward code through ResidentBlocks.
        let mut blocks = ResidentBlocks(&resident.transformer_blocks);
        let via = read(
            pollster::block_on(
                resident.forward_with(input(&shapes, 10 + k as u64, t), &mut blocks),
            )
            .unwrap(),
        );
        assert_eq!(via, want, "forward_with(ResidentBlocks) == forward");
        assert_eq!(got.len(), want.len());
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(err);
        assert!(
            err <= 1e-6,
            "{precision:?} forward {k}: streaming differs by {err}"
        );
    }
    let stats = stream.stats();
    println!("{precision:?} {gguf:?}: max |streaming − resident| = {worst:e}; {stats:?}");
    // R = 1: never more than one block resident; 1 preload + every block on every forward
    // except block 0 on the first (still resident from the preload).
    assert_eq!(stats.peak_resident, 1);
    assert_eq!(stats.loads, 1 + 3 * n - 1);
    assert_eq!(stats.evictions, stats.loads - 1);
    assert_eq!(stream.resident(), vec![n - 1]);

    // The skeleton alone refuses to run without blocks instead of silently skipping them.
    let err = skeleton
        .forward(input(&shapes, 1, 0.5))
        .unwrap_err()
        .to_string();
    assert!(err.contains("0 transformer blocks"), "{err}");
}

#[test]
fn streaming_with_a_ring_of_one_equals_all_resident_f32() {
    check(Precision::F32, None);
}

#[test]
fn streaming_with_a_ring_of_one_equals_all_resident_q8() {
    check(Precision::Q8, None);
}

#[test]
fn streaming_from_gguf_with_a_ring_of_one_equals_all_resident() {
    // Q4_0 blocks taken as they are, and Q8_0 dequantized to f32.
    check(Precision::Q4, Some("transformer-Q4_0.gguf"));
    check(Precision::F32, Some("transformer-Q8_0.gguf"));
}

#[test]
fn a_ring_as_large_as_the_model_loads_each_block_once() {
    let source = model_source();
    let (model, mut stream) = pollster::block_on(QwenImageTransformer2DModel::load_streaming(
        &source,
        "transformer",
        &cpu(),
        Precision::F32,
        2,
    ))
    .unwrap();
    let shapes = vec![vec![(1, 2, 2), (1, 2, 2)]];
    for k in 0..3 {
        pollster::block_on(model.forward_with(input(&shapes, k, 0.5), &mut stream)).unwrap();
    }
    let stats = stream.stats();
    assert_eq!(
        (stats.loads, stats.evictions, stats.peak_resident),
        (2, 0, 2)
    );
    assert_eq!(stream.num_blocks(), 2);
    assert!(pollster::block_on(stream.block(2)).is_err());
    stream.clear();
    assert!(stream.resident().is_empty());
    let zero = pollster::block_on(QwenImageTransformer2DModel::load_streaming(
        &source,
        "transformer",
        &cpu(),
        Precision::F32,
        0,
    ));
    assert!(zero.is_err(), "a ring of zero blocks is refused");
}
