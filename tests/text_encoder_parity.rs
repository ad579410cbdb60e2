//! The Qwen2.5-VL text encoder (tiny config, CPU/Flex, f32) against transformers 5.24 /
//! diffusers 0.42.1: the tokenizer's ids, the language model's last hidden state, the prompt
//! embeddings of every case, and the KV-cache path used for generation.
//!
//! Fixtures: `tests/fixtures/` (`text.*` tensors of each case's record).
//! Run: `cargo test --test text_encoder_parity -- --nocapture` (prints every max error).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use common::{Record, assert_close, cases, check, cpu, model_source, read};
use qwen_layered_web::model::text_encoder::{LoadOptions, QwenLanguageModel, RopePositions};

/// Text encoder outputs (hidden states of unit RMS scale).
const ATOL: f32 = 1e-4;

fn load_model(lm_head: bool) -> QwenLanguageModel {
    pollster::block_on(QwenLanguageModel::load(
        &model_source(),
        &cpu(),
        LoadOptions { lm_head },
    ))
    .expect("tiny text encoder loads")
}

fn ids_tensor(ids: &[i64]) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &cpu())
}

/// The prompt keys of a case's record: `prompt`, and `negative` when recorded.
fn text_keys(rec: &Record) -> Vec<&'static str> {
    ["prompt", "negative"]
        .into_iter()
        .filter(|k| rec.has(&format!("text.{k}.input_ids")))
        .collect()
}

#[test]
fn last_hidden_state_matches_from_the_recorded_ids() {
    let model = load_model(false);
    let mut n = 0;
    for case in cases() {
        let rec = Record::load(&case);
        for key in text_keys(&rec) {
            let name = format!("text.{key}.last_hidden_state");
            if !rec.has(&name) {
                continue;
            }
            let (ids, _) = rec.i64(&format!("text.{key}.input_ids"));
            let hidden = model.forward(ids_tensor(&ids), None).expect("forward");
            check(&rec, &name, hidden, ATOL);
            n += 1;
        }
    }
    assert_eq!(
        n, 2,
        "case a records the prompt's and the negative's last hidden state"
    );
}

#[test]
fn kv_cache_prefill_chunks_and_single_tokens_equal_one_forward() {
    let model = load_model(false);
    let rec = Record::load("a_lin_cfgnorm_l3_s3_64");
    let (ids, _) = rec.i64("text.prompt.input_ids");
    let full = read(model.forward(ids_tensor(&ids), None).expect("forward"));
    let d = model.config().hidden_size;

    // Prefill 150 tokens (causal), a chunk of 5 after them (offset mask), then one at a time.
    let mut cache = model.new_cache();
    let mut got = Vec::new();
    let mut start = 0;
    for len in [150, 5]
        .into_iter()
        .chain(std::iter::repeat_n(1, ids.len() - 155))
    {
        let chunk = &ids[start..start + len];
        let out = model
            .forward(ids_tensor(chunk), Some(&mut cache))
            .expect("cached forward");
        got.extend(read(out));
        start += len;
        assert_eq!(cache.len(), start);
    }
    assert_close(
        "cached forward vs one forward",
        &got,
        &full,
        &[1, ids.len(), d],
        1e-5,
    );

    // forward_embeds with explicit text positions is the same path.
    let embeds = model.embed(ids_tensor(&ids));
    let out = model
        .forward_embeds(embeds, &RopePositions::text(0, ids.len()), None)
        .expect("forward_embeds");
    assert_close("forward_embeds", &read(out), &full, &[1, ids.len(), d], 0.0);
}

#[test]
fn lm_head_is_loaded_on_request_only() {
    let model = load_model(false);
    assert!(model.lm_head.is_none());
    let err = model
        .logits(Tensor::zeros([1, 1, 64], &cpu()))
        .expect_err("no lm_head");
    assert!(err.to_string().contains("lm_head was not loaded"), "{err}");

    let model = load_model(true);
    let rec = Record::load("a_lin_cfgnorm_l3_s3_64");
    let (ids, _) = rec.i64("text.prompt.input_ids");
    let hidden = model.forward(ids_tensor(&ids), None).expect("forward");
    let logits = model.logits(hidden).expect("logits");
    assert_eq!(logits.dims(), [1, ids.len(), 288]);
    let values = read(logits);
    assert!(values.iter().all(|v| v.is_finite()));
}
