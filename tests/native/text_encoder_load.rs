//! The text encoder in the browser's settings (issue #5/#6): its token embedding gathered from
//! storage row by row instead of uploaded (the memory plan's `HostGather`), and its linear
//! layers in 8 or 4 bits. Tiny fixture model on the CPU (Flex), against the same records as
//! `text_encoder_parity` (`text.*.embeds` of every case, from diffusers' `encode_prompt`).
//!
//! Run: `cargo test --test native text_encoder_load:: -- --nocapture` (prints the errors).

use crate::common;

use std::cell::RefCell;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Int, Tensor};
use common::{Record, assert_close, cases, cpu, model_source, read};
use qwen_layered_web::caption::Captioner;
use qwen_layered_web::error::Result;
use qwen_layered_web::model::nn::LinearWeight;
use qwen_layered_web::model::text_encoder::device_bytes;
use qwen_layered_web::text::{EmbeddingMode, PromptEncoder, TextEncoderLoad};
use qwen_layered_web::weights::{
    Checkpoint, MemorySource, Precision, SafetensorsFolder, WeightSource,
};

const WEIGHTS: &str = "text_encoder/model.safetensors";
const EMBED: &str = "model.embed_tokens.weight";

/// Every case's prompt texts: `(case, record key, text, max_sequence_length)`.
fn prompts() -> Vec<(String, &'static str, String, usize)> {
    let mut out = Vec::new();
    for case in cases() {
        let rec = Record::load(&case);
        let max_len = rec.json["call"]["max_sequence_length"]
            .as_u64()
            .expect("max") as usize;
        for (key, field) in [("prompt", "prompt"), ("negative", "negative_prompt")] {
            if !rec.has(&format!("text.{key}.embeds")) {
                continue;
            }
            let text = rec.json["call"][field]
                .as_str()
                .expect("prompt text")
                .to_owned();
            out.push((case.clone(), key, text, max_len));
        }
    }
    assert_eq!(
        out.len(),
        11,
        "a, b, c, e, f: prompt and negative; d: prompt"
    );
    out
}

fn encoder(source: &impl WeightSource, options: TextEncoderLoad) -> PromptEncoder {
    pollster::block_on(PromptEncoder::load_with(source, &cpu(), options)).expect("loads")
}

#[test]
fn gathered_embeddings_give_bit_identical_prompt_embeds() {
    let source = model_source();
    for precision in [Precision::F32, Precision::Q4] {
        let resident = encoder(
            &source,
            TextEncoderLoad {
                precision,
                embedding: EmbeddingMode::Resident,
                max_part_bytes: None,
            },
        );
        let gathered = encoder(&source, TextEncoderLoad::gathered(precision));
        assert_eq!(
            gathered.text_encoder.embedding_mode(),
            EmbeddingMode::Gathered
        );
        assert!(gathered.text_encoder.model.embed_tokens.weight.is_none());
        let mut worst = 0f32;
        for (case, key, text, max_len) in prompts() {
            let rec = Record::load(&case);
            let want = read(resident.encode(&text, max_len).expect("resident"));
            let got = gathered.encode_from(&source, &text, max_len);
            let got = read(pollster::block_on(got).expect("gathered"));
            let same = want.len() == got.len()
                && want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{precision:?} {}: text.{key}.embeds differ", rec.name);
            if precision == Precision::F32 {
                let (rec_want, shape) = rec.f32(&format!("text.{key}.embeds"));
                let label = format!("{}: gathered text.{key}.embeds", rec.name);
                worst = worst.max(assert_close(&label, &got, &rec_want, &shape, 1e-4));
            }
        }
        eprintln!("{precision:?}: gathered == resident, bit for bit");
        if precision == Precision::F32 {
            eprintln!("F32 gathered vs records: max abs err {worst:.3e}");
        }
        // The sync path refuses a gathered embedding with a message that says what to do.
        let err = gathered
            .encode("a cat", 16)
            .expect_err("gathered needs the source");
        assert!(err.to_string().contains("encode_from"), "{err}");
    }
}

