//! `FlowMatchEulerDiscreteScheduler` as diffusers 0.42.1 runs it for `QwenImageLayeredPipeline`.
//!
//! Reference: `src/diffusers/schedulers/scheduling_flow_match_euler_discrete.py` (diffusers
//! commit `58eb52c`, identical in the maths to PyPI 0.42.1): `__init__` `:94-146`,
//! `time_shift` `:241-260`, `stretch_shift_to_terminal` `:262-282`, `set_timesteps` `:284-393`,
//! `step` `:423-522`, `_convert_to_karras` / `_exponential` `:524-597`, `_time_shift_*` `:646-650`.
//! The pipeline side is `pipeline_qwenimage_layered.py:766-779` (sigmas and `mu`) and `:813-852`
//! (the timestep handed to the transformer, the `step` call).
//!
//! # Precision (why some maths is `f32` and some `f64`)
//!
//! diffusers mixes numpy `float64`, numpy `float32` and torch `float32`:
//!
//! * The layered pipeline passes `sigmas = np.linspace(1, 0, N + 1)[:-1]` (`float64`);
//!   `set_timesteps` immediately does `np.array(sigmas).astype(np.float32)`, so the time shift,
//!   the terminal stretch and everything after it run in **`float32`** (numpy 2 / NEP 50: a
//!   Python `float` such as `mu` is "weak" and is rounded to `float32` before it meets a `float32`
//!   array). `mu` itself is a Python `float` (`f64`); in the exponential shift `math.exp(mu)` is
//!   taken in `f64` and only its result is rounded to `f32`.
//! * Without custom sigmas, diffusers builds `np.linspace(sigma_max*T, sigma_min*T, N)` in
//!   **`float64`**, shifts in `float64` and rounds to `float32` once at the end
//!   (`torch.from_numpy(sigmas).to(float32)`).
//! * The Karras / exponential sigma conversions return `float64` arrays (rounded at the end).
//! * `timesteps = sigmas * num_train_timesteps` is a torch `float32` multiply.
//! * `step` upcasts the sample to `float32` and computes `sample + dt * model_output` as two
//!   separately rounded `float32` operations (no FMA); Rust does the same (it never contracts).
//!
//! This module mirrors each of those choices, and the tests compare the bit patterns with the
//! real diffusers scheduler.

use serde::{Deserialize, Deserializer};

use super::error::{PipelineError, Result, check_len};

/// How `mu` shifts the sigmas when `use_dynamic_shifting` is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TimeShiftType {
    /// `σ' = e^μ / (e^μ + 1/σ − 1)` (Qwen-Image, FLUX).
    #[default]
    Exponential,
    /// `σ' = μ / (μ + 1/σ − 1)` (Qwen-Image-Layered).
    Linear,
}

/// `scheduler/scheduler_config.json` of a `FlowMatchEulerDiscreteScheduler`.
///
/// Field names are the diffusers ones; missing fields take the defaults of the diffusers
/// `__init__`; unknown fields (`_class_name`, `_diffusers_version`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct FlowMatchEulerDiscreteConfig {
    /// Training timesteps `T` (1000): `timesteps = σ·T`.
    pub num_train_timesteps: u32,
    /// Static shift `σ' = s·σ / (1 + (s−1)·σ)`, used only without dynamic shifting.
    pub shift: f64,
    /// Shift by `mu` at `set_timesteps` (the layered model: true).
    pub use_dynamic_shifting: bool,
    /// Unused by the layered pipeline (it computes `mu` itself).
    pub base_shift: Option<f64>,
    /// Unused by the layered pipeline.
    pub max_shift: Option<f64>,
    /// Unused by the layered pipeline.
    pub base_image_seq_len: u32,
    /// Unused by the layered pipeline.
    pub max_image_seq_len: u32,
    /// Use `1 − σ` (Mochi); the terminal value becomes 1.
    pub invert_sigmas: bool,
    /// `None` when absent, `null`, `false` or `0` (Python truthiness: `if config.shift_terminal:`).
    #[serde(deserialize_with = "deserialize_shift_terminal")]
    pub shift_terminal: Option<f64>,
    /// Re-space the sigmas as Karras et al. (ρ = 7).
    pub use_karras_sigmas: bool,
    /// Re-space the sigmas log-linearly.
    pub use_exponential_sigmas: bool,
    /// Beta-distribution spacing (needs scipy in diffusers): rejected by this port.
    pub use_beta_sigmas: bool,
    /// Linear or exponential dynamic shift.
    pub time_shift_type: TimeShiftType,
    /// Re-noise at each step instead of the Euler update (see `step_stochastic`).
    pub stochastic_sampling: bool,
}

