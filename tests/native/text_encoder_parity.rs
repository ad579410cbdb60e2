//! The Qwen2.5-VL text encoder (tiny config, CPU/Flex, f32) against transformers 5.24 /
//! diffusers 0.42.1: the tokenizer's ids, the language model's last hidden state, the prompt
//! embeddings of every case, and the KV-cache path used for generation.
//!
//! Fixtures: `tests/fixtures/` (`text.*` tensors of each case's record).
//! Run: `cargo test --test native text_encoder_parity:: -- --nocapture` (prints every max error).

use crate::common;

use burn::tensor::{Int, Tensor, TensorData};
use common::{Record, assert_close, cases, check, cpu, model_source, read};
use qwen_layered_web::model::text_encoder::{LoadOptions, QwenLanguageModel, RopePositions};
use qwen_layered_web::text::{
    PROMPT_TEMPLATE_ENCODE_START_IDX, PromptEncoder, QwenTokenizer, format_prompt,
};
use qwen_layered_web::weights::MemorySource;

/// Text encoder outputs (hidden states of unit RMS scale).
const ATOL: f32 = 1e-4;

fn load_model(lm_head: bool) -> QwenLanguageModel {
    pollster::block_on(QwenLanguageModel::load(
        &model_source(),
        &cpu(),
        LoadOptions {
            lm_head,
            ..LoadOptions::default()
        },
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
    let mut cache = model.new_cache(ids.len());
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

    // The cache is full: one more token, or a chunk that does not fit, is an error naming
    // the capacity, and the cache is unchanged.
    for n in [1, 3] {
        let err = model
            .forward(ids_tensor(&ids[..n]), Some(&mut cache))
            .expect_err("past the capacity");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "holds {} tokens: {} cached + {n} new",
                ids.len(),
                ids.len()
            )),
            "{msg}"
        );
        assert_eq!(cache.len(), ids.len());
    }
    // Another batch size than the cached one is refused too.
    let mut cache = model.new_cache(8);
    model
        .forward(ids_tensor(&ids[..2]), Some(&mut cache))
        .expect("B = 1");
    let two = Tensor::<2, Int>::from_data(TensorData::new(vec![ids[2], ids[3]], [2, 1]), &cpu());
    let err = model.forward(two, Some(&mut cache)).expect_err("B = 2");
    assert!(
        err.to_string().contains("holds 1 sequences, the input 2"),
        "{err}"
    );

    // forward_embeds with explicit text positions is the same path.
    let embeds = model.embed(ids_tensor(&ids)).expect("resident embedding");
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

/// The case's prompt text for a record key (`prompt` or `negative`).
fn prompt_text(rec: &Record, key: &str) -> String {
    let field = if key == "prompt" {
        "prompt"
    } else {
        "negative_prompt"
    };
    rec.json["call"][field]
        .as_str()
        .unwrap_or_else(|| panic!("{}: call.{field} is not a string", rec.name))
        .to_owned()
}

fn tokenizer(folder: &str) -> QwenTokenizer {
    pollster::block_on(QwenTokenizer::load(&model_source(), folder))
        .unwrap_or_else(|e| panic!("{folder}: {e}"))
}

/// Every case's recorded ids, for the `tokenizer` under test.
fn assert_ids_match(tok: &QwenTokenizer, label: &str) -> usize {
    let mut n = 0;
    for case in cases() {
        let rec = Record::load(&case);
        for key in text_keys(&rec) {
            let (want, _) = rec.i64(&format!("text.{key}.input_ids"));
            let got: Vec<i64> = tok
                .encode(&format_prompt(&prompt_text(&rec, key)))
                .expect("encode")
                .into_iter()
                .map(i64::from)
                .collect();
            assert_eq!(got, want, "{label}: {case}: text.{key}.input_ids");
            n += 1;
        }
    }
    n
}

#[test]
fn tokenizer_json_gives_the_recorded_ids_for_every_case() {
    for folder in ["tokenizer", "processor"] {
        let n = assert_ids_match(&tokenizer(folder), folder);
        // a, b: 2 each; c: 2; d: 1; e: 2; f: 2.
        assert_eq!(n, 11, "{folder}: prompts checked");
    }
}

