//! What we know about the GPU we run on, and a self-test that proves Burn computes on it.
//!
//! The report is filled from the exact wgpu handles Burn's runtime uses (limits and features
//! granted to the device), plus, in the browser, the `GPUAdapterInfo` strings that wgpu's WebGPU
//! backend does not carry (vendor, architecture). It travels from the worker to the page as-is.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The limits that decide which model sizes and kernels can run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyLimits {
    /// `maxBufferSize`, bytes.
    pub max_buffer_size: u64,
    /// `maxStorageBufferBindingSize`, bytes.
    pub max_storage_buffer_binding_size: u64,
    /// `maxComputeWorkgroupStorageSize`, bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// `maxComputeInvocationsPerWorkgroup`.
    pub max_compute_invocations_per_workgroup: u32,
}

impl KeyLimits {
    /// The limits of a wgpu device or adapter.
    pub fn from_wgpu(limits: &wgpu::Limits) -> Self {
        Self {
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        }
    }

    /// The largest one tensor's buffer may be: `min(maxStorageBufferBindingSize,
    /// maxBufferSize)`, bytes.
    pub fn largest_buffer(&self) -> u64 {
        self.max_storage_buffer_binding_size
            .min(self.max_buffer_size)
    }
}

/// The GPU the model runs on, as reported to the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuReport {
    /// Graphics API: "BrowserWebGpu", "Vulkan", "Metal", ...
    pub backend: String,
    /// Adapter vendor ("google", "nvidia", ...); empty where the platform hides it.
    pub vendor: String,
    /// Adapter architecture ("swiftshader", "ampere", ...); empty where hidden.
    pub architecture: String,
    /// Adapter description or name.
    pub description: String,
    /// True for software or fallback adapters (SwiftShader, lavapipe).
    pub is_fallback: bool,
    /// Limits granted to the device Burn uses (the adapter's maxima are requested).
    pub limits: KeyLimits,
    /// `shader-f16`.
    pub shader_f16: FeatureState,
    /// `subgroups`.
    pub subgroups: FeatureState,
    /// Every feature the adapter offers, WebGPU spelling where known.
    pub features: Vec<String>,
}

/// Whether an optional GPU feature can be used by our kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FeatureState {
    /// Enabled on the device Burn computes on.
    Enabled,
    /// The adapter offers it but the device was created without it (wgpu 30's WebGPU
    /// backend has no mapping for `subgroups`, so it never requests it).
    OfferedNotEnabled,
    /// The adapter does not offer it.
    Absent,
}

impl FeatureState {
    /// From "the adapter lists it" and "the device has it".
    pub fn new(offered: bool, enabled: bool) -> Self {
        match (offered, enabled) {
            (_, true) => Self::Enabled,
            (true, false) => Self::OfferedNotEnabled,
            (false, false) => Self::Absent,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Enabled => "yes",
            Self::OfferedNotEnabled => "offered by the adapter, not enabled on the device",
            Self::Absent => "no",
        }
    }
}

impl GpuReport {
    /// The report for a native wgpu adapter/device pair (vendor and architecture come from
    /// the driver's adapter info).
    pub fn from_native(adapter: &wgpu::Adapter, device: &wgpu::Device) -> Self {
        let info = adapter.get_info();
        let features = device.features();
        Self {
            backend: format!("{:?}", info.backend),
            vendor: format!("0x{:04x}", info.vendor),
            architecture: info.driver.clone(),
            description: format!("{} ({})", info.name, info.driver_info),
            is_fallback: info.device_type == wgpu::DeviceType::Cpu,
            limits: KeyLimits::from_wgpu(&device.limits()),
            shader_f16: FeatureState::new(
                adapter.features().contains(wgpu::Features::SHADER_F16),
                features.contains(wgpu::Features::SHADER_F16),
            ),
            subgroups: FeatureState::new(
                adapter.features().contains(wgpu::Features::SUBGROUP),
                features.contains(wgpu::Features::SUBGROUP),
            ),
            features: feature_names(adapter.features()),
        }
    }

