//! The `qwen-layered` binary: `decompose` on fixture cases (layers within 1/255 of the
//! reference's `output.layers`, final latents within 1e-4), its shape errors, `decompose
//! --prompt` (text encoded by the model's text encoder), `decompose` under a memory plan
//! (forced buffer limits and budgets: streamed vs resident, and a refusal), `encode-prompt`
//! (prompt embeddings within 1e-4 of the records), `inspect`, and `quantize` (the stored 4-bit
//! transformer gives the latents of quantizing at load).
//!
//! Run: `cargo test --test native cli:: -- --nocapture`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Record, assert_close, fixtures_dir};
use safetensors::{Dtype, SafeTensors};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qwen-layered"))
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qwen-layered-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Writes the record's tensor `name` alone into `dir/file` under the tensor name `as_name`.
fn extract(rec: &Record, name: &str, dir: &Path, file: &str, as_name: &str) -> PathBuf {
    let (values, shape) = rec.f32(name);
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(Dtype::F32, shape, &bytes).expect("view");
    let path = dir.join(file);
    safetensors::serialize_to_file([(as_name, view)], None, &path).expect("write safetensors");
    path
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the binary runs");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `decompose` arguments for a fixture case, with the embeddings and noise extracted.
fn decompose_args(case: &str, dir: &Path) -> (Record, Vec<String>) {
    let rec = Record::load(case);
    let call = &rec.json["call"];
    let s = |p: PathBuf| p.display().to_string();
    let mut args: Vec<String> = vec![
        "decompose".into(),
        "--model".into(),
        s(fixtures_dir().join("model")),
        "--image".into(),
        s(fixtures_dir().join(case).join("input.png")),
        "--layers".into(),
        call["layers"].to_string(),
        "--steps".into(),
        call["num_inference_steps"].to_string(),
        "--resolution".into(),
        rec.json["bucket"]["size"].to_string(),
        "--true-cfg-scale".into(),
        call["true_cfg_scale"].to_string(),
        "--prompt-embeds".into(),
        s(extract(
            &rec,
            "text.prompt.embeds",
            dir,
            "prompt.safetensors",
            "prompt_embeds",
        )),
        "--noise".into(),
        s(extract(
            &rec,
            "noise.packed",
            dir,
            "noise.safetensors",
            "noise",
        )),
        "--scheduler-config".into(),
        s(fixtures_dir().join(
            rec.json["scheduler"]["config_file"]
                .as_str()
                .expect("config_file"),
        )),
        "--out".into(),
        s(dir.join("out")),
    ];
    if rec.has("text.negative.embeds") {
        args.push("--negative-prompt-embeds".into());
        args.push(s(extract(
            &rec,
            "text.negative.embeds",
            dir,
            "negative.safetensors",
            "neg",
        )));
    }
    if call["cfg_normalize"].as_bool().expect("cfg_normalize") {
        args.push("--cfg-normalize".into());
    }
    (rec, args)
}

#[test]
fn decompose_reproduces_the_reference_layers_and_latents() {
    for case in ["a_lin_cfgnorm_l3_s3_64", "f_exp_cfg_l2_s4_40x24"] {
        let dir = scratch(case);
        let (rec, args) = decompose_args(case, &dir);
        let out = run(bin().args(&args));
        assert!(out.status.success(), "{case}: decompose failed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("step 1/") && stderr.contains("decoding"),
            "{case}: progress: {stderr}"
        );

        let (want, shape) = rec.u8("output.layers");
        let [n, h, w, _] = shape[..] else {
            panic!("{case}: output.layers {shape:?}")
        };
        let (mut off_by_one, mut worse) = (0usize, 0usize);
        for k in 0..n {
            let png = image::open(dir.join("out").join(format!("layer_{k}.png")))
                .unwrap_or_else(|e| panic!("{case}: layer_{k}.png: {e}"));
            let png = png.as_rgba8().expect("RGBA8 PNG");
            assert_eq!(
                png.dimensions(),
                (w as u32, h as u32),
                "{case}: layer {k} size"
            );
            let want = &want[k * h * w * 4..(k + 1) * h * w * 4];
            for (&g, &e) in png.as_raw().iter().zip(want) {
                match g.abs_diff(e) {
                    0 => {}
                    1 => off_by_one += 1,
                    _ => worse += 1,
                }
            }
        }
        assert!(
            !dir.join("out").join(format!("layer_{n}.png")).exists(),
            "{case}: extra layer"
        );
        eprintln!(
            "{case}: PNG bytes differing by 1: {off_by_one} of {}, by more: {worse}",
            want.len()
        );
        assert_eq!(worse, 0, "{case}: PNG bytes off by more than 1/255");

        let bytes =
            std::fs::read(dir.join("out/latents.safetensors")).expect("latents.safetensors");
        let st = SafeTensors::deserialize(&bytes).expect("latents.safetensors parses");
        let view = st.tensor("latents").expect("tensor \"latents\"");
        let got: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let last = format!("step{}.latents", rec.steps() - 1);
        let (want, shape) = rec.f32(&last);
        assert_eq!(view.shape(), &shape[..], "{case}: latents shape");
        assert_close(
            &format!("{case}: latents.safetensors vs {last}"),
            &got,
            &want,
            &shape,
            1e-4,
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn decompose_names_file_tensor_and_shapes_on_a_wrong_noise() {
    let dir = scratch("wrong-noise");
    let (rec, mut args) = decompose_args("a_lin_cfgnorm_l3_s3_64", &dir);
    let wrong = extract(
        &rec,
        "text.prompt.embeds",
        &dir,
        "wrong.safetensors",
        "not_noise",
    );
    let i = args.iter().position(|a| a == "--noise").expect("--noise") + 1;
    args[i] = wrong.display().to_string();
    let out = run(bin().args(&args));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in [
        "--noise",
        "wrong.safetensors",
        "\"not_noise\"",
        "[1, 173, 64]",
        "expected [1, 64, 64]",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }

    args.extend(["--seed".into(), "1".into()]);
    let out = run(bin().args(&args));
    assert_eq!(out.status.code(), Some(2), "usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("give --noise or --seed, not both"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inspect_lists_the_model_folder_and_a_single_file() {
    let out = run(bin().args([
        "inspect",
        &fixtures_dir().join("model").display().to_string(),
    ]));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for part in [
        "model/text_encoder: ",
        "model/transformer: ",
        "model/vae: ",
        "transformer_blocks.0.attn.to_q.weight\tBF16\t[64, 64]",
        "decoder.up_blocks.0.upsamplers.0.time_conv.weight",
        "img_in.weight\tBF16\t[64, 64]",
    ] {
        assert!(stdout.contains(part), "{part:?} missing from:\n{stdout}");
    }

    let file = fixtures_dir().join("a_lin_cfgnorm_l3_s3_64/record.safetensors");
    let out = run(bin().args(["inspect", &file.display().to_string()]));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("noise.packed\tF32\t[1, 64, 64]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("output.layers\tU8\t[3, 64, 64, 4]"),
        "{stdout}"
    );

    let out = run(bin().args(["inspect", "/nonexistent/path"]));
    assert_eq!(out.status.code(), Some(1));
}

/// `caption --as-is` on the captioning fixture's prompt image: stdout is the decoded, stripped
/// caption of the reference's first 24 greedy tokens (the full 512-token caption is compared
/// by `tests/native/caption_parity.rs`).
#[test]
fn caption_prints_the_reference_caption() {
    use qwen_layered_web::caption::py_strip;
    use qwen_layered_web::text::QwenTokenizer;
    let case = "caption/en_48x40";
    let n = 24;
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures_dir().join(case).join("case.json")).expect("case.json"),
    )
    .expect("json");
    let ids: Vec<u32> = json["new_ids"].as_array().expect("new_ids")[..n]
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect();
    let tok = pollster::block_on(QwenTokenizer::load(&common::model_source(), "processor"))
        .expect("tokenizer");
    let want = py_strip(&tok.decode(&ids, true).expect("decode")).to_owned();
    let out = run(bin().args([
        "caption",
        "--model",
        &fixtures_dir().join("model").display().to_string(),
        "--image",
        &fixtures_dir()
            .join(case)
            .join("input.png")
            .display()
            .to_string(),
        "--as-is",
        "--max-new-tokens",
        &n.to_string(),
    ]));
    assert!(out.status.success(), "caption failed");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{want}\n"));
    // Without --as-is the image is first resized to the working size (48x40 at bucket 64 → 64x64).
    let out = run(bin().args([
        "caption",
        "--model",
        &fixtures_dir().join("model").display().to_string(),
        "--image",
        &fixtures_dir()
            .join(case)
            .join("input.png")
            .display()
            .to_string(),
        "--resolution",
        "64",
        "--max-new-tokens",
        "4",
        "--zh",
    ]));
    assert!(out.status.success(), "caption --zh failed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("captioning 64x64 (Chinese"));
}

/// Reads the single f32 tensor `name` of a safetensors file as `(values, shape)`.
fn read_f32_file(path: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("safetensors parses");
    assert_eq!(st.names(), vec![name], "{}: tensor names", path.display());
    let view = st.tensor(name).expect("tensor");
    assert_eq!(view.dtype(), Dtype::F32);
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (values, view.shape().to_vec())
}

#[test]
fn encode_prompt_writes_the_reference_prompt_embeds() {
    let dir = scratch("encode-prompt");
    let model = fixtures_dir().join("model").display().to_string();
    for (case, key, field) in [
        ("c_lin_cfg_l2_s2_120x80", "prompt", "prompt"),
        ("c_lin_cfg_l2_s2_120x80", "negative", "negative_prompt"),
        ("f_exp_cfg_l2_s4_40x24", "negative", "negative_prompt"),
    ] {
        let rec = Record::load(case);
        let text = rec.json["call"][field].as_str().expect("prompt text");
        let path = dir.join(format!("{case}-{key}.safetensors"));
        let out = run(bin().args([
            "encode-prompt",
            "--model",
            &model,
            "--prompt",
            text,
            "--out",
            &path.display().to_string(),
        ]));
        assert!(out.status.success(), "{case}: encode-prompt failed");
        let (got, shape) = read_f32_file(&path, "prompt_embeds");
        let (want, want_shape) = rec.f32(&format!("text.{key}.embeds"));
        assert_eq!(shape, want_shape, "{case}: {key} shape");
        assert_close(
            &format!("{case}: encode-prompt {text:?} vs text.{key}.embeds"),
            &got,
            &want,
            &shape,
            1e-4,
        );
    }

    // --max-sequence-length keeps the first L embeddings.
    let rec = Record::load("c_lin_cfg_l2_s2_120x80");
    let path = dir.join("short.safetensors");
    let out = run(bin().args([
        "encode-prompt",
        "--model",
        &model,
        "--prompt",
        rec.json["call"]["prompt"].as_str().expect("prompt"),
        "--max-sequence-length",
        "20",
        "--out",
        &path.display().to_string(),
    ]));
    assert!(out.status.success());
    let (got, shape) = read_f32_file(&path, "prompt_embeds");
    assert_eq!(shape, [1, 20, 64]);
    let (want, _) = rec.f32("text.prompt.embeds");
    assert_close(
        "max-sequence-length 20",
        &got,
        &want[..20 * 64],
        &shape,
        1e-4,
    );

    // The browser's settings: the embedding's rows read from the file (the same values as
    // the resident table), and 8-bit linear layers (within text_encoder_load's Q8 bound).
    let (want, want_shape) = rec.f32("text.prompt.embeds");
    for (precision, atol) in [("f32", 1e-4), ("q8", 4e-2)] {
        let path = dir.join(format!("gathered-{precision}.safetensors"));
        let out = run(bin().args([
            "encode-prompt",
            "--model",
            &model,
            "--prompt",
            rec.json["call"]["prompt"].as_str().expect("prompt"),
            "--gather-embedding",
            "--text-precision",
            precision,
            "--out",
            &path.display().to_string(),
        ]));
        assert!(
            out.status.success(),
            "--gather-embedding --text-precision {precision}"
        );
        let (got, shape) = read_f32_file(&path, "prompt_embeds");
        assert_eq!(shape, want_shape);
        assert_close(
            &format!("gathered embedding, {precision} text encoder"),
            &got,
            &want,
            &shape,
            atol,
        );
    }

    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn decompose_with_prompt_text_encodes_it_and_the_default_negative() {
    // Case a: prompt text instead of embeddings, no negative given: CFG 4.0 makes the
    // negative prompt default to " ", the reference's negative.
    let case = "a_lin_cfgnorm_l3_s3_64";
    let dir = scratch("decompose-prompt");
    let (rec, mut args) = decompose_args(case, &dir);
    let i = args
        .iter()
        .position(|a| a == "--prompt-embeds")
        .expect("--prompt-embeds");
    args.drain(i..i + 2);
    let i = args
        .iter()
        .position(|a| a == "--negative-prompt-embeds")
        .expect("--negative-prompt-embeds");
    args.drain(i..i + 2);
    args.extend([
        "--prompt".into(),
        rec.json["call"]["prompt"].as_str().expect("prompt").into(),
    ]);
    let out = run(bin().args(&args));
    assert!(out.status.success(), "decompose --prompt failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("negative prompt \" \""), "{stderr}");
    assert!(stderr.contains("CFG on"), "{stderr}");

    let bytes = std::fs::read(dir.join("out/latents.safetensors")).expect("latents");
    let st = SafeTensors::deserialize(&bytes).expect("parses");
    let view = st.tensor("latents").expect("latents");
    let got: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let last = format!("step{}.latents", rec.steps() - 1);
    let (want, shape) = rec.f32(&last);
    assert_close(
        &format!("{case}: --prompt run vs {last}"),
        &got,
        &want,
        &shape,
        1e-4,
    );

    // Both forms of one input are refused.
    let mut both = args.clone();
    both.extend(["--prompt-embeds".into(), "p.safetensors".into()]);
    let out = run(bin().args(&both));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not both"));
    // An empty prompt captions the (resized) image first and uses the caption as the prompt,
    // as the reference does; the negative still defaults to " ".
    let i = args.iter().position(|a| a == "--prompt").expect("--prompt") + 1;
    args[i] = String::new();
    args.extend(["--max-new-tokens".into(), "4".into()]);
    let out = run(bin().args(&args));
    assert!(
        out.status.success(),
        "decompose with an empty prompt failed"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("captioning 64x64 (English template, at most 4 tokens)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("caption (the prompt from here on)"),
        "{stderr}"
    );
    assert!(stderr.contains("negative prompt \" \""), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inspect_lists_a_gguf_file_and_prints_values() {
    let gguf = fixtures_dir().join("gguf/types.gguf").display().to_string();
    let out = run(bin().args(["inspect", &gguf]));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for part in [
        "GGUF v3, 12 tensors",
        "(alignment 64)",
        "meta general.architecture = \"test\"",
        "meta t.u64 = 9223372036854775813",
        "meta t.arr.string = string[3] [\"a\", \"\", \"xyz\"]",
        "meta t.arr.nested = array[2] [i32[2], i32[1]]",
        "q4_k\tQ4_K\t[2, 512]\t576 bytes",
        "bf16\tBF16\t[4, 64]\t512 bytes",
        "shape_2x3x4\tF32\t[2, 3, 4]\t96 bytes",
    ] {
        assert!(stdout.contains(part), "{part:?} missing from:\n{stdout}");
    }

    // Values: row-major in PyTorch order, as gguf-py dequantizes them.
    let values = |path: &str, name: &str, k: &str| {
        let out = run(bin().args(["inspect", path, "--tensor", name, "--values", k]));
        assert!(out.status.success(), "{name}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.parse::<f32>().expect("a number per line"))
            .collect::<Vec<f32>>()
    };
    let want: Vec<f32> = (0..24).map(|v| v as f32).collect();
    assert_eq!(values(&gguf, "shape_2x3x4", "100"), want);
    let expected = std::fs::read(fixtures_dir().join("gguf/types_expected.safetensors"))
        .expect("expected values");
    let expected = SafeTensors::deserialize(&expected).expect("parses");
    let q6: Vec<f32> = expected
        .tensor("q6_k")
        .expect("q6_k")
        .data()
        .chunks_exact(4)
        .take(300)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(values(&gguf, "q6_k", "300"), q6);

    // The same for safetensors (bf16 widened exactly), file and model folder.
    let st = fixtures_dir().join("model/transformer");
    let from_file = values(
        &st.join("diffusion_pytorch_model.safetensors")
            .display()
            .to_string(),
        "img_in.bias",
        "5",
    );
    assert_eq!(from_file.len(), 5);
    assert_eq!(
        values(&st.display().to_string(), "img_in.bias", "5"),
        from_file
    );
    let out = run(bin().args(["inspect", &gguf, "--tensor", "nope"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    let out = run(bin().args(["inspect", &gguf, "--values", "3"]));
    assert_eq!(out.status.code(), Some(2));
}

/// `decompose --transformer-gguf F --precision q8` runs the whole pipeline with the GGUF
/// transformer kept in 8-bit blocks; its final latents stay close to the f32 reference.
#[test]
fn decompose_runs_a_gguf_transformer_in_8_bit() {
    let case = "a_lin_cfgnorm_l3_s3_64";
    let dir = scratch("gguf-q8");
    let (rec, mut args) = decompose_args(case, &dir);
    args.extend([
        "--transformer-gguf".into(),
        fixtures_dir()
            .join("gguf/transformer-Q8_0.gguf")
            .display()
            .to_string(),
        "--precision".into(),
        "q8".into(),
    ]);
    let out = run(bin().args(&args));
    assert!(
        out.status.success(),
        "decompose with a GGUF transformer failed"
    );
    let bytes = std::fs::read(dir.join("out/latents.safetensors")).expect("latents.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("parses");
    let got: Vec<f32> = st
        .tensor("latents")
        .expect("latents")
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let (want, shape) = rec.f32(&format!("step{}.latents", rec.steps() - 1));
    // Measured max abs error 1.7e-2 (8-bit weights through 3 steps with CFG; latents ~ ±3).
    assert_close(
        "q8 GGUF latents vs f32 reference",
        &got,
        &want,
        &shape,
        4e-2,
    );
    for k in 0..3 {
        assert!(
            dir.join(format!("out/layer_{k}.png")).is_file(),
            "layer_{k}.png"
        );
    }
    let bad = run(bin().args(["decompose", "--precision", "q3"]));
    assert_eq!(bad.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `quantize --precision q4` stores the transformer with 4-bit linear weights as one GGUF
/// file (written as `OUT.part`, renamed when complete), and `decompose --transformer-gguf OUT
/// --precision q4` then gives exactly the latents of `decompose --precision q4`, which
/// quantizes the bf16 checkpoint at load.
#[test]
fn quantize_stores_the_transformer_that_decompose_would_quantize() {
    let case = "a_lin_cfgnorm_l3_s3_64";
    let dir = scratch("quantize");
    let stored = dir.join("transformer-q4.gguf");
    let model = fixtures_dir().join("model").display().to_string();
    let out = run(bin().args([
        "quantize",
        "--model",
        &model,
        "--precision",
        "q4",
        "--out",
        &stored.display().to_string(),
    ]));
    assert!(out.status.success(), "quantize failed");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("78 tensors, 34 linear weights to Q4") && log.contains("sha256 "),
        "{log}"
    );
    assert!(stored.is_file() && !dir.join("transformer-q4.gguf.part").exists());
    let (_, base) = decompose_args(case, &dir);
    let run_with = |extra: &[&str], out_dir: &str| {
        let mut args = base.clone();
        let at = args.iter().position(|a| a == "--out").expect("--out") + 1;
        args[at] = dir.join(out_dir).display().to_string();
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = run(bin().args(&args));
        assert!(out.status.success(), "decompose {extra:?} failed");
        read_f32_file(&dir.join(out_dir).join("latents.safetensors"), "latents").0
    };
    let at_load = run_with(&["--precision", "q4"], "at-load");
    let from_store = run_with(
        &[
            "--precision",
            "q4",
            "--transformer-gguf",
            &stored.display().to_string(),
        ],
        "stored",
    );
    assert_eq!(at_load.len(), from_store.len());
    assert!(
        at_load == from_store,
        "latents differ (max {:e})",
        at_load
            .iter()
            .zip(&from_store)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    );
    let bad = run(bin().args([
        "quantize",
        "--model",
        &model,
        "--precision",
        "f32",
        "--out",
        "x",
    ]));
    assert_eq!(bad.status.code(), Some(2), "f32 is a usage error");
    let missing = run(bin().args([
        "quantize",
        "--model",
        &dir.join("nothing").display().to_string(),
        "--precision",
        "q8",
        "--out",
        &dir.join("never.gguf").display().to_string(),
    ]));
    assert_eq!(missing.status.code(), Some(1));
    assert!(!dir.join("never.gguf").exists() && !dir.join("never.gguf.part").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `quantize --component text_encoder --precision q4` writes the text encoder's 4-bit copy
/// beside its checkpoint, and `encode-prompt --text-precision q4` then reads it (and says so)
/// and writes exactly the embeddings it writes when quantizing at load. A copy of an older
/// format is not read; the log names it and the command that writes the current one.
#[test]
fn quantize_stores_the_text_encoder_beside_its_checkpoint() {
    let dir = scratch("quantize-te");
    let model = dir.join("model");
    for sub in ["tokenizer", "text_encoder"] {
        let to = model.join(sub);
        std::fs::create_dir_all(&to).expect("folder");
        for e in std::fs::read_dir(fixtures_dir().join("model").join(sub)).expect("fixture") {
            let e = e.expect("entry");
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
    let m = model.display().to_string();
    let encode = |out: &str| {
        let path = dir.join(out);
        let o = run(bin().args([
            "encode-prompt",
            "--model",
            &m,
            "--prompt",
            "a red apple",
            "--text-precision",
            "q4",
            "--out",
            &path.display().to_string(),
        ]));
        assert!(o.status.success(), "encode-prompt failed");
        (
            read_f32_file(&path, "prompt_embeds").0,
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (at_load, log) = encode("at-load.safetensors");
    assert!(!log.contains("stored copy"), "{log}");
    // A copy of the older, linear-only format is not read, and the log says what to do.
    let old = model.join("text_encoder/qwen-layered-v1-q4_0.gguf");
    std::fs::write(&old, b"GGUF, of a format no longer read").expect("old copy");
    let (beside_old, log) = encode("beside-old.safetensors");
    assert!(
        log.contains("text_encoder/qwen-layered-v1-q4_0.gguf is a stored copy of an older format")
            && log.contains("--component text_encoder --precision q4` writes the current one"),
        "{log}"
    );
    assert_eq!(beside_old, at_load, "the old copy is not read");
    let quantize = |extra: &[&str]| {
        let mut args = vec![
            "quantize",
            "--model",
            &m,
            "--component",
            "text_encoder",
            "--precision",
            "q4",
        ];
        args.extend(extra);
        run(bin().args(args))
    };
    assert_eq!(
        quantize(&["--out", "x"]).status.code(),
        Some(2),
        "--out is refused for the text encoder"
    );
    let q = quantize(&[]);
    assert!(q.status.success(), "quantize failed");
    let copy = model.join("text_encoder/qwen-layered-v2-q4_0.gguf");
    assert!(copy.is_file(), "the copy beside the checkpoint");
    let (from_copy, log) = encode("from-copy.safetensors");
    assert!(
        log.contains("text encoder: read from the stored copy") && !log.contains("older format"),
        "{log}"
    );
    assert!(
        !at_load.is_empty() && from_copy == at_load,
        "embeddings differ"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The final packed latents a `decompose` run wrote to `dir/out`.
fn latents_in(dir: &Path) -> Vec<f32> {
    read_f32_file(&dir.join("out/latents.safetensors"), "latents").0
}

/// `decompose` with forced buffer limits follows the app's memory plan (what `--device wgpu`
/// does with the GPU's own limits): with 64 KiB buffers and a budget for one block of the two
/// it streams a ring of 1, splits the modulation weights by rows, runs the MLPs in sequence
/// chunks and tiles the VAE; with 1 GiB it keeps every block resident under the same limits.
/// The two runs give the same latents and layers; a budget that cannot hold one block is
/// refused before any weight is read, with the numbers.
#[test]
fn decompose_follows_a_memory_plan_under_forced_limits() {
    use qwen_layered_web::gpu::KeyLimits;
    use qwen_layered_web::pipeline::{MemoryBudget, ModelConfigs};
    use qwen_layered_web::weights::Precision;

    let case = "a_lin_cfgnorm_l3_s3_64";
    let limits = ["--gpu-max-binding", "64K", "--gpu-max-buffer", "64K"];
    // The budget for the rest of the model and 1.5 blocks, from the plan the CLI makes (text
    // embeddings given: no text encoder in the plan; 64×64, 3 layers, f32).
    let mut configs = pollster::block_on(ModelConfigs::read(&common::model_source())).unwrap();
    configs.text = None;
    let budget = |device_bytes| MemoryBudget {
        limits: KeyLimits {
            max_buffer_size: 64 << 10,
            max_storage_buffer_binding_size: 64 << 10,
            ..KeyLimits::from_wgpu(&wgpu::Limits::default())
        },
        device_bytes,
    };
    let plan = |b| configs.plan(&budget(b), Precision::F32, Precision::F32, (64, 64), 3);
    let e = plan(1 << 30).unwrap().estimate;
    let fixed = e.transformer_other_bytes + e.vae_bytes + e.transformer_activation_bytes;
    let one_and_a_half = fixed + e.block_bytes * 3 / 2;
    assert!(!plan(one_and_a_half).unwrap().is_resident());

    let decompose = |name: &str, budget: String| {
        let dir = scratch(name);
        let (_, mut args) = decompose_args(case, &dir);
        args.extend(limits.map(String::from));
        args.extend(["--gpu-budget".into(), budget]);
        let out = run(bin().args(&args));
        assert!(out.status.success(), "{name}: decompose failed");
        (dir, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (streamed, log) = decompose("plan-streamed", one_and_a_half.to_string());
    for want in [
        "memory plan for a budget of",
        "buffers of at most 64 KiB",
        "transformer: streamed, a ring of 1 of 2 blocks",
        "VAE: tiled, 32×32-pixel tiles every 24×24 pixels",
        "in 2 row pieces",
        "transformer MLP hidden activation in",
        "step 3/3",
    ] {
        assert!(log.contains(want), "streamed run: {want:?} not in\n{log}");
    }
    let (resident, log) = decompose("plan-resident", "1G".into());
    for want in [
        "transformer: resident, all 2 blocks",
        "VAE: tiled, 32×32-pixel tiles every 24×24 pixels",
    ] {
        assert!(log.contains(want), "resident run: {want:?} not in\n{log}");
    }

    let (a, b) = (latents_in(&streamed), latents_in(&resident));
    let shape = [a.len()];
    assert_close("streamed vs resident latents", &a, &b, &shape, 1e-6);
    for k in 0..3 {
        let layer = |dir: &Path| {
            image::open(dir.join(format!("out/layer_{k}.png")))
                .unwrap_or_else(|e| panic!("layer_{k}.png: {e}"))
                .to_rgba8()
        };
        let (a, b) = (layer(&streamed), layer(&resident));
        assert_eq!(a.dimensions(), (64, 64), "layer {k}");
        let worst = a.iter().zip(b.iter()).map(|(x, y)| x.abs_diff(*y)).max();
        assert!(worst <= Some(1), "layer {k}: differs by {worst:?}/255");
    }

    // A budget under the rest of the model and one block: refused from the configs alone.
    let dir = scratch("plan-refused");
    let (_, mut args) = decompose_args(case, &dir);
    args.extend(limits.map(String::from));
    args.extend(["--gpu-budget".into(), (fixed / 2).to_string()]);
    let out = run(bin().args(&args));
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("the transformer needs at least") && log.contains("the budget is"),
        "{log}"
    );
    assert!(!log.contains("loaded model"), "{log}");
    assert!(!dir.join("out").exists(), "nothing written");
    // A byte count that is not one is a usage error naming the option.
    let without_budget = &args[..args.len() - 2];
    let out = run(bin().args(without_budget).args(["--gpu-budget", "64X"]));
    assert_eq!(out.status.code(), Some(2));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("--gpu-budget \"64X\" is not a positive byte count"),
        "{log}"
    );
    for dir in [streamed, resident, dir] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A GPU error during a run (caused on purpose after the first step with `--gpu-fault error`: a
/// buffer over maxBufferSize, as the page's test does) ends the run with that error and exit
/// 1 before the next step: no panic, no layers written.
#[test]
fn decompose_stops_with_the_gpu_error_and_writes_nothing() {
    let dir = scratch("gpu-fault");
    let (_, mut args) = decompose_args("a_lin_cfgnorm_l3_s3_64", &dir);
    args.extend(["--device", "wgpu", "--gpu-fault", "error"].map(String::from));
    let out = run(bin().args(&args));
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("the GPU reported an error; the run stopped there and wrote no file:"),
        "{log}"
    );
    assert!(
        log.contains("step 1/3") && !log.contains("decoding layers"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        !dir.join("out").join("layer_0.png").exists(),
        "nothing written"
    );
    // The fault needs a GPU.
    let (_, mut args) = decompose_args("a_lin_cfgnorm_l3_s3_64", &dir);
    args.extend(["--gpu-fault", "error"].map(String::from));
    assert_eq!(run(bin().args(&args)).status.code(), Some(2));
    let _ = std::fs::remove_dir_all(dir);
}

/// On a GPU the forced limits can only lower the device's own: a larger one is refused as a
/// misuse before any weight is read (lavapipe here: maxBufferSize 2 GiB).
#[test]
fn decompose_refuses_a_forced_limit_over_the_gpus_own() {
    let dir = scratch("plan-over-limit");
    let (_, mut args) = decompose_args("a_lin_cfgnorm_l3_s3_64", &dir);
    args.extend(["--device", "wgpu", "--gpu-max-buffer", "1024G"].map(String::from));
    let out = run(bin().args(&args));
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains("--gpu-max-buffer 1024.00 GiB is over this GPU's own limit of")
            && log.contains("it can only lower it"),
        "{log}"
    );
    assert!(!dir.join("out").exists(), "nothing written");
    let _ = std::fs::remove_dir_all(dir);
}