impl Default for FlowMatchEulerDiscreteConfig {
    /// The defaults of `FlowMatchEulerDiscreteScheduler.__init__`.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: TimeShiftType::Exponential,
            stochastic_sampling: false,
        }
    }
}

fn deserialize_shift_terminal<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Num(f64),
    }
    match Option::<Raw>::deserialize(d)? {
        None | Some(Raw::Bool(false)) => Ok(None),
        // Python `True == 1`: the stretch would divide by `1 - 1`.
        Some(Raw::Bool(true)) => Err(serde::de::Error::custom(
            "shift_terminal = true is meaningless (it would be 1)",
        )),
        Some(Raw::Num(0.0)) => Ok(None),
        Some(Raw::Num(v)) => Ok(Some(v)),
    }
}

impl FlowMatchEulerDiscreteConfig {
    /// Parses a diffusers `scheduler_config.json`.
    pub fn from_json_str(json: &str) -> Result<Self> {
        Ok(serde_json::from_str(json)?)
    }

    /// The `Qwen/Qwen-Image-Layered` `scheduler/scheduler_config.json` (model-spec §1.5).
    pub fn qwen_image_layered() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: true,
            base_shift: Some(0.5),
            max_shift: Some(0.9),
            base_image_seq_len: 256,
            max_image_seq_len: 8192,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: TimeShiftType::Linear,
            stochastic_sampling: false,
        }
    }

    /// The plain Qwen-Image config (exponential shift, `shift_terminal = 0.02`), used by the
    /// tiny-model fixtures of `reference-fixtures.md` §3.
    pub fn qwen_image() -> Self {
        Self {
            shift_terminal: Some(0.02),
            time_shift_type: TimeShiftType::Exponential,
            ..Self::qwen_image_layered()
        }
    }

    /// The constructor's checks (`__init__` `:112-128`), plus the features this port lacks.
    fn validate(&self) -> Result<()> {
        let n_conv = [
            self.use_beta_sigmas,
            self.use_exponential_sigmas,
            self.use_karras_sigmas,
        ]
        .iter()
        .filter(|&&b| b)
        .count();
        if n_conv > 1 {
            return Err(PipelineError::InvalidSchedulerConfig(
                "only one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas can be used".into(),
            ));
        }
        if self.num_train_timesteps == 0 {
            return Err(PipelineError::InvalidSchedulerConfig(
                "num_train_timesteps = 0".into(),
            ));
        }
        if self.use_beta_sigmas {
            // Needs scipy's beta.ppf; no model of this family uses it.
            return Err(PipelineError::UnsupportedScheduler("use_beta_sigmas"));
        }
        Ok(())
    }
}

/// `np.linspace(start, stop, num)` (endpoint included) with numpy's exact `float64` arithmetic:
/// `y[i] = i * step + start` with `step = (stop - start) / (num - 1)`, and `y[num-1] = stop`.
pub fn numpy_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    let div = num - 1;
    let delta = stop - start;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64).collect();
    if div > 0 {
        let step = delta / div as f64;
        if step == 0.0 {
            for v in &mut y {
                *v = *v / div as f64 * delta;
            }
        } else {
            for v in &mut y {
                *v *= step;
            }
        }
    } else {
        for v in &mut y {
            *v *= delta;
        }
    }
    for v in &mut y {
        *v += start;
    }
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// The sigmas the layered pipeline passes: `np.linspace(1.0, 0, N + 1)[:-1]`
/// (`pipeline_qwenimage_layered.py:767`), in `float64` as numpy makes them.
pub fn layered_sigmas(num_inference_steps: usize) -> Vec<f64> {
    let mut s = numpy_linspace(1.0, 0.0, num_inference_steps + 1);
    s.pop();
    s
}

