//! Flash-style attention in hand-written WGSL (`shaders/flash_attention.wgsl`): softmax(q·kᵀ/√Dh)·v
//! tile by tile with an online softmax in f32, never storing the `[S_q, S_kv]` scores.
//!
//! [`attention`] runs the kernel on wgpu devices and Burn's own attention everywhere else, so the
//! CPU (Flex) path is unchanged. [`attention_reference`] is the kernel's plain-Burn twin
//! (matmul → softmax → matmul).
//! Tests holding the two equal: `tests/kernels_attention.rs` (native wgpu) and
//! `tests/web_kernels_attention.rs` (WebGPU in headless Chromium).
//!
//! Natively Burn's wgpu backend is `Fusion<CubeBackend>`: the inputs are resolved to their cubecl
//! handles (this flushes the fusion queue, it does not wait for the GPU) and the output is
//! registered back as a fusion tensor. In wasm there is no fusion and the primitive is the cubecl
//! tensor itself. No GPU read happens here.

use burn::backend::Cube;
use burn::tensor::activation::softmax;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor};
use burn_cubecl::cubecl::RuntimeId;
use burn_cubecl::cubecl::ir::{UIntKind, metadata::Info, settings::Dim3};
use burn_cubecl::cubecl::prelude::{
    AddressType, CubeCount, CubeKernel, ElemType, ExecutionMode, KernelDefinition, KernelId,
    KernelMetadata, KernelSettings, PrecompiledSource, Scope,
};
use burn_cubecl::cubecl::server::KernelArguments;
use burn_cubecl::tensor::CubeTensor;

use crate::error::{Error, Result};

/// The WGSL source; `const HEAD_DIM` is prepended per head size.
const SOURCE: &str = include_str!("../../shaders/flash_attention.wgsl");
/// Query rows per workgroup (`BR` in the shader).
const ROWS_PER_WORKGROUP: usize = 32;
/// Largest head size the kernel's workgroup memory is sized for.
pub const MAX_HEAD_DIM: usize = 128;

/// Plain-Burn attention, the kernel's twin: `softmax(q·kᵀ / √Dh) · v`, materializing the scores.
///
/// - q: `[B, H, S_q, Dh]`, k, v: `[B, H, S_kv, Dh]` -> `[B, H, S_q, Dh]`
pub fn attention_reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let head_dim = q.dims()[3];
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(1.0 / (head_dim as f64).sqrt()); // [B, H, S_q, S_kv]
    softmax(scores, 3).matmul(v)
}

/// Non-causal, unmasked attention: the WGSL kernel where [`kernel_supports`] says so, else
/// Burn's own `attention` (the CPU path and any other device stay as they were).
///
/// - q: `[B, H, S_q, Dh]`, k, v: `[B, H, S_kv, Dh]` (any strides) -> `[B, H, S_q, Dh]`
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    if kernel_supports(&q, &k, &v) {
        // Errs only for layouts seen once the handles are taken (tiled storage, u32 overflow).
        if let Ok(out) = flash_attention(q.clone(), k.clone(), v.clone()) {
            return out;
        }
    }
    burn::tensor::module::attention(q, k, v, None, None, AttentionModuleOptions::default())
}

