//! GGUF (versions 2 and 3): the header, every metadata value type, tensor infos, and
//! dequantization of the common ggml tensor types to f32.
//!
//! The file is read through [`WeightSource::read`] only: the header is fetched in growing
//! prefixes (1 MiB, then ×4, at most [`MAX_HEADER_BYTES`]) and parsed from memory; tensor data
//! is read one tensor at a time by the loader. Every count, length, dimension and offset is
//! checked against the file size and fixed limits before anything is allocated, so a hostile
//! file gives an [`Error`], never a panic or an allocation out of proportion to its size.
//!
//! Layout (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>): magic `GGUF`, `u32`
//! version, `u64` tensor count, `u64` metadata count, the metadata key/values, the tensor
//! infos (name, `u32` n_dims, `u64` dims innermost first, `u32` ggml type, `u64` offset into
//! the data section), padding to `general.alignment` (32 by default), then the data section.
//! All little-endian. Shapes are presented here in PyTorch order (outermost first).

use std::collections::HashMap;

use half::{bf16, f16};

use super::WeightSource;
use crate::error::{Error, Result};

/// The header is read in prefixes of at most this many bytes (tokenizer vocabularies of LLM
/// GGUFs are a few MB; diffusion-model headers a few hundred KB).
pub const MAX_HEADER_BYTES: u64 = 64 << 20;
/// At most this many tensors or metadata entries.
pub const MAX_COUNT: u64 = 1 << 20;
/// Longest key or tensor name.
pub const MAX_NAME_LEN: u64 = 64 << 10;
/// Longest string value.
pub const MAX_STRING_LEN: u64 = 16 << 20;
/// Deepest array nesting (arrays of arrays of ...).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// Prefix of the metadata key that gives a tensor's shape when it has more dimensions than
/// GGUF holds: `qwen_layered.shape.{name}` = `u64` array, outermost first. Our stored copies
/// ([`super::write_quantized`]) write such a tensor with its outer dimensions merged (the
/// bytes are the same, row major), and the reader reports the recorded shape.
pub const SHAPE_KEY: &str = "qwen_layered.shape.";
/// Largest accepted `general.alignment`.
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// The alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// ggml tensor types by their GGUF code. All are recognised (names and sizes, for listing);
/// [`GgmlType::can_dequantize`] says which ones [`dequantize`] reads.
#[allow(non_camel_case_types, missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

impl GgmlType {
    /// The type of GGUF code `code`, or `None` for codes this reader does not know (including
    /// the removed Q4_2/Q4_3 and repacked Q4_0_4_4-style codes).
    pub fn from_code(code: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match code {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            _ => return None,
        })
    }

    /// `(values per block, bytes per block)`, as ggml's `type_traits` (gguf-py
    /// `GGML_QUANT_SIZES`).
    pub fn block(self) -> (u64, u64) {
        use GgmlType::*;
        const K: u64 = 256;
        match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            I64 | F64 => (1, 8),
            Q4_0 | IQ4_NL => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 40),
            MXFP4 => (32, 17),
            Q2_K => (K, 2 + 2 + K / 16 + K / 4),
            Q3_K => (K, 2 + K / 4 + K / 8 + 12),
            Q4_K => (K, 2 + 2 + K / 2 + 12),
            Q5_K => (K, 2 + 2 + K / 2 + K / 8 + 12),
            Q6_K => (K, 2 + K / 2 + K / 4 + K / 16),
            Q8_K => (K, 4 + K + K / 8),
            IQ2_XXS => (K, 2 + K / 4),
            IQ2_XS => (K, 2 + K / 4 + K / 32),
            IQ3_XXS => (K, 2 + K / 4 + K / 8),
            IQ1_S => (K, 2 + K / 8 + K / 16),
            IQ3_S => (K, 2 + K / 4 + K / 8 + K / 32 + 4),
            IQ2_S => (K, 2 + K / 4 + K / 16),
            IQ4_XS => (K, 2 + 2 + K / 2 + K / 64),
            IQ1_M => (K, K / 8 + K / 16 + K / 32),
            TQ1_0 => (K, 2 + 4 * 13),
            TQ2_0 => (K, 2 + 64),
        }
    }

    /// The name ggml and gguf-py use (`"Q4_K"`, `"BF16"`, ...).
    pub fn name(self) -> String {
        format!("{self:?}")
    }

    /// Whether [`dequantize`] reads this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K
        )
    }

    /// Bytes taken by `n` values (an error if `n` is not a whole number of blocks or the size
    /// overflows).
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (values, bytes) = self.block();
        if !n.is_multiple_of(values) {
            return None;
        }
        (n / values).checked_mul(bytes)
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: one element type, stored compactly.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetaArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetaArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GGUF name of the element type.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaArray::U8(_) => "u8",
            MetaArray::I8(_) => "i8",
            MetaArray::U16(_) => "u16",
            MetaArray::I16(_) => "i16",
            MetaArray::U32(_) => "u32",
            MetaArray::I32(_) => "i32",
            MetaArray::F32(_) => "f32",
            MetaArray::Bool(_) => "bool",
            MetaArray::String(_) => "string",
            MetaArray::Array(_) => "array",
            MetaArray::U64(_) => "u64",
            MetaArray::I64(_) => "i64",
            MetaArray::F64(_) => "f64",
        }
    }
}