/// The layered pipeline's shift: `mu = (image_latents.shape[1] / (256*256/16/16)) ** 0.5`
/// (`pipeline_qwenimage_layered.py:768-770`), where `image_latents.shape[1]` is the number of
/// packed condition-image tokens `(H/16)·(W/16)`. In Python this is `f64` `pow(x, 0.5)`, which
/// glibc does *not* always round like `sqrt` (58 token counts ≤ 70000 differ by 1 ulp, e.g.
/// 2921). Natively `powf` calls that same glibc `pow` (bit-exact); on wasm32 Rust's libm `pow`
/// rounds like `sqrt`, 1 ulp off on those counts. The `f32` the scheduler uses (and
/// `f32(exp(mu))`) is identical either way for every count ≤ 200000 (checked by the generator).
///
/// 640×640 → 2.5; 1024×1024 → 4.0; 736×544 → sqrt(1564/256).
pub fn layered_mu(condition_tokens: usize) -> f64 {
    let base_seqlen = 256.0 * 256.0 / 16.0 / 16.0;
    // NOTE: `powf(0.5)`, not `sqrt`, to reproduce glibc `pow` bit for bit natively.
    (condition_tokens as f64 / base_seqlen).powf(0.5)
}

/// The timestep the pipeline feeds the transformer in an `f32` run: `t.to(float32) / 1000`
/// (`pipeline_qwenimage_layered.py:813, 818`), one correctly rounded `f32` division.
pub fn transformer_timestep_f32(t: f32) -> f32 {
    t / 1000.0
}

/// The same in a `bfloat16` run: `t` is cast to bf16 first, and the division's result is
/// rounded to bf16 again (torch computes bf16 arithmetic in `f32` and rounds the result).
/// The returned `f32` holds a bf16 value exactly.
pub fn transformer_timestep_bf16(t: f32) -> f32 {
    round_to_bf16(round_to_bf16(t) / 1000.0)
}

/// Rounds an `f32` to the nearest `bfloat16` (ties to even), as torch's `.to(torch.bfloat16)`
/// does; the result is returned as the `f32` with the same value. NaN stays NaN.
pub fn round_to_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return f32::from_bits((x.to_bits() | 0x0040_0000) & 0xffff_0000);
    }
    let bits = x.to_bits();
    let rounding_bias = 0x7fff + ((bits >> 16) & 1);
    f32::from_bits(bits.wrapping_add(rounding_bias) & 0xffff_0000)
}

/// The plain Euler update of `step`: `sample ← sample + dt · model_output`, in `f32`, two
/// roundings (`scheduling_flow_match_euler_discrete.py:509`).
pub fn euler_update(dt: f32, model_output: &[f32], sample: &mut [f32]) -> Result<()> {
    check_len(
        "euler_update model_output vs sample",
        sample.len(),
        model_output.len(),
    )?;
    for (s, &v) in sample.iter_mut().zip(model_output) {
        *s += dt * v;
    }
    Ok(())
}

/// Float types the schedule maths runs in (numpy `float32` or `float64`).
trait Real:
    Copy
    + PartialEq
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    fn of(v: f64) -> Self;
}
impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
}
impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
}

