//! `crate::pipeline` against the reference (diffusers 0.42.1 / torch 2.15 / numpy 2.4 / Pillow 13).
//!
//! Expected values: `tests/fixtures/pipeline_math/pipeline_math.json`, written by
//! `tests/fixtures/gen_pipeline_math.py` from the real reference classes. f32 values are
//! compared by bit pattern; a failure names the comparison, the number of differing values, the
//! worst index with both values and the max error.
//!
//! On `wasm32-unknown-unknown` the same tests run under `wasm-bindgen-test` in the browser, so the
//! libm differences of that target (`sin`, `pow`) are checked too.

use std::sync::OnceLock;

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

use image::RgbaImage;
use qwen_layered_web::pipeline::{
    Dimensions, FlowMatchEulerDiscreteConfig, FlowMatchEulerDiscreteScheduler, PipelineError,
    TimeShiftType, aspect_ratio, calculate_dimensions, decoded_layers_to_rgba, decoded_to_rgba,
    decoded_to_unit_hwc, image_to_vae_input, latents_for_decode, layered_mu, layered_sigmas,
    normalize_latents, numpy_linspace, pack_latents, packed_position, preprocess_image,
    resize_rgba_lanczos, round_to_bf16, transformer_timestep_bf16, transformer_timestep_f32,
    u8_to_unit_signed, unpack_latents,
};
use serde_json::Value;

fn fixture() -> &'static Value {
    static F: OnceLock<Value> = OnceLock::new();
    F.get_or_init(|| {
        serde_json::from_str(include_str!("fixtures/pipeline_math/pipeline_math.json"))
            .expect("fixture JSON")
    })
}

// ------------------------------------------------------------------ helpers

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("u32") as u32)
        .collect()
}

fn f32s_from_bits(v: &Value) -> Vec<f32> {
    u32s(v).into_iter().map(f32::from_bits).collect()
}

fn f64_from_hex(v: &Value) -> f64 {
    f64::from_bits(u64::from_str_radix(v.as_str().expect("hex"), 16).expect("hex f64"))
}

fn b64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// Bitwise f32 comparison. Returns the max absolute error (0 when equal); panics on any
/// difference with the name, count, worst index, both values and the max error.
fn assert_f32_bits(name: &str, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: length {} vs reference {}",
        got.len(),
        want.len()
    );
    let mut n_diff = 0;
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g.to_bits() != w.to_bits() {
            n_diff += 1;
            let e = if g.is_nan() || w.is_nan() {
                f32::INFINITY
            } else {
                (g - w).abs()
            };
            if worst.is_none_or(|(_, we)| e > we) {
                worst = Some((i, e));
            }
        }
    }
    if let Some((i, e)) = worst {
        panic!(
            "{name}: {n_diff} of {} values differ; worst index {i}: got {:e} ({:#010x}), reference {:e} ({:#010x}); max abs error {e:e}",
            got.len(),
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
    0.0
}

/// Byte comparison of interleaved images (4 channels, `width` pixels per row).
fn assert_bytes(name: &str, got: &[u8], want: &[u8], width: usize) {
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: length {} vs reference {}",
        got.len(),
        want.len()
    );
    let mut n_diff = 0;
    let mut worst: Option<(usize, u8)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g != w {
            n_diff += 1;
            let e = g.abs_diff(w);
            if worst.is_none_or(|(_, we)| e > we) {
                worst = Some((i, e));
            }
        }
    }
    if let Some((i, e)) = worst {
        let (p, c) = (i / 4, i % 4);
        panic!(
            "{name}: {n_diff} of {} bytes differ; worst index {i} (x {}, y {}, channel {c}): got {}, reference {}; max abs error {e}",
            got.len(),
            p % width,
            p / width,
            got[i],
            want[i]
        );
    }
}

