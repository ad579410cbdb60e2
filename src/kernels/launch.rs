//! From Burn tensors on a wgpu device to a hand-written WGSL compute shader and back.
//!
//! A kernel is a [`WgslKernel`]: WGSL text (from `shaders/`), its entry point and workgroup size,
//! and compile-time `u32` constants that are prepended as `const NAME: u32 = V;` lines (one
//! pipeline per distinct set of constants). [`launch`] binds, in this order:
//!
//! 1. every input tensor, made contiguous first,
//! 2. every output tensor, freshly allocated and contiguous,
//! 3. when `params` is not empty, one `params: array<u32>` buffer (shapes and the like),
//!
//! at `@group(0) @binding(i)`, `i` counting from 0 across the three lists. The pipeline layout is
//! derived from the shader, so **every binding must be used** by the entry point, and **every
//! binding must be declared `var<storage, read_write>`**, inputs too: cubecl suballocates
//! tensors from shared wgpu buffers, and wgpu rejects a dispatch that uses one buffer both as
//! read-only and as read-write storage ("conflicting usages"). Do not pass the same tensor
//! twice either: WebGPU forbids aliasing writable bindings.
//!
//! Natively Burn's wgpu backend is wrapped in `burn-fusion`: the launch is then registered as an
//! opaque custom operation on the current fusion stream and runs in order with the lazy
//! operations around it (no flush, no read). In the browser (no fusion) it is enqueued at once.
//! Either way nothing waits for the GPU.

use std::sync::Arc;

use burn::backend::TensorMetadata;
use burn::backend::{BackendTensor, Cube, DispatchAutodiffContext, DispatchTensor};
use burn::backend::{DispatchDevice, DispatchTensorKind};
use burn::tensor::{DType, Device};
use burn_cubecl::cubecl::RuntimeId;
use burn_cubecl::cubecl::ir::metadata::Info;
use burn_cubecl::cubecl::ir::settings::Dim3;
use burn_cubecl::cubecl::ir::{AddressType, ElemType, UIntKind};
use burn_cubecl::cubecl::prelude::{
    BufferIOAttr, CubeCount, CubeKernel, ExecutionMode, KernelDefinition, KernelId, KernelMetadata,
    KernelSettings, PrecompiledSource, Scope,
};
use burn_cubecl::cubecl::server::KernelArguments;
use burn_cubecl::tensor::CubeTensor;

/// A hand-written WGSL compute shader plus the compile-time constants it is specialised with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WgslKernel {
    /// Stable name (pipeline cache key and label), e.g. `"qmatmul"`.
    pub name: &'static str,
    /// The WGSL text without the constant lines.
    pub source: &'static str,
    /// The `@compute` function to run.
    pub entry: &'static str,
    /// `@workgroup_size(x, y, z)` as written in the shader (checked against device limits).
    pub workgroup: [u32; 3],
    /// `const NAME: u32 = V;` lines prepended to `source`, in this order.
    pub consts: Vec<(&'static str, u32)>,
}

impl WgslKernel {
    /// A kernel without constants.
    pub fn new(
        name: &'static str,
        source: &'static str,
        entry: &'static str,
        workgroup: [u32; 3],
    ) -> Self {
        Self {
            name,
            source,
            entry,
            workgroup,
            consts: Vec::new(),
        }
    }

    /// Adds `const name: u32 = value;` in front of the source.
    pub fn with_const(mut self, name: &'static str, value: u32) -> Self {
        self.consts.push((name, value));
        self
    }

    /// The full WGSL text the device compiles.
    pub fn full_source(&self) -> String {
        let mut s = String::new();
        for (name, value) in &self.consts {
            s.push_str(&format!("const {name}: u32 = {value}u;\n"));
        }
        s.push_str(self.source);
        s
    }
}

/// What an output buffer holds: its shape (row-major, contiguous) and element type.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSpec {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// `DType::F32` for a float tensor, an int dtype (`I32`, `U32`) for an int tensor.
    pub dtype: DType,
}

/// The cubecl client of `device` when it is a wgpu device (the only runtime WGSL runs on);
/// `None` on the CPU (Flex) backend.
pub fn wgpu_client(device: &Device) -> Option<burn_cubecl::cubecl::client::Client> {
    match device.as_dispatch() {
        DispatchDevice::Cube(d) if d.runtime() == RuntimeId::Wgpu => Some(d.client()),
        _ => None,
    }
}

/// Whether `device` is a wgpu device, where [`launch`] runs.
pub fn is_wgpu(device: &Device) -> bool {
    wgpu_client(device).is_some()
}

