//! The few layers the models share: RMSNorm with weight, LayerNorm without affine, the
//! GELU(tanh) feed-forward, and the SiLU-then-Linear of diffusers' `nn.Sequential(SiLU, Linear)`.

/// The linear layer every model uses. Models name it through this path only, so that its
/// representation (f32 today; quantised blocks later) can change in one place.
pub use burn::nn::Linear;

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu_approximate, silu};

use crate::error::Result;
use crate::weights::{TensorLoader, WeightSource};

/// diffusers `RMSNorm(dim, eps, elementwise_affine=True)` over the last axis:
/// `x * rsqrt(mean(x², -1) + eps) * weight` (the variance in f32).
///
/// <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/normalization.py#L510-L567>
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `[dim]`, checkpoint key `{prefix}.weight`.
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// Loads `{prefix}.weight` `[dim]`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        dim: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            weight: l.param(&format!("{prefix}.weight"), [dim]).await?,
            eps,
        })
    }

    /// - x: `[..., dim]` → `[..., dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let variance = x.clone().square().mean_dim(D - 1); // [..., 1]
        let weight = self.weight.val().unsqueeze::<D>(); // [1, ..., dim]
        x * (variance + self.eps).sqrt().recip() * weight
    }
}

/// `nn.LayerNorm(dim, elementwise_affine=False, eps)` over the last axis (biased variance).
///
/// - x: `[..., dim]` → `[..., dim]`
pub fn layer_norm<const D: usize>(x: Tensor<D>, eps: f64) -> Tensor<D> {
    let (var, mean) = x.clone().var_mean_bias(D - 1); // [..., 1] each
    (x - mean) * (var + eps).sqrt().recip()
}

/// `x * (1 + scale) + shift` with per-sample modulation vectors.
///
/// - x: `[B, S, D]`, shift/scale: `[B, D]` → `[B, S, D]`
pub fn modulate(x: Tensor<3>, shift: Tensor<2>, scale: Tensor<2>) -> Tensor<3> {
    x * (scale.unsqueeze_dim::<3>(1) + 1.0) + shift.unsqueeze_dim::<3>(1)
}

/// diffusers `FeedForward(dim, dim_out=dim, activation_fn="gelu-approximate")` (mult 4):
/// `net.2(GELU_tanh(net.0.proj(x)))` (`net.1` is a dropout).
///
/// <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/attention.py>
#[derive(Module, Debug)]
pub struct FeedForward {
    /// `net.0.proj`: `[dim → 4·dim]`.
    pub proj_in: Linear,
    /// `net.2`: `[4·dim → dim]`.
    pub proj_out: Linear,
}

impl FeedForward {
    /// Loads `{prefix}.net.0.proj` and `{prefix}.net.2`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        dim: usize,
    ) -> Result<Self> {
        Ok(Self {
            proj_in: l
                .linear(&format!("{prefix}.net.0.proj"), dim, 4 * dim, true)
                .await?,
            proj_out: l
                .linear(&format!("{prefix}.net.2"), 4 * dim, dim, true)
                .await?,
        })
    }

    /// - x: `[B, S, dim]` → `[B, S, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.proj_out
            .forward(gelu_approximate(self.proj_in.forward(x)))
    }
}

/// `Linear(silu(x))`: diffusers' `nn.Sequential(nn.SiLU(), nn.Linear(..))` (`img_mod`, `txt_mod`)
/// and the `AdaLayerNormContinuous` embedding path.
///
/// - x: `[B, d_in]` → `[B, d_out]`
pub fn silu_linear(linear: &Linear, x: Tensor<2>) -> Tensor<2> {
    linear.forward(silu(x))
}