/// lowbias32, mirrored from `hash32` in the generator.
fn hash32(mut v: u32) -> u32 {
    v ^= v >> 16;
    v = v.wrapping_mul(0x7feb_352d);
    v ^= v >> 15;
    v = v.wrapping_mul(0x846c_a68b);
    v ^= v >> 16;
    v
}

/// The generator's `test_image` (see its docstring).
fn test_image(seed: u32, w: u32, h: u32) -> RgbaImage {
    RgbaImage::from_fn(w, h, |x, y| {
        let region = (x * 4 / w) + 4 * (y * 3 / h);
        let r0 = hash32(seed.wrapping_mul(0x9e37_79b9).wrapping_add(y * w + x));
        let px: [u32; 4] = match region % 4 {
            0 => [
                x * 255 / (w.max(2) - 1),
                y * 255 / (h.max(2) - 1),
                (x + y) * 255 / (w + h - 2).max(1),
                128 + x * 127 / w,
            ],
            1 => [
                r0 & 255,
                (r0 >> 8) & 255,
                (r0 >> 16) & 255,
                hash32(r0) & 255,
            ],
            2 => {
                let on = ((x / 3) + (y / 3)) % 2 == 1;
                let v = if on { 255 } else { 0 };
                [v, 255 - v, (r0 >> 24) & 255, if on { 255 } else { 0 }]
            }
            _ => {
                let c = hash32(seed.wrapping_add(region * 7919));
                [
                    c & 255,
                    (c >> 8) & 255,
                    (c >> 16) & 255,
                    [0, 255, 1, 254][((x + y) % 4) as usize],
                ]
            }
        };
        image::Rgba(px.map(|v| v as u8))
    })
}

fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().enumerate().fold(0u64, |acc, (i, &b)| {
        (acc + (i as u64 + 1) * b as u64) % (1 << 32)
    }) as u32
}

fn layered_scheduler() -> FlowMatchEulerDiscreteScheduler {
    FlowMatchEulerDiscreteScheduler::new(FlowMatchEulerDiscreteConfig::qwen_image_layered())
        .unwrap()
}