/// The 8- and 4-bit text encoders against the f32 records (all linear layers of the tiny model
/// have `d_in` 64 or 128, multiples of 32, so every one is quantized; a `d_in` that is not a
/// multiple of 32 would stay f32). Measured over the 11 prompts (hidden states of unit RMS
/// scale; relative = ‖got − want‖₂ / ‖want‖₂ over all values; tiny random weights, two
/// blocks of 32 per row of 64):
///
/// - Q8: max abs err 1.69e-2, relative 4.2e-3
/// - Q4: max abs err 2.61e-1, relative 7.0e-2
///
/// The bounds below leave 2× or more margin.
#[test]
fn quantized_text_encoders_stay_within_the_measured_error() {
    let source = model_source();
    for (precision, bits, max_abs, max_rel) in [
        (Precision::Q8, 8, 4e-2f32, 1e-2f64),
        (Precision::Q4, 4, 0.6, 0.15),
    ] {
        let enc = encoder(&source, TextEncoderLoad::gathered(precision));
        for layer in &enc.text_encoder.model.layers {
            for linear in [
                &layer.self_attn.q_proj,
                &layer.self_attn.o_proj,
                &layer.mlp.down_proj,
            ] {
                match &linear.weight {
                    LinearWeight::Blocks(b) => assert_eq!(b.bits, bits),
                    LinearWeight::Quantized(q) => assert_eq!(q.bits, bits),
                    LinearWeight::F32(_) => panic!("{precision:?}: a linear stayed f32"),
                    LinearWeight::Rows(_) => panic!("{precision:?}: split without a limit"),
                }
            }
        }
        let (mut abs, mut diff2, mut want2) = (0f32, 0f64, 0f64);
        for (case, key, text, max_len) in prompts() {
            let rec = Record::load(&case);
            let got = pollster::block_on(enc.encode_from(&source, &text, max_len)).expect("enc");
            let got = read(got);
            let (want, _) = rec.f32(&format!("text.{key}.embeds"));
            assert_eq!(got.len(), want.len(), "{}: text.{key}.embeds", rec.name);
            for (g, w) in got.iter().zip(&want) {
                let e = (g - w).abs();
                assert!(e.is_finite(), "{precision:?} {}: {g} vs {w}", rec.name);
                abs = abs.max(e);
                diff2 += f64::from(e) * f64::from(e);
                want2 += f64::from(*w) * f64::from(*w);
            }
        }
        let rel = (diff2 / want2).sqrt();
        eprintln!(
            "{precision:?} text encoder vs f32 records: max abs err {abs:.3e}, relative {rel:.3e}"
        );
        assert!(
            abs <= max_abs,
            "{precision:?}: max abs err {abs:.3e} > {max_abs:e}"
        );
        assert!(
            rel <= max_rel,
            "{precision:?}: relative err {rel:.3e} > {max_rel:e}"
        );
    }
}

/// A source that logs every read.
struct Logged<S> {
    inner: S,
    reads: RefCell<Vec<(String, u64, u64)>>,
}

impl<S: WeightSource> WeightSource for Logged<S> {
    async fn exists(&self, file: &str) -> Result<bool> {
        self.inner.exists(file).await
    }
    async fn size(&self, file: &str) -> Result<u64> {
        self.inner.size(file).await
    }
    async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.reads.borrow_mut().push((file.to_owned(), offset, len));
        self.inner.read(file, offset, len).await
    }
}

impl<S> Logged<S> {
    /// The reads logged since the last call, and the log cleared.
    fn take(&self) -> Vec<(String, u64, u64)> {
        std::mem::take(&mut *self.reads.borrow_mut())
    }
}

/// The distinct ids in `ids` that are not in `seen` (which they are added to).
fn new_ids(ids: &[u32], seen: &mut std::collections::BTreeSet<u32>) -> usize {
    ids.iter().filter(|&&id| seen.insert(id)).count()
}

