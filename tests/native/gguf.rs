//! GGUF reading and quantized weights on the fixtures of `tests/fixtures/gguf/` (written by
//! llama.cpp's gguf-py 0.19.0, see `gen_gguf.py` there): metadata of every type, tensor shapes,
//! dequantization of every supported ggml type against `gguf.quants.dequantize`, hostile
//! headers, and the tiny transformer loaded from GGUF and quantized at load time against the
//! recorded diffusers output.
//!
//! Run: `cargo test --test native gguf:: -- --nocapture` (prints the measured quantization errors).

use crate::common;

use burn::tensor::{Int, Tensor, TensorData};
use common::{Record, cpu, fixtures_dir, read};
use qwen_layered_web::model::nn::LinearWeight;
use qwen_layered_web::model::transformer::{
    QwenImageTransformer2DModel, QwenImageTransformerConfig, TransformerInput,
};
use qwen_layered_web::weights::gguf::dequantize;
use qwen_layered_web::weights::{
    Cancellable, DirSource, GgmlType, GgufFile, MemorySource, MetaArray, MetaValue, Precision,
    SafetensorsFolder, WeightSource, read_json, stored_format, write_quantized,
};
use safetensors::SafeTensors;
use sha2::Digest;

fn gguf_dir() -> DirSource {
    DirSource::new(fixtures_dir().join("gguf"))
}

fn open(file: &str) -> GgufFile {
    pollster::block_on(GgufFile::open(&gguf_dir(), file)).expect("fixture GGUF opens")
}

#[test]
fn reads_every_metadata_type() {
    let g = open("types.gguf");
    assert_eq!((g.version(), g.alignment()), (3, 64));
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(g.architecture(), Some("test"));
    let m = |k: &str| g.meta(k).unwrap_or_else(|| panic!("{k}")).clone();
    assert_eq!(m("t.u8"), MetaValue::U8(200));
    assert_eq!(m("t.i8"), MetaValue::I8(-100));
    assert_eq!(m("t.u16"), MetaValue::U16(60000));
    assert_eq!(m("t.i16"), MetaValue::I16(-30000));
    assert_eq!(m("t.u32"), MetaValue::U32(4_000_000_000));
    assert_eq!(m("t.i32"), MetaValue::I32(-2_000_000_000));
    assert_eq!(m("t.f32"), MetaValue::F32(1.5));
    assert_eq!(m("t.bool"), MetaValue::Bool(true));
    assert_eq!(m("t.string"), MetaValue::String("héllo ✓".into()));
    assert_eq!(m("t.u64"), MetaValue::U64((1 << 63) + 5));
    assert_eq!(m("t.i64"), MetaValue::I64(-(1 << 62)));
    assert_eq!(m("t.f64"), MetaValue::F64(-0.125));
    let a = |k: &str| match m(k) {
        MetaValue::Array(a) => a,
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(a("t.arr.u8"), MetaArray::U8(vec![1, 2, 255]));
    assert_eq!(a("t.arr.i8"), MetaArray::I8(vec![-1, 2, -128]));
    assert_eq!(a("t.arr.u16"), MetaArray::U16(vec![1, 65535]));
    assert_eq!(a("t.arr.i16"), MetaArray::I16(vec![-2, 3]));
    assert_eq!(a("t.arr.u32"), MetaArray::U32(vec![7, 8, 9]));
    assert_eq!(a("t.arr.i32"), MetaArray::I32(vec![-7, 8]));
    assert_eq!(a("t.arr.f32"), MetaArray::F32(vec![0.5, -2.25]));
    assert_eq!(a("t.arr.bool"), MetaArray::Bool(vec![true, false, true]));
    assert_eq!(
        a("t.arr.string"),
        MetaArray::String(vec!["a".into(), "".into(), "xyz".into()])
    );
    assert_eq!(a("t.arr.u64"), MetaArray::U64(vec![u64::MAX]));
    assert_eq!(a("t.arr.i64"), MetaArray::I64(vec![i64::MIN]));
    assert_eq!(a("t.arr.f64"), MetaArray::F64(vec![1e300, -0.0]));
    assert_eq!(
        a("t.arr.nested"),
        MetaArray::Array(vec![MetaArray::I32(vec![1, 2]), MetaArray::I32(vec![3])])
    );
    assert_eq!(
        a("t.arr.nested_str"),
        MetaArray::Array(vec![
            MetaArray::String(vec!["p".into(), "q".into()]),
            MetaArray::String(vec!["r".into()])
        ])
    );
}

#[test]
fn dequantizes_every_type_as_gguf_py() {
    let g = open("types.gguf");
    let expected = std::fs::read(fixtures_dir().join("gguf/types_expected.safetensors"))
        .expect("expected values");
    let expected = SafeTensors::deserialize(&expected).expect("parses");
    let s = g.get("shape_2x3x4").expect("3-D tensor");
    assert_eq!(
        (s.shape.clone(), s.ggml_type),
        (vec![2, 3, 4], GgmlType::F32)
    );
    let want_types = [
        ("f32", GgmlType::F32),
        ("f16", GgmlType::F16),
        ("bf16", GgmlType::BF16),
        ("q8_0", GgmlType::Q8_0),
        ("q4_0", GgmlType::Q4_0),
        ("q4_1", GgmlType::Q4_1),
        ("q5_0", GgmlType::Q5_0),
        ("q5_1", GgmlType::Q5_1),
        ("q4_k", GgmlType::Q4_K),
        ("q5_k", GgmlType::Q5_K),
        ("q6_k", GgmlType::Q6_K),
    ];
    for (name, ty) in want_types {
        assert_eq!(g.get(name).expect(name).ggml_type, ty, "{name}");
    }
    assert_eq!(g.tensors().len(), want_types.len() + 1);
    for t in g.tensors() {
        let view = expected.tensor(&t.name).expect("expected tensor");
        assert_eq!(view.shape(), t.shape.as_slice(), "{}: shape", t.name);
        assert_eq!(t.offset % 64, 0, "{}: aligned", t.name);
        let want: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let got = pollster::block_on(g.read_f32(&gguf_dir(), &t.name)).expect("dequantize");
        assert_eq!(got.len(), want.len(), "{}", t.name);
        let diff = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            diff, 0,
            "{} ({:?}): {diff} values differ",
            t.name, t.ggml_type
        );
    }
    assert!(dequantize(GgmlType::Q2_K, &[0; 84], 256).is_err(), "Q2_K");
    assert!(dequantize(GgmlType::Q8_0, &[0; 33], 32).is_err(), "short");
    assert!(
        dequantize(GgmlType::Q8_0, &[0; 34], 31).is_err(),
        "partial block"
    );
}

