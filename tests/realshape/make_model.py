#!/usr/bin/env python3
"""A Qwen-Image-Layered repository at the real model's sizes, with random weights and fewer
layers, and a diffusers reference run on it (see README.md next to this file).

    make_model.py make ROOT [--blocks 2] [--text-layers 2] [--vision-depth 2]
    make_model.py compare REF OUT [--latents-rel 1e-3] [--pixels 1] [--case DIR]

`make` writes

- ROOT/test/qwen-image-layered-realshape/: the official repository's layout and files
  (model_index.json; transformer/, text_encoder/ sharded at 1 GB with their index files; vae/;
  tokenizer/ as vocab.json + merges.txt + tokenizer_config.json; processor/ with tokenizer.json;
  scheduler/). Every config value is the real model's (shared/docs/model-spec.md §1) except the
  depths: `num_layers` (60), the text model's `num_hidden_layers` (28) and the vision tower's
  `depth` (32). The vocabulary is the real one (152,064 embedding rows; the real Qwen2.5-VL
  tokenizer rebuilt offline by tests/fixtures/tokenizer/gen_tokenizer_ids.py). Weights are the
  classes' own random initialisation (seed 0), stored in bf16 like the real checkpoint.
- ROOT/reference/: one run of the unmodified `QwenImageLayeredPipeline.__call__` (diffusers
  0.42.1, CPU, f32) on that folder as `from_pretrained` reloads it: a 64×64 RGBA input
  (`input.png`), prompt and negative prompt as text, true CFG 4 with `cfg_normalize`, 2 layers,
  2 steps, working area 64² (the fixture generator's bucket patch); `noise.safetensors` (the
  packed initial latents, for `qwen-layered decompose --noise`), `latents.safetensors` (the final
  packed latents), `prompt_embeds.safetensors`, `layer_*.png` and `case.json`.

`compare` checks a `qwen-layered decompose --out OUT` against REF (the reference, or another
run: `--case` then names the reference folder for case.json): relative L2 error of the final
latents (when both have them; a page run exports layers only) and the largest per-channel
difference of the layer PNGs; exit 1 past the limits.
"""

import argparse
import contextlib
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fixtures"))
sys.path.insert(0, os.path.join(HERE, "..", "fixtures", "tokenizer"))

REPO = os.path.join("test", "qwen-image-layered-realshape")
PROMPT = "A red apple and a blue cup on a wooden table."
NEGATIVE = " "
CASE = dict(width=64, height=64, image_seed=1234, bucket=64, layers=2, steps=2, true_cfg_scale=4.0,
            cfg_normalize=True, seed=0)


def real_configs(blocks, text_layers, vision_depth):
    """model-spec.md §1.2-1.4, depths replaced."""
    text = dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944,
        num_hidden_layers=text_layers,  # real 28
        num_attention_heads=28, num_key_value_heads=4, hidden_act="silu",
        max_position_embeddings=128000, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        use_sliding_window=False, bos_token_id=151643, eos_token_id=151645,
    )
    vision = dict(
        depth=vision_depth,  # real 32
        hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, out_hidden_size=3584,
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
        fullatt_block_indexes=[vision_depth - 1],  # real [7, 15, 23, 31]: every eighth
        tokens_per_second=2,
    )
    ids = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
               vision_end_token_id=151653)
    transformer = dict(
        patch_size=2, in_channels=64, out_channels=16,
        num_layers=blocks,  # real 60
        attention_head_dim=128, num_attention_heads=24, joint_attention_dim=3584,
        guidance_embeds=False, axes_dims_rope=(16, 56, 56),
        zero_cond_t=False, use_additional_t_cond=True, use_layer3d_rope=True,
    )
    vae = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True], dropout=0.0, input_channels=4)
    return text, vision, ids, transformer, vae