/// Runs `kernel` over `inputs` (any tensors from `Tensor::into_dispatch`, float or int, all on
/// one wgpu device) into new tensors described by `outputs`, with `grid` workgroups.
///
/// Returns the outputs in the order of `outputs`, as dispatch tensors (`Tensor::from_dispatch`).
///
/// # Panics
///
/// When an input is not on a wgpu device (check [`is_wgpu`] first), is an autodiff tensor, or
/// `inputs` is empty. Shader compile errors surface as a GPU error on the outputs' first read.
pub fn launch(
    kernel: WgslKernel,
    inputs: Vec<DispatchTensor>,
    outputs: Vec<OutputSpec>,
    params: Vec<u32>,
    grid: [u32; 3],
) -> Vec<DispatchTensor> {
    assert!(
        !inputs.is_empty(),
        "{}: a launch needs an input",
        kernel.name
    );
    let inputs: Vec<BackendTensor<Cube>> = inputs
        .into_iter()
        .map(|t| match t.kind {
            DispatchTensorKind::Cube(t) => t,
            other => panic!(
                "{}: input on {:?}, not a wgpu device",
                kernel.name,
                other.device()
            ),
        })
        .collect();
    let call = Arc::new(Call {
        kernel: Arc::new(Precompiled::new(kernel)),
        outputs,
        params,
        grid,
    });
    imp::launch(call, inputs)
        .into_iter()
        .map(|t| DispatchTensor {
            kind: DispatchTensorKind::Cube(t),
            autodiff: DispatchAutodiffContext::Disabled,
        })
        .collect()
}

/// Everything about one launch except the input buffers.
struct Call {
    kernel: Arc<Precompiled>,
    outputs: Vec<OutputSpec>,
    params: Vec<u32>,
    grid: [u32; 3],
}

impl Call {
    /// The launch's output tensors as the dispatch backend's float or int tensors, by each
    /// output's dtype (`float` and `int` are `BackendTensor::Float` / `::Int`, whose payload
    /// type differs natively, fusion, and in the browser, cubecl).
    fn wrap_outputs<T>(
        &self,
        outputs: Vec<T>,
        float: fn(T) -> BackendTensor<Cube>,
        int: fn(T) -> BackendTensor<Cube>,
    ) -> Vec<BackendTensor<Cube>> {
        outputs
            .into_iter()
            .zip(&self.outputs)
            .map(|(t, spec)| {
                if spec.dtype.is_float() {
                    float(t)
                } else {
                    int(t)
                }
            })
            .collect()
    }

    /// Binds and enqueues on the inputs' cubecl client; returns the new output tensors.
    fn run(&self, inputs: Vec<CubeTensor>) -> Vec<CubeTensor> {
        let first = &inputs[0];
        let (client, device) = (first.client.clone(), first.device.clone());
        let mut args = KernelArguments::new();
        for t in inputs {
            let t = burn_cubecl::kernel::into_contiguous(t);
            args = args.with_buffer_io(t.handle.binding(), BufferIOAttr::ReadOnly);
        }
        let outs: Vec<CubeTensor> = self
            .outputs
            .iter()
            .map(|o| {
                burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
                    client.clone(),
                    device.clone(),
                    o.shape.clone().into(),
                    o.dtype,
                )
            })
            .collect();
        for o in &outs {
            args = args.with_buffer_io(o.handle.clone().binding(), BufferIOAttr::WriteOnly);
        }
        if !self.params.is_empty() {
            let bytes: Vec<u8> = self.params.iter().flat_map(|v| v.to_le_bytes()).collect();
            let handle = client.create_from_slice(&bytes);
            args = args.with_buffer_io(handle.binding(), BufferIOAttr::ReadOnly);
        }
        let [x, y, z] = self.grid;
        if x * y * z > 0 {
            client.launch(
                Box::new(PrecompiledRef(self.kernel.clone())),
                CubeCount::Static(x, y, z),
                args,
            );
        }
        outs
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    //! Native: `Cube` is `Fusion<CubeBackend>`; the launch becomes a custom fusion operation.
    use super::*;
    use burn::backend::fusion::custom::{
        CustomOpIr, HandleContainer, Operation, OperationIr, StreamId, TensorIr,
    };
    use burn::backend::fusion::{FusionBackend, FusionRuntime, FusionTensor};
    use burn_cubecl::CubeBackend;

    type Runtime = <CubeBackend as FusionBackend>::FusionRuntime;
    type Handles = HandleContainer<<Runtime as FusionRuntime>::FusionHandle>;