/// Steps 2–3 of `set_timesteps` (time shift, terminal stretch) in the precision of the array.
fn shift_and_stretch<T: Real>(
    cfg: &FlowMatchEulerDiscreteConfig,
    shift: f64,
    mu: Option<f64>,
    sigmas: &mut [T],
) -> Result<()> {
    let one = T::of(1.0);
    if cfg.use_dynamic_shifting {
        let mu = mu.ok_or(PipelineError::MissingMu)?;
        // `(1 / t - 1) ** 1.0` is exact, so the power is dropped.
        let m = match cfg.time_shift_type {
            TimeShiftType::Linear => T::of(mu),
            TimeShiftType::Exponential => T::of(mu.exp()),
        };
        for s in sigmas.iter_mut() {
            *s = m / (m + (one / *s - one));
        }
    } else {
        // `self.shift * sigmas / (1 + (self.shift - 1) * sigmas)`; `shift - 1` is a Python float.
        let a = T::of(shift);
        let b = T::of(shift - 1.0);
        for s in sigmas.iter_mut() {
            *s = a * *s / (one + b * *s);
        }
    }
    if let (Some(st), Some(&last)) = (cfg.shift_terminal, sigmas.last()) {
        // one_minus_z[-1] / (1 - shift_terminal): the Python float is rounded to T.
        let scale = (one - last) / T::of(1.0 - st);
        for s in sigmas.iter_mut() {
            *s = one - (one - *s) / scale;
        }
    }
    Ok(())
}

/// Step 4 of `set_timesteps`: Karras / exponential conversions, `float64` results.
fn convert_sigmas(
    cfg: &FlowMatchEulerDiscreteConfig,
    sigmas: &[f64],
    n: usize,
) -> Option<Vec<f64>> {
    let (first, last) = (*sigmas.first()?, *sigmas.last()?);
    if cfg.use_karras_sigmas {
        let rho = 7.0_f64;
        let min_inv_rho = last.powf(1.0 / rho);
        let max_inv_rho = first.powf(1.0 / rho);
        let d = min_inv_rho - max_inv_rho;
        Some(
            numpy_linspace(0.0, 1.0, n)
                .into_iter()
                .map(|r| (max_inv_rho + r * d).powf(rho))
                .collect(),
        )
    } else if cfg.use_exponential_sigmas {
        Some(
            numpy_linspace(first.ln(), last.ln(), n)
                .into_iter()
                .map(f64::exp)
                .collect(),
        )
    } else {
        None
    }
}

/// The flow-matching Euler scheduler.
///
/// Typical use in the layered pipeline:
/// ```ignore
/// let mut s = FlowMatchEulerDiscreteScheduler::new(FlowMatchEulerDiscreteConfig::qwen_image_layered())?;
/// s.set_timesteps(None, Some(&layered_sigmas(50)), Some(layered_mu(dims.condition_seq_len())))?;
/// for i in 0..s.num_inference_steps() {
///     let t = s.timesteps()[i];                // feed transformer_timestep_f32(t)
///     s.step(&noise_pred, &mut latents)?;      // latents += (σ[i+1] − σ[i]) · noise_pred
/// }
/// ```
#[derive(Debug, Clone)]
pub struct FlowMatchEulerDiscreteScheduler {
    config: FlowMatchEulerDiscreteConfig,
    shift: f64,
    sigma_min: f32,
    sigma_max: f32,
    timesteps: Vec<f32>,
    /// `timesteps.len() + 1` values: the terminal 0 (or 1 when inverted) is appended.
    sigmas: Vec<f32>,
    step_index: usize,
}

impl FlowMatchEulerDiscreteScheduler {
    /// `FlowMatchEulerDiscreteScheduler(**config)`: validates the config and builds the
    /// training schedule (`__init__`), which fixes `sigma_min` / `sigma_max`.
    pub fn new(config: FlowMatchEulerDiscreteConfig) -> Result<Self> {
        config.validate()?;
        let n = config.num_train_timesteps as usize;
        // np.linspace(1, T, T, dtype=float32)[::-1]; then torch: sigmas = timesteps / T (f32).
        let t_train: Vec<f32> = numpy_linspace(1.0, n as f64, n)
            .into_iter()
            .rev()
            .map(|v| v as f32)
            .collect();
        let tt = n as f32;
        let mut sigmas: Vec<f32> = t_train.iter().map(|&t| t / tt).collect();
        if !config.use_dynamic_shifting {
            let (a, b) = (config.shift as f32, (config.shift - 1.0) as f32);
            for s in &mut sigmas {
                *s = a * *s / (1.0 + b * *s);
            }
        }
        let timesteps: Vec<f32> = sigmas.iter().map(|&s| s * tt).collect();
        let sigma_min = *sigmas.last().expect("num_train_timesteps > 0");
        let sigma_max = sigmas[0];
        Ok(Self {
            shift: config.shift,
            config,
            sigma_min,
            sigma_max,
            timesteps,
            sigmas,
            step_index: 0,
        })
    }