/// Every prefix of a real file, and targeted corruptions of its header, give an error (no
/// panic, no huge allocation).
#[test]
fn hostile_headers_are_errors() {
    let bytes = std::fs::read(fixtures_dir().join("gguf/types.gguf")).expect("fixture");
    let full = GgufFile::parse(&bytes, bytes.len() as u64).expect("whole file parses");
    let header_end = full.data_offset() as usize;
    for cut in 0..header_end.min(bytes.len()) {
        // The prefix as the whole file: must fail (the data of the last tensor is missing).
        assert!(
            GgufFile::parse(&bytes[..cut], cut as u64).is_err(),
            "prefix {cut} parsed"
        );
    }
    let corrupt = |at: usize, with: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + with.len()].copy_from_slice(with);
        GgufFile::parse(&b, b.len() as u64)
            .expect_err("corrupt header parsed")
            .to_string()
    };
    assert!(corrupt(0, b"GGUG").contains("magic"));
    assert!(corrupt(4, &1u32.to_le_bytes()).contains("version"));
    assert!(corrupt(8, &u64::MAX.to_le_bytes()).contains("tensor count"));
    assert!(corrupt(16, &(1u64 << 40).to_le_bytes()).contains("metadata count"));
    // The first key's length.
    assert!(corrupt(24, &u64::MAX.to_le_bytes()).contains("limit"));
    // A hand-made file: one array nested deeper than the limit.
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.push(b'k');
    b.extend(9u32.to_le_bytes());
    for _ in 0..20 {
        b.extend(9u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
    }
    b.extend([0u8; 64]);
    let err = GgufFile::parse(&b, b.len() as u64)
        .expect_err("deep")
        .to_string();
    assert!(err.contains("nested"), "{err}");
    // A tensor whose data runs past the end, and one with 5 dimensions.
    let tensor_file = |n_dims: u32, dims: &[u64], offset: u64| {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.push(b't');
        b.extend(n_dims.to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(offset.to_le_bytes());
        b.resize(b.len().div_ceil(32) * 32 + 64, 0);
        GgufFile::parse(&b, b.len() as u64)
    };
    assert!(tensor_file(1, &[16], 0).is_ok());
    assert!(
        tensor_file(1, &[17], 0)
            .unwrap_err()
            .to_string()
            .contains("past the end")
    );
    assert!(
        tensor_file(1, &[16], 32)
            .unwrap_err()
            .to_string()
            .contains("past the end")
    );
    assert!(
        tensor_file(1, &[16], 8)
            .unwrap_err()
            .to_string()
            .contains("alignment")
    );
    assert!(
        tensor_file(5, &[1; 5], 0)
            .unwrap_err()
            .to_string()
            .contains("dimensions")
    );
    assert!(
        tensor_file(2, &[1 << 40, 1 << 40], 0)
            .unwrap_err()
            .to_string()
            .contains("too large")
    );
    // A tensor of 16 f32 values `t` with its shape recorded as `qwen_layered.shape.t` (how our
    // stored copies keep a 5-D tensor): applied when it holds the same values, else refused.
    let with_shape = |key: &str, dims: &[u64]| {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend((key.len() as u64).to_le_bytes());
        b.extend(key.as_bytes());
        b.extend(9u32.to_le_bytes()); // array
        b.extend(10u32.to_le_bytes()); // of u64
        b.extend((dims.len() as u64).to_le_bytes());
        dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(1u64.to_le_bytes());
        b.push(b't');
        b.extend(2u32.to_le_bytes());
        b.extend([8u64, 2].iter().flat_map(|d| d.to_le_bytes()));
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(0u64.to_le_bytes());
        b.resize(b.len().div_ceil(32) * 32 + 64, 0);
        GgufFile::parse(&b, b.len() as u64)
    };
    let g = with_shape("qwen_layered.shape.t", &[2, 1, 2, 2, 2]).expect("5-D");
    assert_eq!(g.get("t").unwrap().shape, [2, 1, 2, 2, 2]);
    for (key, dims, why) in [
        (
            "qwen_layered.shape.t",
            &[2u64, 2, 2, 3][..],
            "does not hold",
        ),
        ("qwen_layered.shape.t", &[2, 0, 8], "does not hold"),
        ("qwen_layered.shape.u", &[16], "no tensor"),
    ] {
        let err = with_shape(key, dims).unwrap_err().to_string();
        assert!(err.contains(why), "{key} {dims:?}: {err}");
    }
}

/// The tiny transformer's first conditional call of case a (as in `transformer_parity.rs`).
fn run(model: &QwenImageTransformer2DModel) -> (Vec<f32>, Vec<f32>) {
    let rec = Record::load("a_lin_cfgnorm_l3_s3_64");
    let device = cpu();
    let shapes = rec.img_shapes();
    let hs = rec.shape("step0.transformer_in");
    let ts = rec.shape("text.prompt.embeds");
    let out = model
        .forward(TransformerInput {
            hidden_states: rec.tensor("step0.transformer_in", [hs[0], hs[1], hs[2]], &device),
            encoder_hidden_states: rec.tensor("text.prompt.embeds", [ts[0], ts[1], ts[2]], &device),
            encoder_hidden_states_mask: None,
            timestep: rec.tensor("step0.timestep", [1], &device),
            img_shapes: &shapes,
            additional_t_cond: Some(Tensor::<1, Int>::from_data(
                TensorData::new(vec![0i64], [1]),
                &device,
            )),
        })
        .expect("forward");
    (read(out), rec.f32("step0.cond.transformer_out").0)
}

/// `(max abs error, max abs error / max |want|, cosine similarity)`.
fn errors(got: &[f32], want: &[f32]) -> (f32, f32, f64) {
    assert_eq!(got.len(), want.len());
    let max_err = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
    let dot: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum();
    let n = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    (max_err, max_err / scale, dot / (n(got) * n(want)))
}

fn model_dir() -> DirSource {
    DirSource::new(fixtures_dir())
}

fn config() -> QwenImageTransformerConfig {
    pollster::block_on(read_json(&model_dir(), "model/transformer/config.json")).expect("config")
}

fn load_gguf(file: &str, precision: Precision) -> QwenImageTransformer2DModel {
    pollster::block_on(QwenImageTransformer2DModel::load_gguf(
        &gguf_dir(),
        file,
        &config(),
        &cpu(),
        precision,
    ))
    .unwrap_or_else(|e| panic!("{file} {precision:?}: {e}"))
}

fn load_st(precision: Precision) -> QwenImageTransformer2DModel {
    pollster::block_on(QwenImageTransformer2DModel::load_precision(
        &model_dir(),
        "model/transformer",
        &cpu(),
        precision,
    ))
    .expect("safetensors loads")
}

fn report(label: &str, model: &QwenImageTransformer2DModel) -> (f32, f32, f64) {
    let (got, want) = run(model);
    let e = errors(&got, &want);
    eprintln!(
        "{label}: max abs err {:.3e}, relative to max |ref| {:.3e}, cosine {:.6}",
        e.0, e.1, e.2
    );
    e
}

/// Every linear weight of a model, dequantized, with whether it was quantized.
fn linear_weights(model: &QwenImageTransformer2DModel) -> Vec<(bool, Vec<f32>)> {
    let b = &model.transformer_blocks[0];
    [
        &model.img_in,
        &model.txt_in,
        &model.proj_out,
        &b.attn.to_q,
        &b.img_mlp.proj_in,
    ]
    .iter()
    .map(|l| match &l.weight {
        LinearWeight::F32(w) => (false, read(w.val().transpose())),
        LinearWeight::Blocks(bw) => (true, read(bw.dequantize())),
        LinearWeight::Quantized(q) => (true, read(q.dequantize())),
        LinearWeight::Rows(_) => panic!("loaded without a buffer limit, yet split"),
    })
    .collect()
}

#[test]
fn transformer_from_gguf_and_quantized_at_load_matches_the_reference() {
    // Bounds: 2-3x the errors measured (Q8: rel 6.0e-3, cosine 0.999983; Q4: rel 0.128,
    // cosine 0.9942; see the printed lines).
    let cases: [(&str, QwenImageTransformer2DModel, f32, f64); 6] = [
        (
            "safetensors bf16, f32",
            load_st(Precision::F32),
            1e-4,
            0.999_999_9,
        ),
        (
            "GGUF Q8_0, f32",
            load_gguf("transformer-Q8_0.gguf", Precision::F32),
            0.02,
            0.9999,
        ),
        (
            "GGUF Q8_0, q8",
            load_gguf("transformer-Q8_0.gguf", Precision::Q8),
            0.02,
            0.9999,
        ),
        ("safetensors bf16, q8", load_st(Precision::Q8), 0.02, 0.9999),
        (
            "GGUF Q4_0, q4",
            load_gguf("transformer-Q4_0.gguf", Precision::Q4),
            0.3,
            0.99,
        ),
        ("safetensors bf16, q4", load_st(Precision::Q4), 0.3, 0.99),
    ];
    for (label, model, max_rel, min_cos) in &cases {
        let (_, rel, cos) = report(label, model);
        assert!(
            rel <= *max_rel && cos >= *min_cos,
            "{label}: rel {rel:.3e}, cosine {cos}"
        );
    }
    // Q8_0/Q4_0 blocks are taken over without loss: the quantized layers hold exactly the
    // values of the GGUF dequantized to f32, and quantizing the bf16 checkpoint at load gives
    // the same blocks as gguf-py's quantizer.
    let w = |i: usize| linear_weights(&cases[i].1);
    let (gguf_f32, gguf_q8, st_q8) = (w(1), w(2), w(3));
    for ((a, b), c) in gguf_f32.iter().zip(&gguf_q8).zip(&st_q8) {
        assert!(!a.0 && b.0 && c.0, "precisions");
        assert_eq!(a.1, b.1, "GGUF Q8_0 repacked vs dequantized");
        assert_eq!(b.1, c.1, "quantized at load vs gguf-py Q8_0");
    }
    let q4_gguf = linear_weights(&load_gguf("transformer-Q4_0.gguf", Precision::F32));
    for ((a, b), c) in q4_gguf.iter().zip(w(4)).zip(w(5)) {
        assert_eq!(a.1, b.1, "GGUF Q4_0 repacked vs dequantized");
        assert_eq!(b.1, c.1, "quantized at load vs gguf-py Q4_0");
    }
}

#[test]
fn gguf_loading_refuses_wrong_and_extra_tensors() {
    let bytes = std::fs::read(fixtures_dir().join("gguf/transformer-Q8_0.gguf")).expect("fixture");
    let config = config();
    let load = |bytes: Vec<u8>| {
        let mut src = MemorySource::new();
        src.insert("t.gguf", bytes);
        pollster::block_on(QwenImageTransformer2DModel::load_gguf(
            &src,
            "t.gguf",
            &config,
            &cpu(),
            Precision::Q8,
        ))
        .map(|_| ())
    };
    load(bytes.clone()).expect("intact file loads");
    let err = load(bytes[..bytes.len() - 1].to_vec())
        .expect_err("truncated")
        .to_string();
    assert!(err.contains("past the end"), "{err}");
    // Rename one tensor in place (same length): it is then missing, and the renamed one
    // unexpected.
    let at = bytes
        .windows(10)
        .position(|w| w == b"img_in.wei")
        .expect("name in header");
    let mut renamed = bytes.clone();
    renamed[at..at + 6].copy_from_slice(b"img_xx");
    let err = load(renamed).expect_err("renamed").to_string();
    assert!(
        err.contains("img_in.weight") && err.contains("missing"),
        "{err}"
    );
    let src = gguf_dir();
    assert!(pollster::block_on(src.exists("transformer-Q4_0.gguf")).expect("exists"));
}

/// A header longer than the first 1 MiB read is read in growing prefixes, and every read
/// stays inside the file.
#[test]
fn long_headers_are_read_in_growing_prefixes() {
    let long = "x".repeat(3 << 20);
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // one tensor
    b.extend(1u64.to_le_bytes()); // one metadata entry
    b.extend(4u64.to_le_bytes());
    b.extend(b"long");
    b.extend(8u32.to_le_bytes()); // string
    b.extend((long.len() as u64).to_le_bytes());
    b.extend(long.as_bytes());
    b.extend(1u64.to_le_bytes());
    b.push(b'w');
    b.extend(1u32.to_le_bytes());
    b.extend(32u64.to_le_bytes());
    b.extend(0u32.to_le_bytes()); // F32
    b.extend(0u64.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32, 0);
    b.extend((0..32).flat_map(|i| (i as f32).to_le_bytes()));
    let mut src = MemorySource::new();
    src.insert("big.gguf", b.clone());
    let g = pollster::block_on(GgufFile::open(&src, "big.gguf")).expect("opens");
    assert_eq!(g.meta("long"), Some(&MetaValue::String(long)));
    let w = pollster::block_on(g.read_f32(&src, "w")).expect("w");
    assert_eq!(w, (0..32).map(|i| i as f32).collect::<Vec<_>>());
    // Cut inside the tensor data: the header says more than the file holds.
    src.insert("big.gguf", b[..b.len() - 4].to_vec());
    let err = pollster::block_on(GgufFile::open(&src, "big.gguf"))
        .expect_err("truncated")
        .to_string();
    assert!(err.contains("past the end"), "{err}");
}

/// The tiny transformer's stored quantized copy (`QuantizedLayout` + `write_quantized`) in
/// `precision`, written with `read_chunk`: the file's bytes and its returned SHA-256.
fn stored_copy(precision: Precision, read_chunk: Option<u64>) -> (Vec<u8>, [u8; 32]) {
    let src = model_dir();
    let folder = pollster::block_on(SafetensorsFolder::open(&src, "model/transformer"))
        .expect("fixture transformer");
    let layout =
        QwenImageTransformer2DModel::stored_quantized_layout(&folder, precision, "test/tiny@1")
            .expect("layout");
    let mut bytes = Vec::new();
    let mut seen = Vec::new();
    let hash = pollster::block_on(write_quantized(
        &src,
        &layout,
        read_chunk,
        async |b: &[u8]| {
            bytes.extend_from_slice(b);
            Ok(())
        },
        |done, total| seen.push((done, total)),
    ))
    .expect("written");
    assert_eq!(bytes.len() as u64, layout.size(), "the layout's size");
    assert_eq!(
        seen.len(),
        layout.counts().0,
        "one progress call per tensor"
    );
    assert_eq!(seen.last(), Some(&(layout.size(), layout.size())));
    (bytes, hash)
}

#[test]
fn a_stored_quantized_transformer_loads_as_the_one_quantized_at_load() {
    for (precision, ty, pyfile) in [
        (Precision::Q8, GgmlType::Q8_0, "transformer-Q8_0.gguf"),
        (Precision::Q4, GgmlType::Q4_0, "transformer-Q4_0.gguf"),
    ] {
        let (bytes, hash) = stored_copy(precision, None);
        let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        assert_eq!(hash, digest, "{precision:?}: returned hash");
        // Read in steps of one row (or a few bytes) instead of 8 MiB: the same file.
        assert_eq!(stored_copy(precision, Some(64)).1, hash, "chunking");

        let mut src = MemorySource::new();
        src.insert("stored.gguf", bytes.clone());
        let g = pollster::block_on(GgufFile::open(&src, "stored.gguf")).expect("our reader");
        assert_eq!((g.version(), g.alignment()), (3, 32));
        assert_eq!(g.architecture(), Some("qwen_image"));
        let file_type = if precision == Precision::Q8 { 7 } else { 2 };
        assert_eq!(
            g.meta("general.file_type"),
            Some(&MetaValue::U32(file_type))
        );
        assert_eq!(
            g.meta("qwen_layered.format"),
            Some(&MetaValue::U32(stored_format("transformer")))
        );
        assert_eq!(
            g.meta("qwen_layered.origin"),
            Some(&MetaValue::String("test/tiny@1".into()))
        );
        let st = pollster::block_on(SafetensorsFolder::open(&model_dir(), "model/transformer"))
            .expect("fixture");
        assert_eq!(g.tensors().len(), st.len());
        let mut quantized = 0;
        for t in g.tensors() {
            let e = st.get(&t.name).expect("same keys");
            assert_eq!(t.shape, e.shape, "{}", t.name);
            assert_eq!(t.offset % 32, 0, "{} aligned", t.name);
            let linear = QwenImageTransformer2DModel::is_linear_weight(&t.name, &t.shape)
                && t.shape[1] % 32 == 0;
            if linear {
                assert_eq!(t.ggml_type, ty, "{}", t.name);
                quantized += 1;
            } else {
                // Kept as stored, byte for byte.
                assert_eq!(t.ggml_type, GgmlType::BF16, "{}", t.name);
                let stored =
                    pollster::block_on(model_dir().read(&e.file, e.offset, e.len)).expect("read");
                let ours = &bytes[t.offset as usize..(t.offset + t.len) as usize];
                assert_eq!(ours, &stored[..], "{}", t.name);
            }
        }
        assert!(quantized >= 20, "{quantized} quantized tensors");

        // Independent check of the block bytes: gguf-py 0.19.0's quantizer (ggml's reference
        // rounding) wrote the same blocks for every tensor both files quantize.
        let py = open(pyfile);
        let py_bytes = std::fs::read(fixtures_dir().join("gguf").join(pyfile)).expect("fixture");
        let mut compared = 0;
        for t in g.tensors().iter().filter(|t| t.ggml_type == ty) {
            let Some(p) = py.get(&t.name).filter(|p| p.ggml_type == ty) else {
                continue;
            };
            assert_eq!(
                &bytes[t.offset as usize..(t.offset + t.len) as usize],
                &py_bytes[p.offset as usize..(p.offset + p.len) as usize],
                "{}: our {ty:?} blocks vs gguf-py's",
                t.name
            );
            compared += 1;
        }
        assert!(compared >= 20, "{compared} tensors compared with gguf-py");

        // Loaded in the same precision: exactly the model quantized at load.
        let from_store = pollster::block_on(QwenImageTransformer2DModel::load_gguf(
            &src,
            "stored.gguf",
            &config(),
            &cpu(),
            precision,
        ))
        .expect("the stored copy loads");
        let at_load = load_st(precision);
        let (a, b) = (linear_weights(&from_store), linear_weights(&at_load));
        assert!(a.iter().all(|w| w.0), "{precision:?}: quantized layers");
        assert_eq!(a, b, "{precision:?}: linear weights");
        let (out_store, _) = run(&from_store);
        let (out_load, _) = run(&at_load);
        let diff = out_store
            .iter()
            .zip(&out_load)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            out_store.len() == out_load.len() && diff == 0.0,
            "{precision:?}: transformer outputs differ by up to {diff:e}"
        );
        eprintln!(
            "{precision:?}: stored copy {} bytes ({} tensors, {quantized} quantized, {compared} \
             equal to gguf-py's); output identical to quantizing at load",
            bytes.len(),
            g.tensors().len()
        );
    }
}

