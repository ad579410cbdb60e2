//! A deterministic fuzz harness for the parsers that read untrusted files: GGUF headers (and
//! the dequantization of whatever tensors a mutated header describes), safetensors headers,
//! sharded `*.safetensors.index.json` files, and the `config.json` files of the transformer,
//! the VAE and the scheduler.
//!
//! Inputs are the committed fixtures mutated by a seeded generator (bit flips, byte and
//! integer overwrites with boundary values, inserts, deletes, duplications, truncation,
//! splices). Every input must give `Ok` or `Err`: a panic fails the test and names the seed
//! and the iteration; an input that allocates more than [`ALLOC_LIMIT`] (counted by this test
//! binary's global allocator) fails it; an input that runs longer than [`TIME_LIMIT`] aborts
//! the process from a watchdog thread, naming the input.
//!
//! `cargo test --test fuzz_parsers` runs a short pass (2 000 inputs per target, seconds). A
//! long run: `FUZZ_ITERS=200000 FUZZ_SEED=7 cargo test --test fuzz_parsers -- --nocapture`.
//! A failing input is written to `$TMPDIR/fuzz-<target>-<seed>-<iteration>.bin`.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::fixtures_dir;
use qwen_layered_web::model::transformer::QwenImageTransformerConfig;
use qwen_layered_web::model::vae::AutoencoderKLQwenImageConfig;
use qwen_layered_web::pipeline::FlowMatchEulerDiscreteConfig;
use qwen_layered_web::weights::gguf::dequantize;
use qwen_layered_web::weights::{GgufFile, MemorySource, SafetensorsFolder, read_json};

/// Most bytes live at once beyond the baseline while one input is parsed.
const ALLOC_LIMIT: usize = 256 << 20;
/// Longest time for one input (debug build, shared CPU).
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// Counts live and peak heap bytes of the whole test binary.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Boundary values written over integers.
const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    3,
    9,
    31,
    32,
    255,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    1 << 32,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];

/// One mutation of `input`; positions fall in the first `focus` bytes 3 times out of 4 (the
/// header, where the parsers look).
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, focus: usize, other: &[u8]) {
    let pos = |rng: &mut Rng, len: usize| {
        if rng.below(4) < 3 {
            rng.below(len.min(focus.max(1)))
        } else {
            rng.below(len)
        }
    };
    let len = input.len();
    match rng.below(9) {
        0 if len > 0 => {
            let p = pos(rng, len);
            input[p] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let p = pos(rng, len);
            input[p] = [0, 0xFF, 0x7F, 0x80, b'"', b'{', b'[', b'9'][rng.below(8)];
        }
        2 if len >= 8 => {
            let p = pos(rng, len - 7);
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let v = if rng.below(2) == 0 {
                v
            } else {
                v.wrapping_add(rng.below(3) as u64).wrapping_sub(1)
            };
            if rng.below(2) == 0 {
                input[p..p + 8].copy_from_slice(&v.to_le_bytes());
            } else {
                input[p..p + 4].copy_from_slice(&(v as u32).to_le_bytes());
            }
        }
        3 => {
            let p = pos(rng, len + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            input.splice(p..p, bytes);
        }
        4 if len > 0 => {
            let p = pos(rng, len);
            let n = (1 + rng.below(64)).min(len - p);
            input.drain(p..p + n);
        }
        5 if len > 0 => {
            let p = pos(rng, len);
            let n = (1 + rng.below(64)).min(len - p);
            let copy = input[p..p + n].to_vec();
            let q = pos(rng, len);
            input.splice(q..q, copy);
        }
        6 if len > 0 => input.truncate(pos(rng, len)),
        7 if !other.is_empty() => {
            let p = pos(rng, len + 1);
            let a = rng.below(other.len());
            let n = (1 + rng.below(256)).min(other.len() - a);
            input.splice(p..p, other[a..a + n].iter().copied());
        }
        _ if len > 0 => {
            let p = pos(rng, len);
            input[p] = rng.next() as u8;
        }
        _ => input.push(rng.next() as u8),
    }
}

/// Parses one GGUF input: the header, then every tensor the header places in the file.
fn gguf_target(bytes: &[u8]) -> bool {
    let mut src = MemorySource::new();
    src.insert("f.gguf", bytes.to_vec());
    if let Ok(g) = pollster::block_on(GgufFile::open(&src, "f.gguf")) {
        for t in g.tensors().iter().take(16) {
            if t.len <= 1 << 20 {
                let data = &bytes[t.offset as usize..(t.offset + t.len) as usize];
                let _ = dequantize(t.ggml_type, data, t.numel());
            }
        }
        for (_, v) in g.metadata() {
            let _ = v.to_string();
        }
        return true;
    }
    false
}

fn safetensors_target(bytes: &[u8]) -> bool {
    let mut src = MemorySource::new();
    src.insert("model.safetensors", bytes.to_vec());
    pollster::block_on(SafetensorsFolder::open(&src, "")).is_ok()
}

/// The index is mutated; its two shards are intact.
fn index_target(bytes: &[u8], shards: &[(String, Vec<u8>)]) -> bool {
    let mut src = MemorySource::new();
    src.insert("model.safetensors.index.json", bytes.to_vec());
    for (name, b) in shards {
        src.insert(name.clone(), b.clone());
    }
    pollster::block_on(SafetensorsFolder::open(&src, "")).is_ok()
}

fn config_target(bytes: &[u8]) -> bool {
    let mut src = MemorySource::new();
    src.insert("config.json", bytes.to_vec());
    let mut ok = false;
    if let Ok(c) = pollster::block_on(read_json::<QwenImageTransformerConfig>(&src, "config.json"))
    {
        ok |= c.validate("config.json").is_ok();
    }
    if let Ok(c) = pollster::block_on(read_json::<AutoencoderKLQwenImageConfig>(
        &src,
        "config.json",
    )) {
        ok |= c.validate("config.json").is_ok();
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        ok |= FlowMatchEulerDiscreteConfig::from_json_str(text).is_ok();
    }
    ok
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Two shards and their index, made from the tiny transformer's tensors.
fn sharded() -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    use safetensors::SafeTensors;
    use safetensors::tensor::TensorView;
    let bytes = read("model/transformer/diffusion_pytorch_model.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    names.truncate(6);
    let mut map = serde_json::Map::new();
    let mut shards = Vec::new();
    for (i, part) in names.chunks(3).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).expect("tensor")))
            .collect();
        for n in part {
            map.insert(n.clone(), file.clone().into());
        }
        shards.push((
            file,
            safetensors::serialize(views, None).expect("serialize"),
        ));
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    (serde_json::to_vec_pretty(&index).expect("json"), shards)
}