    /// Human-readable lines for a status panel or a terminal.
    pub fn lines(&self) -> Vec<String> {
        let mib = |b: u64| format!("{} MiB", b >> 20);
        vec![
            format!(
                "Adapter: {} {} {}",
                self.vendor, self.architecture, self.description
            )
            .trim_end()
            .to_owned(),
            format!(
                "Backend: {}{}",
                self.backend,
                if self.is_fallback {
                    " (software/fallback adapter)"
                } else {
                    ""
                }
            ),
            format!("maxBufferSize: {}", mib(self.limits.max_buffer_size)),
            format!(
                "maxStorageBufferBindingSize: {}",
                mib(self.limits.max_storage_buffer_binding_size)
            ),
            format!(
                "maxComputeWorkgroupStorageSize: {} KiB",
                self.limits.max_compute_workgroup_storage_size / 1024
            ),
            format!("shader-f16: {}", self.shader_f16.describe()),
            format!("subgroups: {}", self.subgroups.describe()),
        ]
    }
}

/// WebGPU names of the wgpu features we care about, then wgpu's names for the rest.
pub fn feature_names(features: wgpu::Features) -> Vec<String> {
    let known = [
        (wgpu::Features::SHADER_F16, "shader-f16"),
        (wgpu::Features::SUBGROUP, "subgroups"),
        (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
        (wgpu::Features::FLOAT32_FILTERABLE, "float32-filterable"),
    ];
    let mut names: Vec<String> = known
        .iter()
        .filter(|(f, _)| features.contains(*f))
        .map(|(_, n)| (*n).to_owned())
        .collect();
    let rest = known.iter().fold(features, |acc, (f, _)| acc - *f);
    names.extend(rest.iter_names().map(|(n, _)| n.to_lowercase()));
    names
}

/// The outcome of [`matmul_self_test`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatmulCheck {
    /// Shape `[m, k] × [k, n]`.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Output columns.
    pub n: usize,
    /// Largest |gpu − cpu| over the output.
    pub max_abs_err: f32,
    /// Flat index of that element.
    pub worst_index: usize,
    /// The GPU's value there.
    pub gpu_value: f32,
    /// The CPU's value there.
    pub cpu_value: f32,
}

impl MatmulCheck {
    /// `Ok` when the largest difference is at most `tolerance`; otherwise a message naming the
    /// shape, the worst element and both values.
    pub fn within(&self, tolerance: f32) -> Result<(), String> {
        if self.max_abs_err <= tolerance {
            return Ok(());
        }
        let (m, k, n) = (self.m, self.k, self.n);
        Err(format!(
            "[{m},{k}]x[{k},{n}]: max |gpu-cpu| {} > {tolerance} at index {} (gpu {}, cpu {})",
            self.max_abs_err, self.worst_index, self.gpu_value, self.cpu_value
        ))
    }
}

/// Deterministic values in [-1, 1) from a seed (xorshift64*), so the GPU and CPU get the
/// same inputs and failures reproduce.
pub fn seeded_values(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 bits
            bits as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Multiplies two seeded matrices on `gpu` and on Burn's CPU backend (Flex) and compares.
///
/// - a: [m, k], b: [k, n], result [m, n].
///
/// Reads back asynchronously, as the browser requires.
pub async fn matmul_self_test(
    gpu: &Device,
    m: usize,
    k: usize,
    n: usize,
    seed: u64,
) -> Result<MatmulCheck> {
    let a = seeded_values(seed, m * k);
    let b = seeded_values(seed.wrapping_add(1), k * n);
    let run = |device: &Device| {
        let a = Tensor::<2>::from_data(TensorData::new(a.clone(), [m, k]), device);
        let b = Tensor::<2>::from_data(TensorData::new(b.clone(), [k, n]), device);
        a.matmul(b)
    };
    let gpu_out = read_f32(run(gpu), "matmul output", gpu).await?;
    let cpu = Device::flex();
    let cpu_out = read_f32(run(&cpu), "matmul output", &cpu).await?;
    let (worst_index, max_abs_err) = gpu_out
        .iter()
        .zip(&cpu_out)
        .map(|(g, c)| (g - c).abs())
        .enumerate()
        .fold((0, 0.0f32), |best, (i, e)| {
            if e > best.1 || e.is_nan() {
                (i, e)
            } else {
                best
            }
        });
    Ok(MatmulCheck {
        m,
        k,
        n,
        max_abs_err,
        worst_index,
        gpu_value: gpu_out[worst_index],
        cpu_value: cpu_out[worst_index],
    })
}

/// Reads a float tensor back as `Vec<f32>` without blocking (works on wasm).
pub async fn read_f32<const D: usize>(
    tensor: Tensor<D>,
    what: &str,
    device: &Device,
) -> Result<Vec<f32>> {
    let readback = |reason: String| Error::Readback {
        what: what.to_owned(),
        device: format!("{device:?}"),
        reason,
    };
    let data = tensor
        .into_data_async()
        .await
        .map_err(|e| readback(format!("{e:?}")))?;
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| readback(format!("{e:?}")))
}