// ------------------------------------------------------------------ scheduler

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn scheduler_schedules_match_diffusers_bitwise() {
    let cases = fixture()["scheduler"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for c in cases {
        let name = format!(
            "scheduler {} steps={} tokens={} sigmas_from={}",
            c["name"].as_str().unwrap(),
            c["steps"],
            c["condition_tokens"],
            c["sigmas_from"].as_str().unwrap()
        );
        let mut s =
            FlowMatchEulerDiscreteScheduler::from_config_json(c["config_json"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            s.sigma_min().to_bits(),
            c["sigma_min_bits"].as_u64().unwrap() as u32,
            "{name}: sigma_min"
        );
        assert_eq!(
            s.sigma_max().to_bits(),
            c["sigma_max_bits"].as_u64().unwrap() as u32,
            "{name}: sigma_max"
        );
        let mu = c["condition_tokens"]
            .as_u64()
            .map(|t| layered_mu(t as usize));
        if let Some(mu) = mu {
            assert_eq!(
                mu.to_bits(),
                f64_from_hex(&c["mu_bits"]).to_bits(),
                "{name}: mu"
            );
        }
        let steps = c["steps"].as_u64().unwrap() as usize;
        match c["sigmas_from"].as_str().unwrap() {
            "pipeline" => s.set_timesteps(None, Some(&layered_sigmas(steps)), mu),
            _ => s.set_timesteps(Some(steps), None, mu),
        }
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_f32_bits(
            &format!("{name}: timesteps"),
            s.timesteps(),
            &f32s_from_bits(&c["timesteps"]),
        );
        assert_f32_bits(
            &format!("{name}: sigmas"),
            s.sigmas(),
            &f32s_from_bits(&c["sigmas"]),
        );
    }
    eprintln!(
        "scheduler: {} schedules bitwise equal to diffusers (max error 0)",
        cases.len()
    );
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn scheduler_spec_values() {
    // model-spec §2.5: 640², 4 steps.
    let mut s = layered_scheduler();
    s.set_timesteps(None, Some(&layered_sigmas(4)), Some(layered_mu(1600)))
        .unwrap();
    let want = [1.0, 0.882353, 0.714286, 0.454545, 0.0];
    for (g, w) in s.sigmas().iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{:?}", s.sigmas());
    }
    // reference-fixtures §6 case 1 (Qwen-Image config, mu = 0.25, 3 steps).
    let mut q =
        FlowMatchEulerDiscreteScheduler::new(FlowMatchEulerDiscreteConfig::qwen_image()).unwrap();
    q.set_timesteps(None, Some(&layered_sigmas(3)), Some(layered_mu(16)))
        .unwrap();
    let t = q.timesteps();
    assert_eq!(t[0], 1000.0);
    assert!(
        (t[1] - 549.005).abs() < 1e-3 && (t[2] - 20.00004).abs() < 1e-4,
        "{t:?}"
    );
    // model-spec §6: 736×544 (mu = sqrt(1564/256)), 3 steps.
    let d = Dimensions::for_image(640, 800, 600).unwrap();
    assert_eq!((d.width, d.height, d.condition_seq_len()), (736, 544, 1564));
    s.set_timesteps(None, Some(&layered_sigmas(3)), Some(d.mu()))
        .unwrap();
    let want = [1000.0, 831.747, 552.744_3];
    for (g, w) in s.timesteps().iter().zip(want) {
        assert!((g - w).abs() < 1e-3, "{:?}", s.timesteps());
    }
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn scheduler_steps_match_diffusers_bitwise() {
    for c in fixture()["steps"].as_array().unwrap() {
        let dtype = c["dtype"].as_str().unwrap();
        let mut s = layered_scheduler();
        let steps = c["timesteps"].as_array().unwrap().len();
        s.set_timesteps(None, Some(&layered_sigmas(steps)), Some(layered_mu(1600)))
            .unwrap();
        assert_f32_bits(
            &format!("step {dtype}: timesteps"),
            s.timesteps(),
            &f32s_from_bits(&c["timesteps"]),
        );
        assert_f32_bits(
            &format!("step {dtype}: sigmas"),
            s.sigmas(),
            &f32s_from_bits(&c["sigmas"]),
        );
        let mut sample = f32s_from_bits(&c["initial"]);
        let tts = u32s(&c["transformer_timesteps"]);
        for i in 0..steps {
            let t = s.timesteps()[i];
            let tt = if dtype == "bfloat16" {
                transformer_timestep_bf16(t)
            } else {
                transformer_timestep_f32(t)
            };
            assert_eq!(
                tt.to_bits(),
                tts[i],
                "step {dtype} {i}: transformer timestep {tt} vs {}",
                f32::from_bits(tts[i])
            );
            let v = f32s_from_bits(&c["model_outputs"][i]);
            if dtype == "bfloat16" {
                s.step_bf16(&v, &mut sample).unwrap();
            } else {
                s.step(&v, &mut sample).unwrap();
            }
            assert_f32_bits(
                &format!("step {dtype} {i}: sample"),
                &sample,
                &f32s_from_bits(&c["samples_after"][i]),
            );
        }
        assert!(matches!(
            s.step(&sample.clone(), &mut sample),
            Err(PipelineError::StepOutOfRange { .. })
        ));
        eprintln!("steps {dtype}: {steps} Euler steps bitwise equal (max error 0)");
    }
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn transformer_timestep_matches_torch_division() {
    let tt = &fixture()["transformer_timestep"];
    let t = f32s_from_bits(&tt["t"]);
    let f32_got: Vec<f32> = t.iter().map(|&v| transformer_timestep_f32(v)).collect();
    let bf16_got: Vec<f32> = t.iter().map(|&v| transformer_timestep_bf16(v)).collect();
    assert_f32_bits("t.float() / 1000", &f32_got, &f32s_from_bits(&tt["f32"]));
    assert_f32_bits(
        "t.bfloat16() / 1000",
        &bf16_got,
        &f32s_from_bits(&tt["bf16"]),
    );
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn mu_matches_python_pow() {
    let m = &fixture()["mu"];
    for v in m["values"].as_array().unwrap() {
        let n = v["tokens"].as_u64().unwrap() as usize;
        let want = f64_from_hex(&v["mu_bits"]);
        let got = layered_mu(n);
        // The f32 the scheduler uses must match always; the f64 matches where libm pow = glibc pow.
        assert_eq!(
            (got as f32).to_bits(),
            (want as f32).to_bits(),
            "mu({n}) as f32: {got} vs {want}"
        );
        // NOTE: natively `powf` is glibc `pow`, exactly Python's. On wasm32 Rust's libm `pow`
        // is correctly rounded (= sqrt) and differs from glibc by 1 ulp on the listed counts.
        let ulps = got.to_bits().abs_diff(want.to_bits());
        let allowed = if cfg!(target_arch = "wasm32") { 1 } else { 0 };
        assert!(
            ulps <= allowed,
            "mu({n}) f64: {got:e} vs {want:e} ({ulps} ulp, {allowed} allowed)"
        );
    }
    assert_eq!(layered_mu(1600), 2.5);
    assert_eq!(layered_mu(4096), 4.0);
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn scheduler_config_json() {
    // model-spec §1.5, verbatim, plus the diffusers bookkeeping fields.
    let json = r#"{"_class_name":"FlowMatchEulerDiscreteScheduler","_diffusers_version":"0.36.0.dev0",
        "base_image_seq_len":256,"base_shift":0.5,"invert_sigmas":false,"max_image_seq_len":8192,"max_shift":0.9,
        "num_train_timesteps":1000,"shift":1.0,"shift_terminal":false,"stochastic_sampling":false,
        "time_shift_type":"linear","use_beta_sigmas":false,"use_dynamic_shifting":true,
        "use_exponential_sigmas":false,"use_karras_sigmas":false,"some_future_field":[1,2]}"#;
    let c = FlowMatchEulerDiscreteConfig::from_json_str(json).unwrap();
    assert_eq!(c, FlowMatchEulerDiscreteConfig::qwen_image_layered());
    let d = FlowMatchEulerDiscreteConfig::from_json_str("{}").unwrap();
    assert_eq!(d, FlowMatchEulerDiscreteConfig::default());
    assert_eq!(d.time_shift_type, TimeShiftType::Exponential);
    assert_eq!(d.max_shift, Some(1.15));
    for (st, want) in [
        ("null", None),
        ("0", None),
        ("0.0", None),
        ("0.02", Some(0.02)),
        ("false", None),
    ] {
        let c =
            FlowMatchEulerDiscreteConfig::from_json_str(&format!(r#"{{"shift_terminal":{st}}}"#))
                .unwrap();
        assert_eq!(c.shift_terminal, want, "shift_terminal {st}");
    }
    assert!(FlowMatchEulerDiscreteConfig::from_json_str(r#"{"shift_terminal":true}"#).is_err());
    assert!(FlowMatchEulerDiscreteConfig::from_json_str(r#"{"time_shift_type":"cubic"}"#).is_err());
    let both = FlowMatchEulerDiscreteConfig {
        use_karras_sigmas: true,
        use_exponential_sigmas: true,
        ..Default::default()
    };
    assert!(matches!(
        FlowMatchEulerDiscreteScheduler::new(both),
        Err(PipelineError::InvalidSchedulerConfig(_))
    ));
    let beta = FlowMatchEulerDiscreteConfig {
        use_beta_sigmas: true,
        ..Default::default()
    };
    assert!(matches!(
        FlowMatchEulerDiscreteScheduler::new(beta),
        Err(PipelineError::UnsupportedScheduler(_))
    ));
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn scheduler_errors() {
    let mut s = layered_scheduler();
    assert!(matches!(
        s.set_timesteps(Some(4), None, None),
        Err(PipelineError::MissingMu)
    ));
    let e = s
        .set_timesteps(Some(5), Some(&layered_sigmas(4)), Some(2.5))
        .unwrap_err();
    assert!(
        matches!(
            e,
            PipelineError::SigmasLength {
                sigmas: 4,
                num_inference_steps: 5
            }
        ),
        "{e}"
    );
    assert!(matches!(
        s.set_timesteps(None, None, Some(2.5)),
        Err(PipelineError::NoSteps { .. })
    ));
    s.set_timesteps(None, Some(&layered_sigmas(2)), Some(2.5))
        .unwrap();
    let e = s.step(&[1.0; 3], &mut [0.0; 4]).unwrap_err();
    assert!(
        e.to_string().contains('3') && e.to_string().contains('4'),
        "{e}"
    );
    let mut st = FlowMatchEulerDiscreteScheduler::new(FlowMatchEulerDiscreteConfig {
        stochastic_sampling: true,
        ..FlowMatchEulerDiscreteConfig::qwen_image_layered()
    })
    .unwrap();
    st.set_timesteps(None, Some(&layered_sigmas(2)), Some(2.5))
        .unwrap();
    assert!(matches!(
        st.step(&[1.0], &mut [0.0]),
        Err(PipelineError::NoiseRequired)
    ));
    let mut x = [2.0f32];
    st.step_stochastic(&[1.0], &mut x, &[0.5]).unwrap();
    let (s0, s1) = (st.sigmas()[0], st.sigmas()[1]);
    assert_eq!(x[0], (1.0 - s1) * (2.0 - s0 * 1.0) + s1 * 0.5);
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn linspace_and_bf16_basics() {
    assert_eq!(numpy_linspace(1.0, 0.0, 1), vec![1.0]);
    assert_eq!(numpy_linspace(1.0, 0.0, 3), vec![1.0, 0.5, 0.0]);
    assert_eq!(layered_sigmas(4), vec![1.0, 0.75, 0.5, 0.25]);
    assert_eq!(round_to_bf16(991.902_83), 992.0);
    assert_eq!(round_to_bf16(1.0 + 1.0 / 256.0), 1.0); // tie to even
    assert_eq!(round_to_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
    assert!(round_to_bf16(f32::NAN).is_nan());
    assert_eq!(round_to_bf16(f32::INFINITY), f32::INFINITY);
}

// ------------------------------------------------------------------ dimensions

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn calculate_dimensions_matches_python() {
    let cases = fixture()["calculate_dimensions"].as_array().unwrap();
    let mut n_degenerate = 0;
    for c in cases {
        let v: Vec<u32> = c
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let (res, w0, h0, w, h) = (v[0], v[1], v[2], v[3], v[4]);
        let got = calculate_dimensions(res as u64 * res as u64, aspect_ratio(w0, h0));
        assert_eq!(
            got,
            (w, h),
            "calculate_dimensions({res}², {w0}/{h0}): got {got:?}, reference ({w}, {h})"
        );
        match Dimensions::for_image_any_bucket(res, w0, h0) {
            Ok(d) => assert_eq!((d.width, d.height), (w / 16 * 16, h / 16 * 16)),
            Err(PipelineError::DegenerateDimensions { .. }) => {
                assert!(w < 16 || h < 16);
                n_degenerate += 1;
            }
            Err(e) => panic!("{res} {w0}x{h0}: {e}"),
        }
    }
    eprintln!(
        "calculate_dimensions: {} cases equal ({n_degenerate} degenerate)",
        cases.len()
    );
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn calculate_dimensions_round_half_even() {
    // width/32 is exactly 2.5, 7.5 and 12.5 (dyadic ratios), height/32 exactly 2.5.
    assert_eq!(
        calculate_dimensions(640 * 640, aspect_ratio(1, 64)),
        (64, 5120)
    );
    assert_eq!(
        calculate_dimensions(640 * 640, aspect_ratio(9, 64)),
        (256, 1696)
    );
    assert_eq!(
        calculate_dimensions(640 * 640, aspect_ratio(25, 64)),
        (384, 1024)
    );
    assert_eq!(
        calculate_dimensions(640 * 640, aspect_ratio(64, 1)),
        (5120, 64)
    );
    // height 16 → round(0.5) = 0: degenerate.
    assert_eq!(
        calculate_dimensions(640 * 640, aspect_ratio(1600, 1)),
        (25600, 0)
    );
    assert!(matches!(
        Dimensions::for_image(640, 1600, 1),
        Err(PipelineError::DegenerateDimensions { .. })
    ));
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn dimensions_and_sequence_lengths() {
    for (res, w0, h0, w, h) in [
        (640, 1920, 1080, 864, 480),
        (1024, 1920, 1080, 1376, 768),
        (640, 800, 600, 736, 544),
        (1024, 800, 600, 1184, 896),
        (640, 640, 640, 640, 640),
        (1024, 333, 333, 1024, 1024),
    ] {
        let d = Dimensions::for_image(res, w0, h0).unwrap();
        assert_eq!((d.width, d.height), (w, h), "{res} {w0}x{h0}");
    }
    let d = Dimensions::for_image(640, 640, 640).unwrap();
    assert_eq!(
        (
            d.latent_height(),
            d.latent_width(),
            d.packed_height(),
            d.packed_width()
        ),
        (80, 80, 40, 40)
    );
    assert_eq!(
        (
            d.tokens_per_frame(),
            d.noise_seq_len(4),
            d.condition_seq_len(),
            d.transformer_seq_len(4)
        ),
        (1600, 8000, 1600, 9600)
    );
    assert_eq!(d.img_shapes(4), vec![(1, 40, 40); 6]);
    assert_eq!(d.noise_shape(1, 4, 16), [1, 5, 16, 80, 80]);
    assert_eq!(d.mu(), 2.5);
    let d = Dimensions::for_image(1024, 1, 1).unwrap();
    assert_eq!((d.tokens_per_frame(), d.mu()), (4096, 4.0));
    // Test-model buckets (reference-fixtures §5): 64² and 80².
    let d = Dimensions::for_image_any_bucket(64, 64, 64).unwrap();
    assert_eq!(
        (d.width, d.height, d.noise_seq_len(3), d.mu()),
        (64, 64, 64, 0.25)
    );
    let d = Dimensions::for_image_any_bucket(80, 120, 80).unwrap();
    assert_eq!((d.width, d.height, d.img_shapes(2)[0]), (96, 64, (1, 4, 6)));
    assert!(matches!(
        Dimensions::for_image(512, 10, 10),
        Err(PipelineError::UnsupportedResolution { resolution: 512 })
    ));
    assert!(matches!(
        Dimensions::for_image_any_bucket(20, 10, 10),
        Err(PipelineError::InvalidTestResolution { .. })
    ));
    assert!(matches!(
        Dimensions::for_image(640, 0, 10),
        Err(PipelineError::EmptyImage { .. })
    ));
    assert!(Dimensions::new(48, 40).is_err() && Dimensions::new(48, 32).is_ok());
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn pack_unpack_match_diffusers() {
    for c in fixture()["pack"].as_array().unwrap() {
        let s: Vec<usize> = c["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let (b, f, ch, h, w) = (s[0], s[1], s[2], s[3], s[4]);
        let x: Vec<f32> = (0..b * f * ch * h * w).map(|i| i as f32).collect();
        let packed = pack_latents(&x, b, f, ch, h, w).unwrap();
        let want: Vec<f32> = c["packed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as f32)
            .collect();
        assert_f32_bits(&format!("pack {s:?}"), &packed, &want);
        if let Some(u) = c["unpacked"].as_array() {
            let want: Vec<f32> = u.iter().map(|v| v.as_u64().unwrap() as f32).collect();
            let unpacked = unpack_latents(&packed, b, f, ch, h, w).unwrap();
            assert_f32_bits(&format!("unpack {s:?}"), &unpacked, &want);
        }
        // packed_position agrees with the buffer (batch item 0).
        let (h2, w2) = (h / 2, w / 2);
        for fi in 0..f {
            for ci in 0..ch {
                for y in 0..h {
                    for xx in 0..w {
                        let (tok, chan) = packed_position(fi, ci, y, xx, h, w);
                        let src = ((fi * ch + ci) * h + y) * w + xx;
                        assert_eq!(packed[tok * ch * 4 + chan], src as f32);
                        assert!(tok < f * h2 * w2);
                    }
                }
            }
        }
    }
    // Round trip: unpack gives (B, C, F, H, W); transposing back to (B, F, C, H, W) and
    // packing again must reproduce the packed buffer.
    let (b, f, ch, h, w) = (2, 3, 4, 6, 8);
    let x: Vec<f32> = (0..b * f * ch * h * w)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let p = pack_latents(&x, b, f, ch, h, w).unwrap();
    let u = unpack_latents(&p, b, f, ch, h, w).unwrap();
    let mut bfchw = vec![0.0; u.len()];
    for bi in 0..b {
        for ci in 0..ch {
            for fi in 0..f {
                for i in 0..h * w {
                    bfchw[((bi * f + fi) * ch + ci) * h * w + i] =
                        u[((bi * ch + ci) * f + fi) * h * w + i];
                }
            }
        }
    }
    assert_f32_bits("pack/unpack round trip", &bfchw, &x);
    assert_f32_bits(
        "pack(unpack) round trip",
        &pack_latents(&bfchw, b, f, ch, h, w).unwrap(),
        &p,
    );
    assert!(matches!(
        pack_latents(&x, b, f, ch, h + 1, w),
        Err(PipelineError::NotMultiple { .. })
    ));
    assert!(matches!(
        pack_latents(&x[1..], b, f, ch, h, w),
        Err(PipelineError::ShapeMismatch { .. })
    ));
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn latent_normalisation_matches_pipeline() {
    let c = &fixture()["latent_norm"];
    let mean = f32s_from_bits(&c["mean"]);
    let std = f32s_from_bits(&c["std"]);
    let s: Vec<usize> = c["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let shape = [s[0], s[1], s[2], s[3], s[4]];
    let mut z = f32s_from_bits(&c["z"]);
    normalize_latents(&mut z, shape, &mean, &std).unwrap();
    assert_f32_bits("(z - mean) / std", &z, &f32s_from_bits(&c["normalized"]));
    let layers = c["layers"].as_u64().unwrap() as usize;
    let (ch, h, w) = (shape[1], shape[3], shape[4]);
    // packed (B, F·h/2·w/2, 4C) → (B, F, C, H, W) twin of the unpack → decoder input.
    let unpacked = unpack_latents(&f32s_from_bits(&c["packed"]), 1, layers + 1, ch, h, w).unwrap();
    let got = latents_for_decode(&unpacked, [1, ch, layers + 1, h, w], &mean, &std).unwrap();
    assert_f32_bits(
        "latents / (1/std) + mean, frame 0 dropped",
        &got,
        &f32s_from_bits(&c["decode_input"]),
    );
    assert!(c["n_differ_from_multiply"].as_u64().unwrap() > 0);
    assert!(latents_for_decode(&unpacked[1..], [1, ch, layers + 1, h, w], &mean, &std).is_err());
}

// ------------------------------------------------------------------ images

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn lanczos_matches_pillow_bit_exact() {
    let cases = fixture()["lanczos"].as_array().unwrap();
    for c in cases {
        let seed = c["seed"].as_u64().unwrap() as u32;
        let (w0, h0) = (
            c["src"][0].as_u64().unwrap() as u32,
            c["src"][1].as_u64().unwrap() as u32,
        );
        let (w1, h1) = (
            c["dst"][0].as_u64().unwrap() as u32,
            c["dst"][1].as_u64().unwrap() as u32,
        );
        let name = format!("lanczos {w0}x{h0} -> {w1}x{h1} (seed {seed})");
        let src = test_image(seed, w0, h0);
        assert_eq!(
            checksum(src.as_raw()),
            c["src_checksum"].as_u64().unwrap() as u32,
            "{name}: test image differs from the generator's"
        );
        let got = resize_rgba_lanczos(&src, w1, h1).unwrap();
        assert_eq!(got.dimensions(), (w1, h1));
        assert_bytes(
            &name,
            got.as_raw(),
            &b64(c["expected"].as_str().unwrap()),
            w1 as usize,
        );
    }
    eprintln!(
        "lanczos: {} resizes byte-identical to Pillow (max error 0)",
        cases.len()
    );
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn preprocess_matches_vae_image_processor() {
    let p = &fixture()["processor"];
    let lut: Vec<f32> = (0..=255u8).map(u8_to_unit_signed).collect();
    assert_f32_bits(
        "preprocess value table (x/255*2-1)",
        &lut,
        &f32s_from_bits(&p["lut"]),
    );
    let c = &p["preprocess"];
    let src = test_image(c["seed"].as_u64().unwrap() as u32, 45, 27);
    assert_eq!(
        checksum(src.as_raw()),
        c["src_checksum"].as_u64().unwrap() as u32
    );
    let d = Dimensions::new(32, 16).unwrap();
    let pre = preprocess_image(&src, d).unwrap();
    assert_eq!(pre.shape, [1, 4, 1, 16, 32]);
    let want = f32s_from_bits(&c["tensor"]);
    assert_f32_bits("resize + preprocess (1,4,16,32)", &pre.vae_input, &want);
    assert_f32_bits(
        "image_to_vae_input",
        &image_to_vae_input(&pre.resized),
        &want,
    );
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn postprocess_matches_vae_image_processor() {
    let p = &fixture()["processor"]["postprocess"];
    let s: Vec<usize> = p["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let (n, h, w) = (s[0], s[2], s[3]);
    let x = f32s_from_bits(&p["input"]);
    let want_np = f32s_from_bits(&p["np"]);
    let per = 4 * h * w;
    let layers = decoded_layers_to_rgba(&x, n, h, w).unwrap();
    for i in 0..n {
        let got = decoded_to_unit_hwc(&x[i * per..(i + 1) * per], h, w).unwrap();
        assert_f32_bits(
            &format!("postprocess np image {i}"),
            &got,
            &want_np[i * per..(i + 1) * per],
        );
        let want_pil = b64(p["pil"][i].as_str().unwrap());
        let img = decoded_to_rgba(&x[i * per..(i + 1) * per], h, w).unwrap();
        assert_bytes(
            &format!("postprocess pil image {i}"),
            img.as_raw(),
            &want_pil,
            w,
        );
        assert_eq!(layers[i], img);
    }
    assert!(decoded_to_rgba(&x[..per - 1], h, w).is_err());
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn resize_edge_cases() {
    let img = test_image(3, 23, 17);
    assert_eq!(resize_rgba_lanczos(&img, 23, 17).unwrap(), img);
    assert!(resize_rgba_lanczos(&img, 0, 17).is_err());
    // Opaque images resize like PIL's RGB resize: alpha stays 255.
    let opaque = RgbaImage::from_fn(31, 19, |x, y| {
        image::Rgba([(x * 8) as u8, (y * 13) as u8, ((x * y) % 256) as u8, 255])
    });
    let r = resize_rgba_lanczos(&opaque, 16, 48).unwrap();
    assert!(r.pixels().all(|p| p[3] == 255));
}