impl std::fmt::Display for MetaValue {
    /// Scalars as they are, strings quoted (at most 200 characters), arrays as their element
    /// type and length plus the first few elements.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn quoted(s: &str) -> String {
            let cut: String = s.chars().take(200).collect();
            let more = if cut.len() < s.len() { "…" } else { "" };
            format!("{cut:?}{more}")
        }
        fn head<T: std::fmt::Debug>(v: &[T]) -> String {
            let shown: Vec<String> = v.iter().take(8).map(|x| format!("{x:?}")).collect();
            let more = if v.len() > 8 { ", …" } else { "" };
            format!("[{}{more}]", shown.join(", "))
        }
        match self {
            MetaValue::U8(v) => write!(f, "{v}"),
            MetaValue::I8(v) => write!(f, "{v}"),
            MetaValue::U16(v) => write!(f, "{v}"),
            MetaValue::I16(v) => write!(f, "{v}"),
            MetaValue::U32(v) => write!(f, "{v}"),
            MetaValue::I32(v) => write!(f, "{v}"),
            MetaValue::F32(v) => write!(f, "{v}"),
            MetaValue::Bool(v) => write!(f, "{v}"),
            MetaValue::String(s) => write!(f, "{}", quoted(s)),
            MetaValue::U64(v) => write!(f, "{v}"),
            MetaValue::I64(v) => write!(f, "{v}"),
            MetaValue::F64(v) => write!(f, "{v}"),
            MetaValue::Array(a) => {
                let items = match a {
                    MetaArray::U8(v) => head(v),
                    MetaArray::I8(v) => head(v),
                    MetaArray::U16(v) => head(v),
                    MetaArray::I16(v) => head(v),
                    MetaArray::U32(v) => head(v),
                    MetaArray::I32(v) => head(v),
                    MetaArray::F32(v) => head(v),
                    MetaArray::Bool(v) => head(v),
                    MetaArray::String(v) => head(v),
                    MetaArray::U64(v) => head(v),
                    MetaArray::I64(v) => head(v),
                    MetaArray::F64(v) => head(v),
                    MetaArray::Array(v) => {
                        let shown: Vec<String> = v
                            .iter()
                            .take(8)
                            .map(|x| format!("{}[{}]", x.type_name(), x.len()))
                            .collect();
                        format!("[{}]", shown.join(", "))
                    }
                };
                write!(f, "{}[{}] {items}", a.type_name(), a.len())
            }
        }
    }
}

/// One tensor of a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensor {
    /// The tensor's name (for diffusion models converted by ComfyUI-GGUF: the diffusers key).
    pub name: String,
    /// Stored type.
    pub ggml_type: GgmlType,
    /// Shape in PyTorch order (outermost first): GGUF's `ne` reversed.
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Length of the data in bytes.
    pub len: u64,
}