/// Runs `target` on `iters` mutants of the corpus; returns the number of executions.
fn fuzz(
    name: &str,
    corpus: &[Vec<u8>],
    focus: usize,
    iters: usize,
    seed: u64,
    target: &dyn Fn(&[u8]) -> bool,
) -> usize {
    let started = Instant::now();
    let current = std::sync::Arc::new(AtomicU64::new(u64::MAX));
    let deadline_ms = std::sync::Arc::new(AtomicU64::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (current, deadline_ms, done, name) = (
            current.clone(),
            deadline_ms.clone(),
            done.clone(),
            name.to_owned(),
        );
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let d = deadline_ms.load(Ordering::Relaxed);
                if d != 0 && started.elapsed().as_millis() as u64 > d {
                    eprintln!(
                        "fuzz {name}: input {} (seed {seed}) ran over {TIME_LIMIT:?}",
                        current.load(Ordering::Relaxed)
                    );
                    std::process::abort();
                }
            }
        })
    };
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let (mut accepted, mut max_peak) = (0usize, 0usize);
    for i in 0..iters {
        let pick = rng.below(corpus.len());
        let mut input = corpus[pick].clone();
        let other = &corpus[rng.below(corpus.len())];
        for _ in 0..1 + rng.below(8) {
            mutate(&mut rng, &mut input, focus, other);
        }
        current.store(i as u64, Ordering::Relaxed);
        deadline_ms.store(
            (started.elapsed() + TIME_LIMIT).as_millis() as u64,
            Ordering::Relaxed,
        );
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        max_peak = max_peak.max(peak);
        accepted += usize::from(matches!(outcome, Ok(true)));
        if outcome.is_err() || peak > ALLOC_LIMIT {
            let path = std::env::temp_dir().join(format!("fuzz-{name}-{seed}-{i}.bin"));
            let _ = std::fs::write(&path, &input);
            let _ = std::panic::take_hook();
            panic!(
                "fuzz {name}: input {i} (seed {seed}, {} bytes, saved to {}) {}",
                input.len(),
                path.display(),
                if outcome.is_err() {
                    "panicked".to_owned()
                } else {
                    format!("allocated {peak} bytes")
                }
            );
        }
    }
    deadline_ms.store(0, Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    watchdog.join().expect("watchdog");
    eprintln!(
        "fuzz {name}: {iters} inputs in {:.1} s (seed {seed}), {accepted} accepted, the others \
         refused with an error; largest allocation peak {max_peak} bytes",
        started.elapsed().as_secs_f64()
    );
    iters
}

#[test]
fn parsers_survive_mutated_inputs() {
    let iters: usize = std::env::var("FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // Panics are caught and reported with the input; keep the default hook quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let gguf = vec![read("gguf/types.gguf"), read("gguf/transformer-Q4_0.gguf")];
    let st = vec![
        read("model/transformer/diffusion_pytorch_model.safetensors"),
        read("a_lin_cfgnorm_l3_s3_64/record.safetensors"),
    ];
    let (index, shards) = sharded();
    let configs = vec![
        read("model/transformer/config.json"),
        read("model/vae/config.json"),
        read("model/scheduler/scheduler_config.json"),
    ];
    let mut total = 0;
    total += fuzz("gguf", &gguf, 8192, iters, seed, &gguf_target);
    total += fuzz("safetensors", &st, 4096, iters, seed, &safetensors_target);
    total += fuzz("index", &[index], 1 << 20, iters, seed, &|b| {
        index_target(b, &shards)
    });
    total += fuzz("config", &configs, 1 << 20, iters, seed, &config_target);
    let _ = std::panic::take_hook();
    eprintln!("fuzz: {total} executions in all");
    assert_eq!(total, 4 * iters);
}
