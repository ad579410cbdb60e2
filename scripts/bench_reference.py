"""The reference side of BENCHMARKS.md: the diffusers 0.42.1 transformer forward in bf16 at the
same shapes as `qwen-layered-bench block`, and PyTorch GEMMs at the shapes of `qwen-layered-bench
gemm`, on the same GPU.

Random weights (PyTorch's default init, seeded); nothing is downloaded. Needs a CUDA GPU with
torch and diffusers==0.42.1 (the versions pinned for the fixtures, tests/fixtures/README.md).

    python3 scripts/bench_reference.py [--layers 60] [--resolution 640] [--frames 4] [--txt 300]
        [--iters 3] [--skip-forward] [--skip-gemm]

Shapes (the pipeline's at 640², 4 layers): the image sequence is (layers + 2) frames of
(R/16)² tokens = 9600 at 640², plus 300 text tokens; hidden [1, S_img, 64], text
[1, S_txt, 3584]; no text mask (the unmasked joint attention, as in the Rust bench).

The FLOP counts are the Rust bench's (`src/bench.rs`, `block_flops` and `forward_flops`), so the
rates compare directly.
"""

import argparse
import statistics
import time

import torch

DIM, FF, LAYERS, TEXT_DIM, CHANNELS = 3072, 12288, 60, 3584, 64


def block_flops(s_img, s_txt):
    tokens = s_img + s_txt
    linears = 2.0 * tokens * (4.0 * DIM * DIM + 2.0 * DIM * FF)
    modulation = 2.0 * 2.0 * DIM * 6.0 * DIM
    attention = 2.0 * 2.0 * tokens * tokens * DIM
    return linears + modulation + attention


def forward_flops(layers, s_img, s_txt):
    io = 2.0 * s_img * CHANNELS * DIM * 2.0 + 2.0 * s_txt * TEXT_DIM * DIM
    return layers * block_flops(s_img, s_txt) + io + 2.0 * DIM * 2.0 * DIM


def timed(fn, iters):
    """Median seconds of `iters` runs after one warm-up, each ended by a device sync."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemms(iters):
    shapes = [(9600, 3072, 3072), (9600, 3072, 12288), (9600, 3072, 18432), (9600, 12288, 3072),
              (300, 3072, 3072), (300, 3072, 12288)]
    print("PyTorch GEMM, x[M,K] @ w[N,K]^T + b (F.linear); median of", iters)
    print(f"{'shape (MxKxN)':<20} {'dtype':>12} {'ms':>9} {'GFLOP/s':>10}")
    for m, k, n in shapes:
        for dtype, tf32 in ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            g = torch.Generator(device="cuda").manual_seed(1)
            x = torch.randn(m, k, device="cuda", dtype=dtype, generator=g)
            w = torch.randn(n, k, device="cuda", dtype=dtype, generator=g) / k**0.5
            b = torch.randn(n, device="cuda", dtype=dtype, generator=g)
            t = timed(lambda: torch.nn.functional.linear(x, w, b), iters)
            label = "bf16" if dtype == torch.bfloat16 else ("f32 (tf32)" if tf32 else "f32 (fma)")
            print(f"{f'{m}x{k}x{n}':<20} {label:>12} {t * 1e3:9.2f} {2.0 * m * k * n / t / 1e9:10.1f}",
                  flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False


def forward(layers, resolution, frames, s_txt, iters):
    from diffusers import QwenImageTransformer2DModel

    side = resolution // 16
    img_shapes = [[(1, side, side)] * (frames + 2)]
    s_img = (frames + 2) * side * side
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    start = time.perf_counter()
    with torch.device("cuda"):
        model = QwenImageTransformer2DModel(
            patch_size=2, in_channels=64, out_channels=16, num_layers=layers,
            attention_head_dim=128, num_attention_heads=24, joint_attention_dim=TEXT_DIM,
            guidance_embeds=False, axes_dims_rope=(16, 56, 56), zero_cond_t=False,
            use_additional_t_cond=True, use_layer3d_rope=True).eval()
    torch.set_default_dtype(torch.float32)
    torch.cuda.synchronize()
    params = sum(p.numel() for p in model.parameters())
    print(f"diffusers QwenImageTransformer2DModel: {layers} blocks, {params / 1e9:.2f}B parameters, "
          f"bf16, built in {time.perf_counter() - start:.1f} s")
    g = torch.Generator(device="cuda").manual_seed(2)
    hidden = torch.randn(1, s_img, CHANNELS, device="cuda", dtype=torch.bfloat16, generator=g)
    text = torch.randn(1, s_txt, TEXT_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
    timestep = torch.tensor([0.9], device="cuda", dtype=torch.bfloat16)
    t_cond = torch.tensor([0], device="cuda")
    torch.cuda.reset_peak_memory_stats()

    @torch.inference_mode()
    def run():
        return model(hidden_states=hidden, encoder_hidden_states=text, timestep=timestep,
                     img_shapes=img_shapes, additional_t_cond=t_cond, return_dict=False)[0]

    t = timed(run, iters)
    flops = forward_flops(layers, s_img, s_txt)
    print(f"tokens: {s_img} image + {s_txt} text = {s_img + s_txt}")
    print(f"forward: {t:.3f} s (median of {iters}); {t / layers * 1e3:.1f} ms per block; "
          f"{flops / 1e12:.1f} TFLOP -> {flops / t / 1e12:.1f} TFLOP/s")
    print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated "
          f"({torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=LAYERS)
    p.add_argument("--resolution", type=int, default=640)
    p.add_argument("--frames", type=int, default=4, help="the pipeline's `layers`")
    p.add_argument("--txt", type=int, default=300)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--skip-forward", action="store_true")
    p.add_argument("--skip-gemm", action="store_true")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_reference.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    if not a.skip_gemm:
        gemms(a.iters)
    if not a.skip_forward:
        forward(a.layers, a.resolution, a.frames, a.txt, a.iters)


if __name__ == "__main__":
    main()