/// The driver's own words in the error of a read on a lost device, for a message: Burn and
/// cubecl wrap them as `… failed: The device is poisoned Caused by: … Caused by: Destroyed:
/// Device was destroyed. Backtrace: …`; this keeps `Destroyed: Device was destroyed` (the
/// text after the last `Caused by:`, without the backtrace and the final full stop), or the
/// whole text when it has no such part.
pub fn lost_device_reason(text: &str) -> String {
    let last = text.rsplit("Caused by:").next().unwrap_or(text);
    let reason = last.split("Backtrace:").next().unwrap_or(last);
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    let reason = reason.trim_end_matches('.');
    if reason.is_empty() {
        text.trim().to_owned()
    } else {
        reason.to_owned()
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn a_lost_device_reason_keeps_the_drivers_words() {
        let read = "reading back denoising step probe from Device<Cube(Wgpu(WgpuDevice { kind: \
                    DefaultDevice, backend: Auto }))> failed: The device is poisoned Caused by: \
                    The device is poisoned Caused by: Destroyed: Device was destroyed. \
                    Backtrace: No backtrace available";
        assert_eq!(lost_device_reason(read), "Destroyed: Device was destroyed");
        assert_eq!(
            lost_device_reason("the device was lost\nCaused by:\n  Unknown: GPU reset\n"),
            "Unknown: GPU reset"
        );
        assert_eq!(lost_device_reason("device lost"), "device lost");
        assert_eq!(lost_device_reason(" Caused by: "), "Caused by:");
    }

    #[test]
    fn seeded_values_are_deterministic_and_in_range() {
        let a = seeded_values(7, 1000);
        assert_eq!(a, seeded_values(7, 1000));
        assert_ne!(a, seeded_values(8, 1000));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.1, "mean {mean}");
    }

    #[test]
    fn cpu_against_cpu_is_exact() {
        let r = pollster::block_on(matmul_self_test(&Device::flex(), 5, 7, 3, 1)).unwrap();
        assert_eq!(r.max_abs_err, 0.0);
    }

    #[test]
    fn report_lines_name_the_limits() {
        let report = GpuReport {
            backend: "Vulkan".into(),
            vendor: "0x10005".into(),
            architecture: "llvmpipe".into(),
            description: "lavapipe".into(),
            is_fallback: true,
            limits: KeyLimits {
                max_buffer_size: 1 << 30,
                max_storage_buffer_binding_size: 128 << 20,
                max_compute_workgroup_storage_size: 16384,
                max_compute_invocations_per_workgroup: 256,
            },
            shader_f16: FeatureState::Absent,
            subgroups: FeatureState::OfferedNotEnabled,
            features: vec!["subgroups".into()],
        };
        let text = report.lines().join("\n");
        assert!(text.contains("maxBufferSize: 1024 MiB"), "{text}");
        assert!(
            text.contains("maxStorageBufferBindingSize: 128 MiB"),
            "{text}"
        );
        assert!(
            text.contains("maxComputeWorkgroupStorageSize: 16 KiB"),
            "{text}"
        );
        assert!(
            text.contains("shader-f16: no") && text.contains("subgroups: offered"),
            "{text}"
        );
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("maxStorageBufferBindingSize"), "{json}");
        assert_eq!(serde_json::from_str::<GpuReport>(&json).unwrap(), report);
    }
}
