//! Auto-captioning (`QwenImageLayeredPipeline.get_image_caption`, tiny model, CPU/Flex, f32)
//! against diffusers 0.42.1 / transformers 5.24.0 / torchvision 0.29.2.
//!
//! Fixtures: `tests/fixtures/caption/` (regenerate with `tests/fixtures/caption/gen_caption.py`).
//! Run: `cargo test --test caption_parity -- --nocapture` (prints every max error).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use burn::tensor::{Tensor, TensorData};
use common::{Record, assert_close, check, cpu, fixtures_dir, model_source};
use qwen_layered_web::caption::processor::{
    ImageProcessorConfig, composite_on_white, preprocess, resize_bicubic_aa,
};
use qwen_layered_web::model::vision::{VisionConfig, VisionTower, VisionTrace};
use qwen_layered_web::weights::{SafetensorsFolder, TensorLoader, read_json};
use safetensors::{Dtype, SafeTensors};

const CASES: [&str; 2] = ["caption/en_48x40", "caption/zh_160x96"];
/// Processor floats and vision-tower outputs.
const ATOL: f32 = 1e-4;

fn input(case: &str) -> image::RgbaImage {
    image::open(fixtures_dir().join(case).join("input.png"))
        .expect("input.png")
        .to_rgba8()
}

/// An int64 tensor of a record as `(values, shape)`.
fn ints(case: &str, name: &str) -> (Vec<i64>, Vec<usize>) {
    let bytes = std::fs::read(fixtures_dir().join(case).join("record.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(name).unwrap_or_else(|_| panic!("{case}: {name}"));
    assert_eq!(v.dtype(), Dtype::I64, "{case}: {name}");
    let vals = v
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (vals, v.shape().to_vec())
}

fn processor_config() -> ImageProcessorConfig {
    pollster::block_on(ImageProcessorConfig::load(&model_source(), "processor"))
        .expect("processor config")
}

#[test]
fn composite_and_resize_are_exact() {
    let rec = Record::load(CASES[0]);
    let img = input(CASES[0]);
    let rgb = composite_on_white(img.as_raw());
    let (want, shape) = rec.u8("image.rgb");
    assert_eq!(shape, [40, 48, 3]);
    assert_eq!(rgb, want, "alpha composite onto white differs from PIL");
    for case in CASES {
        let rec = Record::load(case);
        let img = input(case);
        let rgb = composite_on_white(img.as_raw());
        let (want, shape) = rec.u8("image.resized");
        let (h, w) = (img.height() as usize, img.width() as usize);
        let got = resize_bicubic_aa(&rgb, (h, w, 3), shape[0], shape[1]);
        let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        eprintln!(
            "{case}: resize {w}x{h} -> {}x{}: {diff} bytes differ",
            shape[1], shape[0]
        );
        assert_eq!(diff, 0, "{case}: torchvision bicubic resize differs");
    }
}

#[test]
fn pixel_values_and_grid_match() {
    let cfg = processor_config();
    for case in CASES {
        let rec = Record::load(case);
        let vi = preprocess(&input(case), &cfg).expect("preprocess");
        let (grid, _) = ints(case, "processor.image_grid_thw");
        let grid: Vec<usize> = grid.iter().map(|&g| g as usize).collect();
        assert_eq!(vi.grid_thw.to_vec(), grid, "{case}: image_grid_thw");
        assert_eq!(vi.resized, rec.u8("image.resized").0, "{case}: resized");
        if rec.has("processor.pixel_values.frame0") {
            let (want, shape) = rec.f32("processor.pixel_values.frame0"); // [N, 3·P·P]
            let (n, pp) = (shape[0], shape[1] / 3);
            // Both temporal copies of each channel must equal the stored frame.
            for t in 0..2 {
                let got: Vec<f32> = (0..n)
                    .flat_map(|i| {
                        let row = &vi.pixel_values[i * vi.patch_dim..(i + 1) * vi.patch_dim];
                        (0..3)
                            .flat_map(move |c| row[(c * 2 + t) * pp..(c * 2 + t + 1) * pp].to_vec())
                    })
                    .collect();
                assert_close(
                    &format!("{case}: pixel_values (temporal {t})"),
                    &got,
                    &want,
                    &shape,
                    ATOL,
                );
            }
        }
    }
}

fn load_vision() -> VisionTower {
    let src = model_source();
    pollster::block_on(async {
        let cfg_json: serde_json::Value = read_json(&src, "text_encoder/config.json").await?;
        let cfg = VisionConfig::from_model_config(&cfg_json, "text_encoder/config.json")?;
        let folder = SafetensorsFolder::open(&src, "text_encoder").await?;
        let mut l = TensorLoader::new(&src, &folder, &cpu());
        VisionTower::load(&mut l, "visual.", cfg).await
    })
    .expect("vision tower loads")
}

#[test]
fn vision_tower_matches() {
    let tower = load_vision();
    let cfg = processor_config();
    for case in CASES {
        let rec = Record::load(case);
        let vi = preprocess(&input(case), &cfg).expect("preprocess");
        let pv = Tensor::<2>::from_data(
            TensorData::new(vi.pixel_values.clone(), [vi.patches(), vi.patch_dim]),
            &cpu(),
        );
        let mut trace = VisionTrace::default();
        let out = tower
            .forward_traced(pv, vi.grid_thw, Some(&mut trace))
            .expect("vision forward");
        check(&rec, "vision.patch_embed", trace.patch_embed.unwrap(), ATOL);
        for (i, b) in trace.blocks.into_iter().enumerate() {
            check(&rec, &format!("vision.blocks.{i}"), b, ATOL);
        }
        assert_eq!(out.dims()[0], tower.tokens(vi.grid_thw));
        check(&rec, "vision.pooler_output", out, ATOL);
    }
}