    /// Builds the scheduler from the text of a diffusers `scheduler_config.json`.
    pub fn from_config_json(json: &str) -> Result<Self> {
        Self::new(FlowMatchEulerDiscreteConfig::from_json_str(json)?)
    }

    /// The config the scheduler was built from.
    pub fn config(&self) -> &FlowMatchEulerDiscreteConfig {
        &self.config
    }

    /// The smallest training sigma (`self.sigma_min`), as a Python float holds it.
    pub fn sigma_min(&self) -> f32 {
        self.sigma_min
    }

    /// The largest training sigma (`self.sigma_max`).
    pub fn sigma_max(&self) -> f32 {
        self.sigma_max
    }

    /// `set_shift`: only used when `use_dynamic_shifting` is off.
    pub fn set_shift(&mut self, shift: f64) {
        self.shift = shift;
    }

    /// `set_timesteps(num_inference_steps, sigmas=sigmas, mu=mu)` (`:284-393`).
    ///
    /// The layered pipeline calls it with `sigmas = layered_sigmas(N)` and
    /// `mu = layered_mu(h·w)`, without `num_inference_steps` (`retrieve_timesteps`).
    /// `sigmas` are taken as `f64` because that is what the pipeline hands over; they are
    /// rounded to `f32` first, exactly like `np.array(sigmas).astype(np.float32)`.
    /// Resets the step index to 0 (the pipeline's `set_begin_index(0)`).
    pub fn set_timesteps(
        &mut self,
        num_inference_steps: Option<usize>,
        sigmas: Option<&[f64]>,
        mu: Option<f64>,
    ) -> Result<()> {
        let cfg = &self.config;
        if cfg.use_dynamic_shifting && mu.is_none() {
            return Err(PipelineError::MissingMu);
        }
        let n = match (num_inference_steps, sigmas) {
            (Some(n), Some(s)) if s.len() != n => {
                return Err(PipelineError::SigmasLength {
                    sigmas: s.len(),
                    num_inference_steps: n,
                });
            }
            (Some(n), _) => n,
            (None, Some(s)) => s.len(),
            (None, None) => 0,
        };
        if n == 0 {
            return Err(PipelineError::NoSteps {
                num_inference_steps,
                sigmas_given: sigmas.is_some(),
            });
        }

        let tt = cfg.num_train_timesteps as f64;
        // Steps 1-3, in float32 (custom sigmas) or float64 (default schedule).
        let shifted: Vec<f64> = match sigmas {
            Some(s) => {
                let mut v: Vec<f32> = s.iter().map(|&x| x as f32).collect();
                shift_and_stretch(cfg, self.shift, mu, &mut v)?;
                v.into_iter().map(f64::from).collect()
            }
            None => {
                let t = numpy_linspace(self.sigma_max as f64 * tt, self.sigma_min as f64 * tt, n);
                let mut v: Vec<f64> = t.into_iter().map(|x| x / tt).collect();
                shift_and_stretch(cfg, self.shift, mu, &mut v)?;
                v
            }
        };
        // Step 4 (float64), step 5: to float32 and timesteps = sigmas * T in float32.
        let converted = convert_sigmas(cfg, &shifted, n).unwrap_or(shifted);
        let mut sig: Vec<f32> = converted.into_iter().map(|x| x as f32).collect();
        let t32 = cfg.num_train_timesteps as f32;
        // Step 6: the terminal value.
        if cfg.invert_sigmas {
            for s in &mut sig {
                *s = 1.0 - *s;
            }
            self.timesteps = sig.iter().map(|&s| s * t32).collect();
            sig.push(1.0);
        } else {
            self.timesteps = sig.iter().map(|&s| s * t32).collect();
            sig.push(0.0);
        }
        self.sigmas = sig;
        self.step_index = 0;
        Ok(())
    }