#[test]
fn a_stored_quantized_copy_needs_a_quantized_precision() {
    let folder = pollster::block_on(SafetensorsFolder::open(&model_dir(), "model/transformer"))
        .expect("fixture");
    let err = QwenImageTransformer2DModel::stored_quantized_layout(&folder, Precision::F32, "x")
        .expect_err("f32")
        .to_string();
    assert!(err.contains("q8 or q4"), "{err}");
}

/// A source that fails every read after the first `ok` ones (a storage error mid-copy).
struct FailingAfter<S> {
    inner: S,
    ok: std::cell::Cell<usize>,
}

impl<S: WeightSource> WeightSource for FailingAfter<S> {
    async fn exists(&self, file: &str) -> qwen_layered_web::Result<bool> {
        self.inner.exists(file).await
    }

    async fn size(&self, file: &str) -> qwen_layered_web::Result<u64> {
        self.inner.size(file).await
    }

    async fn read(&self, file: &str, offset: u64, len: u64) -> qwen_layered_web::Result<Vec<u8>> {
        if self.ok.get() == 0 {
            return Err(qwen_layered_web::Error::Source {
                file: file.to_owned(),
                reason: "simulated read failure".into(),
            });
        }
        self.ok.set(self.ok.get() - 1);
        self.inner.read(file, offset, len).await
    }
}

