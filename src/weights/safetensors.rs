//! safetensors headers and index files: where each tensor of a diffusers folder lives.
//!
//! Only headers are read here (8 bytes of length, then the JSON header), never tensor data.
//! The header JSON is parsed and validated here ([`parse_header`]) with offsets and sizes in
//! `u64`, by the rules of the `safetensors` crate's `Metadata`, which holds them in `usize`: on
//! wasm32 that crate refuses every file over 4 GiB (the real checkpoint's ~5 GB shards) and every
//! tensor of 512 MiB or more (it counts bits: the text encoder's 152064 × 3584 embedding).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use safetensors::Dtype;
use serde::Deserialize;

use super::{WeightSource, read_json};
use crate::error::{Error, Result};

/// Where one tensor lives and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// The file that holds it, relative to the source root.
    pub file: String,
    /// Stored element type.
    pub dtype: Dtype,
    /// Stored shape.
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in `file`.
    pub offset: u64,
    /// Length of the data in bytes.
    pub len: u64,
}

/// The tensors of one model folder (e.g. `transformer/`), single-file or sharded.
#[derive(Debug, Clone)]
pub struct SafetensorsFolder {
    folder: String,
    files: Vec<String>,
    entries: BTreeMap<String, TensorEntry>,
}

/// `*.safetensors.index.json`: `{"metadata": {...}, "weight_map": {key: shard file}}`.
#[derive(Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

/// The weight file names diffusers and transformers write, in the order they are tried.
const STEMS: [&str; 2] = ["diffusion_pytorch_model", "model"];

