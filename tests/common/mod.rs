//! Shared helpers for the parity tests: fixture records (`tests/fixtures/<case>/record.safetensors`
//! and `case.json`, written by `tests/fixtures/gen_fixtures.py`), readback, and [`assert_close`].
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use qwen_layered_web::gpu::GpuReport;
use qwen_layered_web::weights::DirSource;
use safetensors::{Dtype, SafeTensors};

/// `tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The diffusers-layout tiny model folder (`tests/fixtures/model`).
pub fn model_source() -> DirSource {
    DirSource::new(fixtures_dir().join("model"))
}

/// The pure-Rust CPU backend the parity tests run on.
pub fn cpu() -> Device {
    Device::flex()
}

/// The native wgpu device (Vulkan; Mesa lavapipe without a GPU), initialised once per test
/// binary and shared by its tests: Burn's runtime can be initialised only once per process, so
/// a per-test init would leave every test but the first without a device.
///
/// No adapter is a failure, not a skip (`scripts/setup.sh --test` installs lavapipe), unless
/// `QWEN_LAYERED_NO_WGPU=1` is set, in which case the caller gets `None` and says it skipped.
#[allow(dead_code)]
pub fn gpu() -> Option<Device> {
    gpu_with_report().map(|(device, _)| device)
}

/// [`gpu`] with the adapter and limits that the device was created with.
#[allow(dead_code)]
pub fn gpu_with_report() -> Option<(Device, GpuReport)> {
    static GPU: std::sync::OnceLock<Result<(Device, GpuReport), String>> =
        std::sync::OnceLock::new();
    let device = GPU.get_or_init(|| match Device::wgpu_options().init_with_setup() {
        Ok((device, setup)) => {
            let report = GpuReport::from_native(&setup.adapter, &setup.device);
            eprintln!("wgpu adapter: {:?}", report.description);
            Ok((device, report))
        }
        Err(err) => Err(err.to_string()),
    });
    match device {
        Ok(pair) => Some(pair.clone()),
        Err(err) if std::env::var_os("QWEN_LAYERED_NO_WGPU").is_some() => {
            eprintln!("SKIPPED (QWEN_LAYERED_NO_WGPU is set): no native wgpu adapter ({err})");
            None
        }
        Err(err) => panic!(
            "no native wgpu adapter ({err}): install Mesa's Vulkan drivers (scripts/setup.sh \
             --test) or set QWEN_LAYERED_NO_WGPU=1 to skip the wgpu tests"
        ),
    }
}

/// Every case folder that has a `record.safetensors`, sorted.
pub fn cases() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("record.safetensors").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// One case's recorded tensors (falling back to the `same_as` case for tensors left out as
/// bitwise-equal) and its `case.json`.
pub struct Record {
    /// The case name.
    pub name: String,
    bytes: Vec<u8>,
    /// `case.json`.
    pub json: serde_json::Value,
    fallback: Option<Box<Record>>,
}

impl Record {
    /// Reads `tests/fixtures/<case>/`.
    pub fn load(case: &str) -> Record {
        let dir = fixtures_dir().join(case);
        let bytes = std::fs::read(dir.join("record.safetensors"))
            .unwrap_or_else(|e| panic!("{case}: record: {e}"));
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("case.json"))
                .unwrap_or_else(|e| panic!("{case}: case.json: {e}")),
        )
        .expect("case.json parses");
        let fallback = json["same_as"]
            .as_str()
            .map(|other| Box::new(Record::load(other)));
        Record {
            name: case.to_owned(),
            bytes,
            json,
            fallback,
        }
    }

    /// Whether `name` was left out of this record as bitwise equal to the `same_as` case's.
    fn shared(&self, name: &str) -> bool {
        self.json["shared_with_same_as"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(name)))
    }

    /// Whether the record holds `name` (itself, or through `shared_with_same_as`).
    pub fn has(&self, name: &str) -> bool {
        let st = SafeTensors::deserialize(&self.bytes).expect("record parses");
        st.tensor(name).is_ok()
            || (self.shared(name) && self.fallback.as_ref().is_some_and(|f| f.has(name)))
    }

    /// A float tensor as `(values, shape)`.
    pub fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.bytes).expect("record parses");
        match st.tensor(name) {
            Ok(view) => {
                assert_eq!(view.dtype(), Dtype::F32, "{}: {name} is not f32", self.name);
                let v = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                (v, view.shape().to_vec())
            }
            Err(_) => match &self.fallback {
                Some(f) if self.shared(name) => f.f32(name),
                _ => panic!("{}: no tensor {name} in the record", self.name),
            },
        }
    }

    /// A `uint8` tensor as `(values, shape)` (e.g. `output.layers`).
    pub fn u8(&self, name: &str) -> (Vec<u8>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.bytes).expect("record parses");
        match st.tensor(name) {
            Ok(view) => {
                assert_eq!(view.dtype(), Dtype::U8, "{}: {name} is not u8", self.name);
                (view.data().to_vec(), view.shape().to_vec())
            }
            Err(_) => match &self.fallback {
                Some(f) if self.shared(name) => f.u8(name),
                _ => panic!("{}: no tensor {name} in the record", self.name),
            },
        }
    }

    /// An `int64` tensor as `(values, shape)` (e.g. `text.prompt.input_ids`).
    pub fn i64(&self, name: &str) -> (Vec<i64>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.bytes).expect("record parses");
        match st.tensor(name) {
            Ok(view) => {
                assert_eq!(view.dtype(), Dtype::I64, "{}: {name} is not i64", self.name);
                let v = view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect();
                (v, view.shape().to_vec())
            }
            Err(_) => match &self.fallback {
                Some(f) if self.shared(name) => f.i64(name),
                _ => panic!("{}: no tensor {name} in the record", self.name),
            },
        }
    }

    /// A float tensor on `device`, reshaped to `D` dims (`shape` gives the wanted dims; the
    /// element count must match).
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        device: &Device,
    ) -> Tensor<D> {
        let (v, stored) = self.f32(name);
        assert_eq!(
            v.len(),
            shape.iter().product::<usize>(),
            "{}: {name} stored {stored:?} cannot be viewed as {shape:?}",
            self.name
        );
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    /// The stored shape of `name`.
    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.f32(name).1
    }

    /// `img_shapes` from case.json as `(f, h, w)` per entry, per sample.
    pub fn img_shapes(&self) -> Vec<Vec<(usize, usize, usize)>> {
        self.json["img_shapes"]
            .as_array()
            .expect("img_shapes")
            .iter()
            .map(|sample| {
                sample
                    .as_array()
                    .expect("sample")
                    .iter()
                    .map(|e| {
                        let v: Vec<usize> = e
                            .as_array()
                            .expect("entry")
                            .iter()
                            .map(|x| x.as_u64().expect("int") as usize)
                            .collect();
                        (v[0], v[1], v[2])
                    })
                    .collect()
            })
            .collect()
    }

    /// Number of denoising steps.
    pub fn steps(&self) -> usize {
        self.json["call"]["num_inference_steps"]
            .as_u64()
            .expect("steps") as usize
    }

    /// Whether CFG ran (two transformer calls per step).
    pub fn cfg(&self) -> bool {
        self.json["do_true_cfg"].as_bool().expect("do_true_cfg")
    }
}