/// `download::derived::store_quantized` writes the stored copy through a download store's
/// partial-file protocol: committed only once complete, with the SHA-256 of its bytes (the
/// bytes `write_quantized` makes); a failure mid-copy leaves nothing behind, a cancel leaves
/// the partial copy, which the next write goes on with.
#[test]
fn the_stored_copy_is_committed_only_when_complete() {
    use qwen_layered_web::download::derived::{discard_derived, store_quantized};
    use qwen_layered_web::download::native::DirStore;
    use qwen_layered_web::download::{Check, DownloadPlan, Store};

    let root = std::env::temp_dir().join(format!("qlw-stored-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let store = DirStore::new(&root);
    let plan = DownloadPlan {
        repo: "test/tiny".into(),
        revision: "0123456789abcdef0123456789abcdef01234567".into(),
        files: Vec::new(),
    };
    let src = model_dir();
    let folder =
        pollster::block_on(SafetensorsFolder::open(&src, "model/transformer")).expect("fixture");
    let layout =
        QwenImageTransformer2DModel::stored_quantized_layout(&folder, Precision::Q4, "test/tiny@1")
            .expect("layout");
    let path = "transformer/stored-q4_0.gguf";
    let on_disk = store.model_dir(&plan).join("transformer/stored-q4_0.gguf");
    let leftovers = || {
        std::fs::read_dir(on_disk.parent().expect("folder"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };

    let failing = FailingAfter {
        inner: model_dir(),
        ok: std::cell::Cell::new(5),
    };
    let err = pollster::block_on(store_quantized(
        &store,
        &plan,
        path,
        &failing,
        &layout,
        |_, _| {},
    ))
    .expect_err("the source fails")
    .to_string();
    assert!(err.contains("simulated read failure"), "{err}");
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());

    // Cancelled mid-copy (the page's Cancel during a first load): the error is the cancel, so
    // the caller stops instead of loading on without the copy, and the partial copy stays,
    // uncommitted, with how far it got.
    let reads = std::cell::Cell::new(0);
    let stop = || {
        reads.set(reads.get() + 1);
        reads.get() > 5
    };
    let cancellable = Cancellable::new(&src, &stop);
    let err = pollster::block_on(store_quantized(
        &store,
        &plan,
        path,
        &cancellable,
        &layout,
        |_, _| {},
    ))
    .expect_err("cancelled");
    assert!(
        matches!(&err, qwen_layered_web::Error::Cancelled { at } if at.starts_with("before reading model/transformer/")),
        "{err}"
    );
    assert_eq!(reads.get(), 6, "stopped at the first read after the cancel");
    let mut left = leftovers();
    left.sort();
    assert_eq!(
        left,
        ["stored-q4_0.gguf.part", "stored-q4_0.gguf.part.json"].map(std::ffi::OsString::from)
    );

    // The next write goes on after the 5 tensors written whole, reads only the rest, and
    // commits exactly the bytes (and SHA-256) of a write in one go.
    let total_reads = {
        let n = std::cell::Cell::new(0);
        let count = || {
            n.set(n.get() + 1);
            false
        };
        pollster::block_on(write_quantized(
            &Cancellable::new(&src, &count),
            &layout,
            None,
            async |_: &[u8]| Ok(()),
            |_, _| {},
        ))
        .expect("written");
        n.get()
    };
    reads.set(0);
    let counting = || {
        reads.set(reads.get() + 1);
        false
    };
    let stored = pollster::block_on(store_quantized(
        &store,
        &plan,
        path,
        &Cancellable::new(&src, &counting),
        &layout,
        |_, _| {},
    ))
    .expect("stored");
    assert!(stored.resumed_from > 0, "resumed");
    assert_eq!(
        layout.resume_point(stored.resumed_from),
        stored.resumed_from
    );
    assert_eq!(
        reads.get(),
        total_reads - 5,
        "only the tensors not written before"
    );
    let file = stored.file;
    let (bytes, hash) = stored_copy(Precision::Q4, None);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(file.check, Check::Sha256(hex));
    assert_eq!(file.size, bytes.len() as u64);
    assert_eq!(std::fs::read(&on_disk).expect("committed file"), bytes);
    assert!(pollster::block_on(store.is_committed(&plan, &file)).expect("store"));
    assert_eq!(
        leftovers(),
        vec![std::ffi::OsString::from("stored-q4_0.gguf")]
    );
    // Delete's way: by path alone, whatever its hash.
    pollster::block_on(discard_derived(&store, &plan, path)).expect("discarded");
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());
    let _ = std::fs::remove_dir_all(&root);
}

/// `download::derived::store_quantized_as_they_arrive` makes the stored copy while a sharded
/// checkpoint downloads: each shard is fetched only when the copy reaches its tensors and is
/// given up as soon as the copy holds them durably, so the storage never holds the whole
/// checkpoint beside the copy. A download stopped between shards keeps the partial copy (the
/// shards it consumed are gone); the next one goes on from it without fetching them again,
/// and commits exactly the bytes of a copy written in one go.
#[test]
fn the_stored_copy_is_made_shard_by_shard_as_the_checkpoint_arrives() {
    use qwen_layered_web::download::derived::store_quantized_as_they_arrive;
    use qwen_layered_web::download::native::DirStore;
    use qwen_layered_web::download::{Check, DownloadPlan, Store};

    let root = std::env::temp_dir().join(format!("qlw-arrive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // The "hub": the fixture transformer split into two shards with an index, as diffusers
    // writes a large one.
    let remote = root.join("remote");
    let shard_paths = common::write_sharded_transformer(&remote);
    let hub = DirSource::new(&remote);
    let folder = pollster::block_on(SafetensorsFolder::open(&hub, "transformer")).expect("shards");
    let layout =
        QwenImageTransformer2DModel::stored_quantized_layout(&folder, Precision::Q4, "test/tiny@1")
            .expect("layout");
    let files = layout.source_files();
    let shard_path = |i: usize| shard_paths[i - 1].clone();
    assert_eq!(
        files.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
        [shard_path(1), shard_path(2)]
    );
    assert!(
        files[0].1 < files[1].1 && files[1].1 == layout.size(),
        "{files:?}"
    );
    // What a copy written in one go holds.
    let mut want = Vec::new();
    let want_hash = pollster::block_on(write_quantized(
        &hub,
        &layout,
        None,
        async |b: &[u8]| {
            want.extend_from_slice(b);
            Ok(())
        },
        |_, _| {},
    ))
    .expect("written in one go");

    let store = DirStore::new(root.join("store"));
    let plan = DownloadPlan {
        repo: "test/tiny".into(),
        revision: "0123456789abcdef0123456789abcdef01234567".into(),
        files: Vec::new(),
    };
    let local = store.model_dir(&plan);
    let cache = DirSource::new(&local);
    let path = "transformer/stored-q4_0.gguf";
    let fetched = std::cell::RefCell::new(Vec::<String>::new());
    let consumed = std::cell::RefCell::new(Vec::<(String, u64)>::new());
    // (written, size) of each progress report, and how many shards were fetched by then.
    let reports = std::cell::RefCell::new(Vec::<(u64, u64, usize)>::new());
    // Fetching copies a shard from the hub into the store; `stop_at` is the shard whose fetch
    // is cancelled.
    let run = |stop_at: Option<String>| {
        pollster::block_on(store_quantized_as_they_arrive(
            &store,
            &plan,
            path,
            &cache,
            &layout,
            async |file: &str| {
                if stop_at.as_deref() == Some(file) {
                    return Err(qwen_layered_web::Error::Cancelled {
                        at: format!("before fetching {file}"),
                    });
                }
                // Every shard before it is gone: the storage holds one at a time.
                let held: Vec<_> = (1..=2)
                    .filter(|&i| local.join(shard_path(i)).exists())
                    .collect();
                assert!(
                    held.is_empty(),
                    "fetching {file} while holding shards {held:?}"
                );
                std::fs::create_dir_all(local.join("transformer")).expect("folder");
                std::fs::copy(remote.join(file), local.join(file)).expect("fetched");
                fetched.borrow_mut().push(file.to_owned());
                Ok(())
            },
            async |file: &str, end: u64| {
                let _ = std::fs::remove_file(local.join(file));
                consumed.borrow_mut().push((file.to_owned(), end));
                Ok(())
            },
            |written, size| {
                let shards = fetched.borrow().len();
                reports.borrow_mut().push((written, size, shards));
            },
        ))
    };

    // Cancelled before the second shard: the first is consumed, the copy partial.
    let err = run(Some(shard_path(2))).expect_err("cancelled");
    assert!(
        matches!(err, qwen_layered_web::Error::Cancelled { .. }),
        "{err}"
    );
    assert_eq!(*fetched.borrow(), [shard_path(1)]);
    assert_eq!(*consumed.borrow(), [(shard_path(1), files[0].1)]);
    let part = local.join("transformer/stored-q4_0.gguf.part");
    assert!(
        part.exists() && !local.join(path).exists(),
        "partial, not committed"
    );
    assert!(
        !local.join(shard_path(1)).exists(),
        "the consumed shard is gone"
    );

    // Going on: the first shard is not fetched again, and the copy is the one-go copy.
    fetched.borrow_mut().clear();
    consumed.borrow_mut().clear();
    reports.borrow_mut().clear();
    let stored = run(None).expect("stored");
    // Reading back what the copy holds is reported before anything is fetched, up to where
    // the copy goes on, then the quantizing up to the whole copy.
    let reports = reports.into_inner();
    let read_back: Vec<_> = reports.iter().filter(|r| r.2 == 0).collect();
    assert_eq!(
        read_back.last().map(|r| (r.0, r.1)),
        Some((files[0].1, layout.size())),
        "{reports:?}"
    );
    assert_eq!(
        reports.last().map(|r| (r.0, r.1)),
        Some((layout.size(), layout.size()))
    );
    assert!(reports.windows(2).all(|w| w[0].0 <= w[1].0), "{reports:?}");
    assert_eq!(*fetched.borrow(), [shard_path(2)]);
    assert_eq!(
        *consumed.borrow(),
        [(shard_path(1), files[0].1), (shard_path(2), files[1].1)],
        "told again of the first, in case its removal was cut short"
    );
    assert_eq!(
        stored.resumed_from, files[0].1,
        "went on after the first shard's tensors"
    );
    let hex: String = want_hash.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(stored.file.check, Check::Sha256(hex));
    assert_eq!(
        std::fs::read(local.join(path)).expect("committed copy"),
        want
    );
    assert!(pollster::block_on(store.is_committed(&plan, &stored.file)).expect("store"));
    assert!(
        (1..=2).all(|i| !local.join(shard_path(i)).exists()),
        "no shard is left"
    );
    let _ = std::fs::remove_dir_all(&root);
}