#[test]
fn the_gathered_embedding_reads_only_the_rows_a_prompt_uses_once() {
    let source = Logged {
        inner: model_source(),
        reads: RefCell::new(Vec::new()),
    };
    let folder = pollster::block_on(SafetensorsFolder::open(&model_source(), "text_encoder"))
        .expect("headers");
    let table = folder.get(EMBED).expect("embedding").clone();
    let [vocab, d] = [table.shape[0], table.shape[1]];
    let row = table.len / vocab as u64;
    assert_eq!(row, 2 * d as u64, "bf16 rows");
    let in_table =
        |off: u64, len: u64| off >= table.offset && off + len <= table.offset + table.len;

    let enc = encoder(&source, TextEncoderLoad::gathered(Precision::F32));
    let load_reads = source.take();
    assert!(
        load_reads.iter().all(|(f, off, len)| f != WEIGHTS
            || off + len <= table.offset
            || *off >= table.offset + table.len),
        "loading read bytes of the embedding: {load_reads:?}"
    );

    let mut seen = std::collections::BTreeSet::new();
    let prompt = "A red apple and a blue cup on a wooden table.";
    for (text, max_len) in [(prompt, 512), (" ", 512), (prompt, 512), ("apple cup", 8)] {
        let ids = enc.input_ids(text).expect("ids");
        let run = &ids[..ids.len().min(34 + if text == " " { 1024 } else { max_len })];
        let fresh = new_ids(run, &mut seen);
        pollster::block_on(enc.encode_from(&source, text, max_len)).expect("encode");
        let reads = source.take();
        let bytes: u64 = reads.iter().map(|r| r.2).sum();
        eprintln!(
            "{text:?}: {} ids, {fresh} rows not read before: {} reads, {bytes} bytes",
            run.len(),
            reads.len()
        );
        assert!(
            reads
                .iter()
                .all(|(f, off, len)| f == WEIGHTS && in_table(*off, *len) && len % row == 0),
            "{text:?}: reads outside the embedding's rows: {reads:?}"
        );
        assert_eq!(
            bytes,
            fresh as u64 * row,
            "{text:?}: each new row read once"
        );
        assert!(
            reads.len() <= fresh,
            "{text:?}: at most one read per new row"
        );
    }
    let held = enc
        .text_encoder
        .model
        .embed_tokens
        .rows
        .as_ref()
        .unwrap()
        .reads();
    assert_eq!(held.rows_held, seen.len());
    assert!(held.rows_held < vocab, "the whole table was never read");
}

#[test]
fn an_id_outside_the_table_or_a_truncated_file_is_an_error_with_its_place() {
    // The fixture model in memory; the encoder is loaded from it while it is whole.
    let mut mem = MemorySource::new();
    let dir = common::fixtures_dir().join("model");
    for file in [
        "text_encoder/config.json",
        WEIGHTS,
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
    ] {
        if let Ok(bytes) = std::fs::read(dir.join(file)) {
            mem.insert(file, bytes);
        }
    }
    let enc = encoder(&mem, TextEncoderLoad::gathered(Precision::F32));
    let lm = &enc.text_encoder;

    let err = pollster::block_on(lm.embed_from(&mem, &[3, 288]))
        .expect_err("id 288 of 288 rows")
        .to_string();
    assert!(
        err.contains(EMBED) && err.contains(WEIGHTS) && err.contains("token id 288"),
        "{err}"
    );

    // The file cut short after it was opened (a cache evicted or rewritten under the app):
    // the first rows still read, a later one names its token id and byte offset.
    let folder = pollster::block_on(SafetensorsFolder::open(&mem, "text_encoder")).unwrap();
    let table = folder.get(EMBED).unwrap().clone();
    let row = table.len / 288;
    let whole = pollster::block_on(mem.read_all(WEIGHTS)).unwrap();
    mem.insert(
        WEIGHTS,
        whole[..(table.offset + 10 * row) as usize].to_vec(),
    );
    let first = pollster::block_on(lm.embed_from(&mem, &[0, 9])).expect("rows 0 and 9 are there");
    assert_eq!(first.dims(), [1, 2, 64]);
    let offset = table.offset + 200 * row;
    let err = pollster::block_on(lm.embed_from(&mem, &[200]))
        .expect_err("row 200 is cut off")
        .to_string();
    assert!(
        err.contains(EMBED)
            && err.contains(WEIGHTS)
            && err.contains("token id 200")
            && err.contains(&format!("byte offset {offset}")),
        "{err}"
    );
    // Nothing of the failed read was kept: with the file whole again the row reads.
    mem.insert(WEIGHTS, whole);
    let again = pollster::block_on(lm.embed_from(&mem, &[200])).expect("whole again");
    assert_eq!(again.dims(), [1, 1, 64]);
}

/// Counts the bytes of a module's tensors on the device (every float and int element is 4
/// bytes: f32 values, f32 scales, i32 code words).
#[derive(Default)]
struct DeviceBytes(u64);

impl ModuleVisitor for DeviceBytes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0 += 4 * param.val().shape().num_elements() as u64;
    }
    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        self.0 += 4 * param.val().shape().num_elements() as u64;
    }
}

fn bytes_of<M: Module>(m: &M) -> u64 {
    let mut v = DeviceBytes::default();
    m.visit(&mut v);
    v.0
}