impl GgufTensor {
    /// Number of values.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed GGUF header: metadata and tensor infos, with absolute data offsets.
#[derive(Debug, Clone)]
pub struct GgufFile {
    file: String,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<GgufTensor>,
    by_name: HashMap<String, usize>,
}

impl GgufFile {
    /// Reads and checks the header of `file` (never its tensor data).
    pub async fn open(source: &impl WeightSource, file: &str) -> Result<Self> {
        let size = source.size(file).await?;
        let mut want = size.min(1 << 20);
        loop {
            let prefix = source.read(file, 0, want).await?;
            match parse_header(&prefix, size) {
                Ok(mut me) => {
                    me.file = file.to_owned();
                    return Ok(me);
                }
                Err(Parse::Bad(reason)) => {
                    return Err(Error::Source {
                        file: file.to_owned(),
                        reason: format!("not a valid GGUF file: {reason}"),
                    });
                }
                Err(Parse::NeedMore) if want < size && want < MAX_HEADER_BYTES => {
                    want = (want * 4).min(size).min(MAX_HEADER_BYTES);
                }
                Err(Parse::NeedMore) => {
                    let reason = if want == size {
                        format!("the header runs past the end of the file ({size} bytes)")
                    } else {
                        format!("the header is longer than the {MAX_HEADER_BYTES}-byte limit")
                    };
                    return Err(Error::Source {
                        file: file.to_owned(),
                        reason: format!("not a valid GGUF file: {reason}"),
                    });
                }
            }
        }
    }

    /// Parses a header from the first bytes of a file of `file_size` bytes (`bytes` may be the
    /// whole file). For tests and fuzzing; [`open`](Self::open) reads through a source.
    pub fn parse(bytes: &[u8], file_size: u64) -> Result<Self> {
        parse_header(bytes, file_size).map_err(|e| Error::Source {
            file: "<bytes>".into(),
            reason: match e {
                Parse::Bad(r) => format!("not a valid GGUF file: {r}"),
                Parse::NeedMore => "not a valid GGUF file: truncated header".into(),
            },
        })
    }

