//! The weight loader on the tiny fixture checkpoints: in-memory and filesystem sources, sharded
//! folders, and the errors for missing, unexpected and wrongly shaped tensors.

use crate::common;

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use common::{Record, cpu, fixtures_dir, read};
use qwen_layered_web::model::transformer::{QwenImageTransformer2DModel, TransformerInput};
use qwen_layered_web::model::vae::AutoencoderKLQwenImage;
use qwen_layered_web::weights::{MemorySource, SafetensorsFolder};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

const WEIGHTS: &str = "transformer/diffusion_pytorch_model.safetensors";

fn file(rel: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join("model").join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The tensors of a safetensors file as owned `(name, dtype, shape, bytes)`.
fn tensors(bytes: &[u8]) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let st = SafeTensors::deserialize(bytes).expect("fixture parses");
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn serialize(list: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = list
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                TensorView::new(*d, s.clone(), b).expect("valid view"),
            )
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

/// A memory source with the transformer config and the given weight file bytes.
fn transformer_source(weights: Vec<u8>) -> MemorySource {
    let mut src = MemorySource::new();
    src.insert("transformer/config.json", file("transformer/config.json"));
    src.insert(WEIGHTS, weights);
    src
}

fn load(src: &MemorySource) -> qwen_layered_web::Result<QwenImageTransformer2DModel> {
    pollster::block_on(QwenImageTransformer2DModel::load(
        src,
        "transformer",
        &cpu(),
    ))
}

/// The first recorded transformer call, run on `model`.
fn first_call(model: &QwenImageTransformer2DModel) -> Vec<f32> {
    let rec = Record::load("a_lin_cfgnorm_l3_s3_64");
    let device = cpu();
    let shapes = rec.img_shapes();
    let out = model
        .forward(TransformerInput {
            hidden_states: rec.tensor("step0.transformer_in", [1, 80, 64], &device),
            encoder_hidden_states: rec.tensor("text.prompt.embeds", [1, 173, 64], &device),
            encoder_hidden_states_mask: None,
            timestep: rec.tensor("step0.timestep", [1], &device),
            img_shapes: &shapes,
            additional_t_cond: Some(Tensor::<1, Int>::from_data(
                TensorData::new(vec![0i64], [1]),
                &device,
            )),
        })
        .expect("forward");
    read(out)
}

#[test]
fn in_memory_source_loads_every_tensor() {
    let model = load(&transformer_source(file(WEIGHTS))).expect("loads");
    // 340,608 params in the tiny transformer (fixtures README).
    assert_eq!(model.num_params(), 340_608);
    // The VAE loads with its unused time_conv tensors; causal 3×3×3 convs keep 1 of 3 taps.
    pollster::block_on(AutoencoderKLQwenImage::load(
        &common::model_source(),
        "vae",
        &cpu(),
    ))
    .expect("vae loads");
}

#[test]
fn sharded_folder_gives_the_same_model() {
    let all = tensors(&file(WEIGHTS));
    let (a, b) = all.split_at(all.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (name, shard) in a
        .iter()
        .map(|t| (&t.0, "shard-1.safetensors"))
        .chain(b.iter().map(|t| (&t.0, "shard-2.safetensors")))
    {
        weight_map.insert(name.clone(), serde_json::Value::from(shard));
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    let mut src = MemorySource::new();
    src.insert("transformer/config.json", file("transformer/config.json"));
    src.insert(
        "transformer/diffusion_pytorch_model.safetensors.index.json",
        serde_json::to_vec(&index).expect("json"),
    );
    src.insert("transformer/shard-1.safetensors", serialize(a));
    src.insert("transformer/shard-2.safetensors", serialize(b));
    let folder = pollster::block_on(SafetensorsFolder::open(&src, "transformer")).expect("index");
    assert_eq!(folder.files().len(), 2);
    let sharded = load(&src).expect("sharded loads");
    let single = load(&transformer_source(file(WEIGHTS))).expect("single loads");
    assert_eq!(first_call(&sharded), first_call(&single));
}

#[test]
fn missing_tensor_is_named() {
    let mut all = tensors(&file(WEIGHTS));
    all.retain(|t| t.0 != "transformer_blocks.1.attn.norm_added_k.weight");
    let err = load(&transformer_source(serialize(&all)))
        .expect_err("must fail")
        .to_string();
    assert!(
        err.contains("transformer_blocks.1.attn.norm_added_k.weight"),
        "{err}"
    );
    assert!(
        err.contains("missing") && err.contains("[32]") && err.contains(WEIGHTS),
        "{err}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let mut all = tensors(&file(WEIGHTS));
    all.push((
        "transformer_blocks.9.attn.to_q.weight".into(),
        safetensors::Dtype::F32,
        vec![2],
        vec![0; 8],
    ));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let err = load(&transformer_source(serialize(&all)))
        .expect_err("must fail")
        .to_string();
    assert!(
        err.contains("transformer_blocks.9.attn.to_q.weight") && err.contains("unexpected"),
        "{err}"
    );
}

#[test]
fn wrong_shape_names_both_shapes() {
    let mut all = tensors(&file(WEIGHTS));
    let t = all
        .iter_mut()
        .find(|t| t.0 == "proj_out.weight")
        .expect("proj_out.weight");
    assert_eq!(t.2, vec![64, 64]);
    t.2 = vec![32, 128];
    let err = load(&transformer_source(serialize(&all)))
        .expect_err("must fail")
        .to_string();
    assert!(
        err.contains("proj_out.weight") && err.contains("[32, 128]") && err.contains("[64, 64]"),
        "{err}"
    );
    assert!(err.contains(WEIGHTS), "{err}");
}

#[test]
fn f32_and_f16_checkpoints_load_like_bf16() {
    // Re-encode every bf16 tensor as f32 and as f16 (bf16 → f32 is exact; → f16 is exact for
    // these small weights only where representable, so compare f32 bitwise and f16 loosely).
    let all = tensors(&file(WEIGHTS));
    let convert = |to: safetensors::Dtype| -> Vec<_> {
        all.iter()
            .map(|(n, d, s, b)| {
                assert_eq!(*d, safetensors::Dtype::BF16);
                let vals = b
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32());
                let bytes: Vec<u8> = match to {
                    safetensors::Dtype::F32 => vals.flat_map(f32::to_le_bytes).collect(),
                    _ => vals
                        .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
                        .collect(),
                };
                (n.clone(), to, s.clone(), bytes)
            })
            .collect()
    };
    let base = first_call(&load(&transformer_source(file(WEIGHTS))).expect("bf16"));
    let f32_out = first_call(
        &load(&transformer_source(serialize(&convert(
            safetensors::Dtype::F32,
        ))))
        .expect("f32"),
    );
    assert_eq!(base, f32_out);
    let f16_out = first_call(
        &load(&transformer_source(serialize(&convert(
            safetensors::Dtype::F16,
        ))))
        .expect("f16"),
    );
    let max = base
        .iter()
        .zip(&f16_out)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max < 5e-2, "f16 weights drift {max}");
}
