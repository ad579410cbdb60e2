//! A [`WeightSource`] whose one safetensors file is generated on the fly from a seed: full-size
//! random weights for benchmarks and precision checks without a download.
//!
//! The file is a valid safetensors file (8-byte header length, JSON header, data) in BF16, the
//! dtype of the real checkpoint, so models are built by the real loading code
//! ([`super::SafetensorsFolder`], [`super::TensorLoader`]) exactly as from disk. Nothing is held
//! in memory but the header: each value is a hash of (tensor seed, element index), so any byte
//! range can be produced on demand and the same seed always gives the same file.

use half::bf16;

use super::{WeightSource, checked_range};
use crate::error::{Error, Result};

/// How a synthetic tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform in `[-bound, bound)`: PyTorch's default `nn.Linear` init (weight and bias) has
    /// `bound = 1/sqrt(fan_in)`.
    Uniform {
        /// Half-width of the interval.
        bound: f32,
    },
    /// Every value the same (norm weights are initialised to 1).
    Constant(f32),
}

/// One tensor of a synthetic file.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticTensor {
    /// The checkpoint key.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// How its values are drawn.
    pub init: Init,
}

impl SyntheticTensor {
    /// Number of values.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// A `torch.nn.Linear` weight `[d_out, d_in]` as PyTorch initialises it.
    pub fn linear_weight(prefix: &str, d_in: usize, d_out: usize) -> Self {
        Self {
            name: format!("{prefix}.weight"),
            shape: vec![d_out, d_in],
            init: Init::Uniform {
                bound: 1.0 / (d_in as f32).sqrt(),
            },
        }
    }

    /// A `torch.nn.Linear` bias `[d_out]` as PyTorch initialises it.
    pub fn linear_bias(prefix: &str, d_in: usize, d_out: usize) -> Self {
        Self {
            name: format!("{prefix}.bias"),
            shape: vec![d_out],
            init: Init::Uniform {
                bound: 1.0 / (d_in as f32).sqrt(),
            },
        }
    }
}

/// The tensors of one `QwenImageTransformerBlock` (`{prefix}.img_mod.1`, `.attn.*`,
/// `.img_mlp.*`, the text twins) of width `heads · head_dim`, with PyTorch's default init
/// (linear layers uniform `±1/sqrt(fan_in)`, RMSNorm weights 1).
pub fn transformer_block_tensors(
    prefix: &str,
    heads: usize,
    head_dim: usize,
) -> Vec<SyntheticTensor> {
    let dim = heads * head_dim;
    let mut out = Vec::new();
    let mut linear = |name: &str, d_in: usize, d_out: usize| {
        let p = format!("{prefix}.{name}");
        out.push(SyntheticTensor::linear_weight(&p, d_in, d_out));
        out.push(SyntheticTensor::linear_bias(&p, d_in, d_out));
    };
    for stream in ["img", "txt"] {
        linear(&format!("{stream}_mod.1"), dim, 6 * dim);
        linear(&format!("{stream}_mlp.net.0.proj"), dim, 4 * dim);
        linear(&format!("{stream}_mlp.net.2"), 4 * dim, dim);
    }
    for name in [
        "to_q",
        "to_k",
        "to_v",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        "to_out.0",
        "to_add_out",
    ] {
        linear(&format!("attn.{name}"), dim, dim);
    }
    for norm in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"] {
        out.push(SyntheticTensor {
            name: format!("{prefix}.attn.{norm}.weight"),
            shape: vec![head_dim],
            init: Init::Constant(1.0),
        });
    }
    out
}

/// Where one tensor's BF16 data lies in the file.
#[derive(Debug, Clone)]
struct Placed {
    tensor: SyntheticTensor,
    /// Absolute byte offset of its data.
    start: u64,
    /// Per-tensor seed (file seed mixed with the tensor's position).
    seed: u64,
}

impl Placed {
    fn end(&self) -> u64 {
        self.start + self.tensor.numel() as u64 * 2
    }
}

/// One generated safetensors file of BF16 tensors.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    file: String,
    /// The 8-byte length prefix and the JSON header (padded with spaces to 8 bytes).
    header: Vec<u8>,
    placed: Vec<Placed>,
    size: u64,
}

