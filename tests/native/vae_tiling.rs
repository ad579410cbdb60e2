//! Tiled VAE decode/encode (tiny VAE, CPU/Flex, f32) against diffusers 0.42.1's
//! `enable_tiling()` path (`tiled_decode` / `tiled_encode`).
//!
//! Fixture: `tests/fixtures/vae_tiling/` (regenerate with
//! `python tests/fixtures/vae_tiling/gen_vae_tiling.py`; small tiles so that 7×11 and 9×9
//! latents need 3×4 and 3×3 overlapping tiles).
//! Run: `cargo test --test native vae_tiling:: -- --nocapture` (prints every max error).

use crate::common;

use burn::tensor::{Tensor, TensorData};
use common::{assert_close, cpu, fixtures_dir, model_source, read};
use qwen_layered_web::model::vae::{AutoencoderKLQwenImage, VaeTiling};
use safetensors::SafeTensors;

/// The tolerances of `tests/native/vae_parity.rs`: encoder side and decoder output.
const ATOL_ENCODE: f32 = 1e-4;
const ATOL_DECODE: f32 = 1e-3;

struct Case {
    name: String,
    tiling: VaeTiling,
}

fn load() -> (AutoencoderKLQwenImage, Vec<Case>, Vec<u8>) {
    let vae = pollster::block_on(AutoencoderKLQwenImage::load(&model_source(), "vae", &cpu()))
        .expect("tiny VAE loads");
    let dir = fixtures_dir().join("vae_tiling");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tiling.json")).expect("tiling.json"))
            .expect("tiling.json parses");
    let cases = meta["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let pair = |k: &str| -> [usize; 2] {
                let v = c[k].as_array().expect(k);
                [
                    v[0].as_u64().unwrap() as usize,
                    v[1].as_u64().unwrap() as usize,
                ]
            };
            let (min, stride) = (pair("tile_sample_min"), pair("tile_sample_stride"));
            Case {
                name: c["name"].as_str().expect("name").to_owned(),
                tiling: VaeTiling {
                    min_height: min[0],
                    min_width: min[1],
                    stride_height: stride[0],
                    stride_width: stride[1],
                },
            }
        })
        .collect();
    let bytes = std::fs::read(dir.join("tiling.safetensors")).expect("tiling.safetensors");
    (vae, cases, bytes)
}

/// A recorded `[B, C, 1, H, W]` tensor as `([B, C, H, W] values, shape)`.
fn frame(bytes: &[u8], name: &str) -> (Vec<f32>, [usize; 4]) {
    let st = SafeTensors::deserialize(bytes).expect("record parses");
    let view = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let s = view.shape();
    assert_eq!((s.len(), s[2]), (5, 1), "{name}: {s:?}");
    let v = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (v, [s[0], s[1], s[3], s[4]])
}

fn tensor((v, shape): (Vec<f32>, [usize; 4])) -> Tensor<4> {
    Tensor::from_data(TensorData::new(v, shape), &cpu())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn tiled_decode_matches_diffusers() {
    let (vae, cases, bytes) = load();
    assert_eq!(cases.len(), 2);
    for case in &cases {
        let z = frame(&bytes, &format!("{}.z", case.name));
        let (want, shape) = frame(&bytes, &format!("{}.decoded", case.name));
        let (h, w) = (z.1[2], z.1[3]);
        assert!(vae.decode_needs_tiles((h, w), &case.tiling));
        let mut tiles = Vec::new();
        let got = vae
            .tiled_decode_counted(tensor(z.clone()), &case.tiling, &mut |hw| tiles.push(hw))
            .expect("tiled decode");
        let (rows, cols) = case.tiling.latent_grid((h, w), 8);
        assert_eq!(tiles.len(), rows * cols, "{}: tiles {tiles:?}", case.name);
        assert!(
            tiles.len() >= 6,
            "{}: only {} tiles",
            case.name,
            tiles.len()
        );
        let got = read(got);
        let err = assert_close(
            &format!("{}: tiled decode", case.name),
            &got,
            &want,
            &shape,
            ATOL_DECODE,
        );
        // The dispatching entry point takes the same path.
        let via = read(
            vae.decode_with_tiling(tensor(z.clone()), &case.tiling)
                .unwrap(),
        );
        assert_eq!(via, got, "{}: decode_with_tiling", case.name);
        // The tiles matter: the untiled decode (clamped, one pass) is far from diffusers' tiled
        // output, so this test would catch a tiling that silently decoded in one piece.
        let whole = read(vae.decode(tensor(z)).unwrap());
        let clamped: Vec<f32> = want.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        let seam = max_abs_diff(&whole, &clamped);
        println!(
            "{}: {} tiles, tiled decode max |err| {err:.3e}; untiled vs tiled {seam:.3e}",
            case.name,
            tiles.len()
        );
        assert!(seam > 10.0 * ATOL_DECODE, "{}: untiled {seam}", case.name);
    }
}

#[test]
fn tiled_encode_matches_diffusers() {
    let (vae, cases, bytes) = load();
    for case in &cases {
        let x = frame(&bytes, &format!("{}.x", case.name));
        let (want, shape) = frame(&bytes, &format!("{}.moments", case.name));
        let got = read(
            vae.encode_moments_with_tiling(tensor(x.clone()), &case.tiling)
                .expect("tiled encode"),
        );
        let err = assert_close(
            &format!("{}: tiled encode", case.name),
            &got,
            &want,
            &shape,
            ATOL_ENCODE,
        );
        let whole = read(vae.encode_moments(tensor(x)).unwrap());
        let seam = max_abs_diff(&whole, &want);
        println!(
            "{}: tiled encode max |err| {err:.3e}; untiled vs tiled {seam:.3e}",
            case.name
        );
        assert!(seam > 10.0 * ATOL_ENCODE, "{}: untiled {seam}", case.name);
    }
}

#[test]
fn small_latents_are_not_tiled_and_bad_tilings_are_refused() {
    let (vae, _, _) = load();
    let default = VaeTiling::default();
    assert!(!vae.decode_needs_tiles((32, 32), &default));
    assert!(vae.decode_needs_tiles((33, 32), &default));
    assert!(vae.decode_needs_tiles((128, 128), &default)); // 1024²
    assert_eq!(default.latent_grid((128, 128), 8), (6, 6));
    let z = Tensor::<4>::zeros([1, 16, 2, 2], &cpu());
    let gaps = VaeTiling {
        min_height: 16,
        min_width: 16,
        stride_height: 24,
        stride_width: 16,
    };
    let err = vae.tiled_decode(z.clone(), &gaps).unwrap_err().to_string();
    assert!(err.contains("gaps"), "{err}");
    let tiny = VaeTiling {
        min_height: 4,
        ..default
    };
    assert!(vae.tiled_decode(z, &tiny).is_err());
}
