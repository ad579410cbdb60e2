//! `QwenImageTransformer2DModel` (tiny config, CPU/Flex, f32) against diffusers 0.42.1.
//!
//! Fixtures: `tests/fixtures/` (regenerate with `tests/fixtures/gen_fixtures.py`, see its README).
//! Run: `cargo test --test native transformer_parity:: -- --nocapture` (prints every max error).

use crate::common;

use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::{Record, assert_close, cases, check, cpu, model_source, read};
use qwen_layered_web::model::transformer::{
    ForwardTrace, QwenImageTransformer2DModel, TransformerInput, timestep_proj,
};

/// Everything before the VAE decoder.
const ATOL: f32 = 1e-4;

fn load_model() -> QwenImageTransformer2DModel {
    pollster::block_on(QwenImageTransformer2DModel::load(
        &model_source(),
        "transformer",
        &cpu(),
    ))
    .expect("tiny transformer loads")
}

/// The transformer input of step `step` with the given text embeddings.
fn input<'a>(
    rec: &Record,
    step: usize,
    text: &str,
    img_shapes: &'a [Vec<(usize, usize, usize)>],
) -> TransformerInput<'a> {
    let device = cpu();
    let hs = rec.shape(&format!("step{step}.transformer_in"));
    let ts = rec.shape(text);
    TransformerInput {
        hidden_states: rec.tensor(
            &format!("step{step}.transformer_in"),
            [hs[0], hs[1], hs[2]],
            &device,
        ),
        encoder_hidden_states: rec.tensor(text, [ts[0], ts[1], ts[2]], &device),
        encoder_hidden_states_mask: None,
        timestep: rec.tensor(&format!("step{step}.timestep"), [1], &device),
        img_shapes,
        additional_t_cond: Some(Tensor::<1, Int>::from_data(
            TensorData::new(vec![0i64], [1]),
            &device,
        )),
    }
}

#[test]
fn rope_tables_match() {
    let model = load_model();
    for case in cases() {
        let rec = Record::load(&case);
        if !rec.has("rope.img_freqs.real") {
            continue;
        }
        let shapes = rec.img_shapes();
        let s_txt = rec.shape("rope.txt_freqs.real")[0];
        let t = model.pos_embed.tables(&shapes[0], s_txt).expect("tables");
        for (name, got) in [
            ("rope.img_freqs.real", &t.img_cos),
            ("rope.img_freqs.imag", &t.img_sin),
            ("rope.txt_freqs.real", &t.txt_cos),
            ("rope.txt_freqs.imag", &t.txt_sin),
        ] {
            let (want, shape) = rec.f32(name);
            assert_close(&format!("{case}: {name}"), got, &want, &shape, 1e-5);
        }
    }
}

#[test]
fn timestep_embedding_matches() {
    let model = load_model();
    let device = cpu();
    for case in cases() {
        let rec = Record::load(&case);
        if !rec.has("first_call.timestep_proj") {
            continue;
        }
        let t = rec.tensor("step0.timestep", [1], &device);
        check(
            &rec,
            "first_call.timestep_proj",
            timestep_proj(t.clone()),
            ATOL,
        );
        let emb = model
            .time_text_embed
            .timestep_embedder
            .forward(timestep_proj(t.clone()));
        check(&rec, "first_call.timestep_emb", emb, ATOL);
        let idx = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64], [1]), &device);
        let temb = model.time_text_embed.forward(t, Some(idx)).expect("temb");
        check(&rec, "first_call.temb", temb, ATOL);
    }
}