/// The tiny fixture tokenizer re-expressed as the official `tokenizer/` layout (`vocab.json`,
/// an empty `merges.txt`, `tokenizer_config.json` with `added_tokens_decoder`) must give the
/// same ids: this exercises the vocab + merges path and the added tokens read from the config.
#[test]
fn vocab_merges_and_added_tokens_decoder_give_the_same_ids() {
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::fixtures_dir().join("model/tokenizer/tokenizer.json"))
            .expect("tokenizer.json"),
    )
    .expect("tokenizer.json parses");
    let vocab = json["model"]["vocab"].clone();
    assert_eq!(json["model"]["merges"].as_array().map(Vec::len), Some(0));
    let mut decoder = serde_json::Map::new();
    for t in json["added_tokens"].as_array().expect("added_tokens") {
        decoder.insert(
            t["id"].to_string(),
            serde_json::json!({
                "content": t["content"], "lstrip": false, "normalized": false,
                "rstrip": false, "single_word": false, "special": t["special"],
            }),
        );
    }
    // Only the 256 byte tokens stay in vocab.json (transformers keeps added tokens out of it).
    let vocab: serde_json::Map<String, serde_json::Value> = vocab
        .as_object()
        .expect("vocab")
        .iter()
        .filter(|(_, id)| id.as_u64().expect("id") < 256)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!((vocab.len(), decoder.len()), (256, 22));
    let config = serde_json::json!({
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": decoder,
    });
    let mut source = MemorySource::new();
    source.insert("tok/vocab.json", serde_json::to_vec(&vocab).expect("json"));
    source.insert("tok/merges.txt", b"#version: 0.2\n".to_vec());
    source.insert(
        "tok/tokenizer_config.json",
        serde_json::to_vec(&config).expect("json"),
    );
    let tok = pollster::block_on(QwenTokenizer::load(&source, "tok")).expect("vocab + merges");
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(257));
    assert_eq!(tok.token_to_id("<|file_sep|>"), Some(277));
    assert_eq!(assert_ids_match(&tok, "vocab.json + merges.txt"), 11);
    let ids = tok.encode("<|im_start|>hi\n").expect("encode");
    assert_eq!(tok.decode(&ids, true).expect("decode"), "hi\n");
    assert_eq!(tok.decode(&ids, false).expect("decode"), "<|im_start|>hi\n");

    // Without the added tokens the chat markers are not single tokens: refused by the encoder.
    let mut source2 = source.clone();
    source2.insert(
        "tok/tokenizer_config.json",
        br#"{"tokenizer_class": "Qwen2Tokenizer"}"#.to_vec(),
    );
    let bare = pollster::block_on(QwenTokenizer::load(&source2, "tok")).expect("loads");
    let err = PromptEncoder::new(bare, load_model(false)).expect_err("no chat markers");
    assert!(
        err.to_string().contains("<|im_start|> as an added token"),
        "{err}"
    );

    // A declared id that the vocabulary contradicts is an error naming both.
    let mut source3 = source.clone();
    let mut bad = config.clone();
    bad["added_tokens_decoder"]["256"]["content"] = "a".into(); // "a" is id 64
    source3.insert(
        "tok/tokenizer_config.json",
        serde_json::to_vec(&bad).expect("json"),
    );
    let err = pollster::block_on(QwenTokenizer::load(&source3, "tok")).expect_err("clash");
    assert!(
        err.to_string()
            .contains("\"a\" has id 64, tokenizer_config.json says 256"),
        "{err}"
    );
}

#[test]
fn prompt_embeds_match_for_every_case() {
    let encoder =
        pollster::block_on(PromptEncoder::load(&model_source(), &cpu())).expect("encoder loads");
    let mut n = 0;
    let mut worst = 0f32;
    for case in cases() {
        let rec = Record::load(&case);
        let max_len = rec.json["call"]["max_sequence_length"]
            .as_u64()
            .expect("max") as usize;
        for key in text_keys(&rec) {
            let embeds = encoder
                .encode(&prompt_text(&rec, key), max_len)
                .expect("encode");
            worst = worst.max(check(&rec, &format!("text.{key}.embeds"), embeds, ATOL));
            n += 1;
        }
    }
    eprintln!("prompt embeds, all cases: max abs err {worst:.3e}");
    assert_eq!(n, 11);
}