    /// The file this header was read from.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, 32 when absent).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Every metadata entry, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// The metadata value of `key`.
    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        match self.meta("general.architecture") {
            Some(MetaValue::String(s)) => Some(s),
            _ => None,
        }
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&GgufTensor> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Reads `name`'s bytes and dequantizes them to f32, row-major in PyTorch order.
    pub async fn read_f32(&self, source: &impl WeightSource, name: &str) -> Result<Vec<f32>> {
        let t = self.get(name).ok_or_else(|| Error::Weights {
            key: name.to_owned(),
            file: self.file.clone(),
            reason: "no such tensor in the GGUF file".into(),
        })?;
        let bytes = source.read(&self.file, t.offset, t.len).await?;
        dequantize(t.ggml_type, &bytes, t.numel()).map_err(|reason| Error::Weights {
            key: name.to_owned(),
            file: self.file.clone(),
            reason,
        })
    }
}

/// Why a header prefix did not parse.
enum Parse {
    /// The prefix ended before the header did (read more of the file).
    NeedMore,
    /// The header is wrong; the reason in words.
    Bad(String),
}

type P<T> = std::result::Result<T, Parse>;

fn bad<T>(reason: impl Into<String>) -> P<T> {
    Err(Parse::Bad(reason.into()))
}

/// A cursor over a header prefix, knowing the full file size.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    file_size: u64,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> P<&'a [u8]> {
        let end = (self.pos as u64).checked_add(n);
        match end {
            Some(end) if end > self.file_size => bad(format!(
                "{what} at byte {} ({n} bytes) runs past the end of the file ({} bytes)",
                self.pos, self.file_size
            )),
            Some(end) if end <= self.bytes.len() as u64 => {
                let start = self.pos;
                self.pos = end as usize;
                Ok(&self.bytes[start..end as usize])
            }
            Some(_) => Err(Parse::NeedMore),
            None => bad(format!("{what}: length {n} overflows")),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> P<[u8; N]> {
        let b = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> P<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> P<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Bytes left in the file after the cursor.
    fn left(&self) -> u64 {
        self.file_size.saturating_sub(self.pos as u64)
    }

    /// A length-prefixed string of at most `limit` bytes.
    fn string_bytes(&mut self, limit: u64, what: &str) -> P<&'a [u8]> {
        let n = self.u64(what)?;
        if n > limit {
            return bad(format!(
                "{what}: length {n} is over the limit of {limit} bytes"
            ));
        }
        self.take(n, what)
    }

    fn name(&mut self, what: &str) -> P<String> {
        let b = self.string_bytes(MAX_NAME_LEN, what)?;
        String::from_utf8(b.to_vec()).or_else(|_| bad(format!("{what} is not UTF-8")))
    }

    fn string(&mut self, what: &str) -> P<String> {
        let b = self.string_bytes(MAX_STRING_LEN, what)?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    /// A count of elements each taking at least `min_bytes` in the file.
    fn count(&mut self, min_bytes: u64, what: &str) -> P<u64> {
        let n = self.u64(what)?;
        let fits = n
            .checked_mul(min_bytes)
            .is_some_and(|need| need <= self.left());
        if !fits {
            return bad(format!(
                "{what} {n} cannot fit in the {} bytes left in the file",
                self.left()
            ));
        }
        Ok(n)
    }
}

/// Smallest encoded size of one value of GGUF value type `ty`.
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

fn read_scalar(c: &mut Cursor, ty: u32, what: &str) -> P<MetaValue> {
    Ok(match ty {
        0 => MetaValue::U8(c.array::<1>(what)?[0]),
        1 => MetaValue::I8(c.array::<1>(what)?[0] as i8),
        2 => MetaValue::U16(u16::from_le_bytes(c.array(what)?)),
        3 => MetaValue::I16(i16::from_le_bytes(c.array(what)?)),
        4 => MetaValue::U32(c.u32(what)?),
        5 => MetaValue::I32(i32::from_le_bytes(c.array(what)?)),
        6 => MetaValue::F32(f32::from_le_bytes(c.array(what)?)),
        7 => match c.array::<1>(what)?[0] {
            0 => MetaValue::Bool(false),
            1 => MetaValue::Bool(true),
            b => return bad(format!("{what}: bool byte {b} is neither 0 nor 1")),
        },
        8 => MetaValue::String(c.string(what)?),
        10 => MetaValue::U64(c.u64(what)?),
        11 => MetaValue::I64(i64::from_le_bytes(c.array(what)?)),
        12 => MetaValue::F64(f64::from_le_bytes(c.array(what)?)),
        other => return bad(format!("{what}: unknown value type {other}")),
    })
}

fn read_value(c: &mut Cursor, ty: u32, depth: usize, what: &str) -> P<MetaValue> {
    if ty == 9 {
        Ok(MetaValue::Array(read_array(c, depth + 1, what)?))
    } else {
        read_scalar(c, ty, what)
    }
}

fn read_array(c: &mut Cursor, depth: usize, what: &str) -> P<MetaArray> {
    if depth > MAX_ARRAY_DEPTH {
        return bad(format!(
            "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
        ));
    }
    let ty = c.u32(what)?;
    let Some(min) = min_value_bytes(ty) else {
        return bad(format!("{what}: unknown array element type {ty}"));
    };
    let n = c.count(min, &format!("{what}: array length"))? as usize;
    // `n · min` bytes are known to be in the file, so these capacities are bounded by its size.
    macro_rules! collect {
        ($variant:ident, $conv:expr) => {{
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push($conv(read_scalar(c, ty, what)?));
            }
            MetaArray::$variant(v)
        }};
    }
    macro_rules! scalar {
        ($variant:ident) => {
            collect!($variant, |x| match x {
                MetaValue::$variant(v) => v,
                _ => unreachable!("read_scalar returns the type asked for"),
            })
        };
    }
    Ok(match ty {
        0 => scalar!(U8),
        1 => scalar!(I8),
        2 => scalar!(U16),
        3 => scalar!(I16),
        4 => scalar!(U32),
        5 => scalar!(I32),
        6 => scalar!(F32),
        7 => scalar!(Bool),
        8 => scalar!(String),
        10 => scalar!(U64),
        11 => scalar!(I64),
        12 => scalar!(F64),
        9 => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(c, depth + 1, what)?);
            }
            MetaArray::Array(v)
        }
        _ => unreachable!("element type checked by min_value_bytes"),
    })
}