/// SplitMix64's finaliser: a good 64-bit mix of a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SyntheticSource {
    /// A source holding one file `file` (e.g. `transformer/diffusion_pytorch_model.safetensors`)
    /// with `tensors` in that order, drawn from `seed`.
    pub fn new(file: impl Into<String>, tensors: Vec<SyntheticTensor>, seed: u64) -> Result<Self> {
        let file = file.into();
        let mut meta = serde_json::Map::new();
        let mut placed = Vec::with_capacity(tensors.len());
        let mut at = 0u64;
        for (i, tensor) in tensors.into_iter().enumerate() {
            let len = tensor.numel() as u64 * 2;
            if meta.contains_key(&tensor.name) {
                return Err(Error::Source {
                    file,
                    reason: format!("synthetic tensor {:?} listed twice", tensor.name),
                });
            }
            meta.insert(
                tensor.name.clone(),
                serde_json::json!({
                    "dtype": "BF16",
                    "shape": tensor.shape,
                    "data_offsets": [at, at + len],
                }),
            );
            placed.push(Placed {
                tensor,
                start: at,
                seed: mix(seed ^ mix(i as u64)),
            });
            at += len;
        }
        let mut json =
            serde_json::to_vec(&serde_json::Value::Object(meta)).map_err(|e| Error::Source {
                file: file.clone(),
                reason: format!("synthetic header: {e}"),
            })?;
        while json.len() % 8 != 0 {
            json.push(b' ');
        }
        let mut header = (json.len() as u64).to_le_bytes().to_vec();
        header.extend_from_slice(&json);
        let base = header.len() as u64;
        for p in &mut placed {
            p.start += base;
        }
        Ok(Self {
            file,
            size: base + at,
            header,
            placed,
        })
    }

    /// The file's name in the source.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether the file has no bytes (never: it has at least a header).
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The BF16 value of element `index` of a tensor.
    fn value(init: Init, seed: u64, index: u64) -> bf16 {
        match init {
            Init::Constant(c) => bf16::from_f32(c),
            Init::Uniform { bound } => {
                let u = (mix(seed ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93)) >> 40) as f32
                    / (1u64 << 24) as f32; // [0, 1)
                bf16::from_f32((2.0 * u - 1.0) * bound)
            }
        }
    }

    /// Writes bytes `offset .. offset + out.len()` of the file into `out`.
    fn fill(&self, offset: u64, out: &mut [u8]) {
        let end = offset + out.len() as u64;
        let h = self.header.len() as u64;
        if offset < h {
            let n = (h.min(end) - offset) as usize;
            out[..n].copy_from_slice(&self.header[offset as usize..offset as usize + n]);
        }
        // Tensors are contiguous and sorted by offset: start at the first one ending after `offset`.
        let first = self.placed.partition_point(|p| p.end() <= offset);
        for p in &self.placed[first..] {
            if p.start >= end {
                break;
            }
            let (lo, hi) = (offset.max(p.start), end.min(p.end()));
            // The elements covering [lo, hi), then the wanted bytes of them.
            let (e0, e1) = ((lo - p.start) / 2, (hi - p.start).div_ceil(2));
            let at = (lo - offset) as usize;
            if (lo - p.start).is_multiple_of(2) && (hi - p.start).is_multiple_of(2) {
                // Whole elements (what the loader asks for): two bytes each.
                let dst = &mut out[at..at + (hi - lo) as usize];
                for (e, pair) in (e0..e1).zip(dst.chunks_exact_mut(2)) {
                    pair.copy_from_slice(&Self::value(p.tensor.init, p.seed, e).to_le_bytes());
                }
                continue;
            }
            let mut at = at;
            for e in e0..e1 {
                let bytes = Self::value(p.tensor.init, p.seed, e).to_le_bytes();
                for (k, byte) in bytes.iter().enumerate() {
                    let pos = p.start + 2 * e + k as u64;
                    if pos >= lo && pos < hi {
                        out[at] = *byte;
                        at += 1;
                    }
                }
            }
        }
    }

    fn check(&self, file: &str) -> Result<()> {
        if file == self.file {
            Ok(())
        } else {
            Err(Error::Source {
                file: file.to_owned(),
                reason: format!("the synthetic source holds only {:?}", self.file),
            })
        }
    }
}

impl WeightSource for SyntheticSource {
    async fn exists(&self, file: &str) -> Result<bool> {
        Ok(file == self.file)
    }

    async fn size(&self, file: &str) -> Result<u64> {
        self.check(file)?;
        Ok(self.size)
    }

    async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.check(file)?;
        let range = checked_range(file, offset, len, self.size)?;
        let mut out = vec![0u8; range.len()];
        self.fill(offset, &mut out);
        Ok(out)
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::weights::{SafetensorsFolder, to_f32};
    use safetensors::Dtype;

    fn small(seed: u64) -> SyntheticSource {
        SyntheticSource::new(
            "m/model.safetensors",
            vec![
                SyntheticTensor::linear_weight("a", 8, 3),
                SyntheticTensor::linear_bias("a", 8, 3),
                SyntheticTensor {
                    name: "n.weight".into(),
                    shape: vec![5],
                    init: Init::Constant(1.0),
                },
            ],
            seed,
        )
        .unwrap()
    }

    fn whole(src: &SyntheticSource) -> Vec<u8> {
        pollster::block_on(src.read_all(src.file())).unwrap()
    }

    #[test]
    fn the_file_parses_as_safetensors_and_values_follow_the_init() {
        let src = small(7);
        let bytes = whole(&src);
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("a valid safetensors file");
        let w = st.tensor("a.weight").unwrap();
        assert_eq!((w.dtype(), w.shape()), (Dtype::BF16, &[3, 8][..]));
        let values = to_f32(w.data(), Dtype::BF16, "a.weight", "m").unwrap();
        let bound = 1.0 / 8f32.sqrt();
        assert!(values.iter().all(|v| v.abs() <= bound * 1.01), "{values:?}");
        assert!(values.iter().any(|v| *v > 0.0) && values.iter().any(|v| *v < 0.0));
        let n = to_f32(st.tensor("n.weight").unwrap().data(), Dtype::BF16, "n", "m").unwrap();
        assert_eq!(n, vec![1.0; 5]);
        let folder = pollster::block_on(SafetensorsFolder::open(&src, "m")).unwrap();
        assert_eq!(folder.keys().count(), 3);
    }

    #[test]
    fn any_byte_range_equals_the_same_bytes_of_the_whole_file() {
        let src = small(7);
        let all = whole(&src);
        for offset in [0u64, 3, 7, 8, 50, all.len() as u64 - 9] {
            for len in [1u64, 2, 3, 9] {
                let part = pollster::block_on(src.read(src.file(), offset, len)).unwrap();
                assert_eq!(part, &all[offset as usize..(offset + len) as usize]);
            }
        }
        assert!(pollster::block_on(src.read(src.file(), all.len() as u64, 1)).is_err());
        assert!(pollster::block_on(src.read("other", 0, 1)).is_err());
        let other = whole(&small(8));
        assert_eq!(all.len(), other.len());
        assert_ne!(all, other, "another seed gives other values");
        assert_eq!(all, whole(&small(7)), "the same seed gives the same file");
    }
}