impl SafetensorsFolder {
    /// Reads the index (if any) and every shard header of `folder` (`""` for the root).
    ///
    /// Looks for `{stem}.safetensors.index.json`, then `{stem}.safetensors`, for the stems
    /// `diffusion_pytorch_model` (diffusers) and `model` (transformers).
    pub async fn open(source: &impl WeightSource, folder: &str) -> Result<Self> {
        for stem in STEMS {
            let index = join(folder, &format!("{stem}.safetensors.index.json"));
            if source.exists(&index).await? {
                return Self::open_index(source, folder, &index).await;
            }
            let single = join(folder, &format!("{stem}.safetensors"));
            if source.exists(&single).await? {
                return Self::open_files(source, folder, &[single]).await;
            }
        }
        Err(Error::Source {
            file: join(folder, "*.safetensors"),
            reason: format!(
                "no weights found: looked for {}",
                STEMS
                    .iter()
                    .flat_map(|s| [
                        format!("{s}.safetensors.index.json"),
                        format!("{s}.safetensors")
                    ])
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }

    /// A sharded folder: the index names the shards; every key in the index must be in the
    /// shard it names, and every shard key must be in the index.
    pub async fn open_index(
        source: &impl WeightSource,
        folder: &str,
        index_file: &str,
    ) -> Result<Self> {
        let index: IndexFile = read_json(source, index_file).await?;
        let shards: BTreeSet<&String> = index.weight_map.values().collect();
        let shards: Vec<String> = shards.into_iter().map(|s| join(folder, s)).collect();
        let me = Self::open_files(source, folder, &shards).await?;
        for (key, shard) in &index.weight_map {
            let want = join(folder, shard);
            match me.entries.get(key) {
                Some(e) if e.file == want => {}
                Some(e) => {
                    return Err(Error::Weights {
                        key: key.clone(),
                        file: index_file.to_owned(),
                        reason: format!("the index says {want}, but it is in {}", e.file),
                    });
                }
                None => {
                    return Err(Error::Weights {
                        key: key.clone(),
                        file: want,
                        reason: format!("listed in {index_file} but not in the shard's header"),
                    });
                }
            }
        }
        if let Some((key, e)) = me
            .entries
            .iter()
            .find(|(k, _)| !index.weight_map.contains_key(*k))
        {
            return Err(Error::Weights {
                key: key.clone(),
                file: e.file.clone(),
                reason: format!("in the shard but not listed in {index_file}"),
            });
        }
        Ok(me)
    }

    /// The given safetensors files, as one folder (a key in two files is an error).
    pub async fn open_files(
        source: &impl WeightSource,
        folder: &str,
        files: &[String],
    ) -> Result<Self> {
        let mut entries = BTreeMap::new();
        for file in files {
            for (key, entry) in read_header(source, file).await? {
                if let Some(prev) = entries.get(&key) {
                    let prev: &TensorEntry = prev;
                    return Err(Error::Weights {
                        key,
                        file: file.clone(),
                        reason: format!("also present in {}", prev.file),
                    });
                }
                entries.insert(key, entry);
            }
        }
        Ok(Self {
            folder: folder.to_owned(),
            files: files.to_vec(),
            entries,
        })
    }

    /// The folder these weights came from.
    pub fn folder(&self) -> &str {
        &self.folder
    }

    /// The weight files read.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The entry for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&TensorEntry> {
        self.entries.get(key)
    }

    /// Every key, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the folder holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of values over all tensors (an f32 copy of the folder takes 4 bytes each).
    pub fn value_count(&self) -> u64 {
        self.entries
            .values()
            .map(|e| e.shape.iter().map(|&d| d as u64).product::<u64>())
            .sum()
    }
}

/// `folder/name`, or `name` for the root.
fn join(folder: &str, name: &str) -> String {
    let folder = folder.trim_end_matches('/');
    if folder.is_empty() {
        name.to_owned()
    } else {
        format!("{folder}/{name}")
    }
}

/// Reads one file's header: key → entry with absolute offsets.
async fn read_header(
    source: &impl WeightSource,
    file: &str,
) -> Result<HashMap<String, TensorEntry>> {
    let bad = |reason: String| Error::Source {
        file: file.to_owned(),
        reason,
    };
    let size = source.size(file).await?;
    let n_bytes = source.read(file, 0, 8).await?;
    let n = u64::from_le_bytes(
        n_bytes
            .as_slice()
            .try_into()
            .map_err(|_| bad("shorter than the 8-byte header length".into()))?,
    );
    if n > 100_000_000 || 8 + n > size {
        return Err(bad(format!(
            "header length {n} is impossible for a {size}-byte file"
        )));
    }
    let header = source.read(file, 8, n).await?;
    let data_start = 8 + n;
    let mut out = HashMap::new();
    for (key, info) in
        parse_header(&header).map_err(|e| bad(format!("not a safetensors header: {e}")))?
    {
        let entry = TensorEntry {
            file: file.to_owned(),
            dtype: info.dtype,
            shape: info.shape,
            offset: data_start + info.start,
            len: info.len,
        };
        if entry.offset + entry.len > size {
            return Err(Error::Weights {
                key,
                file: file.to_owned(),
                reason: format!(
                    "data {}..{} runs past the end of the file ({size} bytes)",
                    entry.offset,
                    entry.offset + entry.len
                ),
            });
        }
        out.insert(key, entry);
    }
    Ok(out)
}

/// One tensor of a header as stored: offsets relative to the end of the header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeaderTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    start: u64,
    len: u64,
}

/// A header entry as the file spells it, every number in `u64` whatever the platform.
#[derive(Deserialize)]
struct StoredInfo {
    dtype: Dtype,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// Parses and validates a safetensors header JSON (`__metadata__` skipped): every entry's
/// `data_offsets` must follow the previous one's without a gap (in offset order, from 0) and
/// span exactly its shape's values in its dtype. The rules of the `safetensors` crate's
/// `Metadata`, with sizes in `u64`/`u128` so that a header parses on wasm32 as natively; a
/// dimension over the platform's `usize` is refused by name.
fn parse_header(json: &[u8]) -> std::result::Result<Vec<(String, HeaderTensor)>, String> {
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let mut tensors = Vec::with_capacity(map.len());
    for (key, value) in map {
        if key == "__metadata__" {
            continue;
        }
        let info: StoredInfo =
            serde_json::from_value(value).map_err(|e| format!("tensor {key:?}: {e}"))?;
        tensors.push((key, info));
    }
    tensors.sort_by_key(|(_, info)| info.data_offsets);
    let mut at = 0u64;
    let mut out = Vec::with_capacity(tensors.len());
    for (key, info) in tensors {
        let (start, end) = info.data_offsets;
        if start != at || end < start {
            return Err(format!(
                "tensor {key:?}: data_offsets [{start}, {end}] do not follow the previous tensor's end {at}"
            ));
        }
        at = end;
        let overflow = || format!("tensor {key:?}: shape {:?} overflows", info.shape);
        let values = info
            .shape
            .iter()
            .try_fold(1u128, |n, &d| n.checked_mul(u128::from(d)))
            .ok_or_else(overflow)?;
        let bits = values
            .checked_mul(info.dtype.bitsize() as u128)
            .ok_or_else(overflow)?;
        if !bits.is_multiple_of(8) || bits / 8 != u128::from(end - start) {
            return Err(format!(
                "tensor {key:?}: {} bytes of data for {values} {:?} values of shape {:?}",
                end - start,
                info.dtype,
                info.shape
            ));
        }
        let shape = info
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| {
                format!(
                    "tensor {key:?}: shape {:?} has a dimension over this platform's {} bits",
                    info.shape,
                    usize::BITS
                )
            })?;
        out.push((
            key,
            HeaderTensor {
                dtype: info.dtype,
                shape,
                start,
                len: end - start,
            },
        ));
    }
    Ok(out)
}

/// Converts little-endian raw tensor bytes to f32 (bf16, f16 and f32 are accepted).
///
/// `key`/`file` only name the tensor in errors.
pub fn to_f32(bytes: &[u8], dtype: Dtype, key: &str, file: &str) -> Result<Vec<f32>> {
    let bad = |reason: String| Error::Weights {
        key: key.to_owned(),
        file: file.to_owned(),
        reason,
    };
    let width = match dtype {
        Dtype::BF16 | Dtype::F16 => 2,
        Dtype::F32 => 4,
        other => {
            return Err(bad(format!(
                "dtype {other:?} is not supported (bf16, f16 or f32 expected)"
            )));
        }
    };
    if !bytes.len().is_multiple_of(width) {
        return Err(bad(format!(
            "{} bytes is not a whole number of {dtype:?} values",
            bytes.len()
        )));
    }
    let mut out = vec![0f32; bytes.len() / width];
    widen_into(bytes, dtype, &mut out);
    Ok(out)
}

/// Decodes little-endian bf16, f16 or f32 `bytes` into `out` (`out.len()` values, exactly as
/// [`half`]'s `to_f32`), in a loop the compiler vectorises. Panics if `dtype` is another type
/// or the lengths disagree (callers check both).
#[inline]
pub(crate) fn widen_into(bytes: &[u8], dtype: Dtype, out: &mut [f32]) {
    assert_eq!(
        bytes.len(),
        out.len() * (dtype.bitsize() / 8),
        "{dtype:?} bytes for the values"
    );
    match dtype {
        Dtype::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        Dtype::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        other => panic!("widen_into: {other:?} is not a float type"),
    }
}

/// [`widen_into`] split over the CPU's threads natively (contiguous runs of values); one
/// thread on wasm or for small inputs.
pub(crate) fn widen_into_parallel(bytes: &[u8], dtype: Dtype, out: &mut [f32]) {
    widen_into_parts(bytes, dtype, out, super::par::worker_count(out.len()));
}

/// [`widen_into`] on `workers` threads natively.
pub(crate) fn widen_into_parts(bytes: &[u8], dtype: Dtype, out: &mut [f32], workers: usize) {
    let per = out.len().div_ceil(workers.max(1)).max(1);
    if workers <= 1 || per >= out.len() {
        return widen_into(bytes, dtype, out);
    }
    let parts = out
        .chunks_mut(per)
        .zip(bytes.chunks(per * (dtype.bitsize() / 8)))
        .collect();
    super::par::run_parts(parts, |(o, b)| widen_into(b, dtype, o));
}

/// `half::bf16::from_bits(i).to_f32()` without a branch: the bits moved up, a NaN quieted
/// (its top mantissa bit set) as `half` does.
#[inline]
fn bf16_bits_to_f32(i: u16) -> f32 {
    let w = u32::from(i) << 16;
    let quiet = if i & 0x7FFF > 0x7F80 { 0x0040_0000 } else { 0 };
    f32::from_bits(w | quiet)
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn converts_bf16_f16_f32_and_refuses_the_rest() {
        let bf: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(
            to_f32(&bf, Dtype::BF16, "k", "f").expect("bf16"),
            vec![1.5, -2.0]
        );
        let h: Vec<u8> = [0.25f32, 3.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(
            to_f32(&h, Dtype::F16, "k", "f").expect("f16"),
            vec![0.25, 3.0]
        );
        let f: Vec<u8> = [1e-3f32].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(to_f32(&f, Dtype::F32, "k", "f").expect("f32"), vec![1e-3]);
        let err = to_f32(&[0; 8], Dtype::I64, "a.weight", "x.safetensors")
            .expect_err("i64")
            .to_string();
        assert!(
            err.contains("a.weight") && err.contains("x.safetensors") && err.contains("I64"),
            "{err}"
        );
        assert!(
            to_f32(&[0; 3], Dtype::BF16, "k", "f").is_err(),
            "odd byte count"
        );
    }

    #[test]
    fn reads_headers_from_memory_and_rejects_truncated_files() {
        let data = [1u8, 2, 3, 4];
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![1], &data).expect("view");
        let bytes = safetensors::serialize([("w", view)], None).expect("serialize");
        let mut src = super::super::MemorySource::new();
        src.insert("m/model.safetensors", bytes.clone());
        let folder = pollster::block_on(SafetensorsFolder::open(&src, "m")).expect("open");
        let e = folder.get("w").expect("w");
        assert_eq!((e.shape.clone(), e.len), (vec![1], 4));
        assert_eq!(
            pollster::block_on(src.read("m/model.safetensors", e.offset, e.len)).expect("read"),
            data
        );
        src.insert("m/model.safetensors", bytes[..bytes.len() - 2].to_vec());
        let err = pollster::block_on(SafetensorsFolder::open(&src, "m"))
            .expect_err("truncated")
            .to_string();
        assert!(
            err.contains("\"w\"") && err.contains("past the end"),
            "{err}"
        );
        let err = pollster::block_on(SafetensorsFolder::open(&src, "nothing"))
            .expect_err("absent")
            .to_string();
        assert!(err.contains("no weights found"), "{err}");
    }

    #[test]
    fn headers_parse_as_the_safetensors_crate_validates_them() {
        // What the crate writes (and `__metadata__`) parses to the crate's own reading.
        let (a, b) = ([7u8; 12], [1u8; 6]);
        let views = [
            (
                "a",
                safetensors::tensor::TensorView::new(Dtype::F32, vec![3], &a).expect("a"),
            ),
            (
                "b",
                safetensors::tensor::TensorView::new(Dtype::BF16, vec![1, 3], &b).expect("b"),
            ),
        ];
        let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
        let bytes = safetensors::serialize(views, Some(meta)).expect("serialize");
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let crate_view = safetensors::SafeTensors::deserialize(&bytes).expect("crate");
        let mine = parse_header(&bytes[8..8 + n]).expect("parse");
        assert_eq!(mine.len(), 2);
        for (key, t) in &mine {
            let theirs = crate_view.tensor(key).expect("in the crate's reading");
            assert_eq!(
                (t.dtype, t.shape.as_slice()),
                (theirs.dtype(), theirs.shape())
            );
            assert_eq!(t.len as usize, theirs.data().len(), "{key}");
        }

        // What the crate refuses, refused with the tensor's name.
        let refused = |json: &str, says: &str| {
            let err = parse_header(json.as_bytes()).expect_err(json);
            assert!(err.contains(says), "{json}: {err}");
        };
        let t = |name: &str, shape: &str, from: u64, to: u64| {
            format!(r#""{name}":{{"dtype":"BF16","shape":{shape},"data_offsets":[{from},{to}]}}"#)
        };
        refused(
            &format!("{{{}}}", t("w", "[2,2]", 0, 6)),
            "\"w\": 6 bytes of data for 4 BF16",
        );
        refused(
            &format!("{{{},{}}}", t("a", "[2]", 0, 4), t("b", "[2]", 6, 10)),
            "\"b\": data_offsets [6, 10] do not follow",
        );
        refused(
            &format!("{{{},{}}}", t("a", "[2]", 0, 4), t("b", "[2]", 2, 6)),
            "\"b\": data_offsets [2, 6]",
        );
        refused(
            &format!("{{{}}}", t("w", "[1]", 2, 4)),
            "\"w\": data_offsets [2, 4]",
        );
        refused(
            r#"{"w":{"dtype":"Q9","shape":[1],"data_offsets":[0,2]}}"#,
            "tensor \"w\"",
        );
        refused(r#"{"w":{"dtype":"BF16","shape":[1]}}"#, "data_offsets");
        refused("[1, 2]", "invalid type");
        refused(
            &format!(
                "{{{}}}",
                t(
                    "w",
                    "[4294967296,4294967296,4294967296,4294967296,4294967296]",
                    0,
                    2
                )
            ),
            "overflows",
        );
        // Values that fit a u128 but whose bits do not (2^126 values of 16 bits).
        refused(
            &format!(
                "{{{}}}",
                t("w", "[9223372036854775808,9223372036854775808]", 0, 2)
            ),
            "overflows",
        );
    }

    /// The real checkpoint's sizes: a 1.09 GB bf16 embedding (152064 × 3584: 17.4 G bits, over
    /// a 32-bit count) and a ~5 GB shard (offsets past 4 GiB). The crate's `Metadata` refuses
    /// both on wasm32 (`tests/web.rs` reads the same header there); this reads both exactly.
    #[test]
    fn real_sized_tensors_and_offsets_past_4_gib_parse() {
        let big = 152_064u64 * 3584 * 2;
        let end = big + 4_000_000_000;
        let json = format!(
            r#"{{"embed":{{"dtype":"BF16","shape":[152064,3584],"data_offsets":[0,{big}]}},"next":{{"dtype":"F32","shape":[1000000000],"data_offsets":[{big},{end}]}}}}"#
        );
        let parsed = parse_header(json.as_bytes()).expect("parse");
        assert_eq!(parsed[0].1.shape, vec![152_064, 3584]);
        assert_eq!((parsed[1].1.start, parsed[1].1.len), (big, 4_000_000_000));
    }

    #[test]
    fn widening_equals_half_for_every_16_bit_pattern_on_any_split() {
        let patterns: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let mut out = vec![0f32; 1 << 16];
        widen_into_parallel(&patterns, Dtype::BF16, &mut out);
        for (i, v) in out.iter().enumerate() {
            let want = half::bf16::from_bits(i as u16).to_f32();
            assert_eq!(v.to_bits(), want.to_bits(), "bf16 {i:#06x}");
        }
        widen_into_parallel(&patterns, Dtype::F16, &mut out);
        for (i, v) in out.iter().enumerate() {
            let want = half::f16::from_bits(i as u16).to_f32();
            assert_eq!(v.to_bits(), want.to_bits(), "f16 {i:#06x}");
        }
        // An odd length over several workers, f32 (NaN payloads kept) included.
        let f32s: Vec<u8> = (0..1001u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .chain([0x7FC0_0001, 0xFF80_0000, 0x0000_0001])
            .flat_map(u32::to_le_bytes)
            .collect();
        for (dtype, bytes) in [
            (Dtype::BF16, &patterns[..2 * 1001]),
            (Dtype::F16, &patterns[1000..1000 + 2 * 999]),
            (Dtype::F32, &f32s[..]),
        ] {
            let n = bytes.len() / (dtype.bitsize() / 8);
            let mut one = vec![0f32; n];
            widen_into(bytes, dtype, &mut one);
            let one: Vec<u32> = one.iter().map(|v| v.to_bits()).collect();
            for workers in [2, 3, 7] {
                let mut split = vec![0f32; n];
                widen_into_parts(bytes, dtype, &mut split, workers);
                let split: Vec<u32> = split.iter().map(|v| v.to_bits()).collect();
                assert_eq!(split, one, "{dtype:?}, {workers} workers");
            }
        }
    }
}