/// `text_encoder::device_bytes` (the browser's size check before loading) is what the loaded
/// models hold, for the prompt encoder and the captioner, in every precision and mode.
#[test]
fn the_size_estimate_from_the_headers_is_what_loading_puts_on_the_device() {
    let source = model_source();
    let folder = pollster::block_on(SafetensorsFolder::open(&source, "text_encoder")).unwrap();
    let folder = Checkpoint::Safetensors(folder);
    for precision in [Precision::F32, Precision::Q8, Precision::Q4] {
        for embedding in [EmbeddingMode::Resident, EmbeddingMode::Gathered] {
            let options = TextEncoderLoad {
                precision,
                embedding,
                max_part_bytes: None,
            };
            let enc = encoder(&source, options);
            let want = device_bytes(&folder, options.options(false), false);
            assert_eq!(bytes_of(&enc.text_encoder), want, "{options:?}");
            let cap = pollster::block_on(Captioner::load_with(&source, &cpu(), options)).unwrap();
            let want = device_bytes(&folder, options.options(true), true);
            let got = bytes_of(&cap.lm) + bytes_of(&cap.vision.model);
            assert_eq!(got, want, "{options:?} with the vision tower and lm_head");
            eprintln!("{options:?}: prompt encoder and captioner {got} bytes");
        }
    }
    // The gathered embedding is the only difference between the modes: 288 × 64 f32.
    let resident = TextEncoderLoad::default().options(false);
    let gathered = TextEncoderLoad::gathered(Precision::F32).options(false);
    assert_eq!(
        device_bytes(&folder, resident, false) - device_bytes(&folder, gathered, false),
        4 * 288 * 64
    );
}

/// The fixture model with one more file: a stored quantized copy at `path`.
struct WithCopy {
    base: qwen_layered_web::weights::DirSource,
    path: String,
    bytes: Vec<u8>,
}

impl WeightSource for WithCopy {
    async fn exists(&self, file: &str) -> Result<bool> {
        Ok(file == self.path || (file != WEIGHTS && self.base.exists(file).await?))
    }
    async fn size(&self, file: &str) -> Result<u64> {
        match file {
            f if f == self.path => Ok(self.bytes.len() as u64),
            WEIGHTS => Err(gone()),
            _ => self.base.size(file).await,
        }
    }
    async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        match file {
            f if f == self.path => {
                let (start, end) = (offset as usize, (offset + len) as usize);
                Ok(self.bytes[start..end.min(self.bytes.len())].to_vec())
            }
            WEIGHTS => Err(gone()),
            _ => self.base.read(file, offset, len).await,
        }
    }
}

/// What reading the removed checkpoint gives.
fn gone() -> qwen_layered_web::Error {
    qwen_layered_web::Error::Source {
        file: WEIGHTS.into(),
        reason: "removed: the stored copy replaces it".into(),
    }
}

/// Bytes of the checkpoint file read since the log was last taken.
fn checkpoint_bytes<S>(source: &Logged<S>) -> u64 {
    source
        .take()
        .iter()
        .filter(|r| r.0 == WEIGHTS)
        .map(|r| r.2)
        .sum()
}