    pub(super) fn launch(
        call: Arc<Call>,
        inputs: Vec<BackendTensor<Cube>>,
    ) -> Vec<BackendTensor<Cube>> {
        let mut kinds = Vec::with_capacity(inputs.len());
        let tensors: Vec<FusionTensor<Runtime>> = inputs
            .into_iter()
            .map(|t| match t {
                BackendTensor::Float(t) => {
                    kinds.push(false);
                    t
                }
                BackendTensor::Int(t) => {
                    kinds.push(true);
                    t
                }
                other => panic!(
                    "{}: unsupported input {}",
                    call.kernel.kernel.name,
                    other.name()
                ),
            })
            .collect();
        let client = tensors[0].client.clone();
        let input_irs: Vec<TensorIr> = tensors.into_iter().map(|t| t.into_ir()).collect();
        let output_irs: Vec<TensorIr> = call
            .outputs
            .iter()
            .map(|o| {
                TensorIr::uninit(
                    client.create_empty_handle(),
                    o.shape.clone().into(),
                    o.dtype,
                )
            })
            .collect();
        let desc = CustomOpIr {
            id: call.kernel.kernel.name.into(),
            inputs: input_irs.clone(),
            outputs: output_irs.clone(),
            scalars: Vec::new(),
        };
        let op = FusedLaunch {
            call: call.clone(),
            inputs: input_irs.into_iter().zip(kinds).collect(),
            outputs: output_irs.iter().map(|o| o.id).collect(),
        };
        let outputs = client.register(StreamId::current(), OperationIr::Custom(desc), op);
        call.wrap_outputs(outputs, BackendTensor::Float, BackendTensor::Int)
    }

    /// The deferred part: runs on the fusion server when the stream reaches it.
    struct FusedLaunch {
        call: Arc<Call>,
        /// Input IR and whether it is an int tensor.
        inputs: Vec<(TensorIr, bool)>,
        outputs: Vec<burn::backend::fusion::custom::TensorId>,
    }

    impl core::fmt::Debug for FusedLaunch {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "WgslLaunch({})", self.call.kernel.kernel.name)
        }
    }

    impl Operation<Runtime> for FusedLaunch {
        fn execute(&self, handles: &mut Handles) -> Result<(), burn::backend::ExecutionError> {
            let inputs = self
                .inputs
                .iter()
                .map(|(ir, int)| {
                    if *int {
                        handles.get_int_tensor::<CubeBackend>(ir)
                    } else {
                        handles.get_float_tensor::<CubeBackend>(ir)
                    }
                })
                .collect();
            let outs = self.call.run(inputs);
            for ((id, out), spec) in self.outputs.iter().zip(outs).zip(&self.call.outputs) {
                if spec.dtype.is_float() {
                    handles.register_float_tensor::<CubeBackend>(id, out);
                } else {
                    handles.register_int_tensor::<CubeBackend>(id, out);
                }
            }
            Ok(())
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    //! Browser: `Cube` is `CubeBackend`; the launch is enqueued directly.
    use super::*;

    pub(super) fn launch(
        call: Arc<Call>,
        inputs: Vec<BackendTensor<Cube>>,
    ) -> Vec<BackendTensor<Cube>> {
        let inputs = inputs
            .into_iter()
            .map(|t| match t {
                BackendTensor::Float(t) | BackendTensor::Int(t) => t,
                other => panic!(
                    "{}: unsupported input {}",
                    call.kernel.kernel.name,
                    other.name()
                ),
            })
            .collect();
        let outputs = call.run(inputs);
        call.wrap_outputs(outputs, BackendTensor::Float, BackendTensor::Int)
    }
}

/// A [`WgslKernel`] with its full source, as cubecl's launch API wants it.
struct Precompiled {
    kernel: WgslKernel,
    source: String,
}

impl Precompiled {
    fn new(kernel: WgslKernel) -> Self {
        let source = kernel.full_source();
        Self { kernel, source }
    }
}

/// The boxed kernel handed to cubecl (shares the source with the deferred call).
struct PrecompiledRef(Arc<Precompiled>);

impl KernelMetadata for PrecompiledRef {
    fn name(&self) -> &'static str {
        self.0.kernel.name
    }

    fn id(&self) -> KernelId {
        let [x, y, z] = self.0.kernel.workgroup;
        KernelId::new::<Precompiled>()
            .info((
                self.0.kernel.name,
                self.0.kernel.entry,
                self.0.source.clone(),
            ))
            .cube_dim(Dim3::new_3d(x, y, z))
    }

    fn address_type(&self) -> ElemType {
        ElemType::UInt(UIntKind::U32)
    }
}

impl CubeKernel for PrecompiledRef {
    fn define(&self) -> KernelDefinition {
        let [x, y, z] = self.0.kernel.workgroup;
        let settings = KernelSettings::new(
            Dim3::new_3d(x, y, z),
            ExecutionMode::Checked,
            AddressType::U32,
        );
        KernelDefinition {
            body: Scope::root(settings.clone()),
            settings,
            info: Info::default(),
        }
    }

    fn source(&self) -> Option<PrecompiledSource> {
        Some(PrecompiledSource {
            source: self.0.source.clone(),
            entrypoint_name: self.0.kernel.entry.to_string(),
            lang: "wgsl",
        })
    }
}