fn parse_header(bytes: &[u8], file_size: u64) -> P<GgufFile> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        file_size,
    };
    let magic = c.array::<4>("magic")?;
    if &magic != b"GGUF" {
        return bad(format!("magic {magic:?} is not \"GGUF\""));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return bad(format!("version {version} (2 and 3 are read)"));
    }
    // A tensor info takes at least 8 (name) + 4 + 8 (one dim) + 4 + 8 bytes, a key/value 8 + 4 + 1.
    let n_tensors = c.count(32, "tensor count")?;
    let n_kv = c.count(13, "metadata count")?;
    if n_tensors > MAX_COUNT || n_kv > MAX_COUNT {
        return bad(format!(
            "{n_tensors} tensors / {n_kv} metadata entries: over the limit of {MAX_COUNT}"
        ));
    }
    let mut metadata: Vec<(String, MetaValue)> = Vec::with_capacity(n_kv as usize);
    let mut keys = std::collections::HashSet::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = c.name(&format!("metadata key #{i}"))?;
        let ty = c.u32(&format!("type of {key:?}"))?;
        let value = read_value(&mut c, ty, 0, &format!("metadata {key:?}"))?;
        if !keys.insert(key.clone()) {
            return bad(format!("metadata key {key:?} appears twice"));
        }
        metadata.push((key, value));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, MetaValue::U32(a))) => {
            let a = u64::from(*a);
            if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
                return bad(format!(
                    "general.alignment {a} is not a power of two up to {MAX_ALIGNMENT}"
                ));
            }
            a
        }
        Some((_, other)) => return bad(format!("general.alignment {other} is not a u32")),
    };
    struct Info {
        name: String,
        ty: GgmlType,
        shape: Vec<usize>,
        rel_offset: u64,
        len: u64,
    }
    let mut infos = Vec::with_capacity(n_tensors as usize);
    let mut by_name = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.name(&format!("tensor name #{i}"))?;
        let n_dims = c.u32(&format!("n_dims of {name:?}"))? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return bad(format!(
                "tensor {name:?}: {n_dims} dimensions (1 to {MAX_DIMS})"
            ));
        }
        let mut ne = Vec::with_capacity(n_dims);
        let mut numel: u64 = 1;
        for _ in 0..n_dims {
            let d = c.u64(&format!("dims of {name:?}"))?;
            numel = match numel.checked_mul(d) {
                Some(n) if d > 0 && usize::try_from(n).is_ok() && n <= i64::MAX as u64 => n,
                _ => {
                    return bad(format!(
                        "tensor {name:?}: dimension {d} is zero or too large"
                    ));
                }
            };
            ne.push(d as usize);
        }
        let code = c.u32(&format!("type of {name:?}"))?;
        let Some(ty) = GgmlType::from_code(code) else {
            return bad(format!("tensor {name:?}: unknown ggml type {code}"));
        };
        let rel_offset = c.u64(&format!("offset of {name:?}"))?;
        if !rel_offset.is_multiple_of(alignment) {
            return bad(format!(
                "tensor {name:?}: offset {rel_offset} is not a multiple of the alignment {alignment}"
            ));
        }
        let (block, _) = ty.block();
        if !(ne[0] as u64).is_multiple_of(block) {
            return bad(format!(
                "tensor {name:?}: innermost dimension {} is not a multiple of the {} block size {block}",
                ne[0],
                ty.name()
            ));
        }
        let Some(len) = ty.bytes_for(numel) else {
            return bad(format!("tensor {name:?}: byte size overflows"));
        };
        if by_name.insert(name.clone(), infos.len()).is_some() {
            return bad(format!("tensor {name:?} appears twice"));
        }
        ne.reverse();
        infos.push(Info {
            name,
            ty,
            shape: ne,
            rel_offset,
            len,
        });
    }
    let end = c.pos as u64;
    let data_offset = end.div_ceil(alignment) * alignment;
    let mut tensors = Vec::with_capacity(infos.len());
    for info in infos {
        let offset = data_offset.checked_add(info.rel_offset);
        let stop = offset.and_then(|o| o.checked_add(info.len));
        match (offset, stop) {
            (Some(offset), Some(stop)) if stop <= file_size => tensors.push(GgufTensor {
                name: info.name,
                ggml_type: info.ty,
                shape: info.shape,
                offset,
                len: info.len,
            }),
            _ => {
                return bad(format!(
                    "tensor {:?}: data at {data_offset}+{} ({} bytes) runs past the end of the file ({file_size} bytes)",
                    info.name, info.rel_offset, info.len
                ));
            }
        }
    }
    for (key, value) in &metadata {
        let Some(name) = key.strip_prefix(SHAPE_KEY) else {
            continue;
        };
        let Some(t) = by_name.get(name).map(|&i| &mut tensors[i]) else {
            return bad(format!("{key}: no tensor {name:?}"));
        };
        let MetaValue::Array(MetaArray::U64(dims)) = value else {
            return bad(format!("{key}: {value} is not a u64 array"));
        };
        let numel = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d).filter(|_| d > 0));
        let (block, _) = t.ggml_type.block();
        let inner_ok = dims.last().is_some_and(|&d| d.is_multiple_of(block));
        if numel != Some(t.numel() as u64) || !inner_ok || dims.len() > 8 {
            return bad(format!(
                "{key}: shape {dims:?} does not hold the {} values of {name:?} ({:?} stored)",
                t.numel(),
                t.shape
            ));
        }
        t.shape = dims.iter().map(|&d| d as usize).collect();
    }
    Ok(GgufFile {
        file: String::new(),
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
        by_name,
    })
}