/// A stored quantized copy of the text encoder (what the page writes on the first load,
/// `qwen-layered quantize --component text_encoder` natively) holds every tensor, its linear
/// weights quantized and the rest as stored (the 5-D patch convolution with its shape kept),
/// so it stands alone: with the checkpoint removed, the prompt encoder and the captioner
/// (vision tower, language model, `lm_head`) load from it exactly the layers quantized at load
/// from the checkpoint.
#[test]
fn a_stored_quantized_copy_stands_alone_and_gives_the_layers_quantized_at_load() {
    use qwen_layered_web::caption::{CaptionOptions, Captioner};
    use qwen_layered_web::model::text_encoder::{is_linear_weight, stored_quantized_layout};
    use qwen_layered_web::weights::{GgmlType, GgufFile, stored_copy_path, write_quantized};

    let base = model_source();
    let folder =
        pollster::block_on(SafetensorsFolder::open(&base, "text_encoder")).expect("headers");
    let image = image::open(common::fixtures_dir().join("caption/en_48x40/input.png"))
        .expect("picture")
        .to_rgba8();
    let caption_opts = CaptionOptions {
        max_new_tokens: 4,
        ..CaptionOptions::default()
    };
    let five_d: Vec<&str> = folder
        .keys()
        .filter(|k| folder.get(k).is_some_and(|e| e.shape.len() == 5))
        .collect();
    assert_eq!(five_d, ["visual.patch_embed.proj.weight"]);
    for (precision, ty) in [
        (Precision::Q8, GgmlType::Q8_0),
        (Precision::Q4, GgmlType::Q4_0),
    ] {
        let layout = stored_quantized_layout(&folder, precision, "test/tiny@1").expect("layout");
        let mut bytes = Vec::new();
        pollster::block_on(write_quantized(
            &base,
            &layout,
            None,
            async |b: &[u8]| {
                bytes.extend_from_slice(b);
                Ok(())
            },
            |_, _| {},
        ))
        .expect("written");
        let path = stored_copy_path("text_encoder", precision).expect("path");
        assert!(path.starts_with("text_encoder/qwen-layered-v2-"), "{path}");
        let with_copy = Logged {
            inner: WithCopy {
                base: model_source(),
                path: path.clone(),
                bytes,
            },
            reads: RefCell::new(Vec::new()),
        };
        let g = pollster::block_on(GgufFile::open(&with_copy, &path)).expect("copy");
        let (tensors, quantized) = layout.counts();
        assert_eq!((tensors, g.tensors().len()), (folder.len(), folder.len()));
        assert!(quantized >= 20, "{quantized}");
        for t in g.tensors() {
            let e = folder.get(&t.name).expect("a checkpoint key");
            assert_eq!(t.shape, e.shape, "{}", t.name);
            let linear = is_linear_weight(&t.name, &e.shape) && e.shape[1].is_multiple_of(32);
            assert_eq!(t.ggml_type == ty, linear, "{} is {:?}", t.name, t.ggml_type);
        }
        with_copy.take();

        let plain = Logged {
            inner: model_source(),
            reads: RefCell::new(Vec::new()),
        };
        let from_copy = encoder(&with_copy, TextEncoderLoad::gathered(precision));
        let at_load = encoder(&plain, TextEncoderLoad::gathered(precision));
        let reads = with_copy.take();
        assert!(reads.iter().any(|r| r.0 == path) && reads.iter().all(|r| r.0 != WEIGHTS));
        assert!(checkpoint_bytes(&plain) > 0);
        for (_, _, text, max_len) in prompts().into_iter().take(3) {
            let a = pollster::block_on(from_copy.encode_from(&with_copy, &text, max_len));
            let b = pollster::block_on(at_load.encode_from(&plain, &text, max_len));
            assert_eq!(
                read(a.expect("copy")),
                read(b.expect("at load")),
                "{precision:?} {text:?}"
            );
        }

        let options = TextEncoderLoad::gathered(precision);
        let cap_copy = pollster::block_on(Captioner::load_with(&with_copy, &cpu(), options))
            .expect("captioner from the copy");
        let cap_load = pollster::block_on(Captioner::load_with(&plain, &cpu(), options))
            .expect("captioner quantized at load");
        assert!(pollster::block_on(Captioner::available(&with_copy, precision)).unwrap());
        let go = std::ops::ControlFlow::Continue;
        let copy_ids = pollster::block_on(cap_copy.caption_from(
            &with_copy,
            &image,
            &caption_opts,
            |_| go(()),
        ))
        .expect("caption")
        .ids;
        let load_ids =
            pollster::block_on(cap_load.caption_from(&plain, &image, &caption_opts, |_| go(())))
                .expect("caption")
                .ids;
        assert_eq!(copy_ids, load_ids, "{precision:?}: caption tokens");
        assert_eq!(copy_ids.len(), 4);
        // The size check before loading counts the same from the copy's header.
        let copy = Checkpoint::Gguf(g);
        let checkpoint = Checkpoint::Safetensors(folder.clone());
        for vision in [false, true] {
            let o = options.options(vision);
            assert_eq!(
                device_bytes(&copy, o, vision),
                device_bytes(&checkpoint, o, vision)
            );
        }

        // Without the copy the checkpoint is needed: loading that precision reads it, and
        // fails here, where it is gone.
        let other = match precision {
            Precision::Q8 => Precision::Q4,
            _ => Precision::Q8,
        };
        let Err(err) = pollster::block_on(Captioner::load_with(
            &with_copy,
            &cpu(),
            TextEncoderLoad::gathered(other),
        )) else {
            panic!("loaded {other:?} with neither a copy in it nor the checkpoint");
        };
        assert!(err.to_string().contains("no weights found"), "{err}");
    }
}