/// Reads a tensor back to the host (tests may block).
pub fn read<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    let device = t.device();
    pollster::block_on(qwen_layered_web::gpu::read_f32(t, "test tensor", &device))
        .expect("readback")
}

/// Multi-dimensional index of flat `i` in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (d, &n) in shape.iter().enumerate().rev() {
        if n > 0 {
            idx[d] = i % n;
            i /= n;
        }
    }
    idx
}

/// Compares `got` with `want` (same number of elements, `shape` for messages): returns the
/// max abs error, or panics naming the tensor, the worst index, both values and the max error
/// if it exceeds `atol` (or a value is NaN).
pub fn assert_close(name: &str, got: &[f32], want: &[f32], shape: &[usize], atol: f32) -> f32 {
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: {} values computed, {} expected (shape {shape:?})",
        got.len(),
        want.len()
    );
    let mut worst = (0usize, 0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let e = (g - w).abs();
        if e.is_nan() || e > worst.1 {
            worst = (i, if e.is_nan() { f32::INFINITY } else { e });
        }
    }
    let (i, err) = worst;
    eprintln!("{name}: max abs err {err:.3e} (shape {shape:?})");
    assert!(
        err <= atol,
        "{name}: max abs err {err:.3e} > {atol:.0e} at index {:?} (flat {i}) of {shape:?}: got {}, expected {}",
        unravel(i, shape),
        got[i],
        want[i]
    );
    err
}

/// [`assert_close`] of a device tensor against the record's tensor of the same element count.
pub fn check<const D: usize>(rec: &Record, name: &str, got: Tensor<D>, atol: f32) -> f32 {
    let (want, shape) = rec.f32(name);
    let label = format!("{}: {name}", rec.name);
    assert_close(&label, &read(got), &want, &shape, atol)
}

/// Writes the fixture transformer into `dir/transformer/` as diffusers writes a large one: two
/// shards (the sorted keys split in half) and `diffusion_pytorch_model.safetensors.index.json`.
/// Returns the two shards' paths, relative to `dir`.
pub fn write_sharded_transformer(dir: &std::path::Path) -> [String; 2] {
    let bytes =
        std::fs::read(fixtures_dir().join("model/transformer/diffusion_pytorch_model.safetensors"))
            .expect("fixture");
    let whole = SafeTensors::deserialize(&bytes).expect("fixture safetensors");
    let mut names: Vec<String> = whole.names().into_iter().map(str::to_owned).collect();
    names.sort();
    let shard_name = |i: usize| format!("diffusion_pytorch_model-0000{i}-of-00002.safetensors");
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    std::fs::create_dir_all(dir.join("transformer")).expect("transformer folder");
    for (i, keys) in [(1, first), (2, second)] {
        let views: Vec<(String, safetensors::tensor::TensorView)> = keys
            .iter()
            .map(|k| (k.clone(), whole.tensor(k).expect("tensor")))
            .collect();
        let data = safetensors::serialize(views, None).expect("shard");
        std::fs::write(dir.join("transformer").join(shard_name(i)), data).expect("write shard");
        for k in keys {
            weight_map.insert(k.clone(), shard_name(i).into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.join("transformer/diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .expect("index");
    [1, 2].map(|i| format!("transformer/{}", shard_name(i)))
}
