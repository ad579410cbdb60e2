#!/usr/bin/env bash
# The GPU benchmark set of BENCHMARKS.md, in one run on one machine, each step under its own
# time limit so that one slow or failing step does not cost the others:
#
#   scripts/gpu_bench.sh BENCH_BINARY OUT_DIR [STEP ...]
#
# BENCH_BINARY: an optimised `qwen-layered-bench` (cargo build --profile native --bin
# qwen-layered-bench). Steps (all by default, in this order): env, reference, gemm, block (4-bit,
# with a per-stage profile), dequantize (the 4-/8-bit weights' f32 temporaries), blockf16 (4-bit with f16 operands), block8 (the same at 8 bits),
# attention, cosine, load (weight-loading
# throughput on this machine's disk and cores).
# `reference` needs python3 with torch (CUDA) and diffusers==0.42.1.
# Each step writes OUT_DIR/STEP.log; OUT_DIR/summary.log has every step's exit code and time.
# Exits 1 when any step failed or ran out of time (after running the others).
set -u
bin=${1:?usage: scripts/gpu_bench.sh BENCH_BINARY OUT_DIR [STEP ...]}
out=${2:?usage: scripts/gpu_bench.sh BENCH_BINARY OUT_DIR [STEP ...]}
shift 2
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(env reference gemm block dequantize blockf16 block8 attention cosine load)
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
failed=0

# step NAME LIMIT_S COMMAND...: runs COMMAND with a time limit, its output in OUT_DIR/NAME.log.
step() {
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name (limit ${limit} s): $*" | tee -a "$out/summary.log"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || failed=$((failed + 1))
    echo "   $name: exit $rc after $(($(date +%s) - start)) s" | tee -a "$out/summary.log"
    grep -v 'XDG_RUNTIME_DIR' "$out/$name.log" | tail -n 40
}

for s in "${steps[@]}"; do
    case $s in
    env) step env 20 bash -c 'nvidia-smi; nvidia-smi -q | grep -iE "driver version|product name|clocks|max clocks" | head -20; uname -a; ldconfig -p | grep -i vulkan; ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d 2>&1; echo VK_DRIVER_FILES=${VK_DRIVER_FILES:-}' ;;
    reference) step reference 120 python3 "$here/bench_reference.py" --iters 3 ;;
    gemm) step gemm 150 "$bin" gemm --device wgpu --bits 0,8,4,4fused,8deq,f16,4f16,q8t128 --iters 3 ;;
    block) step block 200 "$bin" block --device wgpu --bits 4 --blocks 2 --apply 60 --iters 1 --profile ;;
    dequantize) step dequantize 60 "$bin" dequantize --device wgpu --iters 5 ;;
    blockf16) step blockf16 200 "$bin" block --device wgpu --bits 4 --blocks 2 --apply 60 --iters 1 --qmatmul f16 ;;
    block8) step block8 150 "$bin" block --device wgpu --bits 8 --blocks 2 --apply 20 --iters 1 --profile ;;
    attention) step attention 120 bash -c "'$bin' attention --device wgpu --tokens 9900 --iters 3 --which flash,flash16,chunked && for m in 256 512 2048; do '$bin' attention --device wgpu --tokens 9900 --iters 3 --which chunked --chunk-mib \$m || exit 1; done" ;;
    cosine) step cosine 60 "$bin" cosine --device wgpu ;;
    load)
        d=$(mktemp -d)
        f=$d/qwen-layered-bench-2blocks.safetensors
        step load 90 bash -c "'$bin' make-file '$f' --blocks 2 && '$bin' load '$f' --precision f32 && '$bin' load '$f' --precision q4; rc=\$?; rm -rf '$d'; exit \$rc"
        ;;
    *)
        echo "unknown step $s (env, reference, gemm, block, dequantize, blockf16, block8, attention, cosine, load)" >&2
        failed=$((failed + 1))
        ;;
    esac
done
if [ $failed -gt 0 ]; then
    echo "$failed step(s) failed; see $out/summary.log" >&2
    exit 1
fi