/// Whether [`flash_attention`] takes these tensors: f32 on a wgpu device, matching batch, heads
/// and head size, `Dh` a multiple of 4 up to [`MAX_HEAD_DIM`], non-empty sequences.
pub fn kernel_supports(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> bool {
    let ([b, h, s_q, dh], [kb, kh, s_kv, kd]) = (q.dims(), k.dims());
    let shapes_ok = v.dims() == k.dims()
        && [kb, kh, kd] == [b, h, dh]
        && dh % 4 == 0
        && (4..=MAX_HEAD_DIM).contains(&dh)
        && s_q > 0
        && s_kv > 0
        && b > 0
        && h > 0;
    let f32_ok = [q.dtype(), k.dtype(), v.dtype()]
        .iter()
        .all(|d| *d == DType::F32);
    shapes_ok && f32_ok && on_wgpu(q) && on_wgpu(k) && on_wgpu(v)
}

fn on_wgpu(t: &Tensor<4>) -> bool {
    t.clone()
        .try_into_primitive::<Cube>()
        .is_ok_and(|p| bridge::runtime(&p) == RuntimeId::Wgpu)
}

/// The WGSL kernel. Errors (with the reason) where [`kernel_supports`] is false.
///
/// - q: `[B, H, S_q, Dh]`, k, v: `[B, H, S_kv, Dh]` (any strides) -> `[B, H, S_q, Dh]` contiguous
pub fn flash_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Result<Tensor<4>> {
    if !kernel_supports(&q, &k, &v) {
        return Err(Error::Gpu(format!(
            "flash attention: unsupported inputs q {:?} {:?}, k {:?} {:?}, v {:?} {:?} on {:?} \
             (needs f32 on wgpu, equal B/H/Dh, Dh a multiple of 4 and at most {MAX_HEAD_DIM})",
            q.dims(),
            q.dtype(),
            k.dims(),
            k.dtype(),
            v.dims(),
            v.dtype(),
            q.device()
        )));
    }
    let [b, h, s_q, dh] = q.dims();
    let s_kv = k.dims()[2];
    let prim = |t: Tensor<4>, name: &str| {
        t.try_into_primitive::<Cube>().map_err(|e| {
            Error::Gpu(format!(
                "flash attention: {name} is not a cubecl tensor: {e:?}"
            ))
        })
    };
    let (qp, kp, vp) = (prim(q, "q")?, prim(k, "k")?, prim(v, "v")?);
    let like = qp.clone();
    let (qc, kc, vc) = (
        bridge::to_cube(qp),
        bridge::to_cube(kp),
        bridge::to_cube(vp),
    );

    let strides = |t: &CubeTensor, name: &str| -> Result<[u32; 4]> {
        if t.meta.is_tiled() {
            return Err(Error::Gpu(format!(
                "flash attention: {name} has tiled storage"
            )));
        }
        let s = t.meta.strides();
        let mut out = [0u32; 4];
        for (o, &x) in out.iter_mut().zip(s.iter()) {
            *o = u32::try_from(x).map_err(|_| {
                Error::Gpu(format!("flash attention: {name} stride {x} exceeds u32"))
            })?;
        }
        Ok(out)
    };
    let (q_strides, k_strides, v_strides) =
        (strides(&qc, "q")?, strides(&kc, "k")?, strides(&vc, "v")?);
    let out_elems = b * h * s_q * dh;
    let as_u32 = |x: usize, what: &str| {
        u32::try_from(x)
            .map_err(|_| Error::Gpu(format!("flash attention: {what} = {x} exceeds u32")))
    };
    as_u32(out_elems, "output elements")?;

    // Params, as laid out in the shader (5 × vec4, 80 bytes).
    let scale = 1.0 / (dh as f32).sqrt();
    let mut params = [0u32; 20];
    params[..4].copy_from_slice(&[
        as_u32(b, "batch")?,
        as_u32(h, "heads")?,
        as_u32(s_q, "S_q")?,
        as_u32(s_kv, "S_kv")?,
    ]);
    params[4..8].copy_from_slice(&q_strides);
    params[8..12].copy_from_slice(&k_strides);
    params[12..16].copy_from_slice(&v_strides);
    params[16] = scale.to_bits();
    let params_bytes: Vec<u8> = params.iter().flat_map(|x| x.to_le_bytes()).collect();

    let client = qc.client.clone();
    let device = qc.device.clone();
    let params_handle = client.create_from_slice(&params_bytes);
    let out_handle = client.empty(out_elems * size_of::<f32>());
    let groups = [
        as_u32(s_q.div_ceil(ROWS_PER_WORKGROUP), "workgroups along S_q")?,
        as_u32(h, "heads")?,
        as_u32(b, "batch")?,
    ];
    client.launch(
        Box::new(FlashAttentionKernel { head_dim: dh }),
        CubeCount::Static(groups[0], groups[1], groups[2]),
        KernelArguments::new()
            .with_buffer(qc.handle.clone().binding())
            .with_buffer(kc.handle.clone().binding())
            .with_buffer(vc.handle.clone().binding())
            .with_buffer(out_handle.clone().binding())
            .with_buffer(params_handle.binding()),
    );
    let out = CubeTensor::new_contiguous(
        client,
        device,
        [b, h, s_q, dh].into(),
        out_handle,
        DType::F32,
    );
    Ok(Tensor::from_primitive::<Cube>(bridge::from_cube(
        out, &like,
    )))
}

/// The precompiled kernel, one pipeline per head size.
struct FlashAttentionKernel {
    head_dim: usize,
}

impl KernelMetadata for FlashAttentionKernel {
    fn id(&self) -> KernelId {
        // The id covers the text: the type plus the prepended head size.
        KernelId::new::<Self>().info(self.head_dim)
    }

    fn address_type(&self) -> ElemType {
        ElemType::UInt(UIntKind::U32)
    }
}

impl CubeKernel for FlashAttentionKernel {
    fn define(&self) -> KernelDefinition {
        let settings = KernelSettings::new(
            Dim3 { x: 128, y: 1, z: 1 },
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
            source: format!("const HEAD_DIM: u32 = {}u;\n{SOURCE}", self.head_dim),
            entrypoint_name: "flash_attention".to_string(),
            lang: "wgsl",
        })
    }
}