/// Dequantizes `n` values of type `ty` from `bytes` to f32, exactly as ggml's
/// `dequantize_row_*` (ggml-quants.c) and gguf-py's `gguf.quants.dequantize` do. The error
/// names the type and the sizes.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> std::result::Result<Vec<f32>, String> {
    let want = ty
        .bytes_for(n as u64)
        .ok_or_else(|| format!("{n} values are not a whole number of {} blocks", ty.name()))?;
    if bytes.len() as u64 != want {
        return Err(format!(
            "{} bytes for {n} {} values ({want} expected)",
            bytes.len(),
            ty.name()
        ));
    }
    let (_, block_bytes) = ty.block();
    let blocks = bytes.chunks_exact(block_bytes as usize);
    let h = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|b| h(b, 0))),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in blocks {
                let d = h(b, 0);
                out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            for b in blocks {
                let d = h(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| f32::from((q & 0xF) as i8 - 8) * d));
                out.extend(qs.iter().map(|&q| f32::from((q >> 4) as i8 - 8) * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in blocks {
                let (d, m) = (h(b, 0), h(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| f32::from(q & 0xF) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (start, offset) = if ty == GgmlType::Q5_0 {
                (2, 16)
            } else {
                (4, 0)
            };
            for b in blocks {
                let d = h(b, 0);
                let m = if ty == GgmlType::Q5_1 { h(b, 2) } else { 0.0 };
                let qh = u32::from_le_bytes([b[start], b[start + 1], b[start + 2], b[start + 3]]);
                let qs = &b[start + 4..start + 20];
                let value = |j: usize, hi: bool| {
                    let (nib, bit) = if hi {
                        (qs[j] >> 4, (qh >> (j + 12)) & 0x10)
                    } else {
                        (qs[j] & 0xF, ((qh >> j) << 4) & 0x10)
                    };
                    (i32::from(nib) | bit as i32) - offset
                };
                if ty == GgmlType::Q5_0 {
                    out.extend((0..16).map(|j| value(j, false) as f32 * d));
                    out.extend((0..16).map(|j| value(j, true) as f32 * d));
                } else {
                    out.extend((0..16).map(|j| value(j, false) as f32 * d + m));
                    out.extend((0..16).map(|j| value(j, true) as f32 * d + m));
                }
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            for b in blocks {
                let (d, dmin) = (h(b, 0), h(b, 2));
                let scales = &b[4..16];
                let (qh, ql) = if ty == GgmlType::Q5_K {
                    (Some(&b[16..48]), &b[48..176])
                } else {
                    (None, &b[16..144])
                };
                for j in 0..4 {
                    let q = &ql[32 * j..32 * j + 32];
                    for half in 0..2 {
                        let (sc, m) = scale_min_k4(2 * j + half, scales);
                        let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
                        let bit = 1u8 << (2 * j + half);
                        out.extend((0..32).map(|l| {
                            let nib = if half == 0 { q[l] & 0xF } else { q[l] >> 4 };
                            let high = qh.map_or(0, |qh| if qh[l] & bit != 0 { 16 } else { 0 });
                            d1 * f32::from(nib + high) - m1
                        }));
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for b in blocks {
                let (ql_all, qh_all, sc_all) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = h(b, 208);
                for n in 0..2 {
                    let (ql, qh, sc) = (
                        &ql_all[64 * n..64 * n + 64],
                        &qh_all[32 * n..32 * n + 32],
                        &sc_all[8 * n..8 * n + 8],
                    );
                    let mut y = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        let s = |k: usize| d * f32::from(sc[is + k] as i8);
                        y[l] = s(0) * q1 as f32;
                        y[l + 32] = s(2) * q2 as f32;
                        y[l + 64] = s(4) * q3 as f32;
                        y[l + 96] = s(6) * q4 as f32;
                    }
                    out.extend_from_slice(&y);
                }
            }
        }
        other => {
            return Err(format!(
                "dequantizing {} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K are)",
                other.name()
            ));
        }
    }
    Ok(out)
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) of a K-quant block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