#[test]
fn first_call_stages_and_blocks_match() {
    let model = load_model();
    for case in cases() {
        let rec = Record::load(&case);
        if !rec.has("block0.first_call.img") {
            continue;
        }
        let shapes = rec.img_shapes();
        let mut trace = ForwardTrace::default();
        let out = model
            .forward_traced(
                input(&rec, 0, "text.prompt.embeds", &shapes),
                Some(&mut trace),
            )
            .expect("forward");
        check(&rec, "first_call.temb", trace.temb.expect("traced"), ATOL);
        check(
            &rec,
            "first_call.img_in",
            trace.img_in.expect("traced"),
            ATOL,
        );
        if rec.has("first_call.txt_norm") {
            check(
                &rec,
                "first_call.txt_norm",
                trace.txt_norm.expect("traced"),
                ATOL,
            );
        }
        check(
            &rec,
            "first_call.txt_in",
            trace.txt_in.expect("traced"),
            ATOL,
        );
        assert_eq!(trace.blocks.len(), model.transformer_blocks.len());
        for (k, (txt, img)) in trace.blocks.into_iter().enumerate() {
            check(&rec, &format!("block{k}.first_call.txt"), txt, ATOL);
            check(&rec, &format!("block{k}.first_call.img"), img, ATOL);
        }
        check(
            &rec,
            "first_call.norm_out",
            trace.norm_out.expect("traced"),
            ATOL,
        );
        check(&rec, "step0.cond.transformer_out", out, ATOL);
    }
}

#[test]
fn every_transformer_call_matches() {
    let model = load_model();
    let mut calls = 0;
    let mut worst = 0f32;
    for case in cases() {
        let rec = Record::load(&case);
        let shapes = rec.img_shapes();
        for step in 0..rec.steps() {
            let mut branches = vec![("cond", "text.prompt.embeds")];
            if rec.cfg() {
                branches.push(("uncond", "text.negative.embeds"));
            }
            for (branch, text) in branches {
                let out = model
                    .forward(input(&rec, step, text, &shapes))
                    .expect("forward");
                worst = worst.max(check(
                    &rec,
                    &format!("step{step}.{branch}.transformer_out"),
                    out,
                    ATOL,
                ));
                calls += 1;
            }
        }
    }
    eprintln!("{calls} transformer calls, worst max abs err {worst:.3e}");
    assert!(calls >= 20, "only {calls} calls checked");
}

#[test]
fn mismatched_img_shapes_are_an_error() {
    let model = load_model();
    let rec = Record::load("a_lin_cfgnorm_l3_s3_64");
    let wrong = vec![vec![(1, 4, 4); 4]]; // 64 tokens, hidden_states has 80
    let err = model
        .forward(input(&rec, 0, "text.prompt.embeds", &wrong))
        .expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("64 image tokens") && msg.contains("80"),
        "{msg}"
    );
}

#[test]
fn masked_padding_changes_nothing() {
    // diffusers `encoder_hidden_states_mask`: padded text tokens (mask 0) must not affect any real
    // token; an all-ones mask equals no mask. RoPE text positions of the real tokens are unchanged.
    let model = load_model();
    let rec = Record::load("a_lin_cfgnorm_l3_s3_64");
    let shapes = rec.img_shapes();
    let base = input(&rec, 0, "text.prompt.embeds", &shapes);
    let want = read(model.forward(base.clone()).expect("forward"));

    let device = cpu();
    let ones = Tensor::<2, Bool>::from_bool(TensorData::new(vec![true; 173], [1, 173]), &device);
    let all_ones = TransformerInput {
        encoder_hidden_states_mask: Some(ones),
        ..base.clone()
    };
    assert_close(
        "all-ones mask",
        &read(model.forward(all_ones).expect("forward")),
        &want,
        &[1, 80, 64],
        1e-6,
    );

    let pad = 7;
    let junk = Tensor::<3>::from_data(
        TensorData::new(
            qwen_layered_web::gpu::seeded_values(5, pad * 64)
                .iter()
                .map(|v| v * 3.0)
                .collect::<Vec<f32>>(),
            [1, pad, 64],
        ),
        &device,
    );
    let padded = Tensor::cat(vec![base.encoder_hidden_states.clone(), junk], 1);
    let valid: Vec<bool> = (0..173 + pad).map(|i| i < 173).collect();
    let mask = Tensor::<2, Bool>::from_bool(TensorData::new(valid, [1, 173 + pad]), &device);
    let masked = TransformerInput {
        encoder_hidden_states: padded,
        encoder_hidden_states_mask: Some(mask),
        ..base
    };
    assert_close(
        "padded + mask",
        &read(model.forward(masked).expect("forward")),
        &want,
        &[1, 80, 64],
        1e-5,
    );
}