/// Burn tensor primitive ⇄ cubecl tensor. Natively the primitive is a fusion tensor.
#[cfg(not(target_arch = "wasm32"))]
mod bridge {
    use burn::backend::fusion::{FusionTensor, NoOp, stream::StreamId};
    use burn::backend::ir::{BackendIr, InitOperationIr, OperationIr};
    use burn_cubecl::CubeBackend;
    use burn_cubecl::cubecl::RuntimeId;
    use burn_cubecl::fusion::FusionCubeRuntime;
    use burn_cubecl::tensor::CubeTensor;

    pub type Primitive = FusionTensor<FusionCubeRuntime>;

    pub fn runtime(p: &Primitive) -> RuntimeId {
        p.client.device().runtime()
    }

    /// Runs the queued fusion work that produces `p` (no GPU wait) and returns its handle.
    pub fn to_cube(p: Primitive) -> CubeTensor {
        let client = p.client.clone();
        client.resolve_tensor_float::<CubeBackend>(p)
    }

    /// Registers `t` as a fusion tensor on `like`'s client.
    pub fn from_cube(t: CubeTensor, like: &Primitive) -> Primitive {
        let client = like.client.clone();
        let (shape, dtype) = (t.meta.shape().clone(), t.dtype);
        let handle = <CubeBackend as BackendIr>::float_tensor_handle(t);
        let desc = InitOperationIr::create(shape, dtype, || client.register_tensor_handle(handle));
        client
            .register(
                StreamId::current(),
                OperationIr::Init(desc),
                NoOp::<CubeBackend>::new(),
            )
            .remove(0)
    }
}

/// Burn tensor primitive ⇄ cubecl tensor. In wasm (no fusion) they are the same.
#[cfg(target_arch = "wasm32")]
mod bridge {
    use burn_cubecl::cubecl::RuntimeId;
    use burn_cubecl::tensor::CubeTensor;

    pub type Primitive = CubeTensor;

    pub fn runtime(p: &Primitive) -> RuntimeId {
        p.device.runtime()
    }

    pub fn to_cube(p: Primitive) -> CubeTensor {
        p
    }

    pub fn from_cube(t: CubeTensor, _like: &Primitive) -> Primitive {
        t
    }
}