#[test]
fn max_sequence_length_truncates_after_the_drop_and_the_negative_is_cached() {
    let encoder =
        pollster::block_on(PromptEncoder::load(&model_source(), &cpu())).expect("encoder loads");
    let rec = Record::load("a_lin_cfgnorm_l3_s3_64");
    let (want, shape) = rec.f32("text.prompt.embeds"); // [1, 173, 64]
    let d = shape[2];
    let prompt = prompt_text(&rec, "prompt");
    let ids = encoder.input_ids(&prompt).expect("ids");
    assert_eq!(ids.len() - PROMPT_TEMPLATE_ENCODE_START_IDX, shape[1]);
    for max_len in [1, 10, 172, 173, 1024] {
        let got = encoder.encode(&prompt, max_len).expect("encode");
        let len = max_len.min(shape[1]);
        assert_eq!(got.dims(), [1, len, d], "max_sequence_length {max_len}");
        assert_close(
            &format!("prompt_embeds[:, :{max_len}]"),
            &read(got),
            &want[..len * d],
            &[1, len, d],
            ATOL,
        );
    }
    for bad in [0, 1025] {
        let err = encoder.encode(&prompt, bad).expect_err("out of range");
        assert!(err.to_string().contains("must be in 1..=1024"), "{err}");
    }

    // " ": computed once, then cut from the cached tensor.
    let (want, shape) = rec.f32("text.negative.embeds"); // [1, 129, 64]
    for max_len in [512, 7, 512] {
        let got = encoder.encode(" ", max_len).expect("negative");
        let len = max_len.min(shape[1]);
        assert_close(
            &format!("negative_prompt_embeds[:, :{max_len}]"),
            &read(got),
            &want[..len * d],
            &[1, len, d],
            ATOL,
        );
    }
}

/// `tests/fixtures/tokenizer/` (see its README): ids made with the real Qwen2.5-VL vocabulary,
/// and the exact subset of it those strings need, in the official vocab/merges layout.
#[test]
fn real_vocabulary_ids_match_and_the_template_prefix_is_34_tokens() {
    let dir = common::fixtures_dir().join("tokenizer");
    let real: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("real_ids.json")).expect("real_ids.json"))
            .expect("parses");
    let tok = pollster::block_on(QwenTokenizer::load(
        &qwen_layered_web::weights::DirSource::new(&dir),
        "qwen2.5-vl-subset",
    ))
    .expect("vocab.json + merges.txt + tokenizer_config.json");
    let ids_of = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .expect("ids")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect()
    };

    assert_eq!(real["template"], qwen_layered_web::text::PROMPT_TEMPLATE);
    assert_eq!(real["drop_idx"], PROMPT_TEMPLATE_ENCODE_START_IDX);
    let prefix = qwen_layered_web::text::PROMPT_TEMPLATE
        .split("{}")
        .next()
        .expect("prefix");
    let prefix_ids = tok.encode(prefix).expect("encode");
    assert_eq!(prefix_ids, ids_of(&real["template_prefix_ids"]));
    assert_eq!(prefix_ids.len(), PROMPT_TEMPLATE_ENCODE_START_IDX);

    for (token, id) in real["added_tokens"].as_object().expect("added") {
        assert_eq!(
            tok.token_to_id(token),
            id.as_u64().map(|i| i as u32),
            "{token}"
        );
    }
    for (token, id) in real["known_ids"].as_object().expect("known") {
        assert_eq!(
            tok.token_to_id(token),
            id.as_u64().map(|i| i as u32),
            "{token}"
        );
    }

    let prompts = real["prompts"].as_array().expect("prompts");
    for p in prompts {
        let prompt = p["prompt"].as_str().expect("prompt");
        let got = tok.encode(&format_prompt(prompt)).expect("encode");
        assert_eq!(got, ids_of(&p["ids"]), "template({prompt:?})");
        assert_eq!(got[..PROMPT_TEMPLATE_ENCODE_START_IDX], prefix_ids[..]);
    }
    let texts = real["texts"].as_array().expect("texts");
    for t in texts {
        let text = t["text"].as_str().expect("text");
        let want = ids_of(&t["ids"]);
        assert_eq!(tok.encode(text).expect("encode"), want, "{text:?}");
        // Byte-level round trip (NFC composes the one decomposed accent).
        if !text.contains('\u{301}') {
            assert_eq!(tok.decode(&want, false).expect("decode"), text);
        }
    }
    assert_eq!((prompts.len(), texts.len()), (10, 9));
}