def make(args):
    import torch
    import gen_fixtures as fx  # the fixture generator's helpers (imports torch, diffusers, ...)
    import gen_tokenizer_ids as tk
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler,
                           QwenImageLayeredPipeline, QwenImageTransformer2DModel)
    from safetensors.torch import save_file
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    torch.set_num_threads(os.cpu_count() or 1)  # the fixture generator pins one thread
    repo = os.path.join(args.root, REPO)
    ref = os.path.join(args.root, "reference")
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(ref, ignore_errors=True)
    os.makedirs(ref)
    text, vision, ids, tr_cfg, vae_cfg = real_configs(args.blocks, args.text_layers, args.vision_depth)
    t0 = time.perf_counter()

    tokenizer, vocab, merges = tk.build_full()
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor())
    with torch.no_grad():
        torch.manual_seed(0)
        text_encoder = Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
        ).eval().to(torch.bfloat16)
        torch.manual_seed(0)
        transformer = QwenImageTransformer2DModel(**tr_cfg).eval().to(torch.bfloat16)
        torch.manual_seed(0)
        vae = AutoencoderKLQwenImage(**vae_cfg).eval().to(torch.bfloat16)
    pipe = QwenImageLayeredPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**fx.SCHED_LINEAR), vae=vae,
                                    text_encoder=text_encoder, tokenizer=tokenizer, processor=processor,
                                    transformer=transformer)
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in
              (("transformer", transformer), ("text_encoder", text_encoder), ("vae", vae))}
    pipe.save_pretrained(repo, safe_serialization=True, max_shard_size="1GB")
    # tokenizer/ as the official repository has it (no tokenizer.json; processor/ has one).
    shutil.rmtree(os.path.join(repo, "tokenizer"), ignore_errors=True)
    tk.write_official_layout(os.path.join(repo, "tokenizer"), vocab, merges)
    del pipe, text_encoder, transformer, vae
    built = time.perf_counter() - t0
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(repo) for f in fs)
    print(f"{repo}: {size / 1e9:.2f} GB, parameters {counts}, {built:.0f} s", flush=True)

    # The reference run, on the folder as diffusers reloads it.
    t0 = time.perf_counter()
    pipe = QwenImageLayeredPipeline.from_pretrained(repo, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter() - t0
    image = fx.make_rgba(CASE["width"], CASE["height"], CASE["image_seed"])
    image.save(os.path.join(ref, "input.png"))
    seen = {}

    def wrap_prepare_latents(orig):
        def f(*a, **kw):
            latents, image_latents = orig(*a, **kw)
            seen["noise"] = latents.detach().clone()
            return latents, image_latents
        return f

    def wrap_encode_prompt(orig):
        def f(*a, **kw):
            embeds, mask = orig(*a, **kw)
            seen.setdefault("embeds", []).append(embeds.detach().clone())
            return embeds, mask
        return f

    def on_step_end(p, i, t, kw):
        seen["latents"] = kw["latents"].detach().clone()
        return {}

    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack, torch.no_grad():
        stack.enter_context(fx.instance_wrap(pipe, "prepare_latents", wrap_prepare_latents))
        stack.enter_context(fx.instance_wrap(pipe, "encode_prompt", wrap_encode_prompt))
        stack.enter_context(fx.bucket_patch(CASE["bucket"]))
        out = pipe(image=image, prompt=PROMPT, negative_prompt=NEGATIVE, true_cfg_scale=CASE["true_cfg_scale"],
                   layers=CASE["layers"], num_inference_steps=CASE["steps"], resolution=640,
                   cfg_normalize=CASE["cfg_normalize"], max_sequence_length=512, output_type="pil",
                   generator=torch.Generator("cpu").manual_seed(CASE["seed"]),
                   callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"])
    ran = time.perf_counter() - t0
    layers = out.images[0]
    assert len(layers) == CASE["layers"] and all(im.mode == "RGBA" for im in layers)
    for i, im in enumerate(layers):
        im.save(os.path.join(ref, f"layer_{i}.png"))
    save_file({"noise": seen["noise"].float().contiguous()}, os.path.join(ref, "noise.safetensors"))
    save_file({"latents": seen["latents"].float().contiguous()}, os.path.join(ref, "latents.safetensors"))
    save_file({"prompt_embeds": seen["embeds"][0].float().contiguous(),
               "negative_prompt_embeds": seen["embeds"][1].float().contiguous()},
              os.path.join(ref, "prompt_embeds.safetensors"))
    from importlib.metadata import version
    case = dict(CASE, prompt=PROMPT, negative_prompt=NEGATIVE, repo=REPO, blocks=args.blocks,
                text_layers=args.text_layers, vision_depth=args.vision_depth, parameters=counts,
                repo_bytes=size, build_seconds=round(built, 1), reload_seconds=round(loaded, 1),
                run_seconds=round(ran, 1), threads=torch.get_num_threads(),
                versions={p: version(p) for p in ("torch", "diffusers", "transformers", "tokenizers")},
                noise_shape=list(seen["noise"].shape), prompt_embeds_shape=list(seen["embeds"][0].shape),
                output_size=list(layers[0].size))
    with open(os.path.join(ref, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
        f.write("\n")
    print(f"{ref}: reload {loaded:.0f} s, run {ran:.1f} s; noise {case['noise_shape']}, "
          f"prompt_embeds {case['prompt_embeds_shape']}, layers {case['output_size']}", flush=True)


def compare(args):
    import numpy as np
    import PIL.Image
    from safetensors.numpy import load_file

    def latents(folder):
        return next(iter(load_file(os.path.join(folder, "latents.safetensors")).values())).astype(np.float64)

    rel = None  # a page run exports layers only: no latents to compare
    if os.path.exists(os.path.join(args.out, "latents.safetensors")):
        want, got = latents(args.ref), latents(args.out)
        if want.shape != got.shape:
            sys.exit(f"latents: shape {got.shape}, reference {want.shape}")
        rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    n = json.load(open(os.path.join(args.root_case or args.ref, "case.json")))["layers"]
    worst, differing = 0, 0
    for i in range(n):
        a = np.asarray(PIL.Image.open(os.path.join(args.ref, f"layer_{i}.png")).convert("RGBA"), dtype=np.int16)
        b = np.asarray(PIL.Image.open(os.path.join(args.out, f"layer_{i}.png")).convert("RGBA"), dtype=np.int16)
        if a.shape != b.shape:
            sys.exit(f"layer_{i}.png: {b.shape}, reference {a.shape}")
        d = np.abs(a - b)
        worst, differing = max(worst, int(d.max())), differing + int((d > 0).sum())
    ok = (rel is None or rel <= args.latents_rel) and worst <= args.pixels
    said = "no latents" if rel is None else f"relative L2 error {rel:.3e} (limit {args.latents_rel:g})"
    print(f"latents: {said}; layers: largest difference {worst}/255 (limit {args.pixels}), "
          f"{differing} channel values differ -> {'OK' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("root")
    m.add_argument("--blocks", type=int, default=2)
    m.add_argument("--text-layers", type=int, default=2)
    m.add_argument("--vision-depth", type=int, default=2)
    c = sub.add_parser("compare")
    c.add_argument("ref")
    c.add_argument("out")
    c.add_argument("--latents-rel", type=float, default=1e-3)
    c.add_argument("--pixels", type=int, default=1)
    c.add_argument("--case", dest="root_case", help="the folder of case.json when REF is not the reference")
    args = ap.parse_args()
    make(args) if args.cmd == "make" else compare(args)


if __name__ == "__main__":
    main()