    /// `self.timesteps` (`f32`, one per step, `σ · num_train_timesteps`).
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// `self.sigmas` (`f32`, one per step plus the terminal value).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The number of steps of the current schedule.
    pub fn num_inference_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The index of the step the next `step` call performs.
    pub fn step_index(&self) -> usize {
        self.step_index
    }

    /// `set_begin_index` / jump to a step (e.g. to resume).
    pub fn set_step_index(&mut self, step_index: usize) {
        self.step_index = step_index;
    }

    /// `dt = sigmas[i+1] − sigmas[i]` in `f32`.
    pub fn dt(&self, step_index: usize) -> Result<f32> {
        match (self.sigmas.get(step_index), self.sigmas.get(step_index + 1)) {
            (Some(&s), Some(&n)) => Ok(n - s),
            _ => Err(PipelineError::StepOutOfRange {
                step_index,
                num_steps: self.num_inference_steps(),
            }),
        }
    }

    /// `step(model_output, t, sample)` for `float32` tensors: `sample += dt · model_output`
    /// in place, then the step index advances.
    pub fn step(&mut self, model_output: &[f32], sample: &mut [f32]) -> Result<()> {
        if self.config.stochastic_sampling {
            return Err(PipelineError::NoiseRequired);
        }
        let dt = self.dt(self.step_index)?;
        euler_update(dt, model_output, sample)?;
        self.step_index += 1;
        Ok(())
    }

    /// `step` for a `bfloat16` pipeline (latents and `model_output` in bf16, passed here as
    /// `f32` buffers holding bf16 values). torch computes `dt * model_output` with a 0-dim
    /// `f32` `dt` and a bf16 tensor: the result **is bf16** (the dimensioned operand wins type
    /// promotion) and `dt` itself is first rounded to bf16 (checked: 0 of 10000 differ with
    /// `bf16(bf16(dt)·v)`, 638 differ with `bf16(dt·v)`). The sum with the upcast sample is
    /// `f32`; the result is cast back to bf16.
    pub fn step_bf16(&mut self, model_output: &[f32], sample: &mut [f32]) -> Result<()> {
        if self.config.stochastic_sampling {
            return Err(PipelineError::NoiseRequired);
        }
        let dt = self.dt(self.step_index)?;
        check_len(
            "step_bf16 model_output vs sample",
            sample.len(),
            model_output.len(),
        )?;
        // NOTE: torch rounds the 0-dim f32 `dt` to bf16 before the bf16 multiply.
        let dt = round_to_bf16(dt);
        for (s, &v) in sample.iter_mut().zip(model_output) {
            *s = round_to_bf16(*s + round_to_bf16(dt * v));
        }
        self.step_index += 1;
        Ok(())
    }

    /// `step` with `stochastic_sampling = True` (`f32`): `x0 = sample − σ·v`,
    /// `sample ← (1 − σ_next)·x0 + σ_next·noise`. `noise` replaces diffusers' `randn_tensor`.
    pub fn step_stochastic(
        &mut self,
        model_output: &[f32],
        sample: &mut [f32],
        noise: &[f32],
    ) -> Result<()> {
        let i = self.step_index;
        self.dt(i)?;
        check_len(
            "step_stochastic model_output vs sample",
            sample.len(),
            model_output.len(),
        )?;
        check_len("step_stochastic noise vs sample", sample.len(), noise.len())?;
        let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
        let keep = 1.0 - next;
        for ((s, &v), &z) in sample.iter_mut().zip(model_output).zip(noise) {
            let x0 = *s - sigma * v;
            *s = keep * x0 + next * z;
        }
        self.step_index += 1;
        Ok(())
    }
}
